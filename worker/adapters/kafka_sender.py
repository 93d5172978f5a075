"""Kafka producers that survive their own death, and the receiver's
acknowledged sender: many concurrent callers, one aiokafka batch per
partition, each caller answered when Kafka acknowledged its record."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)

from worker import metrics
from worker.adapters.kafka import partition_of
from worker.logs import get_logger

log = get_logger(__name__)


# Errors after which aiokafka's producer never sends again: its sender task
# died (aiokafka re-raises the cause on every later send) or it was closed.
# The idempotent producer dies this way after a broker outage
# (OutOfOrderSequenceNumber once expired batches leave a sequence gap), and
# only a new producer recovers.
FATAL_PRODUCER_ERRORS: tuple[type[BaseException], ...] = (
    OutOfOrderSequenceNumber,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    UnknownProducerId,
    ProducerFenced,
    ProducerClosed,
)

ProducerFactory = Callable[[], AIOKafkaProducer]


def is_fatal(exc: BaseException) -> bool:
    # The sender's catch-all wraps an unexpected death in a bare KafkaError.
    return isinstance(exc, FATAL_PRODUCER_ERRORS) or type(exc) is KafkaError


class ProducerSlot:
    """A role's producer, replaced by a fresh one (from the factory) when
    aiokafka declares it dead. A producer handed in from outside is never
    stopped here; replacements are ours and stopped by `close`."""

    def __init__(self, producer: AIOKafkaProducer, factory: ProducerFactory | None) -> None:
        self.current = producer
        self.factory = factory
        self.owned: list[AIOKafkaProducer] = []
        self.lock = asyncio.Lock()
        self.next_attempt = 0.0

    async def replace(self, broken: AIOKafkaProducer, timeout: float) -> None:
        if self.factory is None:
            return
        async with self.lock:
            now = time.monotonic()
            # Another request replaced it already, or a replacement just
            # failed: keep bad-broker periods cheap.
            if self.current is not broken or now < self.next_attempt:
                return
            self.next_attempt = now + timeout
            fresh = self.factory()
            try:
                await asyncio.wait_for(fresh.start(), timeout)
            except Exception as exc:
                log.warning("producer_replace_failed", error=type(exc).__name__)
                await stop_quietly(fresh, timeout)
                return
            self.current = fresh
            self.owned.append(fresh)
            metrics.PRODUCER_REPLACEMENTS.inc()
            log.warning("producer_replaced")
            if broken in self.owned:
                self.owned.remove(broken)
                await stop_quietly(broken, timeout)

    async def close(self, timeout: float) -> None:
        for producer in self.owned:
            await stop_quietly(producer, timeout)
        self.owned.clear()


async def stop_quietly(producer: AIOKafkaProducer, timeout: float) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout)
    except Exception as exc:
        log.warning("producer_stop_failed", error=type(exc).__name__)


@contextlib.asynccontextmanager
async def producer_from(slot: ProducerSlot, timeout: float) -> AsyncIterator[AIOKafkaProducer]:
    """The slot's current producer; if what runs with it fails in a way that
    means the producer is dead, the slot gets a fresh one for the next try."""
    producer = slot.current
    try:
        yield producer
    except BaseException as exc:
        if is_fatal(exc):
            await slot.replace(producer, timeout)
        raise


Headers = list[tuple[str, bytes]]
# The share of the deadline during which a batch takes more records.
JOIN_WINDOW = 0.1


@dataclass
class _Round:
    """Records bound for one partition, handed to aiokafka as one batch, with
    the futures of the requests waiting for their acknowledgement."""

    builder: Any
    due: float  # loop time
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    deadline: asyncio.TimerHandle | None = None


@dataclass
class _Lane:
    """One partition's rounds, oldest first; one pump hands them over in order."""

    rounds: list[_Round] = field(default_factory=list)
    pumping: bool = False


