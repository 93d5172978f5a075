"""One scenario: the recorded commands decided again by the engine, in a
scratch database, under the scenario's settings, with the scenario's own
expiries.

Time. The recorded log holds the expiries the scheduler published for the
recorded admissions' windows; under another window they would have come
at other times, or not at all. The simulation keeps the timeline of its
own admissions (worker.domain.expiry). An expiry of its own that the
recorded scheduler also published (the same admission and expiresAt: the
same command id) is decided where the log has it, so the scheduler's lag
is what it was; the other recorded expiries are dropped. Every other
expiry of its own is due at its expiresAt: before a recorded command
received at `t`, each one due at or before `t` is decided, in expiresAt
then grant order, with the id the scheduler would give it. Commands are
decided in batches, as the consumer decides them; a batch in which a
command comes at or after an expiry that an earlier command of the same
batch opened is rolled back and decided again up to that command, so the
expiry goes between them. At the end, the expiries due by the end of the
range are decided too. Fanfare's own expiries (`admission_expired`) are
facts of the drop and stay.

Settings. Every configuration of a simulated experience in the log gets
the overrides; an experience with none before its first command gets a
configuration first: the consumer's defaults, overridden."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from worker.adapters import kafka, postgres, queries
from worker.domain.commands import Command, ConfigureExperience, EndAdmission, ExperienceCommand
from worker.domain.expiry import (
    ExpiryTimeline,
    expiry_id,
    is_scheduled_expiry,
    opened,
    overrun,
)
from worker.domain.model import ExperienceSettings
from worker.domain.outcome import Outcome, OutcomeTally, Range
from worker.domain.scenario import Scenario, configuration
from worker.engine import Applied, Coordinates, apply_isolating, not_yet_applied
from worker.simulate.log import Stamped

# Commands decided per transaction, as a consumer batch at most.
BATCH = 500
TRANSIENT = (*postgres.RETRYABLE, *kafka.UNREACHABLE)
SIMULATED = Coordinates("simulated", 0, 0)


class SimulationError(RuntimeError):
    """A simulation that cannot go on or would mislead; the message says why."""


@dataclass(frozen=True)
class Plan:
    """What every scenario of one comparison shares."""

    experiences: frozenset[str] | None  # None: every experience
    counted: Range
    until: datetime | None  # receipt time of the last command decided
    horizon: datetime  # the simulated clock's end: expiries due by then apply
    defaults: ExperienceSettings

    def simulated(self, experience_id: str) -> bool:
        return self.experiences is None or experience_id in self.experiences


@dataclass
class Run:
    """One scenario's outcome and what deciding it took."""

    scenario: Scenario
    outcomes: dict[str, Outcome]
    decided: int = 0
    duplicates: int = 0
    parked: int = 0
    expiries: int = 0  # the simulation's own, due at their expiresAt
    recorded_expiries: int = 0  # the scheduler's, decided where the log has them
    dropped_expiries: int = 0  # the scheduler's, for windows the simulation did not have
    batches_split: int = 0


class _Overrun(Exception):
    def __init__(self, command_id: UUID) -> None:
        self.command_id = command_id


