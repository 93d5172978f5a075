"""A sale reported by Fanfare (a completion or order event, which names no
lines): the consumer's cart as it stood when the admission stopped holding
is what was sold. Its lines are taken from the admission's active holds where
they match, from its ended holds where their units are still free, and from
free stock otherwise; a line with no free units is never oversold but
published as unfilled. Active holds the sold cart no longer has go back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from worker.adapters.rows import Pair
from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import HeldRow, TrackedReservation
from worker.domain import ids
from worker.domain.admission import HoldRequest, plan_holds
from worker.domain.endings import Verdict
from worker.domain.model import ExperienceSettings, ReservationStatus
from worker.engine import holds
from worker.engine.events import Events
from worker.engine.holds import HoldTerms

NOT_IN_ORDER = "not_in_order"


@dataclass
class Sold:
    holds: int = 0
    unfilled: int = 0


@dataclass(frozen=True)
class _Sale:
    pair: Pair
    grant_digest: str
    order_id: str
    at: datetime
    reason: str


def sell(
    uow: UnitOfWork,
    events: Events,
    pair: Pair,
    grant_digest: str,
    verdict: Verdict,
    defaults: ExperienceSettings,
) -> Sold:
    assert verdict.order_id is not None
    assert verdict.at is not None
    assert verdict.held_until is not None
    sale = _Sale(pair, grant_digest, verdict.order_id, verdict.at, verdict.reason or "")
    settings = uow.admission_settings(grant_digest) or defaults
    wanted = plan_holds(grant_digest, uow.cart_at(*pair, verdict.held_until), settings)
    to_sell, not_sold = _match(wanted, uow.active_reservations(grant_digest))
    # Holds the sold cart does not have free their units first.
    released = ReservationStatus.RELEASED.value
    for r in not_sold:
        _released(events, sale, uow.end_reservation(r, released, NOT_IN_ORDER, sale.at))
    selling = {(r.product_id, r.variant_id) for r in to_sell}
    sold = Sold()
    for h in wanted:
        if (h.product_id, h.variant_id) not in selling:
            _fill(uow, events, sale, h, settings, sold)
    for r in to_sell:
        _converted(events, sale, uow.convert_reservation(r, sale.order_id, sale.at))
        sold.holds += 1
    return sold


def _match(
    wanted: list[HoldRequest], active: list[TrackedReservation]
) -> tuple[list[TrackedReservation], list[TrackedReservation]]:
    """The active holds the sold cart has line for line, in its order, and
    those it does not have, in key order."""
    by_key = {(r.product_id, r.variant_id): r for r in active}
    to_sell = []
    for h in wanted:
        held = by_key.get((h.product_id, h.variant_id))
        if held is not None and held.quantity == h.quantity:
            to_sell.append(held)
            del by_key[(h.product_id, h.variant_id)]
    return to_sell, sorted(by_key.values(), key=lambda r: (r.product_id, r.variant_id))


def _fill(
    uow: UnitOfWork,
    events: Events,
    sale: _Sale,
    h: HoldRequest,
    settings: ExperienceSettings,
    sold: Sold,
) -> None:
    """A sold line the active holds do not have."""
    if _sell_again(uow, events, sale, h) or _take(uow, events, sale, h, settings):
        sold.holds += 1
    else:
        sold.unfilled += 1
        events.late_conversion_unfilled(sale.pair, sale.grant_digest, sale.order_id, h)


def _sell_again(uow: UnitOfWork, events: Events, sale: _Sale, h: HoldRequest) -> bool:
    """An ended hold of the same line, sold again if its units are free."""
    for r in uow.ended_holds(sale.grant_digest):
        if (r.product_id, r.variant_id, r.quantity) != (h.product_id, h.variant_id, h.quantity):
            continue
        previous = r.status
        if not uow.convert_ended(r.id, sale.order_id, sale.at):
            return False
        _converted(events, sale, r.held(), previous)
        return True
    return False


def _take(
    uow: UnitOfWork, events: Events, sale: _Sale, h: HoldRequest, settings: ExperienceSettings
) -> bool:
    """A line the admission never held: a new hold from free stock, sold."""
    if not uow.take_units(h.product_id, h.variant_id, h.quantity):
        return False
    uow.take_pool_unit(sale.pair[0], h.product_id, h.variant_id, h.quantity, settings)
    hold = HoldRequest(_new_id(uow, sale, h, events), h.product_id, h.variant_id, h.quantity)
    expires_at = uow.admissions[sale.grant_digest].expires_at
    terms = HoldTerms(*sale.pair, sale.grant_digest, sale.at, expires_at, settings)
    holds.insert(uow, terms, [hold])
    events.reservation_created(terms, hold)
    r = uow.reservations[hold.reservation_id]
    _converted(events, sale, uow.convert_reservation(r, sale.order_id, sale.at))
    return True


def _new_id(uow: UnitOfWork, sale: _Sale, h: HoldRequest, events: Events) -> UUID:
    """The line's own hold id, or one of this command when a hold of the
    admission already has it."""
    if h.reservation_id not in uow.reservations:
        return h.reservation_id
    command_id = str(events.command.command_id)
    return ids.reservation_id(sale.grant_digest, h.product_id, h.variant_id or None, command_id)


def _converted(
    events: Events, sale: _Sale, held: HeldRow, previous: str = ReservationStatus.ACTIVE
) -> None:
    events.hold_ended(
        sale.pair,
        sale.grant_digest,
        held,
        status=ReservationStatus.CONVERTED,
        reason=sale.reason,
        at=sale.at,
        order_id=sale.order_id,
        previous_status=previous,
    )


def _released(events: Events, sale: _Sale, held: HeldRow) -> None:
    events.hold_ended(
        sale.pair,
        sale.grant_digest,
        held,
        status=ReservationStatus.RELEASED,
        reason=NOT_IN_ORDER,
        at=sale.at,
    )
