"""Tests for the standalone partner client (partners/client.py). No app needed."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the client is meant to be copied alone; make it importable without packaging
    sys.path.insert(0, str(ROOT))

from partners.client import (  # noqa: E402
    PartnerClient, Response, algorithm_for, jwk_thumbprint, load_private_key, main,
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(params=["ES256", "EdDSA"])
def key(request):
    return ec.generate_private_key(ec.SECP256R1()) if request.param == "ES256" else ed25519.Ed25519PrivateKey.generate()


def decode(token: str, key, audience: str = "coalition") -> tuple[dict, dict]:
    alg = algorithm_for(key)
    return jwt.get_unverified_header(token), jwt.decode(token, key.public_key(), algorithms=[alg], audience=audience)


def test_thumbprint_rfc8037_ed25519_example():
    public = ed25519.Ed25519PublicKey.from_public_bytes(unb64("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"))
    assert jwk_thumbprint(public) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_thumbprint_p256_matches_independent_computation():
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    full = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    required = {name: full[name] for name in ("crv", "kty", "x", "y")}
    assert len(unb64(required["x"])) == 32 and len(unb64(required["y"])) == 32
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":")).encode()
    assert jwk_thumbprint(public) == b64(hashlib.sha256(canonical).digest())


def test_algorithm_for_rejects_other_keys():
    assert algorithm_for(ec.generate_private_key(ec.SECP256R1())) == "ES256"
    assert algorithm_for(ed25519.Ed25519PrivateKey.generate().public_key()) == "EdDSA"
    with pytest.raises(ValueError):
        algorithm_for(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ValueError):
        algorithm_for(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(ValueError):
        jwk_thumbprint(ec.generate_private_key(ec.SECP384R1()).public_key())


def test_load_private_key_from_bytes_and_path(tmp_path, key):
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    (tmp_path / "k.pem").write_bytes(pem)
    for source in (pem, tmp_path / "k.pem", str(tmp_path / "k.pem")):
        loaded = load_private_key(source)
        assert jwk_thumbprint(loaded.public_key()) == jwk_thumbprint(key.public_key())


def test_sign_produces_verifiable_token_with_all_claims(key):
    client = PartnerClient("http://x", "acme", key, audience="aud-1", lifetime=90)
    body = client.encode_body({"claim_id": "c1", "points": 5, "description": "café"})
    assert body == '{"claim_id":"c1","points":5,"description":"café"}'.encode("utf-8")
    headers = client.sign("post", "/v1/earn?x=1&y=a%20b", body)
    assert headers["Content-Type"] == "application/json"
    scheme, token = headers["Authorization"].split(" ")
    assert scheme == "Bearer"
    header, claims = decode(token, key, audience="aud-1")
    assert header["alg"] == algorithm_for(key)
    assert header["typ"] == "partner+jwt"
    assert header["kid"] == jwk_thumbprint(key.public_key())
    assert claims["iss"] == "acme" and claims["aud"] == "aud-1"
    assert claims["htm"] == "POST" and claims["htu"] == "/v1/earn?x=1&y=a%20b"
    assert claims["bsh"] == b64(hashlib.sha256(body).digest())
    assert isinstance(claims["iat"], int) and claims["exp"] - claims["iat"] == 90
    assert 0 < len(claims["jti"]) <= 64
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, key.public_key(), algorithms=[algorithm_for(key)], audience="coalition")


def test_sign_get_and_fresh_jti(key):
    client = PartnerClient("http://x", "acme", key, kid="my-kid")
    first, second = client.sign("GET", "/v1/claims/c1", b""), client.sign("GET", "/v1/claims/c1", b"")
    assert "Content-Type" not in first
    h1, c1 = decode(first["Authorization"][7:], key)
    _, c2 = decode(second["Authorization"][7:], key)
    assert h1["kid"] == "my-kid"
    assert c1["bsh"] == b64(hashlib.sha256(b"").digest()) == "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
    assert c1["jti"] != c2["jti"]


class Recorder:
    def __init__(self, status: int = 201):
        self.calls: list[tuple[str, str, dict, bytes]] = []
        self.status = status

    def __call__(self, method, path, headers, body):
        self.calls.append((method, path, headers, body))
        return Response(self.status, {"content-type": "application/json"}, b'{"ok":true}')


def test_transport_receives_exactly_the_signed_body(key):
    rec = Recorder()
    client = PartnerClient("http://x", "acme", key, transport=rec)
    resp = client.earn("c/1", "M 1", 100, description="ünïcode")
    assert resp.status == 201 and resp.json() == {"ok": True}
    method, path, headers, body = rec.calls[0]
    assert (method, path) == ("POST", "/v1/earn")
    _, claims = decode(headers["Authorization"][7:], key)
    assert claims["bsh"] == b64(hashlib.sha256(body).digest()) and claims["htu"] == path
    sent = json.loads(body)
    assert set(sent) == {"claim_id", "member_id", "points", "occurred_at", "description"}  # None omitted
    assert sent["member_id"] == "M 1" and sent["description"] == "ünïcode"
    assert sent["occurred_at"].endswith("Z")


def test_paths_are_quoted_and_retries_get_new_jti(key):
    rec = Recorder(status=404)
    client = PartnerClient("http://x", "acme", key, transport=rec)
    assert client.claim("a/b?c").status == 404  # errors come back as a Response
    client.claim("a/b?c")
    client.balance("M 1")
    client.reverse("c1", "r1", 5, occurred_at="2025-01-02T03:04:05Z")
    paths = [call[1] for call in rec.calls]
    assert paths == ["/v1/claims/a%2Fb%3Fc"] * 2 + ["/v1/members/M%201/balance", "/v1/claims/c1/reversals"]
    jtis = {decode(call[2]["Authorization"][7:], key)[1]["jti"] for call in rec.calls[:2]}
    assert len(jtis) == 2
    assert json.loads(rec.calls[3][3]) == {"reversal_id": "r1", "points": 5, "occurred_at": "2025-01-02T03:04:05Z"}


@pytest.fixture
def stub_server():
    """A local HTTP server answering with a configurable status; records what it received."""
    seen: list[dict] = []
    state = {"status": 201}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                         "body": self.rfile.read(length)})
            payload = json.dumps({"status": state["status"]}).encode()
            self.send_response(state["status"])
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", seen, state
    server.shutdown()
    server.server_close()


def test_urllib_transport_returns_http_errors(stub_server, key):
    url, seen, state = stub_server
    client = PartnerClient(url, "acme", key)
    state["status"] = 422
    resp = client.burn("c1", "M1", 10)
    assert resp.status == 422 and resp.json() == {"status": 422}
    assert resp.headers["content-type"] == "application/problem+json"
    req = seen[0]
    assert req["method"] == "POST" and req["path"] == "/v1/burn"
    assert req["headers"]["Content-Type"] == "application/json"
    _, claims = decode(req["headers"]["Authorization"][7:], key)
    assert claims["bsh"] == b64(hashlib.sha256(req["body"]).digest())


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "partners.client", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_cli_keygen_writes_keys_and_prints_thumbprint(tmp_path, alg):
    out = tmp_path / "partner.pem"
    result = run_cli("keygen", "--alg", alg, "--out", str(out))
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["alg"] == alg and printed["public_key"] == str(out) + ".pub"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    private = load_private_key(out)
    public = serialization.load_pem_public_key(Path(printed["public_key"]).read_bytes())
    assert algorithm_for(private) == alg
    assert printed["kid"] == jwk_thumbprint(public) == jwk_thumbprint(private.public_key())
    again = run_cli("keygen", "--alg", alg, "--out", str(out))  # never overwrites an existing key
    assert again.returncode == 1 and load_private_key(out).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) == out.read_bytes()


def test_cli_request_uses_env_and_exit_code(tmp_path, stub_server):
    url, seen, state = stub_server
    keyfile = tmp_path / "k.pem"
    assert run_cli("keygen", "--alg", "EdDSA", "--out", str(keyfile)).returncode == 0
    env = {"COALITION_URL": url, "COALITION_PARTNER": "acme", "COALITION_KEY": str(keyfile)}
    ok = run_cli("earn", "--member", "M1", "--points", "7", "--pending-until", "2030-01-01T00:00:00Z", env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("HTTP 201") and json.loads(ok.stdout.split("\n", 1)[1]) == {"status": 201}
    sent = json.loads(seen[0]["body"])
    assert sent["points"] == 7 and sent["pending_until"] == "2030-01-01T00:00:00Z" and sent["claim_id"]
    assert "description" not in sent
    _, claims = decode(seen[0]["headers"]["Authorization"][7:], load_private_key(keyfile))
    assert claims["iss"] == "acme"
    state["status"] = 404
    missing = run_cli("claim", "nope", env=env)
    assert missing.returncode == 1 and missing.stdout.startswith("HTTP 404")
    assert seen[1]["method"] == "GET" and seen[1]["path"] == "/v1/claims/nope"


def test_main_requires_connection_settings(monkeypatch, capsys):
    for name in ("COALITION_URL", "COALITION_PARTNER", "COALITION_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["balance", "M1"])
    assert exc.value.code == 2 and "--base-url" in capsys.readouterr().err
