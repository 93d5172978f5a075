"""Partial completion through the engine, on both backends
(tests/engine_backends.py): the checkout API's complete sells the quantities
on the order's lines and releases the rest of the admission's holds
(`not_ordered`), unless the experience's onComplete is convert_all; every
line that is missing or short is listed on a refusal. After every test the
counters must equal the row sums (guarantee 2)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from tests import builders as b
from tests.engine_backends import Engine
from tests.helpers import unique
from worker.domain.checkout import NOT_ORDERED, Hold, MissingLine, ordered_units, short_lines
from worker.domain.model import ReservationStatus

T0 = datetime.now(UTC).replace(microsecond=0)
SOON = T0 + timedelta(seconds=30)  # inside the admission's window


@pytest_asyncio.fixture(loop_scope="session")
async def engine(engine_backend: Engine) -> AsyncIterator[Engine]:
    yield engine_backend
    await engine_backend.assert_counters_match_rows()


@pytest.fixture
def ids() -> tuple[str, str, str, str]:
    return unique("exp"), unique("cons"), unique("prod"), unique("prod")


def _events(engine: Engine, experience: str) -> list[Any]:
    return [e for e in engine.events if getattr(e, "experience_id", None) == experience]


async def _admitted(engine: Engine, exp: str, cons: str, grant: str, *lines: Any) -> None:
    await engine(b.cart(exp, cons, *lines, at=T0))
    admitted = await engine(b.admit(exp, cons, grant, T0 + timedelta(seconds=1)))
    assert admitted["held"] == len(lines)


async def test_ordering_one_line_of_two_converts_it_and_releases_the_other(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, cons, p, q = ids
    await engine(b.stock(p, 5))
    await engine(b.stock(q, 5, "M"))
    await _admitted(engine, exp, cons, "partial-one", b.line(p, 2), b.line(q, 1, "M"))
    assert (await engine.stock(p), await engine.stock(q, "M")) == ((5, 2, 0), (5, 1, 0))
    before = len(_events(engine, exp))

    done = await engine(b.complete(exp, cons, "partial-one", "o-1", b.line(p, 2), at=SOON))
    assert done["status"] == "converted"
    # sold and reserved move by exactly the ordered and the left-out quantities.
    assert await engine.stock(p) == (5, 0, 2)
    assert await engine.stock(q, "M") == (5, 0, 0)
    assert sorted(await engine.statuses(exp, cons)) == sorted(
        [(p, 2, "converted"), (q, 1, "released")]
    )
    assert await engine.admission("partial-one") == ("converted", "checkout")
    told = [
        (e.type, e.product_id, e.quantity, e.reason)
        for e in _events(engine, exp)[before:]
        if e.type.startswith("reservation.")
    ]
    assert told == [
        ("reservation.released", q, 1, NOT_ORDERED),
        ("reservation.converted", p, 2, "checkout"),
    ]
    by_product = {e.product_id: str(e.reservation_id) for e in _events(engine, exp)[before:-1]}
    assert done["reservations"] == [by_product[p]]
    assert done["released"] == [by_product[q]]


async def test_a_quantity_below_the_hold_converts_a_new_hold_and_releases_the_old(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, cons, p, _ = ids
    await engine(b.stock(p, 3))
    await _admitted(engine, exp, cons, "partial-part", b.line(p, 3))
    before = len(_events(engine, exp))

    done = await engine(b.complete(exp, cons, "partial-part", "o-1", b.line(p, 1), at=SOON))
    assert done["status"] == "converted"
    assert await engine.stock(p) == (3, 0, 1)
    assert sorted(await engine.statuses(exp, cons)) == [(p, 1, "converted"), (p, 3, "released")]
    released, created, converted = [
        e for e in _events(engine, exp)[before:] if e.type.startswith("reservation.")
    ]
    assert (released.type, released.quantity, released.reason) == (
        "reservation.released",
        3,
        NOT_ORDERED,
    )
    # The ordered part: a hold of its own that replaces the released one.
    assert (created.type, created.quantity, created.replaces) == (
        "reservation.created",
        1,
        released.reservation_id,
    )
    assert created.expires_at == T0 + timedelta(seconds=1 + 660)
    assert (converted.type, converted.reservation_id, converted.quantity) == (
        "reservation.converted",
        created.reservation_id,
        1,
    )
    assert done["reservations"] == [str(created.reservation_id)]
    assert done["released"] == [str(released.reservation_id)]
    # The units that went back are free for the next consumer.
    await _admitted(engine, exp, unique("cons"), "partial-next", b.line(p, 2))
    assert await engine.stock(p) == (3, 2, 1)


async def test_a_pooled_hold_left_out_gives_its_unit_back_to_the_pool(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, cons, p, q = ids
    await engine(b.stock(p, 10))
    await engine(b.stock(q, 10))
    await engine(b.configure(exp, strategy="pool", pool_size=1))
    await _admitted(engine, exp, cons, "partial-pool", b.line(p, 1), b.line(q, 1))
    done = await engine(b.complete(exp, cons, "partial-pool", "o-1", b.line(q, 1), at=SOON))
    assert len(done["released"]) == 1
    assert (await engine.stock(p), await engine.stock(q)) == ((10, 0, 0), (10, 0, 1))
    # p's pool unit is free again, q's is sold.
    other = unique("cons")
    await engine(b.cart(exp, other, b.line(p, 1), b.line(q, 1), at=T0))
    again = await engine(b.admit(exp, other, "partial-pool-2", T0 + timedelta(seconds=2)))
    assert again["held"] == 1
    reasons = {line["productId"]: line.get("reason") for line in again["lines"]}
    assert reasons == {p: None, q: "POOL_EMPTY"}


async def test_convert_all_converts_every_hold_whatever_the_lines(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, cons, p, q = ids
    await engine(b.stock(p, 5))
    await engine(b.stock(q, 5))
    await engine(b.configure(exp, on_complete="convert_all"))
    await _admitted(engine, exp, cons, "partial-all", b.line(p, 3), b.line(q, 1))
    done = await engine(b.complete(exp, cons, "partial-all", "o-1", b.line(p, 1), at=SOON))
    assert (done["status"], done["released"]) == ("converted", [])
    assert len(done["reservations"]) == 2
    assert (await engine.stock(p), await engine.stock(q)) == ((5, 0, 3), (5, 0, 1))
    assert sorted(await engine.statuses(exp, cons)) == sorted(
        [(p, 3, "converted"), (q, 1, "converted")]
    )
    kinds = [e.type for e in _events(engine, exp)]
    assert "reservation.released" not in kinds
    assert kinds.count("reservation.created") == 2


async def test_refusals_list_every_line_missing_or_short_and_change_nothing(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, cons, p, q = ids
    await engine(b.stock(p, 5))
    await engine(b.stock(q, 5, "M"))
    await _admitted(engine, exp, cons, "partial-ref", b.line(p, 2))
    at = T0 + timedelta(seconds=5)
    absent = b.line(q, 1, "M")
    mismatch = await engine(b.complete(exp, cons, "someone-else", "o-1", absent, at=at))
    assert mismatch["error"] == "ADMISSION_MISMATCH"
    assert "missing" not in mismatch
    refused = await engine(b.complete(exp, cons, "partial-ref", "o-1", absent, b.line(p, 3), at=at))
    assert (refused["status"], refused["error"]) == ("rejected", "RESERVATION_MISSING")
    assert refused["message"] == f"No reservation for {q}"
    assert refused["missing"] == [
        {"productId": q, "variantId": "M", "requested": 1, "held": 0,
         "error": "RESERVATION_MISSING"},
        {"productId": p, "requested": 3, "held": 2,
         "error": "RESERVATION_INSUFFICIENT"},
    ]  # fmt: skip
    short = await engine(b.complete(exp, cons, "partial-ref", "o-1", b.line(p, 3), absent, at=at))
    assert short["error"] == "RESERVATION_INSUFFICIENT"
    assert [line["productId"] for line in short["missing"]] == [p, q]
    assert await engine.stock(p) == (5, 2, 0)
    assert await engine.statuses(exp, cons) == [(p, 2, "active")]
    # The order that fits still converts.
    done = await engine(b.complete(exp, cons, "partial-ref", "o-1", b.line(p, 2), at=at))
    assert (done["status"], done["released"]) == ("converted", [])


async def test_a_later_fanfare_completion_or_ending_leaves_a_partial_sale_as_it_is(
    engine: Engine, ids: tuple[str, str, str, str]
) -> None:
    exp, cons, p, q = ids
    await engine(b.stock(p, 5))
    await engine(b.stock(q, 5))
    await _admitted(engine, exp, cons, "partial-late", b.line(p, 3), b.line(q, 1))
    sold_at = T0 + timedelta(minutes=2)
    await engine(b.complete(exp, cons, "partial-late", "o-1", b.line(p, 1), at=sold_at))
    rows = sorted(await engine.statuses(exp, cons))
    counters = (await engine.stock(p), await engine.stock(q))
    assert counters == ((5, 0, 1), (5, 0, 0))

    # Fanfare's completion of the same order (it names no lines), with or
    # without the grant, and before or after the API's time: a no-op.
    for grant, at in ((None, sold_at + timedelta(seconds=3)), ("partial-late", sold_at)):
        fanfare = await engine(b.complete(exp, cons, grant, "o-1", at=at))
        assert fanfare == {"status": "converted", "orderId": "o-1", "duplicate": True}
    # An ending from before the sale, arriving late: the sale stands.
    left = await engine(b.end(exp, cons, None, reason="left", at=T0 + timedelta(minutes=1)))
    assert left["status"] == "already_ended"
    conflict = await engine(b.complete(exp, cons, None, "o-2", at=sold_at + timedelta(seconds=9)))
    assert conflict["error"] == "ORDER_CONFLICT"
    assert sorted(await engine.statuses(exp, cons)) == rows
    assert (await engine.stock(p), await engine.stock(q)) == counters
    assert await engine.admission("partial-late") == ("converted", "checkout")


# --- the rules alone -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Held:
    product_id: str
    variant_id: str
    quantity: int


def test_an_order_takes_each_row_from_its_holds_in_turn() -> None:
    holds = [_Held("p", "", 2), _Held("p", "", 3), _Held("q", "M", 1), _Held("r", "", 4)]
    order = [b.line("p", 3), b.line("r", 4), b.line("p", 1)]
    # p: 4 ordered over holds of 2 and 3; q left out; r whole.
    assert ordered_units(holds, order) == [2, 2, 0, 4]
    assert ordered_units(holds, []) == [0, 0, 0, 0]


def test_every_short_line_is_listed_in_the_items_order() -> None:
    def hold(product: str, quantity: int, variant: str = "") -> Hold:
        return Hold("r", "g", product, variant, quantity, ReservationStatus.ACTIVE, T0)

    active = [hold("p", 2), hold("p", 1), hold("q", 1, "M")]
    items = [b.line("x", 1), b.line("p", 2), b.line("q", 2, "M"), b.line("p", 2)]
    assert short_lines(active, items) == [
        MissingLine("x", "", 1, 0),
        MissingLine("p", "", 4, 3),
        MissingLine("q", "M", 2, 1),
    ]
    assert [m.code for m in short_lines(active, items)] == [
        "RESERVATION_MISSING",
        "RESERVATION_INSUFFICIENT",
        "RESERVATION_INSUFFICIENT",
    ]
    assert short_lines(active, [b.line("p", 3), b.line("q", 1, "M")]) == []
