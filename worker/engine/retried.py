"""What a retry that counts does, once its admission stands expired at the
expiry it follows: the admission holds again from the retry's time until
that time plus its window and buffer, the retry is kept as a fact, and the
consumer's current cart is held again with ids of the retry's command. The
retry API applies it at once (worker.engine.retry); a retry kept pending
is applied so when a later-arriving expiry makes it count
(worker.engine.settle)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from worker.adapters.rows import Pair
from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.admission import plan_holds, taken_again
from worker.domain.endings import AdmissionStatus, Fact
from worker.domain.model import ExperienceSettings
from worker.domain.retry import PENDING_REASON, Retry
from worker.engine.events import Events
from worker.engine.holds import HoldTerms
from worker.engine.taking import hold_requests


def pending(
    command_id: UUID, grant_digest: str, at: datetime, settings: ExperienceSettings
) -> Fact:
    """A refused retry as kept: no expiry to follow yet, its window as of now."""
    window = timedelta(seconds=settings.retry_window_seconds)
    return Fact(
        command_id, grant_digest, AdmissionStatus.ACTIVE, PENDING_REASON, at, retry_window=window
    )


def hold_again(
    uow: UnitOfWork,
    events: Events,
    pair: Pair,
    retry: Fact,
    settings: ExperienceSettings,
    kept: UUID,
) -> dict[str, Any]:
    """`retry`: granted (what it follows filled in), its admission already
    brought to expired then; `kept`: the id it is kept under."""
    assert retry.grant_digest is not None
    assert retry.follows is not None
    assert retry.retry_window is not None
    assert retry.command_id is not None
    grant_digest = retry.grant_digest
    decided = Retry(retry.follows, retry.reason, settings.expires_at(retry.at), retry.retry_window)
    uow.keep_fact(
        Fact(
            kept,
            grant_digest,
            AdmissionStatus.ACTIVE,
            decided.reason,
            retry.at,
            follows=decided.follows,
            retry_window=decided.window,
        ),
        *pair,
    )
    uow.reopen_admission(grant_digest, decided.expires_at)
    events.admission_retried(pair, grant_digest, decided, retry.at, kept)
    planned = plan_holds(grant_digest, uow.load_cart(*pair), settings)
    requests = taken_again(grant_digest, str(retry.command_id), planned)
    terms = HoldTerms(*pair, grant_digest, retry.at, decided.expires_at, settings)
    return hold_requests(uow, events, terms, requests)
