"""Quarantined deliveries: list them, show one, and re-drive them into the
commands topic once the parser is fixed.

The quarantine topic holds the receiver's records of signed deliveries it
refused for their data, and this tool's markers (worker.fanfare.quarantine).
Re-driving translates the stored delivery with today's code and produces the
command as the receiver would have: the same command id (from Fanfare's
event id), so the consumers' inbox applies it once however often it comes.
Then a marker keyed by the event id is written; the tool re-drives no event
that has one, so every retry Fanfare made of a delivery, and a second
`replay --all`, produce nothing new.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from worker.adapters import kafka
from worker.config import Settings
from worker.domain.commands import encode_command
from worker.fanfare import quarantine
from worker.fanfare.envelope import field_path
from worker.fanfare.events import Translation, translate
from worker.logs import get_logger
from worker.replay.source import LogError, TopicLog
from worker.tools.arguments import entry_choice, offset

log = get_logger("worker.quarantine")

COLUMNS = ["ENTRY", "RECEIVED AT", "EVENT TYPE", "EVENT ID", "DELIVERY ID", "STATE", "FIELD"]


@dataclass(frozen=True)
class Entry:
    """One quarantined delivery and where it sits in the topic."""

    partition: int
    offset: int
    record: quarantine.QuarantinedDelivery

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"


@dataclass
class Quarantine:
    """The topic read whole: deliveries, and the markers by event id."""

    entries: list[Entry] = field(default_factory=list)
    replayed: dict[str, quarantine.QuarantineReplayed] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    def state(self, entry: Entry) -> str:
        marker = self.replayed.get(entry.record.event_id)
        return "pending" if marker is None else f"replayed from {marker.entry}"


async def read_quarantine(settings: Settings) -> Quarantine:
    found = Quarantine()
    async with TopicLog(settings, settings.quarantine_topic) as source:
        await source.open()
        # Order across partitions does not matter: an event's records share one.
        async for records in source.merged(lambda r: None):
            for r in records:
                try:
                    record = quarantine.decode(r.value or b"")
                except ValidationError:
                    found.unreadable.append(f"{r.partition}:{r.offset}")
                    continue
                if isinstance(record, quarantine.QuarantineReplayed):
                    found.replayed.setdefault(record.event_id, record)
                else:
                    found.entries.append(Entry(r.partition, r.offset, record))
    found.entries.sort(key=lambda e: (e.record.received_at, e.partition, e.offset))
    return found


def _row(entry: Entry, state: str) -> list[str]:
    r = entry.record
    return [
        entry.ref,
        r.received_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        r.event_type,
        r.event_id,
        r.delivery_id or "-",
        state,
        r.error.field or "-",
        r.error.message,
    ]


def render_table(found: Quarantine) -> str:
    """Plain aligned columns, the error message last and whole."""
    rows = [_row(e, found.state(e)) for e in found.entries]
    header = [*COLUMNS, "ERROR"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(COLUMNS))]
    lines = []
    for r in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    return "\n".join(lines)


async def list_quarantine(settings: Settings) -> int:
    found = await read_quarantine(settings)
    print(render_table(found))
    pending = sum(1 for e in found.entries if e.record.event_id not in found.replayed)
    print(f"{len(found.entries)} quarantined delivery(ies), {pending} pending")
    if found.unreadable:
        print(f"unreadable records: {', '.join(found.unreadable)}", file=sys.stderr)
    return 0


def select(entries: Sequence[Entry], refs: Sequence[str]) -> list[Entry]:
    """`refs`: "P:N" as listed, or "N" when only one partition has offset N.
    Raises ValueError naming what is wrong."""
    chosen: list[Entry] = []
    for ref in refs:
        matches = [e for e in entries if ref in (e.ref, str(e.offset))]
        if not matches:
            raise ValueError(f"no quarantined delivery at {ref}")
        if len(matches) > 1:
            options = ", ".join(m.ref for m in matches)
            raise ValueError(f"offset {ref} is in several partitions ({options}): give P:N")
        chosen.append(matches[0])
    return chosen


async def show_entry(settings: Settings, ref: str) -> int:
    found = await read_quarantine(settings)
    (entry,) = select(found.entries, [ref])
    document: dict[str, Any] = {
        "entry": entry.ref,
        "state": found.state(entry),
        "record": entry.record.model_dump(mode="json", by_alias=True),
    }
    print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    return 0


def retranslated(entry: Entry) -> Translation:
    """The stored delivery translated with today's code. Raises
    ValidationError or ValueError when it still cannot be."""
    record = entry.record
    return translate(record.stored_envelope(), record.delivery())


def _refusal(exc: ValidationError | ValueError) -> str:
    if isinstance(exc, ValidationError):
        return field_path(exc, "data")[1]
    return str(exc)


@dataclass
class Redrive:
    """One `replay` run: what it produced, skipped and could not translate."""

    settings: Settings
    producer: AIOKafkaProducer
    found: Quarantine
    refused: int = 0

    async def entry(self, entry: Entry) -> None:
        marker = self.found.replayed.get(entry.record.event_id)
        if marker is not None:
            event_id = entry.record.event_id
            print(f"skipped {entry.ref}: event {event_id} replayed from {marker.entry}")
            return
        try:
            translation = retranslated(entry)
        except (ValidationError, ValueError) as exc:
            self.refused += 1
            print(f"still refused {entry.ref}: {_refusal(exc)}")
            return
        command_id = await self._produce(entry, translation)
        await self._mark(entry, command_id)

    async def _produce(self, entry: Entry, translation: Translation) -> UUID | None:
        command = translation.command
        if command is None:
            print(f"{entry.ref}: acknowledged, not acted on ({translation.reason})")
            return None
        meta: Any = await self.producer.send_and_wait(
            self.settings.commands_topic,
            encode_command(command),
            key=command.partition_key().encode("utf-8"),
        )
        command_type = getattr(command, "type", "?")
        print(
            f"re-driven {entry.ref} ({command_type} {command.command_id}) -> "
            f"{self.settings.commands_topic} {meta.partition}:{meta.offset}"
        )
        log.info("quarantine_redriven", entry=entry.ref, command_id=str(command.command_id))
        return command.command_id

    async def _mark(self, entry: Entry, command_id: UUID | None) -> None:
        """Written only once the command is acknowledged: a run that stops in
        between re-drives the event next time, and the inbox drops the copy."""
        marker = quarantine.QuarantineReplayed(
            event_id=entry.record.event_id,
            entry=entry.ref,
            command_id=command_id,
            replayed_at=datetime.now(UTC),
        )
        record = quarantine.encode(marker)
        await self.producer.send_and_wait(
            self.settings.quarantine_topic, record.value, key=record.key, headers=record.headers
        )
        self.found.replayed[marker.event_id] = marker


async def replay_entries(settings: Settings, refs: Sequence[str], everything: bool) -> int:
    found = await read_quarantine(settings)
    chosen = list(found.entries) if everything else select(found.entries, refs)
    if not chosen:
        print("quarantine replay: nothing to re-drive")
        return 0
    producer = kafka.durable_producer(settings)
    await producer.start()
    try:
        redrive = Redrive(settings, producer, found)
        for entry in chosen:
            await redrive.entry(entry)
    finally:
        await producer.stop()
    return 1 if redrive.refused else 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("quarantine", help="refused deliveries: list, show, re-drive after a fix")
    q = p.add_subparsers(dest="quarantine_command", required=True)
    q.add_parser("list", help="every quarantined delivery with its error and state")
    s = q.add_parser("show", help="one quarantined delivery as stored (credentials digested)")
    s.add_argument("--offset", required=True, type=offset, metavar="P:N", help="as listed")
    r = q.add_parser("replay", help="translate again and produce to the commands topic")
    entry_choice(
        r,
        "a quarantined delivery by its coordinates from `quarantine list`",
        "every pending delivery",
    )


async def command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if args.quarantine_command == "list":
            return await list_quarantine(settings)
        if args.quarantine_command == "show":
            return await show_entry(settings, args.offset)
        return await replay_entries(settings, args.offset or [], args.all)
    except (LogError, ValueError) as exc:
        print(f"quarantine: {exc}", file=sys.stderr)
        return 2
