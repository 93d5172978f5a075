"""An experience's pools, one per product: the size each product's pool has
under a configuration, what a pool shows (size, used, left), and the rule
that a configuration may not shrink a pool below the units it has handed
out (the pool's counterpart of STOCK_BELOW_COMMITTED). Pure: the callers
load the usage and act on the answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from worker.domain.model import ExperienceSettings, Strategy
from worker.domain.stock import StockKey


def pool_cap(settings: ExperienceSettings, product_id: str, variant_id: str) -> int:
    """The units of one product a pool experience may hand out: its own pool
    if listed, else poolSize; 0 (nothing held) when neither applies."""
    return settings.pool_size_of(product_id, variant_id) or 0


@dataclass(frozen=True, slots=True)
class PoolState:
    """One product's pool as an experience shows it."""

    product_id: str
    variant_id: str  # '' when the product has no variants
    size: int
    used: int

    @property
    def left(self) -> int:
        # A sale is counted past the cap (the order happened), so used may
        # exceed size; nothing is left then.
        return max(0, self.size - self.used)


def pool_states(settings: ExperienceSettings, used: Mapping[StockKey, int]) -> list[PoolState]:
    """Every listed pool, and every product that has handed out units under
    the default size (poolSize), in key order."""
    keys = {(p.product_id, p.variant_column) for p in settings.pools} | set(used)
    return [
        PoolState(key[0], key[1], pool_cap(settings, *key), used.get(key, 0))
        for key in sorted(keys)
    ]


@dataclass(frozen=True, slots=True)
class PoolBelowUsed:
    """A configuration refused: it shrinks a pool below the units it has
    handed out (held or sold)."""

    product_id: str
    variant_id: str
    size: int
    used: int
    code: ClassVar[str] = "POOL_BELOW_USED"


def _cap_if_pooled(settings: ExperienceSettings | None, key: StockKey) -> int | None:
    """None: the settings cap nothing (no configuration, or not the pool strategy)."""
    if settings is None or settings.strategy is not Strategy.POOL:
        return None
    return pool_cap(settings, *key)


def pool_below_used(
    earlier: ExperienceSettings | None,
    settings: ExperienceSettings,
    used: Mapping[StockKey, int],
) -> PoolBelowUsed | None:
    """The first pool, in key order, that `settings` would shrink below its
    usage; None when every pool may change as asked. A pool already past its
    size (sales count past the cap) may keep that size; it may not shrink
    further. Settings that are not the pool strategy cap nothing, so they
    are never refused."""
    for key in sorted(used):
        size = _cap_if_pooled(settings, key)
        if size is None or size >= used[key]:
            continue
        before = _cap_if_pooled(earlier, key)
        if before is None or size < before:
            return PoolBelowUsed(key[0], key[1], size, used[key])
    return None
