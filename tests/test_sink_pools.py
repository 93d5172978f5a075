"""The replay sink writes a batch's pool usage as a delta on what earlier
batches wrote: a batch that gives back more pool units than it takes (an
operator's release, a leaving shopper) lowers a row that exists, and must
never be refused as if the delta were the row (a CHECK on the proposed
row of an upsert)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio

from tests.helpers import unique
from worker.replay import sink
from worker.replay.fold_changes import FoldChanges


async def _used(pool: asyncpg.Pool, key: tuple[str, str, str]) -> int | None:
    value = await pool.fetchval(
        """SELECT used FROM experience_pools
           WHERE experience_id = $1 AND product_id = $2 AND variant_id = $3""",
        *key,
    )
    return None if value is None else int(value)


@pytest_asyncio.fixture(loop_scope="session")
async def product(engine_db: asyncpg.Pool) -> AsyncIterator[tuple[str, str]]:
    """An experience and product of the test's own; their pool rows, which
    no hold backs, are gone after it, so the engine tests sharing the
    database still find every pool equal to its holds."""
    exp, prod = unique("exp"), unique("prod")
    yield exp, prod
    await engine_db.execute(
        "DELETE FROM experience_pools WHERE experience_id = $1 AND product_id = $2", exp, prod
    )


async def test_a_batch_that_gives_back_more_than_it_takes_lowers_the_row(
    engine_db: asyncpg.Pool, product: tuple[str, str]
) -> None:
    key = (*product, "")
    async with engine_db.acquire() as conn, conn.transaction():
        await sink.write(conn, FoldChanges(pools={key: 2}))
    async with engine_db.acquire() as conn, conn.transaction():
        await sink.write(conn, FoldChanges(pools={key: -1}))
    assert await _used(engine_db, key) == 1


async def test_a_batch_that_only_takes_creates_the_row(
    engine_db: asyncpg.Pool, product: tuple[str, str]
) -> None:
    key = (*product, "42")
    async with engine_db.acquire() as conn, conn.transaction():
        await sink.write(conn, FoldChanges(pools={key: 3}))
    assert await _used(engine_db, key) == 3
