"""Extending a hold through the running service (`python -m worker serve`:
receiver, API, consumer and scheduler): a hold extended twice with
maxExtensions 2 is refused the third time, its expiresAt moved by exactly
twice extensionSeconds, and the scheduler expires it at the new time, not at
the old one. Stock counters equal the holds throughout."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest_asyncio

from tests.helpers import ServiceProcess, now, unique, wait_for
from tests.test_api import Api, _admitted, _healthy, _holds_path, _stock
from worker.config import Settings

WINDOW, EXTENSION = 4, 2


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(service: ServiceProcess) -> Api:
    await wait_for(lambda: _healthy(service.api_url), timeout=60)
    return Api(service.api_url)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def _reserved(client: Api, product: str) -> int:
    answer = await client.get(f"/v1/stock?productId={product}")
    assert answer.status == 200, answer.body
    reserved: int = answer.body["reserved"]
    return reserved


async def _hold(client: Api, experience: str, consumer: str) -> dict[str, Any]:
    answer = await client.get(_holds_path(experience, consumer))
    (hold,) = answer.body["reservations"]
    result: dict[str, Any] = hold
    return result


async def test_extended_twice_refused_the_third_time_and_expired_at_the_new_time(
    client: Api, service: ServiceProcess, db: asyncpg.Pool
) -> None:
    experience, consumer, product = unique("queue"), unique("cons"), unique("prod")
    grant = "eyJ" + unique("grant")
    settings = {
        "windowSeconds": WINDOW,
        "bufferSeconds": 0,
        "extensionSeconds": EXTENSION,
        "maxExtensions": 2,
    }
    assert (await client.put(f"/v1/experiences/{experience}", settings)).status == 200
    await _stock(client, product, 3)
    cart = {"items": [{"productId": product, "quantity": 1}]}
    assert (
        await client.put(f"/v1/experiences/{experience}/consumers/{consumer}/cart", cart)
    ).status == 200
    (hold,) = await _admitted(client, service, experience, consumer, grant)
    first_expiry = datetime.fromisoformat(hold["expiresAt"])
    extend = f"/v1/experiences/{experience}/consumers/{consumer}/reservations/extend"
    answers = [await client.post(extend, {"admissionGrant": grant}) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 409], [a.body for a in answers]
    assert [a.body.get("extensionsLeft") for a in answers[:2]] == [1, 0]
    assert answers[2].body["error"] == "EXTENSIONS_EXHAUSTED"
    new_expiry = first_expiry + timedelta(seconds=2 * EXTENSION)
    assert datetime.fromisoformat(answers[1].body["expiresAt"]) == new_expiry
    moved = await _hold(client, experience, consumer)
    assert datetime.fromisoformat(moved["expiresAt"]) == new_expiry
    assert await _reserved(client, product) == 1

    # Past the old time by more than the scheduler's scan interval: still held.
    await wait_for(lambda: _after(first_expiry + timedelta(seconds=1)), timeout=WINDOW + 5)
    assert (await _hold(client, experience, consumer))["status"] == "active"
    assert await _reserved(client, product) == 1

    async def expired() -> bool:
        return (await _hold(client, experience, consumer))["status"] == "expired"

    await wait_for(expired, timeout=2 * EXTENSION + 10)
    ended = await db.fetchrow(
        "SELECT status, end_reason, ended_at, extensions FROM admissions "
        "WHERE experience_id = $1 AND consumer_id = $2",
        experience,
        consumer,
    )
    assert ended is not None
    assert (ended["status"], ended["end_reason"]) == ("expired", "window_elapsed")
    assert (ended["ended_at"], ended["extensions"]) == (new_expiry, 2)
    assert await _reserved(client, product) == 0


async def _after(moment: datetime) -> bool:
    return now() > moment


async def test_refusals_answer_in_the_error_shape(client: Api, service: ServiceProcess) -> None:
    experience, consumer, product = unique("queue"), unique("cons"), unique("prod")
    grant = "eyJ" + unique("grant")
    await _stock(client, product, 1)
    cart = {"items": [{"productId": product, "quantity": 1}]}
    await client.put(f"/v1/experiences/{experience}/consumers/{consumer}/cart", cart)
    await _admitted(client, service, experience, consumer, grant)
    extend = f"/v1/experiences/{experience}/consumers/{consumer}/reservations/extend"
    off = await client.post(extend, {"admissionGrant": grant})
    assert (off.status, off.body["error"]) == (409, "EXTENSION_NOT_ALLOWED"), off.body
    stranger = await client.post(extend, {"admissionGrant": "eyJ" + unique("other")})
    assert (stranger.status, stranger.body["error"]) == (403, "ADMISSION_MISMATCH")
    bad = await client.post(extend, {"grant": grant})
    assert bad.status == 400
