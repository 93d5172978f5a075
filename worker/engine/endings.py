"""Applying an ending: release (left, denied, lost) or expiry (window elapsed,
or Fanfare's admission-expired first), decided by when it happened: see
worker.domain.endings for whose ending it is and what it changes."""

from __future__ import annotations

from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.commands import EndAdmission
from worker.domain.endings import AdmissionStatus, Fact, Visit, counts_for, owner_of
from worker.domain.model import ExperienceSettings
from worker.engine.base import Applied
from worker.engine.events import Events
from worker.engine.settle import keep, settle
from worker.logs import get_logger

log = get_logger("worker.engine")


def end_admission(uow: UnitOfWork, cmd: EndAdmission, defaults: ExperienceSettings) -> Applied:
    events = Events(cmd)
    fact = Fact(
        cmd.command_id,
        cmd.grant_digest,
        AdmissionStatus(cmd.outcome),
        cmd.reason,
        cmd.ended_at,
    )
    visit = owner_of(fact, uow.visits(cmd.experience_id, cmd.consumer_id))
    if (
        visit is None
        or fact.grant_digest is None
        or uow.standing(visit.grant_digest).status is AdmissionStatus.CONVERTED
    ):
        # Kept: its admission may arrive later; one admitted between may
        # arrive and take it (without a grant); or the sale that outranks it
        # may move to such an admission, and then this is how it ended.
        keep(uow, events, cmd.experience_id, cmd.consumer_id, fact)
    if visit is None:
        return Applied({"status": "remembered", "outcome": cmd.outcome}, events.items)
    settled = settle(uow, events, cmd.experience_id, cmd.consumer_id, defaults, new=fact)
    if visit.grant_digest not in settled.changed:
        return _ignored(uow, events, cmd, fact, visit)
    now = settled.verdicts[visit.grant_digest]
    return Applied({"status": now.status.value, "holdsEnded": settled.holds}, events.items)


def _ignored(
    uow: UnitOfWork, events: Events, cmd: EndAdmission, fact: Fact, visit: Visit
) -> Applied:
    """An ending that changed nothing: too early to count, or its admission
    had already ended."""
    before = uow.standing(visit.grant_digest)
    decision = "not_yet_due" if not counts_for(fact, visit) else "already_ended"
    log.info(
        "ending_ignored",
        decision=decision,
        command_id=str(cmd.command_id),
        grant_digest=visit.grant_digest,
        admission_status=before.status.value,
    )
    return Applied({"status": decision, "admissionStatus": before.status.value}, events.items)
