"""The consumers: the only writers of reservation state.

Each batch from Kafka is applied in one PostgreSQL transaction that also
records the applied command ids (inbox), the resulting events (outbox) and
the consumed position per partition. Kafka offsets are committed only after
that transaction, and are only a hint: on assignment the consumer seeks to
the position stored in PostgreSQL, so a crash at any point re-delivers at
most what the database has not recorded, and the inbox makes that harmless.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from pydantic import ValidationError

from worker import collector, metrics
from worker.adapters import kafka, postgres, store
from worker.adapters.kafka_group import leave_group_static
from worker.adapters.kafka_sender import ProducerSlot, producer_from
from worker.config import Settings
from worker.domain.backfill import BACKFILL_REASON
from worker.domain.commands import Command, decode_command
from worker.domain.events import ReservationCreated, ReservationEnded
from worker.domain.model import ExperienceSettings
from worker.engine import Applied, Coordinates, apply_isolating, not_yet_applied
from worker.logs import get_logger

log = get_logger("worker.consumer")

# Failures that say nothing about the command (the database or the broker,
# for parking, is away): pause and retry, never park.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (*postgres.RETRYABLE, *kafka.UNREACHABLE)

CRASH_POINT_ENV = "WORKER_TEST_CRASH_POINT"


@dataclass(frozen=True)
class Poison:
    record: ConsumerRecord[bytes, bytes]
    error_class: str
    reason: str
    command: Command | None = None  # None when it could not even be decoded


def _crash_hook(point: str) -> None:
    """Testing hook: SIGKILL this process at a named point of the batch cycle
    when WORKER_TEST_CRASH_POINT names it. Leaves a marker file first so the
    test can assert the hook fired."""
    if os.environ.get(CRASH_POINT_ENV) != point:
        return
    marker = os.environ.get("WORKER_TEST_CRASH_MARKER")
    if marker:
        with open(marker, "w") as fh:
            fh.write(point)
    os.kill(os.getpid(), signal.SIGKILL)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: CommandConsumer) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Wait for the batch in flight so no partition changes hands mid-batch.
        async with self.runner.batch_lock:
            log.info("partitions_revoked", partitions=sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.runner.seek_to_stored_positions(assigned)


class CommandConsumer:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        producers: ProducerSlot,
        consumer_factory: Callable[..., AIOKafkaConsumer],
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.producers = producers
        self.consumer = consumer_factory()
        self.topic = settings.commands_topic
        self.batch_lock = asyncio.Lock()
        self.defaults = ExperienceSettings(
            window_seconds=settings.reservation_window_seconds,
            buffer_seconds=settings.reservation_buffer_seconds,
        )
        self.experience_labels = metrics.ExperienceLabels(settings.metrics_experience_labels)
        self.batches_applied = 0
        self.commands_applied = 0
        self._offsets_to_commit: dict[TopicPartition, int] = {}
        self._committing: asyncio.Task[None] | None = None

    async def seek_to_stored_positions(self, assigned: list[TopicPartition]) -> None:
        positions = await store.read_positions(self.pool, self.topic)
        for tp in assigned:
            if tp.partition in positions:
                self.consumer.seek(tp, positions[tp.partition])
        log.info(
            "partitions_assigned",
            partitions=sorted(tp.partition for tp in assigned),
            positions={p: positions.get(p) for p in sorted(tp.partition for tp in assigned)},
        )

    async def run(self, stop: asyncio.Event) -> None:
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))
        await self.consumer.start()
        try:
            while not stop.is_set():
                batch = await self._next_batch()
                if batch:
                    await self.process(batch)
        finally:
            if self._committing is not None:
                await self._committing
            await self.consumer.stop()
            # A clean stop hands the partitions over at once (the batch in
            # flight is done); a crash leaves the static member for its
            # restart to reclaim.
            await leave_group_static(self.settings)

    async def _next_batch(self) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """Wait for records, then take whatever else is already fetched, up to
        the batch size: a fetch often holds only part of what is waiting,
        and a bigger batch costs the same few statements."""
        limit = self.settings.consumer_batch_max
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
        batch = await self.consumer.getmany(
            timeout_ms=self.settings.consumer_poll_ms, max_records=limit
        )
        size = sum(len(recs) for recs in batch.values())
        while batch and size < limit:
            more = await self.consumer.getmany(timeout_ms=0, max_records=limit - size)
            if not more:
                break
            for tp, recs in more.items():
                batch.setdefault(tp, []).extend(recs)
                size += len(recs)
        return batch

    async def process(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        async with self.batch_lock:
            # Only partitions still ours: a revoked partition's records wait
            # for its new owner.
            owned = self.consumer.assignment()
            batch = {tp: recs for tp, recs in batch.items() if tp in owned and recs}
            if not batch:
                return
            await self._apply_with_retry(batch)
        _crash_hook("after_db_commit")
        self._commit_hint({tp: recs[-1].offset + 1 for tp, recs in batch.items()})

    def _commit_hint(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit Kafka offsets in the background, at most one request in
        flight, the newest offsets winning: they are only a hint (PostgreSQL
        holds the real position), so the next batch never waits a broker
        round trip for them."""
        self._offsets_to_commit.update(offsets)
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit_offsets())

    async def _commit_offsets(self) -> None:
        while self._offsets_to_commit:
            owned = self.consumer.assignment()
            offsets = {tp: o for tp, o in self._offsets_to_commit.items() if tp in owned}
            self._offsets_to_commit = {}
            if not offsets:
                continue
            try:
                await self.consumer.commit(offsets)
            except Exception as exc:  # a failed hint is only logged, whatever the cause
                log.warning("offset_commit_failed", error=type(exc).__name__)

    async def _apply_with_retry(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        delay = 0.2
        attempt = 0
        while True:
            attempt += 1
            try:
                with metrics.BATCH_SECONDS.time(), collector.paused():
                    await self._apply(batch, attempt)
                return
            except TRANSIENT_ERRORS as exc:
                log.warning(
                    "batch_retry",
                    error=type(exc).__name__,
                    detail=str(exc)[:200],
                    attempt=attempt,
                    backoff_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _apply(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]], attempt: int
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            partitions = sorted(tp.partition for tp in batch)
            positions = await store.lock_positions(conn, self.topic, partitions)
            fresh: list[ConsumerRecord[bytes, bytes]] = []
            advanced: dict[int, int] = {}
            for tp in sorted(batch, key=lambda t: t.partition):
                start = positions[tp.partition]
                # Records below the stored position were applied by an
                # earlier owner of this partition.
                fresh.extend(r for r in batch[tp] if r.offset >= start)
                advanced[tp.partition] = max(start, batch[tp][-1].offset + 1)
            skipped = sum(len(recs) for recs in batch.values()) - len(fresh)
            decoded, parked = self._decode(fresh)
            todo = await not_yet_applied(conn, decoded)
            _crash_hook("mid_batch")
            by_place = {Coordinates(r.topic, r.partition, r.offset): r for r in fresh}
            results, refused = await self._apply_commands(conn, todo, by_place)
            parked += refused
            # Park poison before the positions move past it: a crash between
            # the two re-parks it (a duplicate in the DLQ), never loses it.
            for poison in parked:
                await self._park(poison, attempt)
            await store.advance_positions(conn, self.topic, advanced)
        applied = len(results)
        self.batches_applied += 1
        self.commands_applied += applied
        _record_metrics(results, parked, self.experience_labels)
        self._record_lag(advanced)
        log.info(
            "batch_applied",
            applied=applied,
            duplicates=len(decoded) - len(todo),
            skipped=skipped,
            parked=len(parked),
            positions=advanced,
        )

    def _decode(
        self, records: list[ConsumerRecord[bytes, bytes]]
    ) -> tuple[list[tuple[Command, Coordinates]], list[Poison]]:
        decoded: list[tuple[Command, Coordinates]] = []
        poison: list[Poison] = []
        for record in records:
            try:
                command: Command = decode_command(record.value or b"")
            except (ValidationError, ValueError) as exc:
                poison.append(Poison(record, type(exc).__name__, str(exc)[:500]))
                continue
            decoded.append((command, Coordinates(record.topic, record.partition, record.offset)))
        return decoded, poison

    async def _apply_commands(
        self,
        conn: store.Conn,
        todo: list[tuple[Command, Coordinates]],
        records: dict[Coordinates, ConsumerRecord[bytes, bytes]],
    ) -> tuple[list[tuple[Command, Applied]], list[Poison]]:
        results, refused = await apply_isolating(conn, todo, self.defaults, TRANSIENT_ERRORS)
        parked = [
            Poison(records[r.at], type(r.error).__name__, str(r.error)[:500], r.command)
            for r in refused
        ]
        return results, parked

    def _record_lag(self, positions: dict[int, int]) -> None:
        for partition, next_offset in positions.items():
            highwater = self.consumer.highwater(TopicPartition(self.topic, partition))
            if highwater is not None:
                metrics.CONSUMER_LAG.labels(str(partition)).set(max(0, highwater - next_offset))

    async def _park(self, poison: Poison, attempt: int) -> None:
        record = poison.record
        headers: list[tuple[str, bytes]] = [
            ("origin-topic", record.topic.encode()),
            ("origin-partition", str(record.partition).encode()),
            ("origin-offset", str(record.offset).encode()),
            ("error-class", poison.error_class.encode()),
            ("error-reason", poison.reason.encode()),
            ("attempts", str(attempt).encode()),
        ]
        timeout = self.settings.produce_timeout_seconds
        async with producer_from(self.producers, timeout) as producer:
            await asyncio.wait_for(
                producer.send_and_wait(
                    self.settings.dead_letter_topic, record.value, key=record.key, headers=headers
                ),
                timeout,
            )
        log.error(
            "command_parked",
            partition=record.partition,
            offset=record.offset,
            error_class=poison.error_class,
            reason=poison.reason,
        )


HOLD_COUNTERS = {
    "reservation.created": metrics.HOLDS_CREATED,
    "reservation.converted": metrics.HOLDS_CONVERTED,
    "reservation.released": metrics.HOLDS_RELEASED,
    "reservation.expired": metrics.HOLDS_EXPIRED,
    "reservation.late_conversion_unfilled": metrics.LATE_CONVERSION_UNFILLED,
}


def _record_metrics(
    results: list[tuple[Command, Applied]],
    parked: list[Poison],
    experience_label: Callable[[str], str],
) -> None:
    """Counted per batch, then one increment per label set: a label lookup
    per command and per event was a measurable share of a batch."""
    metrics.BATCHES_APPLIED.inc()
    outcomes: Counter[tuple[str, str]] = Counter()
    holds: Counter[tuple[str, str]] = Counter()
    backfilled: Counter[str] = Counter()
    for command, applied in results:
        outcomes[(command.type, str(applied.outcome.get("status")))] += 1
        for event in applied.events:
            kind = str(getattr(event, "type", ""))
            if kind not in HOLD_COUNTERS:
                continue
            label = experience_label(getattr(event, "experience_id", ""))
            holds[(kind, label)] += 1
            if isinstance(event, ReservationCreated) and event.reason == BACKFILL_REASON:
                backfilled[label] += event.quantity
                freed_for = (datetime.now(UTC) - event.occurred_at).total_seconds()
                metrics.BACKFILL_SECONDS.observe(max(0.0, freed_for))
            if isinstance(event, ReservationEnded) and event.created_at is not None:
                held = (event.ended_at - event.created_at).total_seconds()
                metrics.HOLD_DURATION.labels(kind.split(".")[1]).observe(max(0.0, held))
    for (command_type, status), n in outcomes.items():
        metrics.COMMANDS_APPLIED.labels(command_type, status).inc(n)
    for (kind, experience_id), n in holds.items():
        HOLD_COUNTERS[kind].labels(experience_id).inc(n)
    for experience_id, units in backfilled.items():
        metrics.UNITS_BACKFILLED.labels(experience_id).inc(units)
    for poison in parked:
        metrics.COMMANDS_PARKED.labels(poison.error_class).inc()
