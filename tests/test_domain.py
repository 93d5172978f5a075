"""Pure domain: every decision without I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from worker.domain import ids
from worker.domain.admission import (
    AdmissionDecision,
    PriorAdmission,
    RememberedEnding,
    plan_admission,
    wanted_units,
)
from worker.domain.cart import ActiveHold, plan_cart_change
from worker.domain.checkout import Hold, check_checkout
from worker.domain.commands import AdmitConsumer, CommandSource, EndAdmission
from worker.domain.endings import AdmissionState, EndDecision, decide_end
from worker.domain.model import CartLine, ExperienceSettings, ReservationStatus, Strategy

T0 = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)
GRANT = ids.grant_digest("eyJ.grant.one")
OTHER = ids.grant_digest("eyJ.grant.two")


def admit(at: datetime = T0, grant: str = GRANT) -> AdmitConsumer:
    return AdmitConsumer(
        command_id=ids.command_id("fanfare", f"whk-{grant}-{at}"),
        occurred_at=at,
        received_at=at,
        source=CommandSource(kind="fanfare", source_id="whk"),
        experience_id="queue_1",
        consumer_id="cons_1",
        grant_digest=grant,
        admitted_at=at,
        experience_kind="queue",
    )


def line(product: str, qty: int, variant: str | None = None) -> CartLine:
    return CartLine(product_id=product, variant_id=variant, quantity=qty)


def test_grant_digest_is_unkeyed_sha256_and_never_the_grant() -> None:
    digest = ids.grant_digest("eyJ.secret")
    assert len(digest) == 64
    assert "eyJ" not in digest
    assert digest == ids.grant_digest("eyJ.secret")


def test_expires_at_is_admission_time_plus_window_and_buffer() -> None:
    plan = plan_admission(admit(), ExperienceSettings(), [line("p", 1)], False, None)
    assert plan.expires_at == T0 + timedelta(seconds=660)


def test_admission_holds_each_row_once_summing_lines_on_the_same_row() -> None:
    cart = [line("shoe", 1, "42"), line("shoe", 2, "42"), line("cap", 1)]
    plan = plan_admission(admit(), ExperienceSettings(), cart, False, None)
    assert plan.decision is AdmissionDecision.HOLD
    assert [(h.product_id, h.variant_id, h.quantity) for h in plan.holds] == [
        ("cap", "", 1),
        ("shoe", "42", 3),
    ]
    assert not plan.all_or_nothing


def test_seen_grant_is_a_duplicate() -> None:
    plan = plan_admission(admit(), ExperienceSettings(), [line("p", 1)], True, None)
    assert plan.decision is AdmissionDecision.DUPLICATE
    assert plan.holds == []


def test_new_grant_supersedes_the_active_older_one() -> None:
    prior = PriorAdmission(OTHER, T0 - timedelta(minutes=5), active=True)
    plan = plan_admission(admit(), ExperienceSettings(), [line("p", 1)], False, prior)
    assert plan.decision is AdmissionDecision.HOLD
    assert plan.supersedes == OTHER


def test_older_grant_arriving_late_is_superseded_without_holds() -> None:
    prior = PriorAdmission(OTHER, T0 + timedelta(minutes=5), active=True)
    plan = plan_admission(admit(), ExperienceSettings(), [line("p", 1)], False, prior)
    assert plan.decision is AdmissionDecision.SUPERSEDED
    assert plan.holds == []


def test_ending_that_came_first_means_no_holds() -> None:
    ending = RememberedEnding("expired", "admission_expired", T0 + timedelta(minutes=10))
    plan = plan_admission(admit(), ExperienceSettings(), [line("p", 1)], False, None, ending)
    assert plan.decision is AdmissionDecision.ENDED_EARLY
    assert plan.holds == []


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
    plan = plan_admission(admit(), settings, [line("p", 1)], False, None)
    assert plan.all_or_nothing is expected


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


def end(reason: str = "left", at: datetime = T0, outcome: str = "released") -> EndAdmission:
    return EndAdmission.model_validate(
        {
            "commandId": ids.command_id("fanfare", f"end-{reason}-{at}"),
            "occurredAt": at,
            "receivedAt": at,
            "source": {"kind": "fanfare", "sourceId": "x"},
            "experienceId": "queue_1",
            "consumerId": "cons_1",
            "grantDigest": GRANT,
            "outcome": outcome,
            "reason": reason,
            "endedAt": at,
        }
    )


def test_ending_decisions() -> None:
    active = AdmissionState(GRANT, "active", T0 + timedelta(minutes=11))
    assert decide_end(end(), None) is EndDecision.REMEMBER
    assert decide_end(end(), active) is EndDecision.END
    for final in ("converted", "released", "expired", "superseded"):
        state = AdmissionState(GRANT, final, active.expires_at)
        assert decide_end(end(), state) is EndDecision.ALREADY_ENDED
    early = end("window_elapsed", T0, "expired")
    assert decide_end(early, active) is EndDecision.NOT_YET_DUE
    due = end("window_elapsed", active.expires_at, "expired")
    assert decide_end(due, active) is EndDecision.END


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
    assert (mismatch.code, mismatch.status) == ("ADMISSION_MISMATCH", 403)
    missing = check_checkout(holds, GRANT, [line("c", 1)], at)
    assert missing is not None
    assert (missing.code, missing.status) == ("RESERVATION_MISSING", 400)
    short = check_checkout(holds, GRANT, [line("a", 1), line("a", 2)], at)
    assert short is not None
    assert (short.code, short.status) == ("RESERVATION_INSUFFICIENT", 400)


def test_checkout_expired_by_status_or_by_the_commands_own_time() -> None:
    expired = [hold("a", 1, ReservationStatus.EXPIRED)]
    err = check_checkout(expired, GRANT, [line("a", 1)], T0)
    assert err is not None
    assert (err.code, err.status) == ("RESERVATION_EXPIRED", 409)
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
