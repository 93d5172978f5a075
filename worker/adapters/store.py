"""SQL outside the unit of work on the consumer's and the relay's paths:
consumed positions, the inbox check, and the outbox's published position.
Nothing here commits but `outbox_horizon`; named reads are in
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


# Outbox sequences are drawn at insert, but transactions commit in any order:
# a row with a lower sequence may become visible after a higher one. Every
# transaction that writes the outbox holds this lock shared from its insert
# to its commit; the relay takes it exclusively for an instant, so when it
# has it, every sequence drawn so far is committed or rolled back, and
# everything up to the highest one can be published in order, no gap left
# behind the position.
OUTBOX_COMMIT_LOCK = 0x4F5554424F58  # "OUTBOX"


async def hold_outbox_commit(conn: Conn) -> None:
    """Inside a transaction, before its outbox insert."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", OUTBOX_COMMIT_LOCK)


async def outbox_horizon(conn: Conn) -> int:
    """The highest outbox sequence below which no transaction is in flight."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", OUTBOX_COMMIT_LOCK)
        # A statement after the lock: its snapshot sees every commit before it.
        return int(await conn.fetchval("SELECT COALESCE(max(seq), 0) FROM outbox"))


async def published_seq(conn: Conn | asyncpg.Pool) -> int:
    """The last outbox sequence on the events topic: everything at or below
    it is published."""
    return int(await conn.fetchval("SELECT published_seq FROM outbox_position"))


async def outbox_backlog(conn: Conn | asyncpg.Pool) -> int:
    """Events committed and not yet published."""
    return int(
        await conn.fetchval(
            """SELECT count(*) FROM outbox
               WHERE seq > (SELECT published_seq FROM outbox_position)"""
        )
    )
