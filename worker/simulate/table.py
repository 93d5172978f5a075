"""A comparison as a merchant reads it: per experience, one column for the
recorded outcome and one per scenario, one row per measure; or the same as
JSON."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from worker.domain.outcome import Outcome
from worker.simulate.compare import Comparison

RECORDED = "recorded"


def _when(at: datetime | None) -> str:
    return "never" if at is None else at.isoformat(timespec="milliseconds")


def _after(span: timedelta | None) -> str:
    return "never" if span is None else f"+{span.total_seconds():,.3f} s"


def _refusals(o: Outcome) -> str:
    reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(o.refusals.items()))
    return f"{o.refused:,}" + (f" ({reasons})" if reasons else "")


ROWS: list[tuple[str, Callable[[Outcome], str]]] = [
    ("units sold", lambda o: f"{o.units_sold:,}"),
    ("units held at peak", lambda o: f"{o.peak_units_held:,}"),
    ("holds expired unused", lambda o: f"{o.holds_expired_unused:,}"),
    ("refusals", _refusals),
    ("units backfilled", lambda o: f"{o.units_backfilled:,}"),
    ("stock first exhausted, after first admission", lambda o: _after(o.sold_out_after)),
    ("stock first exhausted at", lambda o: _when(o.sold_out_at)),
]


def columns(comparison: Comparison, experience: str) -> list[tuple[str, Outcome]]:
    sides = [(RECORDED, comparison.recorded.get(experience, Outcome()))]
    return sides + [
        (r.scenario.label, r.outcomes.get(experience, Outcome())) for r in comparison.runs
    ]


def render(comparison: Comparison) -> Iterable[str]:
    yield from _summary(comparison)
    for experience in comparison.experiences():
        yield ""
        yield f"experience {experience}"
        sides = columns(comparison, experience)
        cells = [[name] + [show(o) for _, o in sides] for name, show in ROWS]
        head = ["", *(label for label, _ in sides)]
        widths = [max(len(row[i]) for row in [head, *cells]) for i in range(len(head))]
        for row in [head, *cells]:
            yield "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
    if comparison.unpublished:
        yield ""
        yield (
            f"warning: {comparison.unpublished} committed event(s) not yet on the events topic; "
            "the recorded outcome misses them until the relay catches up"
        )


def _summary(comparison: Comparison) -> Iterable[str]:
    read = comparison.read
    skipped = [
        f"{read.after_range:,} received after --to" if read.after_range else "",
        f"{read.undecodable:,} undecodable" if read.undecodable else "",
    ]
    yield ", ".join([f"simulate: {read.records:,} commands read", *filter(None, skipped)])
    for run in comparison.runs:
        yield (
            f"  {run.scenario.label}: {run.decided:,} decided, {run.expiries:,} expiries "
            f"of its own, {run.recorded_expiries:,} recorded kept, "
            f"{run.dropped_expiries:,} dropped, {run.parked:,} parked"
        )


def outcome_json(o: Outcome) -> dict[str, Any]:
    after = o.sold_out_after
    return {
        "unitsSold": o.units_sold,
        "peakUnitsHeld": o.peak_units_held,
        "holdsExpiredUnused": o.holds_expired_unused,
        "refusals": o.refused,
        "unitsBackfilled": o.units_backfilled,
        "refusalsByReason": dict(sorted(o.refusals.items())),
        "firstAdmissionAt": None if o.first_admission is None else o.first_admission.isoformat(),
        "stockFirstExhaustedAt": None if o.sold_out_at is None else o.sold_out_at.isoformat(),
        "stockFirstExhaustedAfterSeconds": None if after is None else after.total_seconds(),
    }


def as_json(comparison: Comparison) -> dict[str, Any]:
    plan, read = comparison.plan, comparison.read
    return {
        "from": None if plan.counted.since is None else plan.counted.since.isoformat(),
        "to": None if plan.counted.until is None else plan.counted.until.isoformat(),
        "horizon": plan.horizon.isoformat(),
        "commandsRead": read.records,
        "commandsAfterRange": read.after_range,
        "commandsUndecodable": read.undecodable,
        "unpublishedEvents": comparison.unpublished,
        "scenarios": [
            {
                "label": r.scenario.label,
                "overrides": {
                    k: str(v) if not isinstance(v, bool | int) else v
                    for k, v in r.scenario.update.items()
                },
                "decided": r.decided,
                "expiries": r.expiries,
                "recordedExpiriesKept": r.recorded_expiries,
                "recordedExpiriesDropped": r.dropped_expiries,
                "duplicates": r.duplicates,
                "parked": r.parked,
            }
            for r in comparison.runs
        ],
        "experiences": [
            {
                "experienceId": e,
                "outcomes": [
                    {"setting": label, **outcome_json(o)} for label, o in columns(comparison, e)
                ],
            }
            for e in comparison.experiences()
        ],
    }
