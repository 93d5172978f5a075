"""Commands for the stages, as the API, Fanfare or the scheduler put them on
the commands topic: built with the public command models
(worker.domain.commands, the source of schemas/commands.schema.json), encoded
once per kind and varied as plain dicts so that 200,000 of them take a
second, not a minute; samples are decoded back through the contract to prove
they are valid."""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from worker.adapters import kafka
from worker.config import Settings
from worker.domain import ids
from worker.domain.commands import (
    AdmitConsumer,
    CommandSource,
    ConfigureExperience,
    PutCart,
    SetStock,
    decode_command,
    encode_command,
)
from worker.domain.model import CartLine


@dataclass(frozen=True)
class Record:
    """One command as it goes on the topic."""

    key: bytes
    value: bytes
    command_id: str


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Builder:
    """Fresh command ids for one stage of one run."""

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or uuid.uuid4().hex[:8]
        self.n = 0
        now = datetime.now(UTC)
        # Templates: one real model of each kind, dumped as on the wire.
        self._admit = _dump(
            AdmitConsumer(
                command_id=uuid.uuid4(),
                occurred_at=now,
                received_at=now,
                source=CommandSource(
                    kind="fanfare",
                    source_id="whk_x",
                    delivery_id="dlv_x",
                    event_type="queue.consumer.admitted",
                    organization_id="org_bench",
                ),
                experience_id="x",
                consumer_id="x",
                grant_digest=ids.grant_digest("x"),
                admitted_at=now,
                experience_kind="queue",
            )
        )
        self._cart = _dump(
            PutCart(
                command_id=uuid.uuid4(),
                occurred_at=now,
                received_at=now,
                source=CommandSource(kind="api", source_id="x"),
                experience_id="x",
                consumer_id="x",
                items=[CartLine(product_id="p", quantity=1)],
            )
        )

    def _source_id(self, what: str) -> str:
        self.n += 1
        return f"bench-{self.tag}-{what}-{self.n}"

    def stock(self, product: str, on_hand: int) -> Record:
        sid = self._source_id("stock")
        now = datetime.now(UTC)
        cmd = SetStock(
            command_id=ids.command_id("api", sid),
            occurred_at=now,
            received_at=now,
            source=CommandSource(kind="api", source_id=sid),
            product_id=product,
            on_hand=on_hand,
        )
        return Record(product.encode(), encode_command(cmd), str(cmd.command_id))

    def configure(self, experience: str, window_seconds: int, buffer_seconds: int) -> Record:
        sid = self._source_id("configure")
        now = datetime.now(UTC)
        cmd = ConfigureExperience(
            command_id=ids.command_id("api", sid),
            occurred_at=now,
            received_at=now,
            source=CommandSource(kind="api", source_id=sid),
            experience_id=experience,
            window_seconds=window_seconds,
            buffer_seconds=buffer_seconds,
        )
        return Record(experience.encode(), encode_command(cmd), str(cmd.command_id))

    def cart(
        self, experience: str, consumer: str, lines: list[tuple[str, int]], at: datetime
    ) -> Record:
        sid = self._source_id("cart")
        cid = str(ids.command_id("api", sid))
        body = dict(self._cart)
        stamp = iso(at)
        body.update(
            commandId=cid,
            occurredAt=stamp,
            receivedAt=stamp,
            source={"kind": "api", "sourceId": sid},
            experienceId=experience,
            consumerId=consumer,
            items=[{"productId": p, "quantity": q} for p, q in lines],
        )
        return Record(experience.encode(), orjson.dumps(body), cid)

    def admit(self, experience: str, consumer: str, grant: str, admitted_at: datetime) -> Record:
        sid = self._source_id("whk")
        cid = str(ids.command_id("fanfare", sid))
        body = dict(self._admit)
        stamp = iso(admitted_at)
        source = dict(body["source"])
        source.update(sourceId=sid, deliveryId=f"dlv-{sid}")
        body.update(
            commandId=cid,
            occurredAt=stamp,
            receivedAt=iso(datetime.now(UTC)),
            source=source,
            experienceId=experience,
            consumerId=consumer,
            grantDigest=ids.grant_digest(grant),
            admittedAt=stamp,
        )
        return Record(experience.encode(), orjson.dumps(body), cid)


def _dump(model: Any) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(encode_command(model))
    return loaded


def check_valid(records: list[Record], sample: int = 200) -> None:
    """Decode a sample through the public contract: a bad builder fails here,
    not as parked commands in the middle of a measurement."""
    rng = random.Random(len(records))
    picks = records if len(records) <= sample else rng.sample(records, sample)
    for record in picks:
        command = decode_command(record.value)
        assert str(command.command_id) == record.command_id


async def produce(
    settings: Settings, records: list[Record], topic: str | None = None, chunk: int = 20_000
) -> float:
    """Pipelined sends with acks=all, every acknowledgement awaited; returns
    the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    producer: AIOKafkaProducer = kafka.durable_producer(
        settings, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        target = topic or settings.commands_topic
        for i in range(0, len(records), chunk):
            futures = [
                await producer.send(target, r.value, key=r.key) for r in records[i : i + chunk]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return loop.time() - started
