"""Backfill (worker.engine.backfill), each story in memory and on PostgreSQL
(tests/engine_backends.py): freed units go to the refused lines of
admissions still active, oldest admission first, through every way a hold
ends and through a stock raise; never to a shopper who left, converted or
expired; all-or-nothing carts whole or not at all; pools within their cap.
On PostgreSQL each command is a batch of its own, so the candidates come
from the load (worker.adapters.uow_backfill); test_backfill_batches covers
one batch with the whole story."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from tests import builders as b
from tests.engine_backends import DEFAULTS, Engine, assert_counters_match_rows
from tests.helpers import unique
from worker.adapters import uow_backfill
from worker.domain import ids as domain_ids
from worker.domain.events import ReservationCreated
from worker.engine import Coordinates, apply_batch

T0 = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)
SPAN = timedelta(seconds=660)  # the default window and buffer


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Story:
    """One experience and its products, with unique names per test."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.exp = unique("bf")
        self.run = unique("g")

    def grant(self, consumer: str) -> str:
        return f"{self.run}-{consumer}"

    def product(self, name: str) -> str:
        return f"{self.exp}-{name}"

    async def __call__(self, command: Any) -> dict[str, Any]:
        return await self.engine(command)

    async def admit(self, consumer: str, seconds: int, *lines: tuple[str, int]) -> None:
        cart = [b.line(self.product(p), n) for p, n in lines]
        await self(b.cart(self.exp, consumer, *cart, at=at(seconds - 1)))
        await self(b.admit(self.exp, consumer, self.grant(consumer), at(seconds)))

    async def stock(self, name: str, on_hand: int, seconds: int = 0) -> None:
        """A stock level set at T0 + seconds (the operator's time)."""
        command = b.stock(self.product(name), on_hand)
        await self(command.model_copy(update={"occurred_at": at(seconds)}))

    async def leave(self, consumer: str, seconds: int) -> None:
        await self(b.end(self.exp, consumer, None, at=at(seconds)))

    async def held(self, consumer: str) -> list[tuple[str, int]]:
        rows = await self.engine.statuses(self.exp, consumer)
        return [(p.removeprefix(f"{self.exp}-"), n) for p, n, s in rows if s == "active"]

    def backfilled(self) -> list[ReservationCreated]:
        return [
            e
            for e in self.engine.events
            if isinstance(e, ReservationCreated)
            and e.experience_id == self.exp
            and e.reason == "backfill"
        ]


@pytest_asyncio.fixture(loop_scope="session")
async def story(engine_backend: Engine) -> AsyncIterator[Story]:
    yield Story(engine_backend)
    await engine_backend.assert_counters_match_rows()


async def _one_unit(story: Story, backfill: bool = True, **settings: Any) -> None:
    await story(b.configure(story.exp, backfill=backfill, **settings))
    await story.stock("p", 1)
    await story.admit("A", 10, ("p", 1))
    await story.admit("B", 20, ("p", 1))
    await story.admit("C", 30, ("p", 1))


async def test_a_leave_goes_to_the_oldest_refused_then_the_next(story: Story) -> None:
    await _one_unit(story)
    assert (await story.held("A"), await story.held("B")) == ([("p", 1)], [])
    await story.leave("A", 40)
    assert (await story.held("B"), await story.held("C")) == ([("p", 1)], [])
    [created] = story.backfilled()
    assert (created.consumer_id, created.created_at) == ("B", at(40))
    assert created.expires_at == at(20) + SPAN  # B's admission's
    await story.leave("B", 50)
    assert await story.held("C") == [("p", 1)]
    assert [e.consumer_id for e in story.backfilled()] == ["B", "C"]


async def test_without_backfill_nobody_is_offered_anything(story: Story) -> None:
    await _one_unit(story, backfill=False)
    await story.leave("A", 40)
    assert (await story.held("B"), await story.held("C")) == ([], [])
    assert story.backfilled() == []
    assert await story.engine.stock(story.product("p")) == (1, 0, 0)


async def test_an_expiry_and_an_operator_release_free_units_too(story: Story) -> None:
    await _one_unit(story)
    due = at(10) + SPAN
    await story(b.end(story.exp, "A", story.grant("A"), outcome="expired",
                      reason="window_elapsed", at=due))  # fmt: skip
    assert await story.held("B") == [("p", 1)]
    await story(b.release(story.exp, consumer="B", at=at(675)))
    assert await story.held("C") == [("p", 1)]
    # B keeps its admission, but what the operator took away stays away.
    await story.leave("C", 678)
    assert (await story.held("B"), await story.held("C")) == ([], [])


async def test_a_stock_raise_is_offered_at_the_next_command_in_admission_order(
    story: Story,
) -> None:
    await _one_unit(story)
    await story.stock("p", 2, 40)
    # A stock set belongs to no experience: its units reach the line with
    # the experience's next command on the product, here a cart put.
    assert await story.held("B") == []
    await story(b.cart(story.exp, "D", b.line(story.product("p"), 1), at=at(41)))
    assert (await story.held("B"), await story.held("C")) == ([("p", 1)], [])
    await story.stock("p", 3, 50)
    await story(b.cart(story.exp, "D", b.line(story.product("p"), 1), at=at(51)))
    assert await story.held("C") == [("p", 1)]


