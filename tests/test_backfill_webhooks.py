"""Backfill end to end: the experience configured through the API, stock
and carts as commands, every admission and ending a signed Fanfare webhook
to the running service (receiver -> Kafka -> consumer -> PostgreSQL). One
unit: A holds it, B and C are refused; when A leaves B holds it, and C
only once B's hold ends. Without backfill nobody is offered anything."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import orjson

from tests import builders as b
from tests.conftest import API_KEY, SECRET
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


class Line:
    """One experience, one product with one unit, shoppers with one unit
    each in the cart, and the service to deliver to."""

    def __init__(self, service: ServiceProcess, settings: Settings, db: asyncpg.Pool) -> None:
        self.service, self.settings, self.db = service, settings, db
        self.exp, self.product = unique("queue"), unique("prod")
        self.run = unique("g")
        self.t = now()

    def grant(self, who: str) -> str:
        return f"eyJ{self.run}-{who}"

    async def prepare(self, backfill: bool, shoppers: str = "ABC") -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.put(
                f"{self.service.api_url}/v1/experiences/{self.exp}",
                data=orjson.dumps({"strategy": "soft", "backfill": backfill}),
                headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
            ) as r,
        ):
            answer = await r.json()
            assert (r.status, answer["backfill"]) == (200, backfill), answer
        before = self.t - timedelta(hours=1)  # the carts were filled in the waiting room
        carts = [b.cart(self.exp, who, b.line(self.product, 1), at=before) for who in shoppers]
        await produce_commands(self.settings, [set_stock_command(self.product, 1), *carts])
        await wait_for(lambda: self.carts_stored(len(shoppers)))

    async def carts_stored(self, n: int) -> bool:
        stored = await self.db.fetchval(
            "SELECT count(*) FROM carts WHERE experience_id = $1", self.exp
        )
        return bool(stored == n)

    async def deliver(self, envelope: dict[str, Any]) -> None:
        """Post it signed and wait until the consumer applied it."""
        status, body = await post_webhook(self.service.webhook_url, envelope, SECRET)
        assert status == 200, body
        applied = command_id("fanfare", envelope["id"])
        await wait_for(
            lambda: self.db.fetchval("SELECT true FROM inbox WHERE command_id = $1", applied)
        )

    def at(self, seconds: int) -> datetime:
        return self.t + timedelta(seconds=seconds)

    async def admit(self, who: str, seconds: int) -> None:
        envelope = admission_envelope(self.exp, who, self.grant(who), admitted_at=self.at(seconds))
        await self.deliver(envelope)

    async def leave(self, who: str, seconds: int) -> None:
        stamp = self.at(seconds).isoformat().replace("+00:00", "Z")
        await self.deliver(
            {
                "id": unique("whk"),
                "type": "queue.consumer.left",
                "timestamp": stamp,
                "organizationId": "org_test",
                "data": {"queueId": self.exp, "consumerId": who},
            }
        )

    async def held(self) -> list[str]:
        """Who holds the unit now."""
        rows = await self.db.fetch(
            """SELECT consumer_id FROM reservations
               WHERE experience_id = $1 AND status = 'active' ORDER BY consumer_id""",
            self.exp,
        )
        return [r["consumer_id"] for r in rows]

    async def backfilled(self) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            """SELECT payload FROM outbox
               WHERE partition_key = $1 AND event_type = 'reservation.created' ORDER BY seq""",
            self.exp,
        )
        events = [orjson.loads(r["payload"]) for r in rows]
        return [e for e in events if e.get("reason") == "backfill"]

    async def stock(self) -> tuple[int, int, int]:
        row = await self.db.fetchrow(
            "SELECT on_hand, reserved, sold FROM stock WHERE product_id = $1", self.product
        )
        assert row is not None
        return row["on_hand"], row["reserved"], row["sold"]


async def test_a_freed_unit_goes_to_the_oldest_refused_shopper_then_the_next(
    service: ServiceProcess, settings: Settings, db: asyncpg.Pool
) -> None:
    line = Line(service, settings, db)
    await line.prepare(backfill=True)
    await line.admit("A", -50)
    await line.admit("B", -40)
    await line.admit("C", -30)
    assert await line.held() == ["A"]
    await line.leave("A", -20)
    assert await line.held() == ["B"]
    [to_b] = await line.backfilled()
    b_expires = await db.fetchval(
        "SELECT expires_at FROM admissions WHERE admission_grant = $1",
        grant_digest(line.grant("B")),
    )
    expires_at = datetime.fromisoformat(to_b["expiresAt"].replace("Z", "+00:00"))
    assert (to_b["consumerId"], expires_at) == ("B", b_expires)
    assert await line.stock() == (1, 1, 0)
    await line.leave("B", -10)
    assert await line.held() == ["C"]
    assert [e["consumerId"] for e in await line.backfilled()] == ["B", "C"]
    assert await line.stock() == (1, 1, 0)


async def test_without_backfill_a_freed_unit_is_offered_to_nobody(
    service: ServiceProcess, settings: Settings, db: asyncpg.Pool
) -> None:
    line = Line(service, settings, db)
    await line.prepare(backfill=False)
    await line.admit("A", -50)
    await line.admit("B", -40)
    await line.admit("C", -30)
    await line.leave("A", -20)  # applied: the positive signal
    assert await line.held() == []
    assert await line.backfilled() == []
    assert await line.stock() == (1, 0, 0)
