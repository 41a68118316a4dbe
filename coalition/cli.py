"""Operator commands of the core:
`members add|import|show|export|erase|suspicious|lock|unlock|unlock-pin|reset-pin|invite`,
`operators add|invite|remove|list`, `ledger verify|seal|anchor|partitions ensure|list|detach|attach`, `audit list`, `points expire|notices`.
Every command prints JSON (`ledger seal --every`: one line per event), its errors too: every
group is a JsonGroup. Commands that change state record who asked (`operator()`) in the audit
log."""
from __future__ import annotations

import contextlib
import functools
import getpass
import json
import logging
import math
import os
import re
import signal
import sys
import threading
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import NoReturn

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from . import (audit, clock, config, consents, credentials, enrolment, expiry, expiry_notices,
               leases, member_erasure, member_export, member_locks, operators, partitions, pins,
               sealer, velocity)
from . import members as member_service
from .clock import iso_utc
from .database import db
from .decimals import plain
from .errors import Problem, database_unavailable
from .history import member_history
from .periods import day_of
from .verify import verify
from .vocabulary import ID_PATTERN

log = logging.getLogger("coalition.cli")


def _json_default(value):
    if isinstance(value, datetime):
        return iso_utc(value)
    return plain(value) if isinstance(value, Decimal) else str(value)


def emit(doc) -> None:
    click.echo(json.dumps(doc, indent=2, default=_json_default))


def fail(error: str, detail: str, *, code: int = 1, **more) -> NoReturn:
    """End the command with `{"error": slug, "detail": ...}` on stdout and a non-zero exit."""
    click.echo(json.dumps({"error": error, "detail": detail, **more}, default=_json_default))
    sys.exit(code)


def json_command(fn):
    """Run an operator command in one transaction; a Problem becomes a JSON error and exit 1."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
            db.session.commit()
        except Problem as problem:
            db.session.rollback()
            fail(problem.slug, problem.detail,
                 **({"errors": problem.errors} if problem.errors else {}))
        except BaseException:
            db.session.rollback()  # the group answers it as JSON (JsonGroup)
            raise
        if result is not None:
            emit(result)
    return wrapper


@contextlib.contextmanager
def json_errors():
    """What click would print as text on stderr (usage errors, bad files) and anything a
    command raised, as JSON on stdout. Click's exit codes: 2 for usage errors, 1 otherwise."""
    try:
        yield
    except (click.exceptions.Exit, click.Abort):
        raise  # --help, ctx.exit(), Ctrl-C: not errors of the command line
    except click.exceptions.NoArgsIsHelpError as exc:
        group = exc.ctx.command
        fail("usage-error", "Missing command.", code=exc.exit_code, usage=exc.ctx.get_usage(),
             commands=sorted(group.list_commands(exc.ctx)) if isinstance(group, click.Group) else [])
    except click.UsageError as exc:
        fail("usage-error", exc.format_message(), code=exc.exit_code,
             **({"usage": exc.ctx.get_usage()} if exc.ctx is not None else {}))
    except click.ClickException as exc:
        fail("validation-error", exc.format_message(), code=exc.exit_code)
    except Problem as problem:  # from a command outside json_command
        fail(problem.slug, problem.detail)
    except Exception as exc:
        if database_unavailable(exc):
            fail("unavailable", "The database is not reachable just now; run the command again.")
        log.exception("operator command failed")  # the traceback on stderr, for the operator
        fail("internal-error", f"The command failed: {type(exc).__name__} (details on stderr).")


class JsonGroup(AppGroup):
    """A command group whose errors, click's usage errors included, are JSON on stdout.

    Click raises a usage error while it parses a command line, in make_context (missing
    argument, bad option or choice) and in Group.invoke (unknown command): this group covers
    its own parsing, its commands' parsing and their callbacks."""

    def make_context(self, info_name, args, parent=None, **extra):
        with json_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        with json_errors():
            return super().invoke(ctx)


def operator() -> str:
    """The actor of an operator command: $COALITION_OPERATOR if set, else the OS user."""
    name = config.operator_name()
    if not name:
        try:
            name = getpass.getuser()
        except Exception:  # no user name in the environment nor the password database
            name = f"uid:{os.getuid()}"
    if len(name) > 128:
        raise Problem("validation-error", "COALITION_OPERATOR is longer than 128 characters.")
    return name


