"""A database and topics of their own, for tests that run their own consumer
processes and must not share the session's outbox or consumer group."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.stack import Stack
from worker.adapters import kafka, postgres
from worker.config import Settings
from worker.domain.commands import CommandBase, encode_command


@asynccontextmanager
async def isolated_settings(
    stack: Stack, base: Settings, partitions: int = 6
) -> AsyncIterator[Settings]:
    tag = uuid.uuid4().hex[:10]
    name = f"iso_{tag}"
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    head, _, _ = stack.database_url.rpartition("/")
    url = f"{head}/{name}"
    await postgres.migrate(url)
    settings = base.model_copy(
        update={
            "database_url": url,
            "commands_topic": f"i{tag}.commands",
            "events_topic": f"i{tag}.events",
            "dead_letter_topic": f"i{tag}.commands.dlq",
            "quarantine_topic": f"i{tag}.quarantine",
            "consumer_group": f"i{tag}.consumers",
            "topic_partitions": partitions,
        }
    )
    await kafka.ensure_topics(settings)
    try:
        yield settings
    finally:
        admin = await asyncpg.connect(stack.database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def produce_bulk(settings: Settings, commands: list[CommandBase]) -> None:
    """Pipelined sends, every acknowledgement awaited."""
    producer = kafka.durable_producer(settings, linger_ms=20, max_batch_size=262144)
    await producer.start()
    try:
        futures = [
            await producer.send(
                settings.commands_topic,
                encode_command(c),
                key=c.partition_key().encode("utf-8"),
            )
            for c in commands
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_all(settings: Settings, topic: str, expect_at_least: int = 0) -> list[bytes]:
    """Every message on a topic, read until it is exhausted (and at least
    `expect_at_least` were read)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        ends = await consumer.end_offsets(parts)
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=10000)
            values.extend(m.value for recs in batch.values() for m in recs if m.value)
            positions = {tp: await consumer.position(tp) for tp in parts}
            if all(positions[tp] >= ends[tp] for tp in parts) and len(values) >= expect_at_least:
                return values
    finally:
        await consumer.stop()
