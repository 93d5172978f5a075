"""Pools per product: the pure rules (a pool's cap, what a pool shows, no
pool shrunk below its usage), the engine's stories on both backends, and
the drop through the running service (signed webhooks, the HTTP API)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from tests import builders as b
from tests.conftest import SECRET
from tests.engine_backends import Engine
from tests.helpers import (
    ServiceProcess,
    admission_envelope,
    post_webhook,
    produce_commands,
    put_cart_command,
    unique,
    wait_for,
)
from tests.test_api import Api
from worker.config import Settings
from worker.domain.commands import ConfigureExperience
from worker.domain.model import CartLine, ExperienceSettings, ProductPool, Strategy
from worker.domain.pools import PoolBelowUsed, PoolState, pool_below_used, pool_cap, pool_states

T0 = datetime(2026, 12, 5, 18, 0, tzinfo=UTC)


def _pools(**sizes: int) -> list[ProductPool]:
    return [ProductPool(product_id=p, size=n) for p, n in sizes.items()]


def _pool(pool_size: int | None = None, **sizes: int) -> ExperienceSettings:
    return ExperienceSettings(strategy=Strategy.POOL, pool_size=pool_size, pools=_pools(**sizes))


# --- the pure rules ------------------------------------------------------------------


def test_a_listed_product_has_its_own_size_the_rest_pool_size_or_nothing() -> None:
    listed = ExperienceSettings(
        strategy=Strategy.POOL,
        pool_size=7,
        pools=[ProductPool(product_id="shoe", variant_id="42", size=3)],
    )
    assert pool_cap(listed, "shoe", "42") == 3
    assert pool_cap(listed, "shoe", "43") == 7  # another variant is another product row
    assert pool_cap(listed, "cap", "") == 7
    assert pool_cap(_pool(shoe=3), "cap", "") == 0


def test_the_pool_strategy_needs_pool_size_or_pools() -> None:
    common = {"command_id": b.stock("x", 1).command_id, "occurred_at": T0, "received_at": T0}
    source = b.stock("x", 1).source
    ConfigureExperience(
        **common, source=source, experience_id="e", strategy=Strategy.POOL, pools=_pools(a=1)
    )
    ConfigureExperience(**common, source=source, experience_id="e", strategy="pool", pool_size=0)
    with pytest.raises(ValueError, match="poolSize or pools is required"):
        ConfigureExperience(**common, source=source, experience_id="e", strategy=Strategy.POOL)


def test_pool_states_show_listed_pools_and_products_used_under_the_default() -> None:
    settings = _pool(2, shoe=3, bag=1)
    used = {("shoe", ""): 3, ("cap", ""): 1, ("hat", ""): 0}
    assert pool_states(settings, used) == [
        PoolState("bag", "", 1, 0),
        PoolState("cap", "", 2, 1),
        PoolState("hat", "", 2, 0),
        PoolState("shoe", "", 3, 3),
    ]
    # A sale counted past the cap: nothing left, never below zero.
    assert PoolState("shoe", "", 3, 4).left == 0
    assert pool_states(ExperienceSettings(), {}) == []


@pytest.mark.parametrize(
    ("earlier", "settings", "used", "refused"),
    [
        # Down to exactly what is used, or up: allowed.
        (_pool(shoe=5), _pool(shoe=3), {("shoe", ""): 3}, None),
        (_pool(shoe=3), _pool(shoe=9), {("shoe", ""): 3}, None),
        # Below what is used: refused, listed or by poolSize.
        (_pool(shoe=5), _pool(shoe=2), {("shoe", ""): 3}, PoolBelowUsed("shoe", "", 2, 3)),
        (_pool(4), _pool(1), {("cap", ""): 2}, PoolBelowUsed("cap", "", 1, 2)),
        # Unlisting a product sends it to poolSize (none: size 0).
        (_pool(shoe=5), _pool(bag=1), {("shoe", ""): 1}, PoolBelowUsed("shoe", "", 0, 1)),
        # The first pool in key order is named.
        (
            _pool(9),
            _pool(1),
            {("shoe", ""): 3, ("cap", ""): 2},
            PoolBelowUsed("cap", "", 1, 2),
        ),
        # A pool past its size (a late sale) may keep that size, not shrink.
        (_pool(shoe=3), _pool(shoe=3), {("shoe", ""): 4}, None),
        (_pool(shoe=3), _pool(shoe=2), {("shoe", ""): 4}, PoolBelowUsed("shoe", "", 2, 4)),
        # Another strategy caps nothing; from one, any size below use is a shrink.
        (_pool(shoe=3), ExperienceSettings(), {("shoe", ""): 3}, None),
        (ExperienceSettings(), _pool(shoe=2), {("shoe", ""): 3}, PoolBelowUsed("shoe", "", 2, 3)),
        (None, _pool(shoe=2), {("shoe", ""): 3}, PoolBelowUsed("shoe", "", 2, 3)),
        (None, _pool(shoe=2), {}, None),
    ],
)
def test_a_pool_never_shrinks_below_what_it_handed_out(
    earlier: ExperienceSettings | None,
    settings: ExperienceSettings,
    used: dict[tuple[str, str], int],
    refused: PoolBelowUsed | None,
) -> None:
    assert pool_below_used(earlier, settings, used) == refused


# --- the engine, in memory and on PostgreSQL -------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def engine(engine_backend: Engine) -> AsyncIterator[Engine]:
    yield engine_backend
    await engine_backend.assert_counters_match_rows()


async def _admit_all(
    engine: Engine, exp: str, consumers: int, *lines: CartLine
) -> list[dict[str, Any]]:
    outcomes = []
    for n in range(consumers):
        who = f"{exp}-c{n}"
        await engine(b.cart(exp, who, *lines))
        outcomes.append(await engine(b.admit(exp, who, f"{who}-g", T0 + timedelta(seconds=n))))
    return outcomes


def _held(outcomes: list[dict[str, Any]], product: str) -> int:
    return sum(
        1 for o in outcomes for line in o["lines"] if line["productId"] == product and line["held"]
    )


async def test_two_products_hold_exactly_their_pool_sizes(engine: Engine) -> None:
    exp, a, c = unique("exp"), unique("prod"), unique("prod")
    await engine(b.stock(a, 100))
    await engine(b.stock(c, 100))
    await engine(b.configure(exp, strategy="pool", pools=_pools(**{a: 3, c: 5})))
    outcomes = await _admit_all(engine, exp, 20, b.line(a, 2), b.line(c, 1))
    assert (_held(outcomes, a), _held(outcomes, c)) == (3, 5)
    assert await engine.stock(a) == (100, 3, 0)
    assert await engine.stock(c) == (100, 5, 0)
    reasons = {line["reason"] for o in outcomes[5:] for line in o["lines"]}
    assert reasons == {"POOL_EMPTY"}


async def test_a_product_not_listed_uses_pool_size_or_has_no_pool(engine: Engine) -> None:
    exp, listed, other = unique("exp"), unique("prod"), unique("prod")
    await engine(b.stock(listed, 100))
    await engine(b.stock(other, 100))
    await engine(b.configure(exp, strategy="pool", pool_size=2, pools=_pools(**{listed: 1})))
    outcomes = await _admit_all(engine, exp, 4, b.line(listed, 1), b.line(other, 1))
    assert (_held(outcomes, listed), _held(outcomes, other)) == (1, 2)
    # Pools alone: a product not listed has no pool and holds nothing.
    only = unique("exp")
    await engine(b.configure(only, strategy="pool", pools=_pools(**{listed: 1})))
    [outcome] = await _admit_all(engine, only, 1, b.line(listed, 1), b.line(other, 1))
    assert (_held([outcome], listed), _held([outcome], other)) == (1, 0)
    assert await engine.stock(other) == (100, 2, 0)


async def test_a_pool_below_its_use_is_refused_and_nothing_changes(engine: Engine) -> None:
    exp, a, c = unique("exp"), unique("prod"), unique("prod")
    await engine(b.stock(a, 100))
    await engine(b.stock(c, 100))
    await engine(b.configure(exp, strategy="pool", pool_size=2, pools=_pools(**{a: 3})))
    await _admit_all(engine, exp, 3, b.line(a, 1), b.line(c, 1))  # a: 3 used, c: 2

    refused = await engine(b.configure(exp, strategy="pool", pool_size=2, pools=_pools(**{a: 2})))
    assert (refused["status"], refused["error"]) == ("rejected", "POOL_BELOW_USED")
    assert refused["used"] == 3
    event = engine.events[-1]
    assert (event.type, event.product_id, event.size, event.used) == ("experience.refused", a, 2, 3)
    lower = await engine(b.configure(exp, strategy="pool", pool_size=1, pools=_pools(**{a: 3})))
    assert (lower["error"], lower["used"]) == ("POOL_BELOW_USED", 2)

    # Still 3 for a: a release frees one unit and the next consumer takes it.
    await engine(b.end(exp, f"{exp}-c0", f"{exp}-c0-g"))
    await engine(b.cart(exp, "late", b.line(a, 1)))
    late = await engine(b.admit(exp, "late", f"{exp}-late-g", T0 + timedelta(minutes=1)))
    assert _held([late], a) == 1
    # Down to exactly what is used, and away from the pool strategy: allowed.
    exact = await engine(b.configure(exp, strategy="pool", pools=_pools(**{a: 3, c: 2})))
    assert exact["status"] == "configured"
    assert (await engine(b.configure(exp, strategy="soft")))["status"] == "configured"


# --- the drop through the running service -----------------------------------------------


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def api(service: ServiceProcess) -> Api:
    async def healthy() -> bool:
        return (await Api(service.api_url).get("/v1/experiences/health-probe")).status == 200

    await wait_for(healthy, timeout=60)
    return Api(service.api_url)


async def _configure(api: Api, experience: str, body: dict[str, Any]) -> Any:
    return await api.put(f"/v1/experiences/{experience}", {"strategy": "pool", **body})


async def test_a_drop_holds_each_product_up_to_its_pool(
    api: Api, service: ServiceProcess, settings: Settings, db: asyncpg.Pool
) -> None:
    exp, a, c, other = unique("queue"), unique("prod"), unique("prod"), unique("prod")
    for product in (a, c, other):
        answer = await api.put("/v1/stock", {"productId": product, "onHand": 100})
        assert answer.status == 200, answer.body
    pools = [{"productId": a, "size": 3}, {"productId": c, "size": 5}]
    configured = await _configure(api, exp, {"poolSize": 2, "pools": pools})
    assert configured.status == 200, configured.body
    consumers = [unique("cons") for _ in range(20)]
    lines = [CartLine(product_id=p, quantity=1) for p in (a, c, other)]
    await produce_commands(settings, [put_cart_command(exp, who, lines) for who in consumers])
    posted = await asyncio.gather(
        *(
            post_webhook(service.webhook_url, admission_envelope(exp, who, f"eyJ.{who}"), SECRET)
            for who in consumers
        )
    )
    assert {status for status, _ in posted} == {200}
    await wait_for(
        lambda: db.fetchval("SELECT count(*) = 20 FROM admissions WHERE experience_id = $1", exp),
        timeout=60,
    )
    for product, held in ((a, 3), (c, 5), (other, 2)):
        stock = await api.get(f"/v1/stock?productId={product}")
        assert (stock.body["reserved"], stock.body["sold"]) == (held, 0), product

    def usage(size_a: int) -> list[dict[str, Any]]:
        return sorted(
            [
                {"productId": a, "variantId": None, "size": size_a, "used": 3, "left": size_a - 3},
                {"productId": c, "variantId": None, "size": 5, "used": 5, "left": 0},
                {"productId": other, "variantId": None, "size": 2, "used": 2, "left": 0},
            ],
            key=lambda p: p["productId"],
        )

    shown = await api.get(f"/v1/experiences/{exp}")
    assert shown.body["poolUsage"] == usage(3)

    # Below what is used, listed or by poolSize: refused, nothing changes.
    below = [{"productId": a, "size": 2}, pools[1]]
    for body, used in (({"poolSize": 2, "pools": below}, 3), ({"poolSize": 1, "pools": pools}, 2)):
        refused = await _configure(api, exp, body)
        assert refused.status == 409, refused.body
        assert (refused.body["error"], refused.body["used"]) == ("POOL_BELOW_USED", used)
    assert (await api.get(f"/v1/experiences/{exp}")).body == shown.body
    grown = await _configure(
        api, exp, {"poolSize": 2, "pools": [{"productId": a, "size": 4}, pools[1]]}
    )
    assert grown.status == 200, grown.body
    assert (await api.get(f"/v1/experiences/{exp}")).body["poolUsage"] == usage(4)