def check_id(value: str, what: str) -> str:
    if not re.fullmatch(ID_PATTERN, value):
        raise Problem("validation-error", f"{what} must match {ID_PATTERN}.")
    return value


members_cli = JsonGroup("members", help="Enrol and inspect members.")
ledger_cli = JsonGroup("ledger", help="The ledger of record.")
audit_cli = JsonGroup("audit", help="The audit log of operator actions (append-only).")
points_cli = JsonGroup("points", help="The points' lifecycle: expiry.")
operators_cli = JsonGroup("operators", help="Who signs in to the operator console.")


@members_cli.command("add")
@click.argument("member_id")
@json_command
def members_add(member_id: str):
    now = clock.now()
    member, created = member_service.enrol(db.session, check_id(member_id, "MEMBER_ID"), now=now)
    if created:  # enrolment is recorded here, not in enrol(): partners enrol members over the API
        # Personal data: the external id appears in this event only (erasure: see audit.py).
        audit.record(db.session, actor=operator(), action="member.add",
                     subject=audit.enrolment_subject(member.external_id), before=None,
                     after={"member": member.id}, now=now)
    return {"member_id": member.external_id, "created": created}


@members_cli.command("import")
@click.argument("file", metavar="FILE.csv", type=click.File("rb"))
@json_command
def members_import(file):
    """Enrol every card number of a CSV file (header member_id, one card number per row; - for
    stdin) in one transaction: all of them, or none if any row is bad (each bad row is listed by
    line). Card numbers enrolled already are counted as existing, repeated ones as duplicates:
    running the same file again creates nothing. Audited as member.import (counts, SHA-256)."""
    now = clock.now()
    actor = operator()
    try:
        done = enrolment.import_members(db.session, file, now=now)
    except enrolment.BadFile as bad:
        db.session.rollback()
        fail(bad.slug, bad.detail, errors=bad.errors, errors_total=bad.total)
    name = getattr(file, "name", None)
    source = name if isinstance(name, str) and name != "<stdin>" else "-"
    if done.created:  # as for members add: an import that enrols nobody changes nothing
        # One event for the whole file, naming no card number (personal data: see audit.py).
        audit.record(db.session, actor=actor, action="member.import",
                     subject=f"member-import:{done.sha256}", before=None,
                     after={"file": source, **done.view()}, now=now)
    return {"file": source, **done.view()}


@members_cli.command("show")
@click.argument("member_id")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="only the newest N entries of the history (default: all)")
@json_command
def members_show(member_id: str, limit: int | None):
    """One member's balance (as partners read it) and history across every partner, newest
    first: every earn, burn and reversal with its partner, period and status; the state of the
    member's portal sign-in (sign_in: password set, code pending, failures, lock-out)."""
    now = clock.now()
    balance = member_service.balance(db.session, member_id, now=now,
                                     tz=current_app.config["COALITION_TIMEZONE"],
                                     tiers=current_app.config["LEDGER_RULES"].tiers)
    member = member_service.find(db.session, member_id)
    return {**balance, "member": member.id, "enrolled_at": iso_utc(member.created_at),
            "enrolled_by": member.enrolled_by, "locked": member.locked,
            "lock_change": member_locks.last_change(db.session, member), **pins.pin_state(member),
            "sign_in": credentials.state(credentials.stored(
                db.session, credentials.member_key(member.id)), now),
            "consents": consents.in_force(db.session, member),
            "history": member_history(db.session, member_id, limit=limit)}


def _day(_ctx, _param, value: str) -> date:
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise click.BadParameter("a calendar day, YYYY-MM-DD") from None


@points_cli.command("expire")
@click.option("--as-of", "as_of", required=True, callback=_day, metavar="YYYY-MM-DD",
              help="book the expiries due by the start of this day (coalition time zone); "
                   "today at the latest")
@click.option("--chunk", type=click.IntRange(1, 100_000), default=expiry.CHUNK,
              show_default=True, help="lots per transaction")
