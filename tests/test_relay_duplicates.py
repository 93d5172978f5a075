"""The relay across a broker SIGKILL mid-publish (README, "Events as a
contract"): every outbox event reaches the events topic, none twice, and
each partition's `outbox-seq` only grows.

A broker of this module's own is SIGKILLed while the relay publishes a
steady stream of outbox rows, then started again on the same data. The
relay's publish in flight ends with an unknown outcome: the dead broker may
have appended records it never acknowledged. Without the relay's look at
each partition's last `outbox-seq`, those were sent again (the duplicates an
independent fault run saw). The figures of each run go to
.stack/test/relay-duplicates.json."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.conftest import service_env
from tests.faults_support import log_events
from tests.helpers import REPO, ServiceProcess, wait_for
from tests.isolated import isolated_settings
from tests.own_broker import OwnBroker
from tests.stack import Stack
from worker.adapters.kafka import SEQ_HEADER
from worker.config import Settings

pytestmark = pytest.mark.integration

BROKER = OwnBroker("test-relay", "TEST_RELAY_KAFKA_PORT")
SUMMARY = REPO / ".stack" / "test" / "relay-duplicates.json"
PARTITIONS = 6
ROWS_PER_TICK = 100
TICK_S = 0.02
AFTER_RESTART = 4000  # rows written once the broker is back


@pytest.fixture(scope="module")
def relay_broker() -> Iterator[str]:
    with BROKER.running() as bootstrap:
        yield bootstrap


@pytest_asyncio.fixture(loop_scope="session")
async def relay_settings(
    stack: Stack, settings: Settings, relay_broker: str
) -> AsyncIterator[Settings]:
    base = settings.model_copy(
        update={"kafka_bootstrap_servers": relay_broker, "produce_timeout_seconds": 2.0}
    )
    async with isolated_settings(stack, base, partitions=PARTITIONS) as iso:
        yield iso


async def _feed(pool: asyncpg.Pool, stop: asyncio.Event) -> int:
    """Outbox rows as the consumers write them (24 keys), until told."""
    written = 0
    while not stop.is_set() and written < 200_000:
        await pool.execute(
            """INSERT INTO outbox (event_id, event_type, partition_key, payload)
               SELECT gen_random_uuid(), 'test.event', 'exp-' || (g % 24),
                      convert_to('{"n":' || g || '}', 'UTF8')
               FROM generate_series($1::int, $1::int + $2::int - 1) AS g""",
            written,
            ROWS_PER_TICK,
        )
        written += ROWS_PER_TICK
        await asyncio.sleep(TICK_S)
    return written


async def _published(pool: asyncpg.Pool) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE seq <= (SELECT published_seq FROM outbox_position)"
        )
    )


async def _read_topic(settings: Settings, topic: str) -> dict[int, list[int]]:
    """Every record's outbox-seq, per partition, in offset order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        seqs: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
        deadline = time.monotonic() + 60
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, "events topic not read whole within 60 s"
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for r in records:
                    seqs[tp.partition].append(int(dict(r.headers)[SEQ_HEADER]))
        return seqs
    finally:
        await consumer.stop()


def _record(figures: dict[str, object], path: Path = SUMMARY) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    runs: list[object] = []
    with suppress(OSError, ValueError):
        runs = json.loads(path.read_text())
    path.write_text(json.dumps([*runs, figures], indent=2) + "\n")


