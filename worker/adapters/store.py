"""SQL for reservation state. Every function runs inside the caller's
transaction (one per consumed batch); none commits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from worker.domain.admission import HoldRequest, PriorAdmission, RememberedEnding
from worker.domain.cart import ActiveHold
from worker.domain.checkout import Hold
from worker.domain.endings import AdmissionState
from worker.domain.events import EventBase, encode_event
from worker.domain.model import CartLine, ExperienceSettings, ReservationStatus

# A bare connection or one borrowed from a pool.
Conn = asyncpg.Connection | PoolConnectionProxy


@dataclass(frozen=True)
class HeldRow:
    reservation_id: UUID
    product_id: str
    variant_id: str
    quantity: int
    strategy: str = "soft"


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


async def record_inbox(
    conn: Conn,
    command_id: UUID,
    command_type: str,
    outcome: dict[str, Any],
    topic: str,
    partition: int,
    offset: int,
) -> bool:
    """Record a command as applied; False if it was applied before."""
    inserted = await conn.fetchval(
        """INSERT INTO inbox (command_id, command_type, outcome, topic, partition, "offset")
           VALUES ($1, $2, $3::jsonb, $4, $5, $6)
           ON CONFLICT (command_id) DO NOTHING RETURNING true""",
        command_id,
        command_type,
        orjson.dumps(outcome).decode(),
        topic,
        partition,
        offset,
    )
    return bool(inserted)


async def inbox_has(conn: Conn, command_id: UUID) -> bool:
    return bool(await conn.fetchval("SELECT true FROM inbox WHERE command_id = $1", command_id))


async def write_outbox(conn: Conn, events: list[EventBase]) -> None:
    if not events:
        return
    await conn.executemany(
        """INSERT INTO outbox (event_id, event_type, partition_key, payload)
           VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING""",
        [(e.event_id, getattr(e, "type", ""), e.partition_key(), encode_event(e)) for e in events],
    )


# --- stock -----------------------------------------------------------------


async def set_stock(
    conn: Conn, product_id: str, variant_id: str, on_hand: int, at: datetime
) -> int | None:
    """Set on_hand unless it would fall below reserved + sold.
    Returns None when set, else the committed units that refused it."""
    await conn.execute(
        """INSERT INTO stock (product_id, variant_id, on_hand, updated_at)
           VALUES ($1, $2, 0, $3) ON CONFLICT DO NOTHING""",
        product_id,
        variant_id,
        at,
    )
    row = await conn.fetchrow(
        """UPDATE stock SET on_hand = $3, updated_at = $4
           WHERE product_id = $1 AND variant_id = $2 AND reserved + sold <= $3
           RETURNING on_hand""",
        product_id,
        variant_id,
        on_hand,
        at,
    )
    if row is not None:
        return None
    committed: int = await conn.fetchval(
        "SELECT reserved + sold FROM stock WHERE product_id = $1 AND variant_id = $2",
        product_id,
        variant_id,
    )
    return committed


async def take_units(conn: Conn, product_id: str, variant_id: str, quantity: int) -> bool:
    """Hold units with one conditional statement: no read-then-write race."""
    taken = await conn.fetchval(
        """UPDATE stock SET reserved = reserved + $3
           WHERE product_id = $1 AND variant_id = $2 AND on_hand - reserved - sold >= $3
           RETURNING true""",
        product_id,
        variant_id,
        quantity,
    )
    return bool(taken)


async def give_back_units(conn: Conn, product_id: str, variant_id: str, quantity: int) -> None:
    await conn.execute(
        """UPDATE stock SET reserved = reserved - $3
           WHERE product_id = $1 AND variant_id = $2""",
        product_id,
        variant_id,
        quantity,
    )


# --- experiences and carts -----------------------------------------------------


async def load_settings(conn: Conn, experience_id: str) -> ExperienceSettings | None:
    row = await conn.fetchrow(
        """SELECT strategy, window_seconds, buffer_seconds, pool_size, multi_item_policy
           FROM experiences WHERE experience_id = $1""",
        experience_id,
    )
    return ExperienceSettings.model_validate(dict(row)) if row is not None else None


async def put_cart(
    conn: Conn, experience_id: str, consumer_id: str, items: list[CartLine], at: datetime
) -> None:
    await conn.execute(
        """INSERT INTO carts (experience_id, consumer_id, items, updated_at)
           VALUES ($1, $2, $3::jsonb, $4)
           ON CONFLICT (experience_id, consumer_id)
           DO UPDATE SET items = EXCLUDED.items, updated_at = EXCLUDED.updated_at""",
        experience_id,
        consumer_id,
        orjson.dumps([i.model_dump(mode="json", by_alias=True) for i in items]).decode(),
        at,
    )


async def load_cart(conn: Conn, experience_id: str, consumer_id: str) -> list[CartLine]:
    raw = await conn.fetchval(
        "SELECT items FROM carts WHERE experience_id = $1 AND consumer_id = $2",
        experience_id,
        consumer_id,
    )
    if raw is None:
        return []
    return [CartLine.model_validate(item) for item in orjson.loads(raw)]


# --- admissions and reservations ---------------------------------------------------


async def grant_seen(conn: Conn, grant: str) -> bool:
    return bool(
        await conn.fetchval("SELECT true FROM admissions WHERE admission_grant = $1", grant)
    )


async def latest_admission(
    conn: Conn, experience_id: str, consumer_id: str
) -> PriorAdmission | None:
    row = await conn.fetchrow(
        """SELECT admission_grant, admitted_at, status FROM admissions
           WHERE experience_id = $1 AND consumer_id = $2
           ORDER BY admitted_at DESC LIMIT 1 FOR UPDATE""",
        experience_id,
        consumer_id,
    )
    if row is None:
        return None
    return PriorAdmission(row["admission_grant"], row["admitted_at"], row["status"] == "active")


async def insert_admission(
    conn: Conn,
    *,
    grant: str,
    experience_id: str,
    consumer_id: str,
    admitted_at: datetime,
    expires_at: datetime,
    status: str,
    settings: ExperienceSettings,
    command_id: UUID,
) -> None:
    await conn.execute(
        """INSERT INTO admissions (admission_grant, experience_id, consumer_id, admitted_at,
               expires_at, status, strategy, window_seconds, buffer_seconds, command_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
        grant,
        experience_id,
        consumer_id,
        admitted_at,
        expires_at,
        status,
        settings.strategy.value,
        settings.window_seconds,
        settings.buffer_seconds,
        command_id,
    )


