"""A drop's outcome, measured from its events: units sold, units held at
the peak, holds that expired unused, refusals, units backfilled, and when
the stock first ran out. The same measure reads a recorded events topic and a simulation's
events, so a difference between the two is a difference in decisions,
never in how they were counted. Pure: the caller feeds the events in the
order they were decided (commit order)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from worker.domain.backfill import BACKFILL_REASON
from worker.domain.events import (
    AdmissionRecorded,
    EventBase,
    ExperienceEvent,
    ReservationCreated,
    ReservationEnded,
    ReservationRejected,
)
from worker.domain.model import ReservationStatus

# Refusals that mean the experience's stock (or its pool) had no unit left.
OUT_OF_UNITS = frozenset({"INSUFFICIENT_STOCK", "POOL_EMPTY"})


@dataclass(frozen=True)
class Range:
    """The times counted (each bound included; None: open)."""

    since: datetime | None = None
    until: datetime | None = None

    def __contains__(self, at: datetime) -> bool:
        return (self.since is None or at >= self.since) and (self.until is None or at <= self.until)


@dataclass
class Outcome:
    """One experience's drop, as counted over a range of time."""

    units_sold: int = 0
    units_held: int = 0  # held now (after the last event fed)
    units_backfilled: int = 0  # held for a refused line once units were freed
    peak_units_held: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    first_admission: datetime | None = None
    sold_out_at: datetime | None = None
    expired_unused: set[UUID] = field(default_factory=set)

    @property
    def holds_expired_unused(self) -> int:
        return len(self.expired_unused)

    @property
    def refused(self) -> int:
        return sum(self.refusals.values())

    @property
    def sold_out_after(self) -> timedelta | None:
        """From the first admission to the first refusal for want of units."""
        if self.sold_out_at is None or self.first_admission is None:
            return None
        return self.sold_out_at - self.first_admission


class OutcomeTally:
    """Outcomes per experience, fed one event at a time."""

    def __init__(self, counted: Range | None = None, experiences: set[str] | None = None) -> None:
        self.counted = counted or Range()
        self.experiences = experiences
        self.outcomes: dict[str, Outcome] = {}

    def feed(self, events: Iterable[EventBase]) -> None:
        for event in events:
            if not isinstance(event, ExperienceEvent):
                continue  # stock levels belong to no experience
            if self.experiences is not None and event.experience_id not in self.experiences:
                continue
            outcome = self.outcomes.setdefault(event.experience_id, Outcome())
            _count(outcome, event, event.occurred_at in self.counted)


def _count(outcome: Outcome, event: ExperienceEvent, counted: bool) -> None:
    """Units held move with every event; the rest counts only in range."""
    if isinstance(event, ReservationCreated):
        outcome.units_held += event.quantity
        if counted and event.reason == BACKFILL_REASON:
            outcome.units_backfilled += event.quantity
        if event.replaces is not None:
            outcome.expired_unused.discard(event.replaces)  # taken anew: used after all
    elif isinstance(event, ReservationEnded):
        _ended(outcome, event, counted)
    elif counted and isinstance(event, ReservationRejected):
        outcome.refusals[event.reason] += 1
        if event.reason in OUT_OF_UNITS and outcome.sold_out_at is None:
            outcome.sold_out_at = event.occurred_at
    elif counted and isinstance(event, AdmissionRecorded):
        first = outcome.first_admission
        outcome.first_admission = (
            event.admitted_at if first is None else min(first, event.admitted_at)
        )
    if counted:
        outcome.peak_units_held = max(outcome.peak_units_held, outcome.units_held)


def _ended(outcome: Outcome, event: ReservationEnded, counted: bool) -> None:
    """A hold ended, was sold late, or its sale was taken back."""
    status = ReservationStatus(event.type.removeprefix("reservation."))
    before = event.previous_status
    if before is ReservationStatus.ACTIVE:
        outcome.units_held -= event.quantity
    if not counted:
        return
    if status is ReservationStatus.CONVERTED:
        outcome.units_sold += event.quantity
        outcome.expired_unused.discard(event.reservation_id)
    if before is ReservationStatus.CONVERTED:
        outcome.units_sold -= event.quantity
    if status is ReservationStatus.EXPIRED and before is ReservationStatus.ACTIVE:
        outcome.expired_unused.add(event.reservation_id)
