"""Curve: apply's transitions/s with admissions of earlier drops already in
the tables (0, 1M, 5M). Each point is a fresh database and topics: the
service applies the apply stage's stock and a template drop of its own
(carts and admissions in one experience, untimed), the tables are filled
with copies of that drop (bench/prefill.py, timed on its own), then ONE
consumer process drains the apply stage's timed records from a cold start.
The service alone: the naive code's own tables would need the same
history to compare with, and the point is how the service's cost grows."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from bench.checks import check, check_side
from bench.core import Context, Figure, StageResult, fresh_namespace
from bench.curves import Column, Curve
from bench.prefill import Prefill, prefill
from bench.procs import take_memory
from bench.stages import apply
from bench.stages.drain import service_drain
from bench.workload import Builder, Record

NAME = "curve_prefill"
TITLE = "Curve: apply with admissions of earlier drops already in the tables"


def _template(products: list[str], consumers: int) -> tuple[str, list[Record], dict[str, int]]:
    """A drop of `consumers` carts and admissions, one unit of one product
    each: its experience, its commands, the units it holds per product."""
    b = Builder()
    experience = f"tmpl-{b.tag}"
    now = datetime.now(UTC)
    records: list[Record] = []
    held: dict[str, int] = {}
    for n in range(consumers):
        product = products[n % len(products)]
        held[product] = held.get(product, 0) + 1
        records.append(b.cart(experience, f"t{n}", [(product, 1)], now))
    records += [b.admit(experience, f"t{n}", f"grant-{b.tag}-{n}", now) for n in range(consumers)]
    return experience, records, held


async def _point(ctx: Context, result: StageResult, target: int) -> dict[str, Any]:
    s = ctx.sizes
    setup, timed, held = apply.workload(
        replace(ctx, sizes=replace(s, apply_consumers=s.curve_apply_consumers))
    )
    experience, template, template_held = _template(sorted(held), s.curve_prefill_template)
    filled = Prefill(0)
    started = time.monotonic()
    async with fresh_namespace(ctx) as ns:

        async def fill() -> None:
            nonlocal filled
            filled = await prefill(
                ns.database_url,
                experience,
                [r.command_id for r in template],
                target // s.curve_prefill_template,
            )

        side = await service_drain(ctx, ns, NAME, [setup, template], timed, 1800, fill)
        want = {p: held.get(p, 0) + template_held.get(p, 0) for p in set(held) | set(template_held)}
        run = StageResult(NAME, TITLE)
        await check_side(run, "service", ns.database_url, "stock", want)
    for c in run.checks:
        check(result, f"{target:,} existing: {c.name}", c.passed, c.detail)
    memory = [m for m in take_memory() if m["name"].endswith("-service")]
    return {
        "x": target,
        "existing": s.curve_prefill_template + filled.admissions,
        "rate": side.rate,
        "steady": side.steady_rate,
        "prefill_s": filled.insert_seconds + filled.index_seconds,
        "vacuum_s": filled.vacuum_seconds,
        "consumer_peak_mib": memory[-1]["peak_rss_mib"] if memory else None,
        "prefill": filled.as_json(),
        "commands": len(timed),
        "batches": side.extra.get("batches"),
        "seconds": round(time.monotonic() - started, 1),
        "note": "",
    }


async def run(ctx: Context, result: StageResult) -> None:
    s = ctx.sizes
    curve = Curve(
        name="apply_by_existing",
        title=f"apply with earlier drops in the tables ({2 * s.curve_apply_consumers:,} commands)",
        x_label="existing admissions (asked)",
        x_unit="",
        columns=[
            Column("existing", "admissions in the tables"),
            Column("rate", "transitions/s", "/s"),
            Column("steady", "steady", "/s"),
            Column("vs_empty", "vs the first point", "x"),
            Column("prefill_s", "prefill (rows + indexes)", "s"),
            Column("vacuum_s", "vacuum analyze", "s"),
            Column("consumer_peak_mib", "consumer peak RSS", "MiB"),
        ],
        note=f"Copies of a {s.curve_prefill_template:,}-admission template drop, ended "
        "(1 in 5 converted), with their carts, cart versions, holds and inbox rows; "
        "the service alone.",
    )
    try:
        for target in s.curve_prefill_admissions:
            point = await _point(ctx, result, target)
            first = curve.points[0]["rate"] if curve.points else point["rate"]
            point["vs_empty"] = point["rate"] / first if point["rate"] and first else None
            curve.points.append(point)
            print(
                f"   {target:,} existing: prefill {point['prefill_s']:.0f} s, "
                f"vacuum {point['vacuum_s']:.0f} s, apply {point['rate'] or 0:,.0f}/s",
                flush=True,
            )
    finally:
        result.details["curves"] = [curve.as_json()]
    result.figures += _figures(curve)


def _figures(curve: Curve) -> list[Figure]:
    if not curve.points:
        return []
    first, last = curve.points[0], curve.points[-1]
    return [
        Figure(
            f"transitions/s at {last['existing']:,} existing",
            last["rate"],
            "/s",
            baseline=first["rate"],
            baseline_name=f"{first['existing']:,} existing",
            ratio=last["vs_empty"],
            note="one run a point",
        ),
        Figure(
            f"prefill of {last['existing']:,} admissions",
            last["prefill_s"] + last["vacuum_s"],
            "s",
            note=f"insert {last['prefill_s']:.0f} s + vacuum analyze {last['vacuum_s']:.0f} s; "
            f"rows {sum(last['prefill']['rows'].values()):,}",
        ),
    ]
