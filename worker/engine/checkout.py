"""Applying a checkout completion: the admission's holds become a sale,
exactly once per order id, from the checkout API or Fanfare's completion
events, whichever comes first. The API's complete is checked against the
holds as they stand and sells the lines it names (worker.engine.order)
unless the experience converts all; Fanfare's names no lines, so it sells
the cart and is decided by when it happened (worker.engine.sale)."""

from __future__ import annotations

from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.checkout import MissingLine, check_checkout
from worker.domain.commands import CompleteCheckout
from worker.domain.endings import CHECKOUT_REASON, AdmissionStatus, Fact, Verdict, owner_of
from worker.domain.model import ExperienceSettings, OnComplete
from worker.engine.base import Applied
from worker.engine.events import Events
from worker.engine.order import Order, sell_order
from worker.engine.settle import close, keep, settle
from worker.logs import get_logger

log = get_logger("worker.engine")


def _reject(
    events: Events,
    cmd: CompleteCheckout,
    code: str,
    message: str,
    missing: tuple[MissingLine, ...] = (),
) -> Applied:
    events.checkout_rejected(cmd, code, message)
    detail = {"missing": [line.wire() for line in missing]} if missing else {}
    return Applied.refused(code, message, events.items, **detail)


def complete_checkout(
    uow: UnitOfWork, cmd: CompleteCheckout, defaults: ExperienceSettings
) -> Applied:
    if cmd.items is None:
        return _completed_at_fanfare(uow, cmd, defaults)
    return _checkout(uow, cmd, defaults)


def _conflict(uow: UnitOfWork, events: Events, cmd: CompleteCheckout, grant_digest: str) -> Applied:
    order = uow.admission_order(grant_digest)
    if order == cmd.order_id:
        return Applied({"status": "converted", "orderId": order, "duplicate": True})
    return _reject_conflict(events, cmd, grant_digest, order)


def _reject_conflict(
    events: Events, cmd: CompleteCheckout, grant_digest: str, order: str | None
) -> Applied:
    _warn_order("checkout_order_conflict", cmd, grant_digest, converted_order_id=order)
    return _reject(events, cmd, "ORDER_CONFLICT", f"holds were already converted by order {order}")


def _completed_at_fanfare(
    uow: UnitOfWork, cmd: CompleteCheckout, defaults: ExperienceSettings
) -> Applied:
    """Fanfare's completion or order event: the order happened, so it converts
    the admission it belongs to by time whatever arrived before it, an ended
    one included (worker.domain.endings)."""
    events = Events(cmd)
    pair = (cmd.experience_id, cmd.consumer_id)
    fact = _sale(cmd)
    visit = owner_of(fact, uow.visits(*pair))
    # Kept always: a sale that happened earlier, or an ending that arrives
    # late, may decide the admission's sale again (worker.domain.endings).
    keep(uow, events, *pair, fact)
    if visit is None:
        return Applied({"status": "remembered", "orderId": cmd.order_id}, events.items)
    before = uow.standing(visit.grant_digest)
    settled = settle(uow, events, *pair, defaults, new=fact)
    now = settled.verdicts[visit.grant_digest]
    if now.order_id != cmd.order_id:
        return _reject_conflict(events, cmd, visit.grant_digest, now.order_id)
    if before.order_id is not None and before.order_id != now.order_id:
        _warn_order(
            "checkout_order_replaced", cmd, visit.grant_digest, replaced_order_id=before.order_id
        )
    if visit.grant_digest not in settled.changed:
        return Applied(
            {"status": "converted", "orderId": cmd.order_id, "duplicate": True}, events.items
        )
    outcome = {"status": now.status.value, "orderId": cmd.order_id}
    converted = {"holdsConverted": settled.holds, "unfilled": settled.unfilled}
    return Applied({**outcome, **converted}, events.items)


def _sale(cmd: CompleteCheckout) -> Fact:
    """Fanfare's completion as the fact it reports: a sale at its time."""
    return Fact(
        cmd.command_id,
        cmd.grant_digest,
        AdmissionStatus.CONVERTED,
        CHECKOUT_REASON,
        cmd.occurred_at,
        cmd.order_id,
    )


def _warn_order(
    event: str, cmd: CompleteCheckout, grant_digest: str, **other_order: str | None
) -> None:
    """A completion whose order is not the admission's order as it stood."""
    log.warning(
        event,
        command_id=str(cmd.command_id),
        grant_digest=grant_digest,
        **other_order,
        order_id=cmd.order_id,
    )


def _checkout(uow: UnitOfWork, cmd: CompleteCheckout, defaults: ExperienceSettings) -> Applied:
    """The checkout API's complete: the guide's checks against the holds as
    they stand, then the order is sold: its lines (onComplete
    convert_ordered), or every active hold of the admission (convert_all)."""
    events = Events(cmd)
    if cmd.grant_digest is not None:
        admission = uow.admission_state(cmd.grant_digest)
    else:
        admission = uow.current_admission(cmd.experience_id, cmd.consumer_id)

    if admission is not None and admission.status == AdmissionStatus.CONVERTED:
        return _conflict(uow, events, cmd, admission.grant_digest)

    holds = uow.consumer_holds(cmd.experience_id, cmd.consumer_id)
    error = check_checkout(holds, cmd.grant_digest, cmd.items or [], cmd.occurred_at)
    if error is not None:
        return _reject(events, cmd, error.code, error.message, error.missing)
    if admission is None or admission.status != AdmissionStatus.ACTIVE:
        return _reject(events, cmd, "RESERVATION_MISSING", "No active reservation")

    verdict = Verdict(AdmissionStatus.CONVERTED, CHECKOUT_REASON, cmd.occurred_at, cmd.order_id)
    pair, grant_digest = (cmd.experience_id, cmd.consumer_id), admission.grant_digest
    settings = uow.admission_settings(grant_digest) or defaults
    if settings.on_complete is OnComplete.CONVERT_ALL:
        order = Order(converted=close(uow, events, pair, grant_digest, verdict))
    else:
        order = sell_order(uow, events, pair, grant_digest, verdict, cmd.items or [], settings)
    return Applied(
        {
            "status": "converted",
            "orderId": cmd.order_id,
            "reservations": [str(h.reservation_id) for h in order.converted],
            "released": [str(h.reservation_id) for h in order.released],
        },
        events.items,
    )
