"""Late and early deliveries, one story each, through the engine, in memory
and on the real PostgreSQL: what each does is decided by when it happened,
never by when it arrived (README, "Arrival order"). After every test the
counters equal the row sums."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest_asyncio

from tests import builders as b
from tests.engine_backends import Engine
from tests.helpers import unique
from tests.test_engine import T0


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


@pytest_asyncio.fixture(loop_scope="session")
async def engine(engine_backend: Engine) -> AsyncIterator[Engine]:
    yield engine_backend
    await engine_backend.assert_counters_match_rows()


class Story:
    """One consumer, one product, fresh ids."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.exp, self.cons, self.p = unique("exp"), unique("cons"), unique("prod")

    def grant(self) -> str:
        return unique("grant")

    async def stock_and_cart(self, on_hand: int = 5, quantity: int = 1) -> None:
        await self.engine(b.stock(self.p, on_hand))
        await self.engine(
            b.cart(self.exp, self.cons, b.line(self.p, quantity), at=T0 - minutes(30))
        )

    async def admission(self, grant: str) -> tuple[str, str | None]:
        return await self.engine.admission(grant)

    async def holds(self, grant: str) -> list[tuple[int, str]]:
        return await self.engine.holds(grant)

    def events(self, kind: str) -> list[object]:
        return [e for e in self.engine.events if getattr(e, "type", "") == kind]


async def test_a_late_left_ends_the_visit_it_belonged_to_not_the_next(engine: Engine) -> None:
    s = Story(engine)
    await s.stock_and_cart()
    a, b_ = s.grant(), s.grant()
    await engine(b.admit(s.exp, s.cons, a, T0 - minutes(1)))
    await engine(b.admit(s.exp, s.cons, b_, T0 - minutes(1 / 6)))
    late = await engine(b.end(s.exp, s.cons, None, reason="left", at=T0 - minutes(0.5)))
    # In time, A ended when the consumer left, before B came.
    assert (late["status"], late["holdsEnded"]) == ("released", 0)
    assert await s.admission(a) == ("released", "left")
    assert await s.holds(b_) == [(1, "active")]
    assert await engine.stock(s.p) == (5, 1, 0)


async def test_a_left_from_before_an_admission_does_not_stop_it(engine: Engine) -> None:
    s = Story(engine)
    await s.stock_and_cart()
    g = s.grant()
    assert (await engine(b.end(s.exp, s.cons, None, at=T0 - minutes(0.5))))["status"] == (
        "remembered"
    )
    admitted = await engine(b.admit(s.exp, s.cons, g, T0 - minutes(1 / 6)))
    assert admitted["held"] == 1
    assert await s.holds(g) == [(1, "active")]


async def test_a_left_delivered_before_its_own_earlier_admission_stops_it(
    engine: Engine,
) -> None:
    s = Story(engine)
    await s.stock_and_cart()
    g = s.grant()
    await engine(b.end(s.exp, s.cons, None, reason="denied", at=T0 - minutes(0.5)))
    admitted = await engine(b.admit(s.exp, s.cons, g, T0 - minutes(1)))
    assert admitted["status"] == "released"
    assert await s.admission(g) == ("released", "denied")
    assert await s.holds(g) == []
    assert await engine.stock(s.p) == (5, 0, 0)


async def test_an_admission_that_came_between_takes_the_left_that_followed_it(
    engine: Engine,
) -> None:
    """A at t, left at t+5 (applied to A), then B at t+3 arrives: in time, B
    superseded A and the consumer then left B."""
    s = Story(engine)
    await s.stock_and_cart()
    a, b_ = s.grant(), s.grant()
    await engine(b.admit(s.exp, s.cons, a, T0))
    await engine(b.end(s.exp, s.cons, None, reason="left", at=T0 + minutes(5)))
    assert await s.admission(a) == ("released", "left")
    late = await engine(b.admit(s.exp, s.cons, b_, T0 + minutes(3)))
    assert late["status"] == "released"
    assert await s.admission(a) == ("superseded", "superseded")
    assert await s.admission(b_) == ("released", "left")
    assert await engine.stock(s.p) == (5, 0, 0)
    [revised] = s.events("admission.revised")
    assert (revised.status, revised.previous_status) == ("superseded", "released")  # type: ignore[attr-defined]


async def test_an_earlier_ending_arriving_late_is_how_it_ended(engine: Engine) -> None:
    s = Story(engine)
    await s.stock_and_cart()
    g = s.grant()
    await engine(b.admit(s.exp, s.cons, g, T0))
    due = T0 + timedelta(seconds=660)
    await engine(b.end(s.exp, s.cons, g, outcome="expired", reason="window_elapsed", at=due))
    assert await s.admission(g) == ("expired", "window_elapsed")
    left = await engine(b.end(s.exp, s.cons, None, reason="lost", at=T0 + minutes(4)))
    assert left["status"] == "released"
    assert await s.admission(g) == ("released", "lost")
    assert await s.holds(g) == [(1, "expired")]  # the units went back at the expiry
    assert await engine.stock(s.p) == (5, 0, 0)


