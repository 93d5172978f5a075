"""A command the rules cannot handle is parked with its reason and the
partition moves on (guarantee 6), instead of crashing the consumer in a loop."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from tests import builders as b
from tests.conftest import service_env
from tests.helpers import ServiceProcess, unique, wait_for
from tests.isolated import isolated_settings, produce_bulk, read_all
from tests.stack import Stack
from worker.config import Settings


async def test_admission_whose_expiry_overflows_is_parked_and_the_partition_moves_on(
    stack: Stack, settings: Settings
) -> None:
    async with isolated_settings(stack, settings, partitions=1) as iso:
        exp = unique("queue")
        far = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)  # + window overflows
        poison = b.admit(exp, "c1", f"{exp}-far", far)
        after = b.cart(exp, "c2", b.line("p", 1))
        consumer = ServiceProcess(["consumer"], service_env(iso, OPS_PORT="0"))
        await produce_bulk(iso, [poison, after])
        await consumer.start()
        try:
            conn = await asyncpg.connect(iso.database_url)
            try:
                # Positive signal: the command behind the poison was applied.
                await wait_for(
                    lambda: conn.fetchval(
                        "SELECT true FROM inbox WHERE command_id = $1", after.command_id
                    ),
                    timeout=60,
                )
                assert not await conn.fetchval(
                    "SELECT true FROM inbox WHERE command_id = $1", poison.command_id
                )
            finally:
                await conn.close()
            parked = await read_all(iso, iso.dead_letter_topic, expect_at_least=1)
            assert len(parked) == 1
            assert b"9999-12-31" in parked[0]
            assert consumer.proc is not None
            assert consumer.proc.poll() is None  # still running
        finally:
            await consumer.stop()
