"""Contracts that evolve (README, "Compatibility"): a reader one release
behind takes what a newer writer adds, through the schemas subscribers
use and through the real consumer; every message states its `type` and
`schemaVersion`; every header on our topics is documented."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import ValidationError

from tests.conftest import service_env
from tests.helpers import ServiceProcess, unique, wait_for
from tests.isolated import isolated_settings, read_all
from tests.stack import Stack
from worker.adapters.kafka import EVENT_TYPE_HEADER, REPLAYED_HEADER, SEQ_HEADER
from worker.config import Settings
from worker.contracts import files, topics
from worker.domain.commands import decode_command
from worker.domain.events import decode_event
from worker.domain.ids import grant_digest

SCHEMAS = files.SCHEMAS_DIR
# Two commands exactly as the previous release's producers wrote them
# (schemaVersion 1), the fixtures every later reader must keep reading.
V1_CART: dict[str, Any] = {
    "commandId": "7d0c1f0e-4c7b-5a0e-9a57-2b1c3a4d5e6f",
    "type": "cart.put",
    "schemaVersion": 1,
    "occurredAt": "2026-11-26T09:00:00Z",
    "receivedAt": "2026-11-26T09:00:00.120000Z",
    "source": {"kind": "api", "sourceId": "idem-v1-cart"},
    "experienceId": "queue_v1",
    "consumerId": "cons_v1",
    "items": [{"productId": "sneaker", "variantId": "42", "quantity": 1}],
}
V1_ADMISSION: dict[str, Any] = {
    "commandId": "0b8e3b52-9c55-5d0f-8f07-6a1e2b3c4d5e",
    "type": "admission.grant",
    "schemaVersion": 1,
    "occurredAt": "2026-11-26T09:00:01Z",
    "receivedAt": "2026-11-26T09:00:01.050000Z",
    "source": {"kind": "fanfare", "sourceId": "whk_v1", "deliveryId": "dlv_v1"},
    "experienceId": "queue_v1",
    "consumerId": "cons_v1",
    "grantDigest": grant_digest("eyJ-v1-grant"),
    "admittedAt": "2026-11-26T09:00:01Z",
    "experienceKind": "queue",
}


def _with_added_fields(wire: dict[str, Any]) -> dict[str, Any]:
    """What a newer writer might send: fields this build has never heard
    of, at the top, in a nested object, and in list items."""
    newer = copy.deepcopy(wire)
    newer["loyaltyTier"] = "gold"
    newer["source"]["region"] = "eu-west"
    for item in newer.get("items", []):
        item["giftWrap"] = True
    return newer


def _load(relative: str) -> Any:
    return json.loads((SCHEMAS / relative).read_text(encoding="utf-8"))


def _validator(relative: str) -> Any:
    import jsonschema  # a dev dependency: missing, the suite fails rather than skips

    schema = _load(relative)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


# --- commands: an old consumer build and a newer writer -----------------------------


@pytest.mark.parametrize("fixture", [V1_CART, V1_ADMISSION], ids=["cart", "admission"])
def test_a_version_1_command_with_added_fields_decodes_as_without(fixture: Any) -> None:
    plain = decode_command(orjson.dumps(fixture))
    newer = decode_command(orjson.dumps(_with_added_fields(fixture)))
    assert newer == plain
    assert "loyaltyTier" not in newer.model_dump_json(by_alias=True)
    assert _validator(topics.COMMANDS.union_file).is_valid(_with_added_fields(fixture))


def test_a_version_the_build_does_not_read_is_refused_by_schema_and_decoder() -> None:
    future = dict(V1_CART, schemaVersion=2)
    assert not _validator(topics.COMMANDS.union_file).is_valid(future)
    with pytest.raises(ValueError, match="schemaVersion"):
        decode_command(orjson.dumps(future))


def _command_of(kind: str, **fields: Any) -> dict[str, Any]:
    wire = {k: V1_CART[k] for k in ("commandId", "occurredAt", "receivedAt", "source")}
    return {**wire, "type": kind, "schemaVersion": 1, "experienceId": "queue_v1", **fields}


@pytest.mark.parametrize(
    ("wire", "valid"),
    [
        (_command_of("experience.configure", strategy="pool", poolSize=3), True),
        (_command_of("experience.configure", strategy="pool", pools=[]), False),
        (_command_of("experience.configure", strategy="pool", poolSize=None), False),
        (_command_of("holds.release", reason="r", consumerId="c"), True),
        (_command_of("holds.release", reason="r", consumerId="c", productId="p"), False),
        (_command_of("holds.release", reason="r", consumerId="c", variantId="v"), False),
    ],
)
def test_conditional_rules_are_in_the_schema_as_the_decoder_applies_them(
    wire: dict[str, Any], valid: bool
) -> None:
    assert _validator(topics.COMMANDS.union_file).is_valid(wire) is valid
    if valid:
        decode_command(orjson.dumps(wire))
    else:
        with pytest.raises(ValidationError):
            decode_command(orjson.dumps(wire))


# --- events: a subscriber decoding with the published schemas -----------------------


def _event_fixtures() -> list[dict[str, Any]]:
    cart = {
        "eventId": "5f6b7c8d-9e0f-5a1b-8c2d-3e4f5a6b7c8d",
        "type": "cart.updated",
        "schemaVersion": 1,
        "commandId": V1_CART["commandId"],
        "occurredAt": "2026-11-26T09:00:00Z",
        "experienceId": "queue_v1",
        "consumerId": "cons_v1",
        "items": [{"productId": "sneaker", "variantId": "42", "quantity": 1}],
    }
    stock = {
        "eventId": "6a7b8c9d-0e1f-5a2b-8c3d-4e5f6a7b8c9d",
        "type": "stock.set",
        "schemaVersion": 1,
        "commandId": "1c2d3e4f-5a6b-5c7d-8e9f-0a1b2c3d4e5f",
        "occurredAt": "2026-11-26T08:59:00Z",
        "productId": "sneaker",
        "variantId": "42",
        "onHand": 100,
    }
    return [cart, stock]


@pytest.mark.parametrize("event", _event_fixtures(), ids=lambda e: e["type"])
def test_a_subscriber_validating_with_the_published_schemas_accepts_added_fields(
    event: dict[str, Any],
) -> None:
    newer = copy.deepcopy(event)
    newer["fulfilmentCentre"] = "ams-2"
    for item in newer.get("items", []):
        item["giftWrap"] = True
    model = type(decode_event(orjson.dumps(event)))
    for relative in (topics.EVENTS.union_file, topics.EVENTS.message_file(model)):
        validator = _validator(relative)
        validator.validate(event)
        validator.validate(newer)
    assert decode_event(orjson.dumps(newer)) == decode_event(orjson.dumps(event))


@pytest.mark.parametrize("missing", ["type", "schemaVersion"])
def test_every_message_schema_requires_its_type_and_version(missing: str) -> None:
    for topic in topics.TOPICS:
        for model in topics.message_types(topic.union):
            schema = _load(topic.message_file(model))
            assert missing in schema["required"], f"{model.__name__} does not require {missing}"
            assert schema.get("additionalProperties", True) is not False, model.__name__
    wire = dict(V1_CART)
    del wire[missing]
    assert not _validator(topics.COMMANDS.union_file).is_valid(wire)


def test_asyncapi_documents_every_header_written_on_the_topics() -> None:
    doc = _load(files.ASYNCAPI_FILE)
    for name, message in doc["components"]["messages"].items():
        headers = message["headers"]
        if name.startswith(f"{topics.EVENTS.channel}."):
            assert set(headers["required"]) == {SEQ_HEADER, EVENT_TYPE_HEADER}, name
            assert "traceparent" in headers["description"], name
        elif name.startswith(f"{topics.COMMANDS.channel}."):
            assert set(headers["properties"]) == {REPLAYED_HEADER}, name
            assert not headers.get("required"), name


# --- through the running service ---------------------------------------------------------


async def _produce_raw(settings: Settings, values: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for value in values:
            key = value["experienceId"].encode()
            await producer.send_and_wait(settings.commands_topic, orjson.dumps(value), key=key)
    finally:
        await producer.stop()


async def _published(settings: Settings, count: int) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """The first `count` events on the events topic, with their headers."""
    consumer = AIOKafkaConsumer(
        settings.events_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[tuple[dict[str, Any], dict[str, str]]] = []
    try:
        while len(found) < count:
            batch = await consumer.getmany(timeout_ms=1000)
            for record in (r for records in batch.values() for r in records):
                headers = {k: v.decode() for k, v in record.headers or ()}
                found.append((orjson.loads(record.value or b"{}"), headers))
    finally:
        await consumer.stop()
    return found


def _newer(fixture: dict[str, Any], experience: str) -> dict[str, Any]:
    wire = _with_added_fields(fixture)
    wire["experienceId"] = experience
    return wire


async def _applied(settings: Settings, command_ids: list[str]) -> tuple[int, int]:
    """Once every command is in the inbox: the admissions recorded and the
    events written."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await wait_for(
            lambda: conn.fetchval(
                "SELECT count(*) = $2 FROM inbox WHERE command_id = ANY($1::uuid[])",
                command_ids,
                len(command_ids),
            ),
            timeout=60,
        )
        admitted = await conn.fetchval("SELECT count(*) FROM admissions")
        return admitted, await conn.fetchval("SELECT count(*) FROM outbox")
    finally:
        await conn.close()


