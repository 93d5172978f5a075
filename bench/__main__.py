"""`python -m bench [--smoke] [--only NAME ...]`: see bench/__init__.py."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import logging
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench import ceilings, curve_charts, curves, machine, report
from bench.core import FULL, SMOKE, Context, StageResult
from bench.procs import REPO, SECRET, stop_all_sync, take_memory
from bench.snapshot import snapshot
from bench.stack import BenchStack, start_stack
from bench.stages import (
    apply,
    curve_batch,
    curve_prefill,
    curve_rate,
    e2e,
    expiry,
    failover,
    hot_sku,
    ingest,
    rebuild,
)
from worker.config import load_settings
from worker.logs import configure_logging

STAGES: dict[str, Any] = {
    "ingest": ingest,
    "apply": apply,
    "hot_sku": hot_sku,
    "e2e": e2e,
    "expiry": expiry,
    "rebuild": rebuild,
    "failover": failover,
    "curve_batch": curve_batch,
    "curve_prefill": curve_prefill,
    "curve_rate": curve_rate,
}
# Run once whatever --repeat says: a curve's point is one run.
CURVES = ("curve_batch", "curve_prefill", "curve_rate")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of the reservation worker, each against a baseline "
        "measured in the same run.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every stage at a small size (~2 min); asserts nothing about speed",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(STAGES),
        metavar="NAME",
        help=f"run only these stages: {', '.join(STAGES)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench-results",
        help="results folder (default: bench-results/, git-ignored)",
    )
    parser.add_argument(
        "--loadgen",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="ingest load generator (auto: wrk when installed)",
    )
    parser.add_argument(
        "--profile",
        choices=["apply", "hot_sku", "e2e"],
        help="record the stage's timed consumer process with py-spy",
    )
    parser.add_argument(
        "--compare", type=Path, help="an earlier results.json to print side by side"
    )
    parser.add_argument(
        "--worker-rev",
        metavar="REV",
        help="run the service from this commit (a snapshot under .stack/bench) instead of "
        "the work tree, e.g. HEAD while the tree is mid-edit",
    )
    parser.add_argument(
        "--worker-root",
        type=Path,
        metavar="DIR",
        help="run the service from this folder (holding worker/ and sql/), e.g. another "
        "checkout; --worker-rev wins if both are given",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="run each stage N times and report the run with the median headline figure "
        "(all N values kept in the JSON), the baseline first in every other run "
        "(default: 3, or 1 with --smoke)",
    )
    parser.add_argument(
        "--keep-stack",
        action="store_true",
        help="leave the PostgreSQL/Kafka this run starts running",
    )
    parser.add_argument(
        "--no-curves",
        action="store_true",
        help="leave out the curves (batch size, existing admissions, offered rate) "
        "unless named in --only",
    )
    parser.add_argument("--no-charts", action="store_true")
    return parser.parse_args(argv)


async def run_stage(
    name: str, step: Callable[[Context, StageResult], Awaitable[None]], ctx: Context
) -> StageResult:
    result = StageResult(name=name, title=STAGES[name].TITLE)
    started = time.monotonic()
    print(f"== {name}: {result.title}", flush=True)
    take_memory()
    try:
        await step(ctx, result)
    except Exception as exc:
        result.status = "failed"
        result.reason = f"{type(exc).__name__}: {str(exc)[:1500]}"
        result.details["traceback"] = traceback.format_exc()[-4000:]
    result.seconds = round(time.monotonic() - started, 1)
    result.details["memory"] = take_memory()
    if result.details["memory"]:
        print(f"   memory: {curves.memory_line(result.details['memory'])}", flush=True)
    print(
        f"   {result.status} in {result.seconds:.0f} s"
        + (f": {result.reason[:300]}" if result.reason else ""),
        flush=True,
    )
    passed = sum(c.passed for c in result.checks)
    print(f"   checks: {passed} of {len(result.checks)} passed", flush=True)
    for c in result.checks:
        if not c.passed:
            print(f"   CHECK FAILED {name}: {c.name}: {c.detail[:300]}", flush=True)
    return result


async def run_all(args: argparse.Namespace, stack: BenchStack) -> dict[str, Any]:
    info = await machine.describe(
        stack.database_url, stack.kafka_bootstrap, stack.own_postgres, stack.own_kafka
    )
    base = load_settings(
        database_url=stack.database_url,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        fanfare_webhook_secret=SECRET,
    )
    ctx = Context(
        stack=stack,
        base=base,
        out_dir=args.out,
        smoke=args.smoke,
        sizes=SMOKE if args.smoke else FULL,
        commit_timestamps=info["postgresql"]["track_commit_timestamp"] == "on",
        profile=args.profile,
    )
    info["worker"] = worker_source(args, ctx)
    print("measuring the machine's ceilings (pg_test_fsync, Kafka perf tests)", flush=True)
    ctx.ceilings = info["ceilings"] = await ceilings.measure(ctx)
    print(f"service runs from the {ctx.worker_label}", flush=True)
    names = args.only or [n for n in STAGES if not (args.no_curves and n in CURVES)]
    results: list[StageResult] = []

    async def ingest_step(c: Context, r: StageResult) -> None:
        await ingest.run(c, r, args.loadgen)

    for name in names:
        step = ingest_step if name == "ingest" else STAGES[name].run
        runs = []
        for index in range(1 if name in CURVES else args.repeat):
            ctx.repeat_index = index
            runs.append(await run_stage(name, step, ctx))
        results.append(median_run(runs))
    return {"machine": info, "results": results, "ctx": ctx}


def worker_source(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    """Point the context at the service to measure (--worker-rev, else
    --worker-root, else the work tree); where it runs from, and its commit."""
    folder = REPO
    if args.worker_root:
        root = args.worker_root.resolve()
        if not (root / "worker" / "__main__.py").exists() or not (root / "sql").is_dir():
            raise SystemExit(f"--worker-root {root}: no worker/__main__.py and sql/ there")
        ctx.worker_root, ctx.worker_label = root, f"folder {root}"
        folder = root
    if args.worker_rev:
        root, sha = snapshot(args.worker_rev)
        ctx.worker_root, ctx.worker_label = root, f"commit {sha[:12]} ({args.worker_rev})"
    return {
        "runs_from": ctx.worker_label,
        "root": str(ctx.worker_root),
        "commit": machine.measured_commit(args.worker_rev, folder),
    }


def median_run(runs: list[StageResult]) -> StageResult:
    """Of repeated runs of a stage, the one whose headline figure (its first)
    is the median; every run's headline is kept in its details. A failed run
    fails the stage."""
    if len(runs) == 1:
        return runs[0]
    failed = [r for r in runs if r.status == "failed"]
    if failed:
        return failed[0]
    ranked = sorted(
        runs, key=lambda r: r.figures[0].value if r.figures and r.figures[0].value else 0.0
    )
    chosen = ranked[(len(ranked) - 1) // 2]
    chosen.details["repeats"] = {
        "runs": len(runs),
        "headline": runs[0].figures[0].name if runs[0].figures else None,
        "values": [r.figures[0].value if r.figures else None for r in runs],
        "baselines": [r.figures[0].baseline if r.figures else None for r in runs],
        "figures": [{f.name: [f.value, f.baseline, f.ceiling] for f in r.figures} for r in runs],
        "order": [r.details.get("service", {}).get("order") for r in runs],
        "reported": "the run with the median headline value",
    }
    return chosen


def quiet_logs() -> None:
    """The service's own modules log at info (migrations, topics); the
    benchmark's console shows only its own lines and real problems."""
    configure_logging("warning", "console")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.repeat is None:
        args.repeat = 1 if args.smoke else 3
    quiet_logs()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    atexit.register(stop_all_sync)
    started = datetime.now(UTC)
    print(f"bench: {'smoke' if args.smoke else 'full'} run, results in {args.out}", flush=True)
    stack = start_stack(keep=args.keep_stack)
    try:
        outcome = asyncio.run(run_all(args, stack))
    finally:
        stop_all_sync()
        stack.stop()
    results: list[StageResult] = outcome["results"]
    ctx: Context = outcome["ctx"]
    charts: dict[str, list[str]] = {}
    if not args.no_charts:
        try:
            charts = report.charts(results, args.out)
            for stage, made in curve_charts.charts(results, args.out).items():
                charts.setdefault(stage, []).extend(made)
        except Exception as exc:  # charts are a convenience, never the verdict
            print(f"charts failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    for r in results:
        r.charts = charts.get(r.name, [])
    document = {
        "run": {
            "started_at": started.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "mode": "smoke" if args.smoke else "full",
            "commit": outcome["machine"]["worker"]["commit"],
            "repeat": args.repeat,
            "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
            "sizes": ctx.sizes.__dict__,
            "commit_timestamps": ctx.commit_timestamps,
            "note": "numbers from a shared 2-core machine; other work ran at the same time",
        },
        "machine": outcome["machine"],
        "stages": {r.name: r.as_json() for r in results},
        "summary_chart": charts.get("summary", []),
    }
    blob = orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    (args.out / "results.json").write_bytes(blob)
    history = args.out / "history"
    history.mkdir(exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    (history / f"results-{document['run']['mode']}-{stamp}.json").write_bytes(blob)
    previous = None
    if args.compare:
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            previous = orjson.loads(args.compare.read_bytes())
    m = outcome["machine"]
    print()
    print(
        f"machine: {m['nproc']} cores, {m['memory_gib']} GiB, {m['cpu_model']}; "
        f"Python {m['python']}, PostgreSQL {m['postgresql']['version']} "
        f"(fsync={m['postgresql']['fsync']}), Kafka {m['kafka']['version']}; "
        f"load average at start {m['loadavg_at_start']}"
    )
    measured = m["worker"]["commit"]
    print(
        f"commit measured: {measured['commit'][:12]}"
        + (" with uncommitted changes" if measured["dirty"] else "")
        + f" ({measured['from']}); median of {args.repeat} run(s) per stage"
    )
    print(report.table(results, previous))
    print(curves.text(curves.stored(r.as_json() for r in results)))
    memory = curves.memory_table({r.name: r.as_json() for r in results})
    if memory:
        print("\nresident memory of each process at the end of each stage, MiB (peak):")
        print(memory)
    print(f"\nresults: {args.out / 'results.json'}")
    failed = [r.name for r in results if r.status == "failed"]
    if failed:
        print(f"failed stages: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
