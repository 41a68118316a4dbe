# make demo  - a virtualenv, the schema, a demo coalition, and the service on http://127.0.0.1:$(PORT)
# make serve - production serving: nginx on $(HOST):$(PORT) in front of gunicorn's threaded workers,
#              and the sealer (DATABASE_URL as set; needs nginx: docs/operations.md)
# make test  - the test suite (SQLite; PostgreSQL when DATABASE_URL=postgresql+psycopg://... is set)
# make fuzz  - contract fuzzing: schemathesis against /openapi.json, every request signed (SQLite)
# make crash - the crash suite: gunicorn under load through killed workers, a killed master, a
#              PostgreSQL restart and SIGTERM (DATABASE_URL=postgresql+psycopg://... an empty database)
# make cluster - the HA topology on one machine, in the background: HAProxy, 2 gunicorn instances
#                and sealers, pgbouncers, a PostgreSQL primary and synchronous standby, Redis
#                (Debian packages; deploy/cluster/, docs/operations.md)
# make cluster-down - stops it (data kept under CLUSTER_DIR; CLUSTER_WIPE=1 deletes it)
# make cluster-test - the cluster's smoke test and failover drills (a killed primary promoted, a
#                     killed app instance, a killed Redis) with claims counted per phase; as root
# make bench - throughput against the stack's own floor on a fresh PostgreSQL database (bench/README.md)
# make backup-drill - the restore drill: base backup, WAL archive, point-in-time restore checked with
#                     ledger verify --anchors (tests/backup; as root, PostgreSQL of its own on 5450/5451)
# Everything runs from .venv/bin; nothing needs an activated virtualenv.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FLASK  := $(BIN)/flask --app wsgi
STAMP  := $(VENV)/.installed
HOST   := 127.0.0.1
PORT   ?= 8000
URL    := http://$(HOST):$(PORT)
DEMO_MEMBER := demo-card-0001
# The demo always uses the embedded SQLite database under instance/, whatever DATABASE_URL says,
# and runs status tiers (Gold earns half as many points again, paid by the coalition) unless
# COALITION_TIERS says otherwise.
COALITION_TIERS ?= Blue:0,Silver:400,Gold:1000:1.5
EMBEDDED := env -u DATABASE_URL COALITION_TIERS=$(COALITION_TIERS)

.PHONY: venv migrate demo serve test fuzz crash bench clean cluster cluster-down cluster-test

venv: $(STAMP)

# Re-installs only when a requirements file is newer than the stamp.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

migrate: venv
	$(FLASK) db upgrade

# The sealer (ledger seal --every 5) runs next to gunicorn and ends with it. The shell execs
# gunicorn, so gunicorn keeps the shell's pid and gets Ctrl-C and make's signals as before; a
# watcher in the background stops the sealer (SIGTERM: it finishes its run) once that pid is
# gone, however gunicorn ended. Ctrl-C reaches the sealer directly too.
demo: venv
	$(EMBEDDED) $(FLASK) db upgrade
	$(EMBEDDED) $(FLASK) demo load
	@echo
	@echo "Coalition clearing service: $(URL)"
	@echo "  API docs (Swagger UI):    $(URL)/docs"
	@echo "  OpenAPI document:         $(URL)/openapi.json"
	@echo "  Health:                   $(URL)/healthz"
	@echo "  Member portal:            $(URL)/portal/   member $(DEMO_MEMBER), password demo-member-2026"
	@echo "  Operator console:         $(URL)/console/  demo-admin / demo-admin-2026 (admin), demo-analyst / demo-analyst-2026 (analyst)"
	@echo "  (German first; ?lang=en switches. Nobody is signed in: sign in with the above.)"
	@echo "Try a signed call with the reference client (keys in instance/demo-keys/):"
	@echo "  $(BIN)/python -m partners.client --base-url $(URL) --partner demo-bakery --key instance/demo-keys/demo-bakery.pem balance $(DEMO_MEMBER)"
	@echo "The sealer chains new claims every 5 s (JSON lines below); daily anchors: instance/anchors.jsonl"
	@echo "Stop with Ctrl-C."
	@echo
	@gunicorn=$$$$; \
	( $(EMBEDDED) $(FLASK) ledger seal --every 5 --anchor-file instance/anchors.jsonl & sealer=$$!; \
	  while kill -0 $$gunicorn 2>/dev/null; do sleep 1; done; \
	  kill $$sealer 2>/dev/null; wait $$sealer ) & \
	exec $(EMBEDDED) $(BIN)/gunicorn -w 2 -b $(HOST):$(PORT) --no-control-socket wsgi:app

