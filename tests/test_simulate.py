"""Issue 19, simulate: a recorded drop decided again under other settings.

The runner on a scratch database decides its own expiries at their times,
between the recorded commands, and the recorded scheduler's where it has
the same ones, however the log is cut into batches. The acceptance tests
record drops through the real service, then run the real CLI: the hot-SKU
bench drop under the recorded settings gives exactly the recorded outcome,
with a pool of 500 another one, and the live database is unchanged; a drop
whose holds the live scheduler expired gives the recorded outcome too."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from bench.stages.hot_sku import drop
from bench.workload import Record, produce
from tests import builders as b
from tests.conftest import service_env
from tests.helpers import ServiceProcess, run_worker, wait_for
from tests.isolated import isolated_settings, produce_bulk
from tests.stack import Stack
from tests.traffic import T0
from worker.adapters import store
from worker.config import Settings
from worker.domain import ids
from worker.domain.commands import CommandBase
from worker.domain.expiry import expiry_command
from worker.domain.model import ExperienceSettings
from worker.domain.outcome import Range
from worker.domain.scenario import RECORDED, Scenario, parse
from worker.engine import Coordinates
from worker.replay.scratch import scratch_database
from worker.simulate.log import CommandLog, Stamped
from worker.simulate.runner import Plan, Run, Simulation

EXP = "sim-drop"


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _story() -> list[CommandBase]:
    """One unit, a 10 s window: a holds it, b is refused, c comes after a's
    window; the recorded scheduler's expiry of a came 0.4 s late."""
    early = {"occurred_at": s(-60), "received_at": s(-60)}
    cmds: list[CommandBase] = [
        b.configure(EXP, window_seconds=10, buffer_seconds=0).model_copy(update=early),
        b.stock("sim-item", 1).model_copy(update=early),
    ]
    for name, at in (("a", 0), ("b", 5), ("c", 20)):
        cmds += [
            b.cart(EXP, name, b.line("sim-item", 1), at=s(at)),
            b.admit(EXP, name, name, s(at)),
        ]
    late = expiry_command(EXP, "a", ids.grant_digest("a"), s(10), s(10.4))
    cmds.insert(6, late)  # after b's admission, before c's cart
    return cmds


async def _run(stack: Stack, scenario: Scenario, chunk: int, until: datetime | None = None) -> Run:
    story = _story()
    stamped = [Stamped(c, c.received_at, Coordinates("t", 0, n)) for n, c in enumerate(story)]
    # The scheduler's expiries of the whole log, after the range too, as the first pass finds them.
    recorded = {c.command_id for c in story if c.source.kind == "scheduler"}
    stamped = [x for x in stamped if until is None or x.at <= until]
    plan = Plan(frozenset({EXP}), Range(until=until), until, until or s(25), ExperienceSettings())
    async with scratch_database(stack.database_url, "simulate_test") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            simulation = Simulation(conn, plan, scenario, recorded)
            for at in range(0, len(stamped), chunk):
                await simulation.decide(stamped[at : at + chunk])
            return await simulation.finish()
        finally:
            await conn.close()


@pytest.mark.parametrize("chunk", [1, 3, 100])
async def test_as_recorded_the_recorded_expiry_comes_where_the_log_has_it(
    stack: Stack, chunk: int
) -> None:
    run = await _run(stack, RECORDED, chunk)
    o = run.outcomes[EXP]
    # a's hold expired (at 10.4 s, as recorded) before c came at 20 s: c holds the unit.
    assert (o.peak_units_held, o.units_held, o.holds_expired_unused) == (1, 1, 1)
    assert dict(o.refusals) == {"INSUFFICIENT_STOCK": 1}  # b only
    # b's admission (it holds nothing) expired on time; c's is due at 30 s.
    assert (run.expiries, run.recorded_expiries, run.dropped_expiries) == (1, 1, 0)
    assert run.parked == 0


async def test_an_expiry_recorded_after_the_range_has_not_happened_in_it(stack: Stack) -> None:
    # The range ends at 10.2 s: a's window ended at 10 s, but the recorded
    # scheduler expired it at 10.4 s, after the range, as the recorded side counts it.
    run = await _run(stack, RECORDED, 100, until=s(10.2))
    o = run.outcomes[EXP]
    assert (o.units_held, o.holds_expired_unused) == (1, 0)
    assert (run.expiries, run.recorded_expiries, run.dropped_expiries) == (0, 0, 0)


