"""The expiry scheduler: publishes an expiry command for every active
admission whose `expires_at` has passed. It never changes state itself.

Several replicas are safe: only the holder of a PostgreSQL advisory lock
scans (the others wait to take over), so there is no storm of duplicates; and
any duplicate that does occur (a takeover, a re-publish of an expiry not yet
applied) carries the same command id, derived from the grant and its
`expires_at`, so the consumers' inbox drops it.

The leader also runs housekeeping (worker.roles.housekeeping): retention's
deletions, one small batch per table per tick while there is a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

import asyncpg

from worker import metrics
from worker.adapters import postgres, queries
from worker.adapters.kafka_sender import ProducerSlot, producer_from
from worker.adapters.queries import DueExpiry
from worker.adapters.store import Conn
from worker.clock import Clock, SystemClock
from worker.config import Settings
from worker.domain import expiry
from worker.domain.commands import EndAdmission, encode_command
from worker.logs import get_logger
from worker.roles.housekeeping import Housekeeping

log = get_logger("worker.scheduler")

SCHEDULER_LOCK_KEY = 0x5343484544  # "SCHED"
GAUGE_INTERVAL_S = 5.0


def expiry_command(due: DueExpiry, received_at: datetime) -> EndAdmission:
    """The expiry of one admission; every replica derives the same id."""
    return expiry.expiry_command(
        due.experience_id, due.consumer_id, due.grant_digest, due.expires_at, received_at
    )


class ExpiryScheduler:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        producers: ProducerSlot,
        clock: Clock | None = None,
        max_sleep_s: float = 0.5,
        republish_after_s: float = 30.0,
        batch: int = 2000,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.producers = producers
        self.clock = clock or SystemClock()
        self.max_sleep_s = max_sleep_s
        self.republish_after = timedelta(seconds=republish_after_s)
        self.batch = batch
        # Expiries published and not yet applied, with when: not re-sent
        # every scan, only after `republish_after` as a safety net.
        self._sent: dict[str, datetime] = {}
        self.published = 0
        self.leader = False
        self._gauges_due = 0.0
        self.housekeeping = Housekeeping(settings)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with self.pool.acquire() as lock_conn:
                    await self._lead_while_locked(lock_conn, stop)
            except postgres.FAILURES as exc:
                log.warning("scheduler_retry", error=type(exc).__name__, detail=str(exc)[:200])
                self.leader = False
                await self._sleep(stop, 1.0)

    async def _lead_while_locked(self, lock_conn: Conn, stop: asyncio.Event) -> None:
        # Session-level lock on a connection held for as long as we lead; if
        # this process dies its connection closes and another replica leads.
        while not stop.is_set():
            if await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", SCHEDULER_LOCK_KEY):
                break
            # A standby reads the same database: its gauges are as true as the leader's.
            await self._refresh_gauges()
            await self._sleep(stop, 1.0)
        else:
            return
        self.leader = True
        log.info("scheduler_leading")
        try:
            while not stop.is_set():
                await self._sleep(stop, await self.tick())
        finally:
            self.leader = False
            with contextlib.suppress(Exception):
                await lock_conn.execute("SELECT pg_advisory_unlock($1)", SCHEDULER_LOCK_KEY)

    async def tick(self) -> float:
        """Publish what is due; return how long to sleep until the next due."""
        now = self.clock.now()
        await self._refresh_gauges()
        await self.housekeeping.run_due(self.pool, now)
        due = await self.due(now)
        fresh = [d for d in due if self._should_send(d, now)]
        if fresh:
            await self.publish(fresh, now)
        live = {d.grant_digest for d in due}
        self._sent = {g: t for g, t in self._sent.items() if g in live}
        if len(due) >= self.batch:
            return 0.0
        next_due = await queries.next_expiry(self.pool, now)
        if next_due is None:
            return self.max_sleep_s
        return max(0.0, min(self.max_sleep_s, (next_due - now).total_seconds()))

    async def _refresh_gauges(self) -> None:
        """Database-wide gauges, read by every scheduler every few seconds."""
        moment = asyncio.get_running_loop().time()
        if moment < self._gauges_due:
            return
        self._gauges_due = moment + GAUGE_INTERVAL_S
        metrics.HOLDS_ACTIVE.set(await queries.active_hold_count(self.pool))
        drift = await queries.last_reconcile_drift(self.pool)
        if drift is not None:
            metrics.RECONCILE_DRIFT_ROWS.set(drift)

    def _should_send(self, due: DueExpiry, now: datetime) -> bool:
        sent = self._sent.get(due.grant_digest)
        return sent is None or now - sent >= self.republish_after

    async def due(self, now: datetime) -> list[DueExpiry]:
        return await queries.due_expiries(self.pool, now, self.batch)

    async def publish(self, due: list[DueExpiry], now: datetime) -> None:
        timeout = self.settings.produce_timeout_seconds * 2
        async with producer_from(self.producers, timeout) as producer:
            futures = []
            for d in due:
                command = expiry_command(d, now)
                futures.append(
                    await producer.send(
                        self.settings.commands_topic,
                        encode_command(command),
                        key=command.partition_key().encode("utf-8"),
                    )
                )
            await asyncio.wait_for(asyncio.gather(*futures), timeout=timeout)
        for d in due:
            self._sent[d.grant_digest] = now
        self.published += len(due)
        metrics.EXPIRIES_PUBLISHED.inc(len(due))
        lag = (now - due[0].expires_at).total_seconds()
        log.info("expiries_published", count=len(due), oldest_lag_s=round(lag, 3))

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)
