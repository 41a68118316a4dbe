"""Production serving (`make serve`, deploy/): slow clients cannot starve the service, and every
answer nginx or gunicorn writes itself is problem+json with the app's headers.

The stack is deploy/serve.sh itself, as `make serve` runs it: nginx on a free loopback port in
front of gunicorn (deploy/gunicorn.conf.py, 2 gthread workers) on a unix socket, the sealer
beside them, on a temporary SQLite database. Without nginx installed the module is skipped (CI
installs it). Issue 14, finding 2: under `gunicorn -w 2` (sync workers, `make demo`), two clients
that send half a header and stall hold both workers for 30 s.
"""
from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import flask_migrate
import pytest

from coalition import create_app
from coalition.database import db
from coalition.errors import SLUGS
from coalition.ops import API_CSP, SECURITY_HEADERS
from partners import service as partner_service
from partners.client import PartnerClient
from tests.conftest import new_key, public_pem
from tests.crash.server import BIN, ROOT, alive, children, free_port, wait_until

_spec = importlib.util.spec_from_file_location("nginx_render", ROOT / "deploy" / "nginx" / "render.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)
NGINX = render.find_nginx()

if NGINX is None and os.environ.get("COALITION_REQUIRE_NGINX"):  # .ci/run: never skipped there
    raise RuntimeError("COALITION_REQUIRE_NGINX is set but nginx is not installed")
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx); "
                          ".ci/run installs it")

