"""How a consumer's admissions end, decided by when things happened.

Fanfare does not promise order and retries a delivery for about 44 hours, so
an ending or a completion can arrive long after events that happened later,
and an admission after its own ending. Every decision here depends only on
the times Fanfare (or our scheduler, or checkout) gave, never on arrival:

- An ending or completion that names a grant belongs to that admission.
- One without a grant (Fanfare's `left`, `denied`, `lost`, completions and
  order events) belongs to the consumer's latest admission admitted at or
  before its time.
- A completion wins over any ending: the order happened at the merchant, so a
  completion for an admission that already ended converts what it can.
- Otherwise the earliest of the admission's endings wins, and an admission
  still open when the consumer's next admission came is superseded then.
- A retry (the consumer trying again after an expiry) is a fact too: if the
  admission stood expired by what happened before the retry, it holds again
  from the retry's time and what happens from then on decides how it ends;
  facts between the expiry and the retry change nothing. If it stood
  otherwise (released, sold, or a later admission came before the retry),
  the retry does not count and that verdict stands.
- A retry refused at arrival because the admission did not stand expired by
  what was known then is kept as pending (no `follows`): an expiry from
  before it that arrives later may make it count, exactly as if it had been
  granted at its time. It counts when, by the facts before it, its holding
  period stood expired (an ending, or our expiry due) at most its window
  earlier and no later admission had come; the verdict names it
  (`Verdict.taken_up`) for the engine to apply.

The engine keeps every grant-less ending and completion (a fact can change
hands when an admission that came between arrives late) and asks `verdicts`
again whenever a consumer's admissions or facts change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID

from worker.domain import ids
from worker.domain.model import ReservationStatus


class AdmissionStatus(StrEnum):
    ACTIVE = "active"
    CONVERTED = "converted"
    RELEASED = "released"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"


SUPERSEDED_REASON = "superseded"
CHECKOUT_REASON = "checkout"
# Our scheduler's expiry: its time is the expires_at it was computed for.
WINDOW_ELAPSED = "window_elapsed"


@dataclass(frozen=True)
class AdmissionState:
    """An admission as the cart and checkout see it."""

    grant_digest: str
    status: AdmissionStatus
    expires_at: datetime


@dataclass(frozen=True)
class Visit:
    """One admission of a consumer in an experience. `span`: its window and
    buffer, how long a retry holds (None: not known, no retry pending)."""

    grant_digest: str
    admitted_at: datetime
    expires_at: datetime
    span: timedelta | None = None


@dataclass(frozen=True)
class Fact:
    """An ending (released, expired) or a completion (converted) as reported.
    `command_id` is None for an end known only from the admission it closed."""

    command_id: UUID | None
    grant_digest: str | None
    outcome: AdmissionStatus
    reason: str
    at: datetime
    order_id: str | None = None
    # A retry (outcome ACTIVE): when the expiry it follows ended the
    # admission (`reason` is that expiry's), and the retry window it was
    # decided with.
    follows: datetime | None = None
    retry_window: timedelta | None = None

    @property
    def retry(self) -> bool:
        return self.outcome is AdmissionStatus.ACTIVE

    @property
    def pending(self) -> bool:
        """A retry refused at arrival, kept: it follows no expiry yet."""
        return self.retry and self.follows is None

    def sort_key(self) -> tuple[datetime, str, str]:
        return (self.at, self.reason, str(self.command_id or ""))


@dataclass(frozen=True)
class Verdict:
    """How an admission stands once every known fact is weighed."""

    status: AdmissionStatus
    reason: str | None = None
    at: datetime | None = None
    order_id: str | None = None
    # A sale: when the admission stopped holding (its completion, or an
    # earlier ending or supersession), so the cart sold is the one of then.
    held_until: datetime | None = None
    # The kept completion it comes from (None: checkout's own sale).
    sale: UUID | None = None
    # Pending retries that now count, in time order, each as granted (the
    # expiry it follows filled in): the engine applies them.
    taken_up: tuple[Fact, ...] = ()

    @property
    def over(self) -> bool:
        return self.status is not AdmissionStatus.ACTIVE


OPEN = Verdict(AdmissionStatus.ACTIVE)


def in_time_order(visits: Iterable[Visit]) -> list[Visit]:
    return sorted(visits, key=lambda v: (v.admitted_at, v.grant_digest))


def owner(visits: Iterable[Visit], at: datetime) -> Visit | None:
    """The admission a grant-less fact at `at` belongs to: the latest one
    admitted at or before it."""
    earlier = [v for v in visits if v.admitted_at <= at]
    return in_time_order(earlier)[-1] if earlier else None


def owner_of(fact: Fact, visits: Sequence[Visit]) -> Visit | None:
    if fact.grant_digest is not None:
        return next((v for v in visits if v.grant_digest == fact.grant_digest), None)
    return owner(visits, fact.at)


def counts_for(fact: Fact, visit: Visit) -> bool:
    """Whether a fact that belongs to `visit` can end it: an expiry of ours
    computed for an earlier window (settings changed, clock skew) cannot."""
    return not (fact.reason == WINDOW_ELAPSED and fact.at < visit.expires_at)


def standing_at(
    visits: Sequence[Visit], facts: Sequence[Fact], grant_digest: str, at: datetime
) -> Verdict | None:
    """How an admission stood at `at`, from what had happened by then; None
    when it is not the consumer's latest admission admitted by then."""
    current = owner(visits, at)
    if current is None or current.grant_digest != grant_digest:
        return None
    earlier = [v for v in visits if v.admitted_at <= at]
    return verdicts(earlier, [f for f in facts if f.at <= at])[grant_digest]