@pytest.mark.parametrize("chunk", [1, 3, 100])
async def test_a_shorter_window_expires_between_the_recorded_commands(
    stack: Stack, chunk: int
) -> None:
    run = await _run(stack, parse("window=3"), chunk)
    o = run.outcomes[EXP]
    # a's hold expires at 3 s, before b (5 s) comes, b's at 8 s, before c
    # (20 s), and c's at 23 s, before the end of the range: nobody is refused.
    assert (o.peak_units_held, o.units_held, o.holds_expired_unused) == (1, 0, 3)
    assert dict(o.refusals) == {}
    # The recorded expiry of a at 10 s is none of the simulation's.
    assert (run.expiries, run.recorded_expiries, run.dropped_expiries) == (3, 0, 1)
    if chunk == 100:
        assert run.batches_split == 1  # b came in a's batch: decided again after a's expiry


async def test_a_longer_window_keeps_the_unit_held_past_the_later_shopper(stack: Stack) -> None:
    run = await _run(stack, parse("window=30"), 100)
    o = run.outcomes[EXP]
    # a holds until 30 s, past c (20 s) and the end of the range (25 s).
    assert (o.peak_units_held, o.units_held, o.holds_expired_unused) == (1, 1, 0)
    assert dict(o.refusals) == {"INSUFFICIENT_STOCK": 2}
    assert (run.expiries, run.recorded_expiries, run.dropped_expiries) == (0, 0, 1)


async def test_backfill_hands_the_expired_unit_to_the_refused_shopper(stack: Stack) -> None:
    run = await _run(stack, parse("backfill=on"), 100)
    o = run.outcomes[EXP]
    # a's hold expires at 10.4 s: b (refused at 5 s, admitted until 15 s)
    # holds the unit until its own expiry, then c (20 s) takes it.
    assert o.units_backfilled == 1
    assert (o.peak_units_held, o.units_held, o.holds_expired_unused) == (1, 1, 2)
    assert dict(o.refusals) == {"INSUFFICIENT_STOCK": 1}
    assert (await _run(stack, RECORDED, 100)).outcomes[EXP].units_backfilled == 0


# --- the hot-SKU bench drop, recorded through the service --------------------------------


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_worker(env, *args, timeout=300)


async def _applied(conn: asyncpg.Connection, records: list[Record]) -> None:
    ids_ = [r.command_id for r in records]
    await wait_for(
        lambda: conn.fetchval(
            "SELECT count(*) = $2 FROM inbox WHERE command_id = ANY($1::uuid[])", ids_, len(ids_)
        ),
        timeout=180,
    )


async def _snapshot(conn: asyncpg.Connection) -> dict[str, Any]:
    """Every table of the live database: its row count and a digest of its rows."""
    tables = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
    )
    found = {}
    for t in tables:
        name = t["tablename"]
        found[name] = tuple(
            await conn.fetchrow(
                "SELECT count(*), md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), ''))"
                f' FROM "{name}" r'
            )
        )
    return found