async def test_broker_sigkill_mid_publish_sends_no_event_twice(relay_settings: Settings) -> None:
    iso = relay_settings
    pool = await asyncpg.create_pool(iso.database_url, min_size=1, max_size=3)
    assert pool is not None
    relay = ServiceProcess(["relay"], service_env(iso, OPS_PORT="0", PRODUCE_TIMEOUT_SECONDS="2"))
    stop = asyncio.Event()
    feeder: asyncio.Task[int] | None = None
    try:
        await relay.start()
        feeder = asyncio.create_task(_feed(pool, stop))
        await wait_for(lambda: _published_at_least(pool, 3000), timeout=60, interval=0.05)

        os.kill(BROKER.pid(), signal.SIGKILL)  # mid-publish: the stream never pauses
        killed_at = time.monotonic()
        published_at_kill = await _published(pool)

        async def noticed() -> bool:
            return bool(log_events(relay, "relay_retry"))

        await wait_for(noticed, timeout=60, interval=0.1)
        await asyncio.to_thread(BROKER.run, "start")
        restarted_after = time.monotonic() - killed_at
        written_at_restart = int(await pool.fetchval("SELECT count(*) FROM outbox"))
        await wait_for(
            lambda: _written_at_least(pool, written_at_restart + AFTER_RESTART),
            timeout=60,
            interval=0.1,
        )
        stop.set()
        written = await feeder

        async def all_published() -> bool:
            return await _published(pool) == written

        await wait_for(all_published, timeout=120, interval=0.2)
        assert relay.proc is not None
        assert relay.proc.poll() is None, relay.tail()
        seqs = await _read_topic(iso, iso.events_topic)
    finally:
        stop.set()
        if feeder is not None and not feeder.done():
            feeder.cancel()
        await relay.stop()
        await pool.close()

    on_topic = Counter(s for per in seqs.values() for s in per)
    duplicates = sum(n - 1 for n in on_topic.values())
    step_backs = sum(
        1 for per in seqs.values() for before, after in itertools.pairwise(per) if after <= before
    )
    found = sum(int(e.get("events", 0)) for e in log_events(relay, "relay_found_published"))
    figures = {
        "written": written,
        "published_at_kill": published_at_kill,
        "broker_down_s": round(restarted_after, 1),
        "records_on_topic": sum(on_topic.values()),
        "duplicates": duplicates,
        "step_backs": step_backs,
        "found_on_kafka_not_resent": found,
        "relay_retries": len(log_events(relay, "relay_retry")),
        "producer_replaced": len(log_events(relay, "producer_replaced")),
    }
    _record(figures)
    # What the README promises: every event once, in sequence per partition.
    assert set(on_topic) == set(range(1, written + 1)), figures
    assert duplicates == 0, figures
    assert step_backs == 0, figures


async def _published_at_least(pool: asyncpg.Pool, n: int) -> bool:
    return await _published(pool) >= n


async def _written_at_least(pool: asyncpg.Pool, n: int) -> bool:
    return bool(await pool.fetchval("SELECT count(*) >= $1 FROM outbox", n))


async def test_relay_sigkilled_between_send_and_mark_its_successor_sends_nothing_twice(
    relay_settings: Settings,
) -> None:
    """A relay SIGKILLed after Kafka acknowledged its publish and before it
    marked the rows (a testing hook kills it there, at its first publish).
    The next relay to lead looks at the partitions first: the events the
    dead one published are marked, not sent again."""
    iso = relay_settings
    pool = await asyncpg.create_pool(iso.database_url, min_size=1, max_size=3)
    assert pool is not None
    env = {"OPS_PORT": "0", "PRODUCE_TIMEOUT_SECONDS": "2"}
    dying = ServiceProcess(
        ["relay"], service_env(iso, **env, WORKER_TEST_CRASH_POINT="relay_after_send")
    )
    successor = ServiceProcess(["relay"], service_env(iso, **env))
    stop = asyncio.Event()
    feeder: asyncio.Task[int] | None = None
    try:
        feeder = asyncio.create_task(_feed(pool, stop))
        await wait_for(lambda: _written_at_least(pool, 1000), timeout=60, interval=0.05)
        await dying.start()
        assert dying.proc is not None
        assert await asyncio.to_thread(dying.proc.wait, 60) == -signal.SIGKILL, dying.tail()
        assert await _published(pool) == 0  # it never marked anything
        await successor.start()
        await wait_for(lambda: _published_at_least(pool, 3000), timeout=60, interval=0.05)
        stop.set()
        written = await feeder

        async def all_published() -> bool:
            return await _published(pool) == written

        await wait_for(all_published, timeout=120, interval=0.2)
        seqs = await _read_topic(iso, iso.events_topic)
    finally:
        stop.set()
        if feeder is not None and not feeder.done():
            feeder.cancel()
        await dying.stop()
        await successor.stop()
        await pool.close()

    on_topic = Counter(s for per in seqs.values() for s in per)
    found = sum(int(e.get("events", 0)) for e in log_events(successor, "relay_found_published"))
    figures = {
        "fault": "relay SIGKILL between send and mark, successor leads",
        "written": written,
        "duplicates": sum(n - 1 for n in on_topic.values()),
        "found_on_kafka_not_resent": found,
    }
    _record(figures)
    assert found > 0, figures  # the dead relay's publish was on Kafka
    assert set(on_topic) == set(range(1, written + 1)), figures
    assert figures["duplicates"] == 0, figures
    assert all(b < a for per in seqs.values() for b, a in itertools.pairwise(per)), figures
