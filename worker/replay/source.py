"""Reading a topic as a bounded log: every partition from a start position
to the end offsets seen when reading began (what arrives later is left for
the next run), merged into one stream by a key the caller chooses.

The events topic is merged by the `outbox-seq` header. The relay publishes
in sequence order whatever was committed when it read, so whenever two
transactions touched the same row the earlier one's events are published,
and merged here, first; events of unrelated transactions may interleave,
which changes no folded row.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias, cast

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from worker.adapters import kafka
from worker.adapters.kafka import SEQ_HEADER
from worker.config import Settings

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
# A record's place in the merged order; None: emit it as soon as it heads its
# partition (its order against other partitions does not matter).
MergeKey = Callable[[Record], int | None]

# Records buffered per partition before fetching from it pauses.
_BUFFER_HIGH = 5_000
_STALL_SECONDS = 60.0


class LogError(RuntimeError):
    """The log cannot be read as asked (missing topic, header, broker)."""


@dataclass(frozen=True)
class Start:
    """Where each partition starts: its beginning unless an offset (for every
    partition, or per partition) or a time is given."""

    offset: int | None = None
    partition_offsets: dict[int, int] = field(default_factory=dict)
    time: datetime | None = None

    @classmethod
    def parse(cls, offsets: list[str] | None, at: datetime | None) -> Start:
        """`offsets`: "N" (every partition) and/or "P:N" (partition P)."""
        every: int | None = None
        per: dict[int, int] = {}
        for item in offsets or []:
            if ":" in item:
                p, _, o = item.partition(":")
                per[int(p)] = int(o)
            else:
                every = int(item)
        return cls(every, per, at)


def outbox_seq(record: Record) -> int:
    for name, value in record.headers or ():
        if name == SEQ_HEADER:
            return int(value)
    raise LogError(
        f"{record.topic} {record.partition}:{record.offset} has no {SEQ_HEADER} header; "
        "it cannot be placed in commit order"
    )


class TopicLog:
    """One topic, every partition, read once between fixed bounds."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.settings = settings
        self.consumer: AIOKafkaConsumer = kafka.command_consumer(
            settings,
            group_id=None,
            client_id="fanfare-reservations-tools",
            max_poll_records=10_000,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
        )
        self.bounds: dict[int, tuple[int, int]] = {}

    async def __aenter__(self) -> TopicLog:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    @property
    def total(self) -> int:
        """Records in range (log compaction or transaction markers make the
        real count smaller; a progress upper bound)."""
        return sum(end - begin for begin, end in self.bounds.values())

    async def open(self, start: Start | None = None) -> dict[int, tuple[int, int]]:
        start = start or Start()
        partitions = await self._partitions()
        unknown = set(start.partition_offsets) - set(partitions)
        if unknown:
            raise LogError(f"{self.topic} has no partition {', '.join(map(str, sorted(unknown)))}")
        tps = [TopicPartition(self.topic, p) for p in partitions]
        self.consumer.assign(tps)
        first = await self.consumer.beginning_offsets(tps)
        ends = await self.consumer.end_offsets(tps)
        at: dict[TopicPartition, Any] = {}
        if start.time is not None:
            at = await self.consumer.offsets_for_times(
                {tp: int(start.time.timestamp() * 1000) for tp in tps}
            )
        for tp in tps:
            begin = first[tp]
            if start.time is not None:
                found = at.get(tp)
                begin = found.offset if found is not None else ends[tp]
            wanted = start.partition_offsets.get(tp.partition, start.offset)
            if wanted is not None:
                begin = wanted
            begin = min(max(begin, first[tp]), ends[tp])
            self.bounds[tp.partition] = (begin, ends[tp])
            self.consumer.seek(tp, begin)
            if begin >= ends[tp]:
                self.consumer.pause(tp)  # nothing in range: fetch nothing
        return self.bounds

    async def _partitions(self) -> list[int]:
        # The consumer learns partitions only of topics it subscribes to;
        # the admin client describes any.
        admin = kafka.admin_client(self.settings)
        await admin.start()
        try:
            described = await admin.describe_topics([self.topic])
        finally:
            await admin.close()
        for topic in described:
            if topic["topic"] == self.topic and topic["error_code"] == 0:
                return sorted(p["partition"] for p in topic["partitions"])
        raise LogError(f"topic {self.topic} does not exist")

    async def merged(self, key: MergeKey, chunk: int = 5000) -> AsyncIterator[list[Record]]:
        """Every record in range, each partition in offset order, partitions
        merged by `key`; yielded in lists of up to `chunk`."""
        async for keyed in self._merged(key, chunk):
            yield [r for _, r in keyed]

    async def merged_keyed(
        self, key: Callable[[Record], int], chunk: int = 5000
    ) -> AsyncIterator[list[tuple[int, Record]]]:
        """As `merged`, each record with its key (computed once: for the
        events topic, parsing the header again costs as much as merging)."""
        async for keyed in self._merged(key, chunk):
            # `key` never returns None, so neither does any pair's key.
            yield cast(list[tuple[int, Record]], keyed)

    async def _merged(
        self, key: MergeKey, chunk: int
    ) -> AsyncIterator[list[tuple[int | None, Record]]]:
        merge = _Merge(self.bounds, key)
        last_progress = time.monotonic()
        while merge.fetching or merge.heads:
            while merge.ready():
                merge.pop_head()
                for full in merge.full_chunks(chunk):
                    yield full
            if not merge.fetching:
                break
            got = await self._fetch(merge.buffers, merge.fetching, merge.paused)
            last_progress = self._progressed(got, last_progress)
            merge.heads_in()
            # Unkeyed records pass straight through; hand them on in chunks too.
            for full in merge.full_chunks(chunk):
                yield full
        if merge.out:
            yield merge.out

    def _progressed(self, got: int, last_progress: float) -> float:
        """When the read last made progress; a read stalled too long fails."""
        now = time.monotonic()
        if got:
            return now
        if now - last_progress > _STALL_SECONDS:
            raise LogError(f"no progress reading {self.topic} for {_STALL_SECONDS:.0f} s")
        return last_progress

    async def _fetch(
        self, buffers: dict[int, deque[Record]], fetching: set[int], paused: set[int]
    ) -> int:
        for p in list(paused):
            if len(buffers[p]) < _BUFFER_HIGH // 4:
                self.consumer.resume(TopicPartition(self.topic, p))
                paused.discard(p)
        batch = await self.consumer.getmany(timeout_ms=500, max_records=20_000)
        got = 0
        for tp, records in batch.items():
            end = self.bounds[tp.partition][1]
            keep = [r for r in records if r.offset < end]
            buffers[tp.partition].extend(keep)
            got += len(keep)
        for p in list(fetching):
            tp = TopicPartition(self.topic, p)
            if await self.consumer.position(tp) >= self.bounds[p][1]:
                fetching.discard(p)
                self.consumer.pause(tp)
            elif len(buffers[p]) >= _BUFFER_HIGH and p not in paused:
                self.consumer.pause(tp)
                paused.add(p)
        return got


