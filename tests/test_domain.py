"""Pure domain: every decision without I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from worker.domain import ids
from worker.domain.admission import is_all_or_nothing, plan_holds, wanted_units
from worker.domain.cart import ActiveHold, plan_cart_change
from worker.domain.checkout import Hold, check_checkout
from worker.domain.endings import OPEN, AdmissionStatus, Fact, Verdict, Visit, owner, verdicts
from worker.domain.model import CartLine, ExperienceSettings, ReservationStatus, Strategy

T0 = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)
GRANT = ids.grant_digest("eyJ.grant.one")
OTHER = ids.grant_digest("eyJ.grant.two")


def line(product: str, qty: int, variant: str | None = None) -> CartLine:
    return CartLine(product_id=product, variant_id=variant, quantity=qty)


def test_grant_digest_is_unkeyed_sha256_and_never_the_grant() -> None:
    digest = ids.grant_digest("eyJ.secret")
    assert len(digest) == 64
    assert "eyJ" not in digest
    assert digest == ids.grant_digest("eyJ.secret")


def test_expires_at_is_admission_time_plus_window_and_buffer() -> None:
    assert ExperienceSettings().expires_at(T0) == T0 + timedelta(seconds=660)


def test_admission_holds_each_row_once_summing_lines_on_the_same_row() -> None:
    cart = [line("shoe", 1, "42"), line("shoe", 2, "42"), line("cap", 1)]
    holds = plan_holds(GRANT, cart, ExperienceSettings())
    assert [(h.product_id, h.variant_id, h.quantity) for h in holds] == [
        ("cap", "", 1),
        ("shoe", "42", 3),
    ]
    assert holds[0].reservation_id == ids.reservation_id(GRANT, "cap", None)


@pytest.mark.parametrize(
    ("strategy", "policy", "expected"),
    [
        (Strategy.SOFT, "partial", False),
        (Strategy.SOFT, "all_or_nothing", True),
        (Strategy.HARD, "partial", True),
        (Strategy.POOL, "partial", False),
    ],
)
def test_all_or_nothing_by_strategy_and_policy(
    strategy: Strategy, policy: str, expected: bool
) -> None:
    settings = ExperienceSettings.model_validate(
        {"strategy": strategy, "multiItemPolicy": policy, "poolSize": 5}
    )
    assert is_all_or_nothing(settings) is expected


def test_pool_holds_one_unit_per_consumer_per_product() -> None:
    assert wanted_units([line("p", 3), line("q", 2)], Strategy.POOL) == {("p", ""): 1, ("q", ""): 1}


def test_cart_change_replaces_only_changed_rows_in_key_order() -> None:
    current = [
        ActiveHold(ids.reservation_id(GRANT, "a", None), "a", "", 1),
        ActiveHold(ids.reservation_id(GRANT, "b", None), "b", "", 2),
    ]
    changes = plan_cart_change(GRANT, "rev1", current, [line("b", 3), line("c", 1)], Strategy.SOFT)
    assert [(c.product_id, c.delta, c.new_quantity) for c in changes] == [
        ("a", -1, 0),
        ("b", 1, 3),
        ("c", 1, 1),
    ]
    assert changes[0].new_reservation_id is None
    assert changes[1].new_reservation_id == ids.reservation_id(GRANT, "b", None, "rev1")
    assert changes[1].old is not None


def test_cart_change_with_same_rows_changes_nothing() -> None:
    current = [ActiveHold(ids.reservation_id(GRANT, "a", None), "a", "", 2)]
    assert (
        plan_cart_change(GRANT, "rev", current, [line("a", 1), line("a", 1)], Strategy.SOFT) == []
    )


def visit(grant: str = GRANT, at: datetime = T0) -> Visit:
    return Visit(grant, at, ExperienceSettings().expires_at(at))


def fact(
    at: datetime,
    grant: str | None = None,
    outcome: AdmissionStatus = AdmissionStatus.RELEASED,
    reason: str = "left",
    order: str | None = None,
) -> Fact:
    return Fact(uuid.uuid4(), grant, outcome, reason, at, order)


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def test_open_admission_without_facts_is_active() -> None:
    assert verdicts([visit()], []) == {GRANT: OPEN}


def test_a_later_admission_supersedes_an_earlier_one_whatever_came_first() -> None:
    result = verdicts([visit(OTHER, T0 + minutes(5)), visit()], [])
    assert result[GRANT] == Verdict(AdmissionStatus.SUPERSEDED, "superseded", T0 + minutes(5))
    assert result[OTHER] == OPEN


def test_a_grantless_ending_belongs_to_the_latest_admission_at_or_before_it() -> None:
    # A at t, `left` at t+3, B at t+5: the left ends A, never B.
    left = fact(T0 + minutes(3))
    result = verdicts([visit(GRANT, T0), visit(OTHER, T0 + minutes(5))], [left])
    assert result[GRANT] == Verdict(AdmissionStatus.RELEASED, "left", T0 + minutes(3))
    assert result[OTHER] == OPEN
    assert owner([visit(GRANT, T0), visit(OTHER, T0 + minutes(5))], T0 + minutes(3)) == visit()
    assert owner([visit(OTHER, T0 + minutes(5))], T0 + minutes(3)) is None


def test_a_grantless_ending_before_any_admission_ends_none() -> None:
    assert verdicts([visit(GRANT, T0)], [fact(T0 - minutes(1))]) == {GRANT: OPEN}


def test_the_earliest_ending_wins() -> None:
    expiry = fact(T0 + minutes(11), GRANT, AdmissionStatus.EXPIRED, "window_elapsed")
    left = fact(T0 + minutes(4))
    result = verdicts([visit()], [expiry, left])
    assert result[GRANT].status is AdmissionStatus.RELEASED


def test_an_expiry_for_an_earlier_window_does_not_end_it() -> None:
    early = fact(T0 + minutes(1), GRANT, AdmissionStatus.EXPIRED, "window_elapsed")
    assert verdicts([visit()], [early]) == {GRANT: OPEN}
    due = fact(T0 + minutes(11), GRANT, AdmissionStatus.EXPIRED, "window_elapsed")
    assert verdicts([visit()], [due])[GRANT].status is AdmissionStatus.EXPIRED


def test_a_completion_wins_over_endings_and_keeps_its_order() -> None:
    expiry = fact(T0 + minutes(11), GRANT, AdmissionStatus.EXPIRED, "window_elapsed")
    completion = fact(T0 + minutes(12), None, AdmissionStatus.CONVERTED, "checkout", "o-1")
    result = verdicts([visit()], [expiry, completion])
    # It held until its expiry: the cart of then is what was sold.
    assert result[GRANT] == Verdict(
        AdmissionStatus.CONVERTED,
        "checkout",
        T0 + minutes(12),
        "o-1",
        T0 + minutes(11),
        completion.command_id,
    )


def test_a_grantless_completion_after_the_next_admission_belongs_to_it() -> None:
    completion = fact(T0 + minutes(6), None, AdmissionStatus.CONVERTED, "checkout", "o-1")
    result = verdicts([visit(GRANT, T0), visit(OTHER, T0 + minutes(5))], [completion])
    assert result[GRANT].status is AdmissionStatus.SUPERSEDED
    assert result[OTHER].status is AdmissionStatus.CONVERTED


def hold(
    product: str,
    qty: int,
    status: ReservationStatus = ReservationStatus.ACTIVE,
    grant: str = GRANT,
    expires: datetime = T0 + timedelta(minutes=11),
) -> Hold:
    return Hold(f"r-{product}", grant, product, "", qty, status, expires)


def test_checkout_order_of_checks() -> None:
    at = T0 + timedelta(minutes=1)
    holds = [hold("a", 2), hold("b", 1)]
    assert check_checkout(holds, GRANT, [line("a", 2), line("b", 1)], at) is None
    mismatch = check_checkout(holds, OTHER, [line("a", 1)], at)
    assert mismatch is not None
    assert mismatch.code == "ADMISSION_MISMATCH"
    missing = check_checkout(holds, GRANT, [line("c", 1)], at)
    assert missing is not None
    assert missing.code == "RESERVATION_MISSING"
    short = check_checkout(holds, GRANT, [line("a", 1), line("a", 2)], at)
    assert short is not None
    assert short.code == "RESERVATION_INSUFFICIENT"


def test_checkout_expired_by_status_or_by_the_commands_own_time() -> None:
    expired = [hold("a", 1, ReservationStatus.EXPIRED)]
    err = check_checkout(expired, GRANT, [line("a", 1)], T0)
    assert err is not None
    assert err.code == "RESERVATION_EXPIRED"
    late = T0 + timedelta(minutes=12)
    err = check_checkout([hold("a", 1)], GRANT, [line("a", 1)], late)
    assert err is not None
    assert err.code == "RESERVATION_EXPIRED"
    # Mismatch is checked before expiry.
    err = check_checkout([hold("a", 1)], OTHER, [line("a", 1)], late)
    assert err is not None
    assert err.code == "ADMISSION_MISMATCH"


@pytest.mark.parametrize(
    "name",
    ["", "event:6f1c3a52-9d0e-4a8b-bf37-2f5e8c1d7a90:0", "é€😀 x" * 40, "a" * 1000]
    + [f"reservation:{n}:{n * 7919}" for n in range(500)],
)
def test_fast_uuid5_is_the_standard_uuid5(name: str) -> None:
    fast = ids.uuid5(name)
    standard = uuid.uuid5(ids.NAMESPACE, name)
    assert fast == standard
    assert (str(fast), fast.version, fast.variant, hash(fast)) == (
        str(standard),
        5,
        uuid.RFC_4122,
        hash(standard),
    )
    assert fast.bytes == standard.bytes
    assert fast.is_safe == standard.is_safe
