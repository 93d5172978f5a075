"""Outbox relay: publishes committed events to the events topic, in commit
order per key, at least once (a crash after the send and before marking
re-sends the same event ids; subscribers dedupe on them)."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
from aiokafka.errors import KafkaError

from worker import metrics
from worker.adapters.kafka import ProducerSlot, producer_from
from worker.config import Settings
from worker.logs import get_logger

log = get_logger("worker.relay")

# One relay publishes at a time, whatever the replica count: concurrent
# relays would interleave batches and break per-key order.
RELAY_LOCK_KEY = 0x52454C4159  # "RELAY"
# The outbox sequence number: the global commit order of the events. Each
# partition carries increasing values (the relay publishes in order), so a
# rebuild merges partitions by it and folds in exactly the committed order.
SEQ_HEADER = "outbox-seq"


class OutboxRelay:
    def __init__(
        self, settings: Settings, pool: asyncpg.Pool, producers: ProducerSlot, batch: int = 500
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.producers = producers
        self.batch = batch
        self.published = 0

    async def run(self, stop: asyncio.Event, idle_s: float = 0.05) -> None:
        delay = idle_s
        while not stop.is_set():
            try:
                sent = await self.publish_once()
                if sent < self.batch:
                    # Caught up (or nearly): the backlog is what arrived since.
                    metrics.OUTBOX_BACKLOG.set(
                        await self.pool.fetchval(
                            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
                        )
                    )
                delay = idle_s if sent else min(delay * 2, 0.5)
            except (
                KafkaError,
                TimeoutError,
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
            ) as exc:
                log.warning("relay_retry", error=type(exc).__name__, detail=str(exc)[:200])
                delay = 1.0
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)

    async def publish_once(self) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RELAY_LOCK_KEY):
                return 0
            rows = await conn.fetch(
                """SELECT seq, partition_key, payload FROM outbox
                   WHERE published_at IS NULL ORDER BY seq LIMIT $1""",
                self.batch,
            )
            if not rows:
                return 0
            # Sends are pipelined; the idempotent producer keeps their order
            # per partition, and we wait for every acknowledgement.
            timeout = self.settings.produce_timeout_seconds * 2
            async with producer_from(self.producers, timeout) as producer:
                futures = [
                    await producer.send(
                        self.settings.events_topic,
                        bytes(r["payload"]),
                        key=r["partition_key"].encode("utf-8"),
                        headers=[(SEQ_HEADER, str(r["seq"]).encode("ascii"))],
                    )
                    for r in rows
                ]
                await asyncio.wait_for(asyncio.gather(*futures), timeout=timeout)
            await conn.execute(
                "UPDATE outbox SET published_at = now() WHERE seq = ANY($1::bigint[])",
                [r["seq"] for r in rows],
            )
        self.published += len(rows)
        metrics.OUTBOX_PUBLISHED.inc(len(rows))
        return len(rows)
