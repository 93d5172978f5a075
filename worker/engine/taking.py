"""Taking the holds a decision asks for (an admission, a retry, a reopening)
where stock and the pool allow, by the experience's rules, with the outcome
line by line as the API answers it."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.admission import HoldRequest, is_all_or_nothing
from worker.domain.endings import AdmissionStatus
from worker.domain.stock import StockKey
from worker.engine import holds
from worker.engine.events import Events
from worker.engine.holds import HoldTerms


def hold_requests(
    uow: UnitOfWork,
    events: Events,
    terms: HoldTerms,
    requests: list[HoldRequest],
    replaces: dict[StockKey, UUID] | None = None,
) -> dict[str, Any]:
    """Take what `requests` ask for where stock (and the pool) allows, by the
    experience's rules, and record it; the outcome lists every line.
    `replaces`: per stock row, the ended hold a new one takes the place of."""
    settings = terms.settings
    wanted = {(h.product_id, h.variant_id): h.quantity for h in requests}
    refused = holds.take(uow, terms.experience_id, settings, wanted, is_all_or_nothing(settings))
    reasons = [refused[(h.product_id, h.variant_id)] for h in requests]
    taken = [h for h, reason in zip(requests, reasons, strict=True) if reason is None]
    holds.insert(uow, terms, taken)
    for h, reason in zip(requests, reasons, strict=True):
        if reason is None:
            old = (replaces or {}).get((h.product_id, h.variant_id))
            events.reservation_created(terms, h, replaces=old)
        else:
            events.rejected(terms, h, reason)
    return {
        "status": AdmissionStatus.ACTIVE.value,
        "held": len(taken),
        "rejected": len(requests) - len(taken),
        "expiresAt": terms.expires_at.isoformat(),
        "lines": [_line(h, r) for h, r in zip(requests, reasons, strict=True)],
    }


def _line(h: HoldRequest, reason: str | None) -> dict[str, Any]:
    return {
        "productId": h.product_id,
        "variantId": h.variant_id or None,
        "quantity": h.quantity,
        "held": reason is None,
        "reason": reason,
    }
