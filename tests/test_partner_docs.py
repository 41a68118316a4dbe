"""docs/partner-api.md cannot drift from the service: its examples are read out of the document,
as a partner's engineer reads them, and run.

A block the tests read is the fenced block right after a line `<!-- example: NAME -->` (an HTML
comment: invisible where the document is rendered). The worked example is recomputed byte for
byte from its seed, time, body and claims and sent to the app with the app's clock set to the
example's time; the Python and shell examples run unchanged against the app served on a local
port, with a partner registered for the test.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from werkzeug.serving import make_server

import partners.views
from coalition import members
from coalition.database import db
from partners import service as partner_service
from partners import tokens
from partners.keys import thumbprint
from settlement import service as settlement_service
from settlement import signing
from tests.conftest import new_key, public_pem

try:  # the slug table's home (it moved out of errors.py, which re-exports it)
    from coalition.problems import SLUGS
except ImportError:  # pragma: no cover
    from coalition.errors import SLUGS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "partner-api.md"
_MARKED = re.compile(r"<!-- example: ([a-z0-9-]+) -->\n```[a-z]*\n(.*?)\n```", re.DOTALL)


def examples() -> dict[str, str]:
    found: dict[str, str] = {}
    for name, text in _MARKED.findall(DOC.read_text(encoding="utf-8")):
        assert name not in found, f"two blocks are marked {name}"
        found[name] = text
    return found


def example(name: str) -> str:
    blocks = examples()
    assert name in blocks, f"docs/partner-api.md has no block marked <!-- example: {name} -->"
    return blocks[name]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Worked:
    """The worked example as the document states it."""

    def __init__(self) -> None:
        seed = bytes.fromhex(example("worked-seed").strip())
        self.key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        self.kid = example("worked-kid").strip()
        self.iat = int(example("worked-iat").strip())
        self.body = example("worked-body").encode()  # the block's bytes, without a final newline
        self.bsh = example("worked-bsh").strip()
        self.header = example("worked-header").encode()
        self.payload = example("worked-payload").encode()
        self.claims = json.loads(self.payload)
        self.token = "".join(example("worked-token").split())  # one line, broken at the dots
        head, _, answer = example("worked-answer").partition("\n\n")
        self.status = int(head.split()[1])
        self.answer = json.loads(answer)

    @property
    def moment(self) -> datetime:
        return datetime.fromtimestamp(self.iat, timezone.utc)


@pytest.fixture
def worked() -> Worked:
    return Worked()


def pin_clock(monkeypatch, moment: datetime) -> None:
    """The app's clock reads `moment`: the token check's seconds since the epoch, and the
    request handlers' now (the booking's recorded_at, the harvesting watch, jti pruning)."""
    monkeypatch.setattr(tokens, "time", SimpleNamespace(time=lambda: moment.timestamp(),
                                                        monotonic=time.monotonic))
    for module in (partners.views, sys.modules.get("partners.auth")):
        if module is not None and hasattr(module, "_now"):
            monkeypatch.setattr(module, "_now", lambda: moment)


def register(app, partner_id: str, public_key_pem: bytes) -> str:
    with app.app_context():
        now = datetime.now(timezone.utc)
        partner_service.add_partner(db.session, partner_id, partner_id, now=now)
        kid = partner_service.add_key(db.session, partner_id, public_key_pem, now=now).kid
        db.session.commit()
    return kid


def private_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture
def served(app):
    """The app on a local port, as a partner reaches it: its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.fixture
def partner_files(app, tmp_path):
    """A freshly registered partner: (partner id, its private key's PEM file)."""
    key = new_key("EdDSA")
    register(app, "docs-example", public_pem(key))
    path = tmp_path / "partner.pem"
    path.write_bytes(private_pem(key))
    path.chmod(0o600)
    return "docs-example", path


# --- the worked example ---------------------------------------------------------------------