async def test_the_consumer_applies_commands_with_added_fields_and_the_relay_labels_events(
    stack: Stack, settings: Settings
) -> None:
    async with isolated_settings(stack, settings, partitions=1) as iso:
        exp = unique("queue")
        await _produce_raw(iso, [_newer(V1_CART, exp), _newer(V1_ADMISSION, exp)])
        env = service_env(iso, OPS_PORT="0")
        roles = [ServiceProcess([role], env) for role in ("consumer", "relay")]
        for role in roles:
            await role.start()
        try:
            ids = [V1_CART["commandId"], V1_ADMISSION["commandId"]]
            admitted, written = await _applied(iso, ids)
            events = await asyncio.wait_for(_published(iso, written), 60)
            parked = await read_all(iso, iso.dead_letter_topic)
        finally:
            for role in roles:
                await role.stop()
    # Applied, not parked: the admission holds as if the fields were not there.
    assert admitted == 1
    assert parked == []
    assert {"cart.updated", "admission.recorded"} <= {e["type"] for e, _ in events}
    union = _validator(topics.EVENTS.union_file)
    for event, headers in events:
        assert headers[EVENT_TYPE_HEADER] == event["type"]
        assert int(headers[SEQ_HEADER]) > 0
        union.validate(event)
        # What we write holds only the fields we know.
        assert b"loyaltyTier" not in orjson.dumps(event)
        assert b"giftWrap" not in orjson.dumps(event)