def verdicts(visits: Iterable[Visit], facts: Iterable[Fact]) -> dict[str, Verdict]:
    """Each admission's standing, from its admissions and facts in time order."""
    ordered = in_time_order(visits)
    facts = list(facts)
    result: dict[str, Verdict] = {}
    for n, visit in enumerate(ordered):
        following = ordered[n + 1] if n + 1 < len(ordered) else None
        mine = [f for f in facts if _belongs(f, visit, following)]
        result[visit.grant_digest] = _verdict(visit, following, mine)
    return result


def _belongs(fact: Fact, visit: Visit, following: Visit | None) -> bool:
    if fact.grant_digest is not None:
        return fact.grant_digest == visit.grant_digest
    return visit.admitted_at <= fact.at and (following is None or fact.at < following.admitted_at)


def _verdict(visit: Visit, following: Visit | None, mine: list[Fact]) -> Verdict:
    """Period by period: each retry that counts starts a new one."""
    facts = [f for f in mine if not f.retry]
    start, expires = visit.admitted_at, visit.expires_at
    taken_up: list[Fact] = []
    for retry in _retries(mine):
        if following is not None and retry.at >= following.admitted_at:
            if retry.pending:
                continue  # refused, and never the consumer's to count
            # The grant was no longer the consumer's: the retry does not count.
            facts, expires = [*facts, _implied(visit, retry)], _follows(retry)
            break
        before = [f for f in facts if f.at < retry.at]
        if retry.pending:
            counted = _pending_counts(visit, start, before, retry)
            if counted is None:
                continue
            taken_up.append(counted)
            expires = retry.at + visit.span if visit.span is not None else visit.expires_at
        else:
            ended = _period(
                Visit(visit.grant_digest, start, _follows(retry)),
                None,
                [*before, _implied(visit, retry)],
            )
            if not _retried_in_time(ended, retry):
                return ended
            expires = visit.expires_at
        start, facts = retry.at, [f for f in facts if f.at >= retry.at]
    verdict = _period(Visit(visit.grant_digest, start, expires), following, facts)
    return replace(verdict, taken_up=tuple(taken_up)) if taken_up else verdict


