"""The engine's rule tests on two backends. `MemoryEngine` applies each
command to one unit of work that is never loaded (every row lives in
memory, as in tests/fold_support.py): the rules alone, no database.
`PostgresEngine` applies each command as a batch of one on a real database
(load, apply, flush, commit). Both answer the same questions about the
rows, and check after each test that the counters equal the row sums
(guarantee 2)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import asyncpg

from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import StockRow
from worker.domain import ids
from worker.domain.commands import Command, SetStock
from worker.domain.model import ExperienceSettings
from worker.engine import Coordinates, apply_batch, apply_command

DEFAULTS = ExperienceSettings()

Stock = tuple[int, int, int]


class MemoryEngine:
    backend = "memory"

    def __init__(self) -> None:
        self.uow = UnitOfWork()
        self.events: list[Any] = []

    async def __call__(self, command: Command) -> dict[str, Any]:
        if isinstance(command, SetStock):
            # What the unit of work's load does: the row exists from its first level.
            key = (command.product_id, command.variant_id or "")
            self.uow.stock.setdefault(key, StockRow(0, 0, 0))
        applied = apply_command(self.uow, command, DEFAULTS)
        self.events.extend(applied.events)
        return applied.outcome

    async def stock(self, product: str, variant: str = "") -> Stock:
        row = self.uow.stock[(product, variant)]
        return row.on_hand, row.reserved, row.sold

    async def statuses(self, experience: str, consumer: str) -> list[tuple[str, int, str]]:
        pair = (experience, consumer)
        rows = sorted(
            (r for r in self.uow.reservations.values() if (r.experience_id, r.consumer_id) == pair),
            key=lambda r: (r.product_id, r.created_at, r.status),
        )
        return [(r.product_id, r.quantity, r.status) for r in rows]

    async def admission(self, grant: str) -> tuple[str, str | None]:
        row = self.uow.admissions[ids.grant_digest(grant)]
        return row.status, row.end_reason

    async def expires_at(self, grant: str) -> datetime:
        return self.uow.admissions[ids.grant_digest(grant)].expires_at

    async def holds(self, grant: str) -> list[tuple[int, str]]:
        digest = ids.grant_digest(grant)
        rows = [r for r in self.uow.reservations.values() if r.grant_digest == digest]
        return [(r.quantity, r.status) for r in sorted(rows, key=lambda r: r.status)]

    async def assert_counters_match_rows(self) -> None:
        held: Counter[tuple[str, str, str]] = Counter()
        for r in self.uow.reservations.values():
            held[(r.status, r.product_id, r.variant_id)] += r.quantity
        drift = {
            key: (row.reserved, row.sold, held[("active", *key)], held[("converted", *key)])
            for key, row in self.uow.stock.items()
            if (row.reserved, row.sold) != (held[("active", *key)], held[("converted", *key)])
        }
        assert drift == {}, "stock (reserved, sold) against (Σ active, Σ converted)"
        in_pools: Counter[tuple[str, str, str]] = Counter()
        for r in self.uow.reservations.values():
            if r.status in ("active", "converted"):
                in_pools[(r.experience_id, r.product_id, r.variant_id)] += r.quantity
        pools = {
            k: (p.used, in_pools[k]) for k, p in self.uow.pools.items() if p.used != in_pools[k]
        }
        assert pools == {}, "pool used against Σ active and converted"


class PostgresEngine:
    backend = "postgresql"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.events: list[Any] = []

    async def __call__(self, command: Command) -> dict[str, Any]:
        """One command as a batch of one: load, apply, flush, commit."""
        async with self.pool.acquire() as conn, conn.transaction():
            [applied] = await apply_batch(conn, [(command, Coordinates("test", 0, 0))], DEFAULTS)
        self.events.extend(applied.events)
        return applied.outcome

    async def stock(self, product: str, variant: str = "") -> Stock:
        row = await self.pool.fetchrow(
            "SELECT on_hand, reserved, sold FROM stock WHERE product_id=$1 AND variant_id=$2",
            product,
            variant,
        )
        assert row is not None
        return row["on_hand"], row["reserved"], row["sold"]

    async def statuses(self, experience: str, consumer: str) -> list[tuple[str, int, str]]:
        rows = await self.pool.fetch(
            """SELECT product_id, quantity, status FROM reservations
               WHERE experience_id=$1 AND consumer_id=$2 ORDER BY product_id, created_at, status""",
            experience,
            consumer,
        )
        return [(r["product_id"], r["quantity"], r["status"]) for r in rows]

    async def admission(self, grant: str) -> tuple[str, str | None]:
        row = await self.pool.fetchrow(
            "SELECT status, end_reason FROM admissions WHERE admission_grant = $1",
            ids.grant_digest(grant),
        )
        assert row is not None
        return row["status"], row["end_reason"]

    async def expires_at(self, grant: str) -> datetime:
        at = await self.pool.fetchval(
            "SELECT expires_at FROM admissions WHERE admission_grant = $1",
            ids.grant_digest(grant),
        )
        assert isinstance(at, datetime)
        return at

    async def holds(self, grant: str) -> list[tuple[int, str]]:
        rows = await self.pool.fetch(
            """SELECT quantity, status FROM reservations WHERE admission_grant = $1
               ORDER BY status""",
            ids.grant_digest(grant),
        )
        return [(r["quantity"], r["status"]) for r in rows]

    async def assert_counters_match_rows(self) -> None:
        await assert_counters_match_rows(self.pool)


Engine = MemoryEngine | PostgresEngine


async def assert_counters_match_rows(pool: asyncpg.Pool) -> None:
    """In a database: stock reserved = Σ active, sold = Σ converted, and each
    pool's used = Σ active and converted of its experience and product; sold
    holds retention pruned count in both through sales_retired."""
    drift = await pool.fetch(
        """WITH held AS (
               SELECT product_id, variant_id,
                      sum(quantity) FILTER (WHERE status = 'active') AS active,
                      sum(quantity) FILTER (WHERE status = 'converted') AS converted
               FROM reservations GROUP BY 1, 2),
           retired AS (
               SELECT product_id, variant_id, sum(quantity) AS quantity
               FROM sales_retired GROUP BY 1, 2)
           SELECT s.product_id, s.variant_id, s.reserved, s.sold, h.active, h.converted,
                  r.quantity AS retired
           FROM stock s LEFT JOIN held h USING (product_id, variant_id)
                LEFT JOIN retired r USING (product_id, variant_id)
           WHERE s.reserved <> COALESCE(h.active, 0)
              OR s.sold <> COALESCE(h.converted, 0) + COALESCE(r.quantity, 0)"""
    )
    assert [dict(r) for r in drift] == []
    pools = await pool.fetch(
        """SELECT p.experience_id, p.product_id, p.variant_id, p.used, h.held, r.quantity
           FROM experience_pools p
           LEFT JOIN (SELECT experience_id, product_id, variant_id, sum(quantity) AS held
                      FROM reservations WHERE status IN ('active', 'converted')
                      GROUP BY 1, 2, 3) h USING (experience_id, product_id, variant_id)
           LEFT JOIN sales_retired r USING (experience_id, product_id, variant_id)
           WHERE p.used <> COALESCE(h.held, 0) + COALESCE(r.quantity, 0)"""
    )
    assert [dict(r) for r in pools] == []
