"""Issue 7, reprocess: deciding the untouched command log again, with the
same engine, reproduces every live outcome and reservation; and one
experience alone reprocesses identically when no other shares its stock."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg

from tests import builders as b
from tests.conftest import service_env
from tests.helpers import ServiceProcess, run_worker, wait_for
from tests.isolated import isolated_settings, produce_bulk
from tests.stack import Stack
from tests.traffic import T0, stock_levels, traffic
from worker.config import Settings
from worker.domain.commands import CommandBase


def _solo() -> list[CommandBase]:
    """An experience with stock of its own."""
    cmds: list[CommandBase] = [b.stock("solo-item", 5)]
    for n in range(8):
        at = T0 + timedelta(seconds=n)
        cmds += [
            b.cart("solo", f"s{n}", b.line("solo-item", 1), at=at),
            b.admit("solo", f"s{n}", f"solo-{n}", at),
        ]
        if n % 3 == 0:
            cmds.append(b.end("solo", f"s{n}", f"solo-{n}", at=at + timedelta(seconds=9)))
    return cmds


async def test_reprocess_of_an_untouched_log_reports_no_difference(
    stack: Stack, settings: Settings
) -> None:
    async with isolated_settings(stack, settings, partitions=3) as iso:
        env = service_env(iso, OPS_PORT="0", CONSUMER_BATCH_MAX="30")
        consumers = [ServiceProcess(["consumer"], env), ServiceProcess(["consumer"], env)]
        for c in consumers:
            await c.start()
        conn = await asyncpg.connect(iso.database_url)
        try:
            levels = stock_levels(scale=2)
            await produce_bulk(iso, levels)
            await wait_for(
                lambda: conn.fetchval("SELECT count(*) = $1 FROM stock", len(levels)), timeout=60
            )
            commands = [*traffic(seed=5, consumers=80), *_solo()]
            await produce_bulk(iso, commands)
            total = len({c.command_id for c in [*levels, *commands]})
            await wait_for(
                lambda: conn.fetchval("SELECT count(*) >= $1 FROM inbox", total), timeout=120
            )
            held = await conn.fetchval("SELECT count(*) FROM reservations")
            assert held > 20
        finally:
            await conn.close()
            for c in consumers:
                await c.stop()

        result = await asyncio.to_thread(run_worker, env, "reprocess")
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"reprocess: {len(levels) + len(commands):,} commands read")
        assert f"{total:,} applied" in lines[0]
        # The traffic's experiences and one subject per product its stock levels set.
        assert lines[-1] == "no differences: 11 experience(s) identical"

        solo = await asyncio.to_thread(run_worker, env, "reprocess", "--experience", "solo")
        assert solo.returncode == 0, solo.stdout + solo.stderr
        assert "of other experiences skipped" in solo.stdout
        assert solo.stdout.splitlines()[-1] == "no differences: 1 experience(s) identical"
