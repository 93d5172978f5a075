"""Processes without an HTTP role of their own (consumer here) serve /healthz, /readyz and
/metrics on OPS_PORT, and the metrics move with the work done."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
from prometheus_client import REGISTRY

from tests import builders as b
from tests.conftest import service_env
from tests.helpers import ServiceProcess, free_port, unique, wait_for
from tests.isolated import isolated_settings, produce_bulk
from tests.stack import Stack
from worker import metrics
from worker.adapters import kafka, kafka_sender, queries
from worker.config import Settings
from worker.roles.scheduler import SCHEDULER_LOCK_KEY, ExpiryScheduler


async def test_consumer_process_serves_ops_endpoints_and_counts_holds(
    stack: Stack, settings: Settings
) -> None:
    async with isolated_settings(stack, settings, partitions=2) as iso:
        port = free_port()
        proc = ServiceProcess(["consumer"], service_env(iso))
        proc.env["OPS_PORT"] = str(port)
        # Named experiences are opt-in (the default labels every one `all`).
        proc.env["METRICS_EXPERIENCE_LABELS"] = "1"
        base = f"http://127.0.0.1:{port}"
        await proc.start()
        try:
            async with aiohttp.ClientSession() as http:

                async def answers(path: str) -> int:
                    try:
                        async with http.get(base + path) as r:
                            return r.status
                    except aiohttp.ClientError:
                        return 0

                assert await wait_for(lambda: answers("/healthz"), timeout=30) == 200
                assert await wait_for(lambda: answers("/readyz"), timeout=30) == 200
                exp, product = unique("queue"), unique("prod")
                await produce_bulk(
                    iso,
                    [
                        b.stock(product, 5),
                        b.cart(exp, "c1", b.line(product, 2)),
                    ],
                )

                # Stock is keyed by product (another partition): wait for it.
                async def stocked() -> bool:
                    async with http.get(base + "/metrics") as r:
                        text = await r.text()
                    return 'outcome="set",type="stock.set"' in text

                await wait_for(stocked, timeout=30)
                await produce_bulk(iso, [b.admit(exp, "c1", f"{exp}-g")])

                async def created_counted() -> bool:
                    async with http.get(base + "/metrics") as r:
                        text = await r.text()
                    return (
                        f'fanfare_reservations_holds_created_total{{experience="{exp}"}} 1.0'
                        in text
                    )

                await wait_for(created_counted, timeout=30)
                async with http.get(base + "/metrics") as r:
                    text = await r.text()
                assert "fanfare_reservations_batches_applied_total" in text
                assert 'fanfare_reservations_commands_applied_total{outcome="active"' in text
        finally:
            await proc.stop()


def test_the_experience_label_is_all_by_default_and_capped_when_named() -> None:
    unnamed = metrics.ExperienceLabels(0)
    assert {unnamed(f"exp-{i}") for i in range(50)} == {metrics.ALL_EXPERIENCES}
    named = metrics.ExperienceLabels(2)
    assert [named(e) for e in ("a", "b", "c", "a", "d", "b")] == [
        "a",
        "b",
        metrics.OTHER_EXPERIENCES,
        "a",
        metrics.OTHER_EXPERIENCES,
        "b",
    ]


async def test_a_standby_scheduler_exports_the_database_gauges(
    settings: Settings, db: asyncpg.Pool
) -> None:
    """Another replica leads (it holds the lock: the session's service, or
    this connection when that one is not running); this one stands by and
    still exports holds_active, read from the same database."""
    leader = await db.acquire()
    took = await leader.fetchval("SELECT pg_try_advisory_lock($1)", SCHEDULER_LOCK_KEY)
    try:
        metrics.HOLDS_ACTIVE.set(-1)
        # A standby never produces: the producer is never started.
        producer = kafka.durable_producer(settings)
        standby = ExpiryScheduler(settings, db, kafka_sender.ProducerSlot(producer, None))
        stop = asyncio.Event()
        task = asyncio.create_task(standby.run(stop))
        try:

            async def exported() -> bool:
                active = await queries.active_hold_count(db)
                return REGISTRY.get_sample_value("fanfare_reservations_holds_active") == active

            await wait_for(exported, timeout=15)
            assert not standby.leader
        finally:
            stop.set()
            await task
            await producer.stop()
    finally:
        if took:
            await leader.execute("SELECT pg_advisory_unlock($1)", SCHEDULER_LOCK_KEY)
        await db.release(leader)
