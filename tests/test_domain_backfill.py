"""Backfill's decision (worker.domain.backfill), pure: the line order, the
cart as it is now, all-or-nothing carts, pools, and who is never offered."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.domain.backfill import Candidate, Shelf, in_line, offers
from worker.domain.endings import AdmissionStatus
from worker.domain.model import CartLine, ExperienceSettings, MultiItemPolicy, Strategy

T0 = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)
FREED_AT = T0 + timedelta(minutes=5)
EXP = "drop"
P, Q = ("p", ""), ("q", "")
SOFT = ExperienceSettings(backfill=True)


def line_of(product: str, quantity: int = 1) -> CartLine:
    return CartLine(product_id=product, quantity=quantity)


def candidate(grant: str, admitted: int, *cart: CartLine, **fields: Any) -> Candidate:
    """An admission `admitted` seconds after T0, active for an hour."""
    values: dict[str, Any] = {
        "experience_id": EXP,
        "consumer_id": f"c-{grant}",
        "grant_digest": grant,
        "admitted_at": T0 + timedelta(seconds=admitted),
        "expires_at": T0 + timedelta(hours=1),
        "status": AdmissionStatus.ACTIVE,
        "settings": SOFT,
        "cart": list(cart),
    }
    return Candidate(**{**values, **fields})


def who(made: list[Any]) -> list[tuple[str, dict[tuple[str, str], int]]]:
    return [(o.candidate.grant_digest, o.units) for o in made]


def freed(*rows: tuple[str, str]) -> set[tuple[str, str, str]]:
    return {(EXP, *row) for row in rows}


def test_the_oldest_admission_comes_first_and_ties_go_by_grant_digest() -> None:
    late, tie_b, tie_a = (
        candidate("late", 30, line_of("p")),
        candidate("b", 10, line_of("p")),
        candidate("a", 10, line_of("p")),
    )
    assert [c.grant_digest for c in in_line([late, tie_b, tie_a])] == ["a", "b", "late"]
    made = offers(freed(P), Shelf({P: 2}), in_line([late, tie_b, tie_a]), FREED_AT)
    assert who(made) == [("a", {P: 1}), ("b", {P: 1})]


def test_the_cart_is_read_as_it_is_now() -> None:
    grown = candidate("grown", 10, line_of("p", 3))
    assert who(offers(freed(P), Shelf({P: 3}), in_line([grown]), FREED_AT)) == [("grown", {P: 3})]
    too_big = candidate("big", 5, line_of("p", 4))
    made = offers(freed(P), Shelf({P: 3}), in_line([too_big, grown]), FREED_AT)
    assert who(made) == [("grown", {P: 3})]  # passed over, the next one fits


def test_a_removed_line_and_a_held_line_are_not_offered() -> None:
    removed = candidate("removed", 5, line_of("q"))
    held = candidate("held", 6, line_of("p"), held=frozenset({P}))
    assert offers(freed(P), Shelf({P: 5}), in_line([removed, held]), FREED_AT) == []


def test_only_the_freed_rows_are_offered_on_a_partial_cart() -> None:
    both = candidate("both", 5, line_of("p"), line_of("q"))
    made = offers(freed(P), Shelf({P: 1, Q: 1}), in_line([both]), FREED_AT)
    assert who(made) == [("both", {P: 1})]


def test_an_operator_release_is_not_offered_again() -> None:
    taken_away = candidate("away", 5, line_of("p"), released_by_operator=frozenset({P}))
    after = candidate("after", 6, line_of("p"))
    assert who(offers(freed(P), Shelf({P: 1}), in_line([taken_away, after]), FREED_AT)) == [
        ("after", {P: 1})
    ]


def test_an_all_or_nothing_cart_is_offered_only_whole() -> None:
    whole = ExperienceSettings(backfill=True, multi_item_policy=MultiItemPolicy.ALL_OR_NOTHING)
    cart = candidate("whole", 5, line_of("p"), line_of("q"), settings=whole)
    assert offers(freed(P), Shelf({P: 1, Q: 0}), in_line([cart]), FREED_AT) == []
    made = offers(freed(P), Shelf({P: 1, Q: 1}), in_line([cart]), FREED_AT)
    assert who(made) == [("whole", {P: 1, Q: 1})]


def test_a_hard_cart_missing_a_line_to_the_operator_is_never_whole() -> None:
    hard = ExperienceSettings(backfill=True, strategy=Strategy.HARD)
    cart = candidate("hard", 5, line_of("p"), settings=hard, released_by_operator=frozenset({P}))
    assert offers(freed(P), Shelf({P: 5}), in_line([cart]), FREED_AT) == []


def test_a_pool_offers_one_unit_a_product_within_its_cap() -> None:
    pooled = ExperienceSettings(backfill=True, strategy=Strategy.POOL, pool_size=2)
    first, second = (
        candidate("first", 5, line_of("p", 3), settings=pooled),
        candidate("second", 6, line_of("p"), settings=pooled),
    )
    shelf = Shelf({P: 10}, {(EXP, *P): 1})
    made = offers(freed(P), shelf, in_line([first, second]), FREED_AT)
    assert who(made) == [("first", {P: 1})]  # one unit; the cap of 2 is then reached
    assert shelf.pool_used == {(EXP, *P): 2}
    assert shelf.free == {P: 9}


def test_those_who_left_converted_or_expired_are_never_offered() -> None:
    gone = [
        candidate("left", 1, line_of("p"), status=AdmissionStatus.RELEASED),
        candidate("sold", 2, line_of("p"), status=AdmissionStatus.CONVERTED),
        candidate("expired", 3, line_of("p"), status=AdmissionStatus.EXPIRED),
        candidate("due", 4, line_of("p"), expires_at=FREED_AT),
        candidate("superseded", 5, line_of("p"), status=AdmissionStatus.SUPERSEDED),
    ]
    assert offers(freed(P), Shelf({P: 9}), in_line(gone), FREED_AT) == []


def test_another_experience_freed_nothing_for_this_one() -> None:
    other = candidate("other", 5, line_of("p"), experience_id="elsewhere")
    assert offers(freed(P), Shelf({P: 1}), in_line([other]), FREED_AT) == []


def test_the_line_is_read_only_while_the_freed_rows_have_units() -> None:
    read: list[str] = []

    def line() -> Iterator[Candidate]:
        for c in in_line([candidate(g, n, line_of("p")) for n, g in enumerate("abc")]):
            read.append(c.grant_digest)
            yield c

    assert who(offers(freed(P), Shelf({P: 1}), line(), FREED_AT)) == [("a", {P: 1})]
    assert read == ["a"]
