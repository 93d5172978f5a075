"""Applying an admission: the holds for the consumer's cart, at most once per
grant. The decision itself is worker.domain.admission.plan_admission."""

from __future__ import annotations

from typing import Literal

from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.admission import AdmissionDecision, AdmissionPlan, plan_admission
from worker.domain.commands import AdmitConsumer
from worker.domain.events import (
    AdmissionEnded,
    AdmissionRecorded,
    ReservationCreated,
    ReservationRejected,
)
from worker.domain.model import ExperienceSettings
from worker.engine import holds
from worker.engine.base import Applied, Events


def admit(uow: UnitOfWork, cmd: AdmitConsumer, defaults: ExperienceSettings) -> Applied:
    events = Events(cmd)
    if uow.grant_seen(cmd.grant_digest):
        # The grant dedupes forever: no second set of holds, whatever the event id.
        return Applied({"status": "duplicate_grant"})
    settings = uow.load_settings(cmd.experience_id) or defaults
    prior = uow.latest_admission(cmd.experience_id, cmd.consumer_id)
    ending = uow.find_ending(cmd.grant_digest, cmd.experience_id, cmd.consumer_id, cmd.admitted_at)
    cart = uow.load_cart(cmd.experience_id, cmd.consumer_id)
    plan = plan_admission(cmd, settings, cart, False, prior, ending)

    if plan.supersedes is not None:
        _supersede(uow, events, cmd, plan.supersedes)

    status = _recorded_status(plan)
    uow.insert_admission(
        grant=cmd.grant_digest,
        experience_id=cmd.experience_id,
        consumer_id=cmd.consumer_id,
        admitted_at=cmd.admitted_at,
        expires_at=plan.expires_at,
        # An admission whose ending came first is closed right after, so
        # the ending's reason and time are recorded like any other ending.
        status="active" if plan.ending is not None else status,
        settings=settings,
        command_id=cmd.command_id,
    )
    if plan.ending is not None:
        uow.close_admission(cmd.grant_digest, status, plan.ending.reason, plan.ending.ended_at)
    events.add(
        AdmissionRecorded(
            **events.common(),
            experience_id=cmd.experience_id,
            status=status,
            supersedes=plan.supersedes,
            end_reason=plan.ending.reason if plan.ending else None,
            ended_at=plan.ending.ended_at if plan.ending else None,
            consumer_id=cmd.consumer_id,
            grant_digest=cmd.grant_digest,
            admitted_at=cmd.admitted_at,
            expires_at=plan.expires_at,
            strategy=settings.strategy,
            window_seconds=settings.window_seconds,
            buffer_seconds=settings.buffer_seconds,
        )
    )
    if plan.decision is not AdmissionDecision.HOLD:
        return Applied(
            {"status": status, "held": 0, "expiresAt": plan.expires_at.isoformat()}, events.items
        )

    wanted = {(h.product_id, h.variant_id): h.quantity for h in plan.holds}
    results = holds.take(uow, cmd.experience_id, settings, wanted, plan.all_or_nothing)
    taken = [h for h in plan.holds if results[(h.product_id, h.variant_id)] is None]
    uow.insert_reservations(
        holds=taken,
        experience_id=cmd.experience_id,
        consumer_id=cmd.consumer_id,
        grant=cmd.grant_digest,
        created_at=cmd.admitted_at,
        expires_at=plan.expires_at,
        settings=settings,
    )
    lines = []
    for h in plan.holds:
        reason = results[(h.product_id, h.variant_id)]
        lines.append(
            {
                "productId": h.product_id,
                "variantId": h.variant_id or None,
                "quantity": h.quantity,
                "held": reason is None,
                "reason": reason,
            }
        )
        common = {
            **events.common(),
            "experience_id": cmd.experience_id,
            "consumer_id": cmd.consumer_id,
            "grant_digest": cmd.grant_digest,
            "product_id": h.product_id,
            "variant_id": h.variant_id or None,
            "quantity": h.quantity,
        }
        if reason is None:
            events.add(
                ReservationCreated(
                    **common,
                    reservation_id=h.reservation_id,
                    strategy=settings.strategy,
                    window_seconds=settings.window_seconds,
                    buffer_seconds=settings.buffer_seconds,
                    created_at=cmd.admitted_at,
                    expires_at=plan.expires_at,
                )
            )
        else:
            events.add(ReservationRejected(**common, reason=reason))
    return Applied(
        {
            "status": "active",
            "held": len(taken),
            "rejected": len(plan.holds) - len(taken),
            "expiresAt": plan.expires_at.isoformat(),
            "lines": lines,
        },
        events.items,
    )


def _recorded_status(
    plan: AdmissionPlan,
) -> Literal["active", "superseded", "released", "expired"]:
    if plan.decision is AdmissionDecision.SUPERSEDED:
        return "superseded"
    if plan.ending is not None:
        return "expired" if plan.ending.outcome == "expired" else "released"
    return "active"


def _supersede(uow: UnitOfWork, events: Events, cmd: AdmitConsumer, old_grant: str) -> None:
    """A new grant for the same consumer and experience: the old holds go back."""
    released = uow.end_active_reservations(old_grant, "released", "superseded", cmd.admitted_at)
    uow.close_admission(old_grant, "superseded", "superseded", cmd.admitted_at)
    for held in released:
        events.hold_ended(
            kind="reservation.released",
            experience_id=cmd.experience_id,
            consumer_id=cmd.consumer_id,
            grant=old_grant,
            held=held,
            reason="superseded",
            at=cmd.admitted_at,
        )
    events.add(
        AdmissionEnded(
            **events.common(),
            experience_id=cmd.experience_id,
            consumer_id=cmd.consumer_id,
            grant_digest=old_grant,
            status="superseded",
            reason="superseded",
            ended_at=cmd.admitted_at,
        )
    )
