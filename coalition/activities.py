"""Activity earns and referrals (docs/partner-api.md, "Activities and referrals").

An earn's `activity` says what it rewards: a `purchase` (the default, and every earn booked
before activities existed), a `review`, a `signup` or a `newsletter` subscription. A partner
posts these; `referral` is booked by the coalition alone (below). The activity is part of the
claim's content, in its fingerprint and its entry hash, but only when it is not `purchase`:
every fingerprint and entry hash of a purchase is what it was before.

Rules, checked under the member's lock (as coalition/claim_limits.py), counting every earn of
the activity booked at the partner (reversed or not: a reversal corrects points, it does not
give the member the activity again):
- `review`: at most one per member and partner per day, the coalition's local day
  (COALITION_TIMEZONE) in which the earn is booked;
- `signup` and `newsletter`: once per member and partner, ever.
A second one is refused with 422 limit-exceeded naming the rule, audited as `member.limit-hit`.
Campaign and coupon bonuses and tier multipliers apply to purchases only.

Referrals: a member enrolled with `referred_by` (members.referred_by, the referrer's row) brings
both members COALITION_REFERRAL_POINTS when its first purchase earn books available (not
pending): the first non-pending purchase earn booked for the member, at any partner. The
referred member gets them as a bonus lot in that earn's entry (source `referral`), the referrer
as an earn of its own in the same transaction: partner and lot issuer the operator issuer
(partners.kind = 'operator'), claim id `referral-<entry id of the earn>`, activity `referral`.
No operator registered, COALITION_REFERRAL_POINTS 0, or either member erased: nothing, and that
first earn stays the first (no later earn gives the bonus).

Locks: the referrer's row is locked before the referred member's (referral_prospect, read
without a lock: referred_by never changes and a member's first purchase, once booked, stays
booked). A referrer was enrolled before the member it referred, so it has the lower id: every
claim locks members in ascending id, as batches do (coalition/batch_sql.py lock), and no two
transactions can wait for each other in a cycle. Concurrent first earns of one member queue on
its lock; the second sees the first's purchase and gives no referral.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import column, func, select, table
from sqlalchemy.orm import Session

from . import claim_limits
from .models import Entry, Member
from .periods import day_of
from .vocabulary import EntryKind

PURCHASE, REVIEW, SIGNUP, NEWSLETTER, REFERRAL = (
    "purchase", "review", "signup", "newsletter", "referral")
POSTED = (PURCHASE, REVIEW, SIGNUP, NEWSLETTER)  # what a partner may send
ALL = (*POSTED, REFERRAL)
ONCE = (SIGNUP, NEWSLETTER)
REFERRAL_SOURCE = "referral"  # lots.source of the referred member's bonus lot
_PARTNERS = table("partners", column("id"), column("kind"))


def rule_of(activity: str) -> str:
    return f"activity-{activity}-{'daily' if activity == REVIEW else 'once'}"


def check(session: Session, *, activity: str, member_pk: int, partner_id: str, now: datetime,
          tz: str) -> None:
    """Refuse (audited) an activity earn its rule does not allow. The caller holds the member's
    lock; a batch writes what it booked before asking."""
    if activity not in (REVIEW, *ONCE):
        return
    where = [Entry.member_id == member_pk, Entry.partner_id == partner_id,
             Entry.kind == EntryKind.EARN, Entry.activity == activity]
    window = "ever"
    if activity == REVIEW:
        day, start, end = day_of(now, tz)
        where += [Entry.recorded_at >= start, Entry.recorded_at < end]
        window = day.isoformat()
    used = int(session.scalar(select(func.count()).select_from(Entry).where(*where)))
    if used:
        detail = (f"The member has a review earn at this partner today ({window}, {tz}): one a "
                  f"day." if activity == REVIEW else
                  f"The member has a {activity} earn at this partner already: one ever.")
        claim_limits._hit(session, rule_of(activity), 1, used, 1, subject=f"member-id:{member_pk}",
                          now=now, window=window, detail=detail)


def operator_id(session: Session) -> str | None:
    return session.scalar(select(_PARTNERS.c.id).where(_PARTNERS.c.kind == "operator"))


def _purchased(member_pk: int):
    """A non-pending purchase earn of the member: after one, no referral."""
    return select(Entry.id).where(Entry.member_id == member_pk, Entry.kind == EntryKind.EARN,
                                  Entry.activity == PURCHASE, Entry.status == "booked").exists()


def referral_prospect(session: Session, *, card: str | None = None,
                      pk: int | None = None) -> int | None:
    """The referrer's id if the member may yet bring a referral, read without a lock (to lock
    the referrer first). Confirmed under the locks by referral_due."""
    where = Member.external_id == card if pk is None else Member.id == pk
    referrer = Member.__table__.alias("referrer")
    return session.scalar(
        select(Member.referred_by).join(referrer, referrer.c.id == Member.referred_by)
        .where(where, Member.erased_at.is_(None), referrer.c.erased_at.is_(None),
               ~_purchased(Member.id)))


def lock_referrer(session: Session, referrer_pk: int) -> None:
    session.execute(select(Member.id).where(Member.id == referrer_pk).with_for_update())


def referral_due(session: Session, member_pk: int, referrer_pk: int) -> tuple[str, str] | None:
    """Under both locks: (operator id, referrer's card) if this earn brings the referral."""
    operator = operator_id(session)
    if operator is None:
        return None
    if session.scalar(select(_purchased(member_pk))):
        return None
    card, erased = session.execute(select(Member.external_id, Member.erased_at)
                                   .where(Member.id == referrer_pk)).one()
    if erased is not None or card is None:
        return None
    return operator, card


def referral_claim_id(entry_id: int) -> str:
    return f"referral-{entry_id}"



