"""Backfill: who gets the units freed on a backfill experience's stock rows.

After a command frees units on a stock row (a hold ended released or
expired; a stock set or another experience's freeing is seen with the
experience's next command on the row), the units free on it are offered to
the refused lines of admissions still active, oldest admission first
(`admittedAt`, ties by grant digest). A refused line is a line of the
admission's current cart with no active hold of that admission on its
row, so a line whose cart changed meanwhile is offered the cart's current
quantity and a line removed from the cart is offered nothing. A row whose
hold an operator released is not offered again to that admission: the
operator took it away on purpose.

An all-or-nothing cart (hard strategy, or multiItemPolicy all_or_nothing)
is offered only when every line it lacks fits at once; a pooled experience
offers one unit per product and admission, within the product's pool. A
candidate that does not fit is passed over and keeps its place for the next
freeing; the ones after it may take what it could not. Pure: the engine
gives the free units, pool usage and the candidates in line order, and
takes the offers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from worker.domain.admission import is_all_or_nothing, wanted_units
from worker.domain.endings import AdmissionStatus
from worker.domain.model import CartLine, ExperienceSettings, Strategy
from worker.domain.pools import pool_cap
from worker.domain.stock import PoolKey, StockKey

BACKFILL_REASON = "backfill"


@dataclass(frozen=True)
class Candidate:
    """An admission that may have refused lines, as the batch knows it now."""

    experience_id: str
    consumer_id: str
    grant_digest: str
    admitted_at: datetime
    expires_at: datetime
    status: AdmissionStatus
    settings: ExperienceSettings
    cart: list[CartLine]
    held: frozenset[StockKey] = frozenset()
    released_by_operator: frozenset[StockKey] = frozenset()

    def open_at(self, at: datetime) -> bool:
        """Still admitted at `at`: not left, converted or expired."""
        return self.status is AdmissionStatus.ACTIVE and at < self.expires_at

    def refused_lines(self) -> dict[StockKey, int]:
        """Units per row the cart asks for and the admission does not hold."""
        wanted = wanted_units(self.cart, self.settings.strategy)
        return {key: units for key, units in wanted.items() if key not in self.held}


@dataclass(frozen=True)
class Offer:
    """Units to hold for one admission, per stock row, in key order."""

    candidate: Candidate
    units: dict[StockKey, int]


@dataclass
class Shelf:
    """What is free while the offers are decided: units per stock row (rows
    the batch did not lock count as none) and units handed out per pool."""

    free: dict[StockKey, int]
    pool_used: dict[PoolKey, int] = field(default_factory=dict)

    def fits(self, candidate: Candidate, units: Mapping[StockKey, int]) -> bool:
        pooled = candidate.settings.strategy is Strategy.POOL
        return all(
            self.free.get(key, 0) >= n and (not pooled or self._pool_room(candidate, key) >= n)
            for key, n in units.items()
        )

    def take(self, candidate: Candidate, units: Mapping[StockKey, int]) -> None:
        for key, n in units.items():
            self.free[key] = self.free.get(key, 0) - n
            if candidate.settings.strategy is Strategy.POOL:
                pool = (candidate.experience_id, *key)
                self.pool_used[pool] = self.pool_used.get(pool, 0) + n

    def any_free(self, rows: Iterable[PoolKey]) -> bool:
        return any(self.free.get((p, v), 0) > 0 for _, p, v in rows)

    def _pool_room(self, candidate: Candidate, key: StockKey) -> int:
        used = self.pool_used.get((candidate.experience_id, *key), 0)
        return pool_cap(candidate.settings, *key) - used


def place_in_line(admitted_at: datetime, grant_digest: str) -> tuple[datetime, str]:
    """The offer order: oldest admission first, ties by grant digest."""
    return admitted_at, grant_digest


def in_line(candidates: Iterable[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=lambda c: place_in_line(c.admitted_at, c.grant_digest))


def offers(
    freed: set[PoolKey], shelf: Shelf, ordered: Iterable[Candidate], at: datetime
) -> list[Offer]:
    """The offers of the units on `shelf` to the refused lines on the freed
    rows (experience, product, variant) at `at`, to candidates given in
    line order (`place_in_line`), read only until the freed rows have no
    unit left; `shelf` is left with what remains."""
    made: list[Offer] = []
    if not shelf.any_free(freed):
        return made
    for candidate in ordered:
        if not candidate.open_at(at):
            continue
        units = _offered(candidate, freed, shelf)
        if units:
            shelf.take(candidate, units)
            made.append(Offer(candidate, units))
            if not shelf.any_free(freed):
                break
    return made


def _offered(candidate: Candidate, freed: set[PoolKey], shelf: Shelf) -> dict[StockKey, int]:
    refused = candidate.refused_lines()
    on_freed = [k for k in sorted(refused) if (candidate.experience_id, *k) in freed]
    if not on_freed:
        return {}
    if is_all_or_nothing(candidate.settings):
        # The whole cart or nothing: a row the operator took away can never
        # be part of a whole cart again.
        if refused.keys() & candidate.released_by_operator:
            return {}
        return refused if shelf.fits(candidate, refused) else {}
    units: dict[StockKey, int] = {}
    for key in on_freed:
        if key in candidate.released_by_operator:
            continue
        if shelf.fits(candidate, {key: refused[key]}):
            units[key] = refused[key]
    return units
