"""SQL outside the unit of work on the consumer's path: consumed positions
and the inbox check. Nothing here commits; named reads are in
worker.adapters.queries."""

from __future__ import annotations

from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A bare connection or one borrowed from a pool.
Conn = asyncpg.Connection | PoolConnectionProxy


async def lock_positions(conn: Conn, topic: str, partitions: list[int]) -> dict[int, int]:
    """Lock this batch's partitions' position rows (in partition order, so two
    consumers never deadlock) and return the next offset to apply for each.
    A second owner of a partition during a rebalance waits here and then sees
    the advanced position, so it skips what the first one applied."""
    await conn.execute(
        """INSERT INTO consumer_positions (topic, partition, next_offset)
           SELECT $1, p, 0 FROM unnest($2::int[]) AS p
           ON CONFLICT DO NOTHING""",
        topic,
        partitions,
    )
    rows = await conn.fetch(
        """SELECT partition, next_offset FROM consumer_positions
           WHERE topic = $1 AND partition = ANY($2::int[])
           ORDER BY partition FOR UPDATE""",
        topic,
        partitions,
    )
    return {r["partition"]: r["next_offset"] for r in rows}


async def advance_positions(conn: Conn, topic: str, positions: dict[int, int]) -> None:
    await conn.execute(
        """UPDATE consumer_positions AS c SET next_offset = v.next_offset, updated_at = now()
           FROM unnest($2::int[], $3::bigint[]) AS v(partition, next_offset)
           WHERE c.topic = $1 AND c.partition = v.partition""",
        topic,
        list(positions.keys()),
        list(positions.values()),
    )


async def read_positions(conn: Conn | asyncpg.Pool, topic: str) -> dict[int, int]:
    rows = await conn.fetch(
        "SELECT partition, next_offset FROM consumer_positions WHERE topic = $1", topic
    )
    return {r["partition"]: r["next_offset"] for r in rows}


async def inbox_seen(conn: Conn, command_ids: list[UUID]) -> set[UUID]:
    """The ones among these command ids already applied."""
    rows = await conn.fetch(
        "SELECT command_id FROM inbox WHERE command_id = ANY($1::uuid[])", command_ids
    )
    return {r["command_id"] for r in rows}
