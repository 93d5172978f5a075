"""Pure domain: stock arithmetic, the pool cap and a hold's moves, every
refusal included."""

from __future__ import annotations

import pytest

from worker.domain import reservation
from worker.domain.model import ReservationStatus
from worker.domain.reservation import HoldMoveRefused
from worker.domain.stock import BelowCommitted, PoolUsage, StockLevel

ACTIVE, CONVERTED = ReservationStatus.ACTIVE, ReservationStatus.CONVERTED
RELEASED, EXPIRED = ReservationStatus.RELEASED, ReservationStatus.EXPIRED


def level(on_hand: int, reserved: int = 0, sold: int = 0) -> StockLevel:
    return StockLevel(on_hand, reserved, sold)


def counters(s: StockLevel) -> tuple[int, int, int]:
    return s.on_hand, s.reserved, s.sold


def test_take_holds_free_units_up_to_the_last_one() -> None:
    s = level(5, reserved=1, sold=2)
    assert s.free == 2
    assert s.take(2)
    assert counters(s) == (5, 3, 2)
    assert s.free == 0


def test_take_refuses_beyond_the_free_units_and_changes_nothing() -> None:
    s = level(5, reserved=1, sold=2)
    assert not s.take(3)
    assert counters(s) == (5, 1, 2)
    assert not level(0).take(1)


def test_give_back_frees_held_units() -> None:
    s = level(5, reserved=3)
    s.give_back(2)
    assert counters(s) == (5, 1, 0)


def test_sell_moves_held_units_to_sold() -> None:
    s = level(5, reserved=3, sold=1)
    s.sell(2)
    assert counters(s) == (5, 1, 3)
    assert s.free == 1


def test_sell_free_sells_units_nobody_holds_if_free() -> None:
    s = level(5, reserved=2, sold=1)
    assert s.sell_free(2)
    assert counters(s) == (5, 2, 3)


def test_sell_free_refuses_to_oversell_and_changes_nothing() -> None:
    s = level(5, reserved=2, sold=1)
    assert not s.sell_free(3)
    assert counters(s) == (5, 2, 1)


def test_unsell_puts_sold_units_back_on_the_shelf() -> None:
    s = level(5, sold=3)
    s.unsell(2)
    assert counters(s) == (5, 0, 1)
    assert s.free == 4


def test_set_on_hand_down_to_the_committed_units() -> None:
    s = level(10, reserved=2, sold=3)
    assert s.set_on_hand(5) is None
    assert counters(s) == (5, 2, 3)
    assert s.set_on_hand(50) is None
    assert s.on_hand == 50


def test_set_on_hand_below_the_committed_units_is_refused_not_clamped() -> None:
    s = level(10, reserved=2, sold=3)
    refused = s.set_on_hand(4)
    assert refused == BelowCommitted(5)
    assert refused.code == "STOCK_BELOW_COMMITTED"
    assert counters(s) == (10, 2, 3)


def test_pool_take_counts_up_to_its_size() -> None:
    p = PoolUsage(3)
    assert p.take(2, 5)
    assert p.used == 5


def test_pool_take_refuses_beyond_its_size_and_changes_nothing() -> None:
    p = PoolUsage(3)
    assert not p.take(3, 5)
    assert p.used == 3
    assert not PoolUsage().take(1, 0)


def test_pool_counts_a_sale_past_its_size_and_gives_back() -> None:
    p = PoolUsage(5)
    p.count_sale(2)
    assert p.used == 7
    p.give_back(3)
    assert p.used == 4


@pytest.mark.parametrize("to", [RELEASED, EXPIRED])
def test_an_active_hold_ends_released_or_expired(to: ReservationStatus) -> None:
    assert reservation.end(ACTIVE, to) is to
    # A row read from SQL holds plain strings.
    assert reservation.end("active", to.value) is to


@pytest.mark.parametrize("status", [CONVERTED, RELEASED, EXPIRED])
def test_only_an_active_hold_ends(status: ReservationStatus) -> None:
    with pytest.raises(HoldMoveRefused):
        reservation.end(status, RELEASED)


@pytest.mark.parametrize("to", [ACTIVE, CONVERTED, "superseded"])
def test_a_hold_ends_only_released_or_expired(to: str) -> None:
    with pytest.raises(HoldMoveRefused):
        reservation.end(ACTIVE, to)
    with pytest.raises(HoldMoveRefused):
        reservation.take_back_sale(CONVERTED, to)


def test_only_an_active_hold_converts() -> None:
    assert reservation.convert(ACTIVE) is CONVERTED
    for status in (CONVERTED, RELEASED, EXPIRED):
        with pytest.raises(HoldMoveRefused):
            reservation.convert(status)


def test_a_released_or_expired_hold_converts_again_late() -> None:
    assert reservation.convert_ended(RELEASED) is CONVERTED
    assert reservation.convert_ended("expired") is CONVERTED
    for status in (ACTIVE, CONVERTED):
        with pytest.raises(HoldMoveRefused):
            reservation.convert_ended(status)


@pytest.mark.parametrize("to", [RELEASED, EXPIRED])
def test_a_sale_taken_back_leaves_the_hold_released_or_expired(to: ReservationStatus) -> None:
    assert reservation.take_back_sale(CONVERTED, to) is to
    for status in (ACTIVE, RELEASED, EXPIRED):
        with pytest.raises(HoldMoveRefused):
            reservation.take_back_sale(status, to)


def test_ended_means_released_or_expired() -> None:
    assert [s for s in ReservationStatus if reservation.is_ended(s)] == [RELEASED, EXPIRED]
    assert reservation.is_ended("released")
