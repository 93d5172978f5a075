"""Trying again after an expiry through the running service (`python -m
worker serve`, the scheduler included): an admission expired by the
scheduler holds again within its retry window and within stock, per line;
a second call answers the first outcome; the stock counters equal the
holds throughout."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest_asyncio

from tests.helpers import ServiceProcess, unique, wait_for
from tests.test_api import Api, _admitted, _healthy, _holds_path, _stock

WINDOW = 2


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(service: ServiceProcess) -> Api:
    await wait_for(lambda: _healthy(service.api_url), timeout=60)
    return Api(service.api_url)


async def _holds(client: Api, experience: str, consumer: str) -> list[dict[str, Any]]:
    answer = await client.get(_holds_path(experience, consumer))
    assert answer.status == 200, answer.body
    holds: list[dict[str, Any]] = answer.body["reservations"]
    return holds


async def _counters_equal_holds(
    client: Api, experience: str, consumers: list[str], products: list[str]
) -> None:
    """reserved = Σ active holds (these consumers are the products' only ones)."""
    active = {p: 0 for p in products}
    for consumer in consumers:
        for h in await _holds(client, experience, consumer):
            if h["status"] == "active":
                active[h["productId"]] += h["quantity"]
    for p in products:
        stock = await client.get(f"/v1/stock?productId={p}")
        assert (stock.body["reserved"], stock.body["sold"]) == (active[p], 0), p


async def _put_cart(client: Api, experience: str, consumer: str, *lines: tuple[str, int]) -> None:
    items = [{"productId": p, "quantity": q} for p, q in lines]
    answer = await client.put(
        f"/v1/experiences/{experience}/consumers/{consumer}/cart", {"items": items}
    )
    assert answer.status == 200, answer.body


async def test_an_expired_admission_holds_again_within_stock_once(
    client: Api, service: ServiceProcess
) -> None:
    experience, shopper, other = unique("queue"), unique("cons"), unique("cons")
    cap, shoe = unique("prod"), unique("prod")
    grant = "eyJ" + unique("grant")
    settings = {"windowSeconds": WINDOW, "bufferSeconds": 0, "retryWindowSeconds": 60}
    assert (await client.put(f"/v1/experiences/{experience}", settings)).status == 200
    await _stock(client, cap, 1)
    await _stock(client, shoe, 2)
    everyone, products = [shopper, other], [cap, shoe]
    await _put_cart(client, experience, shopper, (cap, 1), (shoe, 2))
    held = await _admitted(client, service, experience, shopper, grant)
    assert [h["status"] for h in held] == ["active", "active"]
    await _counters_equal_holds(client, experience, everyone, products)

    async def expired() -> bool:
        holds = await _holds(client, experience, shopper)
        return all(h["status"] == "expired" for h in holds)

    await wait_for(expired, timeout=WINDOW + 10)
    await _counters_equal_holds(client, experience, everyone, products)
    # Someone else takes one of the shoes meanwhile.
    await _put_cart(client, experience, other, (shoe, 1))
    await _admitted(client, service, experience, other, "eyJ" + unique("grant"))
    await _counters_equal_holds(client, experience, everyone, products)

    retry = f"/v1/experiences/{experience}/consumers/{shopper}/reservations/retry"
    first = await client.post(retry, {"admissionGrant": grant})
    assert first.status == 200, first.body
    assert (first.body["status"], first.body["held"], first.body["rejected"]) == ("retried", 1, 1)
    lines = {line["productId"]: line for line in first.body["lines"]}
    assert (lines[cap]["held"], lines[shoe]["reason"]) == (True, "INSUFFICIENT_STOCK")
    expires = datetime.fromisoformat(first.body["expiresAt"])
    assert expires - datetime.fromisoformat(held[0]["expiresAt"]) > timedelta(0)
    await _counters_equal_holds(client, experience, everyone, products)

    second = await client.post(
        retry, {"admissionGrant": grant}, headers={"Idempotency-Key": unique("key")}
    )
    assert second.status == 200, second.body
    assert second.body == first.body
    await _counters_equal_holds(client, experience, everyone, products)
    active = [h for h in await _holds(client, experience, shopper) if h["status"] == "active"]
    assert [(h["productId"], h["quantity"]) for h in active] == [(cap, 1)]


async def test_refusals_answer_in_the_error_shape(client: Api, service: ServiceProcess) -> None:
    experience, consumer, product = unique("queue"), unique("cons"), unique("prod")
    grant = "eyJ" + unique("grant")
    await _stock(client, product, 1)
    await _put_cart(client, experience, consumer, (product, 1))
    await _admitted(client, service, experience, consumer, grant)
    retry = f"/v1/experiences/{experience}/consumers/{consumer}/reservations/retry"
    off = await client.post(retry, {"admissionGrant": grant})
    assert (off.status, off.body["error"]) == (409, "RETRY_NOT_ALLOWED"), off.body
    await client.put(f"/v1/experiences/{experience}", {"retryWindowSeconds": 60})
    early = await client.post(retry, {"admissionGrant": grant})
    assert (early.status, early.body["error"]) == (409, "NOT_EXPIRED"), early.body
    stranger = await client.post(retry, {"admissionGrant": "eyJ" + unique("other")})
    assert (stranger.status, stranger.body["error"]) == (403, "ADMISSION_MISMATCH")
