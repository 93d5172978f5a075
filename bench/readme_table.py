"""`python -m bench.readme_table [results.json]`: the README's Performance
table, in Markdown, from a run's results: the commit measured, every
figure with its same-run baseline and ceiling, the checks, and each run's
raw figures when the stage was repeated; then a table per curve and the
resident memory of every process at the end of each stage."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from bench import curves
from bench.report import fmt


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _runs(stage: dict[str, Any], name: str, unit: str) -> str:
    """Every run's value of one figure, in run order."""
    runs = stage["details"].get("repeats", {}).get("figures") or []
    values = [run.get(name, [None])[0] for run in runs]
    return ", ".join(fmt(v, unit) for v in values) if len(values) > 1 else ""


def _row(name: str, stage: dict[str, Any], f: dict[str, Any]) -> str:
    unit = f["unit"]
    base = "-" if f["baseline"] is None else f"{fmt(f['baseline'], unit)} ({f['baseline_name']})"
    ceiling = "-" if f["ceiling"] is None else f"{fmt(f['ceiling'], unit)} ({f['ceiling_name']})"
    share = "-" if f["ceiling_share"] is None else f"{f['ceiling_share']:.0%}"
    cells = [name, f["name"], fmt(f["value"], unit), _runs(stage, f["name"], unit)]
    cells += [base, _ratio(f["ratio"]), ceiling, share]
    return "| " + " | ".join(cells) + " |"


def table(document: dict[str, Any]) -> str:
    commit = document["run"].get("commit") or {}
    head = (
        f"Commit measured: `{str(commit.get('commit', 'unknown'))[:12]}`"
        + (" (with uncommitted changes)" if commit.get("dirty") else "")
        + f", {document['run']['mode']} run, median of {document['run'].get('repeat', 1)}"
        + f" run(s) per stage, started {document['run']['started_at'][:16]} UTC."
    )
    lines = [
        head,
        "",
        "| stage | figure | median | every run | baseline (same run) | ratio "
        "| ceiling (same run) | share of ceiling |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, stage in document["stages"].items():
        checks = stage.get("checks") or []
        passed = sum(c["passed"] for c in checks)
        for f in stage["figures"]:
            lines.append(_row(name, stage, f))
        lines.append(f"| {name} | checks | {passed} of {len(checks)} passed | | | | | |")
    lines.append(curves.markdown(curves.stored(document["stages"].values())))
    memory = curves.memory_table(document["stages"], markdown_style=True)
    if memory:
        lines += ["", "**Resident memory** of each process at the end of each stage:", "", memory]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "bench-results/results.json")
    print(table(orjson.loads(path.read_bytes())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