class Simulation:
    def __init__(
        self,
        conn: asyncpg.Connection,
        plan: Plan,
        scenario: Scenario,
        recorded_expiries: Iterable[UUID] = (),
    ) -> None:
        self.conn = conn
        self.plan = plan
        self.scenario = scenario
        self.timeline = ExpiryTimeline(recorded_expiries)
        self.tally = OutcomeTally(
            plan.counted, None if plan.experiences is None else set(plan.experiences)
        )
        self.run = Run(scenario, self.tally.outcomes)
        self.configured: set[str] = set()

    async def decide(self, recorded: list[Stamped]) -> None:
        await self._drain(deque(self.prepare(recorded)))

    async def finish(self) -> Run:
        """The expiries due by the end of the range; then a check that the
        timeline left none the scheduler would find."""
        await self._drain(deque(), self.plan.horizon)
        # Those whose recorded expiry came after the range stay active, as
        # they were at its end.
        waiting = self.timeline.ahead
        due = await queries.due_expiries(self.conn, self.plan.horizon, len(waiting) + 1)
        for left in due:
            if expiry_id(left.grant_digest, left.expires_at) not in waiting:
                raise SimulationError(
                    f"admission {left.grant_digest} is still active past its expiry "
                    f"{left.expires_at.isoformat()}: the simulated timeline missed it"
                )
        return self.run

    def prepare(self, recorded: list[Stamped]) -> list[Stamped]:
        """The recorded commands as the scenario decides them."""
        out: list[Stamped] = []
        for s in recorded:
            command = s.command
            if isinstance(command, ExperienceCommand) and self.plan.simulated(
                command.experience_id
            ):
                out.extend(self._configured(s))
            else:
                out.append(s)
        return out

    def _configured(self, s: Stamped) -> Iterable[Stamped]:
        """A command of a simulated experience, its settings overridden, after
        the configuration it had by default if it has had none."""
        command = s.command
        assert isinstance(command, ExperienceCommand)
        first = command.experience_id not in self.configured
        self.configured.add(command.experience_id)
        if isinstance(command, ConfigureExperience):
            return [Stamped(self.scenario.apply(command), s.at, s.where)]
        if not first or not self.scenario.update:
            return [s]
        at = min(s.at, command.occurred_at)
        settings = self.scenario.apply(self.plan.defaults)
        setup = configuration(command.experience_id, settings, at, self.scenario.label)
        return [Stamped(setup, at, SIMULATED), s]

    async def _drain(self, rest: deque[Stamped], end: datetime | None = None) -> None:
        """Decide `rest` in order, each expiry at its time; then, given an
        `end`, the expiries due by then."""
        while rest or end is not None:
            until = rest[0].at if rest else end
            assert until is not None
            due = self.timeline.due(until)
            self.run.expiries += len(due)
            rest.extendleft(reversed([Stamped(c, c.received_at, SIMULATED) for c in due]))
            if not rest:
                return
            take = self._take(rest)
            if take:
                kept = await self._decide(take)
                rest.extendleft(reversed(take[kept:]))

    def _take(self, rest: deque[Stamped]) -> list[Stamped]:
        """The next batch: up to the next expiry due, and up to a recorded
        expiry the timeline does not claim yet (an admission of this batch
        may open it); such a one at the head is dropped."""
        next_due = self.timeline.next_due()
        take: list[Stamped] = []
        while rest and len(take) < BATCH and (next_due is None or rest[0].at < next_due):
            command = rest[0].command
            if isinstance(command, EndAdmission) and is_scheduled_expiry(command):
                if not self.timeline.claims(command) and take:
                    break
                if not self.timeline.meet(command):
                    self.run.dropped_expiries += 1
                    rest.popleft()
                    continue
            take.append(rest.popleft())
        return take

    async def _decide(self, take: list[Stamped]) -> int:
        """Decide `take`, or the part of it before an expiry it opened;
        returns how many of it were decided."""
        try:
            async with self.conn.transaction():
                decided = await self._apply(take)
        except _Overrun as cut:
            self.run.batches_split += 1
            kept = next(n for n, s in enumerate(take) if s.command.command_id == cut.command_id)
            return await self._decide(take[:kept])
        for _, applied in decided:
            self.timeline.observe(applied.events)
            self.tally.feed(applied.events)
        self.run.decided += len(decided)
        self.run.recorded_expiries += sum(
            s.where is not SIMULATED and is_scheduled_expiry(s.command) for s in take
        )
        return len(take)

    async def _apply(self, take: list[Stamped]) -> list[tuple[Command, Applied]]:
        pairs = [(s.command, s.where) for s in take]
        todo = await not_yet_applied(self.conn, pairs)
        decided, refused = await apply_isolating(self.conn, todo, self.plan.defaults, TRANSIENT)
        at = {s.command.command_id: s.at for s in take}
        cut = overrun(
            [at[c.command_id] for c, _ in decided],
            [[d for e in a.events if (d := opened(e)) is not None] for _, a in decided],
        )
        if cut is not None:
            raise _Overrun(decided[cut][0].command_id)
        self.run.duplicates += len(pairs) - len(todo)
        self.run.parked += len(refused)
        return decided
