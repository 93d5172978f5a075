"""Consumer failover by static membership (README, Reliability): a consumer
SIGKILLed and started again under its instance id takes its own partitions
back without a rebalance; one stopped with SIGTERM leaves the group, so the
other member takes its partitions at once.

Both run with a 30 s session timeout: had the broker waited for the session
to expire (what happened before), nothing on those partitions could apply
within 15 s. Every wait is for a positive signal (a log line, an inbox row)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import asyncpg
import pytest

from tests.faults_support import Processes, assignments, processes
from tests.helpers import (
    ServiceProcess,
    json_lines,
    produce_commands,
    set_stock_command,
    wait_for,
)
from tests.isolated import isolated_settings
from tests.stack import Stack
from worker.adapters.kafka import _key_hash
from worker.config import ConfigError, Settings, load_settings

pytestmark = pytest.mark.integration

PARTITIONS = 6
SESSION_MS = 30_000
# Far below the session timeout, far above a process start on a busy machine.
BACK_WITHIN_S = 15.0


def _held(proc: ServiceProcess) -> list[int]:
    """The partitions the process was last assigned ([] before any)."""
    found = assignments(proc)
    return sorted(found[-1]["partitions"]) if found else []


def _products_on(partitions: list[int], tag: str) -> list[str]:
    """One product id (a stock command's key) per partition given."""
    wanted = set(partitions)
    chosen: dict[int, str] = {}
    n = 0
    while wanted - set(chosen):
        product = f"sku-{tag}-{n}"
        n += 1
        part = _key_hash(product.encode()) % PARTITIONS
        if part in wanted and part not in chosen:
            chosen[part] = product
    return [chosen[p] for p in sorted(chosen)]


async def _applied_on(settings: Settings, pool: asyncpg.Pool, partitions: list[int]) -> float:
    """Produce one command to each partition; seconds until all are applied."""
    commands = [set_stock_command(p, 5) for p in _products_on(partitions, uuid.uuid4().hex[:6])]
    started = time.monotonic()
    await produce_commands(settings, commands)
    wanted = [c.command_id for c in commands]

    async def applied() -> bool:
        n = await pool.fetchval(
            "SELECT count(*) FROM inbox WHERE command_id = ANY($1::uuid[])", wanted
        )
        return bool(n == len(wanted))

    await wait_for(applied, timeout=BACK_WITHIN_S, interval=0.05)
    return time.monotonic() - started


async def _two_members(
    procs: Processes, group: str
) -> tuple[dict[str, str], ServiceProcess, ServiceProcess]:
    session = str(SESSION_MS)
    env_a = procs.env(CONSUMER_INSTANCE_ID=f"{group}-a", CONSUMER_SESSION_TIMEOUT_MS=session)
    env_b = procs.env(CONSUMER_INSTANCE_ID=f"{group}-b", CONSUMER_SESSION_TIMEOUT_MS=session)
    a = await procs.start("consumer", env_a)

    async def alone() -> bool:
        return _held(a) == list(range(PARTITIONS))

    # Alone first: the first member of a group is its leader.
    await wait_for(alone, timeout=60, interval=0.1)
    b = await procs.start("consumer", env_b)

    async def split() -> bool:
        held_a, held_b = _held(a), _held(b)
        return bool(held_a and held_b and sorted(held_a + held_b) == list(range(PARTITIONS)))

    await wait_for(split, timeout=60, interval=0.1)
    return env_a, a, b


@pytest.mark.parametrize("victim", ["leader", "follower"])
async def test_sigkilled_static_member_takes_its_partitions_back_without_a_rebalance(
    stack: Stack, settings: Settings, victim: str
) -> None:
    async with (
        isolated_settings(stack, settings, partitions=PARTITIONS) as iso,
        processes(iso) as procs,
    ):
        pool = await asyncpg.create_pool(iso.database_url, min_size=1, max_size=2)
        assert pool is not None
        try:
            env_a, a, b = await _two_members(procs, iso.consumer_group)
            if victim == "follower":
                env_a, a, b = _env_of(b), b, a
            mine, theirs = _held(a), _held(b)
            b_assignments = len(assignments(b))
            await _applied_on(iso, pool, list(range(PARTITIONS)))  # both apply

            killed_at = time.monotonic()
            await procs.kill(a)
            again = await procs.start("consumer", env_a)
            took = await _applied_on(iso, pool, mine)
            back_after = time.monotonic() - killed_at

            # The restarted process holds exactly what the dead one held,
            # and the survivor was never reassigned: no rebalance happened.
            assert _held(again) == mine
            assert len(assignments(b)) == b_assignments
            assert _held(b) == theirs
            assert back_after < BACK_WITHIN_S, (back_after, took)
            procs.assert_alive()
        finally:
            await pool.close()


async def test_sigterm_leaves_the_group_so_the_other_member_takes_over_at_once(
    stack: Stack, settings: Settings
) -> None:
    async with (
        isolated_settings(stack, settings, partitions=PARTITIONS) as iso,
        processes(iso) as procs,
    ):
        pool = await asyncpg.create_pool(iso.database_url, min_size=1, max_size=2)
        assert pool is not None
        try:
            _, a, b = await _two_members(procs, iso.consumer_group)
            mine = _held(a)
            stopped_at = time.monotonic()
            await procs.terminate(a)
            left = [e for e in _log(a) if e.get("event") == "group_left"]
            assert left, a.tail()

            async def all_to_b() -> bool:
                return _held(b) == list(range(PARTITIONS))

            await wait_for(all_to_b, timeout=BACK_WITHIN_S, interval=0.05)
            await _applied_on(iso, pool, mine)
            assert time.monotonic() - stopped_at < BACK_WITHIN_S
            procs.assert_alive()
        finally:
            await pool.close()


def _env_of(proc: ServiceProcess) -> dict[str, str]:
    return proc.env


def _log(proc: ServiceProcess) -> list[dict[str, Any]]:
    entries, _ = json_lines(proc.log_path.read_text(errors="replace"))
    return entries


def test_instance_id_and_heartbeat_settings_are_checked() -> None:
    base: dict[str, Any] = {
        "database_url": "postgresql://x@127.0.0.1/x",
        "kafka_bootstrap_servers": "127.0.0.1:1",
        "fanfare_webhook_secret": "s",
    }
    # An empty downward-API value means dynamic membership, never a shared id.
    assert load_settings(**base, consumer_instance_id="  ").consumer_instance_id is None
    assert load_settings(**base, consumer_instance_id="pod-1").consumer_instance_id == "pod-1"
    with pytest.raises(ConfigError, match="CONSUMER_HEARTBEAT_INTERVAL_MS"):
        load_settings(**base, consumer_session_timeout_ms=6000, consumer_heartbeat_interval_ms=3000)
