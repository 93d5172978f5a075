"""Kafka: durable producer, topic set-up, and the consumer factory."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from worker.config import Settings
from worker.logs import get_logger

log = get_logger(__name__)


def durable_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """acks=all and idempotence: an acknowledged send is on every in-sync
    replica and retries never duplicate it within the producer session."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 2,
        "request_timeout_ms": int(settings.produce_timeout_seconds * 1000),
        "client_id": "fanfare-reservations",
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def command_consumer(settings: Settings, **overrides: Any) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "group_id": settings.consumer_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_poll_records": settings.consumer_batch_max,
        "client_id": "fanfare-reservations-consumer",
    }
    options.update(overrides)
    return AIOKafkaConsumer(**options)


async def ensure_topics(settings: Settings) -> None:
    """Create the service's topics if missing (idempotent; safe to race)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        wanted = [
            settings.commands_topic,
            settings.events_topic,
            settings.dead_letter_topic,
        ]
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
