"""An operator's release applied by the engine, in memory and on PostgreSQL
(tests/engine_backends.py): by id, by consumer, by product (every variant,
or one); only holds still held at the command's time end, `released` with
reason `operator`, their units back on the shelf and in the pool, and the
admission stays active. The events carry who asked and why. After every
test the counters equal the row sums."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
import pytest_asyncio

from tests import builders as b
from tests.engine_backends import Engine
from tests.helpers import unique
from worker.domain.commands import ReleaseHolds
from worker.domain.events import ReservationCreated, ReservationEnded
from worker.domain.model import CartLine

T0 = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)
LATER = T0 + timedelta(minutes=2)


@pytest_asyncio.fixture(loop_scope="session")
async def engine(engine_backend: Engine) -> AsyncIterator[Engine]:
    yield engine_backend
    await engine_backend.assert_counters_match_rows()


def _released(engine: Engine, command: ReleaseHolds) -> list[ReservationEnded]:
    return [
        e
        for e in engine.events
        if isinstance(e, ReservationEnded) and e.command_id == command.command_id
    ]


async def _held(
    engine: Engine, exp: str, cons: str, grant: str, *lines: CartLine
) -> dict[str, UUID]:
    """Admit `cons` with a cart of `lines`; the holds taken, by product."""
    await engine(b.cart(exp, cons, *lines, at=T0))
    before = len(engine.events)
    await engine(b.admit(exp, cons, grant, T0))
    created = [e for e in engine.events[before:] if isinstance(e, ReservationCreated)]
    return {e.product_id: e.reservation_id for e in created}


async def test_release_by_id_ends_only_those_and_keeps_the_admission(engine: Engine) -> None:
    exp, cons, shoe, cap = unique("exp"), unique("cons"), unique("prod"), unique("prod")
    await engine(b.stock(shoe, 10, "42"))
    await engine(b.stock(cap, 5))
    holds = await _held(engine, exp, cons, f"{exp}-g", b.line(shoe, 2, "42"), b.line(cap, 1))
    shoe_hold, cap_hold = holds[shoe], holds[cap]
    stranger = uuid4()
    command = b.release(exp, reservation_ids=[shoe_hold, stranger, shoe_hold], at=LATER)
    outcome = await engine(command)
    assert outcome == {
        "status": "released",
        "released": [str(shoe_hold)],
        "notActive": [],
        "unknown": [str(stranger)],
    }
    assert await engine.stock(shoe, "42") == (10, 0, 0)
    assert await engine.stock(cap) == (5, 1, 0)
    assert sorted(await engine.statuses(exp, cons)) == sorted(
        [(shoe, 2, "released"), (cap, 1, "active")]
    )
    assert await engine.admission(f"{exp}-g") == ("active", None)
    [event] = _released(engine, command)
    assert event.type == "reservation.released"
    assert (event.reservation_id, event.reason, event.ended_at) == (shoe_hold, "operator", LATER)
    assert (event.requested_by, event.request_reason) == ("sha256:0123456789ab", "stock recount")
    assert event.previous_status == "active"

    # Again: the hold is no longer held; nothing moves, no event.
    again = b.release(exp, reservation_ids=[shoe_hold, cap_hold], at=LATER)
    outcome = await engine(again)
    assert (outcome["released"], outcome["notActive"]) == ([str(cap_hold)], [str(shoe_hold)])
    assert await engine.stock(cap) == (5, 0, 0)


async def test_an_id_of_another_experience_is_unknown_there(engine: Engine) -> None:
    exp, other, cons, p = unique("exp"), unique("exp"), unique("cons"), unique("prod")
    await engine(b.stock(p, 3))
    hold = (await _held(engine, exp, cons, f"{exp}-g", b.line(p, 1)))[p]
    outcome = await engine(b.release(other, reservation_ids=[hold], at=LATER))
    assert (outcome["released"], outcome["unknown"]) == ([], [str(hold)])
    assert await engine.stock(p) == (3, 1, 0)


async def test_release_by_consumer_ends_their_active_holds_only(engine: Engine) -> None:
    exp, alice, bob, p = unique("exp"), unique("cons"), unique("cons"), unique("prod")
    await engine(b.stock(p, 10))
    await _held(engine, exp, alice, f"{exp}-a", b.line(p, 2))
    await _held(engine, exp, bob, f"{exp}-b", b.line(p, 3))
    command = b.release(exp, consumer=alice, at=LATER)
    outcome = await engine(command)
    assert len(outcome["released"]) == 1
    assert await engine.stock(p) == (10, 3, 0)
    assert await engine.statuses(exp, alice) == [(p, 2, "released")]
    assert await engine.statuses(exp, bob) == [(p, 3, "active")]
    # A consumer with no holds: nothing to release, not an error.
    nobody = await engine(b.release(exp, consumer=unique("cons"), at=LATER))
    assert nobody["released"] == []


async def test_release_by_product_every_variant_or_one(engine: Engine) -> None:
    exp, other = unique("exp"), unique("exp")
    shoe, cap = unique("prod"), unique("prod")
    for variant in ("42", "43"):
        await engine(b.stock(shoe, 20, variant))
    await engine(b.stock(cap, 20))
    c1, c2, c3, c4 = (unique("cons") for _ in range(4))
    await _held(engine, exp, c1, f"{exp}-1", b.line(shoe, 1, "42"), b.line(cap, 1))
    await _held(engine, exp, c2, f"{exp}-2", b.line(shoe, 2, "43"))
    await _held(engine, exp, c3, f"{exp}-3", b.line(shoe, 3, "42"))
    await _held(engine, other, c4, f"{other}-4", b.line(shoe, 4, "42"))

    one_variant = await engine(b.release(exp, product=shoe, variant="43", at=LATER))
    assert len(one_variant["released"]) == 1
    assert await engine.stock(shoe, "43") == (20, 0, 0)
    assert await engine.stock(shoe, "42") == (20, 8, 0)

    every_variant = await engine(b.release(exp, product=shoe, at=LATER))
    assert len(every_variant["released"]) == 2
    # The other experience's hold and the other product's stay.
    assert await engine.stock(shoe, "42") == (20, 4, 0)
    assert await engine.stock(cap) == (20, 1, 0)
    assert await engine.statuses(other, c4) == [(shoe, 4, "active")]


async def test_a_hold_past_its_window_at_the_commands_time_is_its_expirys(
    engine: Engine,
) -> None:
    exp, cons, p = unique("exp"), unique("cons"), unique("prod")
    await engine(b.stock(p, 5))
    hold = (await _held(engine, exp, cons, f"{exp}-g", b.line(p, 1)))[p]
    # The default window and buffer: 11 minutes after the admission.
    late = await engine(b.release(exp, reservation_ids=[hold], at=T0 + timedelta(minutes=11)))
    assert (late["released"], late["notActive"]) == ([], [str(hold)])
    by_product = await engine(b.release(exp, product=p, at=T0 + timedelta(minutes=12)))
    assert (by_product["released"], by_product["notActive"]) == ([], [str(hold)])
    assert await engine.stock(p) == (5, 1, 0)


async def test_a_pooled_hold_gives_its_unit_back_to_the_pool(engine: Engine) -> None:
    exp, p = unique("exp"), unique("prod")
    await engine(b.stock(p, 10))
    await engine(b.configure(exp, strategy="pool", pool_size=1))
    first, second = unique("cons"), unique("cons")
    await _held(engine, exp, first, f"{exp}-1", b.line(p, 1))
    assert await _held(engine, exp, second, f"{exp}-2", b.line(p, 1)) == {}  # pool empty
    await engine(b.release(exp, consumer=first, at=LATER))
    third = unique("cons")
    assert len(await _held(engine, exp, third, f"{exp}-3", b.line(p, 1))) == 1


async def test_checkout_after_a_release_finds_the_line_missing(engine: Engine) -> None:
    exp, cons, p, q = unique("exp"), unique("cons"), unique("prod"), unique("prod")
    await engine(b.stock(p, 5))
    await engine(b.stock(q, 5))
    grant = f"{exp}-g"
    await _held(engine, exp, cons, grant, b.line(p, 1), b.line(q, 1))
    await engine(b.release(exp, product=p, at=LATER))
    refused = await engine(
        b.complete(exp, cons, grant, "order-1", b.line(p, 1), b.line(q, 1), at=LATER)
    )
    assert (refused["status"], refused["error"]) == ("rejected", "RESERVATION_MISSING")
    sold = await engine(b.complete(exp, cons, grant, "order-1", b.line(q, 1), at=LATER))
    assert sold["status"] == "converted"
    assert await engine.stock(q) == (5, 0, 1)


def test_a_release_names_exactly_one_selection() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        b.release("e", consumer="c", product="p")
    with pytest.raises(ValueError, match="exactly one"):
        b.release("e")
    with pytest.raises(ValueError, match="variantId needs productId"):
        b.release("e", consumer="c", variant="42")