@json_command
def points_expire(as_of, chunk):
    """Book the expiries due: each lot still holding points at its expiry gives them to the
    expired account (breakage), one journal entry per lot, chunk by chunk (a killed run keeps
    what it committed; run it again). Running it twice books nothing the second time."""
    return expiry.expire(db.session, as_of=as_of, now=clock.now, chunk=chunk,
                         tz=current_app.config["COALITION_TIMEZONE"])


def _day_or_today(ctx, param, value: str | None) -> date | None:
    return None if value is None else _day(ctx, param, value)


@points_cli.command("notices")
@click.option("--within-days", "within_days",
              type=click.IntRange(0, expiry_notices.MAX_WINDOW_DAYS),
              default=expiry_notices.NOTICE_DAYS, show_default=True,
              help="list expiries whose last day lies from --as-of through this many days on")
@click.option("--as-of", "as_of", callback=_day_or_today, metavar="YYYY-MM-DD",
              help="the window's first day (coalition time zone); default today")
def points_notices(within_days, as_of):
    """For a mailing job: one JSON line per member whose points expire in the window (erased
    members left out), {"member_id", "notices": [{"points", "expires_on", "notify_from"}]},
    in order of enrolment; nothing when none. Reads only."""
    tz = current_app.config["COALITION_TIMEZONE"]
    now = clock.now()
    try:
        for line in expiry_notices.members_expiring(
                db.session, first_day=as_of or day_of(now, tz)[0], within_days=within_days,
                now=now, tz=tz):
            click.echo(json.dumps(line, separators=(",", ":"), default=_json_default))
    finally:
        db.session.rollback()


@members_cli.command("suspicious")
@click.option("--since", required=True, help="ISO date or date-time (UTC unless it says "
              "otherwise): claims recorded from then on")
@click.option("--partners", type=click.IntRange(2, 1000), default=velocity.Rules.partners,
              show_default=True, help="many-partners: claims at this many partners ...")
@click.option("--within", type=click.IntRange(1, 10_080), default=60, show_default=True,
              metavar="MINUTES", help="... within this many minutes")
@click.option("--burn-within", type=click.IntRange(1, 10_080), default=10, show_default=True,
              metavar="MINUTES", help="burn-after-earn: a burn this soon after an earn at "
                                      "another partner")
@json_command
def members_suspicious(since, partners, within, burn_within):
    """Members whose claims since --since cross a velocity rule (many partners in a short
    time, burns right after earns), each with the rules it crossed."""
    rules = velocity.Rules(partners=partners, within=timedelta(minutes=within),
                           burn_within=timedelta(minutes=burn_within))
    found = velocity.suspicious(db.session, since=parse_since(since), rules=rules)
    return {"since": since, "members": found, "count": len(found)}


@members_cli.command("export")
@click.argument("member_id")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None,
              metavar="PATH", help="write the document here (mode 600) instead of stdout")
@json_command
def members_export(member_id: str, out: str | None):
    """Everything held about the member, as JSON (a request for access): the member row, the
    balance, every claim, lots, debt lots, consents with their history, partners' lookups and
    the audit events about the member. Audited as member.export."""
    document = member_export.export(
        db.session, member_id, now=clock.now(), tz=current_app.config["COALITION_TIMEZONE"],
        actor=operator(), more=current_app.extensions.get("member_data"),
        tiers=current_app.config["LEDGER_RULES"].tiers)
    if out is None:
        return document
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as fh:
        json.dump(document, fh, ensure_ascii=False, indent=1, default=_json_default)
    return {"member_id": member_id, "written": out, "claims": len(document["claims"])}


@members_cli.command("erase")
@click.argument("member_id")
@json_command
def members_erase(member_id: str):
    """Erase the member (a request for erasure): the card number, PIN, consents, partners'
    lookups and the card in the audit log go; the journal, balances and closed statements stay,
    naming the member by internal id. The card can be enrolled again as a new member. Audited
    as member.erase (subject member-id:<member>, no card number)."""
    return member_erasure.erase(db.session, member_id, now=clock.now(), actor=operator(),
                                more=current_app.extensions.get("member_erasure"))


def _lock_command(change, member_id: str, reason: str) -> dict:
    member, changed = change(db.session, member_id, reason, now=clock.now(), actor=operator())
    return {"member_id": member.external_id, "member": member.id, "locked": member.locked,
            "changed": changed}


