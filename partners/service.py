"""Partner registry and the claim views partners read. Domain functions over a Session."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from coalition import activities, audit, bonuses, books, holds
from coalition.clock import as_utc, iso_utc
from coalition.decimals import plain
from coalition.jwk import canonical_pem, thumbprint
from coalition.ledger import find_claim
from coalition.redemption import RedeemPolicy
from coalition.models import Entry
from coalition.problems import Problem
from coalition.vocabulary import MAX_POINTS, EntryKind

from .keys import load_public_key
from .models import OPERATOR, PARTNER, Partner, PartnerKey, PartnerTerms

FIRST_TERMS = "0000-00"  # sorts before every YYYY-MM
DEFAULT_TERMS = {"issue_price": Decimal("0.01"), "redemption_rate": Decimal("0.009"),
                 "issuance_share": Decimal("1"), "claim_fee": Decimal("0")}
SCALE = Decimal("0.000001")
MAX_LISTED_REVERSALS = 1000  # per claim read; reversals_total and reversed_points count them all


def get_partner(session: Session, partner_id: str) -> Partner:
    partner = session.get(Partner, partner_id)
    if partner is None:
        raise Problem("not-found", f"No partner {partner_id!r}.")
    return partner


def parse_terms(raw: dict, base: dict[str, Decimal] = DEFAULT_TERMS) -> dict[str, Decimal]:
    """The terms `raw` gives (decimal text or numbers), the others taken from `base`."""
    terms = {}
    for name, default in base.items():
        value = raw.get(name)
        try:
            number = default if value is None else Decimal(str(value))
        except InvalidOperation:
            raise Problem("validation-error", f"{name} must be a decimal number.") from None
        if not number.is_finite() or number < 0 or number.as_tuple().exponent < -6:
            raise Problem("validation-error", f"{name} must be a non-negative decimal with at most 6 places.")
        terms[name] = number
    if terms["issuance_share"] > 1:
        raise Problem("validation-error", "issuance_share must lie between 0 and 1.")
    return terms


def losing(terms: dict[str, Decimal]) -> bool:
    """Terms under which the coalition pays out more for a point redeemed at the partner than
    the partner paid for a point it issued: a loss on every point earned and burned there."""
    return terms["redemption_rate"] > terms["issue_price"]


def _refuse_losing(terms: dict[str, Decimal], force: bool) -> None:
    if losing(terms) and not force:
        raise Problem("validation-error", f"redemption_rate {plain(terms['redemption_rate'])} is above "
                      f"issue_price {plain(terms['issue_price'])}: the coalition would lose money on "
                      "every point issued and redeemed here. Give --force if that is meant.")


def add_partner(session: Session, partner_id: str, name: str, *, now: datetime,
                terms: dict | None = None, force: bool = False,
                actor: str = audit.SYSTEM, kind: str = PARTNER) -> Partner:
    """Register a partner with its first terms (DEFAULT_TERMS for those not given). Terms with
    a redemption_rate above the issue_price are refused unless `force` (audited as forced).
    `kind` OPERATOR registers the coalition itself as the issuer of the points it funds: once."""
    if session.get(Partner, partner_id) is not None:
        raise Problem("validation-error", f"Partner {partner_id!r} exists already.")
    if kind not in (PARTNER, OPERATOR):
        raise Problem("validation-error", f"A partner's kind is {PARTNER} or {OPERATOR}.")
    if kind == OPERATOR and (known := operator_id(session)) is not None:
        raise Problem("validation-error", f"The coalition is registered already, as {known!r}: "
                                          "there is one operator.")
    if not name.strip():
        raise Problem("validation-error", "A partner needs a name.")
    first = parse_terms(terms or {})
    if kind == PARTNER:  # nothing is ever redeemed at the operator: its redemption_rate is moot
        _refuse_losing(first, force)
    partner = Partner(id=partner_id, name=name.strip(), status="active", created_at=now,
                      kind=kind)
    session.add(partner)
    # The first terms apply from the beginning: a claim may occur before the partner was
    # registered (up to MAX_CLAIM_AGE_DAYS), and later terms must never change which terms
    # an earlier, closed month used.
    session.add(PartnerTerms(partner_id=partner_id, starts=FIRST_TERMS, created_at=now, **first))
    session.flush()
    audit.record(session, actor=actor, action="partner.add", subject=f"partner:{partner_id}",
                 before=None, after={**partner_view(partner), **_forced(first, force)}, now=now)
    return partner


def _forced(terms: dict[str, Decimal], force: bool) -> dict:
    """Marks an audit event whose terms were accepted only because the operator forced them."""
    return {"forced": True} if force and losing(terms) else {}


def operator_id(session: Session) -> str | None:
    """The coalition's own id as an issuer, if it is registered."""
    return session.scalar(select(Partner.id).where(Partner.kind == OPERATOR))


