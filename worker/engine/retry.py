"""Applying a retry: after the admission's holds expired, the consumer's
current cart is held again under the same admission, by the experience's
rules, until the retry's time plus the window and buffer
(worker.domain.retry decides, at the command's own time). The retry is kept
as a fact, so facts that arrive later are weighed against it by time
(worker.domain.endings), and the consumer's admissions are settled again.

A retry refused `NOT_EXPIRED` is kept too, pending: an expiry from before
it may still arrive and make it count (worker.engine.settle applies it
then). Its answer stays the refusal."""

from __future__ import annotations

from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.commands import RetryReservation
from worker.domain.endings import AdmissionStatus, Fact, Verdict
from worker.domain.extension import Refusal
from worker.domain.model import ExperienceSettings
from worker.domain.retry import NOT_EXPIRED, retry
from worker.engine.base import Applied
from worker.engine.events import Events
from worker.engine.retried import hold_again, pending
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
        if decided.code == NOT_EXPIRED:
            kept = pending(cmd.command_id, cmd.grant_digest, cmd.occurred_at, settings)
            uow.keep_fact(kept, *pair)
            events.retry_kept(pair, kept)
        return Applied.refused(decided.code, decided.message, events.items)
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
    outcome = hold_again(uow, events, pair, fact, settings, cmd.command_id)
    # A fact kept from after the retry's time ends it now.
    now = settle(uow, events, *pair, defaults).verdicts[cmd.grant_digest]
    return Applied(
        {**outcome, "status": "retried", "admissionStatus": now.status.value}, events.items
    )
