"""Outbox relay: publishes committed events to the events topic, in outbox
sequence order, at least once, and records how far it got as one position
(worker.adapters.store.published_seq): one row written per published batch,
never one per event. It reads only up to the outbox horizon, below which no
transaction is still in flight, so no late commit is ever left behind the
position.

A publish that ends without every acknowledgement (a broker failure
mid-publish, a timeout, a database error after the sends) leaves its
outcome unknown: some events may be on their partition already. Before the
next publish, and whenever a relay starts leading (the one before may have
died between sending and marking), the relay reads the `outbox-seq` of each
partition's last record and counts what is there as published instead of
sending it again. Events reach a partition in sequence order (one relay
at a time, the idempotent producer keeps order within a session), so
everything up to that sequence is there. Subscribers still dedupe on the
event id: README, "Events as a contract", says when a re-send remains."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import asyncpg

from worker import metrics
from worker.adapters import kafka, postgres, store
from worker.adapters.kafka import (
    EVENT_TYPE_HEADER,
    SEQ_HEADER,
    last_header_values,
    partition_of,
)
from worker.adapters.kafka_sender import ProducerSlot, producer_from
from worker.adapters.store import Conn
from worker.config import Settings
from worker.logs import get_logger
from worker.roles.consumer import CRASH_POINT_ENV

log = get_logger("worker.relay")

# One relay publishes at a time, whatever the replica count: concurrent
# relays would interleave batches and break per-key order. Held as a
# session lock by the publishing replica; the others wait for it.
RELAY_LOCK_KEY = 0x52454C4159  # "RELAY"
# The outbox sequence number: the global commit order of the events. Each
# partition carries increasing values (the relay publishes in order), so a
# rebuild merges partitions by it and folds in exactly the committed order.


class OutboxRelay:
    def __init__(
        self, settings: Settings, pool: asyncpg.Pool, producers: ProducerSlot, batch: int = 500
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.producers = producers
        self.batch = batch
        self.published = 0
        # Events found on Kafka after an unknown outcome, marked without a re-send.
        self.skipped = 0
        # True until a publish completed cleanly: the next one first looks
        # at what already reached the partitions.
        self.in_doubt = True
        # The sends of a publish that failed: aiokafka may still be retrying
        # them, and a look at the partitions means nothing until they settle.
        self._unsettled: list[asyncio.Future[object]] = []

    async def run(self, stop: asyncio.Event, idle_s: float = 0.05) -> None:
        while not stop.is_set():
            try:
                async with self.pool.acquire() as lock_conn:
                    await self._lead_while_locked(lock_conn, stop, idle_s)
            except postgres.FAILURES as exc:
                log.warning("relay_retry", error=type(exc).__name__, detail=str(exc)[:200])
                await _sleep(stop, 1.0)

    async def _lead_while_locked(self, conn: Conn, stop: asyncio.Event, idle_s: float) -> None:
        # A session-level lock held for as long as we publish: the publisher
        # is one process at a time (not one per round), so its memory of a
        # publish it could not finish is never lost to another replica; if
        # it dies, its connection closes and a standby leads, in doubt.
        while not stop.is_set():
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
                break
            await _sleep(stop, 1.0)
        else:
            return
        # Whoever published before us may have stopped mid-publish.
        self.in_doubt = True
        log.info("relay_leading")
        try:
            delay = idle_s
            while not stop.is_set():
                try:
                    sent = await self.publish_once(conn)
                    if sent < self.batch:
                        # Caught up (or nearly): the backlog is what arrived since.
                        metrics.OUTBOX_BACKLOG.set(await store.outbox_backlog(conn))
                    delay = idle_s if sent else min(delay * 2, 0.5)
                except kafka.UNREACHABLE as exc:
                    log.warning("relay_retry", error=type(exc).__name__, detail=str(exc)[:200])
                    delay = 1.0
                await _sleep(stop, delay)
        finally:
            with contextlib.suppress(Exception):
                await conn.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK_KEY)

    async def publish_once(self, conn: Conn) -> int:
        try:
            return await self._publish(conn)
        except BaseException:
            self.in_doubt = True
            raise

    async def _publish(self, conn: Conn) -> int:
        horizon = await store.outbox_horizon(conn)
        async with conn.transaction():
            rows = await conn.fetch(
                """SELECT seq, event_type, partition_key, payload FROM outbox
                   WHERE seq > (SELECT published_seq FROM outbox_position)
                     AND seq <= $2
                   ORDER BY seq LIMIT $1""",
                self.batch,
                horizon,
            )
            if not rows:
                return 0
            await self._send(rows)
            _crash_hook("relay_after_send")
            await conn.execute(
                "UPDATE outbox_position SET published_seq = $1, updated_at = now()",
                rows[-1]["seq"],
            )
        self._unsettled = []
        self.in_doubt = False
        # Counted as published: the events found on Kafka were published by
        # the publish whose outcome was unknown.
        self.published += len(rows)
        metrics.OUTBOX_PUBLISHED.inc(len(rows))
        return len(rows)

    async def _send(self, rows: list[asyncpg.Record]) -> None:
        """The rows on the events topic, in outbox order, each acknowledged;
        after a publish whose outcome was unknown, only those not there yet."""
        topic = self.settings.events_topic
        timeout = self.settings.produce_timeout_seconds * 2
        async with producer_from(self.producers, timeout) as producer:
            partitions = sorted(await producer.partitions_for(topic))
            placed = [
                (r, partition_of(r["partition_key"].encode("utf-8"), partitions)) for r in rows
            ]
            if self.in_doubt:
                placed = await self._not_yet_on_kafka(placed, partitions, timeout)
            # Sends are pipelined; the idempotent producer keeps their
            # order per partition, and we wait for every acknowledgement.
            futures = [
                await producer.send(
                    topic,
                    bytes(r["payload"]),
                    key=r["partition_key"].encode("utf-8"),
                    partition=partition,
                    headers=[
                        (SEQ_HEADER, str(r["seq"]).encode("ascii")),
                        (EVENT_TYPE_HEADER, r["event_type"].encode("utf-8")),
                    ],
                )
                for r, partition in placed
            ]
            self._unsettled = futures
            await asyncio.wait_for(asyncio.gather(*futures), timeout=timeout)

    async def _not_yet_on_kafka(
        self,
        placed: list[tuple[asyncpg.Record, int]],
        partitions: list[int],
        timeout: float,
    ) -> list[tuple[asyncpg.Record, int]]:
        """The rows whose event is not on its partition yet. Raises (and the
        relay retries later) while the failed publish's sends are still in
        aiokafka's hands: one landing after the look would be sent twice."""
        if self._unsettled:
            _, pending = await asyncio.wait(self._unsettled, timeout=timeout)
            if pending:
                raise TimeoutError(f"{len(pending)} earlier sends still unsettled")
            self._unsettled = []
        last = await last_header_values(
            self.settings, self.settings.events_topic, partitions, SEQ_HEADER, timeout
        )
        there = {p: int(v) for p, v in last.items()}
        missing = [(r, p) for r, p in placed if r["seq"] > there.get(p, 0)]
        found = len(placed) - len(missing)
        if found:
            self.skipped += found
            log.warning("relay_found_published", events=found, first_seq=placed[0][0]["seq"])
        return missing


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def _crash_hook(point: str) -> None:
    """Testing hook, as the consumer's: SIGKILL this process at a named
    point when WORKER_TEST_CRASH_POINT names it."""
    if os.environ.get(CRASH_POINT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
