"""The reference client reads its closed statements and checks them offline against the
coalition's JWKS (partners/client.py: verify_statement, statements, statement, jwks, CLI)."""
from __future__ import annotations

import copy
import hashlib
import json
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from werkzeug.serving import make_server

from partners import service as partner_service
from partners.client import PartnerClient, b64url, canonical_json, jwk_thumbprint, main, verify_statement
from tests.conftest import new_key, public_pem, transport_for
from tests.test_client import Recorder
from tests.test_settlement import close, day, may  # noqa: F401  (may: the closed-month fixture)


@pytest.fixture
def fuel(app, may):  # noqa: F811
    """May closed; the real partner "fuel" (net +8.53 EUR) gets a key and a signing client."""
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=timezone.utc))
    key = new_key("EdDSA")
    partner_service.add_key(may, "fuel", public_pem(key), now=day(2, month=6))
    may.commit()
    client = PartnerClient("", "fuel", key, transport=transport_for(app))
    client.key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    return client


@pytest.fixture
def fetched(fuel):
    signed = fuel.statement("2026-05").json()
    jwks = fuel.jwks().json()
    return signed, jwks


def other_jwk(kid=None):
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw),
                 "kid": kid or jwk_thumbprint(key.public_key()), "alg": "EdDSA", "use": "sig"}


def test_a_statement_fetched_through_the_api_verifies_against_the_api_jwks(app, fuel, fetched):
    signed, jwks = fetched
    listed = fuel.statements().json()["statements"]
    assert [(s["period"], s["net_cents"]) for s in listed] == [("2026-05", 853)]
    assert jwks == app.test_client().get("/.well-known/jwks.json").get_json()  # signed or not
    doc = verify_statement(signed, jwks)
    assert (doc["partner_id"], doc["period"], doc["net_cents"]) == ("fuel", "2026-05", 853)
    assert signed["digest"] == listed[0]["digest"] == hashlib.sha256(canonical_json(doc)).hexdigest()
    # A JWKS holding other keys too (a rotation): the kid picks the right one.
    assert verify_statement(signed, {"keys": [other_jwk()[1], *jwks["keys"]]}) == doc
    csv = fuel.statement("2026-05", format="csv")
    assert csv.status == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "net_cents,853" in csv.body.decode()


def _set(path, value):
    def change(signed):
        target = signed
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value
    return change


def _resign_digest(signed):  # tamper, then recompute the digest so only the signature can tell
    signed["document"]["net_cents"] += 100
    signed["digest"] = hashlib.sha256(canonical_json(signed["document"])).hexdigest()


def _flip_first(text: str) -> str:  # the last base64url character may only carry padding bits
    return ("B" if text[0] == "A" else "A") + text[1:]


def _forge(signed):  # a valid signature, by another key, under the coalition's kid
    signed["signature"]["value"] = b64url(ed25519.Ed25519PrivateKey.generate().sign(
        canonical_json(signed["document"])))


@pytest.mark.parametrize("tamper, message", [
    (_set(("document", "net_cents"), 953), "digest mismatch"),
    (_set(("document", "counterparties", 0, "issued_by_them_redeemed_here"), 701), "digest mismatch"),
    (_set(("document", "terms", "claim_fee"), "0.000000"), "digest mismatch"),
    (_set(("digest",), lambda d: d[:-1] + ("0" if d[-1] != "0" else "1")), "digest mismatch"),
    (_resign_digest, "signature does not verify"),
    (_set(("signature", "value"), _flip_first), "signature does not verify"),
    (_set(("signature", "value"), "not base64url!"), "signature does not verify"),
    (_forge, "signature does not verify"),
    (_set(("signature", "kid"), "someone-else"), "no Ed25519 (OKP) key with kid someone-else"),
    (_set(("signature", "alg"), "ES256"), "unsupported signature alg"),
    (lambda s: s.pop("signature"), "not a signed statement"),
    (_set(("document",), ["not", "an", "object"]), "not a signed statement"),
], ids=["net", "counterparty", "terms", "digest", "digest-recomputed", "signature-bit",
        "signature-garbage", "signature-other-key", "kid", "alg", "unsigned", "document-type"])
def test_tampering_is_caught(fetched, tamper, message):
    signed, jwks = fetched
    changed = copy.deepcopy(signed)
    tamper(changed)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        verify_statement(changed, jwks)
    verify_statement(signed, jwks)  # the original still holds


