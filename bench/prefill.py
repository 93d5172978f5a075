"""Tables filled with earlier drops before a stage runs: the rows the
service itself wrote for a small template drop (its carts, cart versions,
admissions, holds and inbox rows), copied into many other experiences, as
those drops leave them: every admission and hold ended (one in five
converted to an order, the rest expired), each copy a minute older than
the one before, and the stock's `sold` counters raised by the converted
units so that the counters still equal the rows.

The copies are made in the server (`INSERT … SELECT` from the template
over `generate_series`), 100,000 admissions a transaction, two
connections at once, commits not waited for; no row crosses the client.
As a dump's restore does: foreign keys are left unchecked
(`session_replication_role = replica`; the rows are consistent by
construction), and the indexes no constraint stands on are dropped before
and built again after (primary keys stay, maintained row by row). Then
`VACUUM ANALYZE`, as autovacuum would long have done in production.
Outbox rows are left out: the relay publishes them and retention deletes
them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bench.core import connect
from worker.domain.endings import WINDOW_ELAPSED

ADMISSIONS_PER_TRANSACTION = 100_000
WRITERS = 2  # connections writing copies at once, one per core
# The tables a drop leaves rows in, in an order their foreign keys accept;
# the template's rows are its experience's, and for the inbox its commands'.
TABLES = (
    "experiences",
    "carts",
    "cart_versions",
    "admissions",
    "reservations",
    "admission_endings",
    "inbox",
)
_CONVERTED = "k % 5 = 0"
_STATUS = f"CASE WHEN {_CONVERTED} THEN 'converted' ELSE 'expired' END"
_SHIFT = "make_interval(mins => k)"
# Columns rewritten in every copy; the rest are the template's, timestamps
# moved back by the copy's minutes.
_OVERRIDES: dict[str, dict[str, str]] = {
    "*": {
        "experience_id": "t.experience_id || '-' || k",
        "command_id": "md5(t.command_id::text || k)::uuid",
        "admission_grant": "encode(sha256(convert_to(t.admission_grant || k, 'UTF8')), 'hex')",
    },
    "admissions": {
        "status": _STATUS,
        "ended_at": f"t.expires_at - {_SHIFT}",
        "end_reason": f"CASE WHEN {_CONVERTED} THEN 'completed' ELSE '{WINDOW_ELAPSED}' END",
        "order_id": f"CASE WHEN {_CONVERTED} THEN 'order-' || md5(t.admission_grant || k) END",
    },
    "reservations": {
        "id": "md5(t.id::text || k)::uuid",
        "status": _STATUS,
        "ended_at": f"t.expires_at - {_SHIFT}",
        "end_reason": f"CASE WHEN {_CONVERTED} THEN 'completed' ELSE '{WINDOW_ELAPSED}' END",
        "converted_at": f"CASE WHEN {_CONVERTED} THEN t.expires_at - {_SHIFT} END",
        "order_id": f"CASE WHEN {_CONVERTED} THEN 'order-' || md5(t.admission_grant || k) END",
    },
}


@dataclass
class Prefill:
    """What a prefill wrote and what it cost."""

    copies: int
    admissions: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    insert_seconds: float = 0.0
    index_seconds: float = 0.0
    indexes_rebuilt: int = 0
    vacuum_seconds: float = 0.0
    foreign_keys_checked: bool = True
    sold_added: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "copies": self.copies,
            "admissions": self.admissions,
            "rows": self.rows,
            "insert_seconds": round(self.insert_seconds, 1),
            "index_seconds": round(self.index_seconds, 1),
            "indexes_rebuilt": self.indexes_rebuilt,
            "vacuum_analyze_seconds": round(self.vacuum_seconds, 1),
            "foreign_keys_checked": self.foreign_keys_checked,
            "admissions_per_transaction": ADMISSIONS_PER_TRANSACTION,
        }


async def _columns(conn: asyncpg.Connection, table: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        table,
    )
    return [(r["column_name"], r["data_type"]) for r in rows]


def _select(table: str, columns: list[tuple[str, str]]) -> str:
    overrides = {**_OVERRIDES["*"], **_OVERRIDES.get(table, {})}
    cells = []
    for name, kind in columns:
        if name in overrides:
            cells.append(overrides[name])
        elif kind == "timestamp with time zone":
            cells.append(f't."{name}" - {_SHIFT}')
        else:
            cells.append(f't."{name}"')
    names = ", ".join(f'"{n}"' for n, _ in columns)
    return (
        f"INSERT INTO {table} ({names}) SELECT {', '.join(cells)} "
        f"FROM template_{table} t, generate_series($1::int, $2::int) AS k"
    )


async def _templates(
    conn: asyncpg.Connection, experience: str, command_ids: list[str]
) -> dict[str, str]:
    """Temporary copies of the template's rows; the INSERT of each table
    that has any."""
    inserts = {}
    for table in TABLES:
        where, arg = (
            ("command_id = ANY($1::uuid[])", command_ids)
            if table == "inbox"
            else ("experience_id = $1", experience)
        )
        await conn.execute(f"CREATE TEMP TABLE template_{table} (LIKE {table})")
        await conn.execute(f"INSERT INTO template_{table} SELECT * FROM {table} WHERE {where}", arg)
        if await conn.fetchval(f"SELECT count(*) FROM template_{table}"):
            inserts[table] = _select(table, await _columns(conn, table))
    return inserts


_SECONDARY = """SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def
    FROM pg_index i
    WHERE i.indrelid = $1::regclass
      AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)"""


async def _drop_secondary(conn: asyncpg.Connection, tables: list[str]) -> list[str]:
    """Drop the indexes no constraint stands on; their definitions, to
    build them again after the rows are in (a sort, not a row-by-row
    insertion: what makes a restore fast)."""
    definitions = []
    for table in tables:
        for row in await conn.fetch(_SECONDARY, table):
            definitions.append(row["def"])
            await conn.execute(f"DROP INDEX {row['name']}")
    return definitions


async def _sold(conn: asyncpg.Connection, converted_copies: int) -> dict[str, int]:
    """Raise each product's `sold` by the units its converted copies hold."""
    rows = await conn.fetch(
        "UPDATE stock s SET sold = s.sold + v.q * $1::int FROM ("
        "  SELECT product_id, variant_id, sum(quantity) AS q FROM template_reservations"
        "  GROUP BY 1, 2) v "
        "WHERE s.product_id = v.product_id AND s.variant_id = v.variant_id "
        "RETURNING s.product_id, v.q * $1::int AS added",
        converted_copies,
    )
    return {r["product_id"]: int(r["added"]) for r in rows}


