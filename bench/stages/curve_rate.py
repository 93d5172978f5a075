"""Curve: end-to-end latency (webhook 2xx to hold committed, p50 and p99)
against the offered rate, each point a whole e2e run (fresh database and
topics, one process per role, the e2e stage's clocks and checks) for a
shorter time than the headline's. The sweep goes up the rates and stops
after the first point where the service saturates: the load generator
achieved under 90% of the asked rate, webhooks were refused or timed out,
or the p99 went past ten times the lowest rate's (a queue built up)."""

from __future__ import annotations

import time
from typing import Any

from bench.checks import check
from bench.core import Context, Figure, StageResult
from bench.curves import Column, Curve
from bench.procs import take_memory
from bench.stages.e2e import Load, measure

NAME = "curve_rate"
TITLE = "Curve: end-to-end latency against the offered rate"
# The e2e checks that hold at any rate; the others are what saturation is.
KEPT_CHECKS = ("every accepted hold committed", "no commit before its send")
EXPLODES = 10.0  # p99 over this many times the lowest rate's


def _figure(run: StageResult, name: str) -> float | None:
    f = run.figure(name)
    return f.value if f else None


def _point(rate: float, run: StageResult, seconds: float) -> dict[str, Any]:
    d = run.details
    memory = take_memory()
    return {
        "x": rate,
        "achieved": d.get("achieved_rate"),
        "p50": _figure(run, "2xx to hold p50"),
        "p99": _figure(run, "2xx to hold p99"),
        "send_p99": _figure(run, "send to hold p99"),
        "webhook_p99": _figure(run, "webhook 2xx p99"),
        "not_accepted": (d["planned"] - d["accepted"]) if "planned" in d else None,
        "memory": memory,
        "receiver_rss_mib": _rss(memory, "receiver"),
        "consumer_rss_mib": _rss(memory, "consumer"),
        "seconds": round(seconds, 1),
        "note": "" if run.status == "ok" else f"{run.status}: {(run.reason or '')[:80]}",
    }


def _rss(memory: list[dict[str, Any]], role: str) -> float | None:
    return next((m["rss_mib"] for m in memory if m["role"] == role), None)


def saturated(point: dict[str, Any], lowest_p99: float | None) -> str | None:
    """Why the service is saturated at this point, or None."""
    if point["achieved"] is None or point["achieved"] < 0.9 * point["x"]:
        return f"achieved {point['achieved'] or 0:,.0f}/s of {point['x']:,.0f}/s"
    if point["not_accepted"]:
        return f"{point['not_accepted']} webhooks not accepted"
    if point["p99"] is None:
        return "no latency measured"
    if lowest_p99 and point["p99"] > EXPLODES * lowest_p99:
        return f"p99 {point['p99']:,.0f} ms > {EXPLODES:.0f}x the lowest rate's"
    return None


async def run(ctx: Context, result: StageResult) -> None:
    s = ctx.sizes
    curve = Curve(
        name="e2e_by_rate",
        title=f"e2e against the offered rate ({s.curve_rate_seconds:.0f} s a point)",
        x_label="offered /s",
        x_unit="/s",
        columns=[
            Column("achieved", "achieved", "/s"),
            Column("p50", "2xx to hold p50", "ms"),
            Column("p99", "2xx to hold p99", "ms"),
            Column("send_p99", "send to hold p99", "ms"),
            Column("webhook_p99", "webhook 2xx p99", "ms"),
            Column("receiver_rss_mib", "receiver RSS", "MiB"),
            Column("consumer_rss_mib", "consumer RSS", "MiB"),
        ],
        note="The sweep stops after the first saturated point.",
    )
    try:
        for rate in s.curve_rates:
            if await _step(ctx, result, curve, rate):
                break
    finally:
        result.details["curves"] = [curve.as_json()]
    result.figures += _figures(curve)


async def _step(ctx: Context, result: StageResult, curve: Curve, rate: float) -> bool:
    """Measure one rate; whether the service saturated there."""
    started = time.monotonic()
    run = StageResult("e2e", "e2e")
    try:
        await measure(ctx, run, Load(rate, ctx.sizes.curve_rate_seconds, f"{NAME}-{rate:.0f}"))
    except Exception as exc:
        run.status, run.reason = "failed", f"{type(exc).__name__}: {exc}"
    point = _point(rate, run, time.monotonic() - started)
    for c in run.checks:
        if c.name in KEPT_CHECKS:
            check(result, f"at {rate:.0f}/s: {c.name}", c.passed, c.detail)
    if not run.checks:
        check(result, f"at {rate:.0f}/s: ran", False, run.reason or "")
    lowest = curve.points[0]["p99"] if curve.points else None
    point["saturated"] = saturated(point, lowest)
    if point["saturated"]:
        point["note"] = f"SATURATED: {point['saturated']}" + (
            f"; {point['note']}" if point["note"] else ""
        )
    curve.points.append(point)
    print(
        f"   {rate:,.0f}/s asked: {point['achieved'] or 0:,.0f}/s sent, p50 "
        f"{point['p50'] or 0:,.1f} ms, p99 {point['p99'] or 0:,.1f} ms, {point['seconds']:.0f} s"
        + (f"; saturated: {point['saturated']}" if point["saturated"] else ""),
        flush=True,
    )
    return point["saturated"] is not None


def _figures(curve: Curve) -> list[Figure]:
    points = curve.points
    first = next((p for p in points if p.get("saturated")), None)
    kept = [p for p in points if not p.get("saturated")]
    asked = ", ".join(f"{p['x']:,.0f}" for p in points)
    return [
        Figure(
            "saturation rate",
            first["x"] if first else None,
            "/s",
            note=f"{first['saturated']}" if first else f"not saturated at any of {asked}/s",
        ),
        Figure(
            "highest rate kept up with",
            kept[-1]["x"] if kept else None,
            "/s",
            note=f"p99 {kept[-1]['p99']:,.1f} ms there" if kept and kept[-1]["p99"] else None,
        ),
    ]
