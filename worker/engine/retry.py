"""Applying a retry: after the admission's holds expired, the consumer's
current cart is held again under the same admission, by the experience's
rules, until the retry's time plus the window and buffer
(worker.domain.retry decides, at the command's own time). The retry is kept
as a fact, so facts that arrive later are weighed against it by time
(worker.domain.endings), and the consumer's admissions are settled again."""

from __future__ import annotations

from typing import Any

from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.admission import plan_holds, taken_again
from worker.domain.commands import RetryReservation
from worker.domain.endings import AdmissionStatus, Fact, Verdict
from worker.domain.extension import Refusal
from worker.domain.model import ExperienceSettings
from worker.domain.retry import Retry, retry
from worker.engine.admission import hold_requests
from worker.engine.base import Applied
from worker.engine.events import Events
from worker.engine.holds import HoldTerms
from worker.engine.settle import bring_to, settle


def retry_reservation(
    uow: UnitOfWork, cmd: RetryReservation, defaults: ExperienceSettings
) -> Applied:
    events = Events(cmd)
    pair = (cmd.experience_id, cmd.consumer_id)
    settings = uow.admission_settings(cmd.grant_digest) or defaults
    decided = retry(
        uow.visits(*pair), uow.facts(*pair), cmd.grant_digest, cmd.occurred_at, settings
    )
    if isinstance(decided, Refusal):
        return Applied.refused(decided.code, decided.message)
    # As it stood at the retry: expired (an expiry of ours that was due ends
    # it here; a sale or an ending from after the retry is taken back first).
    expired = Verdict(AdmissionStatus.EXPIRED, decided.reason, decided.follows)
    bring_to(uow, events, pair, cmd.grant_digest, expired, defaults)
    fact = Fact(
        cmd.command_id,
        cmd.grant_digest,
        AdmissionStatus.ACTIVE,
        decided.reason,
        cmd.occurred_at,
        follows=decided.follows,
        retry_window=decided.window,
    )
    uow.keep_fact(fact, *pair)
    uow.reopen_admission(cmd.grant_digest, decided.expires_at)
    events.admission_retried(pair, cmd.grant_digest, decided)
    outcome = _hold_again(uow, events, cmd, decided, settings)
    # A fact kept from after the retry's time ends it now.
    now = settle(uow, events, *pair, defaults).verdicts[cmd.grant_digest]
    return Applied(
        {**outcome, "status": "retried", "admissionStatus": now.status.value}, events.items
    )


def _hold_again(
    uow: UnitOfWork,
    events: Events,
    cmd: RetryReservation,
    decided: Retry,
    settings: ExperienceSettings,
) -> dict[str, Any]:
    """The current cart's holds, with ids of this retry (the expired holds
    of the same rows keep theirs)."""
    pair = (cmd.experience_id, cmd.consumer_id)
    planned = plan_holds(cmd.grant_digest, uow.load_cart(*pair), settings)
    requests = taken_again(cmd.grant_digest, str(cmd.command_id), planned)
    terms = HoldTerms(*pair, cmd.grant_digest, cmd.occurred_at, decided.expires_at, settings)
    return hold_requests(uow, events, terms, requests)
