"""The batch engine decides exactly as one-command-at-a-time would: the same
workload applied in batches of many and in batches of one leaves the same
rows, outcomes and events."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from tests import builders as b
from tests.engine_backends import DEFAULTS, assert_counters_match_rows
from tests.isolated import isolated_settings
from tests.stack import Stack
from tests.test_crash import SNAPSHOT, _snapshot, _workload
from worker import engine
from worker.config import Settings
from worker.domain.commands import CommandBase
from worker.engine import Coordinates, apply_batch, apply_isolating, not_yet_applied


async def _apply_in_chunks(url: str, commands: list[CommandBase], chunk: int) -> None:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
    assert pool is not None
    try:
        for start in range(0, len(commands), chunk):
            part = commands[start : start + chunk]
            async with pool.acquire() as conn, conn.transaction():
                placed = [(c, Coordinates("t", 0, n)) for n, c in enumerate(part, start)]
                todo = await not_yet_applied(conn, placed)  # type: ignore[arg-type]
                await apply_batch(conn, todo, DEFAULTS)
        await assert_counters_match_rows(pool)
    finally:
        await pool.close()


def _with_pool_and_duplicates(seed: int) -> list[CommandBase]:
    rng = random.Random(seed)
    commands = _workload()
    # A pooled experience and exact re-deliveries mixed into the same log.
    extra: list[CommandBase] = [b.configure("pooled", strategy="pool", pool_size=15)]
    for n in range(40):
        extra.append(b.cart("pooled", f"p{n}", b.line("shoe", 2, "42"), b.line("cap", 1)))
        extra.append(b.admit("pooled", f"p{n}", f"pooled-{n}"))
    commands[2:2] = extra
    for _ in range(60):
        commands.insert(rng.randrange(len(commands)), rng.choice(commands))
    return commands


async def _state_after(
    stack: Stack, settings: Settings, commands: list[CommandBase], chunk: int
) -> dict[str, Any]:
    async with isolated_settings(stack, settings, partitions=1) as iso:
        await _apply_in_chunks(iso.database_url, commands, chunk)
        return await _snapshot(iso.database_url)


def _assert_same_state(one: dict[str, Any], other: dict[str, Any]) -> None:
    for table in SNAPSHOT:
        assert one[table] == other[table], table
    assert len(one["reservations"]) > 100


@pytest.mark.parametrize("seed", [1, 2])
async def test_batches_of_many_equal_batches_of_one(
    stack: Stack, settings: Settings, seed: int
) -> None:
    commands = _with_pool_and_duplicates(seed)
    one = await _state_after(stack, settings, commands, 1)
    _assert_same_state(one, await _state_after(stack, settings, commands, 97))


async def test_batches_written_behind_in_parts_equal_batches_of_one(
    stack: Stack, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts of 8 written while the next is decided, yielding often so that
    writes and decisions interleave: the same rows as one at a time."""
    commands = _with_pool_and_duplicates(3)
    one = await _state_after(stack, settings, commands, 1)
    monkeypatch.setattr(engine, "PART", 8)
    monkeypatch.setattr(engine, "YIELD_EVERY", 1)
    _assert_same_state(one, await _state_after(stack, settings, commands, 97))


async def test_a_refused_command_after_parts_were_written_isolates_the_culprit(
    stack: Stack, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that fails after two parts of its batch went to PostgreSQL:
    the batch rolls back with no statement in flight, the culprit alone is
    refused, and every other command is applied once."""
    monkeypatch.setattr(engine, "PART", 4)
    monkeypatch.setattr(engine, "YIELD_EVERY", 1)
    commands: list[CommandBase] = [b.stock("sku", 100)]
    for n in range(6):
        commands += [b.cart("drop", f"c{n}", b.line("sku", 1)), b.admit("drop", f"c{n}", f"g{n}")]
    # Its window runs past the last representable instant: impossible.
    culprit = b.admit("drop", "late", "g-late", at=datetime(9999, 12, 31, 23, 59, tzinfo=UTC))
    commands.insert(8, culprit)  # right after a part went to PostgreSQL
    async with isolated_settings(stack, settings, partitions=1) as iso:
        conn = await asyncpg.connect(iso.database_url)
        try:
            placed = [(c, Coordinates("t", 0, n)) for n, c in enumerate(commands)]
            applied, refused = await apply_isolating(conn, placed, DEFAULTS, ())  # type: ignore[arg-type]
            assert [r.command for r in refused] == [culprit]
            assert len(applied) == len(commands) - 1
            assert await conn.fetchval("SELECT count(*) FROM inbox") == len(commands) - 1
            assert await conn.fetchval("SELECT reserved FROM stock") == 6
        finally:
            await conn.close()
