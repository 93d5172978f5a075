"""The batch loads stay index probes as the tables grow during a drop.

A drop fills admissions, reservations and carts from empty far faster than
autovacuum refreshes their statistics; a lookup the planner may flatten into
a join then sorts or hashes the whole table on every batch, so each batch
costs more than the last (measured: 200 ms per batch of 500 admissions at
15,000 rows). These tests read the plans, never the clock."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import orjson

from tests import builders as b
from tests.engine_backends import DEFAULTS
from tests.isolated import isolated_settings
from tests.stack import Stack
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


async def _fill(url: str) -> None:
    """Carts and admissions through the engine, in batches, never analyzed."""
    commands: list[CommandBase] = [b.stock("sku", 10 * CONSUMERS)]
    for n in range(CONSUMERS):
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
