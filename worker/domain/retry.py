"""Trying again after an expiry: whether an admission whose holds expired
may hold the consumer's cart again, decided at the retry's own time.

The admission must be the consumer's latest admitted by then and stand
expired by what had happened by then: ended by an expiry, or still open but
past its `expires_at` (our scheduler's expiry is due, whether or not it was
applied yet). The retry comes at most `retryWindowSeconds` after that
expiry. It holds until its own time plus the admission's window and buffer.
How a retry weighs against facts that arrive later is
worker.domain.endings' rule (a retry starts a new holding period).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from worker.domain.endings import WINDOW_ELAPSED, AdmissionStatus, Fact, Visit, standing_at
from worker.domain.extension import Refusal
from worker.domain.model import ExperienceSettings

MISMATCH = "ADMISSION_MISMATCH"
NOT_ALLOWED = "RETRY_NOT_ALLOWED"
NOT_EXPIRED = "NOT_EXPIRED"
WINDOW_CLOSED = "RETRY_WINDOW_CLOSED"
# A retry refused NOT_EXPIRED is kept with this reason until it counts
# (worker.domain.endings: a pending retry).
PENDING_REASON = "not_expired"


@dataclass(frozen=True)
class Retry:
    """A retry granted: the expiry it follows, and until when it holds."""

    follows: datetime
    reason: str
    expires_at: datetime
    window: timedelta


def expiry_of(
    visits: Sequence[Visit], facts: Sequence[Fact], grant_digest: str, at: datetime
) -> tuple[datetime, str] | Refusal:
    """The expiry an admission stood ended by at `at`, and its reason."""
    standing = standing_at(visits, facts, grant_digest, at)
    if standing is None:
        return Refusal(MISMATCH, "The grant is not the consumer's current admission.")
    if standing.status is AdmissionStatus.EXPIRED:
        assert standing.at is not None
        return standing.at, standing.reason or WINDOW_ELAPSED
    visit = next(v for v in visits if v.grant_digest == grant_digest)
    if not standing.over and visit.expires_at <= at:
        return visit.expires_at, WINDOW_ELAPSED
    return Refusal(NOT_EXPIRED, "The admission's holds have not expired.")


def retry(
    visits: Sequence[Visit],
    facts: Sequence[Fact],
    grant_digest: str,
    at: datetime,
    settings: ExperienceSettings,
) -> Retry | Refusal:
    """Check, in order: the admission, the setting, the expiry, the window.
    `settings`: the admission's (its window and buffer) with the
    experience's current retryWindowSeconds."""
    expiry = expiry_of(visits, facts, grant_digest, at)
    if isinstance(expiry, Refusal) and expiry.code == MISMATCH:
        return expiry
    if settings.retry_window_seconds == 0:
        return Refusal(NOT_ALLOWED, "This experience does not hold again after an expiry.")
    if isinstance(expiry, Refusal):
        return expiry
    follows, reason = expiry
    window = timedelta(seconds=settings.retry_window_seconds)
    if at > follows + window:
        return Refusal(WINDOW_CLOSED, "The time to try again after the expiry has passed.")
    return Retry(follows, reason, settings.expires_at(at), window)