def taken_up_id(retry: Fact) -> UUID:
    """The id a pending retry is kept under once it counts, beside the
    pending one (which then no longer counts on its own)."""
    return ids.uuid5(f"retry:{retry.command_id}")


def _retries(mine: list[Fact]) -> list[Fact]:
    """The retries in time order, but the pending ones already taken up."""
    granted = {f.command_id for f in mine if f.retry and not f.pending}
    return sorted(
        (f for f in mine if f.retry and not (f.pending and taken_up_id(f) in granted)),
        key=Fact.sort_key,
    )


def _follows(retry: Fact) -> datetime:
    assert retry.follows is not None
    return retry.follows


def _implied(visit: Visit, retry: Fact) -> Fact:
    """The expiry a granted retry follows, even if it was never applied as such."""
    return Fact(None, visit.grant_digest, AdmissionStatus.EXPIRED, retry.reason, _follows(retry))


def _pending_counts(visit: Visit, start: datetime, before: list[Fact], retry: Fact) -> Fact | None:
    """A pending retry as granted, if the facts before it would have granted
    it at its time (worker.domain.retry.expiry_of): its period ended by an
    expiry, or still open past its expiry (ours, due), at most its window
    earlier."""
    ended = _period(Visit(visit.grant_digest, start, visit.expires_at), None, before)
    if not ended.over and visit.expires_at <= retry.at:
        ended = Verdict(AdmissionStatus.EXPIRED, WINDOW_ELAPSED, visit.expires_at)
    if not _retried_in_time(ended, retry):
        return None
    assert ended.at is not None
    return replace(retry, reason=ended.reason or WINDOW_ELAPSED, follows=ended.at)


def _retried_in_time(ended: Verdict, retry: Fact) -> bool:
    """Whether the period before a retry ended by an expiry the retry came
    within its window of (an earlier expiry may have arrived late)."""
    if ended.status is not AdmissionStatus.EXPIRED:
        return False
    assert ended.at is not None
    assert retry.retry_window is not None
    return retry.at <= ended.at + retry.retry_window


def _period(visit: Visit, following: Visit | None, mine: list[Fact]) -> Verdict:
    """How one holding period ends (`visit.admitted_at`: when it began)."""
    endings = [
        f for f in mine if f.outcome is not AdmissionStatus.CONVERTED and counts_for(f, visit)
    ]
    ending = min(endings, key=Fact.sort_key) if endings else None
    # An ending at the very time the next admission came counts first.
    if following is not None and (ending is None or following.admitted_at < ending.at):
        ending = Fact(
            None,
            visit.grant_digest,
            AdmissionStatus.SUPERSEDED,
            SUPERSEDED_REASON,
            following.admitted_at,
        )
    completions = [f for f in mine if f.outcome is AdmissionStatus.CONVERTED]
    # A sale the checkout API made stands: it sold the holds it named and
    # told the storefront so. Otherwise the earliest completion is the sale.
    checkout = [f for f in completions if f.command_id is None]
    if checkout or completions:
        sale = min(checkout or completions, key=Fact.sort_key)
        held_until = min(sale.at, ending.at) if ending is not None else sale.at
        return Verdict(
            AdmissionStatus.CONVERTED,
            sale.reason,
            sale.at,
            sale.order_id,
            max(held_until, visit.admitted_at),
            sale.command_id,
        )
    if ending is None:
        return OPEN
    return Verdict(ending.outcome, ending.reason, ending.at)


def hold_status(verdict: Verdict) -> ReservationStatus:
    """What the admission's holds become when it ends this way."""
    if verdict.status is AdmissionStatus.EXPIRED:
        return ReservationStatus.EXPIRED
    if verdict.status is AdmissionStatus.CONVERTED:
        return ReservationStatus.CONVERTED
    return ReservationStatus.RELEASED
