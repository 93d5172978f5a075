"""The naive baseline: the cart-reservation guide's per-event code, ported
faithfully to Python/asyncpg and fed from the same commands topic.

What the guide does, and so what this does:
- one event at a time, each awaited before the next;
- `createReservation`: read the available units (outside any transaction),
  refuse if short, then one transaction: `UPDATE inventory SET reserved =
  reserved + n` and `INSERT INTO reservations ... RETURNING`;
- `handleAdmission`: read the consumer's cart, `createReservation` per line
  (an insufficient line throws and ends the admission, as in the guide);
- `releaseReservation` / `convertReservation`: one transaction each, the row
  locked FOR UPDATE; `handleAdmissionExpired` releases every active hold.
The guide's schema (inventory + reservations), plus the cart the guide reads
from "your cart/session". No inbox, no outbox, no events, no CHECK
constraints: none are in the guide.

It is given every advantage a careful port could have: uvloop, orjson, one connection
with asyncpg's prepared-statement cache, Kafka offsets auto-committed in the
background (aiokafka's default), no per-event logging.

Run as `python -m bench.naive --dsn ... --bootstrap ... --topic ... --group ...
--expect N`: it exits after N commands, printing JSON progress lines.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import uvloop
from aiokafka import AIOKafkaConsumer

SCHEMA = """
CREATE TABLE IF NOT EXISTS inventory (
    product_id TEXT NOT NULL,
    variant_id TEXT NOT NULL DEFAULT '',
    on_hand    INTEGER NOT NULL DEFAULT 0,
    reserved   INTEGER NOT NULL DEFAULT 0,
    sold       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (product_id, variant_id)
);
CREATE TABLE IF NOT EXISTS carts (
    experience_id TEXT NOT NULL,
    consumer_id   TEXT NOT NULL,
    items         JSONB NOT NULL,
    PRIMARY KEY (experience_id, consumer_id)
);
-- The guide's table, as written there.
CREATE TABLE IF NOT EXISTS reservations (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    consumer_id TEXT NOT NULL,
    experience_id TEXT NOT NULL,
    admission_grant TEXT NOT NULL,
    product_id TEXT NOT NULL,
    variant_id TEXT,
    quantity INTEGER NOT NULL DEFAULT 1,
    status TEXT NOT NULL DEFAULT 'active',
    created_at TIMESTAMP DEFAULT NOW(),
    expires_at TIMESTAMP NOT NULL,
    converted_at TIMESTAMP,
    order_id TEXT
);
CREATE INDEX IF NOT EXISTS idx_reservations_expires
    ON reservations(expires_at) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS idx_reservations_consumer ON reservations(consumer_id, status);
