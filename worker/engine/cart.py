"""Applying a cart: stored always; while the consumer's admission is active,
its holds change to match, subject to stock (worker.domain.cart)."""

from __future__ import annotations

from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import HeldRow
from worker.domain.admission import HoldRequest, is_all_or_nothing
from worker.domain.cart import ActiveHold, HoldChange, plan_cart_change
from worker.domain.commands import PutCart
from worker.domain.endings import AdmissionStatus
from worker.domain.model import ExperienceSettings, ReservationStatus
from worker.domain.stock import StockKey
from worker.engine import holds
from worker.engine.base import Applied
from worker.engine.events import Events
from worker.engine.holds import HoldTerms

CART_CHANGED = "cart_changed"


def put_cart(uow: UnitOfWork, cmd: PutCart, defaults: ExperienceSettings) -> Applied:
    events = Events(cmd)
    uow.put_cart(cmd.experience_id, cmd.consumer_id, cmd.items, cmd.occurred_at, cmd.command_id)
    events.cart_stored(cmd)
    outcome = {"status": "stored", "items": len(cmd.items)}
    admission = uow.current_admission(cmd.experience_id, cmd.consumer_id)
    if admission is None or admission.status != AdmissionStatus.ACTIVE:
        return Applied(outcome, events.items)
    settings = uow.admission_settings(admission.grant_digest) or defaults
    terms = HoldTerms(
        cmd.experience_id,
        cmd.consumer_id,
        admission.grant_digest,
        cmd.occurred_at,
        admission.expires_at,
        settings,
    )
    changed, rejected = _follow(uow, events, cmd, terms)
    return Applied({**outcome, "holdsChanged": changed, "rejected": rejected}, events.items)


def _follow(uow: UnitOfWork, events: Events, cmd: PutCart, terms: HoldTerms) -> tuple[int, int]:
    """Change the admission's holds to the new cart, where stock allows;
    returns how many changed and how many were refused."""
    current = uow.active_holds(terms.grant_digest)
    changes = plan_cart_change(
        terms.grant_digest, str(cmd.command_id), current, cmd.items, terms.settings.strategy
    )
    refused = _move_units(uow, terms, changes)
    applied = [c for c in changes if refused.get(_key(c)) is None]
    _release_replaced(uow, events, terms, [c.old for c in applied if c.old is not None])
    new_holds = [(c, hold) for c in changes if (hold := _new_hold(c)) is not None]
    holds.insert(uow, terms, [hold for c, hold in new_holds if refused.get(_key(c)) is None])
    for c, hold in new_holds:
        reason = refused.get(_key(c))
        if reason is None:
            events.reservation_created(terms, hold, c.old.reservation_id if c.old else None)
        else:
            events.rejected(terms, hold, reason)
    return len(applied), len(changes) - len(applied)


def _release_replaced(
    uow: UnitOfWork, events: Events, terms: HoldTerms, replaced: list[ActiveHold]
) -> None:
    """The holds of the rows that changed end; the units moved already."""
    at, pair = terms.created_at, (terms.experience_id, terms.consumer_id)
    uow.release_replaced_holds([old.reservation_id for old in replaced], CART_CHANGED, at)
    for old in replaced:
        held = _held(old, terms.settings)
        released = ReservationStatus.RELEASED
        events.hold_ended(
            pair, terms.grant_digest, held, status=released, reason=CART_CHANGED, at=at
        )


def _key(change: HoldChange) -> StockKey:
    return (change.product_id, change.variant_id)


def _move_units(
    uow: UnitOfWork, terms: HoldTerms, changes: list[HoldChange]
) -> dict[StockKey, str | None]:
    """Take the units of the rows that grow, then give back those of the rows
    that shrink (never refused); returns, per row that grows, why it was
    refused or None."""
    experience_id, settings = terms.experience_id, terms.settings
    increases = {_key(c): c.delta for c in changes if c.delta > 0}
    refused = holds.take(uow, experience_id, settings, increases, is_all_or_nothing(settings))
    for c in changes:
        if c.delta < 0:
            holds.give_back(uow, experience_id, settings, _key(c), -c.delta)
    return refused


def _held(old: ActiveHold, settings: ExperienceSettings) -> HeldRow:
    return HeldRow(
        old.reservation_id,
        old.product_id,
        old.variant_id,
        old.quantity,
        settings.strategy.value,
        old.created_at,
    )


def _new_hold(change: HoldChange) -> HoldRequest | None:
    """The hold that replaces a changed row's, unless the row is dropped."""
    if change.new_reservation_id is None:
        return None
    return HoldRequest(
        change.new_reservation_id, change.product_id, change.variant_id, change.new_quantity
    )