async def test_units_free_when_a_newcomer_is_admitted_go_to_the_line_first(
    story: Story,
) -> None:
    await _one_unit(story)
    await story(b.cart(story.exp, "D", b.line(story.product("p"), 1), at=at(35)))
    await story.stock("p", 2, 40)
    # D, admitted after the raise, comes after B and C in the line.
    await story(b.admit(story.exp, "D", story.grant("D"), at(42)))
    assert (await story.held("B"), await story.held("D")) == ([("p", 1)], [])
    [created] = story.backfilled()
    assert (created.consumer_id, created.created_at) == ("B", at(42))


async def test_the_current_cart_is_offered_and_a_removed_line_is_not(story: Story) -> None:
    await story(b.configure(story.exp, backfill=True))
    await story.stock("p", 3)
    await story.stock("q", 1)
    await story.admit("A", 10, ("p", 3), ("q", 1))
    await story.admit("B", 20, ("p", 1), ("q", 1))
    await story(b.cart(story.exp, "B", b.line(story.product("p"), 2), at=at(25)))
    await story.leave("A", 40)
    # q left B's cart; p is offered at the cart's quantity now.
    assert await story.held("B") == [("p", 2)]
    assert await story.engine.stock(story.product("q")) == (1, 0, 0)


async def test_those_who_left_converted_or_expired_are_passed_over(story: Story) -> None:
    await _one_unit(story)
    await story(b.complete(story.exp, "A", None, unique("order"), at=at(35)))  # converts A
    await story.stock("p", 2, 36)  # one more unit
    await story(b.cart(story.exp, "D", b.line(story.product("p"), 1), at=at(37)))
    assert await story.held("B") == [("p", 1)]
    await story.leave("C", 45)
    await story.stock("p", 3, 50)
    await story(b.cart(story.exp, "D", b.line(story.product("p"), 1), at=at(51)))
    assert await story.held("C") == []
    assert [e.consumer_id for e in story.backfilled()] == ["B"]


async def test_an_all_or_nothing_cart_is_offered_only_whole(story: Story) -> None:
    await story(b.configure(story.exp, backfill=True, multi_item_policy="all_or_nothing"))
    await story.stock("p", 1)
    await story.stock("q", 1)
    await story.admit("A", 10, ("p", 1), ("q", 1))
    await story.admit("B", 20, ("p", 1), ("q", 1))
    await story.admit("C", 30, ("p", 1))
    await story(b.release(story.exp, consumer="A", product=None, at=at(35)))
    # B needs p and q, both free: whole; C gets nothing.
    assert (await story.held("B"), await story.held("C")) == ([("p", 1), ("q", 1)], [])
    await story.stock("q", 1, 38)  # no change of free units
    await story(b.end(story.exp, "B", None, at=at(40)))
    assert await story.held("C") == [("p", 1)]


async def test_an_all_or_nothing_cart_that_does_not_fit_is_passed_over(story: Story) -> None:
    await story(b.configure(story.exp, backfill=True, strategy="hard"))
    await story.stock("p", 1)
    await story.stock("q", 0)
    await story.admit("A", 10, ("p", 1))
    await story.admit("B", 20, ("p", 1), ("q", 1))
    await story.admit("C", 30, ("p", 1))
    await story.leave("A", 40)
    # B's q does not fit: passed over, C (after it) takes the unit.
    assert (await story.held("B"), await story.held("C")) == ([], [("p", 1)])


async def test_a_pool_backfills_within_its_cap(story: Story) -> None:
    await story(b.configure(story.exp, backfill=True, strategy="pool", pool_size=1))
    await story.stock("p", 1)
    await _pool_story(story)
    await story.stock("p", 5, 35)  # the pool, not the shelf, is short
    await story(b.cart(story.exp, "D", b.line(story.product("p"), 1), at=at(36)))
    assert (await story.held("B"), await story.held("C")) == ([], [])
    await story.leave("A", 40)
    assert (await story.held("B"), await story.held("C")) == ([("p", 1)], [])


async def _pool_story(story: Story) -> None:
    await story.admit("A", 10, ("p", 1))
    await story.admit("B", 20, ("p", 1))
    await story.admit("C", 30, ("p", 1))


@pytest.mark.parametrize("backfill", [True, False])
async def test_a_configuration_decides_from_its_time_on(story: Story, backfill: bool) -> None:
    await _one_unit(story, backfill=not backfill)
    await story(b.configure(story.exp, backfill=backfill))
    await story.leave("A", 40)
    assert await story.held("B") == ([("p", 1)] if backfill else [])


async def test_the_backfilled_hold_has_an_id_of_its_own(story: Story) -> None:
    await _one_unit(story)
    await story.leave("A", 40)
    [created] = story.backfilled()
    plain = domain_ids.reservation_id(created.grant_digest, created.product_id, None)
    assert created.reservation_id != plain


