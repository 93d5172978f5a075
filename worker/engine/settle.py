"""Bringing a consumer's admissions to their verdicts (worker.domain.endings)
after an admission, an ending or a completion arrived: ending open holds,
selling (worker.engine.sale), moving a sale to the admission it belonged to,
and revising how an ended admission stands. Units are freed before any are
taken."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from worker.adapters.rows import Pair
from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import HeldRow
from worker.domain import ids
from worker.domain.endings import (
    OPEN,
    AdmissionStatus,
    Fact,
    Verdict,
    Visit,
    hold_status,
    taken_up_id,
    verdicts,
)
from worker.domain.model import ExperienceSettings, ReservationStatus
from worker.engine.events import Events
from worker.engine.retried import hold_again
from worker.engine.sale import Sold, sell

SALE_REVISED = "sale_revised"


@dataclass
class Settled:
    """What settling changed: per admission, how it stood and stands now,
    with the holds that ended or converted and the lines left unfilled."""

    verdicts: dict[str, Verdict]
    changed: dict[str, Verdict] = field(default_factory=dict)  # grant digest -> before
    holds: int = 0
    unfilled: int = 0


class Change(NamedTuple):
    """An admission whose rows go from how it stood to its verdict."""

    grant_digest: str
    before: Verdict
    after: Verdict


def settle(
    uow: UnitOfWork,
    events: Events,
    experience_id: str,
    consumer_id: str,
    defaults: ExperienceSettings,
    *,
    new: Fact | None = None,
    skip: str | None = None,
) -> Settled:
    """`new`: the ending or completion that just arrived (kept or not).
    `skip`: an admission just recorded, which its own handler settles."""
    pair = (experience_id, consumer_id)
    facts = uow.facts(*pair)
    visits = uow.visits(*pair)
    if new is None and not facts and len(visits) == 1:
        # A first admission with nothing reported about it (most of a drop).
        return Settled({visits[0].grant_digest: OPEN})
    earlier = [f for f in facts if new is None or f.command_id != new.command_id]
    result = Settled(verdicts(visits, facts if new is None else [*earlier, new]))
    _take_up(uow, events, result, pair, skip, defaults)
    for change in _to_change(uow, pair, visits, earlier, result, skip):
        result.changed[change.grant_digest] = change.before
        _apply(uow, events, result, pair, change, defaults)
    return result


def _take_up(
    uow: UnitOfWork,
    events: Events,
    result: Settled,
    pair: Pair,
    skip: str | None,
    defaults: ExperienceSettings,
) -> None:
    """Pending retries that a late fact made count are applied as at their
    own time: the admission expired at the expiry each follows, then held
    again. Its verdict (a fact after the retry may end it) is brought about
    next, as any other."""
    for grant_digest, verdict in sorted(result.verdicts.items()):
        if grant_digest == skip or not verdict.taken_up:
            continue
        result.changed[grant_digest] = uow.standing(grant_digest)
        settings = uow.admission_settings(grant_digest) or defaults
        for retry in verdict.taken_up:
            assert retry.follows is not None
            expired = Verdict(AdmissionStatus.EXPIRED, retry.reason, retry.follows)
            bring_to(uow, events, pair, grant_digest, expired, defaults)
            hold_again(uow, events, pair, retry, settings, taken_up_id(retry))


def _to_change(
    uow: UnitOfWork,
    pair: Pair,
    visits: list[Visit],
    earlier: list[Fact],
    result: Settled,
    skip: str | None,
) -> list[Change]:
    """The admissions whose rows must change: ends and moved sales first, so
    the units they free can be sold again."""
    known: dict[str, Verdict] | None = None
    pending = []
    for grant_digest, verdict in sorted(result.verdicts.items()):
        if grant_digest == skip:
            continue
        before = uow.standing(grant_digest)
        if not _differs(before, verdict):
            continue
        if _same_sale(before, verdict):
            # What the rows were brought to before this arrival: a sale
            # records neither when its admission stopped holding nor which
            # cart it sold.
            if known is None:
                known = verdicts([v for v in visits if v.grant_digest != skip], earlier)
            if not _sells_another_cart(uow, pair, known.get(grant_digest), verdict):
                continue
        pending.append(Change(grant_digest, before, verdict))
    pending.sort(key=lambda c: c.after.status is AdmissionStatus.CONVERTED)
    return pending


def bring_to(
    uow: UnitOfWork,
    events: Events,
    pair: Pair,
    grant_digest: str,
    after: Verdict,
    defaults: ExperienceSettings,
) -> None:
    """Bring one admission's rows to a verdict decided elsewhere (how a retry
    found it), whatever facts from after that its rows were brought to."""
    before = uow.standing(grant_digest)
    if _differs(before, after):
        change = Change(grant_digest, before, after)
        _apply(uow, events, Settled({grant_digest: after}), pair, change, defaults)


def keep(uow: UnitOfWork, events: Events, experience_id: str, consumer_id: str, fact: Fact) -> None:
    """Keep an ending or completion that may still change hands, published so
    a rebuild keeps it too."""
    uow.keep_fact(fact, experience_id, consumer_id)
    events.ending_remembered((experience_id, consumer_id), fact)


def _keep_end(uow: UnitOfWork, events: Events, pair: Pair, grant_digest: str, end: Verdict) -> None:
    """A late sale takes the place of how the admission had ended; that end is
    kept, since the sale may yet move to an admission admitted between."""
    assert end.reason is not None
    at = _at(end)
    if any(f.ended_at == at and f.reason == end.reason for f in uow.kept_facts(*pair)):
        return
    ending_id = ids.uuid5(f"ending:{grant_digest}:{end.reason}:{at.isoformat()}")
    keep(uow, events, *pair, Fact(ending_id, grant_digest, end.status, end.reason, at))


def _differs(before: Verdict, after: Verdict) -> bool:
    if before.status is not after.status:
        return True
    if not after.over:
        return False
    if after.status is not AdmissionStatus.CONVERTED:
        return (before.reason, before.at) != (after.reason, after.at)
    # A Fanfare sale may have to be made again even for the same order (see
    # _sells_another_cart); a checkout API sale stands.
    return before.order_id != after.order_id or after.sale is not None


def _same_sale(before: Verdict, after: Verdict) -> bool:
    return before.status is AdmissionStatus.CONVERTED and before.order_id == after.order_id


def _sells_another_cart(uow: UnitOfWork, pair: Pair, known: Verdict | None, after: Verdict) -> bool:
    """The same order reported again, or an ending that arrived late: the
    sale is made again only if the cart it sells is another one."""
    return (
        known is not None
        and known.held_until is not None
        and after.held_until is not None
        and known.held_until != after.held_until
        and uow.cart_version_at(*pair, known.held_until)
        != uow.cart_version_at(*pair, after.held_until)
    )


def _apply(
    uow: UnitOfWork,
    events: Events,
    result: Settled,
    pair: Pair,
    change: Change,
    defaults: ExperienceSettings,
) -> None:
    """Bring one admission's rows from how it stood to its verdict."""
    grant_digest, before, after = change
    if after.status is AdmissionStatus.CONVERTED:
        sold = _sell(uow, events, pair, change, defaults)
        result.holds += sold.holds
        result.unfilled += sold.unfilled
        if before.status is AdmissionStatus.ACTIVE:
            closed(uow, events, pair, grant_digest, after)
            return
    elif before.status is AdmissionStatus.ACTIVE:
        result.holds += len(close(uow, events, pair, grant_digest, after))
        return
    elif before.status is AdmissionStatus.CONVERTED:
        status, reason = hold_status(after), after.reason or ""
        _unsell(uow, events, pair, grant_digest, status, reason, _at(after))
    uow.revise_admission(grant_digest, after)
    events.admission_revised(pair, grant_digest, before, after, _at(after))


