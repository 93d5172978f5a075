"""How an admission ends before checkout: released (left, denied, lost,
superseded) or expired (window elapsed, or Fanfare said so first)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from worker.domain.commands import EndAdmission


class EndDecision(StrEnum):
    END = "end"  # end the active holds now
    REMEMBER = "remember"  # no admission yet: the late admission takes no holds
    ALREADY_ENDED = "already_ended"  # final already: an explicit no-op
    NOT_YET_DUE = "not_yet_due"  # an expiry before the admission's expires_at


@dataclass(frozen=True)
class AdmissionState:
    grant_digest: str
    status: str  # active | converted | released | expired | superseded
    expires_at: datetime


def decide_end(command: EndAdmission, admission: AdmissionState | None) -> EndDecision:
    if admission is None:
        return EndDecision.REMEMBER
    if admission.status != "active":
        return EndDecision.ALREADY_ENDED
    # Our own scheduler's expiry carries expires_at as its time; one computed
    # for an older window (settings changed, clock skew) must not end early.
    if command.reason == "window_elapsed" and command.ended_at < admission.expires_at:
        return EndDecision.NOT_YET_DUE
    return EndDecision.END