def add_key(session: Session, partner_id: str, pem: bytes, *, now: datetime,
            actor: str = audit.SYSTEM) -> PartnerKey:
    partner = get_partner(session, partner_id)
    key, alg = load_public_key(pem)
    kid = thumbprint(key)
    _refuse_registered(session.get(PartnerKey, kid), partner.id)
    row = PartnerKey(kid=kid, partner_id=partner.id, alg=alg, public_key_pem=canonical_pem(key),
                     status="active", created_at=now)
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # the same key registered at the same moment by another command
        _refuse_registered(session.get(PartnerKey, kid), partner.id)
        raise
    audit.record(session, actor=actor, action="partner.key.add", subject=f"partner:{partner.id}",
                 before=None, after=key_view(row), now=now)
    return row


def _refuse_registered(existing: PartnerKey | None, partner_id: str) -> None:
    """A kid names one key of one partner for good: a key is registered once, and a revoked key
    is never accepted again."""
    if existing is None:
        return
    if existing.partner_id != partner_id:
        owner = f"partner {existing.partner_id!r}"
    else:
        owner = "this partner"
    if existing.status == "revoked":
        raise Problem("validation-error", f"This key (kid {existing.kid}) was registered for {owner} "
                      "and revoked: a revoked key is never accepted again; generate a new one.")
    raise Problem("validation-error", f"This key is registered already for {owner}, "
                  f"as kid {existing.kid}.")


def revoke_key(session: Session, partner_id: str, kid: str, *, now: datetime,
               actor: str = audit.SYSTEM) -> PartnerKey:
    key = session.get(PartnerKey, kid)
    if key is None or key.partner_id != partner_id:
        raise Problem("not-found", f"Partner {partner_id!r} has no key {kid!r}.")
    if key.status != "revoked":  # revoking twice changes nothing and records nothing
        before = key_view(key)
        key.status, key.revoked_at = "revoked", now
        audit.record(session, actor=actor, action="partner.key.revoke",
                     subject=f"partner:{partner_id}", before=before, after=key_view(key), now=now)
    return key


def set_status(session: Session, partner_id: str, status: str, *, now: datetime,
               actor: str = audit.SYSTEM) -> Partner:
    """Suspend (status "suspended") or activate ("active") a partner."""
    assert status in ("active", "suspended")
    partner = get_partner(session, partner_id)
    if partner.status != status:  # suspending a suspended partner changes nothing
        before = {"status": partner.status}
        partner.status = status
        audit.record(session, actor=actor,
                     action="partner.suspend" if status == "suspended" else "partner.activate",
                     subject=f"partner:{partner_id}", before=before, after={"status": status},
                     now=now)
    return partner


def list_partners(session: Session) -> list[Partner]:
    return list(session.scalars(select(Partner).order_by(Partner.id)
                                .options(selectinload(Partner.keys), selectinload(Partner.terms))))