def test_a_jwks_without_the_right_key_is_refused(fetched):
    signed, jwks = fetched
    kid = signed["signature"]["kid"]
    _, impostor = other_jwk(kid=kid)  # right kid, wrong key
    ec_key = {**jwks["keys"][0], "kty": "EC", "crv": "P-256"}
    for bad, message in (({"keys": []}, "no Ed25519 \\(OKP\\) key with kid"),
                         ({"keys": [other_jwk()[1]]}, "no Ed25519 \\(OKP\\) key with kid"),
                         ({}, "no Ed25519"), ([], "no Ed25519"),
                         ({"keys": [ec_key]}, "no Ed25519"),
                         ({"keys": [{**jwks["keys"][0], "x": "short"}]}, "malformed"),
                         ({"keys": [impostor]}, "signature does not verify")):
        with pytest.raises(ValueError, match=message):
            verify_statement(signed, bad)


def test_client_paths_and_signing():
    rec = Recorder(status=200)
    client = PartnerClient("", "fuel", new_key("ES256"), transport=rec)
    client.statements(), client.statement("2026-05"), client.statement("2026-05", format="pdf")
    client.statement("2026/05", format="csv"), client.jwks()
    assert [(m, p) for m, p, _, _ in rec.calls] == [
        ("GET", "/v1/statements"), ("GET", "/v1/statements/2026-05"),
        ("GET", "/v1/statements/2026-05?format=pdf"), ("GET", "/v1/statements/2026%2F05?format=csv"),
        ("GET", "/.well-known/jwks.json")]
    assert all(h["Authorization"].startswith("Bearer ") and body == b"" for _, _, h, body in rec.calls)


def test_pdf_statement_comes_back_as_bytes(fuel):
    resp = fuel.statement("2026-05", format="pdf")
    assert resp.status == 200 and resp.headers["content-type"].startswith("application/pdf")
    assert resp.body.startswith(b"%PDF-")


@pytest.fixture
def served(app):
    """The app on a real local port, for the CLI (which speaks HTTP through urllib)."""
    server = make_server("127.0.0.1", 0, app, threaded=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_cli_saves_a_statement_and_verifies_it_offline(fuel, served, tmp_path, capsys):
    keyfile = tmp_path / "fuel.pem"
    keyfile.write_bytes(fuel.key_pem)
    conn = ["--base-url", served, "--partner", "fuel", "--key", str(keyfile)]
    assert main([*conn, "statements"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("HTTP 200") and json.loads(out.split("\n", 1)[1])["statements"][0]["net_cents"] == 853

    saved = tmp_path / "may.json"
    assert main([*conn, "statement", "2026-05", "--out", str(saved)]) == 0
    assert f"wrote {saved}" in capsys.readouterr().out
    assert main([*conn, "statement", "2026-05", "--format", "csv", "--out", str(tmp_path / "may.csv")]) == 0
    assert "net_cents,853" in (tmp_path / "may.csv").read_text()
    assert main([*conn, "statement", "2026-07", "--out", str(tmp_path / "july.json")]) == 1
    assert not (tmp_path / "july.json").exists() and "HTTP 404" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # a PDF is not printed to a terminal
        main([*conn, "statement", "2026-05", "--format", "pdf"])
    assert exc.value.code == 2 and "--out" in capsys.readouterr().err

    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_bytes(fuel.jwks().body)
    for source in (str(jwks_file), served, served + "/.well-known/jwks.json"):  # no partner settings needed
        assert main(["verify-statement", str(saved), "--jwks", source]) == 0, capsys.readouterr().err
        ok = json.loads(capsys.readouterr().out)
        assert ok == {"ok": True, "partner_id": "fuel", "period": "2026-05", "net_cents": 853,
                      "digest": json.loads(saved.read_bytes())["digest"], "kid": ok["kid"]}

    tampered = json.loads(saved.read_bytes())
    tampered["document"]["points_redeemed"] = 9000
    saved.write_text(json.dumps(tampered))
    assert main(["verify-statement", str(saved), "--jwks", str(jwks_file)]) == 1
    assert "statement does not verify: digest mismatch" in capsys.readouterr().err
    assert main(["verify-statement", str(tmp_path / "missing.json"), "--jwks", str(jwks_file)]) == 1
    assert "error:" in capsys.readouterr().err


def test_cli_verify_fetches_a_bare_origins_well_known_jwks(fetched, tmp_path, capsys):
    signed, jwks = fetched
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            payload = json.dumps(jwks).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "s.json").write_text(json.dumps(signed))
        assert main(["verify-statement", str(tmp_path / "s.json"),
                     "--jwks", f"http://127.0.0.1:{server.server_port}/"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [("/.well-known/jwks.json", None)] and json.loads(capsys.readouterr().out)["ok"]
