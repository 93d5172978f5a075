"""Bringing a consumer's admissions to their verdicts (worker.domain.endings)
after an admission, an ending or a completion arrived: ending open holds,
selling (worker.engine.sale), moving a sale to the admission it belonged to,
and revising how an ended admission stands. Units are freed before any are
taken."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import HeldRow
from worker.domain import ids
from worker.domain.endings import OPEN, AdmissionStatus, Fact, Verdict, hold_status, verdicts
from worker.domain.events import AdmissionEnded, AdmissionRevised, EndingRemembered
from worker.domain.model import ExperienceSettings
from worker.engine.base import Events
from worker.engine.sale import sell

CONVERTED = AdmissionStatus.CONVERTED


@dataclass
class Settled:
    """What settling changed: per admission, how it stood and stands now,
    with the holds that ended or converted and the lines left unfilled."""

    verdicts: dict[str, Verdict]
    changed: dict[str, Verdict] = field(default_factory=dict)  # grant -> before
    holds: int = 0
    unfilled: int = 0


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
    if new is not None:
        facts = [*earlier, new]
    target = verdicts(visits, facts)
    result = Settled(target)
    known: dict[str, Verdict] | None = None
    pending = []
    for grant, verdict in sorted(target.items()):
        before = uow.standing(grant)
        if grant == skip or not _differs(before, verdict):
            continue
        if _same_sale(before, verdict):
            # What the rows were brought to before this arrival: a sale
            # records neither when its admission stopped holding nor which
            # cart it sold.
            if known is None:
                known = verdicts([v for v in visits if v.grant_digest != skip], earlier)
            if not _sells_another_cart(uow, pair, known.get(grant), verdict):
                continue
        pending.append((grant, before, verdict))
    # Ends and moved sales first, so the units they free can be sold again.
    pending.sort(key=lambda p: p[2].status is CONVERTED)
    for grant, before, after in pending:
        result.changed[grant] = before
        _apply(uow, events, result, pair, grant, before, after, defaults)
    return result


def keep(uow: UnitOfWork, events: Events, experience_id: str, consumer_id: str, fact: Fact) -> None:
    """Keep an ending or completion that may still change hands, published so
    a rebuild keeps it too."""
    uow.keep_fact(fact, experience_id, consumer_id)
    own = fact.command_id == events.command.command_id
    events.add(
        EndingRemembered(
            **events.common(),
            experience_id=experience_id,
            consumer_id=consumer_id,
            grant_digest=fact.grant_digest,
            outcome=fact.outcome.value,
            reason=fact.reason,
            ended_at=fact.at,
            order_id=fact.order_id,
            ending_id=None if own else fact.command_id,
        )
    )


def _keep_end(
    uow: UnitOfWork, events: Events, pair: tuple[str, str], grant: str, end: Verdict
) -> None:
    """A late sale takes the place of how the admission had ended; that end is
    kept, since the sale may yet move to an admission admitted between."""
    assert end.reason is not None
    at = _at(end)
    if any(f.ended_at == at and f.reason == end.reason for f in uow.kept_facts(*pair)):
        return
    ending_id = ids.uuid5(f"ending:{grant}:{end.reason}:{at.isoformat()}")
    keep(uow, events, *pair, Fact(ending_id, grant, end.status, end.reason, at))


def _differs(before: Verdict, after: Verdict) -> bool:
    if before.status is not after.status:
        return True
    if not after.over:
        return False
    if after.status is not CONVERTED:
        return (before.reason, before.at) != (after.reason, after.at)
    # A Fanfare sale may have to be made again even for the same order (see
    # _sells_another_cart); a checkout API sale stands.
    return before.order_id != after.order_id or after.sale is not None


def _same_sale(before: Verdict, after: Verdict) -> bool:
    return before.status is CONVERTED and before.order_id == after.order_id


def _sells_another_cart(
    uow: UnitOfWork, pair: tuple[str, str], known: Verdict | None, after: Verdict
) -> bool:
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
    pair: tuple[str, str],
    grant: str,
    before: Verdict,
    after: Verdict,
    defaults: ExperienceSettings,
) -> None:
    if after.status is CONVERTED:
        if before.status in (AdmissionStatus.RELEASED, AdmissionStatus.EXPIRED):
            _keep_end(uow, events, pair, grant, before)
        if before.status is CONVERTED:
            # An earlier order of this admission, or an earlier end of its
            # holding, arrived late: the sale is made again from that.
            _unsell(uow, events, pair, grant, "released", "sale_revised", _at(after))
        sold = sell(uow, events, pair, grant, after, defaults)
        result.holds += sold.holds
        result.unfilled += sold.unfilled
        if before.status is AdmissionStatus.ACTIVE:
            _closed(uow, events, pair, grant, after)
            return
    elif before.status is AdmissionStatus.ACTIVE:
        result.holds += len(close(uow, events, pair, grant, after))
        return
    elif before.status is CONVERTED:
        _unsell(uow, events, pair, grant, hold_status(after), after.reason or "", _at(after))
    uow.revise_admission(grant, after)
    events.add(
        AdmissionRevised(
            **events.common(),
            experience_id=pair[0],
            consumer_id=pair[1],
            grant_digest=grant,
            status=after.status.value,
            previous_status=before.status.value,
            reason=after.reason or "",
            ended_at=_at(after),
            order_id=after.order_id,
        )
    )


def _unsell(
    uow: UnitOfWork,
    events: Events,
    pair: tuple[str, str],
    grant: str,
    status: str,
    reason: str,
    at: datetime,
) -> None:
    """A sale that was not this admission's: its units go back to the shelf."""
    for held in uow.unconvert(grant, status, reason, at):
        events.hold_ended(
            kind=f"reservation.{status}",
            experience_id=pair[0],
            consumer_id=pair[1],
            grant=grant,
            held=held,
            reason=reason,
            at=at,
            previous_status="converted",
        )


def close(
    uow: UnitOfWork, events: Events, pair: tuple[str, str], grant: str, after: Verdict
) -> list[HeldRow]:
    """An open admission ends, or is sold whole (the checkout API): its
    active holds follow."""
    at, reason = _at(after), after.reason or ""
    if after.status is CONVERTED:
        assert after.order_id is not None
        held = uow.convert_active_reservations(grant, after.order_id, at)
    else:
        held = uow.end_active_reservations(grant, hold_status(after), reason, at)
    for h in held:
        events.hold_ended(
            kind=f"reservation.{hold_status(after)}",
            experience_id=pair[0],
            consumer_id=pair[1],
            grant=grant,
            held=h,
            reason=reason,
            at=at,
            order_id=after.order_id,
        )
    _closed(uow, events, pair, grant, after)
    return held


def _closed(
    uow: UnitOfWork, events: Events, pair: tuple[str, str], grant: str, after: Verdict
) -> None:
    at, reason = _at(after), after.reason or ""
    uow.close_admission(grant, after.status.value, reason, at, after.order_id)
    events.add(
        AdmissionEnded(
            **events.common(),
            experience_id=pair[0],
            consumer_id=pair[1],
            grant_digest=grant,
            status=after.status.value,
            reason=reason,
            ended_at=at,
            order_id=after.order_id,
        )
    )


def _at(verdict: Verdict) -> datetime:
    assert verdict.at is not None
    return verdict.at
