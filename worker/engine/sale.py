"""A sale reported by Fanfare (a completion or order event, which names no
lines): the consumer's cart as it stood when the admission stopped holding
is what was sold. Its lines are taken from the admission's active holds where
they match, from its ended holds where their units are still free, and from
free stock otherwise; a line with no free units is never oversold but
published as unfilled. Active holds the sold cart no longer has go back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import HeldRow, TrackedReservation
from worker.domain import ids
from worker.domain.admission import HoldRequest, plan_holds
from worker.domain.endings import Verdict
from worker.domain.events import LateConversionUnfilled, ReservationCreated
from worker.domain.model import ExperienceSettings
from worker.engine.base import Events

NOT_IN_ORDER = "not_in_order"
Pair = tuple[str, str]


@dataclass
class Sold:
    holds: int = 0
    unfilled: int = 0


@dataclass(frozen=True)
class _Sale:
    pair: Pair
    grant: str
    order_id: str
    at: datetime
    reason: str


def sell(
    uow: UnitOfWork,
    events: Events,
    pair: Pair,
    grant: str,
    verdict: Verdict,
    defaults: ExperienceSettings,
) -> Sold:
    assert verdict.order_id is not None
    assert verdict.at is not None
    assert verdict.held_until is not None
    sale = _Sale(pair, grant, verdict.order_id, verdict.at, verdict.reason or "")
    settings = uow.admission_settings(grant) or defaults
    wanted = plan_holds(grant, uow.cart_at(*pair, verdict.held_until), settings)
    active = {(r.product_id, r.variant_id): r for r in uow.active_reservations(grant)}
    to_sell = []
    for h in wanted:
        held = active.get((h.product_id, h.variant_id))
        if held is not None and held.quantity == h.quantity:
            to_sell.append(held)
            del active[(h.product_id, h.variant_id)]
    # Holds the sold cart does not have free their units first.
    for r in sorted(active.values(), key=lambda r: (r.product_id, r.variant_id)):
        _hold_ended(events, sale, uow.end_reservation(r, "released", NOT_IN_ORDER, sale.at))
    selling = {(r.product_id, r.variant_id) for r in to_sell}
    sold = Sold()
    for h in wanted:
        if (h.product_id, h.variant_id) in selling:
            continue
        if not _sell_again(uow, events, sale, h) and not _take(uow, events, sale, h, settings):
            sold.unfilled += 1
            _unfilled(events, sale, h)
        else:
            sold.holds += 1
    for r in to_sell:
        _hold_ended(events, sale, uow.convert_reservation(r, sale.order_id, sale.at), "converted")
        sold.holds += 1
    return sold


def _sell_again(uow: UnitOfWork, events: Events, sale: _Sale, h: HoldRequest) -> bool:
    """An ended hold of the same line, sold again if its units are free."""
    for r in uow.ended_holds(sale.grant):
        if (r.product_id, r.variant_id, r.quantity) != (h.product_id, h.variant_id, h.quantity):
            continue
        previous = r.status
        if not uow.convert_ended(r.id, sale.order_id, sale.at):
            return False
        _hold_ended(events, sale, r.held(), "converted", previous)
        return True
    return False


def _take(
    uow: UnitOfWork, events: Events, sale: _Sale, h: HoldRequest, settings: ExperienceSettings
) -> bool:
    """A line the admission never held: a new hold from free stock, sold."""
    if not uow.take_units(h.product_id, h.variant_id, h.quantity):
        return False
    uow.take_pool_unit(sale.pair[0], h.product_id, h.variant_id, h.quantity, settings)
    reservation_id = h.reservation_id
    if reservation_id in uow.reservations:
        reservation_id = ids.reservation_id(
            sale.grant, h.product_id, h.variant_id or None, str(events.command.command_id)
        )
    admission = uow.admissions[sale.grant]
    hold = HoldRequest(reservation_id, h.product_id, h.variant_id, h.quantity)
    uow.insert_reservations(
        holds=[hold],
        experience_id=sale.pair[0],
        consumer_id=sale.pair[1],
        grant_digest=sale.grant,
        created_at=sale.at,
        expires_at=admission.expires_at,
        settings=settings,
    )
    events.add(
        ReservationCreated(
            **events.common(),
            experience_id=sale.pair[0],
            consumer_id=sale.pair[1],
            grant_digest=sale.grant,
            product_id=h.product_id,
            variant_id=h.variant_id or None,
            quantity=h.quantity,
            reservation_id=reservation_id,
            strategy=settings.strategy,
            window_seconds=settings.window_seconds,
            buffer_seconds=settings.buffer_seconds,
            created_at=sale.at,
            expires_at=admission.expires_at,
        )
    )
    r: TrackedReservation = uow.reservations[reservation_id]
    _hold_ended(events, sale, uow.convert_reservation(r, sale.order_id, sale.at), "converted")
    return True


def _hold_ended(
    events: Events,
    sale: _Sale,
    held: HeldRow,
    outcome: str = "released",
    previous: str = "active",
) -> None:
    converted = outcome == "converted"
    events.hold_ended(
        kind=f"reservation.{outcome}",
        experience_id=sale.pair[0],
        consumer_id=sale.pair[1],
        grant=sale.grant,
        held=held,
        reason=sale.reason if converted else NOT_IN_ORDER,
        at=sale.at,
        order_id=sale.order_id if converted else None,
        previous_status=previous,
    )


def _unfilled(events: Events, sale: _Sale, h: HoldRequest) -> None:
    events.add(
        LateConversionUnfilled(
            **events.common(),
            experience_id=sale.pair[0],
            consumer_id=sale.pair[1],
            grant_digest=sale.grant,
            order_id=sale.order_id,
            product_id=h.product_id,
            variant_id=h.variant_id or None,
            quantity=h.quantity,
        )
    )
