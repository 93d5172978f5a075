"""Every transition applied by the engine (commands applied directly,
without Kafka, so each rule is checked alone), each test twice: in memory
and against the real PostgreSQL (tests/engine_backends.py). After every
test the counters must equal the row sums (guarantee 2)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from tests import builders as b
from tests.engine_backends import Engine
from tests.helpers import unique

T0 = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)


@pytest_asyncio.fixture(loop_scope="session")
async def engine(engine_backend: Engine) -> AsyncIterator[Engine]:
    yield engine_backend
    await engine_backend.assert_counters_match_rows()


@pytest.fixture
def ids() -> tuple[str, str, str, str]:
    return unique("exp"), unique("cons"), unique("prod"), unique("prod")


async def test_soft_partial_holds_lines_with_stock_and_rejects_the_rest(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, cons, shoe, cap = ids
    await engine(b.stock(shoe, 5, "42"))
    await engine(b.stock(cap, 1))
    await engine(b.cart(exp, cons, b.line(shoe, 2, "42"), b.line(shoe, 1, "42"), b.line(cap, 2)))
    outcome = await engine(b.admit(exp, cons, "g1", T0))
    assert outcome["status"] == "active"
    assert (outcome["held"], outcome["rejected"]) == (1, 1)
    assert await engine.stock(shoe, "42") == (5, 3, 0)
    assert await engine.stock(cap) == (1, 0, 0)
    assert await engine.statuses(exp, cons) == [(shoe, 3, "active")]
    kinds = [e.type for e in engine.events if getattr(e, "experience_id", None) == exp]
    assert kinds.count("reservation.created") == 1
    assert kinds.count("reservation.rejected") == 1


async def test_hard_strategy_is_all_or_nothing(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, cons, a, c = ids
    await engine(b.stock(a, 5))
    await engine(b.stock(c, 1))
    await engine(b.configure(exp, strategy="hard"))
    await engine(b.cart(exp, cons, b.line(a, 2), b.line(c, 2)))
    outcome = await engine(b.admit(exp, cons, "g-hard", T0))
    assert outcome["held"] == 0
    reasons = {line["productId"]: line["reason"] for line in outcome["lines"]}
    assert reasons == {a: "CART_ALL_OR_NOTHING", c: "INSUFFICIENT_STOCK"}
    assert await engine.stock(a) == (5, 0, 0)
    assert await engine.statuses(exp, cons) == []


async def test_pool_caps_units_per_product_and_empty_pool_is_not_reserved(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, _, p, _ = ids
    await engine(b.stock(p, 100))
    await engine(b.configure(exp, strategy="pool", pool_size=2))
    outcomes = []
    for n in range(3):
        consumer = f"c{n}"
        await engine(b.cart(exp, consumer, b.line(p, 3)))
        outcomes.append(await engine(b.admit(exp, consumer, f"{exp}-g{n}", T0)))
    assert [o["held"] for o in outcomes] == [1, 1, 0]
    assert outcomes[2]["lines"][0]["reason"] == "POOL_EMPTY"
    assert await engine.stock(p) == (100, 2, 0)
    # A release gives the unit back to the pool: the next consumer gets it.
    await engine(b.end(exp, "c0", f"{exp}-g0"))
    await engine(b.cart(exp, "c3", b.line(p, 1)))
    late = await engine(b.admit(exp, "c3", f"{exp}-g3", T0))
    assert late["held"] == 1


async def test_same_grant_never_holds_twice(engine: Engine, ids: tuple[str, str, str, str]) -> None:
    exp, cons, p, _ = ids
    await engine(b.stock(p, 10))
    await engine(b.cart(exp, cons, b.line(p, 2)))
    first = b.admit(exp, cons, "g-dup", T0)
    assert (await engine(first))["held"] == 1
    again = await engine(b.admit(exp, cons, "g-dup", T0 + timedelta(seconds=5)))
    assert again["status"] == "duplicate_grant"
    assert await engine.stock(p) == (10, 2, 0)


async def test_new_grant_releases_the_old_holds(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, cons, p, _ = ids
    await engine(b.stock(p, 10))
    await engine(b.cart(exp, cons, b.line(p, 2)))
    await engine(b.admit(exp, cons, "old", T0))
    await engine(b.admit(exp, cons, "new", T0 + timedelta(minutes=1)))
    assert await engine.statuses(exp, cons) == [(p, 2, "released"), (p, 2, "active")]
    assert await engine.stock(p) == (10, 2, 0)
    # The older grant arriving again later changes nothing.
    late = await engine(b.admit(exp, cons, "older", T0 - timedelta(minutes=1)))
    assert late["status"] == "superseded"
    assert await engine.stock(p) == (10, 2, 0)


async def test_release_expire_and_final_states_stay_final(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, cons, p, _ = ids
    await engine(b.stock(p, 10))
    await engine(b.cart(exp, cons, b.line(p, 4)))
    await engine(b.admit(exp, cons, "g-end", T0))
    left = await engine(b.end(exp, cons, "g-end", reason="left", at=T0 + timedelta(minutes=2)))
    assert left == {"status": "released", "holdsEnded": 1}
    assert await engine.stock(p) == (10, 0, 0)
    again = await engine(
        b.end(
            exp,
            cons,
            "g-end",
            outcome="expired",
            reason="window_elapsed",
            at=T0 + timedelta(hours=1),
        )
    )
    assert again["status"] == "already_ended"
    converted = await engine(b.complete(exp, cons, "g-end", "order-1", b.line(p, 4)))
    assert converted["status"] == "rejected"
    assert await engine.statuses(exp, cons) == [(p, 4, "released")]


async def test_scheduler_expiry_uses_the_commands_time(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, cons, p, _ = ids
    await engine(b.stock(p, 3))
    await engine(b.cart(exp, cons, b.line(p, 1)))
    await engine(b.admit(exp, cons, "g-exp", T0))
    due = T0 + timedelta(seconds=660)
    early = await engine(
        b.end(
            exp,
            cons,
            "g-exp",
            outcome="expired",
            reason="window_elapsed",
            at=due - timedelta(seconds=1),
        )
    )
    assert early["status"] == "not_yet_due"
    on_time = await engine(
        b.end(exp, cons, "g-exp", outcome="expired", reason="window_elapsed", at=due)
    )
    assert on_time["status"] == "expired"
    assert await engine.statuses(exp, cons) == [(p, 1, "expired")]
    late_checkout = await engine(b.complete(exp, cons, "g-exp", "o-1", b.line(p, 1)))
    assert late_checkout["error"] == "RESERVATION_EXPIRED"


async def test_expiry_before_admission_is_remembered(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, cons, p, _ = ids
    await engine(b.stock(p, 3))
    await engine(b.cart(exp, cons, b.line(p, 1)))
    early = await engine(
        b.end(
            exp,
            cons,
            "g-early",
            outcome="expired",
            reason="admission_expired",
            at=T0 + timedelta(minutes=10),
        )
    )
    assert early["status"] == "remembered"
    admitted = await engine(b.admit(exp, cons, "g-early", T0))
    assert admitted["status"] == "expired"
    assert await engine.stock(p) == (3, 0, 0)
    assert await engine.statuses(exp, cons) == []


async def test_grantless_leave_before_admission_is_remembered(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, cons, p, _ = ids
    await engine(b.stock(p, 3))
    await engine(b.cart(exp, cons, b.line(p, 1)))
    await engine(b.end(exp, cons, None, reason="left", at=T0 + timedelta(minutes=1)))
    admitted = await engine(b.admit(exp, cons, "g-left", T0))
    assert admitted["status"] == "released"
    # An admission after that leave is a new visit and holds as usual.
    again = await engine(b.admit(exp, cons, "g-back", T0 + timedelta(minutes=5)))
    assert again["held"] == 1


async def test_checkout_converts_once_per_order(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, cons, p, q = ids
    await engine(b.stock(p, 5))
    await engine(b.stock(q, 5, "M"))
    await engine(b.cart(exp, cons, b.line(p, 2), b.line(q, 1, "M")))
    await engine(b.admit(exp, cons, "g-buy", datetime.now(UTC)))
    mismatch = await engine(b.complete(exp, cons, "someone-else", "o-9", b.line(p, 1)))
    assert mismatch["error"] == "ADMISSION_MISMATCH"
    missing = await engine(b.complete(exp, cons, "g-buy", "o-9", b.line(q, 1)))
    assert missing["error"] == "RESERVATION_MISSING"
    short = await engine(b.complete(exp, cons, "g-buy", "o-9", b.line(p, 3)))
    assert short["error"] == "RESERVATION_INSUFFICIENT"
    done = await engine(b.complete(exp, cons, "g-buy", "o-1", b.line(p, 2), b.line(q, 1, "M")))
    assert done["status"] == "converted"
    assert await engine.stock(p) == (5, 0, 2)
    assert await engine.stock(q, "M") == (5, 0, 1)
    # Fanfare's completion for the same order arrives later: a no-op.
    fanfare = await engine(b.complete(exp, cons, None, "o-1"))
    assert fanfare == {"status": "converted", "orderId": "o-1", "duplicate": True}
    conflict = await engine(b.complete(exp, cons, None, "o-2"))
    assert conflict["error"] == "ORDER_CONFLICT"
    assert await engine.stock(p) == (5, 0, 2)


async def test_cart_change_during_admission_moves_holds_subject_to_stock(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, cons, p, q = ids
    await engine(b.stock(p, 3))
    await engine(b.stock(q, 2))
    await engine(b.cart(exp, cons, b.line(p, 1)))
    await engine(b.admit(exp, cons, "g-cart", datetime.now(UTC)))
    grown = await engine(b.cart(exp, cons, b.line(p, 3), b.line(q, 1)))
    assert (grown["holdsChanged"], grown["rejected"]) == (2, 0)
    assert await engine.stock(p) == (3, 3, 0)
    too_much = await engine(b.cart(exp, cons, b.line(p, 4), b.line(q, 1)))
    assert too_much["rejected"] == 1
    assert await engine.stock(p) == (3, 3, 0)  # the 3 held stay held
    shrunk = await engine(b.cart(exp, cons, b.line(q, 2)))
    assert shrunk["holdsChanged"] == 2
    assert await engine.stock(p) == (3, 0, 0)
    assert await engine.stock(q) == (2, 2, 0)
    active = [s for s in await engine.statuses(exp, cons) if s[2] == "active"]
    assert active == [(q, 2, "active")]


async def test_empty_cart_admission_holds_items_added_later(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, cons, p, _ = ids
    await engine(b.stock(p, 2))
    admitted = await engine(b.admit(exp, cons, "g-empty", datetime.now(UTC)))
    assert admitted["held"] == 0
    await engine(b.cart(exp, cons, b.line(p, 2)))
    assert await engine.stock(p) == (2, 2, 0)


async def test_stock_below_committed_is_refused(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, cons, p, _ = ids
    await engine(b.stock(p, 5))
    await engine(b.cart(exp, cons, b.line(p, 3)))
    await engine(b.admit(exp, cons, "g-stock", datetime.now(UTC)))
    refused = await engine(b.stock(p, 2))
    assert refused["error"] == "STOCK_BELOW_COMMITTED"
    assert refused["committed"] == 3
    assert await engine.stock(p) == (5, 3, 0)
    assert (await engine(b.stock(p, 3)))["status"] == "set"
