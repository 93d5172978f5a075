"""The batch loads stay index probes as the tables grow during a drop.

A drop fills admissions, reservations and carts from empty far faster than
autovacuum refreshes their statistics; a lookup the planner may flatten into
a join then sorts or hashes the whole table on every batch, so each batch
costs more than the last (measured: 200 ms per batch of 500 admissions at
15,000 rows); a statement planned once while a table was empty keeps that
plan as the table grows. These tests read the plans, never the clock."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import orjson

from tests import builders as b
from tests.engine_backends import DEFAULTS
from tests.isolated import isolated_settings
from tests.stack import Stack
from worker.adapters import postgres
from worker.adapters.rows import by_pair_or_grant_digest_sql
from worker.adapters.uow_load import CART_LOOKUP_SQL
from worker.config import Settings
from worker.domain import ids
from worker.domain.commands import CommandBase
from worker.engine import Coordinates, apply_batch

CONSUMERS = 4_000
BATCH = 500


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def _plan(conn: asyncpg.Connection, sql: str, *args: Any) -> list[dict[str, Any]]:
    raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    return list(_nodes(orjson.loads(raw)[0]["Plan"]))


def _whole_table_reads(nodes: list[dict[str, Any]], table: str) -> list[str]:
    return [
        n["Node Type"]
        for n in nodes
        if (n["Node Type"] == "Seq Scan" and n.get("Relation Name") == table)
        or n["Node Type"] in ("Hash Join", "Merge Join")
    ]


async def _fill(url: str, consumers: int = CONSUMERS) -> None:
    """Carts and admissions through the engine, in batches, never analyzed."""
    commands: list[CommandBase] = [b.stock("sku", 10 * consumers)]
    for n in range(consumers):
        commands.append(b.cart("drop", f"c{n}", b.line("sku", 1)))
        commands.append(b.admit("drop", f"c{n}", f"grant-{n}"))
    conn = await asyncpg.connect(url)
    try:
        for start in range(0, len(commands), BATCH):
            part = commands[start : start + BATCH]
            async with conn.transaction():
                placed = [(c, Coordinates("t", 0, n)) for n, c in enumerate(part, start)]
                await apply_batch(conn, placed, DEFAULTS)  # type: ignore[arg-type]
    finally:
        await conn.close()


async def test_batch_lookups_probe_indexes_on_unanalyzed_growing_tables(
    stack: Stack, settings: Settings
) -> None:
    async with isolated_settings(stack, settings, partitions=1) as iso:
        await _fill(iso.database_url)
        conn = await asyncpg.connect(iso.database_url)
        try:
            # Positive signal first: the tables did grow, unanalyzed.
            assert await conn.fetchval("SELECT count(*) FROM reservations") == CONSUMERS
            keys = range(CONSUMERS - BATCH, CONSUMERS)
            exps = ["drop"] * BATCH
            cons = [f"c{n}" for n in keys]
            grants = [ids.grant_digest(f"grant-{n}") for n in keys]
            for table in ("admissions", "reservations", "admission_endings"):
                nodes = await _plan(conn, by_pair_or_grant_digest_sql(table), grants, exps, cons)
                assert _whole_table_reads(nodes, table) == [], (table, nodes)
            nodes = await _plan(conn, CART_LOOKUP_SQL, exps, cons)
            assert _whole_table_reads(nodes, "carts") == [], nodes
        finally:
            await conn.close()


def _execute(*arrays: list[str]) -> str:
    """EXECUTE of the prepared lookup (which takes no bind parameters), with
    these test-made keys as literals."""
    literals = ("ARRAY[" + ", ".join(f"'{v}'" for v in a) + "]::text[]" for a in arrays)
    return f"EXECUTE lookup({', '.join(literals)})"


def _filtered_by_consumer(nodes: list[dict[str, Any]]) -> list[str]:
    """Index scans that find a consumer's rows by reading the experience's."""
    return [n["Index Name"] for n in nodes if "consumer_id" in n.get("Filter", "")]


async def test_a_lookup_prepared_on_empty_tables_is_planned_again_as_they_grow(
    stack: Stack, settings: Settings
) -> None:
    """The service's connections plan each execution for the tables as they
    are: a plan made on the empty tables of a drop's first batch probed the
    operators' listing index (experience, created_at) and filtered every
    hold of the drop for each consumer."""
    consumers = 1_000
    async with isolated_settings(stack, settings, partitions=1) as iso:
        pool = await postgres.create_pool(iso.database_url, max_size=1)
        try:
            async with pool.acquire() as conn:
                sql = by_pair_or_grant_digest_sql("reservations")
                await conn.execute(f"PREPARE lookup(text[], text[], text[]) AS {sql}")
                empty = _execute(["g"], ["drop"], ["c0"])
                for _ in range(6):  # past the executions PostgreSQL plans custom anyway
                    assert await conn.fetch(empty) == []
                await _fill(iso.database_url, consumers)
                grants = [ids.grant_digest(f"grant-{n}") for n in range(BATCH)]
                full = _execute(grants, ["drop"] * BATCH, [f"c{n}" for n in range(BATCH)])
                # Positive signal first: the holds are there to find.
                assert len(await conn.fetch(full)) == 2 * BATCH
                raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {full}")
                nodes = list(_nodes(orjson.loads(raw)[0]["Plan"]))
                assert _filtered_by_consumer(nodes) == [], nodes
                assert _whole_table_reads(nodes, "reservations") == [], nodes
        finally:
            await pool.close()
