"""When admissions expire: the scheduler's expiry command, and the timeline
a simulation keeps of its own admissions' windows.

The scheduler publishes an expiry for every active admission whose
`expiresAt` has passed. A simulation decides a recorded log again under
other settings, so its admissions end at other times than the recorded
ones: it keeps an `ExpiryTimeline` of the admissions its own decisions left
active, fed by their events. Each expiry is decided where the recorded
scheduler's copy of it is in the log (the same admission and expiresAt,
so the same id), or, without one, at its expiresAt; `overrun` says where a
batch must be cut so that an expiry goes between two commands. Pure: the
caller applies the commands.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from worker.domain import ids
from worker.domain.commands import CommandBase, CommandSource, EndAdmission
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
        command_id=expiry_id(grant_digest, expires_at),
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


def expiry_id(grant_digest: str, expires_at: datetime) -> UUID:
    """The command id of the expiry of one admission at one expiresAt."""
    return ids.command_id("scheduler", ids.expiry_source_id(grant_digest, expires_at))


def is_scheduled_expiry(command: CommandBase) -> bool:
    return isinstance(command, EndAdmission) and command.source.kind == "scheduler"


@dataclass(frozen=True, slots=True)
class Window:
    """An active admission, when its window ends, and its expiry's id."""

    experience_id: str
    consumer_id: str
    expires_at: datetime
    expiry_id: UUID


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
    find them in its database, and when each expires.

    `recorded`: the ids of the expiries the recorded scheduler published,
    still ahead in the log. An expiry of the simulation with one of those
    ids (the same admission, the same expiresAt) waits for its recorded
    copy and is decided where the log has it, with the lag the scheduler
    had; every other one is due at its expiresAt."""

    def __init__(self, recorded: Iterable[UUID] = ()) -> None:
        self.active: dict[str, Window] = {}
        self.ahead = set(recorded)
        self.scheduled: set[UUID] = set()

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
                self._open(event.grant_digest, event.experience_id, event.consumer_id, expires_at)
        elif isinstance(event, ReservationExtended) and event.grant_digest in self.active:
            # An extension of an ended admission moves nothing the scheduler
            # reads; a reopening that follows says so itself.
            self._open(event.grant_digest, event.experience_id, event.consumer_id, event.expires_at)

    def _open(self, grant: str, experience_id: str, consumer_id: str, expires_at: datetime) -> None:
        window = Window(experience_id, consumer_id, expires_at, expiry_id(grant, expires_at))
        self.active[grant] = window
        self.scheduled.add(window.expiry_id)

    def _on_time(self) -> list[tuple[datetime, str]]:
        """The active admissions whose expiry no recorded copy ahead decides."""
        return [(w.expires_at, g) for g, w in self.active.items() if w.expiry_id not in self.ahead]

    def next_due(self) -> datetime | None:
        return min((at for at, _ in self._on_time()), default=None)

    def due(self, until: datetime) -> list[EndAdmission]:
        """The expiries due at or before `until`, taken off the timeline, in
        the order of their expiresAt, then grant digest (deterministic)."""
        due = sorted((at, g) for at, g in self._on_time() if at <= until)
        commands = []
        for expires_at, grant in due:
            w = self.active.pop(grant)
            commands.append(
                expiry_command(w.experience_id, w.consumer_id, grant, expires_at, expires_at)
            )
        return commands

    def claims(self, command: EndAdmission) -> bool:
        """A recorded expiry is one of the simulation's own: an admission
        the simulation had active with that expiresAt."""
        return command.command_id in self.scheduled

    def meet(self, command: EndAdmission) -> bool:
        """A recorded expiry met in the log: True when the simulation decides
        it here (it claims it), False when it is dropped."""
        self.ahead.discard(command.command_id)
        window = self.active.get(command.grant_digest or "")
        if window is not None and window.expiry_id == command.command_id:
            del self.active[command.grant_digest or ""]
        return self.claims(command)


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
