"""Late and early webhooks end to end: signed deliveries to the running
service (receiver -> Kafka -> consumer -> PostgreSQL, scheduler included),
each story delivered out of time order, as Fanfare's retries do."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg

from tests import builders as b
from tests.conftest import SECRET
from tests.helpers import (
    ServiceProcess,
    admission_envelope,
    now,
    post_webhook,
    produce_commands,
    set_stock_command,
    unique,
    wait_for,
)
from worker.config import Settings
from worker.domain.ids import command_id, grant_digest


def _event(
    event_type: str, experience: str, consumer: str, at: datetime, **data: Any
) -> dict[str, Any]:
    return {
        "id": unique("whk"),
        "type": event_type,
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        "organizationId": "org_test",
        "data": {"queueId": experience, "consumerId": consumer, **data},
    }


class Drop:
    """One consumer with one unit in the cart, and the service to deliver to."""

    def __init__(self, service: ServiceProcess, settings: Settings, db: asyncpg.Pool) -> None:
        self.service, self.settings, self.db = service, settings, db
        self.exp, self.cons, self.product = unique("queue"), unique("cons"), unique("prod")

    async def prepare(self, on_hand: int) -> None:
        # The cart was filled in the waiting room, an hour before any story.
        cart = b.cart(self.exp, self.cons, b.line(self.product, 1), at=now() - seconds(3600))
        await produce_commands(self.settings, [set_stock_command(self.product, on_hand), cart])
        await wait_for(lambda: self.cart_stored())

    async def cart_stored(self) -> bool:
        return bool(
            await self.db.fetchval(
                "SELECT true FROM carts WHERE experience_id = $1 AND consumer_id = $2",
                self.exp,
                self.cons,
            )
        )

    async def deliver(self, envelope: dict[str, Any]) -> None:
        """Post it signed and wait until the consumer applied it."""
        status, body = await post_webhook(self.service.webhook_url, envelope, SECRET)
        assert status == 200, body
        applied = command_id("fanfare", envelope["id"])
        await wait_for(
            lambda: self.db.fetchval("SELECT true FROM inbox WHERE command_id = $1", applied)
        )

    async def admit(self, grant: str, at: datetime) -> None:
        await self.deliver(admission_envelope(self.exp, self.cons, grant, admitted_at=at))

    async def left(self, at: datetime) -> None:
        await self.deliver(_event("queue.consumer.left", self.exp, self.cons, at))

    async def completed(self, order_id: str, at: datetime) -> None:
        await self.deliver(
            _event("queue.consumer.completed", self.exp, self.cons, at, orderId=order_id)
        )

    async def holds(self, grant: str) -> list[tuple[int, str]]:
        rows = await self.db.fetch(
            "SELECT quantity, status FROM reservations WHERE admission_grant = $1",
            grant_digest(grant),
        )
        return sorted((r["quantity"], r["status"]) for r in rows)

    async def admission(self, grant: str) -> str:
        status: str = await self.db.fetchval(
            "SELECT status FROM admissions WHERE admission_grant = $1", grant_digest(grant)
        )
        return status

    async def stock(self) -> tuple[int, int, int]:
        row = await self.db.fetchrow(
            "SELECT on_hand, reserved, sold FROM stock WHERE product_id = $1", self.product
        )
        assert row is not None
        return row["on_hand"], row["reserved"], row["sold"]


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


async def test_a_retried_left_delivered_last_leaves_the_new_visit_holding(
    service: ServiceProcess, settings: Settings, db: asyncpg.Pool
) -> None:
    drop = Drop(service, settings, db)
    await drop.prepare(on_hand=5)
    t = now()
    a, b = "eyJ" + unique("grant"), "eyJ" + unique("grant")
    await drop.admit(a, t - seconds(60))
    await drop.admit(b, t - seconds(10))
    await drop.left(t - seconds(30))  # its first delivery failed; the retry comes last
    assert await drop.holds(b) == [(1, "active")]
    assert await drop.admission(a) == "released"
    assert await drop.stock() == (5, 1, 0)


async def test_a_left_from_before_the_admission_delivered_first_does_not_stop_it(
    service: ServiceProcess, settings: Settings, db: asyncpg.Pool
) -> None:
    drop = Drop(service, settings, db)
    await drop.prepare(on_hand=5)
    t = now()
    g = "eyJ" + unique("grant")
    await drop.left(t - seconds(30))
    await drop.admit(g, t - seconds(10))
    assert await drop.holds(g) == [(1, "active")]


async def test_a_left_delivered_before_its_own_earlier_admission_stops_it(
    service: ServiceProcess, settings: Settings, db: asyncpg.Pool
) -> None:
    drop = Drop(service, settings, db)
    await drop.prepare(on_hand=5)
    t = now()
    g = "eyJ" + unique("grant")
    await drop.left(t - seconds(30))
    await drop.admit(g, t - seconds(60))
    assert await drop.admission(g) == "released"
    assert await drop.holds(g) == []
    assert await drop.stock() == (5, 0, 0)


async def test_a_completion_delivered_before_its_admission_converts_it_when_it_arrives(
    service: ServiceProcess, settings: Settings, db: asyncpg.Pool
) -> None:
    drop = Drop(service, settings, db)
    await drop.prepare(on_hand=5)
    t = now()
    g = "eyJ" + unique("grant")
    await drop.completed("order-" + unique("o"), t - seconds(5))
    await drop.admit(g, t - seconds(20))
    assert await drop.holds(g) == [(1, "converted")]
    assert await drop.admission(g) == "converted"
    assert await drop.stock() == (5, 0, 1)


async def test_a_completion_delivered_after_the_hold_expired_sells_the_unit(
    service: ServiceProcess, settings: Settings, db: asyncpg.Pool
) -> None:
    drop = Drop(service, settings, db)
    await drop.prepare(on_hand=1)
    t = now()
    g = "eyJ" + unique("grant")
    # Admitted 11 min 5 s ago: the default window and buffer (660 s) ran out
    # 5 s ago, so the scheduler expires it as soon as it is applied.
    await drop.admit(g, t - seconds(665))
    await wait_for(lambda: drop.holds(g), timeout=30)
    assert await wait_for(lambda: _expired(drop, g), timeout=30)
    assert await drop.stock() == (1, 0, 0)
    await drop.completed("order-" + unique("o"), t - seconds(2))
    assert await drop.stock() == (1, 0, 1)
    assert await drop.holds(g) == [(1, "converted")]


async def _expired(drop: Drop, grant: str) -> bool:
    return await drop.holds(grant) == [(1, "expired")]
