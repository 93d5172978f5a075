"""The first end-to-end path: signed webhook -> Kafka -> consumer -> PostgreSQL."""

from __future__ import annotations

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.conftest import SECRET
from tests.helpers import (
    ServiceProcess,
    admission_envelope,
    post_webhook,
    produce_commands,
    put_cart_command,
    set_stock_command,
    unique,
    wait_for,
)
from worker.config import Settings
from worker.domain.ids import command_id, grant_digest
from worker.domain.model import CartLine


async def _stock(db: asyncpg.Pool, product: str, variant: str = "") -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT on_hand, reserved, sold FROM stock WHERE product_id = $1 AND variant_id = $2",
        product,
        variant,
    )


async def _commands_end_offset(settings: Settings) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        parts = [
            TopicPartition(settings.commands_topic, p) for p in range(settings.topic_partitions)
        ]
        ends = await consumer.end_offsets(parts)
        return sum(ends.values())
    finally:
        await consumer.stop()


async def _applied(db: asyncpg.Pool, fanfare_event_id: str) -> bool:
    return bool(
        await db.fetchval(
            "SELECT true FROM inbox WHERE command_id = $1", command_id("fanfare", fanfare_event_id)
        )
    )


async def test_signed_admission_holds_the_cart_once(
    service: ServiceProcess, settings: Settings, db: asyncpg.Pool
) -> None:
    experience, consumer = unique("queue"), unique("cons")
    shoe, shirt = unique("prod"), unique("prod")
    grant = "eyJ" + unique("grant")
    await produce_commands(
        settings,
        [
            set_stock_command(shoe, 10),
            set_stock_command(shirt, 5, variant_id="L"),
            put_cart_command(
                experience,
                consumer,
                [
                    CartLine(product_id=shoe, quantity=2),
                    CartLine(product_id=shirt, variant_id="L", quantity=1),
                ],
            ),
        ],
    )
    await wait_for(lambda: _stock(db, shirt, "L"))
    await wait_for(lambda: _stock(db, shoe))

    envelope = admission_envelope(experience, consumer, grant)
    status, body = await post_webhook(service.webhook_url, envelope, SECRET)
    assert status == 200, body
    assert body["status"] == "accepted"

    rows = await wait_for(
        lambda: db.fetch(
            "SELECT * FROM reservations WHERE experience_id = $1 ORDER BY product_id", experience
        )
    )
    assert len(rows) == 2
    assert {r["status"] for r in rows} == {"active"}
    assert {r["admission_grant"] for r in rows} == {grant_digest(grant)}
    assert {(r["product_id"], r["variant_id"], r["quantity"]) for r in rows} == {
        (shoe, "", 2),
        (shirt, "L", 1),
    }
    shoe_row = await _stock(db, shoe)
    assert shoe_row is not None
    assert (shoe_row["on_hand"], shoe_row["reserved"], shoe_row["sold"]) == (10, 2, 0)
    shirt_row = await _stock(db, shirt, "L")
    assert shirt_row is not None
    assert shirt_row["reserved"] == 1

    # Fanfare retries the same event (same id, new delivery id) ...
    status, _ = await post_webhook(service.webhook_url, envelope, SECRET)
    assert status == 200
    # ... and the same grant arrives again under another event id.
    again = admission_envelope(experience, consumer, grant)
    status, _ = await post_webhook(service.webhook_url, again, SECRET)
    assert status == 200
    # Positive signal: the later event (same partition, after the retry) was
    # applied, and recorded as a duplicate grant.
    await wait_for(lambda: _applied(db, again["id"]))
    outcome = await db.fetchval(
        "SELECT outcome->>'status' FROM inbox WHERE command_id = $1",
        command_id("fanfare", again["id"]),
    )
    assert outcome == "duplicate_grant"
    assert (
        await db.fetchval(
            "SELECT count(*) FROM inbox WHERE command_id = $1",
            command_id("fanfare", envelope["id"]),
        )
        == 1
    )
    assert (
        await db.fetchval("SELECT count(*) FROM reservations WHERE experience_id = $1", experience)
        == 2
    )
    shoe_row = await _stock(db, shoe)
    assert shoe_row is not None
    assert shoe_row["reserved"] == 2


async def test_wrong_signature_is_401_and_reaches_no_topic(
    service: ServiceProcess, settings: Settings, db: asyncpg.Pool
) -> None:
    experience, consumer = unique("queue"), unique("cons")
    before = await _commands_end_offset(settings)
    forged = admission_envelope(experience, consumer, "eyJ" + unique("grant"))
    status, body = await post_webhook(service.webhook_url, forged, "whsec_not_ours")
    assert status == 401
    assert body["error"] == "SIGNATURE_INVALID"
    # Positive signal: a valid webhook sent afterwards reaches the topic and
    # is applied, and it is the only message added.
    genuine = admission_envelope(experience, consumer, "eyJ" + unique("grant"))
    status, _ = await post_webhook(service.webhook_url, genuine, SECRET)
    assert status == 200
    await wait_for(lambda: _applied(db, genuine["id"]))
    assert await _commands_end_offset(settings) == before + 1
    assert not await _applied(db, forged["id"])