async def test_a_backfilled_hold_expires_with_its_admission_as_extended(story: Story) -> None:
    await _one_unit(story, extension_seconds=120, max_extensions=1)
    extended = await story(b.extend(story.exp, "B", story.grant("B"), at(35)))
    assert extended["status"] == "extended"
    await story.leave("A", 40)
    [created] = story.backfilled()
    assert (created.consumer_id, created.expires_at) == (
        "B",
        at(20) + SPAN + timedelta(seconds=120),
    )


async def test_a_retry_refused_for_stock_joins_the_line(story: Story) -> None:
    await story(b.configure(story.exp, backfill=True, retry_window_seconds=600))
    await story.stock("p", 1)
    await story.admit("B", 10, ("p", 1))
    await story(b.end(story.exp, "B", story.grant("B"), outcome="expired",
                      reason="window_elapsed", at=at(10) + SPAN))  # fmt: skip
    await story.admit("A", 600, ("p", 1))  # takes the unit B's expiry freed
    retried_at = at(10) + SPAN + timedelta(seconds=20)
    retried = await story(b.retry(story.exp, "B", story.grant("B"), retried_at))
    assert (retried["held"], retried["rejected"]) == (0, 1)
    await story.leave("A", 700)
    assert await story.held("B") == [("p", 1)]
    [created] = story.backfilled()
    assert created.expires_at == retried_at + SPAN  # the retry's expiry


def _line_story(exp: str, run: str) -> list[Any]:
    """One unit: A holds it, B and C are refused, A leaves, then B."""
    product = f"{exp}-p"
    commands: list[Any] = [
        b.configure(exp, backfill=True),
        b.stock(product, 1).model_copy(update={"occurred_at": at(0)}),
    ]
    for n, who in enumerate("ABC", 1):
        commands += [
            b.cart(exp, who, b.line(product, 1), at=at(10 * n - 1)),
            b.admit(exp, who, f"{run}-{who}", at(10 * n)),
        ]
    return [*commands, b.end(exp, "A", None, at=at(40)), b.end(exp, "B", None, at=at(50))]


async def _holders(pool: asyncpg.Pool, exp: str) -> list[tuple[str, str]]:
    rows = await pool.fetch(
        """SELECT consumer_id, status FROM reservations WHERE experience_id = $1
           ORDER BY created_at, consumer_id""",
        exp,
    )
    return [(r["consumer_id"], r["status"]) for r in rows]


@pytest.mark.parametrize("cuts", [(), (5,), (7, 9), tuple(range(1, 10))])
async def test_backfill_batches(engine_db: asyncpg.Pool, cuts: tuple[int, ...]) -> None:
    """The same story in one batch or cut into several: the line read from
    the database and the line the batch itself refused decide alike."""
    exp, run = unique("bfb"), unique("g")
    commands = _line_story(exp, run)
    bounds = [0, *cuts, len(commands)]
    for start, end in pairwise(bounds):
        placed = [(c, Coordinates("t", 0, n)) for n, c in enumerate(commands[start:end])]
        async with engine_db.acquire() as conn, conn.transaction():
            await apply_batch(conn, placed, DEFAULTS)
    assert await _holders(engine_db, exp) == [
        ("A", "released"),
        ("B", "released"),
        ("C", "active"),
    ]
    await assert_counters_match_rows(engine_db)


async def test_a_batch_offers_nothing_past_the_part_of_the_line_it_read(
    engine_db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read two at a time: B and C are read, D is not; E, refused in the
    batch itself, stands after D, so the third unit waits for the next
    batch, which reads D first."""
    monkeypatch.setattr(uow_backfill, "LINE_READ", 2)
    exp, run = unique("bfc"), unique("g")
    product = f"{exp}-p"

    async def batch(*commands: Any) -> None:
        placed = [(c, Coordinates("t", 0, n)) for n, c in enumerate(commands)]
        async with engine_db.acquire() as conn, conn.transaction():
            await apply_batch(conn, placed, DEFAULTS)

    def arrive(who: str, seconds: int) -> list[Any]:
        return [
            b.cart(exp, who, b.line(product, 1), at=at(seconds - 1)),
            b.admit(exp, who, f"{run}-{who}", at(seconds)),
        ]

    start = b.stock(product, 3).model_copy(update={"occurred_at": at(0)})
    await batch(b.configure(exp, backfill=True), start)
    await batch(*arrive("H1", 1), *arrive("H2", 2), *arrive("H3", 3))
    await batch(*arrive("B", 10), *arrive("C", 20), *arrive("D", 30))
    leaves = [b.end(exp, who, None, at=at(50)) for who in ("H1", "H2", "H3")]
    await batch(*arrive("E", 40), *leaves)
    held = [who for who, status in await _holders(engine_db, exp) if status == "active"]
    assert held == ["B", "C"]
    await batch(b.cart(exp, "F", b.line(product, 1), at=at(60)))  # a command on the row
    held = [who for who, status in await _holders(engine_db, exp) if status == "active"]
    assert held == ["B", "C", "D"]
    await assert_counters_match_rows(engine_db)
