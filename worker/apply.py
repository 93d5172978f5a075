"""Applying one command inside the batch transaction: load the facts, ask the
domain, write the result and the events that describe it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.adapters import store
from worker.adapters.store import Conn, HeldRow
from worker.domain import ids
from worker.domain.admission import AdmissionDecision, plan_admission
from worker.domain.commands import AdmitConsumer, Command, CommandBase, PutCart, SetStock
from worker.domain.events import (
    AdmissionRecorded,
    CartUpdated,
    EventBase,
    ReservationCreated,
    ReservationEnded,
    ReservationRejected,
    StockRefused,
    StockSet,
)
from worker.domain.model import ExperienceSettings


@dataclass
class Applied:
    """What a command did: the answer recorded in the inbox, and its events."""

    outcome: dict[str, Any]
    events: list[EventBase] = field(default_factory=list)


class _Events:
    """Numbers a command's events so each id is stable across re-deliveries."""

    def __init__(self, command: CommandBase) -> None:
        self.command = command
        self.items: list[EventBase] = []

    def common(self) -> dict[str, Any]:
        return {
            "event_id": ids.event_id(self.command.command_id, len(self.items)),
            "command_id": self.command.command_id,
            "occurred_at": self.command.occurred_at,
        }

    def add(self, event: EventBase) -> None:
        self.items.append(event)


async def apply_command(conn: Conn, command: Command, defaults: ExperienceSettings) -> Applied:
    match command:
        case AdmitConsumer():
            return await _admit(conn, command, defaults)
        case PutCart():
            return await _put_cart(conn, command)
        case SetStock():
            return await _set_stock(conn, command)


async def _set_stock(conn: Conn, cmd: SetStock) -> Applied:
    events = _Events(cmd)
    variant = cmd.variant_id or ""
    refused_by = await store.set_stock(conn, cmd.product_id, variant, cmd.on_hand, cmd.occurred_at)
    if refused_by is not None:
        events.add(
            StockRefused(
                **events.common(),
                product_id=cmd.product_id,
                variant_id=cmd.variant_id,
                on_hand=cmd.on_hand,
                committed=refused_by,
            )
        )
        return Applied(
            {"status": "refused", "error": "STOCK_BELOW_COMMITTED", "committed": refused_by},
            events.items,
        )
    events.add(
        StockSet(
            **events.common(),
            product_id=cmd.product_id,
            variant_id=cmd.variant_id,
            on_hand=cmd.on_hand,
        )
    )
    return Applied({"status": "set", "onHand": cmd.on_hand}, events.items)


async def _put_cart(conn: Conn, cmd: PutCart) -> Applied:
    events = _Events(cmd)
    await store.put_cart(conn, cmd.experience_id, cmd.consumer_id, cmd.items, cmd.occurred_at)
    events.add(
        CartUpdated(
            **events.common(),
            experience_id=cmd.experience_id,
            consumer_id=cmd.consumer_id,
            items=cmd.items,
        )
    )
    return Applied({"status": "stored", "items": len(cmd.items)}, events.items)


async def _admit(conn: Conn, cmd: AdmitConsumer, defaults: ExperienceSettings) -> Applied:
    events = _Events(cmd)
    settings = await store.load_settings(conn, cmd.experience_id) or defaults
    seen = await store.grant_seen(conn, cmd.grant_digest)
    prior = None if seen else await store.latest_admission(conn, cmd.experience_id, cmd.consumer_id)
    cart = [] if seen else await store.load_cart(conn, cmd.experience_id, cmd.consumer_id)
    plan = plan_admission(cmd, settings, cart, seen, prior)

    if plan.decision is AdmissionDecision.DUPLICATE:
        return Applied({"status": "duplicate_grant"})

    status = "superseded" if plan.decision is AdmissionDecision.SUPERSEDED else "active"
    if plan.supersedes is not None:
        released = await store.end_active_reservations(
            conn, plan.supersedes, "released", "superseded", cmd.occurred_at
        )
        await store.end_admission(
            conn, plan.supersedes, "superseded", "superseded", cmd.admitted_at
        )
        for held in released:
            events.add(
                _ended(events, cmd, plan.supersedes, held, "reservation.released", "superseded")
            )

    await store.insert_admission(
        conn,
        grant=cmd.grant_digest,
        experience_id=cmd.experience_id,
        consumer_id=cmd.consumer_id,
        admitted_at=cmd.admitted_at,
        expires_at=plan.expires_at,
        status=status,
        settings=settings,
        command_id=cmd.command_id,
    )
    events.add(
        AdmissionRecorded(
            **events.common(),
            experience_id=cmd.experience_id,
            status=status,
            supersedes=plan.supersedes,
            consumer_id=cmd.consumer_id,
            grant_digest=cmd.grant_digest,
            admitted_at=cmd.admitted_at,
            expires_at=plan.expires_at,
            strategy=settings.strategy,
            window_seconds=settings.window_seconds,
            buffer_seconds=settings.buffer_seconds,
        )
    )
    if plan.decision is AdmissionDecision.SUPERSEDED:
        return Applied({"status": "superseded"}, events.items)

    taken = [
        h
        for h in plan.holds
        if await store.take_units(conn, h.product_id, h.variant_id, h.quantity)
    ]
    if plan.all_or_nothing and len(taken) < len(plan.holds):
        for h in taken:
            await store.give_back_units(conn, h.product_id, h.variant_id, h.quantity)
        taken = []
    await store.insert_reservations(
        conn,
        holds=taken,
        experience_id=cmd.experience_id,
        consumer_id=cmd.consumer_id,
        grant=cmd.grant_digest,
        created_at=cmd.admitted_at,
        expires_at=plan.expires_at,
        settings=settings,
    )
    taken_ids = {h.reservation_id for h in taken}
    for h in plan.holds:
        variant = h.variant_id or None
        if h.reservation_id in taken_ids:
            events.add(
                ReservationCreated(
                    **events.common(),
                    experience_id=cmd.experience_id,
                    reservation_id=h.reservation_id,
                    consumer_id=cmd.consumer_id,
                    grant_digest=cmd.grant_digest,
                    product_id=h.product_id,
                    variant_id=variant,
                    quantity=h.quantity,
                    strategy=settings.strategy,
                    expires_at=plan.expires_at,
                )
            )
        else:
            events.add(
                ReservationRejected(
                    **events.common(),
                    experience_id=cmd.experience_id,
                    consumer_id=cmd.consumer_id,
                    grant_digest=cmd.grant_digest,
                    product_id=h.product_id,
                    variant_id=variant,
                    quantity=h.quantity,
                    reason="CART_ALL_OR_NOTHING" if plan.all_or_nothing else "INSUFFICIENT_STOCK",
                )
            )
    return Applied(
        {
            "status": "admitted",
            "held": len(taken),
            "rejected": len(plan.holds) - len(taken),
            "expiresAt": plan.expires_at.isoformat(),
        },
        events.items,
    )


def _ended(
    events: _Events, cmd: AdmitConsumer, grant: str, held: HeldRow, kind: str, reason: str
) -> ReservationEnded:
    return ReservationEnded(
        **events.common(),
        type=kind,
        experience_id=cmd.experience_id,
        reservation_id=held.reservation_id,
        consumer_id=cmd.consumer_id,
        grant_digest=grant,
        product_id=held.product_id,
        variant_id=held.variant_id or None,
        quantity=held.quantity,
        reason=reason,
    )
