"""Nothing acknowledged is lost across a broker outage.

A broker of this test's own (the session's is shared and must stay up) is
stopped while Fanfare keeps delivering: every webhook gets 503 with
Retry-After, none a 2xx. The broker comes back, the deliveries are retried
the way Fanfare retries (same event id, same delivery id, fresh signature),
and every event ends up applied in PostgreSQL exactly once.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import pytest_asyncio

from tests.conftest import SECRET, service_env
from tests.helpers import (
    ServiceProcess,
    admission_envelope,
    produce_commands,
    put_cart_command,
    set_stock_command,
    signed_headers,
    unique,
    wait_for,
)
from tests.own_broker import OwnBroker
from worker.adapters import kafka
from worker.config import Settings
from worker.domain.ids import command_id
from worker.domain.model import CartLine

pytestmark = pytest.mark.integration

BROKER = OwnBroker("test-outage", "TEST_OUTAGE_KAFKA_PORT")
CONSUMERS = 5
QTY = 2


@pytest.fixture(scope="module")
def outage_broker() -> Iterator[str]:
    with BROKER.running() as bootstrap:
        yield bootstrap


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def outage_settings(settings: Settings, outage_broker: str, run_id: str) -> Settings:
    s = settings.model_copy(
        update={
            "kafka_bootstrap_servers": outage_broker,
            "commands_topic": f"o{run_id}.commands",
            "events_topic": f"o{run_id}.events",
            "dead_letter_topic": f"o{run_id}.commands.dlq",
            "consumer_group": f"o{run_id}.consumers",
            "produce_timeout_seconds": 2.0,
        }
    )
    await kafka.ensure_topics(s)
    return s


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def outage_service(outage_settings: Settings) -> AsyncIterator[ServiceProcess]:
    proc = ServiceProcess(
        ["serve"],
        service_env(
            outage_settings,
            PRODUCE_TIMEOUT_SECONDS=str(outage_settings.produce_timeout_seconds),
        ),
    )
    await proc.start()
    yield proc
    await proc.stop()


@dataclass
class FanfareDelivery:
    """One event, delivered until a 2xx like Fanfare would (faster)."""

    envelope: dict[str, Any]
    delivery_id: str = field(default_factory=lambda: unique("dlv"))
    statuses: list[int] = field(default_factory=list)
    retry_after_missing: int = 0

    async def deliver(self, session: aiohttp.ClientSession, url: str, deadline: float) -> None:
        body = orjson.dumps(self.envelope)
        while time.monotonic() < deadline:
            headers = signed_headers(body, SECRET, delivery_id=self.delivery_id)
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    self.statuses.append(r.status)
                    if r.status == 503 and not r.headers.get("Retry-After", "").isdigit():
                        self.retry_after_missing += 1
                    if 200 <= r.status < 300:
                        return
            except aiohttp.ClientError:
                self.statuses.append(0)
            await asyncio.sleep(0.5)
        raise AssertionError(f"never acknowledged: {self.statuses}")


async def _applied(db: asyncpg.Pool, event_id: str) -> bool:
    count = await db.fetchval(
        "SELECT count(*) FROM inbox WHERE command_id = $1", command_id("fanfare", event_id)
    )
    return bool(count == 1)


async def _ready_status(session: aiohttp.ClientSession, service: ServiceProcess) -> int:
    async with session.get(f"http://127.0.0.1:{service.port}/readyz") as r:
        return r.status


async def test_webhooks_during_a_broker_outage_are_503_then_all_applied(
    outage_service: ServiceProcess, outage_settings: Settings, db: asyncpg.Pool
) -> None:
    experience = unique("queue")
    product = unique("prod")
    consumers = [unique("cons") for _ in range(CONSUMERS + 1)]
    await produce_commands(
        outage_settings,
        [
            set_stock_command(product, 100),
            *(
                put_cart_command(experience, c, [CartLine(product_id=product, quantity=QTY)])
                for c in consumers
            ),
        ],
    )
    # Stock is keyed by product, carts by experience: different partitions,
    # so nothing orders them before the admissions but waiting for them.
    await wait_for(
        lambda: db.fetchval(
            """SELECT (SELECT count(*) FROM stock WHERE product_id = $1)
                    + (SELECT count(*) FROM carts WHERE experience_id = $2) = $3""",
            product,
            experience,
            len(consumers) + 1,
        ),
        timeout=60,
    )
    url = outage_service.webhook_url
    async with aiohttp.ClientSession() as session:
        # Before the outage: the path works end to end (positive baseline).
        first = FanfareDelivery(admission_envelope(experience, consumers[0], unique("eyJg")))
        await first.deliver(session, url, time.monotonic() + 60)
        await wait_for(lambda: _applied(db, first.envelope["id"]))
        assert await _ready_status(session, outage_service) == 200

        await asyncio.to_thread(BROKER.run, "stop")

        during = [
            FanfareDelivery(admission_envelope(experience, c, unique("eyJg")))
            for c in consumers[1:]
        ]
        # The consumer admitted before the outage leaves during it.
        left = FanfareDelivery(
            {
                "id": unique("whk"),
                "type": "queue.consumer.left",
                "timestamp": admission_envelope(experience, consumers[0], "x")["timestamp"],
                "organizationId": "org_test",
                "data": {"queueId": experience, "consumerId": consumers[0]},
            }
        )
        during.append(left)
        deadline = time.monotonic() + 240
        tasks = [asyncio.create_task(d.deliver(session, url, deadline)) for d in during]
        try:
            # Every delivery is refused with 503 at least once while the
            # broker is down, and none is acknowledged.
            await wait_for(
                lambda: asyncio.sleep(0, all(503 in d.statuses for d in during)), timeout=120
            )
            assert not any(t.done() for t in tasks), [d.statuses for d in during]
            assert await _ready_status(session, outage_service) == 503
        finally:
            await asyncio.to_thread(BROKER.run, "start")
        await asyncio.gather(*tasks)

    for d in during:
        assert all(s in (0, 503) for s in d.statuses[:-1]), d.statuses
        assert 200 <= d.statuses[-1] < 300
        assert d.retry_after_missing == 0

    # Every event applied, each exactly once.
    for d in [first, *during]:
        await wait_for(functools.partial(_applied, db, d.envelope["id"]), timeout=120)
    holds = await db.fetch(
        "SELECT consumer_id, status, quantity FROM reservations WHERE experience_id = $1",
        experience,
    )
    by_consumer = {r["consumer_id"]: (r["status"], r["quantity"]) for r in holds}
    assert by_consumer == {
        consumers[0]: ("released", QTY),
        **{c: ("active", QTY) for c in consumers[1:]},
    }
    reserved = await db.fetchval(
        "SELECT reserved FROM stock WHERE product_id = $1 AND variant_id = ''", product
    )
    assert reserved == CONSUMERS * QTY
