"""Shared by the receiver tests: the app in-process on a real producer, signed
requests, and a look at what reached a topic (end offsets and records)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from worker.adapters import kafka
from worker.config import Settings
from worker.fanfare.signature import sign

Offsets = dict[TopicPartition, int]


def envelope(
    event_type: str, data: dict[str, Any], *, event_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": event_id or f"whk_{uuid.uuid4().hex[:12]}",
        "type": event_type,
        "timestamp": "2026-11-24T18:03:12.345Z",
        "organizationId": "org_test",
        "data": data,
    }


def signed(
    body: bytes,
    secret: str,
    timestamp: int,
    *,
    delivery_id: str | None = None,
    event_type: str | None = None,
) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Fanfare-Webhooks/1.0",
        "X-Fanfare-Delivery-Id": delivery_id or f"dlv_{uuid.uuid4().hex[:12]}",
        "X-Fanfare-Timestamp": str(timestamp),
        "X-Fanfare-Signature": sign(secret, str(timestamp), body),
    }
    if event_type is not None:
        headers["X-Fanfare-Event-Type"] = event_type
    return headers


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


async def with_topic(settings: Settings, name: str) -> Settings:
    """Settings whose commands topic is `name`, created if missing (the
    session's events and dead-letter topics already exist)."""
    private = settings.model_copy(update={"commands_topic": name})
    await kafka.ensure_topics(private)
    return private


@asynccontextmanager
async def app_client(
    app: web.Application,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@asynccontextmanager
async def topic_reader(bootstrap: str) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def end_offsets(settings: Settings, topic: str | None = None) -> Offsets:
    """End offset of every partition of `topic` (default: the commands topic);
    every topic here has `settings.topic_partitions` partitions."""
    name = topic or settings.commands_topic
    async with topic_reader(settings.kafka_bootstrap_servers) as consumer:
        parts = [TopicPartition(name, p) for p in range(settings.topic_partitions)]
        ends: Mapping[TopicPartition, int] = await consumer.end_offsets(parts)
        return dict(ends)


def total(offsets: Offsets) -> int:
    return sum(offsets.values())


async def read_since(settings: Settings, since: Offsets) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record between `since` and the current end of each partition."""
    async with topic_reader(settings.kafka_bootstrap_servers) as consumer:
        ends = await consumer.end_offsets(list(since))
        wanted = [tp for tp in since if ends[tp] > since[tp]]
        if not wanted:
            return []
        consumer.assign(wanted)
        for tp in wanted:
            consumer.seek(tp, since[tp])
        records: list[ConsumerRecord[bytes, bytes]] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in wanted])

        while await behind():
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, recs in batch.items():
                records.extend(r for r in recs if r.offset < ends[tp])
        return records
