"""Applying an ending: release (left, denied, lost) or expiry (window elapsed,
or Fanfare's admission-expired first). Decision: worker.domain.endings."""

from __future__ import annotations

from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.commands import EndAdmission
from worker.domain.endings import EndDecision, decide_end
from worker.domain.events import AdmissionEnded, EndingRemembered
from worker.engine.base import Applied, Events
from worker.logs import get_logger

log = get_logger("worker.engine")


def end_admission(uow: UnitOfWork, cmd: EndAdmission) -> Applied:
    events = Events(cmd)
    if cmd.grant_digest is not None:
        admission = uow.admission_state(cmd.grant_digest)
    else:
        admission = uow.current_admission(cmd.experience_id, cmd.consumer_id)
        if (
            admission is not None
            and admission.status != "active"
            and cmd.reason != "window_elapsed"
        ):
            # The latest admission is over; a grant-less ending may still be
            # for an admission that has not arrived yet.
            admission = None
    decision = decide_end(cmd, admission)

    if decision is EndDecision.REMEMBER:
        uow.remember_ending(
            command_id=cmd.command_id,
            experience_id=cmd.experience_id,
            consumer_id=cmd.consumer_id,
            grant=cmd.grant_digest,
            outcome=cmd.outcome,
            reason=cmd.reason,
            ended_at=cmd.ended_at,
        )
        events.add(
            EndingRemembered(
                **events.common(),
                experience_id=cmd.experience_id,
                consumer_id=cmd.consumer_id,
                grant_digest=cmd.grant_digest,
                outcome=cmd.outcome,
                reason=cmd.reason,
                ended_at=cmd.ended_at,
            )
        )
        return Applied({"status": "remembered", "outcome": cmd.outcome}, events.items)
    assert admission is not None
    if decision is not EndDecision.END:
        log.info(
            "ending_ignored",
            decision=decision.value,
            command_id=str(cmd.command_id),
            grant_digest=admission.grant_digest,
            admission_status=admission.status,
        )
        return Applied({"status": decision.value, "admissionStatus": admission.status})

    ended = uow.end_active_reservations(
        admission.grant_digest, cmd.outcome, cmd.reason, cmd.ended_at
    )
    uow.close_admission(admission.grant_digest, cmd.outcome, cmd.reason, cmd.ended_at)
    for held in ended:
        events.hold_ended(
            kind=f"reservation.{cmd.outcome}",
            experience_id=cmd.experience_id,
            consumer_id=cmd.consumer_id,
            grant=admission.grant_digest,
            held=held,
            reason=cmd.reason,
            at=cmd.ended_at,
        )
    events.add(
        AdmissionEnded(
            **events.common(),
            experience_id=cmd.experience_id,
            consumer_id=cmd.consumer_id,
            grant_digest=admission.grant_digest,
            status=cmd.outcome,
            reason=cmd.reason,
            ended_at=cmd.ended_at,
        )
    )
    return Applied({"status": cmd.outcome, "holdsEnded": len(ended)}, events.items)