async def insert_reservations(
    conn: Conn,
    *,
    holds: list[HoldRequest],
    experience_id: str,
    consumer_id: str,
    grant: str,
    created_at: datetime,
    expires_at: datetime,
    settings: ExperienceSettings,
) -> None:
    await conn.executemany(
        """INSERT INTO reservations (id, consumer_id, experience_id, admission_grant,
               product_id, variant_id, quantity, status, created_at, expires_at,
               strategy, window_seconds, buffer_seconds)
           VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $9, $10, $11, $12)""",
        [
            (
                h.reservation_id,
                consumer_id,
                experience_id,
                grant,
                h.product_id,
                h.variant_id,
                h.quantity,
                created_at,
                expires_at,
                settings.strategy.value,
                settings.window_seconds,
                settings.buffer_seconds,
            )
            for h in holds
        ],
    )


async def end_active_reservations(
    conn: Conn, grant: str, status: str, reason: str, at: datetime
) -> list[HeldRow]:
    """End every active hold of a grant and give its units back; returns them."""
    rows = await conn.fetch(
        """UPDATE reservations SET status = $2, end_reason = $3, ended_at = $4
           WHERE admission_grant = $1 AND status = 'active'
           RETURNING id, experience_id, product_id, variant_id, quantity, strategy""",
        grant,
        status,
        reason,
        at,
    )
    held = [
        HeldRow(r["id"], r["product_id"], r["variant_id"], r["quantity"], r["strategy"])
        for r in rows
    ]
    for h in sorted(held, key=lambda h: (h.product_id, h.variant_id)):
        await give_back_units(conn, h.product_id, h.variant_id, h.quantity)
        if h.strategy == "pool":
            await give_back_pool(
                conn, rows[0]["experience_id"], h.product_id, h.variant_id, h.quantity
            )
    return held


