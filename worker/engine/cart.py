"""Applying a cart: stored always; while the consumer's admission is active,
its holds change to match, subject to stock (worker.domain.cart)."""

from __future__ import annotations

from typing import Any

from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import HeldRow
from worker.domain.admission import HoldRequest, is_all_or_nothing
from worker.domain.cart import plan_cart_change
from worker.domain.commands import PutCart
from worker.domain.events import CartUpdated, ReservationCreated, ReservationRejected
from worker.domain.model import ExperienceSettings
from worker.engine import holds
from worker.engine.base import Applied, Events


def put_cart(uow: UnitOfWork, cmd: PutCart, defaults: ExperienceSettings) -> Applied:
    events = Events(cmd)
    uow.put_cart(cmd.experience_id, cmd.consumer_id, cmd.items, cmd.occurred_at, cmd.command_id)
    events.add(
        CartUpdated(
            **events.common(),
            experience_id=cmd.experience_id,
            consumer_id=cmd.consumer_id,
            items=cmd.items,
        )
    )
    outcome: dict[str, Any] = {"status": "stored", "items": len(cmd.items)}
    admission = uow.current_admission(cmd.experience_id, cmd.consumer_id)
    if admission is None or admission.status != "active":
        return Applied(outcome, events.items)

    settings = uow.admission_settings(admission.grant_digest) or defaults
    current = uow.active_holds(admission.grant_digest)
    changes = plan_cart_change(
        admission.grant_digest, str(cmd.command_id), current, cmd.items, settings.strategy
    )
    increases = {(c.product_id, c.variant_id): c.delta for c in changes if c.delta > 0}
    results = holds.take(uow, cmd.experience_id, settings, increases, is_all_or_nothing(settings))
    applied = [c for c in changes if results.get((c.product_id, c.variant_id)) is None]
    for change in applied:
        if change.delta < 0:
            holds.give_back(
                uow,
                cmd.experience_id,
                settings,
                (change.product_id, change.variant_id),
                -change.delta,
            )
    replaced = [c.old.reservation_id for c in applied if c.old is not None]
    uow.release_replaced_holds(replaced, "cart_changed", cmd.occurred_at)
    for change in applied:
        if change.old is not None:
            old = change.old
            events.hold_ended(
                kind="reservation.released",
                experience_id=cmd.experience_id,
                consumer_id=cmd.consumer_id,
                grant=admission.grant_digest,
                held=HeldRow(
                    old.reservation_id,
                    old.product_id,
                    old.variant_id,
                    old.quantity,
                    settings.strategy.value,
                    old.created_at,
                ),
                reason="cart_changed",
                at=cmd.occurred_at,
            )
    created = [c for c in applied if c.new_reservation_id is not None]
    uow.insert_reservations(
        holds=[
            HoldRequest(c.new_reservation_id, c.product_id, c.variant_id, c.new_quantity)
            for c in created
            if c.new_reservation_id is not None
        ],
        experience_id=cmd.experience_id,
        consumer_id=cmd.consumer_id,
        grant_digest=admission.grant_digest,
        created_at=cmd.occurred_at,
        expires_at=admission.expires_at,
        settings=settings,
    )
    for change in changes:
        common = {
            **events.common(),
            "experience_id": cmd.experience_id,
            "consumer_id": cmd.consumer_id,
            "grant_digest": admission.grant_digest,
            "product_id": change.product_id,
            "variant_id": change.variant_id or None,
        }
        reason = results.get((change.product_id, change.variant_id))
        if reason is not None:
            events.add(ReservationRejected(**common, quantity=change.new_quantity, reason=reason))
        elif change.new_reservation_id is not None:
            events.add(
                ReservationCreated(
                    **common,
                    reservation_id=change.new_reservation_id,
                    quantity=change.new_quantity,
                    strategy=settings.strategy,
                    window_seconds=settings.window_seconds,
                    buffer_seconds=settings.buffer_seconds,
                    created_at=cmd.occurred_at,
                    expires_at=admission.expires_at,
                    replaces=change.old.reservation_id if change.old else None,
                )
            )
    outcome["holdsChanged"] = len(applied)
    outcome["rejected"] = len(changes) - len(applied)
    return Applied(outcome, events.items)
