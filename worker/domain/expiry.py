"""When admissions expire: the scheduler's expiry command, and the timeline
a simulation keeps of its own admissions' windows.

The scheduler publishes an expiry for every active admission whose
`expiresAt` has passed. A simulation decides a recorded log again under
other settings, so its admissions end at other times than the recorded
ones: it keeps an `ExpiryTimeline` of the admissions its own decisions left
active, fed by their events, and applies their expiries on time, between
the recorded commands. Pure: the caller applies the commands.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from worker.domain import ids
from worker.domain.commands import CommandSource, EndAdmission
from worker.domain.events import (
    AdmissionEnded,
    AdmissionRecorded,
    AdmissionReopened,
    AdmissionRetried,
    AdmissionRevised,
    EventBase,
    ReservationExtended,
)


def expiry_command(
    experience_id: str,
    consumer_id: str,
    grant_digest: str,
    expires_at: datetime,
    received_at: datetime,
) -> EndAdmission:
    """The expiry of one admission; every replica of the scheduler, and a
    simulation, derives the same id from the grant and its expiresAt."""
    source_id = ids.expiry_source_id(grant_digest, expires_at)
    return EndAdmission(
        command_id=ids.command_id("scheduler", source_id),
        occurred_at=expires_at,
        received_at=received_at,
        source=CommandSource(kind="scheduler", source_id=source_id),
        experience_id=experience_id,
        consumer_id=consumer_id,
        grant_digest=grant_digest,
        outcome="expired",
        reason="window_elapsed",
        ended_at=expires_at,
    )


@dataclass(frozen=True, slots=True)
class Window:
    """An active admission and when its window ends."""

    experience_id: str
    consumer_id: str
    expires_at: datetime


def opened(event: EventBase) -> datetime | None:
    """The expiry an event starts or moves, if it leaves its admission
    active: recorded active, extended, reopened or retried."""
    if isinstance(event, AdmissionRecorded):
        return event.expires_at if event.status == "active" else None
    if isinstance(event, ReservationExtended | AdmissionReopened | AdmissionRetried):
        return event.expires_at
    return None


class ExpiryTimeline:
    """The admissions a simulation's decisions left active, by grant, as
    the scheduler's query (`status = 'active' AND expires_at <= now`) would
    find them in its database."""

    def __init__(self) -> None:
        self.active: dict[str, Window] = {}

    def observe(self, events: Iterable[EventBase]) -> None:
        for event in events:
            self._observe(event)

    def _observe(self, event: EventBase) -> None:
        if isinstance(event, AdmissionEnded | AdmissionRevised):
            self.active.pop(event.grant_digest, None)
        elif isinstance(event, AdmissionRecorded | AdmissionReopened | AdmissionRetried):
            expires_at = opened(event)
            if expires_at is None:
                self.active.pop(event.grant_digest, None)
            else:
                window = Window(event.experience_id, event.consumer_id, expires_at)
                self.active[event.grant_digest] = window
        elif isinstance(event, ReservationExtended) and event.grant_digest in self.active:
            # An extension of an ended admission moves nothing the scheduler
            # reads; a reopening that follows says so itself.
            window = self.active[event.grant_digest]
            self.active[event.grant_digest] = Window(
                window.experience_id, window.consumer_id, event.expires_at
            )

    def next_due(self) -> datetime | None:
        return min((w.expires_at for w in self.active.values()), default=None)

    def due(self, until: datetime) -> list[EndAdmission]:
        """The expiries due at or before `until`, taken off the timeline, in
        the order of their expiresAt, then grant digest (deterministic)."""
        due = sorted(
            (w.expires_at, grant) for grant, w in self.active.items() if w.expires_at <= until
        )
        commands = []
        for expires_at, grant in due:
            window = self.active.pop(grant)
            commands.append(
                expiry_command(
                    window.experience_id, window.consumer_id, grant, expires_at, expires_at
                )
            )
        return commands


def overrun(times: Sequence[datetime], opened_by: Sequence[Sequence[datetime]]) -> int | None:
    """Commands decided together in one batch, each at its time, and the
    expiries each opened: the index of the first command that came at or
    after an expiry an earlier one of the batch opened, which must be
    decided after that expiry, in a later batch; None: the batch stands."""
    earliest: datetime | None = None
    for n, at in enumerate(times):
        if earliest is not None and at >= earliest:
            return n
        for expires_at in opened_by[n]:
            if earliest is None or expires_at < earliest:
                earliest = expires_at
    return None