def key_view(k: PartnerKey) -> dict:
    return {"kid": k.kid, "alg": k.alg, "state": k.status,
            "created_at": iso_utc(k.created_at),
            "revoked_at": iso_utc(k.revoked_at) if k.revoked_at else None}


def terms_view(t: PartnerTerms) -> dict:
    # The same text whether the row was just set or read back (the column's 6 places).
    return {"from": None if t.starts == FIRST_TERMS else t.starts,
            **{name: plain(getattr(t, name)) for name in DEFAULT_TERMS}}


def partner_view(partner: Partner) -> dict:
    return {
        "id": partner.id, "name": partner.name, "kind": partner.kind, "status": partner.status,
        "created_at": iso_utc(partner.created_at),
        "keys": [key_view(k) for k in partner.keys],
        "terms": [terms_view(t) for t in partner.terms],
        "policy": policy_view(partner),
    }


# --- claims as partners see them ----------------------------------------------------------

def claim_view(entry: Entry, *, reversals: list[Entry] | None = None,
               now: datetime | None = None, reversed_points: int | None = None,
               reversals_total: int | None = None, member_id: str | None = None,
               bonus: tuple[list[bonuses.Bonus], list[str]] | None = None) -> dict:
    """A claim as answered when it was booked (reversals None), or as it stands now: with its
    reversals (the first MAX_LISTED_REVERSALS, when `reversals_total` says there are more) and
    `reversed_points` over all of them. `member_id`: the member's card when the caller knows it
    (a claim just booked), else read from entry.member. `bonus`: an earn's bonuses and the
    coupons it could have used (earn_bonus; None: the answer to a booking only)."""
    view = {
        "claim_id": entry.claim_id, "kind": entry.kind,
        "member_id": member_id if member_id is not None else entry.member.external_id,
        "partner_id": entry.partner_id,
        "points": entry.points, "occurred_at": entry.occurred_at,
        "recorded_at": entry.recorded_at, "period": entry.period, "late": entry.late,
        "status": entry.status, "reversed_points": 0, "balance_after": entry.balance_after,
        "pending_until": entry.pending_until, "description": entry.description,
        "reverses": entry.reverses.claim_id if entry.reverses_id is not None else None,
    }
    if entry.kind == EntryKind.EARN:
        view["activity"] = getattr(entry, "activity", None) or activities.PURCHASE
    if bonus is not None:
        given, not_activated = bonus
        view["bonus_points"] = sum(b.points for b in given)
        view["bonuses"] = [{"type": b.source.partition(":")[0],
                            "id": b.source.partition(":")[2] or b.source,
                            "funder": b.funder, "points": b.points} for b in given]
        if not_activated is not None:
            view["coupons_not_activated"] = not_activated
    if reversals is not None:
        done = sum(r.points for r in reversals) if reversed_points is None else reversed_points
        view["reversed_points"] = done
        view["reversals"] = [{"reversal_id": r.claim_id, "points": r.points,
                              "occurred_at": r.occurred_at, "recorded_at": r.recorded_at,
                              "period": r.period} for r in reversals]
        view["reversals_total"] = len(reversals) if reversals_total is None else reversals_total
        view["status"] = _status(entry, done, now)
    return view


def earn_bonus(session: Session, entry, award: bonuses.Award | None = None, *,
               booking: bool = True):
    """An earn's bonuses, and for the answer to a booking (`booking`, a replay too) the coupons
    it could have used (claim_view's `bonus`): from the award of an earn just booked, else as
    its lots and the coupons show them; None for claims of other kinds."""
    if entry.kind != EntryKind.EARN:
        return None
    if award is not None:
        return award.bonuses, award.not_activated
    return (bonuses.of_entry(session, entry.id),
            bonuses.not_activated(session, member_pk=entry.member_id, partner_id=entry.partner_id,
                                  occurred_at=as_utc(entry.occurred_at)) if booking else None)