async def test_a_completion_before_its_admission_converts_it_on_arrival(engine: Engine) -> None:
    s = Story(engine)
    await s.stock_and_cart(quantity=2)
    g = s.grant()
    early = await engine(b.complete(s.exp, s.cons, None, "order-1", at=T0 + minutes(3)))
    assert early == {"status": "remembered", "orderId": "order-1"}
    admitted = await engine(b.admit(s.exp, s.cons, g, T0))
    assert (admitted["status"], admitted["orderId"]) == ("converted", "order-1")
    assert await s.holds(g) == [(2, "converted")]
    assert await engine.stock(s.p) == (5, 0, 2)
    again = await engine(b.complete(s.exp, s.cons, None, "order-1", at=T0 + minutes(3)))
    assert again["duplicate"] is True


async def test_a_completion_after_the_hold_expired_sells_the_unit_still_on_the_shelf(
    engine: Engine,
) -> None:
    s = Story(engine)
    await s.stock_and_cart(on_hand=1)
    g = s.grant()
    await engine(b.admit(s.exp, s.cons, g, T0))
    due = T0 + timedelta(seconds=660)
    await engine(b.end(s.exp, s.cons, g, outcome="expired", reason="window_elapsed", at=due))
    assert await engine.stock(s.p) == (1, 0, 0)
    late = await engine(b.complete(s.exp, s.cons, None, "order-7", at=T0 + minutes(9)))
    assert (late["status"], late["unfilled"]) == ("converted", 0)
    assert await engine.stock(s.p) == (1, 0, 1)
    assert await s.holds(g) == [(1, "converted")]
    assert await s.admission(g) == ("converted", "checkout")
    [sold] = s.events("reservation.converted")
    assert sold.previous_status == "expired"  # type: ignore[attr-defined]


async def test_a_late_completion_never_oversells_and_says_what_it_could_not_cover(
    engine: Engine,
) -> None:
    s = Story(engine)
    await s.stock_and_cart(on_hand=1)
    g, other = s.grant(), s.grant()
    await engine(b.admit(s.exp, s.cons, g, T0))
    await engine(b.end(s.exp, s.cons, g, reason="left", at=T0 + minutes(2)))
    # Someone else holds the unit that went back to the shelf.
    someone = unique("cons")
    await engine(b.cart(s.exp, someone, b.line(s.p, 1), at=T0))
    await engine(b.admit(s.exp, someone, other, T0 + minutes(3)))
    late = await engine(b.complete(s.exp, s.cons, None, "order-8", at=T0 + minutes(4)))
    assert (late["status"], late["unfilled"]) == ("converted", 1)
    assert await engine.stock(s.p) == (1, 1, 0)
    assert await s.holds(g) == [(1, "released")]
    [unfilled] = s.events("reservation.late_conversion_unfilled")
    assert (unfilled.order_id, unfilled.product_id, unfilled.quantity) == ("order-8", s.p, 1)  # type: ignore[attr-defined]


async def test_a_sale_moves_to_the_admission_it_belonged_to(engine: Engine) -> None:
    """A at t, completion at t+5 (applied to A), then B at t+3 arrives: the
    order was B's; A's units go back and B's are sold."""
    s = Story(engine)
    await s.stock_and_cart(on_hand=1)
    a, b_ = s.grant(), s.grant()
    await engine(b.admit(s.exp, s.cons, a, T0))
    await engine(b.complete(s.exp, s.cons, None, "order-9", at=T0 + minutes(5)))
    assert await s.holds(a) == [(1, "converted")]
    late = await engine(b.admit(s.exp, s.cons, b_, T0 + minutes(3)))
    assert (late["status"], late["orderId"]) == ("converted", "order-9")
    assert await s.admission(a) == ("superseded", "superseded")
    assert await s.holds(a) == [(1, "released")]
    assert await s.holds(b_) == [(1, "converted")]
    assert await engine.stock(s.p) == (1, 0, 1)


async def test_an_admission_arriving_after_its_sale_and_a_later_cart_sells_the_cart_of_then(
    engine: Engine,
) -> None:
    """Cart p at t+0, admitted at t+1, sold at t+15 (Fanfare's completion),
    cart emptied at t+16; the admission arrives last, in a batch of its own."""
    s = Story(engine)
    await engine(b.stock(s.p, 5))
    g = s.grant()
    await engine(b.cart(s.exp, s.cons, b.line(s.p, 1), at=T0))
    await engine(b.complete(s.exp, s.cons, None, "order-3", at=T0 + minutes(15)))
    await engine(b.cart(s.exp, s.cons, at=T0 + minutes(16)))
    admitted = await engine(b.admit(s.exp, s.cons, g, T0 + minutes(1)))
    assert admitted["status"] == "converted"
    assert await s.holds(g) == [(1, "converted")]
    assert await engine.stock(s.p) == (5, 0, 1)
