from tests.conftest import ago


def test_earn_burn_balance(acme, bolt, verify_clean):
    assert acme.client.enrol("M1").status == 201
    assert acme.client.enrol("M1").status == 200
    r = acme.client.earn("e1", "M1", 100, occurred_at=ago(minutes=1))
    assert r.status == 201, r.json()
    assert r.json()["balance_after"] == 100
    r = bolt.client.burn("b1", "M1", 30, occurred_at=ago(seconds=1))
    assert r.status == 201, r.json()
    assert r.json()["balance_after"] == 70
    b = bolt.client.balance("M1").json()
    assert b["available"] == 70 and b["pending"] == 0
    verify_clean()

