"""Kafka: durable producer, topic set-up, and the consumer factory."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    TopicAlreadyExistsError,
    UnknownProducerId,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String

from worker import metrics
from worker.config import Settings
from worker.logs import get_logger

log = get_logger(__name__)

# The relay's header on every published event: its outbox sequence number,
# which orders events across partitions for subscribers and for replay.
SEQ_HEADER = "outbox-seq"
# The broker, or the road to it, is away: try again later.
UNREACHABLE: tuple[type[BaseException], ...] = (KafkaError, TimeoutError)


def connection_options(settings: Settings) -> dict[str, Any]:
    """Where and how every client (producer, consumer, admin) connects: one
    place, so TLS and SASL for a managed Kafka apply to all of them."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def admin_client(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection_options(settings))


def durable_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """acks=all and idempotence: an acknowledged send is on every in-sync
    replica and retries never duplicate it within the producer session."""
    options: dict[str, Any] = {
        **connection_options(settings),
        "acks": "all",
        "enable_idempotence": True,
        # No linger: aiokafka keeps one produce request in flight per broker
        # and fills the next batch meanwhile, so batches grow with the load by
        # themselves; a linger only added its delay to every acknowledgement
        # (the receiver waits for each) and cost CPU for the extra wake-ups.
        "linger_ms": 0,
        "request_timeout_ms": int(settings.produce_timeout_seconds * 1000),
        "client_id": "fanfare-reservations",
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def command_consumer(settings: Settings, **overrides: Any) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        **connection_options(settings),
        "group_id": settings.consumer_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_poll_records": settings.consumer_batch_max,
        # One fetch is in flight per broker: a long-poll on idle partitions
        # (default 500 ms) would hold back the refetch of the busy one.
        "fetch_max_wait_ms": 10,
        "client_id": "fanfare-reservations-consumer",
        # Static membership: a process restarted under the same id (a
        # crashed container keeps its pod name) takes its partitions back
        # without a rebalance, instead of the group waiting out the dead
        # member's session and then rebalancing everyone.
        "group_instance_id": settings.consumer_instance_id,
        "session_timeout_ms": settings.consumer_session_timeout_ms,
        # A survivor learns of a rebalance from its next heartbeat; the
        # dead member's partitions wait that long on top of the session.
        "heartbeat_interval_ms": settings.consumer_heartbeat_interval_ms,
    }
    options.update(overrides)
    return AIOKafkaConsumer(**options)


class _LeaveGroupResponseV3(Response):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        (
            "members",
            Array(
                ("member_id", String("utf-8")),
                ("group_instance_id", String("utf-8")),
                ("error_code", Int16),
            ),
        ),
    )


class _LeaveGroupRequestV3(RequestStruct):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = _LeaveGroupResponseV3
    SCHEMA = Schema(
        ("group_id", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


class _StaticLeave(Request[_LeaveGroupRequestV3]):  # type: ignore[misc]
    """LeaveGroup v3 (KIP-345) naming a static member by its instance id,
    as Kafka's admin "remove members from consumer group" sends it; aiokafka
    only speaks v0-v1, which cannot name a static member."""

    API_KEY = 13

    def __init__(self, group: str, instance_id: str) -> None:
        self.group = group
        self.instance_id = instance_id

    def build(self, request_struct_class: type[_LeaveGroupRequestV3]) -> _LeaveGroupRequestV3:
        # An unknown member id: the broker finds the member by instance id.
        return request_struct_class(self.group, [("", self.instance_id)])


async def leave_group_static(settings: Settings, timeout: float = 5.0) -> bool:
    """Take this process's static member out of the group now, after its
    consumer stopped: Kafka keeps a static member that closes (the point of
    static membership), so without this its partitions would wait a whole
    session timeout after every clean stop, and a Deployment's replacement
    pod has another name and never reclaims them. True if the broker removed it."""
    instance_id = settings.consumer_instance_id
    if instance_id is None:
        return False  # aiokafka sent LeaveGroup itself for a dynamic member
    admin = admin_client(settings)
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            node = await admin.find_coordinator(settings.consumer_group)
            response = await admin._send_request_to_node(
                node, _StaticLeave(settings.consumer_group, instance_id)
            )
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("group_leave_failed", instance_id=instance_id, error=type(exc).__name__)
        return False
    finally:
        await admin.close()
    codes = [response.error_code, *(m[2] for m in response.members)]
    if any(codes):
        # UNKNOWN_MEMBER_ID (25): already gone (its session ran out).
        log.warning("group_leave_refused", instance_id=instance_id, error_codes=codes)
        return False
    log.info("group_left", instance_id=instance_id)
    return True


async def ensure_topics(settings: Settings) -> None:
    """Create the service's topics if missing (idempotent; safe to race)."""
    admin = admin_client(settings)
    await admin.start()
    try:
        wanted = [
            settings.commands_topic,
            settings.events_topic,
            settings.dead_letter_topic,
        ]
        if settings.forward_unknown_events_topic:
            wanted.append(settings.forward_unknown_events_topic)
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name,
                num_partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication_factor,
                topic_configs={
                    "min.insync.replicas": str(min(2, settings.topic_replication_factor))
                },
            )
            for name in wanted
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
            log.info("topics_created", topics=[t.name for t in missing])
        # Metadata for fresh topics reaches every broker shortly after creation.
        for _ in range(50):
            if set(wanted) <= set(await admin.list_topics()):
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


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
        partition = ordered[_key_hash(key) % len(ordered)]
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


@functools.lru_cache(maxsize=4096)
def _key_hash(key: bytes) -> int:
    # Keys are experience ids, few and repeated; murmur2 is pure Python.
    return int(murmur2(key)) & 0x7FFFFFFF


def partition_of(key: bytes, partitions: list[int]) -> int:
    """The partition aiokafka's default partitioner picks for `key` among
    the topic's partitions (sorted by id), as every producer here does."""
    return partitions[_key_hash(key) % len(partitions)]


async def last_header_values(
    settings: Settings, topic: str, partitions: list[int], header: str, timeout: float
) -> dict[int, bytes]:
    """The `header` of the last record of each partition that has one: one
    ListOffsets and one fetch per partition, no consumer group."""
    consumer = AIOKafkaConsumer(
        **connection_options(settings),
        group_id=None,
        enable_auto_commit=False,
        client_id="fanfare-reservations-tail",
        fetch_max_wait_ms=10,
    )
    found: dict[int, bytes] = {}
    try:
        async with asyncio.timeout(timeout):
            await consumer.start()
            tps = [TopicPartition(topic, p) for p in partitions]
            consumer.assign(tps)
            starts = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
            last = {tp: ends[tp] - 1 for tp in tps if ends[tp] > starts[tp]}
            idle = [tp for tp in tps if tp not in last]
            if idle:
                consumer.pause(*idle)
            for tp, offset in last.items():
                consumer.seek(tp, offset)
            waiting = set(last)
            while waiting:
                fetched = await consumer.getmany(*waiting, timeout_ms=100)
                for tp, records in fetched.items():
                    for record in records:
                        if record.offset < last[tp]:
                            continue
                        value = dict(record.headers or ()).get(header)
                        if value is not None:
                            found[tp.partition] = value
                        waiting.discard(tp)
                        consumer.pause(tp)
    finally:
        await consumer.stop()
    return found
