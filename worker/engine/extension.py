"""Applying an extension: the admission's expiry and its active holds'
move by the experience's extensionSeconds (worker.domain.extension decides,
at the command's own time). An expiry of ours applied before an extension
decided earlier than it no longer counts: the admission holds again, its
expired holds taken anew where stock allows."""

from __future__ import annotations

from typing import Any

from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.admission import taken_again
from worker.domain.commands import ExtendReservation
from worker.domain.endings import AdmissionStatus, Verdict, verdicts
from worker.domain.extension import Extension, Refusal, extend
from worker.domain.model import ExperienceSettings
from worker.engine.base import Applied
from worker.engine.events import Events
from worker.engine.holds import HoldTerms
from worker.engine.settle import settle
from worker.engine.taking import hold_requests


def extend_reservation(
    uow: UnitOfWork, cmd: ExtendReservation, defaults: ExperienceSettings
) -> Applied:
    events = Events(cmd)
    pair = (cmd.experience_id, cmd.consumer_id)
    settings = uow.load_settings(cmd.experience_id) or defaults
    used = uow.admission_extensions(cmd.grant_digest) if uow.grant_seen(cmd.grant_digest) else 0
    decided = extend(
        uow.visits(*pair), uow.facts(*pair), cmd.grant_digest, cmd.occurred_at, used, settings
    )
    if isinstance(decided, Refusal):
        return Applied.refused(decided.code, decided.message)
    uow.extend_admission(cmd.grant_digest, decided.expires_at)
    moved = uow.extend_active_reservations(cmd.grant_digest, decided.expires_at)
    events.reservation_extended(cmd, decided, moved)
    outcome = _extended(decided, len(moved))
    before = uow.standing(cmd.grant_digest)
    now = verdicts(uow.visits(*pair), uow.facts(*pair))[cmd.grant_digest]
    if before.status is AdmissionStatus.EXPIRED and not now.over:
        outcome["reopened"] = _reopen(uow, events, cmd, before, decided)
    else:
        # What happened after the extension stands as it was decided.
        settle(uow, events, *pair, defaults)
    return Applied(outcome, events.items)


def _extended(decided: Extension, moved: int) -> dict[str, Any]:
    return {
        "status": "extended",
        "expiresAt": decided.expires_at.isoformat(),
        "previousExpiresAt": decided.previous_expires_at.isoformat(),
        "extensions": decided.extensions,
        "extensionsLeft": decided.left,
        "holdsExtended": moved,
    }


def _reopen(
    uow: UnitOfWork,
    events: Events,
    cmd: ExtendReservation,
    before: Verdict,
    decided: Extension,
) -> dict[str, Any]:
    """The expiry that ended the admission no longer counts: its holds are
    taken anew (new ids, replacing the expired ones) where units are free."""
    assert before.reason is not None
    assert before.at is not None
    pair = (cmd.experience_id, cmd.consumer_id)
    uow.reopen_admission(cmd.grant_digest)
    events.admission_reopened(pair, cmd.grant_digest, before, decided.expires_at)
    ended = uow.holds_ended_by(cmd.grant_digest, before.reason, before.at)
    requests = taken_again(cmd.grant_digest, str(cmd.command_id), ended)
    settings = uow.admission_settings(cmd.grant_digest)
    assert settings is not None
    terms = HoldTerms(*pair, cmd.grant_digest, cmd.occurred_at, decided.expires_at, settings)
    replaces = {(h.product_id, h.variant_id): h.reservation_id for h in ended}
    return hold_requests(uow, events, terms, requests, replaces)
