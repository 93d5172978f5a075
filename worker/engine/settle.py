"""Bringing a consumer's admissions to their verdicts (worker.domain.endings)
after an admission, an ending or a completion arrived: ending open holds,
converting them, selling ended holds again for a late completion, moving a
sale to the admission it belonged to, and revising how an ended admission
stands. Units are freed before any are taken."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from worker.adapters.unit_of_work import HeldRow, UnitOfWork
from worker.domain.admission import plan_holds
from worker.domain.endings import AdmissionStatus, Fact, Verdict, hold_status, verdicts
from worker.domain.events import (
    AdmissionEnded,
    AdmissionRevised,
    EndingRemembered,
    LateConversionUnfilled,
    ReservationCreated,
)
from worker.domain.model import ExperienceSettings
from worker.engine.base import Events

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
    extra: Fact | None = None,
    skip: str | None = None,
) -> Settled:
    """`extra`: a fact with a grant that is not kept (its admission is known).
    `skip`: an admission just recorded, which its own handler settles."""
    facts = uow.facts(experience_id, consumer_id)
    if extra is not None:
        facts.append(extra)
    target = verdicts(uow.visits(experience_id, consumer_id), facts)
    result = Settled(target)
    pending = [
        (grant, uow.standing(grant), verdict)
        for grant, verdict in sorted(target.items())
        if grant != skip and _differs(uow.standing(grant), verdict)
    ]
    # Ends and moved sales first, so the units they free can be sold again.
    pending.sort(key=lambda p: p[2].status is CONVERTED)
    for grant, before, after in pending:
        result.changed[grant] = before
        _apply(uow, events, result, (experience_id, consumer_id), grant, before, after, defaults)
    return result


def keep(uow: UnitOfWork, events: Events, experience_id: str, consumer_id: str, fact: Fact) -> None:
    """Keep an ending or completion that may still change hands, published so
    a rebuild keeps it too."""
    uow.keep_fact(fact, experience_id, consumer_id)
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
        )
    )


def _differs(before: Verdict, after: Verdict) -> bool:
    if before.status is not after.status:
        return True
    return after.over and (before.reason, before.at, before.order_id) != (
        after.reason,
        after.at,
        after.order_id,
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
    if before.status is AdmissionStatus.ACTIVE:
        result.holds += len(close(uow, events, pair, grant, after))
        return
    if after.status is CONVERTED:
        result.unfilled += _sell_late(uow, events, pair, grant, after, defaults)
    elif before.status is CONVERTED:
        undone = uow.unconvert(grant, hold_status(after), after.reason or "", _at(after))
        for held in undone:
            events.hold_ended(
                kind=f"reservation.{hold_status(after)}",
                experience_id=pair[0],
                consumer_id=pair[1],
                grant=grant,
                held=held,
                reason=after.reason or "",
                at=_at(after),
                previous_status="converted",
            )
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


def close(
    uow: UnitOfWork, events: Events, pair: tuple[str, str], grant: str, after: Verdict
) -> list[HeldRow]:
    """An open admission ends or converts: its active holds follow."""
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
    return held


def _sell_late(
    uow: UnitOfWork,
    events: Events,
    pair: tuple[str, str],
    grant: str,
    after: Verdict,
    defaults: ExperienceSettings,
) -> int:
    """A completion for an admission that had ended: its ended holds are sold
    again where their units are still free; an admission that never held
    anything (it arrived already ended) sells its cart's lines the same way.
    Returns the lines left unfilled, each published."""
    assert after.order_id is not None
    at, order = _at(after), after.order_id
    unfilled = 0
    ended = uow.ended_holds(grant)
    if ended:
        for r in ended:
            previous = r.status
            if uow.convert_ended(r.id, order, at):
                events.hold_ended(
                    kind="reservation.converted",
                    experience_id=pair[0],
                    consumer_id=pair[1],
                    grant=grant,
                    held=r.held(),
                    reason=after.reason or "",
                    at=at,
                    order_id=order,
                    previous_status=previous,
                )
            else:
                unfilled += 1
                _unfilled(events, pair, grant, order, r.product_id, r.variant_id, r.quantity, r.id)
        return unfilled
    if uow.has_reservations(grant):
        return 0  # every hold it had was replaced or is sold already
    settings = uow.admission_settings(grant) or defaults
    taken = []
    for h in plan_holds(grant, uow.load_cart(*pair), settings):
        if uow.take_units(h.product_id, h.variant_id, h.quantity):
            uow.take_pool_unit(pair[0], h.product_id, h.variant_id, h.quantity, settings)
            taken.append(h)
        else:
            unfilled += 1
            _unfilled(events, pair, grant, order, h.product_id, h.variant_id, h.quantity, None)
    admission = uow.admissions[grant]
    uow.insert_reservations(
        holds=taken,
        experience_id=pair[0],
        consumer_id=pair[1],
        grant=grant,
        created_at=at,
        expires_at=admission.expires_at,
        settings=settings,
    )
    for h in taken:
        events.add(
            ReservationCreated(
                **events.common(),
                experience_id=pair[0],
                consumer_id=pair[1],
                grant_digest=grant,
                product_id=h.product_id,
                variant_id=h.variant_id or None,
                quantity=h.quantity,
                reservation_id=h.reservation_id,
                strategy=settings.strategy,
                window_seconds=settings.window_seconds,
                buffer_seconds=settings.buffer_seconds,
                created_at=at,
                expires_at=admission.expires_at,
            )
        )
    for held in uow.convert_active_reservations(grant, order, at):
        events.hold_ended(
            kind="reservation.converted",
            experience_id=pair[0],
            consumer_id=pair[1],
            grant=grant,
            held=held,
            reason=after.reason or "",
            at=at,
            order_id=order,
        )
    return unfilled


def _unfilled(
    events: Events,
    pair: tuple[str, str],
    grant: str,
    order: str,
    product: str,
    variant: str,
    quantity: int,
    reservation_id: UUID | None,
) -> None:
    events.add(
        LateConversionUnfilled(
            **events.common(),
            experience_id=pair[0],
            consumer_id=pair[1],
            grant_digest=grant,
            order_id=order,
            product_id=product,
            variant_id=variant or None,
            quantity=quantity,
            reservation_id=reservation_id,
        )
    )


def _at(verdict: Verdict) -> datetime:
    assert verdict.at is not None
    return verdict.at
