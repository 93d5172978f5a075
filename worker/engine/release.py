"""An operator's release: the holds it names or selects that are still held
at its time end `released`, reason `operator`, their units back on the
shelf (and in the pool). The admissions stay as they are: a later checkout
finds those lines missing."""

from __future__ import annotations

from uuid import UUID

from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import TrackedReservation
from worker.domain import reservation
from worker.domain.commands import ReleaseHolds
from worker.domain.model import ReservationStatus
from worker.engine.base import Applied
from worker.engine.events import Events


def release_holds(uow: UnitOfWork, cmd: ReleaseHolds) -> Applied:
    events = Events(cmd)
    chosen, unknown = _chosen(uow, cmd)
    at = cmd.occurred_at
    released, not_held = [], []
    for r in sorted(chosen, key=lambda r: (r.created_at, r.id)):
        if not reservation.held_at(r.status, r.expires_at, at):
            not_held.append(r.id)
            continue
        held = uow.end_reservation(r, ReservationStatus.RELEASED, reservation.OPERATOR_REASON, at)
        events.released_by_operator(cmd, r.consumer_id, r.grant_digest, held)
        released.append(r.id)
    outcome = {
        "status": "released",
        "released": [str(rid) for rid in released],
        "notActive": [str(rid) for rid in not_held],
        "unknown": [str(rid) for rid in unknown],
    }
    return Applied(outcome, events.items)


def _chosen(uow: UnitOfWork, cmd: ReleaseHolds) -> tuple[list[TrackedReservation], list[UUID]]:
    """The holds the command names (and the ids the experience has none
    for), or the active ones it selects."""
    if cmd.reservation_ids is not None:
        return uow.holds_named(cmd.experience_id, cmd.reservation_ids)
    selected = uow.active_holds_of(
        cmd.experience_id,
        consumer_id=cmd.consumer_id,
        product_id=cmd.product_id,
        variant_id=cmd.variant_id,
    )
    return selected, []
