"""Issue 7, dead letters: a poison command is parked with its reason, shows in
`dlq list`, and once its cause is fixed `dlq replay` re-injects it and it is
applied exactly once, however often it is re-injected.

The poison: a migration shipped a CHECK that is too strict (SKUs in upper
case only), so the merchant's new lower-case SKU cannot be held: the
database refuses the admission's reservation, the consumer parks the
admission instead of blocking the partition. The fix is the follow-up
migration that drops the constraint."""

from __future__ import annotations

import asyncio
import re
import subprocess

import asyncpg

from tests import builders as b
from tests.conftest import service_env
from tests.helpers import ServiceProcess, run_worker, wait_for
from tests.isolated import isolated_settings, produce_bulk, read_all
from tests.stack import Stack
from worker.adapters import kafka
from worker.config import Settings
from worker.domain import ids
from worker.tools.dlq import COLUMNS


def _cells(line: str) -> list[str]:
    """The plain table's columns are at least two spaces apart."""
    return re.split(r"\s{2,}", line.strip())


async def _run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_worker, env, *args)


async def test_parked_command_fixed_and_replayed_is_applied_once(
    stack: Stack, settings: Settings
) -> None:
    async with isolated_settings(stack, settings, partitions=2) as iso:
        conn = await asyncpg.connect(iso.database_url)
        await conn.execute(
            """ALTER TABLE reservations ADD CONSTRAINT reservations_sku_upper
               CHECK (product_id ~ '^[A-Z0-9-]+$')"""
        )
        env = service_env(iso, OPS_PORT="0")
        consumer = ServiceProcess(["consumer"], env)
        await consumer.start()
        try:
            admit = b.admit("drop-tee", "c1", "grant-tee-c1")
            await produce_bulk(
                iso,
                [
                    b.stock("limited-tee", 10, "M"),
                    b.cart("drop-tee", "c1", b.line("limited-tee", 2, "M")),
                ],
            )
            await wait_for(lambda: conn.fetchval("SELECT count(*) = 2 FROM inbox"))
            await produce_bulk(iso, [admit])
            producer = kafka.durable_producer(iso)
            await producer.start()
            try:
                # Not even JSON: parked too, and never decodable.
                await producer.send_and_wait(iso.commands_topic, b"\x00garbage", key=b"drop-tee")
            finally:
                await producer.stop()
            await read_all(iso, iso.dead_letter_topic, expect_at_least=2)

            listed = await _run_cli(env, "dlq", "list")
            assert listed.returncode == 0, listed.stderr
            lines = listed.stdout.splitlines()
            assert _cells(lines[0])[:8] == [*COLUMNS]
            (entry,) = [_cells(ln) for ln in lines if str(admit.command_id) in ln]
            ref, _, origin, error, attempts, _, kind, inbox, reason = entry
            assert (kind, error, attempts, inbox) == (
                "admission.grant",
                "CheckViolationError",
                "1",
                "not applied",
            )
            assert "reservations_sku_upper" in reason
            assert re.fullmatch(rf"{re.escape(iso.commands_topic)} \d+:\d+", origin)
            (garbage,) = [_cells(ln) for ln in lines if "ValidationError" in ln]
            assert garbage[5:7] == ["-", "-"]
            assert lines[-1] == "2 parked command(s)"

            # Nothing was held meanwhile, and the partition went on.
            grant = ids.grant_digest("grant-tee-c1")
            assert await conn.fetchval("SELECT reserved FROM stock") == 0
            assert not await conn.fetchval(
                "SELECT count(*) FROM inbox WHERE command_id = $1", admit.command_id
            )

            # The fix: the follow-up migration drops the over-strict rule.
            await conn.execute("ALTER TABLE reservations DROP CONSTRAINT reservations_sku_upper")
            once = await _run_cli(env, "dlq", "replay", "--offset", ref)
            assert once.returncode == 0, once.stderr
            # Again, and everything else with it: re-injecting an applied
            # command is harmless, the garbage is parked once more.
            again = await _run_cli(env, "dlq", "replay", "--all")
            assert again.returncode == 0, again.stderr
            injected = re.findall(r"-> \S+ (\d+):(\d+)", once.stdout + again.stdout)
            assert len(injected) == 3
            last = {int(p): int(o) for p, o in injected}

            async def consumed_all() -> bool:
                rows = await conn.fetch("SELECT partition, next_offset FROM consumer_positions")
                at = {r["partition"]: r["next_offset"] for r in rows}
                return all(at.get(p, 0) > o for p, o in last.items())

            await wait_for(consumed_all, timeout=60)
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM inbox WHERE command_id = $1", admit.command_id
                )
                == 1
            )
            held = await conn.fetch(
                "SELECT quantity, status FROM reservations WHERE admission_grant = $1", grant
            )
            assert [tuple(r) for r in held] == [(2, "active")]
            assert await conn.fetchval("SELECT reserved FROM stock") == 2
            await read_all(iso, iso.dead_letter_topic, expect_at_least=3)

            relisted = await _run_cli(env, "dlq", "list")
            (entry,) = [_cells(ln) for ln in relisted.stdout.splitlines() if ln.startswith(ref)]
            assert entry[7] == "applied"
            assert relisted.stdout.splitlines()[-1] == "3 parked command(s)"

            bad = await _run_cli(env, "dlq", "replay", "--offset", "7:999")
            assert bad.returncode == 2
            assert "no parked command at 7:999" in bad.stderr
        finally:
            await consumer.stop()
            await conn.close()
