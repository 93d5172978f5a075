"""The results: a table on stdout, JSON, and PNG charts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.core import Figure, StageResult


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip() if unit not in ("/s",) else f"{text}/s"


def _ratio(f: Figure) -> str:
    return "-" if f.ratio is None else f"{f.ratio:.2f}x"


def _ceiling(f: Figure) -> str:
    if f.ceiling is None:
        return "-"
    return f"{fmt(f.ceiling, f.unit)} ({f.ceiling_name})"


def _meets(f: Figure) -> str:
    if f.target is None:
        return ""
    return {True: "yes", False: "NO", None: "-"}[f.meets]


def table(results: list[StageResult], previous: dict[str, Any] | None = None) -> str:
    head = ["stage", "figure", "value", "baseline (same run)", "ratio"]
    head += ["ceiling (same run)", "share", "target", "met"]
    if previous is not None:
        head.append("previous run")
    rows: list[list[str]] = []
    for r in results:
        if r.status != "ok" and not r.figures:
            rows.append([r.name, f"[{r.status}] {r.reason or ''}"[:90]] + [""] * 7)
            continue
        for i, f in enumerate(r.figures):
            base = "-" if f.baseline is None else f"{fmt(f.baseline, f.unit)} ({f.baseline_name})"
            row = [
                r.name if i == 0 else "",
                f.name,
                fmt(f.value, f.unit) if r.status != "not available" else "not available",
                base,
                _ratio(f),
                _ceiling(f),
                "-" if f.ceiling_share is None else f"{f.ceiling_share:.0%}",
                f.target or "",
                _meets(f),
            ]
            if previous is not None:
                row.append(_previous(previous, r.name, f))
            rows.append(row)
        if r.status not in ("ok",):
            rows.append(["", f"[{r.status}] {(r.reason or '')[:80]}"] + [""] * 7)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=False))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) for row in rows]
    return "\n".join(out)


def _previous(previous: dict[str, Any], stage: str, figure: Figure) -> str:
    old = previous.get("stages", {}).get(stage, {})
    for f in old.get("figures", []):
        if f.get("name") == figure.name and f.get("value") is not None:
            if figure.value:
                return f"{fmt(f['value'], figure.unit)} (now {figure.value / f['value']:.2f}x)"
            return fmt(f["value"], figure.unit)
    return "-"


# -- charts ------------------------------------------------------------------


def charts(results: list[StageResult], out_dir: Path) -> dict[str, list[str]]:
    """One PNG per stage that has something to draw, plus a summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, list[str]] = {}

    def save(fig: Any, name: str, stage: str) -> None:
        path = out_dir / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.setdefault(stage, []).append(path.name)

    for r in results:
        if r.status == "not available" or not r.figures:
            continue
        d = r.details
        if r.name == "ingest" and "rounds" in d:
            fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
            labels = ["bare aiohttp 200", "receiver"]
            rps = [r.figures[0].baseline or 0, r.figures[0].value or 0]
            a1.bar(labels, rps, color=["#999999", "#1f77b4"])
            a1.set_title(f"signed webhooks/s (ratio {_ratio(r.figures[0])})")
            x = [0, 1]
            p50 = [r.figures[1].baseline or 0, r.figures[1].value or 0]
            p99 = [r.figures[2].baseline or 0, r.figures[2].value or 0]
            a2.bar([i - 0.2 for i in x], p50, 0.4, label="p50")
            a2.bar([i + 0.2 for i in x], p99, 0.4, label="p99")
            a2.set_xticks(x, labels)
            a2.set_ylabel("ms")
            a2.set_title("latency at saturation")
            a2.legend()
            save(fig, "ingest", r.name)
        if r.name in ("apply", "hot_sku") and "service" in d:
            fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
            for side, label, color in (
                ("service", "service (1 consumer)", "#1f77b4"),
                ("naive", "naive per-event", "#999999"),
            ):
                prog = d[side]["progress"]
                if prog:
                    a1.plot([p[0] for p in prog], [p[1] for p in prog], label=label, color=color)
            a1.set_xlabel("seconds since process start")
            a1.set_ylabel("commands applied")
            a1.set_title(f"{r.name}: drain")
            a1.legend()
            f0 = r.figures[0]
            a2.bar(
                ["naive per-event", "service"],
                [f0.baseline or 0, f0.value or 0],
                color=["#999999", "#1f77b4"],
            )
            a2.axhline(20_000, color="red", linestyle="--", label="target 20,000/s")
            a2.set_title(f"transitions/s (ratio {_ratio(f0)})")
            a2.legend()
            save(fig, r.name, r.name)
        if r.name in ("e2e", "expiry"):
            key = "latencies_ms" if r.name == "e2e" else "lag_ms"
            values = d.get(key) or []
            if values:
                fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
                n = len(values)
                a1.plot(values, [i / n for i in range(n)])
                limit = 50 if r.name == "e2e" else 1000
                a1.axvline(limit, color="red", linestyle="--", label=f"target p99 {limit} ms")
                a1.set_xscale("log")
                a1.set_xlabel("ms")
                a1.set_ylabel("fraction")
                a1.set_title(f"{r.name}: CDF ({d.get('method')})")
                a1.legend()
                if r.name == "expiry" and d.get("lag_by_due"):
                    pts = d["lag_by_due"]
                    a2.scatter([p[0] for p in pts], [p[1] for p in pts], s=3)
                    a2.set_xlabel("seconds since first expires_at")
                    a2.set_ylabel("lag ms")
                    a2.set_title("lag across the span")
                elif d.get("latency_over_time"):
                    pts = d["latency_over_time"]
                    a2.scatter([p[0] for p in pts], [p[1] for p in pts], s=3)
                    a2.set_xlabel("seconds since the first webhook")
                    a2.set_ylabel("2xx to hold, ms")
                    a2.set_yscale("log")
                    a2.set_title(f"over the run ({d.get('achieved_rate') or 0:.0f}/s achieved)")
                else:
                    a2.hist(values, bins=60)
                    a2.set_xlabel("ms")
                    a2.set_title("histogram")
                save(fig, r.name, r.name)
    # Summary: each targeted figure as a fraction of its target.
    fig, ax = plt.subplots(figsize=(10, 4))
    names: list[str] = []
    fractions: list[float] = []
    for r in results:
        for f in r.figures:
            for label, frac in _target_fractions(r.name, f):
                names.append(label)
                fractions.append(frac)
    if names:
        colors = ["#2ca02c" if v >= 1 else "#d62728" for v in fractions]
        ax.barh(names, fractions, color=colors)
        ax.axvline(1.0, color="black", linestyle="--")
        ax.set_xscale("log")
        ax.set_xlabel("achieved / target (>= 1 meets it)")
        ax.set_title("figures against their targets")
        save(fig, "summary", "summary")
    else:
        plt.close(fig)
    return made


def _target_fractions(stage: str, f: Figure) -> list[tuple[str, float]]:
    """How far each targeted figure is from its target (>= 1 meets it)."""
    if f.value is None or f.target is None or f.value <= 0:
        return []
    label = f"{stage}: {f.name}"
    if f.name == "webhooks/s" and f.ratio is not None:
        return [(f"{label} vs bare (0.5x)", f.ratio / 0.5)]
    if f.name == "transitions/s":
        out = [(f"{label} (20,000/s)", f.value / 20_000)]
        if stage == "apply" and f.ratio is not None:
            out.append((f"{label} vs naive (20x)", f.ratio / 20))
        return out
    if f.name == "2xx to hold p99":
        return [(f"{label} (50 ms)", 50.0 / f.value)]
    if f.name == "expiry lag p99":
        return [(f"{label} (1 s)", 1000.0 / f.value)]
    if f.name == "events/s":
        return [(f"{label} (30,000/s)", f.value / 30_000)]
    return []
