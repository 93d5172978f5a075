"""Checkout checks, shared by the API's validate (a read) and the consumer's
complete (a write), in the guide's order: ADMISSION_MISMATCH, then
RESERVATION_EXPIRED, then per line RESERVATION_MISSING and
RESERVATION_INSUFFICIENT."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from worker.domain.model import CartLine, ReservationStatus, sum_lines


@dataclass(frozen=True)
class Hold:
    """A reservation as checkout sees it."""

    reservation_id: str
    grant_digest: str
    product_id: str
    variant_id: str  # '' for no variant
    quantity: int
    status: ReservationStatus
    expires_at: datetime
    end_reason: str | None = None
    order_id: str | None = None


@dataclass(frozen=True)
class CheckoutError:
    code: str
    message: str


def check_checkout(
    holds: list[Hold],
    grant_digest: str | None,
    items: list[CartLine],
    at: datetime,
) -> CheckoutError | None:
    """`holds`: the consumer's reservations in the experience (any status).
    `grant_digest`: digest of the grant presented at checkout (None: Fanfare's
    own completion, which carries no grant). `at`: the command's own time."""
    live = [h for h in holds if h.status is ReservationStatus.ACTIVE]
    if grant_digest is not None and any(h.grant_digest != grant_digest for h in live):
        return CheckoutError(
            "ADMISSION_MISMATCH",
            "This checkout session is not associated with the active reservation.",
        )
    mine = [h for h in holds if grant_digest is None or h.grant_digest == grant_digest]
    active = [h for h in mine if h.status is ReservationStatus.ACTIVE]
    # An admission's holds expire together; one holding again (an expiry of
    # ours that an earlier extension voided) has active holds beside them.
    ended_by_time = [
        h
        for h in mine
        if (h.status is ReservationStatus.EXPIRED and not active)
        or (h.status is ReservationStatus.ACTIVE and h.expires_at <= at)
    ]
    if ended_by_time:
        return CheckoutError(
            "RESERVATION_EXPIRED", "The reservation for this admission has expired."
        )
    held: dict[tuple[str, str], int] = {}
    for h in active:
        held[(h.product_id, h.variant_id)] = held.get((h.product_id, h.variant_id), 0) + h.quantity
    for (product, variant), wanted in sum_lines(items).items():
        have = held.get((product, variant))
        if have is None:
            return CheckoutError("RESERVATION_MISSING", f"No reservation for {product}")
        if have < wanted:
            return CheckoutError(
                "RESERVATION_INSUFFICIENT", f"Reservation only covers {have} units"
            )
    return None