@members_cli.command("lock")
@click.argument("member_id")
@click.option("--reason", required=True, help="why (a case number, what was seen); audited")
@json_command
def members_lock(member_id: str, reason: str):
    """Lock a member against redemption: burns answer 403 member-locked, earns still book.
    Audited as member.lock with the reason (subject member-id:<member>)."""
    return _lock_command(member_locks.lock, member_id, reason)


@members_cli.command("unlock")
@click.argument("member_id")
@click.option("--reason", required=True, help="why the lock is lifted; audited")
@json_command
def members_unlock(member_id: str, reason: str):
    """Lift the operator's lock (not a PIN lock: unlock-pin). Audited as member.unlock."""
    return _lock_command(member_locks.unlock, member_id, reason)


def _pin_command(change, member_id: str) -> dict:
    member, changed = change(db.session, member_id, now=clock.now(),
                             actor=operator())
    return {"member_id": member.external_id, "member": member.id, "changed": changed,
            **pins.pin_state(member), "locked": member.locked}


@members_cli.command("unlock-pin")
@click.argument("member_id")
@json_command
def members_unlock_pin(member_id: str):
    """Lift the redemption lock that five wrong PINs set, and clear the count; the PIN stays.
    Audited as member.pin.unlock (subject member-id:<member>)."""
    return _pin_command(pins.unlock, member_id)


@members_cli.command("reset-pin")
@click.argument("member_id")
@json_command
def members_reset_pin(member_id: str):
    """Remove a forgotten PIN (and any PIN lock): the member sets a new one at a till.
    Audited as member.pin.reset (subject member-id:<member>)."""
    return _pin_command(pins.reset, member_id)


@members_cli.command("invite")
@click.argument("member_id")
@json_command
def members_invite(member_id: str):
    """A one-time code for the member portal, valid 72 hours: the member sets a password with
    it (a first one, or a new one after a forgotten password). It is printed once and stored
    only hashed; an older code stops working. Audited as credential.code-issued (subject
    member-id:<member>, never the code)."""
    now = clock.now()
    code = credentials.issue_code(db.session, credentials.principal(credentials.MEMBER, member_id),
                                  now=now, actor=operator())
    member = member_service.find(db.session, member_id)
    return {"member_id": member_id, "member": member.id, "code": code,
            "expires_at": now + credentials.CODE_LIFETIME}


@operators_cli.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(operators.ROLES),
              help="admin: may change things; analyst: reads only")
@json_command
def operators_add(name: str, role: str):
    """Add an operator of the console and print its one-time code (valid 72 hours), which it
    sets its password with. Audited as operator.add and credential.code-issued."""
    now = clock.now()
    code = operators.add(db.session, name, role, now=now, actor=operator())
    return {"name": name, "role": role, "code": code,
            "expires_at": now + credentials.CODE_LIFETIME}


@operators_cli.command("invite")
@click.argument("name")
@json_command
def operators_invite(name: str):
    """A new one-time code for an operator (a forgotten password, an expired code); the older
    code stops working, a password set keeps working until the code replaces it. Audited as
    credential.code-issued."""
    now = clock.now()
    code = operators.invite(db.session, name, now=now, actor=operator())
    return {"name": name, "code": code, "expires_at": now + credentials.CODE_LIFETIME}


@operators_cli.command("remove")
@click.argument("name")
@json_command
def operators_remove(name: str):
    """Remove an operator (someone who left): its password and any pending code go with it, and
    the console signs it out at its next request. Audited as operator.remove."""
    operators.remove(db.session, name, now=clock.now(), actor=operator())
    return {"name": name, "removed": True}


@operators_cli.command("list")
@json_command
def operators_list():
    """Every operator by name: role, whether a password is set or a code pending, wrong
    passwords in a row, and a lock-out in force (never a hash)."""
    return operators.listed(db.session, clock.now())


@ledger_cli.command("verify")
@click.option("--anchors", "anchors_file", type=click.File("r", encoding="utf-8"), default=None,
              metavar="PATH",
              help="an anchor file (ledger seal --anchor-file): every anchored head must still "
                   "be the hash of its block (catches a chain recomputed after tampering)")