def test_the_worked_token_reproduces_byte_for_byte(worked):
    public = worked.key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # RFC 8032, section 7.1, TEST 1: the seed's public key
    assert raw.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert worked.kid == thumbprint(public)
    assert worked.bsh == b64url(hashlib.sha256(worked.body).digest())
    assert json.loads(worked.body)["points"] == 100 and not worked.body.endswith(b"\n")
    assert f"exactly these {len(worked.body)} bytes" in DOC.read_text(encoding="utf-8")

    assert worked.header == json.dumps({"alg": "EdDSA", "kid": worked.kid, "typ": "partner+jwt"},
                                       separators=(",", ":")).encode()
    claims = worked.claims
    assert list(claims) == ["iss", "aud", "iat", "exp", "jti", "htm", "htu", "bsh"]
    assert (claims["aud"], claims["iat"], claims["htm"], claims["htu"], claims["bsh"]) == \
        ("coalition", worked.iat, "POST", "/v1/earn", worked.bsh)
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert worked.payload == json.dumps(claims, separators=(",", ":")).encode()

    signing_input = f"{b64url(worked.header)}.{b64url(worked.payload)}"
    assert worked.token == f"{signing_input}.{b64url(worked.key.sign(signing_input.encode()))}"
    # What section 3 says a JWT library does: PyJWT gives the very same bytes.
    assert jwt.encode(claims, worked.key, algorithm="EdDSA",
                      headers={"typ": "partner+jwt", "kid": worked.kid}) == worked.token


def test_the_worked_request_gets_the_documented_answer(app, worked, monkeypatch):
    partner_id, member_id = worked.claims["iss"], json.loads(worked.body)["member_id"]
    assert register(app, partner_id, public_pem(worked.key)) == worked.kid
    with app.app_context():
        members.enrol(db.session, member_id, now=worked.moment)
        db.session.commit()
    headers = {"Authorization": f"Bearer {worked.token}", "Content-Type": "application/json"}
    with app.test_client() as client:
        pin_clock(monkeypatch, worked.moment)
        answer = client.post(worked.claims["htu"], data=worked.body, headers=headers)
        assert (answer.status_code, answer.get_json()) == (worked.status, worked.answer)
        assert answer.mimetype == "application/json"

        # "Sent again, the very same token is refused ... sent today, it is long expired"
        again = client.post(worked.claims["htu"], data=worked.body, headers=headers)
        assert (again.status_code, again.get_json()["type"]) == (401, "/problems/token-replayed")
        # "The same body under a fresh token is answered with the same 201 and Idempotent-Replayed"
        fresh = jwt.encode({**worked.claims, "jti": "worked-example-0002"}, worked.key,
                           algorithm="EdDSA", headers={"typ": "partner+jwt", "kid": worked.kid})
        replayed = client.post(worked.claims["htu"], data=worked.body,
                               headers={**headers, "Authorization": f"Bearer {fresh}"})
        assert (replayed.status_code, replayed.get_json()) == (worked.status, worked.answer)
        assert replayed.headers["Idempotent-Replayed"] == "true"
        monkeypatch.undo()
        today = client.post(worked.claims["htu"], data=worked.body, headers=headers)
        assert (today.status_code, today.get_json()["type"]) == (401, "/problems/token-expired")


# --- the Python example ---------------------------------------------------------------------