"""

RESERVATION_MINUTES = 10  # the guide's expiresInMinutes default


class InsufficientInventory(Exception):
    pass


class GuideService:
    """services/reservation.service.ts and the handlers around it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def get_available_inventory(self, product_id: str, variant_id: str) -> int:
        value = await self.conn.fetchval(
            """SELECT on_hand - reserved - sold FROM inventory
               WHERE product_id = $1 AND variant_id = $2""",
            product_id,
            variant_id,
        )
        return int(value or 0)

    async def create_reservation(
        self,
        consumer_id: str,
        experience_id: str,
        admission_grant: str,
        product_id: str,
        variant_id: str,
        quantity: int,
    ) -> asyncpg.Record:
        expires_at = datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=RESERVATION_MINUTES)
        available = await self.get_available_inventory(product_id, variant_id)
        if available < quantity:
            raise InsufficientInventory("Insufficient inventory")
        async with self.conn.transaction():
            await self.conn.execute(
                """UPDATE inventory SET reserved = reserved + $3
                   WHERE product_id = $1 AND variant_id = $2""",
                product_id,
                variant_id,
                quantity,
            )
            row = await self.conn.fetchrow(
                """INSERT INTO reservations (consumer_id, experience_id, admission_grant,
                       product_id, variant_id, quantity, expires_at, status)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, 'active') RETURNING *""",
                consumer_id,
                experience_id,
                admission_grant,
                product_id,
                variant_id,
                quantity,
                expires_at,
            )
        assert row is not None
        return row

    async def convert_reservation(self, reservation_id: Any, order_id: str) -> None:
        async with self.conn.transaction():
            r = await self.conn.fetchrow(
                "SELECT * FROM reservations WHERE id = $1 FOR UPDATE", reservation_id
            )
            if r is None or r["status"] != "active":
                raise ValueError("Invalid reservation")
            await self.conn.execute(
                """UPDATE reservations SET status = 'converted', converted_at = now(),
                       order_id = $2 WHERE id = $1""",
                reservation_id,
                order_id,
            )
            await self.conn.execute(
                """UPDATE inventory SET reserved = reserved - $3, sold = sold + $3
                   WHERE product_id = $1 AND variant_id = $2""",
                r["product_id"],
                r["variant_id"] or "",
                r["quantity"],
            )

    async def release_reservation(self, reservation_id: Any, status: str = "released") -> None:
        async with self.conn.transaction():
            r = await self.conn.fetchrow(
                "SELECT * FROM reservations WHERE id = $1 FOR UPDATE", reservation_id
            )
            if r is None or r["status"] != "active":
                return
            await self.conn.execute(
                "UPDATE reservations SET status = $2 WHERE id = $1", reservation_id, status
            )
            await self.conn.execute(
                """UPDATE inventory SET reserved = reserved - $3
                   WHERE product_id = $1 AND variant_id = $2""",
                r["product_id"],
                r["variant_id"] or "",
                r["quantity"],
            )

    async def active_reservations(self, consumer_id: str, experience_id: str) -> list[Any]:
        return list(
            await self.conn.fetch(
                """SELECT id FROM reservations
                   WHERE consumer_id = $1 AND experience_id = $2 AND status = 'active'""",
                consumer_id,
                experience_id,
            )
        )

    # -- the handlers ------------------------------------------------------

    async def handle(self, command: dict[str, Any]) -> str:
        kind = command.get("type")
        if kind == "admission.grant":
            return await self.handle_admission(command)
        if kind == "cart.put":
            await self.conn.execute(
                """INSERT INTO carts (experience_id, consumer_id, items) VALUES ($1, $2, $3)
                   ON CONFLICT (experience_id, consumer_id) DO UPDATE SET items = $3""",
                command["experienceId"],
                command["consumerId"],
                orjson.dumps(command["items"]).decode(),
            )
            return "cart"
        if kind == "stock.set":
            await self.conn.execute(
                """INSERT INTO inventory (product_id, variant_id, on_hand) VALUES ($1, $2, $3)
                   ON CONFLICT (product_id, variant_id) DO UPDATE SET on_hand = $3""",
                command["productId"],
                command.get("variantId") or "",
                command["onHand"],
            )
            return "stock"
        if kind == "admission.end":
            status = "expired" if command.get("outcome") == "expired" else "released"
            for r in await self.active_reservations(command["consumerId"], command["experienceId"]):
                await self.release_reservation(r["id"], status)
            return "ended"
        if kind == "checkout.complete":
            for r in await self.active_reservations(command["consumerId"], command["experienceId"]):
                await self.convert_reservation(r["id"], command["orderId"])
            return "converted"
        return "ignored"  # experience.configure: the guide has one fixed window

    async def handle_admission(self, command: dict[str, Any]) -> str:
        items = await self.conn.fetchval(
            "SELECT items FROM carts WHERE experience_id = $1 AND consumer_id = $2",
            command["experienceId"],
            command["consumerId"],
        )
        for item in orjson.loads(items) if items else []:
            await self.create_reservation(
                command["consumerId"],
                command["experienceId"],
                command["grantDigest"],
                item["productId"],
                item.get("variantId") or "",
                int(item["quantity"]),
            )
        return "admitted"


def emit(**fields: Any) -> None:
    sys.stdout.write(orjson.dumps(fields).decode() + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> int:
    conn = await asyncpg.connect(args.dsn, server_settings={"application_name": "bench-naive"})
    service = GuideService(conn)
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    done = 0
    outcomes: dict[str, int] = {}
    last_report = time.monotonic()
    deadline = time.monotonic() + args.timeout
    try:
        while done < args.expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            for records in batch.values():
                for record in records:
                    command = orjson.loads(record.value or b"{}")
                    try:
                        outcome = await service.handle(command)
                    except InsufficientInventory:
                        outcome = "insufficient"
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1
                    done += 1
                    if done == 1:
                        emit(first=time.time())
            if time.monotonic() - last_report >= 0.5:
                last_report = time.monotonic()
                emit(t=time.time(), n=done)
        emit(t=time.time(), n=done, done=done >= args.expect, outcomes=outcomes)
        # Explicitly, so a later run of the same group starts after these.
        await consumer.commit()
    finally:
        await consumer.stop()
        await conn.close()
    return 0 if done >= args.expect else 1


async def create_schema(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--expect", type=int, required=True, help="exit after this many")
    parser.add_argument("--timeout", type=float, default=1800.0)
    return uvloop.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
