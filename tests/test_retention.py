"""Retention over 60 simulated days (README, Operations, "Retention").

A drop a day, each of seven weekly drops once a week: each consumer of a
steady population puts a cart and is admitted; a third complete, a third
leave, a third expire on the scheduler's command; a consumer with no
admission leaves (remembered); one tries again before its holds expired
(refused, the retry kept pending with the admission's facts).
Fanfare's re-sends come 44 h later, once with the same delivery (the inbox
drops it) and once as a new delivery with the same grant (refused by the
grant); grants whose admission retention already pruned come back too (a
tombstone refuses them). After each day the leading scheduler's
housekeeping runs on an injected clock.

The database stamps inbox and outbox rows with its own clock
(`applied_at`, `created_at` DEFAULT now()); the test moves each day's stamps
to the simulated day, and stands in for the relay by moving the published
position to the end of the outbox. Size: RETENTION_SIM_ADMISSIONS_PER_DAY
(default 30; the issue's 5,000 has the same shape)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest_asyncio

from tests import builders as b
from tests.engine_backends import assert_counters_match_rows
from tests.stack import Stack
from worker.adapters import postgres, retention
from worker.adapters.queries import DueExpiry
from worker.clock import ManualClock
from worker.config import Settings, load_settings
from worker.domain import ids
from worker.domain.commands import Command
from worker.domain.events import decode_event
from worker.domain.model import ExperienceSettings
from worker.engine import Coordinates, apply_batch, not_yet_applied
from worker.replay.diff import compare
from worker.replay.scratch import scratch_database
from worker.replay.sink import Planner, write_planned
from worker.roles.housekeeping import Housekeeping
from worker.roles.scheduler import expiry_command

DAYS = 60
PER_DAY = int(os.environ.get("RETENTION_SIM_ADMISSIONS_PER_DAY", "30"))
T0 = datetime(2026, 1, 5, 18, 0, tzinfo=UTC)
SIM_END = T0 + timedelta(days=DAYS + 1)
DEFAULTS = ExperienceSettings()
SKU = "sneaker"
RESENT = 5  # admissions of each day re-sent 44 h later
TABLES = (
    "inbox",
    "outbox",
    "admissions",
    "reservations",
    "admission_endings",
    "cart_versions",
    "carts",
    "grant_tombstones",
    "sales_retired",
)


def grant(day: int, i: int) -> str:
    return f"grant-{day}-{i}"


def drop(day: int) -> str:
    """The experience of the day's drop: seven, each once a week."""
    return f"weekly-drop-{day % 7}"


@pytest_asyncio.fixture(loop_scope="session")
async def live(stack: Stack) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    async with scratch_database(stack.database_url, "retention") as url:
        pool = await postgres.create_pool(url, max_size=3)
        yield url, pool
        await pool.close()


