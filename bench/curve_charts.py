"""PNG charts of the curves (bench/curves.py), one per curve, named after
it, and one of the resident memory of every process at the end of each
stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.core import StageResult


def charts(results: list[StageResult], out_dir: Path) -> dict[str, list[str]]:
    """The charts made, by stage name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, list[str]] = {}
    for r in results:
        for curve in r.details.get("curves", []):
            points = [p for p in curve["points"] if p.get("x") is not None]
            if not points:
                continue
            fig, ax = plt.subplots(figsize=(7, 4))
            draw = _DRAW.get(curve["name"].split("_by_")[1], _by_batch)
            draw(ax, curve, points)
            ax.set_title(curve["title"], fontsize=10)
            path = out_dir / f"curve-{curve['name']}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            made.setdefault(r.name, []).append(path.name)
    memory = [(r.name, m) for r in results for m in _last(r.details.get("memory") or [])]
    if memory:
        fig, ax = plt.subplots(figsize=(8, max(3, 0.25 * len(memory))))
        labels = [f"{stage}: {m['name']}" for stage, m in memory]
        ax.barh(labels, [m.get("peak_rss_mib") or 0 for _, m in memory], label="peak", color="#ccc")
        ax.barh(labels, [m.get("rss_mib") or 0 for _, m in memory], label="at the end")
        ax.set_xlabel("resident memory, MiB")
        ax.invert_yaxis()
        ax.legend()
        path = out_dir / "memory.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.setdefault("summary", []).append(path.name)
    return made


def _last(memory: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({m["name"]: m for m in memory}.values())


def _by_batch(ax: Any, curve: dict[str, Any], points: list[dict[str, Any]]) -> None:
    x = [p["x"] for p in points]
    ax.plot(x, [p.get("rate") or 0 for p in points], "o-", label="service")
    ax.plot(x, [p.get("steady") or 0 for p in points], "o--", label="service, steady")
    ax.plot(x, [p.get("naive") or 0 for p in points], "s-", color="#999", label="naive")
    for p in points:
        if p.get("ratio"):
            ax.annotate(f"{p['ratio']:.2f}x", (p["x"], p.get("rate") or 0), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("consumer batch size (CONSUMER_BATCH_MAX)")
    ax.set_ylabel("transitions/s")
    ax.legend()


def _by_existing(ax: Any, curve: dict[str, Any], points: list[dict[str, Any]]) -> None:
    x = [p.get("existing") or p["x"] for p in points]
    ax.plot(x, [p.get("rate") or 0 for p in points], "o-", label="service")
    ax.plot(x, [p.get("steady") or 0 for p in points], "o--", label="service, steady")
    for p, at in zip(points, x, strict=True):
        ax.annotate(
            f"prefill {p.get('prefill_s') or 0:.0f} s", (at, p.get("rate") or 0), fontsize=8
        )
    ax.set_xlabel("admissions already in the tables")
    ax.set_ylabel("transitions/s")
    ax.set_ylim(bottom=0)
    ax.legend()


def _by_rate(ax: Any, curve: dict[str, Any], points: list[dict[str, Any]]) -> None:
    x = [p["x"] for p in points]
    ax.plot(x, [p.get("p50") or 0 for p in points], "o-", label="2xx to hold p50")
    ax.plot(x, [p.get("p99") or 0 for p in points], "o-", label="2xx to hold p99")
    for p in points:
        if p.get("saturated"):
            ax.axvline(p["x"], color="red", linestyle="--", label="saturated")
        ax.annotate(f"{p.get('achieved') or 0:,.0f}/s", (p["x"], p.get("p99") or 1), fontsize=8)
    ax.axhline(50, color="#999", linestyle=":", label="target p99 50 ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered webhooks/s (labels: achieved)")
    ax.set_ylabel("ms")
    ax.legend(fontsize=8)


_DRAW = {"batch": _by_batch, "existing": _by_existing, "rate": _by_rate}
