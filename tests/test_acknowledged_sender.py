"""The receiver's Kafka sender (kafka_sender.AcknowledgedSender): one aiokafka batch
per partition for concurrent records, answered when Kafka acknowledged it,
failed with the producer's error or at the deadline. The unit tests use a
stand-in producer with aiokafka's real batch builder; the last test checks
partitions and acknowledgements against the real broker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import OutOfOrderSequenceNumber
from aiokafka.producer.message_accumulator import BatchBuilder

from tests.receiver_support import end_offsets, read_since, with_topic
from worker.adapters import kafka, kafka_sender
from worker.config import Settings

TOPIC = "commands"


class _Cluster:
    def __init__(self, partitions: int) -> None:
        self.partitions = set(range(partitions))
        self.listeners: list[Any] = []

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(self.partitions) if topic == TOPIC else None

    def add_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def grow(self, partitions: int) -> None:
        """New metadata, as aiokafka announces it to its listeners."""
        self.partitions = set(range(partitions))
        for listener in self.listeners:
            listener(self)


class _Client:
    def __init__(self, partitions: int) -> None:
        self.cluster = _Cluster(partitions)


class FakeProducer:
    """Takes batches like aiokafka (send_batch returns the acknowledgement
    future) and lets the test decide when and how each is answered."""

    def __init__(self, partitions: int = 4) -> None:
        self.client = _Client(partitions)
        self.submitted: list[tuple[int, int, asyncio.Future[Any]]] = []
        # Set: send_batch waits for it, as aiokafka does while the
        # partition's previous batch is still pending.
        self.slot_free: asyncio.Event | None = None

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(16384, 0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        if self.slot_free is not None:
            await self.slot_free.wait()
        acknowledged: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.submitted.append((partition, batch.record_count(), acknowledged))
        return acknowledged

    async def partitions_for(self, topic: str) -> set[int]:
        await asyncio.sleep(3600)  # metadata that never comes
        raise AssertionError("unreachable")

    def acknowledge_all(self) -> None:
        for _, _, acknowledged in self.submitted:
            if not acknowledged.done():
                acknowledged.set_result(None)


async def _settled(sends: list[asyncio.Task[None]]) -> list[BaseException | None]:
    await asyncio.wait(sends, timeout=5)
    return [s.exception() for s in sends]


async def test_concurrent_records_go_out_as_one_batch_per_partition_and_wait_for_the_ack() -> None:
    producer = FakeProducer(partitions=4)
    sender = kafka_sender.AcknowledgedSender(timeout=5)
    keys = [f"experience-{i % 6}".encode() for i in range(60)]
    sends = [asyncio.create_task(sender.send(producer, TOPIC, key, b"value")) for key in keys]
    await asyncio.sleep(0.01)
    assert not any(s.done() for s in sends), "answered before Kafka acknowledged"
    partitions = [p for p, _, _ in producer.submitted]
    assert len(partitions) == len(set(partitions)), "more than one batch per partition"
    assert sum(count for _, count, _ in producer.submitted) == 60
    producer.acknowledge_all()
    assert await _settled(sends) == [None] * 60


async def test_a_key_always_lands_on_the_same_partition() -> None:
    producer = FakeProducer(partitions=12)
    sender = kafka_sender.AcknowledgedSender(timeout=5)
    for _ in range(3):
        send = asyncio.create_task(sender.send(producer, TOPIC, b"queue_x", b"v"))
        await asyncio.sleep(0.01)
        producer.acknowledge_all()
        await send
    assert len({p for p, _, _ in producer.submitted}) == 1


async def test_partitions_follow_the_producers_metadata() -> None:
    producer = FakeProducer(partitions=1)
    sender = kafka_sender.AcknowledgedSender(timeout=5)
    keys = [f"experience-{i}".encode() for i in range(20)]

    async def send_all() -> set[int]:
        producer.submitted.clear()
        sends = [asyncio.create_task(sender.send(producer, TOPIC, k, b"v")) for k in keys]
        await asyncio.sleep(0.01)
        producer.acknowledge_all()
        assert await _settled(sends) == [None] * len(keys)
        return {p for p, _, _ in producer.submitted}

    assert await send_all() == {0}
    producer.client.cluster.grow(6)
    assert len(await send_all()) > 1, "still on the partitions of the old metadata"


async def test_records_arriving_while_a_batch_waits_form_the_next_batch() -> None:
    producer = FakeProducer(partitions=1)
    sender = kafka_sender.AcknowledgedSender(timeout=5)
    first = [asyncio.create_task(sender.send(producer, TOPIC, b"k", b"1")) for _ in range(3)]
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(sender.send(producer, TOPIC, b"k", b"2")) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert [count for _, count, _ in producer.submitted] == [3, 2]
    producer.submitted[0][2].set_result(None)
    assert await _settled(first) == [None] * 3
    assert not any(s.done() for s in later), "answered with another batch's acknowledgement"
    producer.submitted[1][2].set_result(None)
    assert await _settled(later) == [None, None]


async def test_a_failed_batch_fails_each_of_its_waiters_with_its_own_copy() -> None:
    producer = FakeProducer(partitions=1)
    sender = kafka_sender.AcknowledgedSender(timeout=5)
    sends = [asyncio.create_task(sender.send(producer, TOPIC, b"k", b"v")) for _ in range(3)]
    await asyncio.sleep(0.01)
    producer.submitted[0][2].set_exception(OutOfOrderSequenceNumber())
    errors = await _settled(sends)
    assert all(isinstance(e, OutOfOrderSequenceNumber) for e in errors)
    assert len({id(e) for e in errors}) == 3
    assert all(kafka_sender.is_fatal(e) for e in errors if e is not None)


async def test_no_acknowledgement_by_the_deadline_is_a_timeout() -> None:
    producer = FakeProducer(partitions=2)
    sender = kafka_sender.AcknowledgedSender(timeout=0.2)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await sender.send(producer, TOPIC, b"k", b"v")
    assert 0.15 < time.monotonic() - started < 2


async def test_a_batch_past_its_deadline_is_never_handed_to_the_producer() -> None:
    producer = FakeProducer(partitions=1)
    producer.slot_free = asyncio.Event()
    sender = kafka_sender.AcknowledgedSender(timeout=0.2)
    # The first batch is being handed over (aiokafka waits for a free slot);
    # the second one forms meanwhile, and both run out of time.
    first = asyncio.create_task(sender.send(producer, TOPIC, b"k", b"1"))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(sender.send(producer, TOPIC, b"k", b"2"))
    errors = await _settled([first, second])
    assert all(isinstance(e, TimeoutError) for e in errors)
    producer.slot_free.set()
    await asyncio.sleep(0.05)
    assert [count for _, count, _ in producer.submitted] == [1], "the second batch went out"


async def test_a_record_gets_most_of_its_own_deadline_even_when_kafka_stalls() -> None:
    producer = FakeProducer(partitions=1)
    producer.slot_free = asyncio.Event()  # Kafka takes nothing
    sender = kafka_sender.AcknowledgedSender(timeout=0.5)
    early = asyncio.create_task(sender.send(producer, TOPIC, b"k", b"1"))
    await asyncio.sleep(0.01)
    held = asyncio.create_task(sender.send(producer, TOPIC, b"k", b"2"))
    await asyncio.sleep(0.3)
    late = asyncio.create_task(sender.send(producer, TOPIC, b"k", b"3"))
    late_started = time.monotonic()
    assert all(isinstance(e, TimeoutError) for e in await _settled([early, held]))
    assert not late.done(), "failed with an older batch's deadline"
    with pytest.raises(TimeoutError):
        await late
    assert time.monotonic() - late_started >= 0.5 * (1 - kafka_sender.JOIN_WINDOW) - 0.02


async def test_unknown_topic_metadata_is_bounded_by_the_deadline() -> None:
    sender = kafka_sender.AcknowledgedSender(timeout=0.2)
    with pytest.raises(TimeoutError):
        await sender.send(FakeProducer(), "no-such-topic", b"k", b"v")


async def test_a_cancelled_caller_leaves_the_others_of_its_batch_alone() -> None:
    producer = FakeProducer(partitions=1)
    sender = kafka_sender.AcknowledgedSender(timeout=5)
    sends = [asyncio.create_task(sender.send(producer, TOPIC, b"k", b"v")) for _ in range(3)]
    await asyncio.sleep(0.01)
    sends[0].cancel()
    producer.acknowledge_all()
    await asyncio.wait(sends, timeout=5)
    assert sends[0].cancelled()
    assert [s.exception() for s in sends[1:]] == [None, None]


@pytest.mark.integration
async def test_against_kafka_keys_land_where_aiokafka_puts_them(settings: Settings) -> None:
    private = await with_topic(settings, f"{settings.commands_topic}.acksender")
    producer: AIOKafkaProducer = kafka.durable_producer(private)
    await producer.start()
    sender = kafka_sender.AcknowledgedSender(timeout=10)
    try:
        keys = [f"experience-{i}".encode() for i in range(40)]
        before = await end_offsets(private)
        await asyncio.gather(
            *(sender.send(producer, private.commands_topic, k, b"ours") for k in keys)
        )
        # Acknowledged means readable: every record is on the topic now.
        ours = {r.key: r.partition for r in await read_since(private, before)}
        assert set(ours) == set(keys)
        for key in keys:
            theirs = await producer.send_and_wait(private.commands_topic, b"theirs", key=key)
            assert ours[key] == theirs.partition, key
    finally:
        await sender.close()
        await producer.stop()
