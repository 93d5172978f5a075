"""Curves: one figure measured at several points of a knob (the consumer's
batch size, the rows already in the tables, the offered rate), kept in a
stage's `details["curves"]` and printed as one compact table per curve, on
stdout and in the README (`python -m bench.readme_table`).

A curve's point is one run, not the median of several: the sweep would
otherwise triple the full bench's time. Each point is a dict with `x` and
one value per column, plus a `note`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.report import fmt


@dataclass
class Column:
    key: str
    label: str
    unit: str = ""


@dataclass
class Curve:
    name: str
    title: str
    x_label: str
    x_unit: str
    columns: list[Column]
    points: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _cell(value: Any, unit: str) -> str:
    if isinstance(value, str):
        return value
    if unit == "x":
        return "-" if value is None else f"{value:.2f}x"
    if isinstance(value, int):
        return f"{value:,}{unit}" if unit in ("", "/s") else f"{value:,} {unit}"
    if unit == "%":
        return "-" if value is None else f"{value:.0%}"
    return fmt(value, unit)


def rows(curve: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The header and the cells of one curve (as stored in the JSON)."""
    head = [curve["x_label"]] + [c["label"] for c in curve["columns"]] + ["note"]
    body = [
        [_cell(p["x"], curve["x_unit"])]
        + [_cell(p.get(c["key"]), c["unit"]) for c in curve["columns"]]
        + [p.get("note") or ""]
        for p in curve["points"]
    ]
    return head, body


def stored(stages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every curve of the given stages (their JSON), in stage order."""
    return [c for stage in stages for c in stage.get("details", {}).get("curves", [])]


def text(curves: list[dict[str, Any]]) -> str:
    """Each curve as a plain-text table, as the bench prints it."""
    out: list[str] = []
    for curve in curves:
        head, body = rows(curve)
        widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
        out += ["", f"{curve['title']} (1 run a point)"]
        if curve.get("note"):
            out.append(f"  {curve['note']}")
        out.append("  " + "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)))
        out.append("  " + "  ".join("-" * w for w in widths))
        out += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) for r in body]
    return "\n".join(out)


def markdown(curves: list[dict[str, Any]]) -> str:
    """Each curve as a Markdown table, for the README."""
    out: list[str] = []
    for curve in curves:
        head, body = rows(curve)
        out += [
            "",
            f"**{curve['title']}** (1 run a point)."
            + (f" {curve['note']}" if curve.get("note") else ""),
            "",
        ]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        out += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(out)


def memory_table(stages: dict[str, dict[str, Any]], markdown_style: bool = False) -> str:
    """Resident memory of each role process at the end of each stage (MiB,
    now / peak), one line per stage."""
    lines: list[str] = []
    for name, stage in stages.items():
        memory = stage.get("details", {}).get("memory") or []
        if memory:
            cells = memory_line(memory)
            lines.append(f"| {name} | {cells} |" if markdown_style else f"  {name}: {cells}")
    if markdown_style and lines:
        lines = ["| stage | resident memory at the end, MiB (peak) |", "|---|---|", *lines]
    return "\n".join(lines)


def memory_line(memory: list[dict[str, Any]]) -> str:
    """`consumer 84 (peak 97), relay 61 (peak 61), …`: the last record of
    each process name, the service's roles first."""
    last = {m["name"]: m for m in memory}
    ordered = sorted(last.values(), key=lambda m: (m.get("role") is None, m["name"]))
    return ", ".join(
        f"{m['name']} {_mib(m.get('rss_mib'))} (peak {_mib(m.get('peak_rss_mib'))})"
        for m in ordered
    )


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
