"""Extending a hold: whether an admission's expiry may move by the
experience's `extensionSeconds`, decided at the extension's own time.

The admission must be the consumer's latest admitted by then, still open by
what had happened by then (worker.domain.endings: facts later than the
extension do not count), and not yet past its `expires_at`. An expiry of
ours computed for the old time then no longer counts
(`endings.counts_for` compares it with the moved `expires_at`), even when it
was applied before the extension: the admission holds again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from worker.domain.endings import Fact, Visit, standing_at
from worker.domain.model import ExperienceSettings

MISMATCH = "ADMISSION_MISMATCH"
NOT_ALLOWED = "EXTENSION_NOT_ALLOWED"
EXPIRED = "RESERVATION_EXPIRED"
EXHAUSTED = "EXTENSIONS_EXHAUSTED"


@dataclass(frozen=True)
class Refusal:
    """A request the rules refuse, by its stable code."""

    code: str
    message: str


@dataclass(frozen=True)
class Extension:
    """An extension granted: the new expiry and the extensions used and left."""

    expires_at: datetime
    previous_expires_at: datetime
    extensions: int
    left: int


def extend(
    visits: Sequence[Visit],
    facts: Sequence[Fact],
    grant_digest: str,
    at: datetime,
    used: int,
    settings: ExperienceSettings,
) -> Extension | Refusal:
    """Check, in order: the admission, the setting, its time, the count."""
    standing = standing_at(visits, facts, grant_digest, at)
    if standing is None:
        return Refusal(MISMATCH, "The grant is not the consumer's current admission.")
    if settings.extension_seconds == 0 or settings.max_extensions == 0:
        return Refusal(NOT_ALLOWED, "This experience does not extend holds.")
    visit = next(v for v in visits if v.grant_digest == grant_digest)
    if standing.over or at >= visit.expires_at:
        return Refusal(EXPIRED, "The reservation for this admission has expired.")
    if used >= settings.max_extensions:
        return Refusal(EXHAUSTED, f"The holds were extended {used} times already.")
    return Extension(
        expires_at=visit.expires_at + timedelta(seconds=settings.extension_seconds),
        previous_expires_at=visit.expires_at,
        extensions=used + 1,
        left=settings.max_extensions - used - 1,
    )
