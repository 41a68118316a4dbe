"""A chunked body over MAX_BODY_BYTES is 413 payload-too-large, before any token work (issue 14,
finding 4). It declares no Content-Length, so werkzeug's own check never fired: behind gunicorn,
which de-chunks it, werkzeug read the first MiB, stopped there, and the token check refused the
cut body 401 invalid-token.

Through the test client, `wsgi.input_terminated` stands for a server that de-chunks (gunicorn
sets it); then through a real gunicorn."""
from __future__ import annotations

import http.client
import io
import json
import os
import subprocess
import sys
from datetime import datetime, timezone

import flask_migrate
import pytest

from coalition import create_app
from coalition.database import db
from partners import service as partner_service
from partners.client import PartnerClient
from tests.conftest import new_key, public_pem
from tests.crash.server import free_port, wait_until
from tests.test_validation import assert_nothing_booked, earn_body, encode, shop  # noqa: F401

MIB = 1024 * 1024
PROBLEM_JSON = "application/problem+json"


def padded(size: int, **fields) -> bytes:
    raw = encode(earn_body(**fields))
    return raw[:-1] + b" " * (size - len(raw)) + b"}"


def chunked(app, body: bytes, headers: dict):
    """As a de-chunking server hands the app a chunked body: no Content-Length, the stream
    terminated by the server."""
    headers = {**headers, "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    return app.test_client().post("/v1/earn", input_stream=io.BytesIO(body), headers=headers,
                                  environ_overrides={"wsgi.input_terminated": True})


@pytest.mark.parametrize("size", [MIB + 1, 3 * MIB])
@pytest.mark.parametrize("signed", [True, False], ids=["valid-token", "invalid-token"])
def test_a_chunked_body_over_the_limit_is_413(app, shop, size, signed):
    body = padded(size)
    headers = shop.client.sign("POST", "/v1/earn", body) if signed else {"Authorization": "Bearer x.y.z"}
    r = chunked(app, body, headers)
    assert r.status_code == 413 and r.mimetype == PROBLEM_JSON
    assert r.get_json()["type"] == "/problems/payload-too-large"
    assert_nothing_booked(app, shop)


@pytest.mark.parametrize("size", [200, MIB])
def test_a_chunked_body_within_the_limit_is_read_whole(app, shop, size):
    body = padded(size, claim_id=f"chunked-{size}")
    r = chunked(app, body, shop.client.sign("POST", "/v1/earn", body))
    assert r.status_code == 201, r.get_data(as_text=True)
    assert r.get_json()["claim_id"] == f"chunked-{size}"


@pytest.fixture
def gunicorn(tmp_path):
    """gunicorn (one sync worker) on its own SQLite file, with partner acme; yields (port, acme)."""
    uri = f"sqlite:///{tmp_path}/coalition.db"
    key_file = str(tmp_path / "signing-key.pem")
    app = create_app({"SQLALCHEMY_DATABASE_URI": uri, "COALITION_SIGNING_KEY_FILE": key_file})
    key = new_key("EdDSA")
    with app.app_context():
        flask_migrate.upgrade()
        now = datetime.now(timezone.utc)
        partner_service.add_partner(db.session, "acme", "Acme", now=now, terms={})
        partner_service.add_key(db.session, "acme", public_pem(key), now=now)
        db.session.commit()
        db.engine.dispose()
    port = free_port()
    env = {**os.environ, "DATABASE_URL": uri, "COALITION_SIGNING_KEY_FILE": key_file,
           "RATELIMIT_ENABLED": "false", "LOG_LEVEL": "WARNING"}
    env.pop("REDIS_URL", None)
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "gunicorn"), "-w", "1", "-b", f"127.0.0.1:{port}",
         "--no-control-socket", "wsgi:app"],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env,
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "gunicorn.log", "wb"))

    def ready() -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            return connection.getresponse().status == 200
        except OSError:
            return False
    try:
        wait_until(ready, 60, "gunicorn to serve")
        yield port, PartnerClient("", "acme", key)
    finally:
        server.terminate()
        server.wait(timeout=30)


def post_chunked(port: int, body: bytes, headers: dict) -> tuple[int, str, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    pieces = (body[i:i + 65536] for i in range(0, len(body), 65536))
    connection.request("POST", "/v1/earn", body=pieces, encode_chunked=True,
                       headers={**headers, "Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, response.getheader("Content-Type"), json.loads(response.read())


@pytest.mark.parametrize("signed", [True, False], ids=["valid-token", "invalid-token"])
def test_gunicorn_answers_413_to_a_chunked_body_over_the_limit(gunicorn, signed):
    port, acme = gunicorn
    body = padded(MIB + 1, member_id="M1")
    headers = acme.sign("POST", "/v1/earn", body) if signed else {"Authorization": "Bearer x.y.z"}
    status, content_type, doc = post_chunked(port, body, headers)
    assert (status, content_type, doc["type"]) == (413, PROBLEM_JSON, "/problems/payload-too-large")


def test_gunicorn_reads_a_chunked_body_within_the_limit(gunicorn):
    port, acme = gunicorn
    body = padded(MIB, member_id="M-unknown")
    status, content_type, doc = post_chunked(port, body, acme.sign("POST", "/v1/earn", body))
    # Read whole and its token accepted: the member is what is wrong, not the body or the token.
    assert (status, doc["type"]) == (404, "/problems/not-found"), doc
