"""The recorded outcome: the events topic, in commit order (merged by the
`outbox-seq` header), measured as a simulation's events are.

Read from the events topic rather than the live tables: the tables hold
the state now, while the peak of units held and the time the stock ran out
are moments in the drop's history, which only the events keep (and
retention prunes ended holds from the tables, never from the topic). Only
the events of the commands the simulation read count, so a range that
ends before the log does compares the same commands on both sides."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from pydantic import ValidationError

from worker.config import Settings
from worker.domain.events import Event, event_decoder
from worker.domain.outcome import Outcome, OutcomeTally
from worker.replay.progress import Progress
from worker.replay.source import Record, TopicLog, outbox_seq
from worker.simulate.runner import Plan, SimulationError

decode = event_decoder()


async def recorded_outcome(
    settings: Settings, plan: Plan, commands: set[UUID], interactive: bool | None
) -> dict[str, Outcome]:
    experiences = None if plan.experiences is None else set(plan.experiences)
    tally = OutcomeTally(plan.counted, experiences)
    async with TopicLog(settings, settings.events_topic) as source:
        await source.open()
        with Progress("recorded", source.total, interactive=interactive) as bar:
            async for records in source.merged(outbox_seq):
                tally.feed(e for e in _decoded(records) if e.command_id in commands)
                bar.advance(len(records))
    return tally.outcomes


def _decoded(records: Sequence[Record]) -> list[Event]:
    events = []
    for r in records:
        try:
            events.append(decode(r.value or b""))
        except (ValidationError, ValueError) as exc:
            # Skipping a fact would measure a drop that did not happen.
            where = f"{r.topic} {r.partition}:{r.offset}"
            raise SimulationError(f"event at {where} cannot be decoded: {exc}") from exc
    return events
