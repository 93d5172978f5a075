"""`reprocess`: decide the inbound command log again, with the engine as it
is now, into a scratch database, and report per experience where the
outcomes (inbox outcome of each command, reservation rows) differ from the
live ones; after a fix, this shows what the fix would have changed.

Each partition is applied in log order, with the consumer's inbox dedupe
and poison isolation. Across partitions the live commit order is followed
where the live outbox still knows it (the first event sequence number of
each command), so experiences sharing stock are decided in the same order
as they were live. Where it does not (commands without events, a pruned
outbox), partitions interleave as they come: an experience whose stock no
other experience shares is reproduced whatever the interleaving (DESIGN,
guarantee 5); one that shares stock may then legitimately differ.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from pydantic import ValidationError

from worker.adapters import kafka, postgres
from worker.config import Settings
from worker.domain.commands import Command, ExperienceCommand, SetStock, decode_command
from worker.domain.model import ExperienceSettings
from worker.engine import Coordinates, apply_isolating, not_yet_applied
from worker.replay.diff import TABLES_BY_NAME, RowDiff, compare_table
from worker.replay.progress import Progress
from worker.replay.scratch import scratch_database
from worker.replay.source import LogError, Record, TopicLog

BATCH_COMMANDS = 500


def subject(command: Command) -> str:
    """What a command belongs to in the report: its experience, or for a
    stock level, the product."""
    if isinstance(command, ExperienceCommand):
        return command.experience_id
    assert isinstance(command, SetStock)
    return f"stock:{command.product_id}"


@dataclass(frozen=True)
class OutcomeDiff:
    command_id: UUID
    command_type: str
    where: str
    live: str | None
    reprocessed: str | None

    def render(self) -> str:
        return (
            f"command {self.command_id} {self.command_type} ({self.where}): "
            f"live={self.live or 'not applied'} reprocessed={self.reprocessed or 'not applied'}"
        )


@dataclass
class SubjectReport:
    commands: int = 0
    outcomes: list[OutcomeDiff] = field(default_factory=list)
    reservations: list[RowDiff] = field(default_factory=list)

    @property
    def differences(self) -> int:
        return len(self.outcomes) + len(self.reservations)


@dataclass
class Reprocessed:
    read: int = 0
    applied: int = 0
    duplicates: int = 0
    parked: int = 0
    skipped: int = 0  # other experiences, with --experience
    subjects: dict[str, SubjectReport] = field(default_factory=lambda: defaultdict(SubjectReport))

    @property
    def differences(self) -> int:
        return sum(s.differences for s in self.subjects.values())


async def _live_order(dsn: str) -> dict[UUID, int]:
    """Each command's first event sequence number: the live commit order."""
    live = await asyncpg.connect(dsn)
    try:
        rows = await live.fetch(
            """SELECT (convert_from(payload, 'UTF8')::jsonb ->> 'commandId')::uuid AS command_id,
                      min(seq) AS seq
               FROM outbox GROUP BY 1"""
        )
    finally:
        await live.close()
    return {r["command_id"]: r["seq"] for r in rows}


def _merge_key(order: dict[UUID, int]) -> Any:
    def key(record: Record) -> int | None:
        try:
            raw = orjson.loads(record.value or b"").get("commandId")
            return order.get(UUID(raw)) if raw else None
        except (orjson.JSONDecodeError, AttributeError, ValueError, TypeError):
            return None

    return key


class _Applier:
    """The consumer's apply path, into the scratch database."""

    def __init__(
        self, settings: Settings, conn: asyncpg.Connection, result: Reprocessed, wanted: set[str]
    ) -> None:
        self.conn = conn
        self.result = result
        self.wanted = wanted
        self.defaults = ExperienceSettings(
            window_seconds=settings.reservation_window_seconds,
            buffer_seconds=settings.reservation_buffer_seconds,
        )
        self.commands: dict[UUID, tuple[str, str, str]] = {}  # id -> subject, type, where

    def select(self, records: list[Record]) -> list[tuple[Command, Coordinates]]:
        """The records' commands to apply, noting those reported on."""
        decoded = []
        for r in records:
            command = _decode(r)
            if command is None:
                self.result.parked += 1  # as live: undecodable
                continue
            name = subject(command)
            if self.wanted and name not in self.wanted and not isinstance(command, SetStock):
                self.result.skipped += 1
                continue
            if not self.wanted or name in self.wanted:
                # A stock level's outcome depends on every experience
                # holding that product: reported only when all of them are
                # reprocessed.
                self.commands.setdefault(
                    command.command_id, (name, command.type, f"{r.partition}:{r.offset}")
                )
            decoded.append((command, Coordinates(r.topic, r.partition, r.offset)))
        return decoded

    async def apply(self, decoded: list[tuple[Command, Coordinates]]) -> None:
        async with self.conn.transaction():
            todo = await not_yet_applied(self.conn, decoded)
            self.result.duplicates += len(decoded) - len(todo)
            if not todo:
                return
            applied, refused = await apply_isolating(
                self.conn, todo, self.defaults, (*postgres.RETRYABLE, *kafka.UNREACHABLE)
            )
            self.result.applied += len(applied)
            self.result.parked += len(refused)