class AcknowledgedSender:
    """Sends records and waits until Kafka acknowledged them (the producer's
    acks=all), like send_and_wait under a deadline, for many concurrent
    callers at a fraction of the CPU.

    Each record is appended to an aiokafka batch of its partition; one pump
    per partition submits the batches in order (send_batch), and one deadline
    timer per batch fails its waiters with TimeoutError. Per record that is
    one append and one future, instead of send()'s coroutines, partitioner and
    metadata per record and a timer per caller (uvloop makes each a libuv
    timer). The batching is aiokafka's own: while a produce request is in
    flight the next batch of each partition fills.

    Partitions are chosen as aiokafka's default partitioner does (murmur2 of
    the key over the partitions sorted by id), so a key lands where the other
    producers of the service put it. Records are not retried here: an error
    or the deadline reaches every waiter of the batch, and a batch that lands
    after all is deduplicated downstream by its command id."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._producer: AIOKafkaProducer | None = None
        self._lanes: dict[tuple[str, int], _Lane] = {}
        self._pumps: set[asyncio.Task[None]] = set()
        # Each topic's partitions, sorted, until the producer's metadata
        # changes (aiokafka builds a new set on every lookup).
        self._partitions: dict[str, list[int]] = {}

    async def send(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        key: bytes,
        value: bytes,
        headers: Headers | None = None,
    ) -> None:
        """Return once Kafka acknowledged the record; raise the producer's
        error, or TimeoutError past the deadline."""
        if producer is not self._producer:
            # A replaced producer: its lanes drain on their own.
            self._producer, self._lanes, self._partitions = producer, {}, {}
            producer.client.cluster.add_listener(self._metadata_changed)
        ordered = self._partitions.get(topic) or await self._partitions_of(producer, topic)
        partition = partition_of(key, ordered)
        lane = self._lanes.get((topic, partition))
        if lane is None:
            lane = self._lanes[(topic, partition)] = _Lane()
        # aiokafka's record builder takes a list, nothing else.
        waiter = self._append(producer, lane, key, value, headers or [])
        if not lane.pumping:
            lane.pumping = True
            pump = asyncio.create_task(self._pump(producer, topic, partition, lane))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)
        await waiter

    async def close(self) -> None:
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _partitions_of(self, producer: AIOKafkaProducer, topic: str) -> list[int]:
        partitions = producer.client.cluster.partitions_for_topic(topic)
        if not partitions:
            # Metadata not known yet (first record, or a topic that may not
            # exist): aiokafka fetches it, bounded by the deadline.
            async with asyncio.timeout(self.timeout):
                partitions = await producer.partitions_for(topic)
        ordered = self._partitions[topic] = sorted(partitions)
        return ordered

    def _metadata_changed(self, _: Any) -> None:
        self._partitions = {}

    def _append(
        self, producer: AIOKafkaProducer, lane: _Lane, key: bytes, value: bytes, headers: Headers
    ) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        current = lane.rounds[-1] if lane.rounds else None
        if (
            current is None
            # A record joins a batch only while it has most of its deadline
            # left, so a caller is never answered 503 long before its own
            # deadline (batches wait that long only when Kafka stalls).
            or current.due - loop.time() < self.timeout * (1 - JOIN_WINDOW)
            or current.builder.append(timestamp=None, key=key, value=value, headers=headers) is None
        ):
            # No open batch, too old, or full: the first record always fits.
            current = self._open_round(producer)
            lane.rounds.append(current)
            current.builder.append(timestamp=None, key=key, value=value, headers=headers)
        waiter: asyncio.Future[None] = loop.create_future()
        current.waiters.append(waiter)
        return waiter

    def _open_round(self, producer: AIOKafkaProducer) -> _Round:
        loop = asyncio.get_running_loop()
        opened = _Round(producer.create_batch(), loop.time() + self.timeout)
        opened.deadline = loop.call_at(opened.due, _settle, opened, TimeoutError())
        return opened

    async def _pump(
        self, producer: AIOKafkaProducer, topic: str, partition: int, lane: _Lane
    ) -> None:
        try:
            while lane.rounds:
                # Taken out before awaiting: what arrives meanwhile starts
                # the next batch, submitted once aiokafka took this one.
                sending = lane.rounds.pop(0)
                await self._submit(producer, topic, partition, sending)
        finally:
            lane.pumping = False

    async def _submit(
        self, producer: AIOKafkaProducer, topic: str, partition: int, sending: _Round
    ) -> None:
        if all(waiter.done() for waiter in sending.waiters):
            # Past its deadline or abandoned: nobody waits for these records.
            _settle(sending, None)
            return
        try:
            # aiokafka takes one pending batch per partition: this waits
            # until the previous one left in a produce request, at most the
            # producer's request timeout (the waiters have their deadline).
            acknowledged = await producer.send_batch(sending.builder, topic, partition=partition)
        except asyncio.CancelledError:
            _settle(sending, None)
            raise
        except Exception as exc:
            _settle(sending, exc)
            return
        acknowledged.add_done_callback(functools.partial(_on_acknowledged, sending))


def _on_acknowledged(sending: _Round, acknowledged: asyncio.Future[Any]) -> None:
    if acknowledged.cancelled():
        _settle(sending, None)
    else:
        _settle(sending, acknowledged.exception(), acknowledged=True)


def _settle(sending: _Round, error: BaseException | None, acknowledged: bool = False) -> None:
    """Answer the batch's waiters: acknowledged, failed with `error`, or
    (neither) cancelled."""
    if sending.deadline is not None:
        sending.deadline.cancel()
    for waiter in sending.waiters:
        if waiter.done():
            continue
        if error is not None:
            # One copy each: one exception raised in many tasks would chain
            # their tracebacks (aiokafka copies too, its issue #246).
            waiter.set_exception(copy.copy(error))
        elif acknowledged:
            waiter.set_result(None)
        else:
            waiter.cancel()