def ledger_verify(anchors_file):
    """Re-derive every balance, lot and consumption from the journal; exit 1 on any violation."""
    checks = dict(current_app.extensions.get("ledger_checks") or {})
    if anchors_file is not None:
        lines = anchors_file.readlines()
        checks["anchors"] = lambda session, fail: sealer.verify_anchors(session, fail, lines)
    report = verify(db.session, checks)
    db.session.rollback()
    emit(report)
    if not report["ok"]:
        sys.exit(1)


def parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return clock.parse_iso(value)
    except ValueError:
        raise Problem("validation-error", "--since must be an ISO 8601 date or date-time.") from None


@audit_cli.command("list")
@click.option("--since", default=None, help="ISO date or date-time (UTC unless it says otherwise)")
@click.option("--subject", default=None, help="e.g. partner:acme, member:CARD-1, period:2026-05")
@click.option("--action", default=None, help="e.g. partner.suspend; partner.key matches partner.key.*")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000),
              help="the newest N matching events (printed oldest first)")
@json_command
def audit_list(since, subject, action, limit):
    """Print audit events as JSON, oldest first, with their before and after values."""
    return [audit.event_view(e) for e in audit.events(db.session, since=parse_since(since), subject=subject,
                                                       action=action, limit=limit)]


def _seconds(_ctx, _param, value):
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter("a positive number of seconds")
    return value


@ledger_cli.command("seal")
@click.option("--every", type=float, default=None, callback=_seconds, metavar="SECONDS",
              help="keep running: seal every SECONDS until SIGTERM or SIGINT, one JSON line "
                   "per run that sealed something; database errors are logged and retried")
@click.option("--anchor-file", type=click.Path(dir_okay=False), default=None,
              help="append the head {date, head, block, last_entry_id, sealed_at} as a JSON "
                   "line once per UTC day, for keeping outside the database")
@click.option("--max-runs", type=click.IntRange(min=1), default=None, metavar="N",
              help="with --every: stop after N runs")
@click.option("--lease-ttl", type=float, default=None, callback=_seconds, metavar="SECONDS",
              help="with --every: the sealers of all instances share one lease and only its "
                   "holder seals; another takes over when it is not renewed for SECONDS "
                   "(default: 3 x --every, at least 15)")
def ledger_seal(every, anchor_file, max_runs, lease_ttl):
    """Chain committed entries into blocks: once, or every SECONDS (run it that way as a
    sidecar or service beside each app instance, e.g. --every 5: one of them seals at a
    time)."""
    if max_runs is not None and every is None:
        raise click.UsageError("--max-runs needs --every.")
    if lease_ttl is not None and every is None:
        raise click.UsageError("--lease-ttl needs --every.")
    try:
        anchors = sealer.AnchorFile(anchor_file) if anchor_file else None
    except OSError as exc:
        raise click.FileError(anchor_file, exc.strerror) from None
    if every is None:
        now = clock.now()
        result = sealer.seal_run(db.session, now=now)
        db.session.commit()  # an anchor names only a committed head
        if anchors is not None:
            anchors.append_if_due(now, result)
        emit(result)
        return
    if lease_ttl is not None and lease_ttl < every:
        raise click.BadParameter("must be at least --every: a holder renews once per run.",
                                 param_hint="--lease-ttl")
    lease = leases.Lease("sealer", leases.holder_name(),
                         timedelta(seconds=lease_ttl or max(15.0, 3 * every)))
    stop = threading.Event()
    restore = _stop_on_signals(stop)
    try:
        _line({"event": "sealer-started", "every": every, "anchor_file": anchor_file,
               "pid": os.getpid(), "holder": lease.holder,
               "lease_ttl": lease.ttl.total_seconds()})
        runs = sealer.run_sealer(db.session, every=every, stop=stop, report=_line,
                                 anchors=anchors, max_runs=max_runs, lease=lease)
    finally:
        restore()
    _line({"event": "sealer-stopped", "runs": runs})


def _line(doc: dict) -> None:
    click.echo(json.dumps(doc, default=_json_default))  # click.echo flushes: lines reach a pipe at once