async def convert_active_reservations(
    conn: Conn, grant: str, order_id: str, at: datetime
) -> list[HeldRow]:
    """Move every active hold of a grant from reserved to sold."""
    rows = await conn.fetch(
        """UPDATE reservations SET status = 'converted', converted_at = $3, order_id = $2,
               ended_at = $3, end_reason = 'checkout'
           WHERE admission_grant = $1 AND status = 'active'
           RETURNING id, product_id, variant_id, quantity, strategy""",
        grant,
        order_id,
        at,
    )
    held = [
        HeldRow(r["id"], r["product_id"], r["variant_id"], r["quantity"], r["strategy"])
        for r in rows
    ]
    for h in sorted(held, key=lambda h: (h.product_id, h.variant_id)):
        await conn.execute(
            """UPDATE stock SET reserved = reserved - $3, sold = sold + $3
               WHERE product_id = $1 AND variant_id = $2""",
            h.product_id,
            h.variant_id,
            h.quantity,
        )
    return held


async def release_replaced_holds(
    conn: Conn, reservation_ids: list[UUID], reason: str, at: datetime
) -> None:
    """Mark holds replaced after a cart change; the caller moves the units."""
    await conn.execute(
        """UPDATE reservations SET status = 'released', end_reason = $2, ended_at = $3
           WHERE id = ANY($1::uuid[]) AND status = 'active'""",
        reservation_ids,
        reason,
        at,
    )


async def active_holds(conn: Conn, grant: str) -> list[ActiveHold]:
    rows = await conn.fetch(
        """SELECT id, product_id, variant_id, quantity FROM reservations
           WHERE admission_grant = $1 AND status = 'active'
           ORDER BY product_id, variant_id""",
        grant,
    )
    return [ActiveHold(r["id"], r["product_id"], r["variant_id"], r["quantity"]) for r in rows]


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


# --- pools -------------------------------------------------------------------------


async def take_pool(
    conn: Conn, experience_id: str, product_id: str, variant_id: str, quantity: int, size: int
) -> bool:
    await conn.execute(
        """INSERT INTO experience_pools (experience_id, product_id, variant_id)
           VALUES ($1, $2, $3) ON CONFLICT DO NOTHING""",
        experience_id,
        product_id,
        variant_id,
    )
    taken = await conn.fetchval(
        """UPDATE experience_pools SET used = used + $4
           WHERE experience_id = $1 AND product_id = $2 AND variant_id = $3
             AND used + $4 <= $5
           RETURNING true""",
        experience_id,
        product_id,
        variant_id,
        quantity,
        size,
    )
    return bool(taken)


async def give_back_pool(
    conn: Conn, experience_id: str, product_id: str, variant_id: str, quantity: int
) -> None:
    await conn.execute(
        """UPDATE experience_pools SET used = used - $4
           WHERE experience_id = $1 AND product_id = $2 AND variant_id = $3""",
        experience_id,
        product_id,
        variant_id,
        quantity,
    )


# --- experiences, admissions, endings ------------------------------------------------


