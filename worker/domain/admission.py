"""What an admission asks to hold, without I/O.

Whether the admission is open at all (superseded, or ended by a fact that
arrived first) is worker.domain.endings' verdict; when it is open, the engine
takes the holds `plan_holds` lists from the stock rows its batch locked
(worker.engine.holds) and records the result with its events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from worker.domain import ids
from worker.domain.model import (
    CartLine,
    ExperienceSettings,
    HeldUnits,
    MultiItemPolicy,
    Strategy,
    sum_lines,
)


@dataclass(frozen=True)
class HoldRequest:
    reservation_id: UUID
    product_id: str
    variant_id: str  # '' when the product has no variants
    quantity: int


def taken_again(grant_digest: str, revision: str, lines: Iterable[HeldUnits]) -> list[HoldRequest]:
    """The same rows and quantities as holds of a later decision (a retry, a
    reopening): ids of their own, derived from that decision's command."""
    return [
        HoldRequest(
            ids.reservation_id(grant_digest, h.product_id, h.variant_id, revision),
            h.product_id,
            h.variant_id,
            h.quantity,
        )
        for h in lines
    ]


def wanted_units(lines: list[CartLine], strategy: Strategy) -> dict[tuple[str, str], int]:
    """Units to hold per stock row. Two lines on one row are summed before
    any check; a pooled experience holds one unit per admitted consumer."""
    totals = sum_lines(lines)
    if strategy is Strategy.POOL:
        return dict.fromkeys(totals, 1)
    return totals


def is_all_or_nothing(settings: ExperienceSettings) -> bool:
    return (
        settings.strategy is Strategy.HARD
        or settings.multi_item_policy is MultiItemPolicy.ALL_OR_NOTHING
    )


def plan_holds(
    grant_digest: str, cart: list[CartLine], settings: ExperienceSettings
) -> list[HoldRequest]:
    """The holds an admission asks for: one per stock row of its cart, in
    key order, with ids derived from the grant so a re-delivery repeats them."""
    return [
        HoldRequest(
            reservation_id=ids.reservation_id(grant_digest, product, variant or None),
            product_id=product,
            variant_id=variant,
            quantity=quantity,
        )
        for (product, variant), quantity in sorted(wanted_units(cart, settings.strategy).items())
    ]