def _stop_on_signals(stop: threading.Event):
    """SIGTERM or SIGINT sets `stop`: the run in progress completes, the loop ends, exit 0.
    A second signal ends the process at once (a run stuck on an unreachable database)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # handlers can only be installed from the main thread

    def handle(_signum, _frame):
        for signum in previous:
            signal.signal(signum, signal.SIG_DFL)
        # Event.set takes a lock that the interrupted main thread may be holding inside
        # stop.wait(); setting it from another thread cannot deadlock on it.
        threading.Thread(target=stop.set, daemon=True).start()

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)}

    def restore():
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return restore


@ledger_cli.command("anchor")
@json_command
def ledger_anchor():
    """The head block's hash: keep it somewhere outside this database."""
    return sealer.anchor(db.session)


partitions_cli = JsonGroup("partitions", help="The journal's monthly partitions (PostgreSQL).")
ledger_cli.add_command(partitions_cli)


def _month(_ctx, _param, value):
    if value is None:
        return value
    values = value if isinstance(value, tuple) else (value,)
    for month in values:
        try:
            partitions.check_period(month)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@partitions_cli.command("ensure")
@click.option("--ahead", type=click.IntRange(0, 36), default=partitions.MONTHS_AHEAD,
              show_default=True, help="months after the current one to create")
@click.option("--month", "months", multiple=True, callback=_month, metavar="YYYY-MM",
              help="also this month (e.g. one whose rows sit in DEFAULT); repeatable")
@json_command
def partitions_ensure(ahead, months):
    """Create the partitions of this month and the next --ahead months that are missing (the
    leading `ledger seal --every` does this hourly). Rows of such a month found in DEFAULT are
    moved into its new partition in the same transaction."""
    return partitions.ensure_partitions(db.session, months_ahead=ahead, also=list(months))


@partitions_cli.command("list")
@json_command
def partitions_list():
    """Each partitioned table's partitions (rows: the planner's estimate; DEFAULT's exact) and
    the archived months."""
    if not partitions.is_partitioned(db.session):
        return {"partitioned": False, "detail": partitions.NOT_PARTITIONED}
    return {"partitioned": True,
            "partitions": [vars(p) for p in partitions.list_partitions(db.session)],
            "archived": [{"period": a.period, "archived_at": a.archived_at,
                          "location": a.location, "entries": a.entry_count}
                         for a in partitions.archived(db.session).periods]}


@partitions_cli.command("detach")
@click.argument("month", callback=_month, metavar="YYYY-MM")
@click.option("--lock-timeout", default="5s", show_default=True,
              type=click.Choice(["1s", "5s", "30s"]),
              help="give up rather than hold claims up longer than this behind the detach")
@json_command
def partitions_detach(month, lock_timeout):
    """Detach a closed, sealed month into the `archive` schema and print the pg_dump command
    for it; `ledger verify` carries its checks across the month from then on. Audited as
    period.archive."""
    return partitions.detach_period(db.session, month, now=clock.now(), actor=operator(),
                                    lock_timeout=lock_timeout)


@partitions_cli.command("attach")
@click.argument("month", callback=_month, metavar="YYYY-MM")
@json_command
def partitions_attach(month):
    """Put an archived month back into the journal (restore its tables into the `archive`
    schema from its dump first). Audited as period.unarchive."""
    return partitions.attach_period(db.session, month, now=clock.now(), actor=operator())


def adopt(group: click.Group) -> JsonGroup:
    """Another package's group (Flask-Migrate's `db`, flask-smorest's `openapi`) with the same
    JSON errors as ours; the package's own group object, shared by every app, stays as it is."""
    return JsonGroup(group.name, commands=group.commands, callback=group.callback,
                     params=group.params, help=group.help, short_help=group.short_help,
                     invoke_without_command=group.invoke_without_command,
                     no_args_is_help=group.no_args_is_help)


def init_app(app: Flask) -> None:
    for name, command in list(app.cli.commands.items()):
        if isinstance(command, click.Group) and not isinstance(command, JsonGroup):
            app.cli.add_command(adopt(command), name)
    app.cli.add_command(members_cli)
    app.cli.add_command(ledger_cli)
    app.cli.add_command(audit_cli)
    app.cli.add_command(points_cli)
    app.cli.add_command(operators_cli)
