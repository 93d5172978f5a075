"""Curve: apply and hot-SKU transitions/s against the consumer's batch size
(`CONSUMER_BATCH_MAX`, the `consumer_batch_max` setting). Each point is a
whole apply or hot-SKU stage run (fresh database and topics, the naive code
drained on the same records, the same checks, the PostgreSQL ceiling) at
the curve's smaller workload, with the batch size set for every consumer
process of that run. The naive code has no batch: its rate at each point
is the point's baseline, measured beside it."""

from __future__ import annotations

import time
from dataclasses import replace
from types import ModuleType
from typing import Any

from bench.checks import check
from bench.core import Context, Figure, StageResult
from bench.curves import Column, Curve
from bench.procs import take_memory
from bench.stages import apply, hot_sku

NAME = "curve_batch"
TITLE = "Curve: apply and hot SKU against the consumer's batch size"
COLUMNS = [
    Column("rate", "transitions/s", "/s"),
    Column("steady", "steady", "/s"),
    Column("naive", "naive", "/s"),
    Column("ratio", "ratio to naive", "x"),
    Column("ceiling_share", "share of PG ceiling", "%"),
    Column("consumer_peak_mib", "consumer peak RSS", "MiB"),
]


def point_context(ctx: Context, batch: int) -> Context:
    """The run's context with the batch size set and the curve's sizes."""
    return replace(
        ctx,
        base=ctx.base.model_copy(update={"consumer_batch_max": batch}),
        sizes=replace(
            ctx.sizes,
            apply_consumers=ctx.sizes.curve_apply_consumers,
            hot_admissions=ctx.sizes.curve_hot_admissions,
        ),
        measured={},
        profile=None,
    )


def _point(batch: int, run: StageResult, memory: list[dict[str, Any]]) -> dict[str, Any]:
    headline = run.figures[0] if run.figures else None
    service = run.details.get("service", {})
    timed = [m for m in memory if m["name"].endswith("-service")]
    return {
        "x": batch,
        "rate": headline.value if headline else None,
        "steady": service.get("steady_rate"),
        "naive": headline.baseline if headline else None,
        "ratio": headline.ratio if headline else None,
        "ceiling_share": headline.ceiling_share if headline else None,
        "consumer_peak_mib": timed[-1]["peak_rss_mib"] if timed else None,
        "commands": run.details.get("commands_timed") or run.details.get("admissions"),
        "seconds": run.seconds,
        "note": "" if run.status == "ok" else f"{run.status}: {(run.reason or '')[:80]}",
    }


async def _sweep(ctx: Context, result: StageResult, stage: ModuleType, curve: Curve) -> None:
    for batch in ctx.sizes.curve_batch_sizes:
        run = StageResult(stage.NAME, stage.TITLE)
        started = time.monotonic()
        try:
            await stage.run(point_context(ctx, batch), run)
        except Exception as exc:
            run.status, run.reason = "failed", f"{type(exc).__name__}: {exc}"
        run.seconds = round(time.monotonic() - started, 1)
        point = _point(batch, run, take_memory())
        curve.points.append(point)
        print(
            f"   {stage.NAME} at batch {batch}: {point['rate'] or 0:,.0f}/s, "
            f"naive {point['naive'] or 0:,.0f}/s, {run.seconds:.0f} s",
            flush=True,
        )
        for c in run.checks:
            check(result, f"{stage.NAME} at batch {batch}: {c.name}", c.passed, c.detail)
        if run.status == "failed" and not run.checks:
            check(result, f"{stage.NAME} at batch {batch}: ran", False, run.reason or "")


async def run(ctx: Context, result: StageResult) -> None:
    made: list[Curve] = []
    try:
        for stage, size in (
            (apply, f"{2 * ctx.sizes.curve_apply_consumers:,} commands"),
            (hot_sku, f"{ctx.sizes.curve_hot_admissions:,} admissions, 1,000 units"),
        ):
            curve = Curve(
                name=f"{stage.NAME}_by_batch",
                title=f"{stage.NAME} against the consumer's batch size ({size})",
                x_label="CONSUMER_BATCH_MAX",
                x_unit="",
                columns=COLUMNS,
                note="Each point with the naive code drained beside it on the same records.",
            )
            made.append(curve)
            await _sweep(ctx, result, stage, curve)
    finally:
        result.details["curves"] = [c.as_json() for c in made]
    result.figures += summary_figures(made)


def summary_figures(curves: list[Curve]) -> list[Figure]:
    """Per curve, its best point, with that point's naive baseline."""
    figures = []
    for curve in curves:
        measured = [p for p in curve.points if p["rate"]]
        if not measured:
            continue
        best = max(measured, key=lambda p: p["rate"])
        spread = ", ".join(f"{p['x']}: {p['rate']:,.0f}/s" for p in measured)
        figures.append(
            Figure(
                f"{curve.name.split('_by_')[0]}: best transitions/s",
                best["rate"],
                "/s",
                baseline=best["naive"],
                baseline_name="naive per-event",
                ratio=best["ratio"],
                note=f"at batch size {best['x']} (of {spread})",
            )
        )
    return figures