class Drops:
    """The simulated days, their commands, and what was answered."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.admits: dict[tuple[int, int], Command] = {}
        self.offset = 0
        self.outcomes: dict[str, list[str]] = {}

    async def apply(self, commands: list[Command]) -> None:
        placed = []
        for c in commands:
            placed.append((c, Coordinates("sim", 0, self.offset)))
            self.offset += 1
        async with self.pool.acquire() as conn, conn.transaction():
            fresh = await not_yet_applied(conn, placed)
            results = await apply_batch(conn, fresh, DEFAULTS)
        for (c, _), applied in zip(fresh, results, strict=True):
            self.outcomes.setdefault(str(c.command_id), []).append(applied.outcome["status"])

    def opening(self, day: int) -> list[Command]:
        t, exp = T0 + timedelta(days=day), drop(day)
        commands: list[Command] = [b.configure(exp, retry_window_seconds=120)]
        commands.append(b.stock(SKU, 10**6))
        for i in range(PER_DAY):
            admit = b.admit(exp, f"c{i}", grant(day, i), t + timedelta(seconds=i))
            self.admits[(day, i)] = admit
            commands += [b.cart(exp, f"c{i}", b.line(SKU, 1 + day % 2), at=t), admit]
        commands.append(b.end(exp, "ghost", None, at=t))
        commands.append(b.retry(exp, "c1", grant(day, 1), t + timedelta(seconds=10)))
        return commands

    def endings(self, day: int) -> list[Command]:
        t, exp = T0 + timedelta(days=day, minutes=5), drop(day)
        commands: list[Command] = []
        for i in range(PER_DAY):
            g = grant(day, i)
            if i % 3 == 0:
                commands.append(b.complete(exp, f"c{i}", g, f"order-{day}-{i}", at=t))
            elif i % 3 == 1:
                commands.append(b.end(exp, f"c{i}", g, at=t))
            else:
                admitted = T0 + timedelta(days=day, seconds=i)
                due = DueExpiry(ids.grant_digest(g), exp, f"c{i}", DEFAULTS.expires_at(admitted))
                commands.append(expiry_command(due, t))
        return commands

    def resent(self, day: int) -> tuple[list[Command], list[Command]]:
        """Day-2's deliveries again, and new deliveries of day-2's and
        day-33's grants (the latter's admissions are pruned by now)."""
        t = T0 + timedelta(days=day, hours=20)
        same = [self.admits[(day - 2, i)] for i in range(RESENT)] if day >= 2 else []
        again = [
            b.admit(drop(before), f"c{i}", grant(before, i), t)
            for before in (day - 2, day - 33)
            if before >= 0
            for i in range(RESENT)
        ]
        return same, again


async def end_of_day(pool: asyncpg.Pool, day: int, topic: list[tuple[int, bytes]]) -> None:
    """The day's inbox and outbox stamps on the simulated clock, and the
    relay's position at the end of the outbox: its events go to `topic`,
    which keeps them all, as the events topic does."""
    t = T0 + timedelta(days=day)
    async with pool.acquire() as conn, conn.transaction():
        published = topic[-1][0] if topic else 0
        rows = await conn.fetch(
            "SELECT seq, payload FROM outbox WHERE seq > $1 ORDER BY seq", published
        )
        topic.extend((r["seq"], bytes(r["payload"])) for r in rows)
        await conn.execute("UPDATE inbox SET applied_at = $1 WHERE applied_at > $2", t, SIM_END)
        await conn.execute("UPDATE outbox SET created_at = $1 WHERE created_at > $2", t, SIM_END)
        await conn.execute(
            "UPDATE outbox_position SET published_seq = (SELECT COALESCE(max(seq), 0) FROM outbox)"
        )


async def row_counts(pool: asyncpg.Pool) -> dict[str, int]:
    return {t: int(await pool.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}


def print_counts(counts: dict[int, dict[str, int]], removed: dict[str, int]) -> None:
    print(f"\nretention over {DAYS} simulated days, {PER_DAY} admissions a day")
    print(f"{'day':>4} " + " ".join(f"{t:>17}" for t in TABLES))
    for day, row in counts.items():
        print(f"{day:>4} " + " ".join(f"{row[t]:>17}" for t in TABLES))
    print("removed: " + ", ".join(f"{t} {n}" for t, n in removed.items()))


async def test_sixty_days_of_drops_keep_every_table_bounded(
    live: tuple[str, asyncpg.Pool],
) -> None:
    url, pool = live
    settings = load_settings(
        database_url=url, kafka_bootstrap_servers="unused", fanfare_webhook_secret="unused"
    )
    clock = ManualClock(T0)
    topic: list[tuple[int, bytes]] = []
    housekeeping = Housekeeping(settings, batch=max(50, PER_DAY))
    drops = Drops(pool)
    counts: dict[int, dict[str, int]] = {}
    for day in range(DAYS):
        same, again = drops.resent(day)
        for part in (drops.opening(day), drops.endings(day), same + again):
            await drops.apply(part)
        await end_of_day(pool, day, topic)
        clock.advance(86_400)
        await housekeeping.drain(pool, clock.now())
        for c in same:  # the inbox still knows the delivery: not applied again
            assert drops.outcomes[str(c.command_id)] == ["active"]
        for c in again:  # the grant is refused, its admission row there or not
            assert drops.outcomes[str(c.command_id)] == ["duplicate_grant"]
        if day % 10 == 9:
            counts[day + 1] = await row_counts(pool)
            await assert_counters_match_rows(pool)
    print_counts(counts, housekeeping.removed)
    assert_bounded(counts)
    # A retry kept pending goes with the admission's other facts.
    pending = await pool.fetchval(
        "SELECT count(*) FROM admission_endings WHERE outcome = 'active' AND follows IS NULL"
    )
    assert 0 < pending <= 31
    assert await pool.fetchval(
        "SELECT count(*) FROM grant_tombstones WHERE admission_grant = $1",
        ids.grant_digest(grant(DAYS - 33, 0)),
    )
    assert await rebuilt_differences(settings, topic, clock.now()) == []


async def rebuilt_differences(
    settings: Settings, topic: list[tuple[int, bytes]], now: datetime
) -> list[str]:
    """What `replay --verify` does: every event folded into a scratch
    database, which is pruned to the live one's cutoffs, then compared."""
    async with scratch_database(settings.database_url, "retention_rebuilt") as url:
        reader, writer = await asyncpg.connect(url), await asyncpg.connect(url)
        try:
            planner = Planner(reader, fresh=True)
            for start in range(0, len(topic), 5000):
                part = topic[start : start + 5000]
                planned = await planner.plan([(seq, decode_event(p)) for seq, p in part])
                async with writer.transaction():
                    await write_planned(writer, planned)
                planner.committed(planned)
        finally:
            await reader.close()
            await writer.close()
        pool = await postgres.create_pool(url, max_size=1)
        try:
            await retention.drain(pool, retention.cutoffs(settings, now), 1000)
        finally:
            await pool.close()
        reports = await compare(settings.database_url, url)
    print("rebuilt and compared: " + ", ".join(f"{r.table} {r.compared}" for r in reports))
    return [d.render() for r in reports for d in r.diffs]


def assert_bounded(counts: dict[int, dict[str, int]]) -> None:
    """Past the longest retention (history plus inbox, the tombstones'), a
    table holds what the last window wrote: no more at day 60 than at 40."""
    history = 31 * PER_DAY  # a row a day per consumer, 30 days and today
    bounds = {
        "inbox": 8 * (4 * PER_DAY + 4 + 3 * RESENT),
        "outbox": 8 * 12 * PER_DAY,
        "admissions": history,
        "reservations": history,
        "admission_endings": 31 * (PER_DAY + 2),
        "cart_versions": history + 7 * PER_DAY,
        "carts": 7 * PER_DAY,
        "grant_tombstones": 8 * PER_DAY + 2 * RESENT,
        "sales_retired": 7,  # a row per experience and product
    }
    for table, bound in bounds.items():
        assert counts[DAYS][table] <= bound, (table, counts[DAYS][table], bound)
        assert counts[DAYS][table] <= counts[DAYS - 20][table] + PER_DAY, table