def _sell(
    uow: UnitOfWork, events: Events, pair: Pair, change: Change, defaults: ExperienceSettings
) -> Sold:
    """The admission's sale is made (again): an end it had is kept, a sale it
    had is taken back first."""
    grant_digest, before, after = change
    if before.status in (AdmissionStatus.RELEASED, AdmissionStatus.EXPIRED):
        _keep_end(uow, events, pair, grant_digest, before)
    if before.status is AdmissionStatus.CONVERTED:
        # An earlier order of this admission, or an earlier end of its
        # holding, arrived late: the sale is made again from that.
        released = ReservationStatus.RELEASED.value
        _unsell(uow, events, pair, grant_digest, released, SALE_REVISED, _at(after))
    return sell(uow, events, pair, grant_digest, after, defaults)


def _unsell(
    uow: UnitOfWork,
    events: Events,
    pair: Pair,
    grant_digest: str,
    status: str,
    reason: str,
    at: datetime,
) -> None:
    """A sale that was not this admission's: its units go back to the shelf."""
    for held in uow.unconvert(grant_digest, status, reason, at):
        previous = ReservationStatus.CONVERTED
        events.hold_ended(
            pair, grant_digest, held, status=status, reason=reason, at=at, previous_status=previous
        )


def close(
    uow: UnitOfWork, events: Events, pair: Pair, grant_digest: str, after: Verdict
) -> list[HeldRow]:
    """An open admission ends, or is sold whole (the checkout API): its
    active holds follow."""
    at, reason, status = _at(after), after.reason or "", hold_status(after)
    if after.status is AdmissionStatus.CONVERTED:
        assert after.order_id is not None
        held = uow.convert_active_reservations(grant_digest, after.order_id, at)
    else:
        held = uow.end_active_reservations(grant_digest, status, reason, at)
    for h in held:
        events.hold_ended(
            pair, grant_digest, h, status=status, reason=reason, at=at, order_id=after.order_id
        )
    closed(uow, events, pair, grant_digest, after)
    return held


def closed(uow: UnitOfWork, events: Events, pair: Pair, grant_digest: str, after: Verdict) -> None:
    """The admission itself ends as its verdict says, its holds already moved."""
    at, reason = _at(after), after.reason or ""
    uow.close_admission(grant_digest, after.status.value, reason, at, after.order_id)
    events.admission_ended(pair, grant_digest, after, reason, at)


def _at(verdict: Verdict) -> datetime:
    assert verdict.at is not None
    return verdict.at
