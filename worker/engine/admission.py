"""Applying an admission: the holds for the consumer's cart, at most once per
grant. Whether it is open is worker.domain.endings' verdict (an earlier
admission it supersedes, or an ending or completion that arrived first);
what it holds is worker.domain.admission.plan_holds."""

from __future__ import annotations

from datetime import datetime

from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.admission import is_all_or_nothing, plan_holds
from worker.domain.commands import AdmitConsumer
from worker.domain.endings import AdmissionStatus, Verdict
from worker.domain.events import AdmissionRecorded, ReservationCreated, ReservationRejected
from worker.domain.model import ExperienceSettings
from worker.engine import holds
from worker.engine.base import Applied, Events
from worker.engine.sale import sell
from worker.engine.settle import CONVERTED, close, settle


def admit(uow: UnitOfWork, cmd: AdmitConsumer, defaults: ExperienceSettings) -> Applied:
    events = Events(cmd)
    if uow.grant_seen(cmd.grant_digest):
        # The grant dedupes forever: no second set of holds, whatever the event id.
        return Applied({"status": "duplicate_grant"})
    settings = uow.load_settings(cmd.experience_id) or defaults
    expires_at = settings.expires_at(cmd.admitted_at)
    uow.insert_admission(
        grant_digest=cmd.grant_digest,
        experience_id=cmd.experience_id,
        consumer_id=cmd.consumer_id,
        admitted_at=cmd.admitted_at,
        expires_at=expires_at,
        status="active",
        settings=settings,
        command_id=cmd.command_id,
    )
    # Earlier admissions of the consumer end or change hands first.
    settled = settle(
        uow, events, cmd.experience_id, cmd.consumer_id, defaults, skip=cmd.grant_digest
    )
    verdict = settled.verdicts[cmd.grant_digest]
    superseded = [g for g, before in settled.changed.items() if not before.over]
    recorded = verdict.status if verdict.status is not CONVERTED else AdmissionStatus.ACTIVE
    if recorded is not AdmissionStatus.ACTIVE:
        # Superseded already, or its ending came first: recorded ended, no holds.
        uow.close_admission(cmd.grant_digest, recorded.value, verdict.reason or "", _at(verdict))
    events.add(
        AdmissionRecorded(
            **events.common(),
            experience_id=cmd.experience_id,
            status=recorded.value,
            supersedes=superseded[0] if superseded else None,
            end_reason=verdict.reason if recorded is not AdmissionStatus.ACTIVE else None,
            ended_at=verdict.at if recorded is not AdmissionStatus.ACTIVE else None,
            consumer_id=cmd.consumer_id,
            grant_digest=cmd.grant_digest,
            admitted_at=cmd.admitted_at,
            expires_at=expires_at,
            strategy=settings.strategy,
            window_seconds=settings.window_seconds,
            buffer_seconds=settings.buffer_seconds,
        )
    )
    if recorded is not AdmissionStatus.ACTIVE:
        return Applied(
            {"status": recorded.value, "held": 0, "expiresAt": expires_at.isoformat()},
            events.items,
        )
    if verdict.status is CONVERTED:
        # Its completion arrived first: the cart of then is sold at once.
        pair = (cmd.experience_id, cmd.consumer_id)
        sold = sell(uow, events, pair, cmd.grant_digest, verdict, defaults)
        close(uow, events, pair, cmd.grant_digest, verdict)
        return Applied(
            {"status": CONVERTED.value, "orderId": verdict.order_id, "held": sold.holds},
            events.items,
        )
    return _hold(uow, events, cmd, settings, expires_at)


def _at(verdict: Verdict) -> datetime:
    assert verdict.at is not None
    return verdict.at


def _hold(
    uow: UnitOfWork,
    events: Events,
    cmd: AdmitConsumer,
    settings: ExperienceSettings,
    expires_at: datetime,
) -> Applied:
    """Try the holds of the consumer's cart."""
    requests = plan_holds(
        cmd.grant_digest, uow.load_cart(cmd.experience_id, cmd.consumer_id), settings
    )
    wanted = {(h.product_id, h.variant_id): h.quantity for h in requests}
    results = holds.take(uow, cmd.experience_id, settings, wanted, is_all_or_nothing(settings))
    taken = [h for h in requests if results[(h.product_id, h.variant_id)] is None]
    uow.insert_reservations(
        holds=taken,
        experience_id=cmd.experience_id,
        consumer_id=cmd.consumer_id,
        grant_digest=cmd.grant_digest,
        created_at=cmd.admitted_at,
        expires_at=expires_at,
        settings=settings,
    )
    lines = []
    for h in requests:
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
                    expires_at=expires_at,
                )
            )
        else:
            events.add(ReservationRejected(**common, reason=reason))
    return Applied(
        {
            "status": "active",
            "held": len(taken),
            "rejected": len(requests) - len(taken),
            "expiresAt": expires_at.isoformat(),
            "lines": lines,
        },
        events.items,
    )
