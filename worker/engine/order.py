"""The checkout API's order under onComplete `convert_ordered`: the quantities
on its lines are sold and the admission's other active holds go back
(`released`, reason `not_ordered`).

A hold the order takes only part of is split the way a cart change splits
one (worker.domain.cart), so a hold's quantity never changes in place: it
ends `released` (`not_ordered`), and a new hold of the ordered quantity,
created with `replaces` naming it, takes those units again at once and
converts. Units are freed before any are taken, so counters move by exactly
what was sold and what went back; a subscriber that nets a
`reservation.created` against the hold it `replaces` (as for `cart_changed`)
reads the same: the replacement's `reservation.converted` is what was sold,
the released quantity less the replacement's is what went back."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from worker.adapters.rows import Pair
from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import HeldRow, TrackedReservation
from worker.domain import ids
from worker.domain.admission import HoldRequest
from worker.domain.checkout import NOT_ORDERED, ordered_units
from worker.domain.endings import CHECKOUT_REASON, Verdict
from worker.domain.model import CartLine, ExperienceSettings, ReservationStatus
from worker.engine import holds
from worker.engine.events import Events
from worker.engine.holds import HoldTerms
from worker.engine.settle import closed


@dataclass
class Order:
    """What an order did to the admission's active holds."""

    converted: list[HeldRow] = field(default_factory=list)
    released: list[HeldRow] = field(default_factory=list)


def sell_order(
    uow: UnitOfWork,
    events: Events,
    pair: Pair,
    grant_digest: str,
    verdict: Verdict,
    items: list[CartLine],
    settings: ExperienceSettings,
) -> Order:
    """`verdict`: the admission's sale (its time and order id); `settings`:
    those the admission holds on. The checks have passed: the holds cover
    every line."""
    assert verdict.at is not None
    assert verdict.order_id is not None
    at, order = verdict.at, Order()
    # Two holds of one row (a late sale's): the older is taken first.
    active = sorted(
        uow.active_reservations(grant_digest),
        key=lambda r: (r.product_id, r.variant_id, r.created_at, r.id),
    )
    units = ordered_units(active, items)
    for r, n in zip(active, units, strict=True):
        if n < r.quantity:
            order.released.append(_release(uow, events, pair, grant_digest, r, at))
    selling = [
        r
        if n == r.quantity
        else _replace(uow, events, HoldTerms(*pair, grant_digest, at, r.expires_at, settings), r, n)
        for r, n in zip(active, units, strict=True)
        if n
    ]
    order.converted = [_convert(uow, events, pair, grant_digest, r, verdict) for r in selling]
    closed(uow, events, pair, grant_digest, verdict)
    return order


def _convert(
    uow: UnitOfWork,
    events: Events,
    pair: Pair,
    grant_digest: str,
    r: TrackedReservation,
    verdict: Verdict,
) -> HeldRow:
    assert verdict.at is not None
    assert verdict.order_id is not None
    held = uow.convert_reservation(r, verdict.order_id, verdict.at)
    events.hold_ended(
        pair,
        grant_digest,
        held,
        status=ReservationStatus.CONVERTED,
        reason=CHECKOUT_REASON,
        at=verdict.at,
        order_id=verdict.order_id,
    )
    return held


def _release(
    uow: UnitOfWork,
    events: Events,
    pair: Pair,
    grant_digest: str,
    r: TrackedReservation,
    at: datetime,
) -> HeldRow:
    released = ReservationStatus.RELEASED
    held = uow.end_reservation(r, released, NOT_ORDERED, at)
    events.hold_ended(pair, grant_digest, held, status=released, reason=NOT_ORDERED, at=at)
    return held


def _replace(
    uow: UnitOfWork, events: Events, terms: HoldTerms, old: TrackedReservation, units: int
) -> TrackedReservation:
    """The ordered part of a hold that just went back: a hold of its own,
    on the admission's terms and the old hold's expiry, with units its
    release freed."""
    taken = uow.take_units(old.product_id, old.variant_id, units)
    assert taken, "the units the replaced hold's release just freed"
    uow.take_pool_unit(terms.experience_id, old.product_id, old.variant_id, units, terms.settings)
    command_id = str(events.command.command_id)
    hold = HoldRequest(
        ids.reservation_id(terms.grant_digest, old.product_id, old.variant_id or None, command_id),
        old.product_id,
        old.variant_id,
        units,
    )
    holds.insert(uow, terms, [hold])
    events.reservation_created(terms, hold, replaces=old.id)
    return uow.reservations[hold.reservation_id]
