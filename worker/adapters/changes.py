"""What a unit of work changed since its last write, taken as plain values,
and the statements that write it: one per table, parents first.

Taking the values is synchronous and leaves the unit of work free to go on
changing its rows while they are written, which is what lets the engine
compute the next part of a batch while PostgreSQL stores the previous one
(see worker.engine.apply_batch). A write never reads the unit of work."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from worker.adapters import rows as tables
from worker.adapters import store
from worker.adapters.rows import EndingRow
from worker.adapters.store import Conn


@dataclass
class BatchChanges:
    """A unit of work's changes since its last take, as column values."""

    # (experience_id, rows.experience_values of its settings, updated_at)
    experiences: list[tuple[str, tuple[Any, ...], datetime]] = field(default_factory=list)
    # (product_id, variant_id, on_hand, reserved, sold, updated_at or None)
    stock: list[tuple[str, str, int, int, int, datetime | None]] = field(default_factory=list)
    # (experience_id, consumer_id, items as JSON text, updated_at)
    carts: list[tuple[str, str, str, datetime]] = field(default_factory=list)
    # (experience_id, consumer_id, updated_at, command_id, items as JSON text)
    cart_versions: list[tuple[str, str, datetime, UUID, str]] = field(default_factory=list)
    new_admissions: list[tuple[Any, ...]] = field(default_factory=list)
    # (grant_digest, status, ended_at, end_reason, order_id, expires_at, extensions)
    changed_admissions: list[tuple[Any, ...]] = field(default_factory=list)
    new_endings: list[EndingRow] = field(default_factory=list)
    new_reservations: list[tuple[Any, ...]] = field(default_factory=list)
    # (id, status, converted_at, order_id, ended_at, end_reason, expires_at)
    changed_reservations: list[tuple[Any, ...]] = field(default_factory=list)
    # (experience_id, product_id, variant_id, used)
    pools: list[tuple[str, str, str, int]] = field(default_factory=list)
    # (event_id, event_type, partition_key, payload)
    outbox: list[tuple[UUID, str, str, bytes]] = field(default_factory=list)
    # (command_id, command_type, outcome JSON text, topic, partition, offset)
    inbox: list[tuple[UUID, str, str, str, int, int]] = field(default_factory=list)

    async def write(self, conn: Conn) -> None:
        await self._experiences(conn)
        await self._stock(conn)
        await self._carts(conn)
        await tables.insert_cart_versions(conn, self.cart_versions)
        await tables.copy_admissions(conn, self.new_admissions)
        await self._admission_updates(conn)
        await tables.insert_endings(conn, self.new_endings)
        await tables.copy_reservations(conn, self.new_reservations)
        await tables.update_reservation_ends(conn, self.changed_reservations)
        await self._pools(conn)
        await self._outbox(conn)
        await self._inbox(conn)

    async def _experiences(self, conn: Conn) -> None:
        if self.experiences:
            await tables.upsert_experiences(conn, *tables.tuple_columns(self.experiences))

    async def _stock(self, conn: Conn) -> None:
        if not self.stock:
            return
        await conn.execute(
            """UPDATE stock s SET on_hand = v.on_hand, reserved = v.reserved, sold = v.sold,
                   updated_at = COALESCE(v.updated_at, s.updated_at)
               FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::int[],
                           $6::timestamptz[]) AS v(p, vr, on_hand, reserved, sold, updated_at)
               WHERE s.product_id = v.p AND s.variant_id = v.vr""",
            *tables.tuple_columns(self.stock),
        )

    async def _carts(self, conn: Conn) -> None:
        if not self.carts:
            return
        await conn.execute(
            """INSERT INTO carts (experience_id, consumer_id, items, updated_at)
               SELECT e, c, i::jsonb, u
               FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS t(e, c, i, u)
               ON CONFLICT (experience_id, consumer_id)
               DO UPDATE SET items = EXCLUDED.items, updated_at = EXCLUDED.updated_at""",
            *tables.tuple_columns(self.carts),
        )

    async def _admission_updates(self, conn: Conn) -> None:
        if not self.changed_admissions:
            return
        await conn.execute(
            """UPDATE admissions a SET status = v.status, ended_at = v.ended_at,
                   end_reason = v.end_reason, order_id = v.order_id,
                   expires_at = v.expires_at, extensions = v.extensions
               FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
                           $6::timestamptz[], $7::int[])
                    AS v(grant_, status, ended_at, end_reason, order_id, expires_at, extensions)
               WHERE a.admission_grant = v.grant_""",
            *tables.tuple_columns(self.changed_admissions),
        )

    async def _pools(self, conn: Conn) -> None:
        if not self.pools:
            return
        await conn.execute(
            """INSERT INTO experience_pools (experience_id, product_id, variant_id, used)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[])
               ON CONFLICT (experience_id, product_id, variant_id)
               DO UPDATE SET used = EXCLUDED.used""",
            *tables.tuple_columns(self.pools),
        )

    async def _outbox(self, conn: Conn) -> None:
        # Binary COPY, like new admissions and reservations: an event id is
        # derived from its command's id and the inbox admits a command once,
        # so no event is written twice (a repeat would fail the batch and be
        # found by isolating it, never silently dropped).
        if not self.outbox:
            return
        await store.hold_outbox_commit(conn)
        await conn.copy_records_to_table("outbox", records=self.outbox, columns=OUTBOX_COLUMNS)

    async def _inbox(self, conn: Conn) -> None:
        # Binary COPY: the commands were checked against the inbox at the
        # batch's start, under its partitions' position locks.
        if self.inbox:
            await conn.copy_records_to_table("inbox", records=self.inbox, columns=INBOX_COLUMNS)


OUTBOX_COLUMNS = ["event_id", "event_type", "partition_key", "payload"]
INBOX_COLUMNS = ["command_id", "command_type", "outcome", "topic", "partition", "offset"]