def hold_view(answer, *, now: datetime) -> dict:
    """A hold as the partner sees it (coalition/holds.py Answer), with the burn a capture booked."""
    hold = answer.hold
    booked = answer.booked
    return {
        "hold_id": hold.hold_id, "member_id": answer.card, "partner_id": hold.partner_id,
        "points": hold.points, "occurred_at": hold.occurred_at, "created_at": hold.created_at,
        "expires_at": hold.expires_at, "status": holds.status_of(hold, now),
        "closed_at": hold.closed_at, "captured_points": hold.captured_points,
        "claim_id": hold.claim_id,
        "claim": None if booked is None else claim_view(booked.entry, member_id=booked.member_id),
    }


def _status(entry: Entry, reversed_points: int, now: datetime) -> str:
    if entry.kind == EntryKind.REVERSAL:
        return "booked"
    if reversed_points == entry.points:
        return "reversed"
    if entry.pending_until is not None and as_utc(entry.pending_until) > now:
        return "pending"
    return "partially_reversed" if reversed_points else "booked"


def current_claim(session: Session, partner_id: str, claim_id: str, *, now: datetime) -> dict:
    entry = find_claim(session, partner_id, claim_id)
    if entry is None:
        raise Problem("not-found", "No such claim.")
    # A claim of 10^9 points could have as many reversals: the answer names the first ones only.
    # Reversals are booked in the claim's month or later (ledger.reversed_points).
    later = (Entry.reverses_id == entry.id, Entry.period >= entry.period)
    reversals = list(session.scalars(select(Entry).where(*later)
                                     .order_by(Entry.id).limit(MAX_LISTED_REVERSALS)))
    total, points = session.execute(
        select(func.count(), func.coalesce(func.sum(Entry.points), 0)).where(*later)).one()
    return claim_view(entry, reversals=reversals, now=now, reversed_points=int(points),
                      reversals_total=int(total), bonus=earn_bonus(session, entry, booking=False))


# --- terms --------------------------------------------------------------------------------

def set_terms(session: Session, partner_id: str, starts: str, raw: dict, *, now: datetime,
              force: bool = False, actor: str = audit.SYSTEM) -> PartnerTerms:
    """New terms from month `starts` on; that month must still be open. Terms `raw` leaves out
    (or None) carry over from the terms in force for `starts`. Terms with a redemption_rate
    above the issue_price are refused unless `force`.

    Audited with the terms that applied to `starts` before (their own "from" says whether they
    were replaced or only superseded from `starts` on) and the terms that apply now, with
    "forced": true if they were accepted only by `force`."""
    get_partner(session, partner_id)
    books.parse_period(starts)
    last_closed = books.closed_through(session)
    if last_closed is not None and starts <= last_closed:
        raise Problem("period-closed", f"{starts} is closed: terms can change from {books.next_period(last_closed)} on.")
    if all(raw.get(name) is None for name in DEFAULT_TERMS):
        raise Problem("validation-error", "set-terms needs at least one term: "
                      + ", ".join(DEFAULT_TERMS) + ".")
    current = _terms_row(session, partner_id, starts)
    terms = parse_terms(raw, base={name: getattr(current, name) for name in DEFAULT_TERMS})
    _refuse_losing(terms, force)
    before = terms_view(current)
    row = session.get(PartnerTerms, (partner_id, starts))
    if row is None:
        row = PartnerTerms(partner_id=partner_id, starts=starts, created_at=now)
        session.add(row)
    for name, value in terms.items():
        setattr(row, name, value)
    session.flush()
    after = terms_view(row)
    if after != before:
        audit.record(session, actor=actor, action="partner.terms.set",
                     subject=f"partner:{partner_id}", before=before,
                     after={**after, **_forced(terms, force)}, now=now)
    return row


def _terms_row(session: Session, partner_id: str, period: str) -> PartnerTerms:
    return session.scalars(select(PartnerTerms).where(PartnerTerms.partner_id == partner_id,
                                                      PartnerTerms.starts <= period)
                           .order_by(PartnerTerms.starts.desc()).limit(1)).one()