class _Merge:
    """A merge in progress: each partition's buffered records, which are
    still fetched or paused, the heap of keyed heads, and what is ready to
    hand on."""

    def __init__(self, bounds: dict[int, tuple[int, int]], key: MergeKey) -> None:
        self.key = key
        self.buffers: dict[int, deque[Record]] = {p: deque() for p in bounds}
        self.fetching = {p for p, (begin, end) in bounds.items() if begin < end}
        self.paused: set[int] = set()
        # Partitions still to read whose next record is not buffered: nothing
        # keyed may be emitted while one of them could hold a smaller key.
        self.waiting = set(self.fetching)
        self.heads: list[tuple[int, int]] = []
        self.out: list[tuple[int | None, Record]] = []

    def ready(self) -> bool:
        """The smallest keyed head can be handed on: no partition could
        still hold a smaller key."""
        return bool(self.heads) and not self.waiting

    def pop_head(self) -> None:
        k, p = heapq.heappop(self.heads)
        self.out.append((k, self.buffers[p].popleft()))
        self.head_in(p)

    def heads_in(self) -> None:
        for p in list(self.waiting):
            self.head_in(p)

    def head_in(self, p: int) -> None:
        """Emit unkeyed heads of p straight away; queue its keyed head."""
        buf = self.buffers[p]
        while buf:
            k = self.key(buf[0])
            if k is None:
                self.out.append((None, buf.popleft()))
                continue
            heapq.heappush(self.heads, (k, p))
            self.waiting.discard(p)
            return
        if p in self.fetching:
            self.waiting.add(p)
        else:
            self.waiting.discard(p)

    def full_chunks(self, chunk: int) -> list[list[tuple[int | None, Record]]]:
        """The full chunks ready, taken from what is to hand on."""
        full = []
        while len(self.out) >= chunk:
            full.append(self.out[:chunk])
            self.out = self.out[chunk:]
        return full
