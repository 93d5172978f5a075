"""Stock arithmetic: how a stock row's counters and an experience's pool
usage may move. No oversell: units are held or sold only while free
(`on_hand - reserved - sold`), and on_hand never drops below what is
already committed (reserved + sold). Pure: the callers load and write."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

# A stock row: (product_id, variant_id), variant '' for none.
StockKey = tuple[str, str]
# A pool row: (experience_id, product_id, variant_id).
PoolKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class BelowCommitted:
    """A new on_hand refused: the units already reserved or sold exceed it."""

    committed: int
    code: ClassVar[str] = "STOCK_BELOW_COMMITTED"


@dataclass(slots=True)
class StockLevel:
    """One stock row's counters. Every method keeps
    `reserved + sold <= on_hand` true if it was."""

    on_hand: int
    reserved: int = 0
    sold: int = 0

    @property
    def free(self) -> int:
        """Units neither held nor sold."""
        return self.on_hand - self.reserved - self.sold

    def take(self, quantity: int) -> bool:
        """Hold `quantity` units if they are free; False leaves it unchanged."""
        if self.free < quantity:
            return False
        self.reserved += quantity
        return True

    def give_back(self, quantity: int) -> None:
        """Held units that ended: free again."""
        self.reserved -= quantity

    def sell(self, quantity: int) -> None:
        """Held units sold."""
        self.reserved -= quantity
        self.sold += quantity

    def sell_free(self, quantity: int) -> bool:
        """Sell units nobody holds (a late conversion) if they are free."""
        if self.free < quantity:
            return False
        self.sold += quantity
        return True

    def unsell(self, quantity: int) -> None:
        """A sale taken back: its units go back to the shelf."""
        self.sold -= quantity

    def set_on_hand(self, on_hand: int) -> BelowCommitted | None:
        """Set on_hand, or refuse (nothing changes) if it would fall below
        the committed units: the holds stand until released or sold."""
        committed = self.reserved + self.sold
        if committed > on_hand:
            return BelowCommitted(committed)
        self.on_hand = on_hand
        return None


@dataclass(slots=True)
class PoolUsage:
    """Units of one stock row an experience's pool has handed out."""

    used: int = 0

    def take(self, quantity: int, size: int) -> bool:
        """Count `quantity` more units unless that passes the pool's size."""
        if self.used + quantity > size:
            return False
        self.used += quantity
        return True

    def count_sale(self, quantity: int) -> None:
        """A sale's units, counted past the cap: the order happened."""
        self.used += quantity

    def give_back(self, quantity: int) -> None:
        self.used -= quantity
