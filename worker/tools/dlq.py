"""Dead letters: list the commands the consumers parked, and re-inject
chosen ones into the commands topic once their cause is fixed.

A parked message keeps the original command's key and bytes; the headers
say where it came from and why it was parked (worker.roles.consumer). A
re-injected command goes through the consumers like any other, and the inbox
makes re-injecting one that was applied meanwhile harmless.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from worker.adapters import kafka
from worker.config import Settings
from worker.logs import get_logger
from worker.replay.source import LogError, TopicLog
from worker.tools.arguments import entry_choice

log = get_logger("worker.dlq")


@dataclass(frozen=True)
class Parked:
    partition: int
    offset: int
    timestamp: datetime
    key: bytes | None
    value: bytes
    headers: dict[str, str]
    command_id: UUID | None
    command_type: str | None

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def origin(self) -> str:
        h = self.headers
        return (
            f"{h.get('origin-topic', '?')} "
            f"{h.get('origin-partition', '?')}:{h.get('origin-offset', '?')}"
        )


def _identify(value: bytes) -> tuple[UUID | None, str | None]:
    """Command id and type when the bytes are JSON carrying them, even if
    the command itself is invalid (which is often why it was parked)."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    raw_id, raw_type = doc.get("commandId"), doc.get("type")
    try:
        command_id = UUID(str(raw_id)) if raw_id is not None else None
    except ValueError:
        command_id = None
    return command_id, raw_type if isinstance(raw_type, str) else None


async def read_parked(settings: Settings) -> list[Parked]:
    parked: list[Parked] = []
    async with TopicLog(settings, settings.dead_letter_topic) as source:
        await source.open()
        # Parking order across partitions is irrelevant: list by coordinates.
        async for records in source.merged(lambda r: None):
            for r in records:
                headers = {k: v.decode("utf-8", "replace") for k, v in r.headers or ()}
                command_id, command_type = _identify(r.value or b"")
                parked.append(
                    Parked(
                        partition=r.partition,
                        offset=r.offset,
                        timestamp=datetime.fromtimestamp(r.timestamp / 1000, UTC),
                        key=r.key,
                        value=r.value or b"",
                        headers=headers,
                        command_id=command_id,
                        command_type=command_type,
                    )
                )
    return sorted(parked, key=lambda p: (p.timestamp, p.partition, p.offset))


async def inbox_status(settings: Settings, parked: Sequence[Parked]) -> dict[UUID, bool]:
    """Which parked commands are in the inbox now (applied since, e.g. after
    a re-injection); empty when the database cannot be asked."""
    ids = [p.command_id for p in parked if p.command_id is not None]
    if not ids:
        return {}
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        log.warning("dlq_inbox_unavailable", error=type(exc).__name__)
        return {}
    try:
        rows = await conn.fetch(
            "SELECT command_id FROM inbox WHERE command_id = ANY($1::uuid[])", ids
        )
    finally:
        await conn.close()
    applied = {r["command_id"] for r in rows}
    return {i: i in applied for i in ids}


def _row(p: Parked, status: dict[UUID, bool]) -> list[str]:
    h = p.headers
    inbox = "-"  # no command id to look for
    if p.command_id is not None:
        known = status.get(p.command_id)
        inbox = "?" if known is None else "applied" if known else "not applied"
    return [
        p.ref,
        p.timestamp.strftime("%Y-%m-%d %H:%M:%S"),
        p.origin,
        h.get("error-class", "?"),
        h.get("attempts", "?"),
        str(p.command_id) if p.command_id else "-",
        p.command_type or "-",
        inbox,
        " ".join(h.get("error-reason", "").split()),
    ]


COLUMNS = ["DLQ", "PARKED AT", "ORIGIN", "ERROR", "ATTEMPTS", "COMMAND ID", "TYPE", "INBOX"]


def render_table(parked: Sequence[Parked], status: dict[UUID, bool]) -> str:
    """Plain aligned columns, the reason last and whole (it is what the
    operator needs and can be long)."""
    rows = [_row(p, status) for p in parked]
    header = [*COLUMNS, "REASON"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(COLUMNS))]
    lines = []
    for r in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    return "\n".join(lines)


def print_table(parked: Sequence[Parked], status: dict[UUID, bool]) -> None:
    if sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            pass
        else:
            table = Table(title=f"{len(parked)} parked command(s)")
            for name in [*COLUMNS, "REASON"]:
                table.add_column(name, overflow="fold")
            for p in parked:
                table.add_row(*_row(p, status))
            Console().print(table)
            return
    print(render_table(parked, status))
    print(f"{len(parked)} parked command(s)")


async def list_parked(settings: Settings) -> int:
    parked = await read_parked(settings)
    print_table(parked, await inbox_status(settings, parked))
    return 0


def select(parked: Sequence[Parked], refs: Sequence[str]) -> list[Parked]:
    """`refs`: "P:N" (DLQ partition and offset, as listed) or "N" when only
    one partition has offset N. Raises ValueError naming what is wrong."""
    by_ref = {p.ref: p for p in parked}
    chosen: list[Parked] = []
    for ref in refs:
        if ":" in ref:
            found = by_ref.get(ref)
            if found is None:
                raise ValueError(f"no parked command at {ref}")
            chosen.append(found)
            continue
        matches = [p for p in parked if str(p.offset) == ref]
        if not matches:
            raise ValueError(f"no parked command at offset {ref}")
        if len(matches) > 1:
            options = ", ".join(m.ref for m in matches)
            raise ValueError(f"offset {ref} is in several partitions ({options}): give P:N")
        chosen.append(matches[0])
    return chosen


async def replay_parked(settings: Settings, refs: Sequence[str], everything: bool) -> int:
    parked = await read_parked(settings)
    try:
        chosen = list(parked) if everything else select(parked, refs)
    except ValueError as exc:
        print(f"dlq replay: {exc}", file=sys.stderr)
        return 2
    if not chosen:
        print("dlq replay: nothing to re-inject")
        return 0
    producer = kafka.durable_producer(settings)
    await producer.start()
    try:
        for p in chosen:
            # The original key keeps the command on its experience's
            # partition, in order with the rest of that experience.
            meta: Any = await producer.send_and_wait(
                settings.commands_topic,
                p.value,
                key=p.key,
                headers=[(kafka.REPLAYED_HEADER, p.ref.encode())],
            )
            print(
                f"re-injected {p.ref} ({p.command_type or 'undecodable'} "
                f"{p.command_id or '-'}) -> {settings.commands_topic} "
                f"{meta.partition}:{meta.offset}"
            )
            log.info(
                "dlq_reinjected",
                dlq=p.ref,
                command_id=str(p.command_id) if p.command_id else None,
                partition=meta.partition,
                offset=meta.offset,
            )
    finally:
        await producer.stop()
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dlq", help="parked commands: list, or re-inject after a fix")
    dlq = p.add_subparsers(dest="dlq_command", required=True)
    dlq.add_parser("list", help="every parked command with its origin and reason")
    r = dlq.add_parser("replay", help="re-inject parked commands into the commands topic")
    entry_choice(
        r,
        "a parked command by its DLQ coordinates from `dlq list` (N alone if unambiguous)",
        "every parked command",
    )


async def command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if args.dlq_command == "list":
            return await list_parked(settings)
        return await replay_parked(settings, args.offset or [], args.all)
    except LogError as exc:
        print(f"dlq: {exc}", file=sys.stderr)
        return 2
