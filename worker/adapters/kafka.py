"""Kafka: durable producer, topic set-up, and the consumer factory."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
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

from worker import metrics
from worker.config import Settings
from worker.logs import get_logger

log = get_logger(__name__)


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
    }
    options.update(overrides)
    return AIOKafkaConsumer(**options)


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
