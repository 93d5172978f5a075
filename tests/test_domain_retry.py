"""The rules for extending and trying again, pure (worker.domain.extension,
worker.domain.retry) and how a kept retry weighs against other facts by time
(worker.domain.endings.verdicts): no database, no engine."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from worker.domain.endings import (
    WINDOW_ELAPSED,
    AdmissionStatus,
    Fact,
    Visit,
    taken_up_id,
    verdicts,
)
from worker.domain.extension import Extension, Refusal, extend
from worker.domain.model import ExperienceSettings
from worker.domain.retry import Retry, retry


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


T0 = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)
E0 = T0 + timedelta(seconds=660)
TR = E0 + timedelta(seconds=30)
E1 = TR + timedelta(seconds=660)
G, G2 = "a" * 64, "b" * 64
ADMITTED = Visit(G, T0, E0)
RETRIED = Visit(G, T0, E1)  # the admission row once the retry moved its expiry
RETRY = Fact(
    uuid4(), G, AdmissionStatus.ACTIVE, WINDOW_ELAPSED, TR, follows=E0, retry_window=s(300)
)
EXTENDING = ExperienceSettings(extension_seconds=120, max_extensions=2)
RETRYING = ExperienceSettings(retry_window_seconds=300)


def left(at: datetime) -> Fact:
    return Fact(uuid4(), None, AdmissionStatus.RELEASED, "left", at)


def our_expiry(at: datetime) -> Fact:
    return Fact(None, G, AdmissionStatus.EXPIRED, WINDOW_ELAPSED, at)


def test_an_extension_moves_the_expiry_and_counts() -> None:
    granted = extend([ADMITTED], [], G, T0 + s(60), 1, EXTENDING)
    assert granted == Extension(E0 + s(120), E0, 2, 0)


def test_extension_refusals_in_order() -> None:
    def code(*args: object) -> str:
        refused = extend(*args)  # type: ignore[arg-type]
        assert isinstance(refused, Refusal)
        return refused.code

    assert code([ADMITTED], [], G2, T0, 0, EXTENDING) == "ADMISSION_MISMATCH"
    assert code([ADMITTED], [], G, T0, 0, ExperienceSettings()) == "EXTENSION_NOT_ALLOWED"
    assert code([ADMITTED], [], G, E0, 0, EXTENDING) == "RESERVATION_EXPIRED"
    assert code([ADMITTED], [left(T0 + s(5))], G, T0 + s(10), 0, EXTENDING) == (
        "RESERVATION_EXPIRED"
    )
    assert code([ADMITTED], [], G, T0 + s(10), 2, EXTENDING) == "EXTENSIONS_EXHAUSTED"


def test_an_extension_ignores_what_happened_after_its_time() -> None:
    """Our expiry at E0 already applied: an extension decided before it stands."""
    granted = extend([ADMITTED], [our_expiry(E0)], G, E0 - s(1), 0, EXTENDING)
    assert isinstance(granted, Extension)


def test_a_retry_follows_the_expiry_within_its_window() -> None:
    granted = Retry(E0, WINDOW_ELAPSED, TR + s(660), s(300))
    assert retry([ADMITTED], [our_expiry(E0)], G, TR, RETRYING) == granted
    # Not applied yet, but due by time: the same.
    assert retry([ADMITTED], [], G, TR, RETRYING) == granted


def test_retry_refusals_in_order() -> None:
    def code(*args: object) -> str:
        refused = retry(*args)  # type: ignore[arg-type]
        assert isinstance(refused, Refusal)
        return refused.code

    assert code([ADMITTED], [], G2, TR, RETRYING) == "ADMISSION_MISMATCH"
    assert code([ADMITTED], [], G, TR, ExperienceSettings()) == "RETRY_NOT_ALLOWED"
    assert code([ADMITTED], [], G, E0 - s(1), RETRYING) == "NOT_EXPIRED"
    assert code([ADMITTED], [left(T0 + s(9))], G, TR, RETRYING) == "NOT_EXPIRED"
    assert code([ADMITTED], [], G, E0 + s(301), RETRYING) == "RETRY_WINDOW_CLOSED"
    assert code([RETRIED], [RETRY], G, TR + s(5), RETRYING) == "NOT_EXPIRED"


def test_a_retry_holds_again() -> None:
    assert verdicts([RETRIED], [RETRY])[G].status is AdmissionStatus.ACTIVE
    # Our expiry for the old time, applied after the retry, does not count.
    assert verdicts([RETRIED], [RETRY, our_expiry(E0)])[G].status is AdmissionStatus.ACTIVE


def test_an_ending_before_the_expiry_wins() -> None:
    verdict = verdicts([RETRIED], [RETRY, left(E0 - s(60))])[G]
    assert (verdict.status, verdict.reason) == (AdmissionStatus.RELEASED, "left")


def test_an_ending_between_the_expiry_and_the_retry_changes_nothing() -> None:
    assert verdicts([RETRIED], [RETRY, left(E0 + s(10))])[G].status is AdmissionStatus.ACTIVE


def test_an_ending_after_the_retry_ends_it() -> None:
    verdict = verdicts([RETRIED], [RETRY, left(TR + s(10))])[G]
    assert (verdict.status, verdict.at) == (AdmissionStatus.RELEASED, TR + s(10))
    expired = verdicts([RETRIED], [RETRY, our_expiry(E1)])[G]
    assert (expired.status, expired.at) == (AdmissionStatus.EXPIRED, E1)


def test_a_completion_wins_in_either_period() -> None:
    for at in (E0 - s(60), E0 + s(10), TR + s(10)):
        sale = Fact(uuid4(), None, AdmissionStatus.CONVERTED, "checkout", at, "o-1")
        assert verdicts([RETRIED], [RETRY, sale])[G].status is AdmissionStatus.CONVERTED


def test_a_later_admission_before_the_retry_voids_it() -> None:
    later = Visit(G2, E0 + s(10), E0 + s(670))
    verdict = verdicts([RETRIED, later], [RETRY])[G]
    assert (verdict.status, verdict.at) == (AdmissionStatus.EXPIRED, E0)
    after = Visit(G2, TR + s(10), TR + s(670))
    superseded = verdicts([RETRIED, after], [RETRY])[G]
    assert (superseded.status, superseded.at) == (AdmissionStatus.SUPERSEDED, TR + s(10))


def test_an_earlier_expiry_arriving_late_counts_the_window_from_it() -> None:
    fanfare = Fact(uuid4(), None, AdmissionStatus.EXPIRED, "admission_expired", T0 + s(60))
    verdict = verdicts([RETRIED], [RETRY, fanfare])[G]
    assert (verdict.status, verdict.at) == (AdmissionStatus.EXPIRED, T0 + s(60))
    near = Fact(uuid4(), None, AdmissionStatus.EXPIRED, "admission_expired", E0 - s(60))
    assert verdicts([RETRIED], [RETRY, near])[G].status is AdmissionStatus.ACTIVE


# A retry refused NOT_EXPIRED at arrival, kept pending: the admission held
# again from TR (until E1) when it came, 42 s after the retry.
SPAN = s(660)
HELD_AGAIN = Visit(G, T0, E1, SPAN)
PENDING = Fact(uuid4(), G, AdmissionStatus.ACTIVE, "not_expired", TR + s(42), retry_window=s(120))


def fanfare_expired(at: datetime) -> Fact:
    return Fact(uuid4(), None, AdmissionStatus.EXPIRED, "admission_expired", at)


def test_a_pending_retry_counts_once_an_earlier_expiry_arrives() -> None:
    assert PENDING.pending
    waiting = verdicts([HELD_AGAIN], [RETRY, PENDING])[G]
    assert (waiting.status, waiting.taken_up) == (AdmissionStatus.ACTIVE, ())
    ended = fanfare_expired(TR + s(21))
    verdict = verdicts([HELD_AGAIN], [RETRY, PENDING, ended])[G]
    assert verdict.status is AdmissionStatus.ACTIVE
    [taken] = verdict.taken_up
    assert (taken.command_id, taken.at) == (PENDING.command_id, PENDING.at)
    assert (taken.follows, taken.reason, taken.pending) == (TR + s(21), "admission_expired", False)
    # Its period runs until its own time plus the span: our expiry for the
    # period before it no longer ends it.
    late = verdicts([HELD_AGAIN], [RETRY, PENDING, ended, our_expiry(E1)])[G]
    assert (late.status, len(late.taken_up)) == (AdmissionStatus.ACTIVE, 1)
    # Once applied, the granted retry at its time stands for it.
    applied = dataclasses.replace(taken, command_id=taken_up_id(PENDING))
    done = verdicts([Visit(G, T0, PENDING.at + SPAN, SPAN)], [RETRY, PENDING, ended, applied])[G]
    assert (done.status, done.taken_up) == (AdmissionStatus.ACTIVE, ())


def test_a_pending_retry_counts_by_our_expiry_due() -> None:
    pending = dataclasses.replace(PENDING, at=E0 + s(10))
    verdict = verdicts([Visit(G, T0, E0, SPAN)], [pending])[G]
    [taken] = verdict.taken_up
    assert (taken.follows, taken.reason) == (E0, WINDOW_ELAPSED)


def test_a_pending_retry_that_does_not_count_changes_nothing() -> None:
    for facts in (
        [fanfare_expired(TR - s(100))],  # its window closed
        [left(TR + s(21))],  # released, not expired
        [fanfare_expired(TR + s(50))],  # after it: the period was still holding
    ):
        alone = verdicts([HELD_AGAIN], [RETRY, *facts])[G]
        assert verdicts([HELD_AGAIN], [RETRY, PENDING, *facts])[G] == alone
    later = Visit(G2, TR + s(30), TR + s(690))
    superseded = verdicts([HELD_AGAIN, later], [RETRY, PENDING, fanfare_expired(TR + s(21))])[G]
    assert (superseded.status, superseded.taken_up) == (AdmissionStatus.EXPIRED, ())


def test_a_granted_retry_outside_the_window_of_an_earlier_expiry_arriving_late() -> None:
    narrow = dataclasses.replace(RETRY, retry_window=s(120))
    early = fanfare_expired(E0 - s(200))
    verdict = verdicts([RETRIED], [narrow, early])[G]
    assert (verdict.status, verdict.at, verdict.taken_up) == (AdmissionStatus.EXPIRED, early.at, ())


def test_a_pending_retry_counts_exactly_when_it_would_have_been_granted() -> None:
    """Our expiry was due at E0, then the consumer left: a retry after that
    is refused at its time (the admission stands released), so kept pending
    it does not count either, whatever arrives later from after it."""
    visit = Visit(G, T0, E0, SPAN)
    pending = dataclasses.replace(PENDING, at=E0 + s(30))
    facts = [left(E0 + s(10))]
    refused = retry([visit], facts, G, pending.at, RETRYING)
    assert isinstance(refused, Refusal)
    assert refused.code == "NOT_EXPIRED"
    verdict = verdicts([visit], [*facts, pending])[G]
    assert (verdict.status, verdict.taken_up) == (AdmissionStatus.RELEASED, ())
