"""Applying a checkout completion: the admission's active holds become a sale,
exactly once per order id, from the checkout API or Fanfare's completion
events, whichever comes first."""

from __future__ import annotations

from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.checkout import check_checkout
from worker.domain.commands import CompleteCheckout
from worker.domain.events import AdmissionEnded, CheckoutRejected
from worker.engine.base import Applied, Events
from worker.logs import get_logger

log = get_logger("worker.engine")


def _reject(events: Events, cmd: CompleteCheckout, code: str, status: int, message: str) -> Applied:
    events.add(
        CheckoutRejected(
            **events.common(),
            experience_id=cmd.experience_id,
            consumer_id=cmd.consumer_id,
            grant_digest=cmd.grant_digest,
            order_id=cmd.order_id,
            error=code,
            message=message,
        )
    )
    return Applied(
        {"status": "rejected", "error": code, "httpStatus": status, "message": message},
        events.items,
    )


def complete_checkout(uow: UnitOfWork, cmd: CompleteCheckout) -> Applied:
    events = Events(cmd)
    if cmd.grant_digest is not None:
        admission = uow.admission_state(cmd.grant_digest)
    else:
        admission = uow.current_admission(cmd.experience_id, cmd.consumer_id)

    if admission is not None and admission.status == "converted":
        order = uow.admission_order(admission.grant_digest)
        if order == cmd.order_id:
            return Applied({"status": "converted", "orderId": order, "duplicate": True})
        log.warning(
            "checkout_order_conflict",
            command_id=str(cmd.command_id),
            grant_digest=admission.grant_digest,
            converted_order_id=order,
            order_id=cmd.order_id,
        )
        return _reject(
            events, cmd, "ORDER_CONFLICT", 409, f"holds were already converted by order {order}"
        )

    holds = uow.consumer_holds(cmd.experience_id, cmd.consumer_id)
    if admission is not None and cmd.grant_digest is None:
        # Fanfare's completion carries no grant: judge this admission's holds.
        holds = [h for h in holds if h.grant_digest == admission.grant_digest]
    error = check_checkout(holds, cmd.grant_digest, cmd.items or [], cmd.occurred_at)
    if error is not None:
        return _reject(events, cmd, error.code, error.status, error.message)
    if admission is None or admission.status != "active":
        return _reject(events, cmd, "RESERVATION_MISSING", 400, "No active reservation")

    converted = uow.convert_active_reservations(
        admission.grant_digest, cmd.order_id, cmd.occurred_at
    )
    uow.close_admission(
        admission.grant_digest, "converted", "checkout", cmd.occurred_at, cmd.order_id
    )
    for held in converted:
        events.hold_ended(
            kind="reservation.converted",
            experience_id=cmd.experience_id,
            consumer_id=cmd.consumer_id,
            grant=admission.grant_digest,
            held=held,
            reason="checkout",
            at=cmd.occurred_at,
            order_id=cmd.order_id,
        )
    events.add(
        AdmissionEnded(
            **events.common(),
            experience_id=cmd.experience_id,
            consumer_id=cmd.consumer_id,
            grant_digest=admission.grant_digest,
            status="converted",
            reason="checkout",
            ended_at=cmd.occurred_at,
            order_id=cmd.order_id,
        )
    )
    return Applied(
        {
            "status": "converted",
            "orderId": cmd.order_id,
            "reservations": [str(h.reservation_id) for h in converted],
        },
        events.items,
    )
