"""Domain vocabulary: product references, cart lines, experience settings,
reservation states."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Protocol

from pydantic import Field, StringConstraints, model_validator

from worker.domain.base import WireModel
from worker.domain.stock import StockKey

# Ids from Fanfare and merchants: printable, bounded, no control characters.
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
]
Quantity = Annotated[int, Field(ge=1, le=10_000)]


class ReservationStatus(StrEnum):
    ACTIVE = "active"
    CONVERTED = "converted"
    RELEASED = "released"
    EXPIRED = "expired"


class Strategy(StrEnum):
    SOFT = "soft"
    HARD = "hard"
    POOL = "pool"


class MultiItemPolicy(StrEnum):
    PARTIAL = "partial"  # hold each line that has stock
    ALL_OR_NOTHING = "all_or_nothing"


def check_pool_size(strategy: Strategy, pool_size: int | None, pools: Sequence[object]) -> None:
    """The pool strategy caps units per product, so it needs a cap: poolSize
    for every product, or pools for the products listed (the others then
    have no pool and hold nothing)."""
    if strategy is Strategy.POOL and pool_size is None and not pools:
        raise ValueError("poolSize or pools is required for the pool strategy")


# check_pool_size as JSON Schema, for the schemas of the messages and bodies
# it checks: with strategy pool, a poolSize (not null) or a non-empty pools.
POOL_SIZE_RULE: dict[str, Any] = {
    "if": {"properties": {"strategy": {"const": Strategy.POOL.value}}, "required": ["strategy"]},
    "then": {
        "anyOf": [
            {"properties": {"poolSize": {"type": "integer"}}, "required": ["poolSize"]},
            {"properties": {"pools": {"minItems": 1}}, "required": ["pools"]},
        ]
    },
}


class ProductRef(WireModel):
    """A product, and its variant if it has them, as the wire names it."""

    product_id: Identifier
    variant_id: Identifier | None = None

    @property
    def variant_column(self) -> str:
        # Stored as '' so (product_id, variant_id) can be a primary key.
        return self.variant_id or ""


class CartLine(ProductRef):
    quantity: Quantity


class HeldUnits(Protocol):
    """Units held on a stock row, as an order or a later decision sees them:
    a hold, or a hold about to be taken."""

    @property
    def product_id(self) -> str: ...

    @property
    def variant_id(self) -> str: ...

    @property
    def quantity(self) -> int: ...


class OnComplete(StrEnum):
    """What a checkout completion that names its lines converts."""

    CONVERT_ORDERED = "convert_ordered"  # the ordered quantities; the rest goes back
    CONVERT_ALL = "convert_all"  # every active hold of the admission


class ProductPool(ProductRef):
    """A pool's size for one product of a pool experience."""

    size: int = Field(ge=0, le=1_000_000_000)


class ExperienceSettings(WireModel):
    """How an experience holds stock. Every field has a default, so a message
    written before a setting existed still reads; the experiences table has
    one column per field (worker.adapters.rows.EXPERIENCE_SETTINGS)."""

    strategy: Strategy = Strategy.SOFT
    window_seconds: int = Field(default=600, ge=1, le=86_400)
    buffer_seconds: int = Field(default=60, ge=0, le=86_400)
    pool_size: int | None = Field(default=None, ge=0, le=1_000_000_000)
    multi_item_policy: MultiItemPolicy = MultiItemPolicy.PARTIAL
    extension_seconds: int = Field(default=0, ge=0, le=86_400)
    max_extensions: int = Field(default=0, ge=0, le=100)
    retry_window_seconds: int = Field(default=0, ge=0, le=86_400)
    on_complete: OnComplete = OnComplete.CONVERT_ORDERED
    pools: tuple[ProductPool, ...] = ()
    # Units freed later go to the refused lines of still-active admissions,
    # in admission order (worker.domain.backfill).
    backfill: bool = False

    @model_validator(mode="after")
    def _one_pool_per_product(self) -> ExperienceSettings:
        keys = [(p.product_id, p.variant_column) for p in self.pools]
        if len(keys) != len(set(keys)):
            raise ValueError("pools lists a product (and variant) more than once")
        return self

    def expires_at(self, admitted_at: datetime) -> datetime:
        return admitted_at + timedelta(seconds=self.window_seconds + self.buffer_seconds)

    def settings(self) -> ExperienceSettings:
        """Only the settings, of a message that carries them among other fields."""
        return ExperienceSettings.model_validate(
            self.model_dump(include=set(ExperienceSettings.model_fields))
        )

    def pool_size_of(self, product_id: str, variant_id: str) -> int | None:
        """The pool size of one product: its own pool if listed, else poolSize."""
        for pool in self.pools:
            if pool.product_id == product_id and pool.variant_column == variant_id:
                return pool.size
        return self.pool_size


def sum_lines(lines: list[CartLine]) -> dict[StockKey, int]:
    """Quantities per stock row: two lines on one row are checked together."""
    totals: dict[tuple[str, str], int] = {}
    for line in lines:
        key = (line.product_id, line.variant_column)
        totals[key] = totals.get(key, 0) + line.quantity
    return totals
