"""The engine: applies a batch of commands inside the batch transaction.
The unit of work reads every row the batch can touch in a few set-based
queries; each command, in order, asks the pure domain what to do and changes
that in-memory state, recording its outcome and events; the unit of work
then writes everything back with one statement per table. Dispatch is here;
each command kind has its own module."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from worker.adapters import store, uow_flush, uow_load
from worker.adapters.store import Conn
from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.commands import (
    AdmitConsumer,
    Command,
    CompleteCheckout,
    ConfigureExperience,
    EndAdmission,
    ExtendReservation,
    PutCart,
    ReleaseHolds,
    RetryReservation,
    SetStock,
)
from worker.domain.model import ExperienceSettings
from worker.engine.admission import admit
from worker.engine.backfill import backfill, backfill_first
from worker.engine.base import Applied
from worker.engine.cart import put_cart
from worker.engine.checkout import complete_checkout
from worker.engine.endings import end_admission
from worker.engine.extension import extend_reservation
from worker.engine.release import release_holds
from worker.engine.retry import retry_reservation
from worker.engine.setup import configure_experience, set_stock
from worker.logs import get_logger

__all__ = [
    "Applied",
    "Coordinates",
    "Refused",
    "apply_batch",
    "apply_command",
    "apply_isolating",
    "not_yet_applied",
]

log = get_logger("worker.engine")


@dataclass(frozen=True)
class Coordinates:
    """Where a command was read from; recorded in the inbox."""

    topic: str
    partition: int
    offset: int


# Commands decided between two writes of a batch, and between two yields to
# the event loop while a write is in flight. The write of one part overlaps
# the deciding of the next: PostgreSQL stores while Python decides.
PART = 128
YIELD_EVERY = 16


async def apply_batch(
    conn: Conn,
    commands: list[tuple[Command, Coordinates]],
    defaults: ExperienceSettings,
) -> list[Applied]:
    """Apply commands not yet in the inbox, in order; returns their results.
    Runs inside the caller's transaction and commits nothing."""
    uow = UnitOfWork()
    await uow_load.load(uow, conn, [c for c, _ in commands])
    results = []
    writing: asyncio.Task[None] | None = None
    try:
        for n, (command, at) in enumerate(commands, 1):
            applied = apply_command(uow, command, defaults)
            uow.record(
                command.command_id,
                command.type,
                applied.outcome,
                applied.events,
                at.topic,
                at.partition,
                at.offset,
            )
            results.append(applied)
            if n % PART == 0 and n < len(commands):
                writing = await _write_behind(conn, uow, writing)
            elif writing is not None and n % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # the write in flight sends its next statement
        if writing is not None:
            await writing
        await uow_flush.flush(uow, conn)
    except BaseException:
        if writing is not None:
            # The transaction must not roll back under a statement in flight.
            await asyncio.gather(writing, return_exceptions=True)
        raise
    return results


async def _write_behind(
    conn: Conn, uow: UnitOfWork, previous: asyncio.Task[None] | None
) -> asyncio.Task[None]:
    """Start writing what the batch decided so far, once the previous part
    is written (one connection: one statement at a time, parts in order)."""
    if previous is not None:
        await previous
    writing = asyncio.create_task(uow_flush.take_changes(uow).write(conn))
    await asyncio.sleep(0)  # let it send its first statement
    return writing


def apply_command(uow: UnitOfWork, command: Command, defaults: ExperienceSettings) -> Applied:
    """Decide one command, then offer the units it freed (backfill); units
    free before an admission go to those waiting before it."""
    first = backfill_first(uow, command)
    applied = _decide(uow, command, defaults)
    if first:
        applied = Applied(applied.outcome, first + applied.events)
    return backfill(uow, command, applied)


def _decide(uow: UnitOfWork, command: Command, defaults: ExperienceSettings) -> Applied:
    match command:
        case AdmitConsumer():
            return admit(uow, command, defaults)
        case PutCart():
            return put_cart(uow, command, defaults)
        case SetStock():
            return set_stock(uow, command)
        case ConfigureExperience():
            return configure_experience(uow, command)
        case EndAdmission():
            return end_admission(uow, command, defaults)
        case CompleteCheckout():
            return complete_checkout(uow, command, defaults)
        case ReleaseHolds():
            return release_holds(uow, command)
        case ExtendReservation():
            return extend_reservation(uow, command, defaults)
        case RetryReservation():
            return retry_reservation(uow, command, defaults)


@dataclass(frozen=True)
class Refused:
    """A command the engine could not apply, and why."""

    command: Command
    at: Coordinates
    error: Exception


async def not_yet_applied(
    conn: Conn, commands: list[tuple[Command, Coordinates]]
) -> list[tuple[Command, Coordinates]]:
    """The commands the inbox has not seen, each once (a repeat inside the
    same batch counts as seen too), in their order."""
    seen = await store.inbox_seen(conn, [c.command_id for c, _ in commands])
    fresh: list[tuple[Command, Coordinates]] = []
    for command, at in commands:
        if command.command_id not in seen:
            seen.add(command.command_id)
            fresh.append((command, at))
    return fresh


async def apply_isolating(
    conn: Conn,
    commands: list[tuple[Command, Coordinates]],
    defaults: ExperienceSettings,
    transient: tuple[type[BaseException], ...],
) -> tuple[list[tuple[Command, Applied]], list[Refused]]:
    """The whole batch in one unit of work; if it fails for anything but a
    `transient` error (a constraint, a bad value, an impossible command), find
    the culprits by applying the commands one at a time, each in its own
    savepoint. Transient errors propagate: the caller retries the batch."""
    if not commands:
        return [], []
    try:
        async with conn.transaction():
            applied = await apply_batch(conn, commands, defaults)
        return [(c, a) for (c, _), a in zip(commands, applied, strict=True)], []
    except transient:
        raise
    except Exception as exc:
        log.warning("batch_isolating", error=type(exc).__name__, commands=len(commands))
    results: list[tuple[Command, Applied]] = []
    refused: list[Refused] = []
    for command, at in commands:
        try:
            async with conn.transaction():
                [one] = await apply_batch(conn, [(command, at)], defaults)
            results.append((command, one))
        except transient:
            raise
        except Exception as exc:
            # Refused as data, or a value the rules cannot handle (say a date
            # so far ahead its expiry overflows): impossible, so it is set
            # aside rather than stalling the partition forever.
            refused.append(Refused(command, at, exc))
    return results, refused
