#!/usr/bin/env bash
# `make serve`: the service as it runs in production, on one machine, in the foreground.
#
#   client -> nginx on HOST:PORT (deploy/nginx/: reads whole requests within 10 s, problem+json
#             for everything it refuses) -> gunicorn, gthread workers (deploy/gunicorn.conf.py) on
#             a unix socket only this user can reach -> the app (TRUSTED_PROXIES=1)
#   plus the sealer (ledger seal --every 5 --anchor-file ANCHORS) beside them.
#
# Runs against DATABASE_URL (default: the embedded SQLite database instance/coalition.db), whose
# schema must be current (`make serve` runs `flask db upgrade` first). Files under SERVE_DIR
# (default instance/serve): the socket, the rendered nginx configuration, its temporary files
# and its access log (JSON lines, access.log). Ctrl-C or SIGTERM stops all three gracefully:
# nginx first (no new requests; those in hand finish), then gunicorn (graceful_timeout), then the
# sealer (it finishes its run). If any of them ends by itself, the others are stopped too and
# the exit status is 1. docs/operations.md, "Serving in production".
set -euo pipefail
cd "$(dirname "$0")/.."

HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
SERVE_DIR=${SERVE_DIR:-instance/serve}
ANCHORS=${ANCHORS:-instance/anchors.jsonl}
BIN=${BIN:-.venv/bin}
export TRUSTED_PROXIES=1  # nginx is the one proxy in front: X-Forwarded-For is its peer

nginx=$("$BIN/python" deploy/nginx/render.py --find-nginx) || exit 2

mkdir -p "$SERVE_DIR" "$(dirname "$ANCHORS")"
chmod 700 "$SERVE_DIR"
SERVE_DIR=$(cd "$SERVE_DIR" && pwd)
socket="$SERVE_DIR/gunicorn.sock"
conf=$("$BIN/python" deploy/nginx/render.py --standalone --out "$SERVE_DIR/nginx" \
    --run-dir "$SERVE_DIR/nginx" --listen "$HOST:$PORT" --upstream "unix:$socket" \
    --access-log "$SERVE_DIR/access.log")
"$nginx" -t -q -p "$SERVE_DIR/nginx" -c "$conf" -e stderr

# Each child in a process group of its own (job control): Ctrl-C reaches this script only,
# which then stops them in order, gracefully.
set -m
nginx_pid="" gunicorn_pid="" sealer_pid=""
stop() {
    # A second Ctrl-C (or SIGTERM) while stopping kills what is left, workers included.
    trap 'for p in $nginx_pid $gunicorn_pid $sealer_pid; do kill -KILL -- "-$p" 2>/dev/null || true; done; exit 130' INT TERM
    trap - EXIT
    if [[ -n $nginx_pid ]]; then kill -QUIT "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; fi
    if [[ -n $gunicorn_pid ]]; then kill -TERM "$gunicorn_pid" 2>/dev/null || true; wait "$gunicorn_pid" 2>/dev/null || true; fi
    if [[ -n $sealer_pid ]]; then kill -TERM "$sealer_pid" 2>/dev/null || true; wait "$sealer_pid" 2>/dev/null || true; fi
    return 0
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rm -f "$socket"
# prometheus_client's multiprocess mode (docs/monitoring.md): each worker writes its metrics
# here and a scrape of any one sums them all. Emptied at each start, as the mode requires; the
# workers' only (the sealer serves no scrape).
metrics_dir="$SERVE_DIR/metrics"
rm -rf "$metrics_dir"
mkdir -p "$metrics_dir"
PROMETHEUS_MULTIPROC_DIR="$metrics_dir" "$BIN/gunicorn" -c deploy/gunicorn.conf.py -b "unix:$socket" &
gunicorn_pid=$!
"$BIN/flask" --app wsgi ledger seal --every 5 --anchor-file "$ANCHORS" &
sealer_pid=$!
for _ in $(seq 300); do
    [[ -S $socket ]] && break
    kill -0 "$gunicorn_pid" 2>/dev/null || { echo "gunicorn did not start" >&2; exit 1; }
    sleep 0.1
done
[[ -S $socket ]] || { echo "gunicorn did not open $socket" >&2; exit 1; }
"$nginx" -p "$SERVE_DIR/nginx" -c "$conf" -e stderr &
nginx_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null && break
    kill -0 "$nginx_pid" 2>/dev/null || { echo "nginx did not start" >&2; exit 1; }
    sleep 0.1
done

url="http://$HOST:$PORT"
limits="in memory, per gunicorn process (set REDIS_URL to share them)"
[[ -n ${REDIS_URL:-} ]] && limits="Redis (REDIS_URL)"
cat <<EOF

Coalition clearing service (nginx -> gunicorn gthread -> app): $url
  Health:                   $url/healthz   (ready: $url/readyz)
  API docs (Swagger UI):    $url/docs
  nginx access log (JSON):  $SERVE_DIR/access.log   (the app's own log lines follow below)
  gunicorn socket:          $socket
  Sealer anchors:           $ANCHORS
  Rate-limit counters:      $limits
Stop with Ctrl-C.

EOF

# Until a signal arrives or one of the three ends by itself.
status=0
wait -n "$nginx_pid" "$gunicorn_pid" "$sealer_pid" || status=$?
echo "a component of make serve ended (status $status); stopping the others" >&2
exit 1