async def upsert_experience(
    conn: Conn, experience_id: str, settings: ExperienceSettings, at: datetime
) -> None:
    await conn.execute(
        """INSERT INTO experiences (experience_id, strategy, window_seconds, buffer_seconds,
               pool_size, multi_item_policy, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (experience_id) DO UPDATE SET strategy = EXCLUDED.strategy,
               window_seconds = EXCLUDED.window_seconds,
               buffer_seconds = EXCLUDED.buffer_seconds, pool_size = EXCLUDED.pool_size,
               multi_item_policy = EXCLUDED.multi_item_policy, updated_at = EXCLUDED.updated_at""",
        experience_id,
        settings.strategy.value,
        settings.window_seconds,
        settings.buffer_seconds,
        settings.pool_size,
        settings.multi_item_policy.value,
        at,
    )


async def admission_state(conn: Conn, grant: str) -> AdmissionState | None:
    row = await conn.fetchrow(
        """SELECT admission_grant, status, expires_at, experience_id, consumer_id
           FROM admissions WHERE admission_grant = $1 FOR UPDATE""",
        grant,
    )
    return AdmissionState(row["admission_grant"], row["status"], row["expires_at"]) if row else None


async def current_admission(
    conn: Conn, experience_id: str, consumer_id: str
) -> AdmissionState | None:
    """The consumer's latest admission in the experience (any status)."""
    row = await conn.fetchrow(
        """SELECT admission_grant, status, expires_at FROM admissions
           WHERE experience_id = $1 AND consumer_id = $2 AND status <> 'superseded'
           ORDER BY admitted_at DESC LIMIT 1 FOR UPDATE""",
        experience_id,
        consumer_id,
    )
    return AdmissionState(row["admission_grant"], row["status"], row["expires_at"]) if row else None


async def admission_order(conn: Conn, grant: str) -> str | None:
    order: str | None = await conn.fetchval(
        "SELECT order_id FROM admissions WHERE admission_grant = $1", grant
    )
    return order


async def close_admission(
    conn: Conn, grant: str, status: str, reason: str, at: datetime, order_id: str | None = None
) -> None:
    await conn.execute(
        """UPDATE admissions SET status = $2, end_reason = $3, ended_at = $4, order_id = $5
           WHERE admission_grant = $1 AND status = 'active'""",
        grant,
        status,
        reason,
        at,
        order_id,
    )


async def remember_ending(
    conn: Conn,
    *,
    command_id: UUID,
    experience_id: str,
    consumer_id: str,
    grant: str | None,
    outcome: str,
    reason: str,
    ended_at: datetime,
) -> None:
    await conn.execute(
        """INSERT INTO admission_endings (command_id, experience_id, consumer_id,
               admission_grant, outcome, reason, ended_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING""",
        command_id,
        experience_id,
        consumer_id,
        grant,
        outcome,
        reason,
        ended_at,
    )


async def find_ending(
    conn: Conn, grant: str, experience_id: str, consumer_id: str, admitted_at: datetime
) -> RememberedEnding | None:
    """An ending for this grant, or a grant-less one for this consumer that
    happened at or after this admission."""
    row = await conn.fetchrow(
        """SELECT outcome, reason, ended_at FROM admission_endings
           WHERE admission_grant = $1
              OR (admission_grant IS NULL AND experience_id = $2 AND consumer_id = $3
                  AND ended_at >= $4)
           ORDER BY ended_at LIMIT 1""",
        grant,
        experience_id,
        consumer_id,
        admitted_at,
    )
    return RememberedEnding(row["outcome"], row["reason"], row["ended_at"]) if row else None


async def admission_settings(conn: Conn, grant: str) -> ExperienceSettings | None:
    """The settings an admission was taken under (strategy and window stored
    on it), with the experience's current pool size and multi-item policy."""
    row = await conn.fetchrow(
        """SELECT a.strategy, a.window_seconds, a.buffer_seconds, e.pool_size,
                  COALESCE(e.multi_item_policy, 'partial') AS multi_item_policy
           FROM admissions a LEFT JOIN experiences e USING (experience_id)
           WHERE a.admission_grant = $1""",
        grant,
    )
    return ExperienceSettings.model_validate(dict(row)) if row is not None else None
