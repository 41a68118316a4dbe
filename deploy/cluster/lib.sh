# Shared by the scripts of deploy/cluster/ (sourced, not run): where everything lives, the ports,
# and small helpers. docs/operations.md, "A highly available cluster on one machine".
#
# Everything but the ports may be overridden from the environment, the same way for every script
# (`make cluster CLUSTER_DIR=/srv/demo` then `CLUSTER_DIR=/srv/demo deploy/cluster/status`).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${BIN:-$ROOT/.venv/bin}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
CLUSTER_DIR=${CLUSTER_DIR:-/var/tmp/coalition-cluster}
CLUSTER_INSTANCES=${CLUSTER_INSTANCES:-2}
# Per app instance. Two instances of one process each keep the two cores of a small machine busy
# without queueing Python on them; threads cover the time a request waits on the database.
WEB_CONCURRENCY=${WEB_CONCURRENCY:-1}
GUNICORN_THREADS=${GUNICORN_THREADS:-4}
DATABASE_POOL_OVERFLOW=${DATABASE_POOL_OVERFLOW:-2}

# The two PostgreSQL servers are named by their port, not by their role: the roles swap at a
# failover (deploy/cluster/promote), the ports and data directories stay.
PG_PORTS=(5440 5441)
FIRST_PRIMARY=5440
declare -A BOUNCER_OF=([5440]=6440 [5441]=6441)
REDIS_PORT=6390
HAPROXY_PORT=8100
STATS_PORT=8199
APP_PORT_BASE=8100  # instance N listens on APP_PORT_BASE + N (8101, 8102, ...)
DATABASE=coalition

RUN=$CLUSTER_DIR/run
LOG=$CLUSTER_DIR/log
APP_ENV=$CLUSTER_DIR/app.env
# WAL archive of both servers (deploy/archive-wal; deploy/backup and deploy/restore read it).
ARCHIVE_DIR=${ARCHIVE_DIR:-$CLUSTER_DIR/wal-archive}