# Production serving, the way docs/operations.md ("Serving in production") describes it: nginx on
# $(HOST):$(PORT) (deploy/nginx/) reads whole requests before gunicorn (deploy/gunicorn.conf.py,
# threaded workers on a unix socket under instance/serve/) sees them, so slow clients cannot hold
# its workers; the sealer runs beside them. Unlike `make demo` it uses DATABASE_URL (default: the
# embedded SQLite database) and loads no demo data. Ctrl-C stops all three (deploy/serve.sh).
serve: venv
	@$(BIN)/python deploy/nginx/render.py --find-nginx >/dev/null
	$(FLASK) db upgrade
	HOST=$(HOST) PORT=$(PORT) BIN=$(BIN) exec deploy/serve.sh

test: venv
	$(BIN)/pytest $(PYTEST_ARGS)

# Contract fuzzing (tests/fuzz, left out of `make test`): generated requests from the OpenAPI
# document, signed like a partner's, through the app on a temporary SQLite file. Bounded by
# FUZZ_MAX_EXAMPLES (default 50 per operation), reproducible with FUZZ_SEED; prints totals.
fuzz: venv
	$(EMBEDDED) $(BIN)/pytest -p schemathesis tests/fuzz $(PYTEST_ARGS)

# The crash suite (tests/crash, left out of `make test`). It restarts the PostgreSQL server
# (pg_ctlcluster, or the command in CRASH_PG_RESTART), so nothing else may use that server while
# it runs; it needs DATABASE_URL to name an empty PostgreSQL database. Prints counts per fault.
crash: venv
	@case "$$DATABASE_URL" in postgresql*) ;; \
	  *) echo "make crash needs DATABASE_URL=postgresql+psycopg://... naming an empty database" >&2; exit 2;; esac
	$(BIN)/pytest tests/crash $(PYTEST_ARGS)

# The throughput benchmark (bench/run.py, bench/README.md): the service and the floor app under
# gunicorn (2 workers x 8 threads), 8 client processes of signed single earns, raw PostgreSQL
# INSERT+COMMIT and COPY, on a fresh bench_* database (on DATABASE_URL's server, else
# 127.0.0.1:5432) created and dropped by the run. About 6 minutes; BENCH_SIZE=big and BENCH_HISTORY=1 run longer.
# Prints one table of rates and ratios to baselines of the same run; exits 1 on any error.
bench: venv
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The restore drill (tests/backup/test_restore_drill.py; docs/operations.md, "Backups and
# point-in-time recovery"): claims booked through the app, deploy/backup, more claims, a mistake,
# deploy/restore to the moment before it; the restored ledger must hold exactly the claims before
# it and pass ledger verify --anchors. As root: its own PostgreSQL servers on 5450 and 5451 (run
# as postgres), in a /var/tmp/backup-dev-drill-* directory it deletes. About a minute; prints the
# counts, sizes and times.
.PHONY: backup-drill
backup-drill: venv
	COALITION_BACKUP_DRILL=1 $(BIN)/pytest -q tests/backup $(PYTEST_ARGS)

# The highly available topology on one machine (docs/operations.md, "A highly available cluster on
# one machine"): deploy/cluster/up starts what is not running yet (as root; installs missing Debian
# packages) and returns, leaving it all in the background; deploy/cluster/status shows it. Under
# CLUSTER_DIR (default /var/tmp/coalition-cluster); CLUSTER_INSTANCES app instances (default 2).
cluster: venv
	deploy/cluster/up

# Stops everything `make cluster` started; CLUSTER_WIPE=1 deletes CLUSTER_DIR too.
cluster-down:
	deploy/cluster/down

# tests/cluster: the smoke test, then the failover drills (tests/cluster/test_failover.py), on
# the cluster under CLUSTER_DIR, which they start, break, repair and stop at the end (its data
# kept). The drills' claims per phase print at the end.
cluster-test: venv
	COALITION_CLUSTER=1 $(BIN)/pytest -q tests/cluster $(PYTEST_ARGS)

# Removes the virtualenv and caches. instance/ (the embedded database, demo keys) is kept:
# delete it by hand to start the demo from scratch.
clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
