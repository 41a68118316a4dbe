"""gunicorn for production: behind nginx (deploy/nginx/), threaded workers.

The one definition `make serve` (deploy/serve.sh) and docs/operations.md use:
`gunicorn -c deploy/gunicorn.conf.py -b unix:/run/coalition/gunicorn.sock`. A `-b` (or any other
option) on the command line wins over this file. Never expose gunicorn itself: it has no body
timeout, and a client that stalls in the middle of a body holds a thread until it hangs up (20 of
them starve 2 workers × 4 threads; docs/operations.md). nginx in front reads every request whole
before gunicorn sees it, and every answer before the client does, so gunicorn only ever talks to
nginx, quickly.
"""
import os

wsgi_app = "wsgi:app"

# Loopback by default; `make serve` binds a unix socket only nginx (the same user) can reach.
bind = [os.environ.get("COALITION_BIND", "127.0.0.1:8001")]

# Threads: a request waiting on the database (or on SQLite's single writer) does not hold the
# whole process. The app keeps no per-request state outside Flask's context, its shared caches
# take locks, and SQLAlchemy's pool hands each thread its own connection. WEB_CONCURRENCY is
# gunicorn's usual variable for the process count. On PostgreSQL each process's pool holds
# GUNICORN_THREADS connections (+ DATABASE_POOL_OVERFLOW): coalition/config.py reads the same
# variables, with these defaults (config.DEFAULT_WORKERS, DEFAULT_THREADS; this file cannot
# import the app's package). What they cost, and the connection arithmetic: docs/operations.md.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))

# A worker whose main loop is silent for `timeout` s is killed and replaced (nginx answers its
# requests 502, outcome unknown). SIGTERM lets requests in hand finish for `graceful_timeout` s,
# inside nginx's proxy_read_timeout (30 s) and a supervisor's stop timeout. nginx opens one
# connection per request (HTTP/1.0 upstream), so keep-alive only bounds a stray idle one.
timeout = 30
graceful_timeout = 25
keepalive = 2

# Above nginx's limits (4 KiB per request or header line, 17 KiB of header in all, whence at
# most ~4,400 header lines): whatever nginx passes, gunicorn parses, and never answers with its
# own HTML error page. nginx alone decides, and answers problem+json.
limit_request_line = 8190
limit_request_field_size = 8190
limit_request_fields = 8192

# The app writes one JSON access line per request itself (coalition/ops.py); gunicorn's own
# messages go to stderr.
accesslog = None
errorlog = "-"

# The worker heartbeat in memory, not on a disk that may stall.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# gunicorn 27 would open a control socket under ~/.gunicorn that this service does not use.
control_socket_disable = True

# What gunicorn still refuses itself, after nginx let it through (a control character in a header
# value, a method gunicorn finds unconventional): problem+json with the app's headers, like every
# other error of the service, instead of gunicorn's HTML page. The status stays gunicorn's where
# the contract has a slug for it; any other 4xx is 400 malformed-request, any other 5xx 500.
_PROBLEMS = {400: ("malformed-request", "Malformed request"), 403: ("forbidden", "Forbidden"),
             414: ("uri-too-long", "URI too long"),
             431: ("headers-too-large", "Request headers too large"),
             500: ("internal-error", "Internal error")}
_REASONS = {400: "Bad Request", 403: "Forbidden", 414: "URI Too Long",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}


def problem_error(sock, status_int, reason, mesg):
    import json
    import uuid

    from coalition.ops import API_CSP, SECURITY_HEADERS
    from gunicorn import util

    status = status_int if status_int in _PROBLEMS else (400 if 400 <= status_int < 500 else 500)
    slug, title = _PROBLEMS[status]
    # The request's own id is out of reach here (its headers did not parse). Behind nginx, the
    # X-Accel-Redirect makes nginx answer its own page for the slug instead, which carries the
    # request's id (deploy/nginx/coalition.conf.template); this body serves a direct caller.
    request_id = uuid.uuid4().hex
    body = json.dumps({"type": f"/problems/{slug}", "title": title, "status": status,
                       "detail": (mesg or title)[:200], "request_id": request_id},
                      separators=(",", ":")).encode()
    # No Cache-Control: nginx keeps an upstream one through the redirect, and its page sets one.
    headers = {"Connection": "close", "Content-Type": "application/problem+json",
               "Content-Length": str(len(body)), "X-Request-Id": request_id,
               **SECURITY_HEADERS, "Content-Security-Policy": API_CSP}
    if status != 403:  # nginx has no page for 403 (gunicorn sends it only for PROXY protocol)
        headers["X-Accel-Redirect"] = f"/_edge/{slug}"
    head = f"HTTP/1.1 {status} {_REASONS[status]}\r\n" + \
        "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    util.write_nonblock(sock, head.encode("latin-1") + body)


def post_worker_init(worker):
    from gunicorn import util
    util.write_error = problem_error


def child_exit(server, worker):
    # prometheus_client's multiprocess mode (coalition/metrics.py): a dead worker's pool gauges
    # ('livesum') leave the sum; its counters and histograms stay, as counts must.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid)