def terms_in_force(session: Session, partner_id: str, period: str) -> dict[str, Decimal]:
    """The latest terms starting on or before `period` (the first terms start at FIRST_TERMS)."""
    chosen = _terms_row(session, partner_id, period)
    return {name: getattr(chosen, name).quantize(SCALE) for name in DEFAULT_TERMS}


# --- redemption policy --------------------------------------------------------------------

MAX_DAILY_LIMIT = 10**15
REDEEM_AUTH = ("none", "pin")


def policy_view(partner: Partner) -> dict:
    return {"redeem_auth": partner.redeem_auth or "none", "pin_above": partner.pin_above,
            "daily_redeem_limit": partner.daily_redeem_limit}


def redeem_policy(session: Session, partner_id: str) -> RedeemPolicy:
    """The policy a burn at this partner runs under (a partner without a row: none)."""
    row = session.execute(select(Partner.redeem_auth, Partner.pin_above,
                                 Partner.daily_redeem_limit)
                          .where(Partner.id == partner_id)).one_or_none()
    if row is None:
        return RedeemPolicy()
    auth, pin_above, limit = row
    return RedeemPolicy(pin_above=pin_above if auth == "pin" else None, daily_limit=limit)


def _points(value: str, option: str, maximum: int) -> int:
    # [0-9] only: int() would also take " 5", "+5", "1_000" and non-ASCII digits.
    if not (isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20):
        raise Problem("validation-error", f"{option} must be a whole number of points.")
    number = int(value)
    if number > maximum:
        raise Problem("validation-error", f"{option} must be at most {maximum}.")
    return number


def set_policy(session: Session, partner_id: str, *, redeem_auth: str | None = None,
               pin_above: str | None = None, daily_redeem_limit: str | None = None,
               now: datetime, actor: str = audit.SYSTEM) -> Partner:
    """Change a partner's redemption policy; options not given keep their value.

    redeem_auth "pin": a burn of more than pin_above points needs the member's PIN (pin_above
    0: every burn; when switching to "pin" without pin_above, 0). "none" clears pin_above.
    daily_redeem_limit: points per calendar day, or "none". Audited (`partner.policy.set`)
    with the policy before and after, when it changed."""
    partner = get_partner(session, partner_id)
    if redeem_auth is None and pin_above is None and daily_redeem_limit is None:
        raise Problem("validation-error", "set-policy needs --redeem-auth, --pin-above or "
                      "--daily-redeem-limit.")
    if redeem_auth is not None and redeem_auth not in REDEEM_AUTH:
        raise Problem("validation-error", "--redeem-auth must be none or pin.")
    auth = redeem_auth or partner.redeem_auth or "none"
    if auth == "none":
        if pin_above is not None:
            raise Problem("validation-error", "--pin-above applies only with --redeem-auth pin.")
        threshold = None
    elif pin_above is not None:
        threshold = _points(pin_above, "--pin-above", MAX_POINTS)
    else:
        threshold = partner.pin_above if partner.redeem_auth == "pin" and \
            partner.pin_above is not None else 0
    if daily_redeem_limit is None:
        limit = partner.daily_redeem_limit
    elif daily_redeem_limit == "none":
        limit = None
    else:
        limit = _points(daily_redeem_limit, "--daily-redeem-limit", MAX_DAILY_LIMIT)
    before = policy_view(partner)
    partner.redeem_auth, partner.pin_above, partner.daily_redeem_limit = auth, threshold, limit
    session.flush()
    after = policy_view(partner)
    if after != before:
        audit.record(session, actor=actor, action="partner.policy.set",
                     subject=f"partner:{partner_id}", before=before, after=after, now=now)
    return partner


def partner_ids(session: Session) -> list[str]:
    """Every registered partner's id, sorted by code point (not by the database's collation):
    who gets a statement when a month closes, in the order the statements list them."""
    return sorted(session.scalars(select(Partner.id)))