WORKERS = 2
# A functional bound, not a benchmark: the sync gunicorn of `make demo` answers after 30+ s.
PROMPT_S = 5.0
MAX_BODY_BYTES = 1024 * 1024
ANONYMOUS_BUDGET = 8  # RATELIMIT_ANONYMOUS per minute in this stack
# What every answer carries: the app's security headers (coalition/ops.py) for an API answer.
APP_HEADERS = {**SECURITY_HEADERS, "Content-Security-Policy": API_CSP, "Cache-Control": "no-store"}
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Stack:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.database_url = f"sqlite:///{work / 'coalition.db'}"
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        env.update(DATABASE_URL=self.database_url, COALITION_SIGNING_KEY_FILE=str(work / "signing.pem"),
                   LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1",
                   HOST="127.0.0.1", PORT=str(self.port), SERVE_DIR=str(work / "serve"),
                   ANCHORS=str(work / "anchors.jsonl"), WEB_CONCURRENCY=str(WORKERS),
                   BIN=str(BIN), RATELIMIT_ANONYMOUS=f"{ANONYMOUS_BUDGET} per minute")
        self.env = env
        self.process: subprocess.Popen | None = None
        self.descendants: set[int] = set()

    def start(self) -> None:
        log = open(self.work / "serve.log", "wb")
        self.process = subprocess.Popen([str(ROOT / "deploy" / "serve.sh")], cwd=ROOT, env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_until(self.ready, 60, "make serve's stack to answer /readyz through nginx")
        self.descendants = self._descendants()

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"deploy/serve.sh ended ({self.process.returncode}): {self.log()}")
        try:
            return self.get("/readyz").status == 200
        except OSError:
            return False

    def _descendants(self) -> set[int]:
        found, todo = set(), [self.process.pid]
        while todo:
            for pid in children(todo.pop()):
                found.add(pid)
                todo.append(pid)
        return found

    def get(self, path: str, headers: dict[str, str] | None = None,
            source: str = "127.0.0.1") -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30,
                                                source_address=(source, 0))
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        response.body = response.read()
        connection.close()
        return response

    def log(self) -> str:
        return (self.work / "serve.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # serve.sh stops nginx, gunicorn, the sealer
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        for pid in self.descendants | self._descendants():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("serving")
    stack = Stack(work)
    key = new_key("EdDSA")
    # Migrated and given a partner in this process (the flask command line would take seconds).
    app = create_app({"SQLALCHEMY_DATABASE_URI": stack.database_url,
                      "COALITION_SIGNING_KEY_FILE": str(work / "signing.pem")})
    with app.app_context():
        flask_migrate.upgrade()
        now = datetime.now(timezone.utc)
        partner_service.add_partner(db.session, "slow-test", "Slow Test", now=now, terms={})
        partner_service.add_key(db.session, "slow-test", public_pem(key), now=now)
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    stack.client = PartnerClient(f"http://127.0.0.1:{stack.port}", "slow-test", key)
    stack.start()
    yield stack
    stack.stop()
    assert stack.process.returncode == 143, stack.log()  # stopped by the signal, nothing crashed


def stall(port: int, data: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(data)
    return s


def raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are, read the answer until the server closes or it is complete."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # nginx answered and closed before taking all of it (413, 414)
        s.settimeout(10)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:
            pass
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"duplicate header {name}"
        headers[name.lower()] = value.strip()
    return status, headers, body


def _length(answer: bytes) -> int:
    match = re.search(rb"\r\ncontent-length:\s*(\d+)", answer.split(b"\r\n\r\n", 1)[0], re.I)
    return int(match.group(1)) if match else 1 << 30


def assert_problem(status: int, headers: dict[str, str], body: bytes, slug: str, expected: int) -> None:
    assert status == expected, (status, headers, body)
    assert headers["content-type"] == "application/problem+json", headers
    doc = json.loads(body)
    assert doc["type"] == f"/problems/{slug}" and doc["status"] == expected and doc["title"], doc
    assert doc["detail"]
    for name, value in APP_HEADERS.items():
        assert headers.get(name.lower()) == value, (name, headers)
    assert REQUEST_ID.fullmatch(headers.get("x-request-id", "")), headers
    assert doc["request_id"] == headers["x-request-id"], (doc, headers)  # the id a partner quotes


def test_slow_clients_do_not_starve_the_service(stack):
    port = stack.port
    half_headers = [stall(port, b"GET /healthz HTTP/1.1\r\nHost: coalition\r\nX-Slow: ")
                    for _ in range(10 * WORKERS)]
    half_bodies = [stall(port, b"POST /v1/earn HTTP/1.1\r\nHost: coalition\r\n"
                               b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"claim")
                   for _ in range(10 * WORKERS)]
    time.sleep(0.5)  # nginx has them all, stalled

    started = time.monotonic()
    health = stack.get("/healthz")
    assert health.status == 200 and time.monotonic() - started < PROMPT_S

    started = time.monotonic()
    unsigned = stack.get("/v1/members/slow-card-1/balance")
    assert unsigned.status == 401 and time.monotonic() - started < PROMPT_S

    started = time.monotonic()
    assert stack.client.enrol("slow-card-1").status == 201
    earned = stack.client.earn("slow-claim-1", "slow-card-1", 100)
    assert earned.status == 201, earned.body
    balance = stack.client.balance("slow-card-1")
    assert balance.status == 200 and balance.json()["available"] == 100
    assert time.monotonic() - started < PROMPT_S

    # A stalled client gets no answer at all (nginx logs 408 and sends nothing): once
    # client_header_timeout / client_body_timeout (10 s) have passed, its connection is reset.
    stalled = half_headers + half_bodies
    for s in stalled:
        s.settimeout(20)
    for s in stalled:
        try:
            assert s.recv(1024) == b""
        except ConnectionResetError:
            pass
        s.close()
    assert stack.get("/healthz").status == 200


def test_nginx_passes_the_app_answers_unchanged(stack):
    answer = stack.get("/v1/no-such-route", headers={"X-Request-Id": "trace-me-42"})
    assert answer.status == 404 and answer.getheader("Content-Type") == "application/problem+json"
    assert json.loads(answer.body)["detail"] == "No such resource."  # the app's own detail
    assert answer.getheader("X-Request-Id") == "trace-me-42"  # the app used nginx's (= the client's) id
    assert len(answer.headers.get_all("X-Request-Id")) == 1
    for name, value in APP_HEADERS.items():
        assert answer.headers.get_all(name) == [value], name
    assert answer.getheader("Server") == "nginx"  # no version, no gunicorn


HUGE_HEADER = b"X-Huge: " + b"h" * 10_000 + b"\r\n"


@pytest.mark.parametrize("request_bytes, slug, status", [
    pytest.param(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: c\r\n\r\n", "uri-too-long", 414,
                 id="20 KB request line"),
    pytest.param(b"G@T / HTTP/1.1\r\nHost: c\r\n\r\n", "malformed-request", 400, id="malformed request line"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "malformed-request", 400,
                 id="TLS on the plain port"),
    pytest.param(b"GET /healthz HTTP/1.1\r\n\r\n", "malformed-request", 400, id="HTTP/1.1 without Host"),
    pytest.param(b"GET /healthz HTTP/2.0\r\nHost: c\r\n\r\n", "malformed-request", 400, id="HTTP/2.0 line"),
    pytest.param(b"POST /v1/earn HTTP/1.1\r\nHost: c\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "malformed-request", 400,
                 id="Content-Length and chunked"),
    pytest.param(b"POST /v1/earn HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: gzip\r\n\r\n",
                 "malformed-request", 400, id="unknown transfer coding"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: c\r\n" + HUGE_HEADER + b"\r\n", "headers-too-large", 431,
                 id="10 KB header"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: c\r\n"
                 + b"".join(b"X-M%d: %s\r\n" % (i, b"m" * 3000) for i in range(8)) + b"\r\n",
                 "headers-too-large", 431, id="24 KB of headers"),
    pytest.param(b"POST /v1/earn HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n{\"a\":" % (MAX_BODY_BYTES + 1), "payload-too-large", 413,
                 id="body over 1 MiB"),
    pytest.param(b"TRACE / HTTP/1.1\r\nHost: c\r\n\r\n", "method-not-allowed", 405, id="TRACE"),
    pytest.param(b"GET /_edge/bad-gateway HTTP/1.1\r\nHost: c\r\n\r\n", "not-found", 404,
                 id="nginx's internal error path"),
    # nginx lets these through; gunicorn refuses them itself (deploy/gunicorn.conf.py answers).
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: c\r\nX-Ctl: a\x01b\r\n\r\n", "malformed-request", 400,
                 id="control character in a header (gunicorn)"),
    pytest.param(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ /healthz HTTP/1.1\r\nHost: c\r\n\r\n",
                 "malformed-request", 400, id="unconventional method (gunicorn)"),
])
def test_refusals_are_problem_json_with_the_app_headers(stack, request_bytes, slug, status):
    assert_problem(*raw(stack.port, request_bytes), slug, status)


def test_a_chunked_body_over_the_limit_is_413(stack):
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY_BYTES // len(chunk) + 1))
    assert_problem(*raw(stack.port, b"POST /v1/earn HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\n"
                                    b"Transfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"),
                   "payload-too-large", 413)


def test_a_body_of_exactly_the_limit_reaches_the_app(stack):
    body = b"[" + b" " * (MAX_BODY_BYTES - 2) + b"]"
    status, _, answer = raw(stack.port, b"POST /v1/earn HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\n"
                                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert status == 401 and json.loads(answer)["type"] == "/problems/invalid-token"  # the app's answer


def test_the_app_counts_each_client_under_its_own_address(stack):
    """TRUSTED_PROXIES=1 behind nginx: the app's per-address limit (RATELIMIT_ANONYMOUS, 8 per
    minute per gunicorn process in this stack) counts each client under its own address, and nginx replaces
    X-Forwarded-For, so a client cannot choose the address it is counted under. The clients
    are 127.0.0.2 and 127.0.0.3 (all of 127/8 is loopback)."""
    # Without REDIS_URL each gunicorn process counts on its own: past WORKERS budgets at most.
    statuses = [stack.get("/openapi.json", headers={"X-Forwarded-For": f"203.0.113.{n}"},
                          source="127.0.0.2").status for n in range(WORKERS * ANONYMOUS_BUDGET + 1)]
    assert statuses[0] == 200 and 429 in statuses, statuses  # a fresh spoofed address each time
    assert stack.get("/openapi.json", source="127.0.0.3").status == 200  # not nginx's one budget


def test_gunicorn_down_is_a_502_problem(tmp_path):
    """The gateway answers nginx writes when gunicorn does not answer (here: no socket at all)."""
    port = free_port()
    conf = render.render(tmp_path / "nginx", listen=f"127.0.0.1:{port}",
                         upstream=f"unix:{tmp_path / 'nobody-listens.sock'}", max_body_bytes=MAX_BODY_BYTES,
                         access_log="off", standalone=True, run_dir=tmp_path / "run")
    nginx = subprocess.Popen([NGINX, "-p", str(tmp_path / "run"), "-c", str(conf), "-e", "stderr"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_until(lambda: _listening(port) or nginx.poll() is not None, 20, "nginx to listen")
        assert nginx.poll() is None, nginx.stderr.read()
        status, headers, body = raw(port, b"POST /v1/earn HTTP/1.1\r\nHost: c\r\nContent-Length: 2\r\n\r\n{}")
        assert_problem(status, headers, body, "bad-gateway", 502)
        assert headers["retry-after"] == "1"
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(20)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _answered_problems() -> dict[str, tuple[int, str]]:
    template = (ROOT / "deploy" / "nginx" / "coalition.conf.template").read_text()
    found = {slug: (int(status), title) for slug, title, status in re.findall(
        r'"type":"/problems/([a-z-]+)","title":"([^"]+)","status":(\d+)', template)}
    gunicorn_conf: dict = {}
    exec(compile((ROOT / "deploy" / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"), gunicorn_conf)
    for status, (slug, title) in gunicorn_conf["_PROBLEMS"].items():
        assert found.setdefault(slug, (status, title)) == (status, title), slug
    return found


@pytest.mark.parametrize("slug", sorted(_answered_problems()))
def test_every_slug_nginx_and_gunicorn_answer_is_in_the_contract(slug):
    status, title = _answered_problems()[slug]
    assert SLUGS.get(slug) == (status, title)