async def reprocess(
    settings: Settings,
    experiences: Sequence[str] | None = None,
    *,
    interactive: bool | None = None,
) -> Reprocessed:
    wanted = set(experiences or ())
    result = Reprocessed()
    order = await _live_order(settings.database_url)
    async with scratch_database(settings.database_url, "reprocess") as scratch:
        conn: asyncpg.Connection = await asyncpg.connect(scratch)
        applier = _Applier(settings, conn, result, wanted)
        try:
            await _apply_log(settings, applier, order, interactive)
        finally:
            await conn.close()
        await _compare(settings.database_url, scratch, applier.commands, wanted, result)
    return result


async def _apply_log(
    settings: Settings, applier: _Applier, order: dict[UUID, int], interactive: bool | None
) -> None:
    """The commands topic, merged across partitions in live commit order."""
    async with TopicLog(settings, settings.commands_topic) as source:
        await source.open()
        with Progress("reprocess", source.total, "commands", interactive=interactive) as bar:
            async for records in source.merged(_merge_key(order), chunk=BATCH_COMMANDS):
                decoded = applier.select(records)
                applier.result.read += len(records)
                if decoded:
                    await applier.apply(decoded)
                bar.advance(len(records))


def _decode(record: Record) -> Command | None:
    try:
        return decode_command(record.value or b"")
    except (ValidationError, ValueError):
        return None


async def _outcomes(conn: asyncpg.Connection, ids: list[UUID]) -> dict[UUID, str]:
    # Refusals applied by earlier versions also stored their HTTP status; the
    # API derives it from the error code, so it is not a difference.
    rows = await conn.fetch(
        """SELECT command_id, (outcome - 'httpStatus')::text AS outcome
           FROM inbox WHERE command_id = ANY($1::uuid[])""",
        ids,
    )
    return {r["command_id"]: r["outcome"] for r in rows}


async def _compare(
    live_dsn: str,
    scratch_dsn: str,
    commands: dict[UUID, tuple[str, str, str]],
    wanted: set[str],
    result: Reprocessed,
) -> None:
    live = await asyncpg.connect(live_dsn)
    scratch = await asyncpg.connect(scratch_dsn)
    try:
        ids = list(commands)
        before, after = await _outcomes(live, ids), await _outcomes(scratch, ids)
        for command_id, (name, kind, where) in commands.items():
            report = result.subjects[name]
            report.commands += 1
            a, b = before.get(command_id), after.get(command_id)
            if a != b:
                report.outcomes.append(OutcomeDiff(command_id, kind, where, a, b))
        async with (
            live.transaction(isolation="repeatable_read", readonly=True),
            scratch.transaction(isolation="repeatable_read", readonly=True),
        ):
            table = await compare_table(
                live, scratch, TABLES_BY_NAME["reservations"], sorted(wanted) if wanted else None
            )
        for diff in table.diffs:
            row = diff.live or diff.other or {}
            result.subjects[str(row.get("experience_id"))].reservations.append(diff)
    finally:
        await live.close()
        await scratch.close()


def render(result: Reprocessed) -> Iterable[str]:
    yield (
        f"reprocess: {result.read:,} commands read, {result.applied:,} applied, "
        f"{result.duplicates:,} duplicates, {result.parked:,} parked"
        + (f", {result.skipped:,} of other experiences skipped" if result.skipped else "")
    )
    same = 0
    for name in sorted(result.subjects):
        report = result.subjects[name]
        if not report.differences:
            same += 1
            continue
        yield (
            f"{name}: {len(report.outcomes)} outcome(s) and "
            f"{len(report.reservations)} reservation(s) differ"
        )
        for o in report.outcomes:
            yield f"  {o.render()}"
        for r in report.reservations:
            yield f"  {r.render('live', 'reprocessed')}"
    differing = len(result.subjects) - same
    if differing:
        yield f"{result.differences} difference(s) in {differing} experience(s); {same} identical"
    else:
        yield f"no differences: {same} experience(s) identical"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "reprocess",
        help="decide the command log again into a scratch database and diff outcomes with live",
    )
    p.add_argument(
        "--experience",
        action="append",
        default=[],
        metavar="ID",
        help="only these experiences' commands (and every stock level); repeatable",
    )


async def command(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when nothing differs, 1 on differences, 2 when the log cannot be read."""
    try:
        result = await reprocess(settings, args.experience or None)
    except LogError as exc:
        print(f"reprocess: {exc}", file=sys.stderr)
        return 2
    for line in render(result):
        print(line)
    return 1 if result.differences else 0
