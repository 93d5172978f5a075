"""SQL outside the unit of work: consumed positions, the inbox check, and the
reads the API and tools share. Nothing here commits."""

from __future__ import annotations

from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from worker.domain.checkout import Hold
from worker.domain.model import ReservationStatus

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


async def consumer_holds(
    conn: Conn | asyncpg.Pool, experience_id: str, consumer_id: str
) -> list[Hold]:
    """Every reservation of a consumer in an experience, as checkout sees them."""
    rows = await conn.fetch(
        """SELECT id, admission_grant, product_id, variant_id, quantity, status, expires_at,
                  end_reason, order_id
           FROM reservations WHERE experience_id = $1 AND consumer_id = $2
           ORDER BY created_at, product_id, variant_id""",
        experience_id,
        consumer_id,
    )
    return [
        Hold(
            reservation_id=str(r["id"]),
            grant_digest=r["admission_grant"],
            product_id=r["product_id"],
            variant_id=r["variant_id"],
            quantity=r["quantity"],
            status=ReservationStatus(r["status"]),
            expires_at=r["expires_at"],
            end_reason=r["end_reason"],
            order_id=r["order_id"],
        )
        for r in rows
    ]
