"""The replay sink writes a batch's pool usage as a delta on what earlier
batches wrote: a batch that gives back more pool units than it takes (an
operator's release, a leaving shopper) lowers a row that exists, and must
never be refused as if the delta were the row (a CHECK on the proposed
row of an upsert)."""

from __future__ import annotations

import asyncpg

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


async def test_a_batch_that_gives_back_more_than_it_takes_lowers_the_row(
    engine_db: asyncpg.Pool,
) -> None:
    key = (unique("exp"), unique("prod"), "")
    async with engine_db.acquire() as conn, conn.transaction():
        await sink.write(conn, FoldChanges(pools={key: 2}))
    async with engine_db.acquire() as conn, conn.transaction():
        await sink.write(conn, FoldChanges(pools={key: -1}))
    assert await _used(engine_db, key) == 1


async def test_a_batch_that_only_takes_creates_the_row(engine_db: asyncpg.Pool) -> None:
    key = (unique("exp"), unique("prod"), "42")
    async with engine_db.acquire() as conn, conn.transaction():
        await sink.write(conn, FoldChanges(pools={key: 3}))
    assert await _used(engine_db, key) == 3