async def _databases(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'simulate_%'")
    return {r["datname"] for r in rows}


async def _record_drop(iso: Settings, env: dict[str, str]) -> str:
    """The hot-SKU drop as the bench feeds it: stock and carts applied first."""
    roles = [ServiceProcess(["consumer"], env), ServiceProcess(["relay"], env)]
    for role in roles:
        await role.start()
    conn = await asyncpg.connect(iso.database_url)
    try:
        hot = drop(admissions=1500, units=1000)
        await produce(iso, hot.setup)
        await _applied(conn, hot.setup)
        await produce(iso, hot.admissions)
        await _applied(conn, hot.admissions)
        await wait_for(lambda: _published(conn), timeout=60)
        return hot.experience
    finally:
        await conn.close()
        for role in roles:
            await role.stop()


async def _published(conn: asyncpg.Connection) -> bool:
    return await store.outbox_backlog(conn) == 0


async def test_the_hot_sku_drop_simulated_as_recorded_is_the_recorded_outcome(
    stack: Stack, settings: Settings
) -> None:
    async with isolated_settings(stack, settings, partitions=3) as iso:
        env = service_env(iso, OPS_PORT="0")
        experience = await _record_drop(iso, env)
        live = await asyncpg.connect(iso.database_url)
        try:
            before, scratch_before = await _snapshot(live), await _databases(live)
            result = await asyncio.to_thread(
                _cli,
                env,
                "simulate",
                experience,
                "--scenario",
                "recorded",
                "--strategy",
                "pool",
                "--pool-size",
                "500",
                "--json",
            )
            assert result.returncode == 0, result.stdout + result.stderr
            typo = await asyncio.to_thread(_cli, env, "simulate", "no-such-drop")
            assert typo.returncode == 2
            assert "no command of experience no-such-drop in the log" in typo.stderr
            assert await _snapshot(live) == before
            assert await _databases(live) == scratch_before  # scratch databases dropped
            held = await live.fetchval("SELECT reserved FROM stock")
        finally:
            await live.close()
    report = orjson.loads(result.stdout)
    [block] = report["experiences"]
    assert block["experienceId"] == experience
    sides = {o.pop("setting"): o for o in block["outcomes"]}
    assert list(sides) == ["recorded", "strategy=pool,pool_size=500", "as recorded"]
    recorded, pooled, again = sides.values()
    assert again == recorded
    assert held == recorded["peakUnitsHeld"] == 1000
    assert recorded["refusalsByReason"] == {"INSUFFICIENT_STOCK": 500}
    assert (pooled["peakUnitsHeld"], pooled["refusalsByReason"]) == (500, {"POOL_EMPTY": 1000})
    assert report["commandsRead"] == 3001


async def _paced_drop(iso: Settings, experience: str) -> None:
    """Shoppers arriving in real time, some buying, some leaving, on 1 s
    windows: most holds end by the live scheduler's expiries."""
    item = f"{experience}-item"
    await produce_bulk(
        iso, [b.stock(item, 15), b.configure(experience, window_seconds=1, buffer_seconds=0)]
    )
    for n in range(60):
        now = datetime.now(UTC)
        cmds: list[CommandBase] = [b.cart(experience, f"c{n}", b.line(item, 1), at=now)]
        cmds.append(b.admit(experience, f"c{n}", f"{experience}-{n}", now))
        if n % 4 == 3:
            cmds.append(
                b.complete(experience, f"c{n - 2}", f"{experience}-{n - 2}", f"o{n}", at=now)
            )
        elif n % 7 == 6:
            cmds.append(b.end(experience, f"c{n - 1}", f"{experience}-{n - 1}", at=now))
        await produce_bulk(iso, cmds)
        await asyncio.sleep(0.06)


async def _settled(conn: asyncpg.Connection) -> bool:
    """Every admission ended and every event published."""
    active = await conn.fetchval("SELECT count(*) FROM admissions WHERE status = 'active'")
    return active == 0 and await store.outbox_backlog(conn) == 0


async def test_a_drop_with_live_expiries_simulated_as_recorded_is_the_recorded_outcome(
    stack: Stack, settings: Settings
) -> None:
    async with isolated_settings(stack, settings, partitions=3) as iso:
        env = service_env(iso, OPS_PORT="0")
        service = ServiceProcess(["serve"], env)
        await service.start()
        conn = await asyncpg.connect(iso.database_url)
        try:
            await _paced_drop(iso, "paced")
            await wait_for(lambda: _settled(conn), timeout=60)
            admitted = [
                r["admitted_at"]
                for r in await conn.fetch("SELECT admitted_at FROM admissions ORDER BY admitted_at")
            ]
        finally:
            await conn.close()
            await service.stop()
        whole = await asyncio.to_thread(_cli, env, "simulate", "paced", "--json")
        # A range cutting through the drop: the same commands on both sides.
        since, until = admitted[10].isoformat(), admitted[40].isoformat()
        part = await asyncio.to_thread(
            _cli, env, "simulate", "paced", "--from", since, "--to", until, "--json"
        )
    for result in (whole, part):
        assert result.returncode == 0, result.stdout + result.stderr
        report = orjson.loads(result.stdout)
        [run] = report["scenarios"]
        assert run["recordedExpiriesKept"] > 0
        assert (run["recordedExpiriesDropped"], run["parked"]) == (0, 0)
        [block] = report["experiences"]
        sides = {o.pop("setting"): o for o in block["outcomes"]}
        assert sides["as recorded"] == sides["recorded"]
        assert sides["recorded"]["holdsExpiredUnused"] > 0
    assert orjson.loads(whole.stdout)["scenarios"][0]["expiries"] == 0
    assert orjson.loads(part.stdout)["commandsAfterRange"] > 0


async def test_every_pass_reads_the_commands_the_first_pass_read(
    stack: Stack, settings: Settings
) -> None:
    """The live log grows between two passes of one comparison."""
    async with isolated_settings(stack, settings, partitions=3) as iso:
        first = [b.stock(f"grow-{n}", 1) for n in range(6)]
        await produce_bulk(iso, first)
        async with CommandLog(iso, None) as log:
            seen = [x.command.command_id async for _, chunk in log.chunks() for x in chunk]
            ends = log.ends_read
        await produce_bulk(iso, [b.stock(f"grow-{n}", 1) for n in range(6, 10)])
        async with CommandLog(iso, None, ends) as again:
            read = [x.command.command_id async for _, chunk in again.chunks() for x in chunk]
        async with CommandLog(iso, None) as whole:
            grown = [x.command.command_id async for _, chunk in whole.chunks() for x in chunk]
    assert sorted(seen) == sorted(read) == sorted(c.command_id for c in first)
    assert len(grown) == 10
