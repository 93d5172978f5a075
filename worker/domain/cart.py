"""A cart replaced while its admission is active: the holds follow it,
subject to stock. Each changed row's hold is replaced by one of the new
quantity (the old one ends as `released`, reason `cart_changed`), so a hold's
quantity never changes in place and counters move by the difference only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from worker.domain import ids
from worker.domain.admission import wanted_units
from worker.domain.model import CartLine, Strategy


@dataclass(frozen=True)
class ActiveHold:
    reservation_id: UUID
    product_id: str
    variant_id: str
    quantity: int
    created_at: datetime | None = None


@dataclass(frozen=True)
class HoldChange:
    product_id: str
    variant_id: str
    old: ActiveHold | None
    new_quantity: int
    new_reservation_id: UUID | None

    @property
    def delta(self) -> int:
        return self.new_quantity - (self.old.quantity if self.old else 0)


def plan_cart_change(
    grant_digest: str,
    revision: str,
    current: list[ActiveHold],
    lines: list[CartLine],
    strategy: Strategy,
) -> list[HoldChange]:
    """The rows whose held quantity must change, in stable (lock) order."""
    held = {(h.product_id, h.variant_id): h for h in current}
    wanted = wanted_units(lines, strategy)
    changes: list[HoldChange] = []
    for product, variant in sorted(set(held) | set(wanted)):
        old = held.get((product, variant))
        new_quantity = wanted.get((product, variant), 0)
        if old is not None and old.quantity == new_quantity:
            continue
        new_id = (
            ids.reservation_id(grant_digest, product, variant or None, revision)
            if new_quantity
            else None
        )
        changes.append(HoldChange(product, variant, old, new_quantity, new_id))
    return changes