log() { printf '[cluster %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_postgres() { runuser -u postgres -- "$@"; }
datadir() { echo "$CLUSTER_DIR/pg/$1"; }
application_name() { echo "coalition_$1"; }  # a server's name as a standby (synchronous_standby_names)
slot_name() { echo "standby_$1"; }

# psql as postgres over TCP (trust on 127.0.0.1), unaligned, no headers: `sql 5440 'SELECT 1'`.
sql() {
    local port=$1; shift
    PGCONNECT_TIMEOUT=3 psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres \
        -d "${SQL_DB:-postgres}" -c "$*"
}

# Its postmaster runs: the pid in postmaster.pid, not a zombie. Not `pg_ctl status`: a postmaster
# killed outright (SIGKILL, a crash) leaves its pid file behind and, until it is reaped, a zombie
# that kill -0 still finds; pg_ctl then says "running", and `pg_ctl stop` fails once the zombie is
# gone and the pid file is not ("server does not shut down"): promote could not fence a dead
# primary (tests/cluster/test_failover.py found it).
pg_running() {
    local file; file="$(datadir "$1")/postmaster.pid"
    [[ -s $file ]] && alive "$(head -n 1 "$file")"
}
# "primary", "standby", or "down" (not answering)
pg_role() {
    local r
    r=$(sql "$1" 'SELECT pg_is_in_recovery()' 2>/dev/null) || { echo down; return; }
    [[ $r == f ]] && echo primary || echo standby
}
current_primary() {
    local port
    for port in "${PG_PORTS[@]}"; do
        [[ $(pg_role "$port") == primary ]] && { echo "$port"; return 0; }
    done
    return 1
}
other_port() { [[ $1 == 5440 ]] && echo 5441 || echo 5440; }

# A process that has exited but not been reaped yet (a zombie, until init collects it) is gone.
alive() { kill -0 "$1" 2>/dev/null && [[ $(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) != Z ]]; }
pid_alive() { [[ -s $1 ]] && alive "$(cat "$1")"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls every 0.2 s
wait_for() {
    local seconds=$1 what=$2; shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        ((SECONDS < deadline)) || die "timed out after ${seconds}s waiting for $what"
        sleep 0.2
    done
}

# The synchronous standby is streaming and confirmed sync on `primary`.
standby_sync() {
    [[ $(sql "$1" "SELECT sync_state FROM pg_stat_replication
                   WHERE application_name = '$(application_name "$2")' AND state = 'streaming'" \
        2>/dev/null) == sync ]]
}

# Stops a process whose pid is in a file: SIGTERM, up to `seconds`, then SIGKILL of its group.
stop_pidfile() {
    local file=$1 name=$2 seconds=${3:-30}
    pid_alive "$file" || { rm -f "$file"; return 0; }
    local pid; pid=$(cat "$file")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + seconds))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    if alive "$pid"; then
        log "$name did not stop within ${seconds}s: killing it"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

# The cluster's settings of the server on `port`, in cluster.conf beside postgresql.conf (which
# includes it). Both servers get the same file but for the port: a standby made by pg_basebackup
# copies the primary's, then this rewrites it, so either can be promoted with no other change.
write_server_conf() {
    local port=$1 dir; dir=$(datadir "$1")
    install -d -o postgres -g postgres -m 700 "$ARCHIVE_DIR"
    # The servers run the archive command as postgres, from this checkout: a checkout under a
    # directory postgres cannot enter would fail every segment, quietly, in the server's log.
    runuser -u postgres -- test -x "$ROOT/deploy/archive-wal" \
        || die "the postgres user cannot run $ROOT/deploy/archive-wal (the archive command): put the checkout where postgres can read it"
    cat >"$dir/cluster.conf" <<CONF
# Written by deploy/cluster (lib.sh, write_server_conf); rewritten at every make cluster.
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$RUN'
cluster_name = '$(application_name "$port")'

# Replication. Both servers name both as synchronous standbys: a server is never its own standby,
# so the name that applies is always the other one, and a promoted or rebuilt server needs no
# edit here (deploy/cluster/promote turns synchronous replication off with ALTER SYSTEM while
# no standby exists; rebuild-standby turns it back on).
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
# A standby that stays away must not fill the primary's disk with WAL kept for its slot: past
# this the slot is dropped (the standby then needs rebuild-standby).
max_slot_wal_keep_size = '2GB'
# pg_rewind can turn a failed primary into a standby without a whole copy (data checksums are on
# as well, initdb -k).
wal_log_hints = on
synchronous_standby_names = 'FIRST 1 ($(application_name 5440), $(application_name 5441))'
# remote_apply: a commit is acknowledged only once the standby has applied it, so a balance read
# on the standby right after an acknowledged claim sees it (read routing: DATABASE_REPLICA_URL).
# The price: every commit waits for a round trip to the standby and its replay (on one machine
# well under a millisecond; across data centres the network's latency), and while the standby is
# down or behind, every commit on the primary waits with it: no write is acknowledged that the
# standby does not hold. deploy/cluster/promote lifts the wait on the new primary.
# "on" (flushed on the standby, not yet visible there) or "remote_write" trade that away.
synchronous_commit = remote_apply

# The standby: reads while it replays; it tells the primary which rows its queries still need,
# so that long balance reads are not cancelled by vacuum (at the price of some bloat on the primary).
hot_standby = on
hot_standby_feedback = on
max_standby_streaming_delay = 5s
wal_receiver_status_interval = 1s

# WAL archiving for deploy/backup and point-in-time restores (docs/operations.md, Backups).
# always, not on: the standby archives too, so the segments a dead primary completed but had not
# archived yet are still archived (by the standby, which received them). Both servers write to
# one directory: deploy/archive-wal keeps the first copy of a segment and accepts an equal
# second one. archive_mode needs a restart (make cluster-down, make cluster).
archive_mode = always
archive_command = '$ROOT/deploy/archive-wal %p %f $ARCHIVE_DIR'

log_line_prefix = '%m [%p] %q%u@%d '
log_connections = off
CONF
    chown postgres:postgres "$dir/cluster.conf"
    grep -q "^include_if_exists 'cluster.conf'" "$dir/postgresql.conf" ||
        echo "include_if_exists 'cluster.conf'" >>"$dir/postgresql.conf"
    # Trust on loopback only, replication included: a one-machine demonstration, where every
    # local user may act as postgres. On separate hosts: scram-sha-256 and a replication role.
    cat >"$dir/pg_hba.conf" <<HBA
# Written by deploy/cluster (lib.sh): trust, on loopback only (one machine, demonstration).
local   all          all                    trust
host    all          all          127.0.0.1/32  trust
host    replication  all          127.0.0.1/32  trust
HBA
    chown postgres:postgres "$dir/pg_hba.conf"
}

pg_start() {
    local port=$1
    pg_running "$port" && return 0
    log "starting PostgreSQL on $port"
    as_postgres "$PGBIN/pg_ctl" -D "$(datadir "$port")" -l "$LOG/postgresql-$port.log" -w -t 60 \
        start >/dev/null || die "PostgreSQL $port did not start: $LOG/postgresql-$port.log"
}

pg_stop() {
    local port=$1 mode=${2:-fast}
    pg_running "$port" || return 0
    log "stopping PostgreSQL on $port ($mode)"
    as_postgres "$PGBIN/pg_ctl" -D "$(datadir "$port")" -m "$mode" -w -t 60 stop >/dev/null
}

# A server marked fenced was a primary that another server has replaced (deploy/cluster/promote).
# It must never accept writes again: it carries standby.signal (started anyway, it stays
# read-only in recovery, where target_session_attrs=read-write passes it by), and make cluster
# does not start it. deploy/cluster/rebuild-standby makes it a standby again and lifts the mark.
fence_file() { echo "$(datadir "$1")/FENCED"; }
fenced() { [[ -e $(fence_file "$1") ]]; }

# Makes the server on `port` a fresh standby of `primary`: a base backup over the replication
# protocol (-R writes standby.signal and primary_conninfo with our application_name; -C -S a
# replication slot on the primary, so the primary keeps the WAL this standby has not received).
make_standby() {
    local port=$1 primary=$2 dir slot; dir=$(datadir "$1"); slot=$(slot_name "$1")
    [[ ! -e $dir ]] || die "make_standby: $dir exists"
    sql "$primary" "SELECT pg_drop_replication_slot('$slot') FROM pg_replication_slots
                    WHERE slot_name = '$slot' AND NOT active" >/dev/null
    log "base backup of $primary for the standby on $port (slot $slot)"
    install -d -o postgres -g postgres -m 700 "$dir"
    as_postgres "$PGBIN/pg_basebackup" -D "$dir" -R -C -S "$slot" -X stream -c fast \
        -d "host=127.0.0.1 port=$primary user=postgres application_name=$(application_name "$port")" \
        || die "pg_basebackup from $primary failed"
    # The copy carries the primary's ALTER SYSTEM settings: not a synchronous_standby_names = ''
    # that promote may have set there (rebuild-standby resets it on the primary afterwards).
    # And -R appends its primary_conninfo and slot to the copied ones: keep only its own (the last).
    local auto=$dir/postgresql.auto.conf
    awk -F' = ' 'NR == FNR { last[$1] = FNR; next }
        $1 == "synchronous_standby_names" { next }
        ($1 == "primary_conninfo" || $1 == "primary_slot_name") && FNR != last[$1] { next }
        { print }' "$auto" "$auto" >"$auto.new"
    chown postgres:postgres "$auto.new"
    mv "$auto.new" "$auto"
    write_server_conf "$port"
    rm -f "$(fence_file "$port")"
}

# pgbouncer in front of the server on `port`, transaction pooling.
write_bouncer_ini() {
    local port=$1 bouncer=${BOUNCER_OF[$1]}
    # Clients: per app instance WEB_CONCURRENCY processes × (threads + overflow) for the main URL,
    # as many again for the replica URL (both may land on one bouncer after a failover), and its
    # sealer; plus room for operator commands, psql and drills. Server connections: one per
    # client that can be inside a transaction at once, so no transaction queues in pgbouncer
    # (its pool is per database and user: main and replica URL share it).
    local per_url=$((CLUSTER_INSTANCES * WEB_CONCURRENCY * (GUNICORN_THREADS + DATABASE_POOL_OVERFLOW)))
    local pool=$((2 * per_url + CLUSTER_INSTANCES))
    cat >"$CLUSTER_DIR/pgbouncer/$bouncer.ini" <<INI
; Written by deploy/cluster (lib.sh, write_bouncer_ini): pgbouncer $bouncer -> PostgreSQL $port.
[databases]
$DATABASE = host=127.0.0.1 port=$port dbname=$DATABASE
postgres = host=127.0.0.1 port=$port dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer
unix_socket_dir = $RUN
pidfile = $RUN/pgbouncer-$bouncer.pid
logfile = $LOG/pgbouncer-$bouncer.log

; trust: no password, on loopback only (one machine, demonstration). The user must still be
; listed in auth_file. On separate hosts: auth_type = scram-sha-256 and auth_query.
auth_type = trust
auth_file = $CLUSTER_DIR/pgbouncer/userlist.txt
admin_users = postgres
stats_users = postgres

; Transaction pooling: a server connection belongs to a client for one transaction only. Session
; state does not survive between transactions: no server-side prepared statements (pgbouncer
; 1.18 cannot carry them: DATABASE_PGBOUNCER=1 turns them off in the app), no session SET, no
; advisory locks held across transactions, no LISTEN. Migrations therefore go to PostgreSQL
; directly (make cluster runs them on port $port, not here).
pool_mode = transaction
default_pool_size = $pool
reserve_pool_size = 4
reserve_pool_timeout = 1
max_client_conn = $((2 * pool + 50))
; sent by some drivers at start-up; harmless to drop here
ignore_startup_parameters = extra_float_digits

; A dead server is noticed fast and clients are not left waiting for it (failover drills): a
; connect gives up after 2 s, a login is retried every second, and a client waits at most 10 s
; for a server connection before it gets an error (then the next host of the app's URL is tried).
server_connect_timeout = 2
server_login_retry = 1
query_wait_timeout = 10
server_check_delay = 10
server_lifetime = 3600
server_idle_timeout = 300
INI
    chown postgres:postgres "$CLUSTER_DIR/pgbouncer/$bouncer.ini"
}

# pgbouncer answers a client's login with the startup parameters it cached from its first server
# login, in_hot_standby among them, and libpq's target_session_attrs=read-write trusts that
# report (PostgreSQL 14+) without asking the server. So a bouncer must be restarted when its
# server changes role (deploy/cluster/promote, rebuild-standby): else the promoted server's
# bouncer still says "standby" and is passed over, and a dead primary's bouncer still says
# "primary", accepts the login and fails the first query, where psycopg would have tried the
# next host on a failed login.
bouncer_stop() {
    stop_pidfile "$RUN/pgbouncer-${BOUNCER_OF[$1]}.pid" "pgbouncer ${BOUNCER_OF[$1]}" 10
}
bouncer_restart() { bouncer_stop "$1"; bouncer_start "$1"; }

bouncer_start() {
    local port=$1 bouncer=${BOUNCER_OF[$1]}
    pid_alive "$RUN/pgbouncer-$bouncer.pid" && return 0
    write_bouncer_ini "$port"
    log "starting pgbouncer $bouncer -> $port"
    as_postgres pgbouncer -d -q "$CLUSTER_DIR/pgbouncer/$bouncer.ini" ||
        die "pgbouncer $bouncer did not start: $LOG/pgbouncer-$bouncer.log"
    wait_for 10 "pgbouncer on $bouncer" port_open "$bouncer"
}

# Sealer `n` (beside app instance n; one of them holds the leader lease and seals, the others
# wait) under deploy/cluster/supervise, restarted 5 s after it exits as its systemd unit would
# be (Restart=always); in a session of its own, its pid (the supervisor's) in RUN/sealer-n.pid.
# SIGTERM to that pid stops it: the sealer releases its lease on the way out.
sealer_start() {
    local n=$1
    log "starting sealer $n"
    (
        cd "$ROOT"
        setsid "$ROOT/deploy/cluster/with-env" "$ROOT/deploy/cluster/supervise" 5 \
            "$BIN/flask" --app wsgi ledger seal --every 5 \
            --anchor-file "$CLUSTER_DIR/anchors.jsonl" >>"$LOG/sealer-$n.log" 2>&1 </dev/null &
        echo $! >"$RUN/sealer-$n.pid"
    )
}

# What listens on `port` answers /readyz with 200 (an instance: it reaches the database).
http_ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' -m 2 "http://127.0.0.1:$1/readyz") == 200 ]]; }
app_ready() { http_ready $((APP_PORT_BASE + $1)); }

# HAProxy's view of instance n (the stats page's CSV: status is field 18, current sessions 5).
haproxy_field() {
    curl -s -m 2 "http://127.0.0.1:$STATS_PORT/;csv" \
        | awk -F, -v sv="app$1" -v f="$2" '$1 == "app" && $2 == sv { print $f }'
}
up_in_haproxy() { [[ $(haproxy_field "$1" 18) == UP* ]]; }

# A command on HAProxy's admin socket (stats socket ... level admin in haproxy.cfg).
haproxy_admin() { echo "$*" | socat stdio "unix-connect:$RUN/haproxy.sock"; }

# App instance `n` (gunicorn on APP_PORT_BASE + n) in a session of its own (setsid), detached from
# the calling shell, so that it outlives make; its pid (the master's) in RUN/app-n.pid. Used by
# deploy/cluster/up and restart-instance. Its workers write their metrics for prometheus_client's
# multiprocess mode into a directory of the instance's own, emptied first as the mode requires
# (a dead instance's files would be summed into the new one's /metrics): a scrape of the
# instance sums its workers (docs/monitoring.md).
app_start() {
    local n=$1 port=$((APP_PORT_BASE + $1)) metrics=$CLUSTER_DIR/metrics/app-$1
    rm -rf "$metrics"
    install -d -m 700 "$metrics"
    log "starting app instance $n on 127.0.0.1:$port"
    (
        cd "$ROOT"
        PROMETHEUS_MULTIPROC_DIR=$metrics setsid "$ROOT/deploy/cluster/with-env" "$BIN/gunicorn" \
            -c deploy/gunicorn.conf.py -b "127.0.0.1:$port" -p "$RUN/app-$n.pid" \
            --name "coalition-$n" >>"$LOG/app-$n.log" 2>&1 </dev/null &
        echo $! >"$RUN/app-$n.pid"
    )
}
