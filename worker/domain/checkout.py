"""Checkout checks, shared by the API's validate (a read) and the consumer's
complete (a write), in the guide's order: ADMISSION_MISMATCH, then
RESERVATION_EXPIRED, then per line RESERVATION_MISSING and
RESERVATION_INSUFFICIENT. Every line that fails is listed (the guide's
`missing`); the first one names the refusal. Then what an order that
passed sells of each hold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from worker.domain.model import CartLine, HeldUnits, ReservationStatus, sum_lines
from worker.domain.stock import StockKey

# Why an active hold the order left out went back (onComplete convert_ordered).
NOT_ORDERED = "not_ordered"


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
class MissingLine:
    """A stock row the checkout asks for more of than the admission holds."""

    product_id: str
    variant_id: str  # '' for no variant
    requested: int
    held: int

    @property
    def code(self) -> str:
        return "RESERVATION_INSUFFICIENT" if self.held else "RESERVATION_MISSING"

    @property
    def message(self) -> str:
        if self.held:
            return f"Reservation only covers {self.held} units"
        return f"No reservation for {self.product_id}"

    def wire(self) -> dict[str, Any]:
        """As the API answers it and an outcome records it: `variantId` only
        for a product with variants (the API's error bodies omit nulls)."""
        variant = {"variantId": self.variant_id} if self.variant_id else {}
        return {
            "productId": self.product_id,
            **variant,
            "requested": self.requested,
            "held": self.held,
            "error": self.code,
        }


@dataclass(frozen=True)
class CheckoutError:
    code: str
    message: str
    missing: tuple[MissingLine, ...] = ()


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
    missing = short_lines(active, items)
    if missing:
        return CheckoutError(missing[0].code, missing[0].message, tuple(missing))
    return None


def short_lines(active: list[Hold], items: list[CartLine]) -> list[MissingLine]:
    """Every stock row of `items` the active holds do not cover, in the
    items' order (two lines on one row are checked together)."""
    held: dict[StockKey, int] = {}
    for h in active:
        held[(h.product_id, h.variant_id)] = held.get((h.product_id, h.variant_id), 0) + h.quantity
    return [
        MissingLine(product, variant, wanted, held.get((product, variant), 0))
        for (product, variant), wanted in sum_lines(items).items()
        if held.get((product, variant), 0) < wanted
    ]


def ordered_units(holds: Sequence[HeldUnits], items: list[CartLine]) -> list[int]:
    """How many units of each hold, in the order given, an order that passed
    the checks sells: all of it, none (it goes back), or part (what is left
    of its row's ordered quantity once the holds before it were taken)."""
    left = sum_lines(items)
    sold = []
    for h in holds:
        key = (h.product_id, h.variant_id)
        take = min(left.get(key, 0), h.quantity)
        if take:
            left[key] -= take
        sold.append(take)
    return sold
