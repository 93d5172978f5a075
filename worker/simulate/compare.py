"""A comparison: each scenario decided in a scratch database of its own on
the live server (created and dropped here; the live database is only
read), then the recorded outcome measured from the events topic."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from worker.adapters import store
from worker.config import Settings
from worker.domain.outcome import Outcome
from worker.domain.scenario import Scenario
from worker.replay.progress import Progress
from worker.replay.scratch import scratch_database
from worker.simulate.log import CommandLog, Read
from worker.simulate.recorded import recorded_outcome
from worker.simulate.runner import Plan, Run, Simulation


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


async def compare(
    settings: Settings, plan: Plan, scenarios: list[Scenario], interactive: bool | None = None
) -> Comparison:
    read = Read()
    commands: set[UUID] = set()
    runs = []
    for n, scenario in enumerate(scenarios):
        # The first pass notes the commands read, for the recorded side.
        run, read = await _simulate(
            settings, plan, scenario, commands if n == 0 else None, interactive
        )
        runs.append(run)
    unpublished = await _unpublished(settings.database_url)
    recorded = await recorded_outcome(settings, plan, commands, interactive)
    return Comparison(plan, recorded, runs, read, unpublished)


async def _simulate(
    settings: Settings,
    plan: Plan,
    scenario: Scenario,
    commands: set[UUID] | None,
    interactive: bool | None,
) -> tuple[Run, Read]:
    async with scratch_database(settings.database_url, "simulate") as scratch:
        conn: asyncpg.Connection = await asyncpg.connect(scratch)
        try:
            simulation = Simulation(conn, plan, scenario)
            async with CommandLog(settings, plan.until) as log:
                label = f"simulate {scenario.label}"
                with Progress(label, log.total, "commands", interactive=interactive) as bar:
                    async for n, stamped in log.chunks():
                        if commands is not None:
                            commands.update(s.command.command_id for s in stamped)
                        await simulation.decide(stamped)
                        bar.advance(n)
            return await simulation.finish(), log.read
        finally:
            await conn.close()


async def _unpublished(dsn: str) -> int:
    live = await asyncpg.connect(dsn)
    try:
        return int(await store.outbox_backlog(live))
    finally:
        await live.close()
