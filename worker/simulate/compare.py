"""A comparison: each scenario decided in a scratch database of its own on
the live server (created and dropped here; the live database is only
read), then the recorded outcome measured from the events topic."""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

from worker.adapters import store
from worker.config import Settings
from worker.domain.commands import ExperienceCommand
from worker.domain.expiry import is_scheduled_expiry
from worker.domain.outcome import Outcome
from worker.domain.scenario import Scenario
from worker.replay.progress import Progress
from worker.replay.scratch import scratch_database
from worker.simulate.log import CommandLog, Read
from worker.simulate.recorded import recorded_outcome
from worker.simulate.runner import Plan, Run, Simulation, SimulationError


@dataclass
class Comparison:
    plan: Plan
    recorded: dict[str, Outcome]
    runs: list[Run]
    read: Read
    unpublished: int  # committed live, not yet on the events topic

    def experiences(self) -> list[str]:
        found = set(self.recorded)
        for run in self.runs:
            found |= set(run.outcomes)
        return sorted(found)


@dataclass
class Scan:
    """A first pass over the log: the commands in range, for the recorded
    side, the experiences they name, and the expiries the recorded
    scheduler published (after the range too)."""

    commands: set[UUID] = field(default_factory=set)
    expiries: set[UUID] = field(default_factory=set)
    experiences: set[str] = field(default_factory=set)
    read: Read = field(default_factory=Read)
    ends: dict[int, int] = field(default_factory=dict)  # where each partition was read to


async def compare(
    settings: Settings, plan: Plan, scenarios: list[Scenario], interactive: bool | None = None
) -> Comparison:
    scanned = await scan(settings, plan, interactive)
    missing = sorted((plan.experiences or set()) - scanned.experiences)
    if missing:
        # Most likely a mistyped id: say so before deciding anything.
        raise SimulationError(f"no command of experience {', '.join(missing)} in the log")
    runs = [await _simulate(settings, plan, s, scanned, interactive) for s in scenarios]
    unpublished = await _unpublished(settings.database_url)
    recorded = await recorded_outcome(settings, plan, scanned.commands, interactive)
    return Comparison(plan, recorded, runs, scanned.read, unpublished)


async def scan(settings: Settings, plan: Plan, interactive: bool | None) -> Scan:
    found = Scan()
    async with CommandLog(settings, plan.until) as log:
        with Progress("scan", log.total, "commands", interactive=interactive) as bar:
            async for n, stamped in log.chunks():
                for s in stamped:
                    found.commands.add(s.command.command_id)
                    if isinstance(s.command, ExperienceCommand):
                        found.experiences.add(s.command.experience_id)
                    if is_scheduled_expiry(s.command):
                        found.expiries.add(s.command.command_id)
                bar.advance(n)
        found.read, found.ends = log.read, log.ends_read
    found.expiries |= log.read.expiries_after
    return found


async def _simulate(
    settings: Settings,
    plan: Plan,
    scenario: Scenario,
    scanned: Scan,
    interactive: bool | None,
) -> Run:
    async with scratch_database(settings.database_url, "simulate") as scratch:
        conn: asyncpg.Connection = await asyncpg.connect(scratch)
        try:
            simulation = Simulation(conn, plan, scenario, scanned.expiries)
            async with CommandLog(settings, plan.until, scanned.ends) as log:
                label = f"simulate {scenario.label}"
                with Progress(label, log.total, "commands", interactive=interactive) as bar:
                    async for n, stamped in log.chunks():
                        await simulation.decide(stamped)
                        bar.advance(n)
            return await simulation.finish()
        finally:
            await conn.close()


async def _unpublished(dsn: str) -> int:
    live = await asyncpg.connect(dsn)
    try:
        return int(await store.outbox_backlog(live))
    finally:
        await live.close()