async def _session(dsn: str, experience: str, command_ids: list[str]) -> _Session:
    conn = await connect(dsn)
    checked = True
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute("SET session_replication_role = replica")
        checked = False
    # Nothing waits on these commits but the prefill itself.
    await conn.execute("SET synchronous_commit = off")
    return _Session(conn, await _templates(conn, experience, command_ids), checked)


@dataclass
class _Session:
    """One connection with the template's rows and the INSERT of each table."""

    conn: asyncpg.Connection
    inserts: dict[str, str]
    foreign_keys_checked: bool

    async def write(self, copies: range, step: int, done: Prefill) -> None:
        """Copies `copies`, `step` of them a transaction."""
        for first in range(copies.start, copies.stop, step):
            last = min(copies.stop - 1, first + step - 1)
            async with self.conn.transaction():
                for table, sql in self.inserts.items():
                    status = await self.conn.execute(sql, first, last)
                    done.rows[table] = done.rows.get(table, 0) + int(status.split()[-1])


async def prefill(dsn: str, experience: str, command_ids: list[str], copies: int) -> Prefill:
    """Copy the template drop `experience` (its commands `command_ids`)
    `copies` times (maybe 0) over WRITERS connections, then vacuum and
    analyze the tables, so that every point of a curve runs on tables in
    the same state."""
    done = Prefill(copies)
    sessions = [await _session(dsn, experience, command_ids) for _ in range(WRITERS)]
    main = sessions[0]
    try:
        done.foreign_keys_checked = main.foreign_keys_checked
        per_copy = int(await main.conn.fetchval("SELECT count(*) FROM template_admissions"))
        step = max(1, ADMISSIONS_PER_TRANSACTION // max(1, per_copy))
        started = time.perf_counter()
        dropped = await _drop_secondary(main.conn, list(main.inserts)) if copies else []
        await asyncio.gather(
            *(s.write(_share(copies, len(sessions), i), step, done) for i, s in enumerate(sessions))
        )
        if copies:
            done.sold_added = await _sold(main.conn, copies // 5)
        done.insert_seconds = time.perf_counter() - started
        started = time.perf_counter()
        await main.conn.execute("SET maintenance_work_mem = '512MB'")
        for definition in dropped:
            await main.conn.execute(definition)
        done.index_seconds = time.perf_counter() - started
        done.indexes_rebuilt = len(dropped)
        started = time.perf_counter()
        for table in main.inserts:
            await main.conn.execute(f"VACUUM ANALYZE {table}")
        done.vacuum_seconds = time.perf_counter() - started
        done.admissions = done.rows.get("admissions", 0)
    finally:
        for session in sessions:
            with contextlib.suppress(Exception):
                await session.conn.close()
    return done


def _share(copies: int, parts: int, index: int) -> range:
    """The `index`-th of `parts` consecutive runs of the copies 1..copies."""
    return range(1 + copies * index // parts, 1 + copies * (index + 1) // parts)
