"""The PostgreSQL ceiling of a drain: the exact rows the service wrote for
the timed commands, written again into an empty database of the same schema
by COPY (new rows) and unnest (the stock counters, the consumer positions),
500 commands per transaction, over one connection, on the same server with
its fsync setting, with every record built before the clock starts. No
decision is taken, no command decoded: what is left is what PostgreSQL
costs for those rows, the most any consumer could apply on this machine."""

from __future__ import annotations

import time
from typing import Any

import asyncpg

from bench.core import Context, Namespace, StageResult, connect, extra_database
from bench.workload import Record
from worker.adapters import postgres

COMMANDS_PER_TRANSACTION = 500

# Each table a command writes, and how to find the timed commands' rows.
# $1 is the timed command ids. Outbox rows carry no command id; the batch's
# transaction start stamps both them and the inbox rows.
_WRITTEN = {
    "inbox": "SELECT * FROM inbox WHERE command_id = ANY($1::uuid[])",
    "admissions": "SELECT * FROM admissions WHERE command_id = ANY($1::uuid[])",
    "cart_versions": "SELECT * FROM cart_versions WHERE command_id = ANY($1::uuid[])",
    "carts": "SELECT c.* FROM carts c JOIN cart_versions v USING (experience_id, consumer_id) "
    "WHERE v.command_id = ANY($1::uuid[])",
    "reservations": "SELECT r.* FROM reservations r JOIN admissions a USING (admission_grant) "
    "WHERE a.command_id = ANY($1::uuid[])",
    "outbox": "SELECT event_id, event_type, partition_key, payload, created_at FROM outbox "
    "WHERE created_at >= (SELECT min(applied_at) FROM inbox WHERE command_id = ANY($1::uuid[])) "
    "ORDER BY seq",
}
_STOCK_UPDATE = """UPDATE stock s SET reserved = v.reserved, sold = v.sold, updated_at = now()
    FROM unnest($1::text[], $2::text[], $3::int[], $4::int[]) AS v(p, vr, reserved, sold)
    WHERE s.product_id = v.p AND s.variant_id = v.vr"""
_POSITIONS_UPSERT = """INSERT INTO consumer_positions (topic, partition, next_offset)
    SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[])
    ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset,
        updated_at = now()"""


async def _written(dsn: str, command_ids: list[str]) -> dict[str, list[asyncpg.Record]]:
    conn = await connect(dsn)
    try:
        found = {t: await conn.fetch(sql, command_ids) for t, sql in _WRITTEN.items()}
        found["stock"] = await conn.fetch("SELECT * FROM stock")
        found["consumer_positions"] = await conn.fetch("SELECT * FROM consumer_positions")
        return found
    finally:
        await conn.close()


def _chunks(rows: list[Any], parts: int) -> list[list[Any]]:
    """`rows` cut into `parts` runs of near-equal length, in order."""
    return [rows[len(rows) * i // parts : len(rows) * (i + 1) // parts] for i in range(parts)]


def _with_admissions(
    found: dict[str, list[asyncpg.Record]], parts: int
) -> tuple[str, list[str], list[list[Any]]]:
    """Reservations in the transaction of their admission (a foreign key)."""
    admissions = _chunks([r["admission_grant"] for r in found["admissions"]], parts)
    part_of = {g: i for i, chunk in enumerate(admissions) for g in chunk}
    chunks: list[list[Any]] = [[] for _ in range(parts)]
    for r in found["reservations"]:
        chunks[part_of[r["admission_grant"]]].append(tuple(r))
    return "reservations", list(found["reservations"][0].keys()), chunks


async def _write(conn: asyncpg.Connection, found: dict[str, list[asyncpg.Record]], n: int) -> float:
    """Write the rows of `n` commands, 500 commands a transaction; seconds."""
    parts = max(1, -(-n // COMMANDS_PER_TRANSACTION))
    copies = [
        (table, list(rows[0].keys()), _chunks([tuple(r) for r in rows], parts))
        for table, rows in found.items()
        if rows and table not in ("stock", "consumer_positions", "reservations")
    ]
    if found["reservations"]:
        copies.append(_with_admissions(found, parts))
    stock = [[r[c] for r in found["stock"]] for c in ("product_id", "variant_id", "reserved")]
    stock.append([r["sold"] for r in found["stock"]])
    positions = [[r[c] for r in found["consumer_positions"]] for c in ("topic", "partition")]
    positions.append([r["next_offset"] for r in found["consumer_positions"]])
    started = time.perf_counter()
    for part in range(parts):
        async with conn.transaction():
            for table, columns, chunks in copies:
                if chunks[part]:
                    await conn.copy_records_to_table(table, records=chunks[part], columns=columns)
            await conn.execute(_STOCK_UPDATE, *stock)
            await conn.execute(_POSITIONS_UPSERT, *positions)
    return time.perf_counter() - started


async def pg_ceiling(
    ctx: Context, ns: Namespace, result: StageResult, timed: list[Record]
) -> float | None:
    """Commands/s PostgreSQL takes for the timed commands' rows; also kept in
    the stage's details with the rows per command of each table."""
    found = await _written(ns.database_url, [r.command_id for r in timed])
    async with extra_database(ns.admin_url, "ceiling") as dsn:
        await postgres.migrate(dsn, ctx.worker_root / "sql")
        conn = await connect(dsn)
        try:
            stock = [tuple(r) for r in found["stock"]]
            await conn.copy_records_to_table(
                "stock", records=stock, columns=list(found["stock"][0].keys())
            )
            seconds = await _write(conn, found, len(timed))
            fsync = await conn.fetchval("SHOW fsync")
        finally:
            await conn.close()
    rate = len(timed) / seconds if seconds > 0 else None
    result.details["ceiling_postgresql"] = {
        "commands_per_second": rate,
        "seconds": seconds,
        "commands": len(timed),
        "commands_per_transaction": COMMANDS_PER_TRANSACTION,
        "fsync": fsync,
        "rows_per_command": {
            t: round(len(rows) / len(timed), 3) for t, rows in found.items() if t in _WRITTEN
        },
        "how": "the timed commands' own rows, COPY + unnest, one connection, prebuilt",
    }
    return rate


CEILING_NAME = "PostgreSQL, the same rows"


def share(value: float | None, ceiling: float | None) -> float | None:
    """A figure as a share of its ceiling (1.0 = at the machine's limit)."""
    return value / ceiling if value and ceiling else None