def run_python_example(tmp_path, base_url: str, partner_id: str,
                       key_file: Path) -> list[tuple[int, object]]:
    script = tmp_path / "earn.py"
    script.write_text(example("python") + "\n", encoding="utf-8")
    env = {**os.environ, "COALITION_URL": base_url, "COALITION_PARTNER": partner_id,
           "COALITION_KEY": str(key_file)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = []
    for line in done.stdout.splitlines():
        status, _, body = line.partition(" ")
        lines.append((int(status), json.loads(body)))
    return lines


def test_the_python_example_books_a_claim(app, served, partner_files, tmp_path):
    partner_id, key_file = partner_files
    (enrolled_status, enrolled), (status, claim) = run_python_example(
        tmp_path, served, partner_id, key_file)
    assert (enrolled_status, enrolled["member_id"]) == (201, "M-1001")
    assert status == 201, claim
    assert {k: claim[k] for k in ("kind", "member_id", "partner_id", "points", "status",
                                  "balance_after", "description", "late", "reversed_points")} == {
        "kind": "earn", "member_id": "M-1001", "partner_id": partner_id, "points": 100,
        "status": "booked", "balance_after": 100, "description": "receipt 42", "late": False,
        "reversed_points": 0}
    assert claim["claim_id"].startswith("receipt-")

    # Run again: the member exists (200), and a new sale is a new claim.
    (again_status, _), (status, second) = run_python_example(tmp_path, served, partner_id, key_file)
    assert (again_status, status, second["balance_after"]) == (200, 201, 200)
    assert second["claim_id"] != claim["claim_id"]


class Scripted(BaseHTTPRequestHandler):
    """Answers each request with the next of `answers`; records what it was sent."""
    answers: list[tuple[int, dict[str, str]]] = []
    seen: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append((self.path, self.headers["Authorization"], body))
        status, headers = type(self).answers.pop(0)
        payload = json.dumps({"status": status}).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted(monkeypatch, tmp_path):
    """The Python example's functions, loaded (not run) against a scripted server."""
    server = HTTPServer(("127.0.0.1", 0), Scripted)
    Scripted.answers, Scripted.seen = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    key_file = tmp_path / "partner.pem"
    key_file.write_bytes(private_pem(new_key("ES256")))
    monkeypatch.setenv("COALITION_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("COALITION_PARTNER", "example-shop")
    monkeypatch.setenv("COALITION_KEY", str(key_file))
    script = tmp_path / "earn.py"
    script.write_text(example("python") + "\n", encoding="utf-8")
    yield runpy.run_path(str(script), run_name="partner_docs_example")
    server.shutdown()
    thread.join(5)


def test_the_python_example_retries_the_same_body_under_fresh_tokens(scripted):
    Scripted.answers = [(503, {"Retry-After": "0"}), (429, {"Retry-After": "0"}), (201, {})]
    status, _, _ = scripted["call"]("POST", "/v1/earn", {"claim_id": "c-1", "points": 5})
    assert status == 201
    bodies = {body for _, _, body in Scripted.seen}
    tokens_sent = [auth.removeprefix("Bearer ") for _, auth, _ in Scripted.seen]
    jtis = {jwt.decode(t, options={"verify_signature": False})["jti"] for t in tokens_sent}
    assert len(Scripted.seen) == 3 and len(bodies) == 1 and len(jtis) == 3
    claims = jwt.decode(tokens_sent[0], options={"verify_signature": False})
    assert claims["bsh"] == b64url(hashlib.sha256(bodies.pop()).digest())
    assert (claims["htm"], claims["htu"]) == ("POST", "/v1/earn")
    assert jwt.get_unverified_header(tokens_sent[0])["alg"] == "ES256"


def test_the_python_example_never_retries_another_4xx(scripted):
    Scripted.answers = [(422, {}), (201, {})]
    assert scripted["call"]("POST", "/v1/earn", {"claim_id": "c-1"})[0] == 422
    assert len(Scripted.seen) == 1


# --- the shell example ----------------------------------------------------------------------

def openssl_3() -> bool:
    if not (shutil.which("openssl") and shutil.which("bash")):
        return False
    version = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout
    match = re.match(r"OpenSSL (\d+)\.", version)
    return bool(match) and int(match.group(1)) >= 3


needs_openssl_3 = pytest.mark.skipif(not openssl_3(), reason="needs bash and OpenSSL 3")


def run_shell(script: str, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_openssl_3
def test_the_shell_recipe_signs_the_worked_token(worked, tmp_path):
    key_file = tmp_path / "example-shop.pem"
    key_file.write_bytes(private_pem(worked.key))
    (tmp_path / "body.json").write_bytes(worked.body)
    out = run_shell(example("shell-sign") + '\nsign POST /v1/earn body.json\n', {
        "COALITION_KEY": str(key_file), "COALITION_PARTNER": worked.claims["iss"],
        "IAT": str(worked.iat), "JTI": worked.claims["jti"]}, tmp_path)
    assert out == worked.token


@needs_openssl_3
@pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")
def test_the_shell_example_books_a_claim(app, served, partner_files, tmp_path):
    partner_id, key_file = partner_files
    out = run_shell(example("shell-sign") + "\n" + example("shell-call") + "\n", {
        "COALITION_URL": served, "COALITION_PARTNER": partner_id,
        "COALITION_KEY": str(key_file)}, tmp_path)
    statuses = re.findall(r"^HTTP (\d{3})$", out, re.MULTILINE)
    assert statuses == ["201", "201", "200"], out
    balance = json.loads(re.split(r"^HTTP \d{3}$", out, flags=re.MULTILINE)[-2])
    assert (balance["member_id"], balance["available"]) == ("M-1001", 100)


# --- statements -----------------------------------------------------------------------------

def test_the_statement_check_accepts_a_signed_statement_and_refuses_a_changed_one(
        app, make_partner):
    check: dict = {}
    exec(compile(example("verify-statement"), "verify-statement", "exec"), check)
    partner = make_partner("docs-statement")
    assert partner.client.enrol("M-1").status == 201
    earned = partner.client.earn("e-1", "M-1", 120)
    assert earned.status == 201
    period = earned.json()["period"]
    year, month = map(int, period.split("-"))
    after = datetime(year + month // 12, month % 12 + 1, 2, tzinfo=timezone.utc)
    with app.app_context():
        key = signing.signing_key(app.config["COALITION_SIGNING_KEY_FILE"])
        settlement_service.close(db.session, period, now=after, tz="Europe/Berlin", key=key)
        db.session.commit()
    signed = partner.client.statement(period).json()
    jwks = partner.client.jwks().json()
    assert check["check_statement"](signed, jwks)["points_issued"] == 120
    signed["document"]["points_issued"] = 121
    with pytest.raises(ValueError, match="digest"):
        check["check_statement"](signed, jwks)


# --- completeness ---------------------------------------------------------------------------

def test_every_slug_has_a_row_in_the_error_table():
    text = DOC.read_text(encoding="utf-8")
    table = re.findall(r"^\| (\d{3}) \| `([a-z-]+)` \|", text, re.MULTILINE)
    rows = {slug: int(status) for status, slug in table}
    assert {slug: status for slug, (status, _) in SLUGS.items()} == rows


def test_every_path_the_app_serves_under_v1_is_documented(app):
    with app.test_client() as client:
        paths = client.get("/openapi.json").get_json()["paths"]
    text = DOC.read_text(encoding="utf-8")
    served = sorted(p for p in paths if p.startswith("/v1/"))
    assert len(served) >= 10
    assert [p for p in served if f"`{p}`" not in text and f" {p}" not in text] == []


def test_no_tracked_file_points_outside_the_repository():
    """The repository explains itself: no reference documents kept beside it."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    outside = re.compile(rb"\b(?:API|DESIGN)\.md\b|\.\./shared\b")
    names = [name.decode() for name in listed.stdout.split(b"\0") if name]
    assert len(names) > 50
    texts = {name: (ROOT / name).read_bytes() for name in names if (ROOT / name).is_file()}
    offending = {name: sorted({m.decode() for m in outside.findall(text)})
                 for name, text in texts.items() if outside.search(text)}
    assert offending == {}


def test_the_readme_links_the_partner_guide_on_its_first_screen():
    first_screen = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:25]
    assert any("docs/partner-api.md" in line for line in first_screen)
