"""Kafka: connection options, the admin client, the durable producer and
consumer factories, topic set-up, and partitioning as the producers do it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2

from worker.config import Settings
from worker.logs import get_logger

log = get_logger(__name__)

# The relay's headers on every published event: its outbox sequence number,
# which orders events across partitions for subscribers and for replay, and
# its `type`, so a subscriber can skip what it does not fold without
# decoding the value. schemas/asyncapi.json documents every header.
SEQ_HEADER = "outbox-seq"
EVENT_TYPE_HEADER = "event-type"
# On a command `dlq replay` re-injected: the dead letter it came from.
REPLAYED_HEADER = "dlq-replayed-from"
# The broker, or the road to it, is away: try again later.
UNREACHABLE: tuple[type[BaseException], ...] = (KafkaError, TimeoutError)
# Quarantined deliveries wait for a parser fix and an operator, long after
# Fanfare's 44.5 h of retries: kept a month rather than the broker's default.
QUARANTINE_RETENTION_MS = 30 * 24 * 3600 * 1000


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


async def ensure_topics(settings: Settings) -> None:
    """Create the service's topics if missing (idempotent; safe to race)."""
    admin = admin_client(settings)
    await admin.start()
    try:
        wanted = [
            settings.commands_topic,
            settings.events_topic,
            settings.dead_letter_topic,
            settings.quarantine_topic,
        ]
        if settings.forward_unknown_events_topic:
            wanted.append(settings.forward_unknown_events_topic)
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name,
                num_partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication_factor,
                topic_configs=_topic_configs(settings, name),
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
        await _check_commands_retention(admin, settings)
    finally:
        await admin.close()


async def _check_commands_retention(admin: AIOKafkaAdminClient, settings: Settings) -> None:
    """An existing commands topic keeps its own retention: if it is longer
    than the setting, the inbox may forget a command the topic still holds
    (config.py checks the settings, this what the broker says)."""
    resource = ConfigResource(
        ConfigResourceType.TOPIC, settings.commands_topic, configs={"retention.ms": None}
    )
    try:
        [response] = await admin.describe_configs([resource])
        entries = response.resources[0][4]
        retention_ms = int(next(e[1] for e in entries if e[0] == "retention.ms"))
    except (KafkaError, LookupError, ValueError, TypeError, AttributeError, StopIteration) as exc:
        log.warning("commands_retention_unknown", error=type(exc).__name__)
        return
    hours = retention_ms / 3_600_000
    if retention_ms < 0 or hours > settings.commands_topic_retention_hours:
        log.error(
            "commands_retention_exceeds_setting",
            topic=settings.commands_topic,
            retention_hours=round(hours, 1) if retention_ms >= 0 else "forever",
            setting="COMMANDS_TOPIC_RETENTION_HOURS",
            setting_hours=settings.commands_topic_retention_hours,
        )


def _topic_configs(settings: Settings, topic: str) -> dict[str, str]:
    configs = {"min.insync.replicas": str(min(2, settings.topic_replication_factor))}
    if topic == settings.quarantine_topic:
        configs["retention.ms"] = str(QUARANTINE_RETENTION_MS)
    if topic == settings.commands_topic:
        # The inbox is kept longer than this plus Fanfare's retry span, so a
        # command read again from the topic is still recognised (config.py).
        configs["retention.ms"] = str(int(settings.commands_topic_retention_hours * 3_600_000))
    return configs


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
    try:
        async with asyncio.timeout(timeout):
            await consumer.start()
            last = await _seek_last_records(consumer, topic, partitions)
            return await _last_headers(consumer, last, header)
    finally:
        await consumer.stop()


async def _seek_last_records(
    consumer: AIOKafkaConsumer, topic: str, partitions: list[int]
) -> dict[TopicPartition, int]:
    """Position the consumer on each non-empty partition's last record and
    pause the empty ones; returns the last offset of each non-empty one."""
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
    return last


async def _last_headers(
    consumer: AIOKafkaConsumer, last: dict[TopicPartition, int], header: str
) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
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
    return found
