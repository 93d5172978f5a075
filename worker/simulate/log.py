"""The recorded commands of a drop, as a simulation reads them: every
partition of the commands topic up to its end when reading began, merged
by the time each command was received (`receivedAt`), which is also the
clock the simulation's expiries run on.

Within a partition the log's order stands whatever the times say. Across
partitions, receipt time is the order the live consumers met the commands
in, as near as the log can tell: a stock level set before a drop is
decided before the drop's admissions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import orjson
from pydantic import ValidationError

from worker.config import Settings
from worker.domain.commands import Command, decode_command
from worker.domain.expiry import is_scheduled_expiry
from worker.engine import Coordinates
from worker.replay.source import Record, TopicLog

# Commands read, decoded and handed on at a time.
CHUNK = 2000


@dataclass(frozen=True, slots=True)
class Stamped:
    """A command, when the log received it, and where it was read."""

    command: Command
    at: datetime
    where: Coordinates


def received_key(record: Record) -> int | None:
    """A record's receipt time in microseconds; None (it goes as soon as it
    heads its partition) when the record cannot be read."""
    try:
        text = orjson.loads(record.value or b"")["receivedAt"]
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return int(at.timestamp() * 1_000_000)


@dataclass
class Read:
    """What a pass over the log found, besides the commands it hands on."""

    records: int = 0
    undecodable: int = 0
    after_range: int = 0
    # The recorded scheduler's expiries received after the range: an expiry
    # of the simulation with one of these ids happened after the range too.
    expiries_after: set[UUID] = field(default_factory=set)


class CommandLog:
    """One pass over the commands topic, bounded at `until` (receipt time)
    and at the end offsets `ends` (those of an earlier pass: every pass of
    a comparison reads the same commands while the live log grows)."""

    def __init__(
        self, settings: Settings, until: datetime | None, ends: dict[int, int] | None = None
    ) -> None:
        self.topic = TopicLog(settings, settings.commands_topic)
        self.until = until
        self.ends = ends
        self.read = Read()

    async def __aenter__(self) -> CommandLog:
        await self.topic.__aenter__()
        bounds = await self.topic.open()
        if self.ends is not None:
            for p, (begin, end) in bounds.items():
                bounds[p] = (begin, max(begin, min(end, self.ends.get(p, begin))))
        return self

    @property
    def ends_read(self) -> dict[int, int]:
        return {p: end for p, (_, end) in self.topic.bounds.items()}

    async def __aexit__(self, *exc: object) -> None:
        await self.topic.__aexit__(*exc)

    @property
    def total(self) -> int:
        return self.topic.total

    async def chunks(self) -> AsyncIterator[tuple[int, list[Stamped]]]:
        """Records read and the commands among them, a chunk at a time."""
        async for records in self.topic.merged(received_key, chunk=CHUNK):
            yield len(records), [s for r in records if (s := self._stamped(r)) is not None]

    def _stamped(self, record: Record) -> Stamped | None:
        self.read.records += 1
        try:
            command = decode_command(record.value or b"")
        except (ValidationError, ValueError):
            self.read.undecodable += 1  # parked live as well: never decided
            return None
        if self.until is not None and command.received_at > self.until:
            self.read.after_range += 1
            if is_scheduled_expiry(command):
                self.read.expiries_after.add(command.command_id)
            return None
        where = Coordinates(record.topic, record.partition, record.offset)
        return Stamped(command, command.received_at, where)
