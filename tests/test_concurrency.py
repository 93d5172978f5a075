"""Issue 5 acceptance: three consumer processes in one group, 20,000
admissions over six experiences competing for two products (500 and 50
units), with duplicates and re-deliveries mixed in."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson

from tests import builders as b
from tests.conftest import service_env
from tests.engine_backends import assert_counters_match_rows
from tests.helpers import ServiceProcess, unique, wait_for
from tests.isolated import isolated_settings, produce_bulk, read_all
from tests.partitions import key_per_partition
from tests.stack import Stack
from worker.config import Settings
from worker.domain.commands import CommandBase
from worker.domain.events import decode_event

ADMISSIONS = 20_000
# One experience per partition: whatever share of the six partitions each
# of the three consumers is assigned, every one of them has admissions to
# apply (random ids left a consumer idle in about one run of four).
PARTITIONS = 6
EXPERIENCES = PARTITIONS


def _workload(big: str, small: str) -> tuple[list[CommandBase], int]:
    rng = random.Random(7)
    experiences = key_per_partition(unique("queue"), PARTITIONS)
    t0 = datetime.now(UTC)
    carts: list[CommandBase] = []
    admissions: list[CommandBase] = []
    for n in range(ADMISSIONS):
        exp = experiences[n % EXPERIENCES]
        consumer = f"c{n}"
        carts.append(b.cart(exp, consumer, b.line(big, 1), b.line(small, 1), at=t0))
        admissions.append(
            b.admit(exp, consumer, f"{exp}-{consumer}", t0 + timedelta(milliseconds=n))
        )
    # Re-deliveries (the same command again) and the same grant under a new
    # event id, mixed in at random later positions of the same partition.
    extra: list[CommandBase] = []
    for cmd in rng.sample(admissions, 1500):
        extra.append(cmd)
    for cmd in rng.sample(admissions, 500):
        extra.append(cmd.model_copy(update={"command_id": b.admit("x", "y", "z").command_id}))
    rng.shuffle(extra)
    distinct = len(carts) + len(admissions) + 500
    return carts + admissions + extra, distinct


def _latest_assignment(proc: ServiceProcess) -> list[int]:
    lines = [
        orjson.loads(line)
        for line in proc.log_path.read_text().splitlines()
        if '"partitions_assigned"' in line
    ]
    return list(lines[-1]["partitions"]) if lines else []


async def test_three_consumers_never_oversell_and_publish_every_outcome(
    stack: Stack, settings: Settings
) -> None:
    async with isolated_settings(stack, settings, partitions=PARTITIONS) as iso:
        db = await asyncpg.create_pool(iso.database_url, min_size=1, max_size=3)
        assert db is not None
        big, small = unique("prod"), unique("prod")
        procs = [ServiceProcess(["consumer"], service_env(iso, OPS_PORT="0")) for _ in range(3)]
        relay = ServiceProcess(["relay"], service_env(iso, OPS_PORT="0"))
        oversold: list[tuple[int, int, int]] = []
        stop = asyncio.Event()

        async def watch_stock() -> None:
            while not stop.is_set():
                for r in await db.fetch("SELECT on_hand, reserved, sold FROM stock"):
                    if r["reserved"] + r["sold"] > r["on_hand"]:
                        oversold.append((r["on_hand"], r["reserved"], r["sold"]))
                await asyncio.sleep(0.05)

        try:
            for p in procs:
                await p.start()
            await relay.start()

            async def all_members_hold_partitions() -> bool:
                # Only a member with partitions can apply anything: the work
                # starts once the group has settled on all three.
                return all(_latest_assignment(p) for p in procs)

            await wait_for(all_members_hold_partitions, timeout=120, interval=0.5)
            await produce_bulk(iso, [b.stock(big, 500), b.stock(small, 50)])
            await wait_for(lambda: db.fetchval("SELECT count(*) = 2 FROM stock"))
            commands, distinct = _workload(big, small)
            watcher = asyncio.create_task(watch_stock())
            await produce_bulk(iso, commands)
            await wait_for(
                lambda: db.fetchval("SELECT count(*) >= $1 FROM inbox", distinct + 2),
                timeout=600,
                interval=1.0,
            )
            stop.set()
            await watcher

            assert oversold == []
            rows = {
                r["product_id"]: (r["on_hand"], r["reserved"], r["sold"])
                for r in await db.fetch("SELECT * FROM stock")
            }
            assert rows[big] == (500, 500, 0)
            assert rows[small] == (50, 50, 0)
            await assert_counters_match_rows(db)
            assert await db.fetchval("SELECT count(*) FROM admissions") == ADMISSIONS
            dup = await db.fetchval(
                "SELECT count(*) FROM inbox WHERE outcome->>'status' = 'duplicate_grant'"
            )
            assert dup == 500

            for p in procs:
                applied_batches = [
                    orjson.loads(line)
                    for line in p.log_path.read_text().splitlines()
                    if '"batch_applied"' in line
                ]
                assert any(batch["applied"] > 0 for batch in applied_batches), p.tail()

            reservations = {str(r["id"]) for r in await db.fetch("SELECT id FROM reservations")}
            outbox_ids = {str(r["event_id"]) for r in await db.fetch("SELECT event_id FROM outbox")}
            await wait_for(
                lambda: db.fetchval(
                    "SELECT count(*) = 0 FROM outbox WHERE "
                    "seq > (SELECT published_seq FROM outbox_position)"
                ),
                timeout=120,
            )
            raw = await read_all(iso, iso.events_topic, expect_at_least=len(outbox_ids))
            by_id: dict[str, bytes] = {}
            created: dict[str, set[str]] = defaultdict(set)
            for value in raw:
                event = decode_event(value)
                eid = str(event.event_id)
                # A duplicate only ever repeats an id with the same content.
                assert by_id.setdefault(eid, value) == value
                if event.type == "reservation.created":
                    created[str(event.reservation_id)].add(eid)
            assert set(by_id) == outbox_ids  # none missing, none invented
            assert set(created) == reservations
            assert all(len(ids) == 1 for ids in created.values())
        finally:
            stop.set()
            for p in [*procs, relay]:
                await p.stop()
            await db.close()
