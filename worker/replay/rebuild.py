"""`replay`: fold the events topic into a target database, and `--verify`:
rebuild into a scratch database and diff it against the live one."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg
from pydantic import ValidationError

from worker import collector
from worker.adapters import postgres, retention, store
from worker.config import Settings
from worker.domain.events import Event, decode_event, event_decoder
from worker.logs import get_logger
from worker.replay.diff import TableReport, compare
from worker.replay.progress import Progress
from worker.replay.scratch import ensure_database, scratch_database
from worker.replay.sink import Planned, Planner, write_planned
from worker.replay.source import LogError, Record, Start, TopicLog, outbox_seq

log = get_logger("worker.replay")
PRUNE_BATCH = 5000
decode = event_decoder()
T = TypeVar("T")

# One replay per target at a time: two would both see an event as not yet
# applied and fold it twice.
REPLAY_LOCK_KEY = 0x5245504C4159  # "REPLAY"
BATCH_EVENTS = 25_000  # as the CLI's --batch-events default
# Events decoded between two chances for the writer to run.
_DECODE_SLICE = 500
# Batches between two full collections while the collector is paused for the
# fold: a replay keeps a few batches of events alive at a time (hundreds of
# thousands of tracked objects) while allocating millions, and the collector
# cost a third of the replay's CPU at the default threshold, a tenth at
# 100,000. The fold makes no cycles of its own; this bounds what others make.
_COLLECT_EVERY = 100


class ReplayError(RuntimeError):
    """A replay refused to start or could not continue; the message says why."""


@dataclass
class ReplayResult:
    read: int = 0
    applied: int = 0
    already: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"replay: {self.read:,} events read, {self.applied:,} folded, "
            f"{self.already:,} already applied or repeated, {self.rate:,.0f} events/s"
        )


async def _refuse_live_target(conn: asyncpg.Connection) -> None:
    """A database the consumers write to already holds what the log says;
    folding into it would count everything twice."""
    busy = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM inbox) OR EXISTS (SELECT 1 FROM outbox)"
    )
    if busy:
        raise ReplayError(
            "the target database has inbox/outbox rows: it is a live database. "
            "Replay into an empty database (or one only replay has written)."
        )


def _decode(record: Record) -> Event:
    try:
        return decode_event(record.value or b"")
    except (ValidationError, ValueError) as exc:
        # Skipping a fact we cannot read would rebuild a wrong state silently.
        where = f"{record.topic} {record.partition}:{record.offset}"
        raise ReplayError(f"event at {where} cannot be decoded: {exc}") from exc


def _decode_all(records: Sequence[tuple[int, Record]]) -> list[tuple[int, Event]]:
    """One comprehension over the validator: a call and a `try` per event
    cost a tenth of decoding it. A bad event is found again one by one, so
    the error names it."""
    try:
        return [(seq, decode(r.value or b"")) for seq, r in records]
    except (ValidationError, ValueError):
        for _, r in records:
            _decode(r)
        raise


async def _decoded(source: TopicLog, size: int) -> AsyncIterator[list[tuple[int, Event]]]:
    async for records in source.merged_keyed(outbox_seq, chunk=size):
        batch: list[tuple[int, Event]] = []
        for at in range(0, len(records), _DECODE_SLICE):
            batch += _decode_all(records[at : at + _DECODE_SLICE])
            # Lets the writer send its next statement as soon as PostgreSQL
            # finished the last one, instead of after the whole batch decodes.
            await asyncio.sleep(0)
        yield batch


async def _planned(source: TopicLog, planner: Planner, size: int) -> AsyncIterator[Planned]:
    async for batch in _decoded(source, size):
        yield await planner.plan(batch)


async def _read_ahead(batches: AsyncIterator[T], depth: int = 2) -> AsyncIterator[T]:
    """Read, decode and fold the next batches while the database writes this
    one (PostgreSQL works on its own core meanwhile)."""
    queue: asyncio.Queue[tuple[T | None, BaseException | None]] = asyncio.Queue(depth)

    async def pump() -> None:
        try:
            async for item in batches:
                await queue.put((item, None))
            await queue.put((None, None))
        except Exception as exc:  # handed to the consumer of the queue
            await queue.put((None, exc))

    task = asyncio.create_task(pump())
    try:
        while True:
            item, error = await queue.get()
            if error is not None:
                raise error
            if item is None:
                return
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _write(conn: asyncpg.Connection, planned: Planned) -> None:
    try:
        async with conn.transaction():
            await write_planned(conn, planned)
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise ReplayError(
            f"events with outbox-seq {planned.first_seq}..{planned.last_seq} do not fit "
            f"the target ({exc}); folding from the middle of the log needs a "
            "target holding the state from before that point"
        ) from exc


async def _fold_log(
    conn: asyncpg.Connection,
    reader: asyncpg.Connection,
    source: TopicLog,
    progress: Progress,
    batch_events: int,
    result: ReplayResult,
) -> None:
    fresh = not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM replay_applied)")
    planner = Planner(reader, fresh=fresh)
    batches = 0
    async for planned in _read_ahead(_planned(source, planner, batch_events)):
        await _write(conn, planned)
        planner.committed(planned)
        batches += 1
        if batches % _COLLECT_EVERY == 0:
            gc.collect()
        result.read += planned.read
        result.applied += len(planned.applied)
        result.already += planned.already
        result.warnings.extend(planned.changes.warnings)
        progress.advance(planned.read)


async def replay_into(
    settings: Settings,
    target_dsn: str,
    start: Start | None = None,
    *,
    label: str = "replay",
    interactive: bool | None = None,
    batch_events: int = BATCH_EVENTS,
) -> ReplayResult:
    if await ensure_database(target_dsn):
        log.info("replay_target_created")
    await postgres.migrate(target_dsn)
    conn: asyncpg.Connection = await asyncpg.connect(target_dsn)
    result = ReplayResult()
    try:
        await _refuse_live_target(conn)
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", REPLAY_LOCK_KEY):
            raise ReplayError("another replay is folding into this database")
        # The planner reads what earlier batches committed on a connection of
        # its own, while the writer's connection is busy with the next batch.
        reader: asyncpg.Connection = await asyncpg.connect(target_dsn)
        try:
            async with TopicLog(settings, settings.events_topic) as source:
                await source.open(start)
                began = time.monotonic()
                with (
                    Progress(label, source.total, interactive=interactive) as progress,
                    collector.paused(),
                ):
                    await _fold_log(conn, reader, source, progress, batch_events, result)
                result.seconds = time.monotonic() - began
        finally:
            await reader.close()
    except LogError as exc:
        raise ReplayError(str(exc)) from exc
    finally:
        await conn.close()
    for warning in result.warnings:
        log.warning("replay_warning", detail=warning)
    return result


@dataclass
class Verification:
    replay: ReplayResult
    reports: list[TableReport]
    unpublished: int

    @property
    def differences(self) -> int:
        return sum(len(r.diffs) for r in self.reports)


async def verify(
    settings: Settings, *, interactive: bool | None = None, batch_events: int = BATCH_EVENTS
) -> Verification:
    """Rebuild the whole log into a scratch database beside the live one and
    compare the fact tables."""
    live = await asyncpg.connect(settings.database_url)
    try:
        # Committed but not yet published: the rebuild cannot have them yet.
        unpublished = await store.outbox_backlog(live)
    finally:
        await live.close()
    until = retention.cutoffs(settings, datetime.now(UTC))
    async with scratch_database(settings.database_url, "replay_verify") as scratch:
        result = await replay_into(
            settings, scratch, label="rebuild", interactive=interactive, batch_events=batch_events
        )
        # The rebuild holds all the history the topic has, the live database
        # what retention kept: both are pruned to the same cutoffs first.
        for dsn in (settings.database_url, scratch):
            await _prune(dsn, until)
        reports = await compare(settings.database_url, scratch)
    return Verification(result, reports, int(unpublished))


async def _prune(dsn: str, until: dict[str, datetime]) -> None:
    pool = await postgres.create_pool(dsn, max_size=1)
    try:
        await retention.drain(pool, until, PRUNE_BATCH)
    finally:
        await pool.close()
