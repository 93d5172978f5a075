"""`python -m bench --smoke` runs every stage at a small size against the
session's PostgreSQL and Kafka and writes its results. It asserts nothing
about speed (a shared machine's numbers are noise at this size): only that
each stage ran, its correctness checks ran and passed, the machine's
ceilings were measured, the JSON is complete, and nothing was ever oversold.
The checks themselves are shown to fail on doctored numbers below."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench import curves
from bench.checks import check_no_oversell, compare
from bench.core import StageResult
from bench.curves import Column, Curve
from bench.procs import Child, take_memory
from bench.stages.curve_rate import saturated
from bench.stages.ingest import check_window
from tests.stack import Stack

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "apply", "hot_sku", "e2e", "expiry", "rebuild", "failover")
CURVES = ("curve_batch", "curve_prefill", "curve_rate")


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_bench_smoke_runs_every_stage_and_never_oversells(stack: Stack, tmp_path: Path) -> None:
    env = dict(
        os.environ,
        DATABASE_URL=stack.database_url,
        KAFKA_BOOTSTRAP_SERVERS=stack.kafka_bootstrap,
    )
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    report = f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, report

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["run"]["mode"] == "smoke"
    assert results["machine"]["nproc"] >= 1
    assert results["machine"]["postgresql"]["version"]
    stages = results["stages"]
    assert set(stages) == set(STAGES + CURVES), report
    for name in STAGES:
        stage = stages[name]
        # "not available" only where the stage depends on a command that
        # may not exist yet (the replay); it must then say why.
        allowed = ("ok", "not available") if name == "rebuild" else ("ok",)
        assert stage["status"] in allowed, (name, stage["reason"], report)
        assert stage["figures"], name
        if stage["status"] == "not available":
            assert stage["reason"]
    for name in ("apply", "hot_sku"):
        oversell = stages[name]["details"]["service"]["oversell"]
        assert oversell["samples"] > 0, name
        assert oversell["oversold_samples"] == 0, (name, oversell)
        assert oversell["final_rows"] == 0, (name, oversell)
    hot = stages["hot_sku"]
    oversold = next(f for f in hot["figures"] if f["name"] == "oversold rows")
    assert oversold["value"] == 0
    assert hot["details"]["stock_after"]["reserved"] == hot["details"]["units"]
    assert stages["expiry"]["details"]["reserved_after"] == 0
    assert stages["e2e"]["details"]["accepted"] == stages["e2e"]["details"]["planned"]
    for name in ("ingest", "apply", "hot_sku", "e2e", "expiry") + (
        ("rebuild",) if stages["rebuild"]["status"] == "ok" else ()
    ):
        checks = stages[name]["checks"]
        assert checks, name
        assert all(c["passed"] for c in checks), (name, checks)
    assert "CHECK FAILED" not in done.stdout
    ceilings = results["machine"]["ceilings"]
    assert ceilings["commit"]["commit_flush_us"] > 0, ceilings
    assert ceilings["kafka"]["producer_records_per_second"] > 0, ceilings
    assert ceilings["kafka"]["consumer_records_per_second"] > 0, ceilings
    for name in ("apply", "hot_sku"):
        headline = stages[name]["figures"][0]
        assert headline["ceiling"] > 0, headline
        assert headline["ceiling_share"] > 0, headline
        assert stages[name]["details"]["ceiling_postgresql"]["rows_per_command"]["inbox"] == 1
    commit = results["run"]["commit"]
    assert len(commit["commit"]) == 40
    assert isinstance(commit["dirty"], bool)
    _assert_curves(stages, done.stdout)
    _assert_memory(stages, done.stdout)
    # The printed table.
    assert "webhooks/s" in done.stdout
    assert "transitions/s" in done.stdout
    assert "commit measured:" in done.stdout


def _assert_curves(stages: dict[str, Any], stdout: str) -> None:
    """Every curve ran at its smoke points, with its checks, and printed."""
    curves = {c["name"]: c for name in CURVES for c in stages[name]["details"]["curves"]}
    assert set(curves) == {"apply_by_batch", "hot_sku_by_batch", "apply_by_existing", "e2e_by_rate"}
    for name in CURVES:
        assert stages[name]["status"] == "ok", (name, stages[name]["reason"])
        assert stages[name]["checks"], name
        assert all(c["passed"] for c in stages[name]["checks"]), name
    for name in ("apply_by_batch", "hot_sku_by_batch"):
        points = curves[name]["points"]
        assert [p["x"] for p in points] == [100, 1000], name
        assert all(p["rate"] > 0 and p["naive"] > 0 and p["ratio"] > 0 for p in points), points
    existing = curves["apply_by_existing"]["points"]
    assert [p["x"] for p in existing] == [0, 20_000]
    assert existing[1]["existing"] == 20_100, existing
    assert existing[1]["prefill"]["rows"]["admissions"] == 20_000, existing
    assert existing[1]["prefill_s"] > 0
    assert all(p["rate"] > 0 for p in existing)
    rates = curves["e2e_by_rate"]["points"]
    assert [p["x"] for p in rates] == [100, 200], rates
    assert all(p["p99"] is not None and p["p99"] >= p["p50"] for p in rates), rates
    for curve in curves.values():
        assert curve["title"] in stdout, curve["title"]


def _assert_memory(stages: dict[str, Any], stdout: str) -> None:
    """Every role process of a stage had its resident memory recorded."""
    roles = {m["role"] for m in stages["e2e"]["details"]["memory"]}
    assert {"receiver", "consumer", "relay", "scheduler"} <= roles, roles
    for m in stages["e2e"]["details"]["memory"]:
        if m["role"] is None:  # the load generator exits by itself: its peak only
            assert m["peak_rss_mib"] > 0, m
            continue
        assert m["rss_mib"] > 0, m
        assert m["peak_rss_mib"] >= m["rss_mib"], m
    assert any(m["role"] == "consumer" for m in stages["apply"]["details"]["memory"])
    if stages["rebuild"]["status"] == "ok":
        peak = next(f for f in stages["rebuild"]["figures"] if f["name"] == "replay peak RSS")
        assert peak["value"] > 0, peak
        assert stages["rebuild"]["details"]["replay_peak_rss_mib_per_million"] > 0
    assert "resident memory of each process" in stdout


def test_saturation_is_a_short_rate_refusals_or_an_exploded_p99() -> None:
    ok = {"x": 1000, "achieved": 995.0, "not_accepted": 0, "p99": 40.0}
    assert saturated(ok, lowest_p99=20.0) is None
    assert "achieved" in (saturated(dict(ok, achieved=850.0), 20.0) or "")
    assert "not accepted" in (saturated(dict(ok, not_accepted=3), 20.0) or "")
    assert "p99" in (saturated(dict(ok, p99=201.0), 20.0) or "")
    assert saturated(dict(ok, p99=199.0), 20.0) is None


_HOLDER = """
import pathlib, sys, time
block = b"x" * (int(sys.argv[3]) * 1024 * 1024)  # written, so resident
pathlib.Path(sys.argv[1]).write_text("held")
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.01)
"""


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.01)


def test_memory_of_a_child_is_recorded_when_stopped_and_when_it_exits(tmp_path: Path) -> None:
    async def scenario() -> None:
        go = tmp_path / "go"
        children = {
            name: Child(
                name,
                [sys.executable, "-c", _HOLDER, str(tmp_path / name), str(go), str(mib)],
                dict(os.environ),
                tmp_path,
            )
            for name, mib in (("stopped", 200), ("exits", 200), ("small", 0))
        }
        take_memory()
        for child in children.values():
            child.start()
        for name in children:
            await asyncio.to_thread(_wait_for, tmp_path / name)
        stopped, exits, small = children["stopped"], children["exits"], children["small"]
        await stopped.stop()
        for child in (exits, small):
            assert child._read_memory() is not None  # what wait_exit does every ~0.1 s
        go.write_text("go")
        for child in (exits, small):
            assert await child.wait_exit(60) == 0
        memory = {m["name"]: m for m in take_memory()}
        assert memory["stopped"]["rss_mib"] >= 200, memory
        assert memory["stopped"]["peak_rss_mib"] >= memory["stopped"]["rss_mib"], memory
        assert memory["exits"]["rss_mib"] is None, memory
        assert memory["exits"]["peak_rss_mib"] >= 200, memory
        # Not the parent's memory (here 300 MiB more than the child's).
        assert memory["small"]["peak_rss_mib"] < 150, memory

    ballast = b"y" * (300 * 1024 * 1024)
    asyncio.run(scenario())
    assert len(ballast) > 0


def test_curve_tables_print_every_point() -> None:
    curve = Curve("c_by_x", "c against x", "x", "/s", [Column("p99", "p99", "ms")])
    curve.points += [{"x": 250, "p99": 12.5, "note": ""}, {"x": 500, "p99": None, "note": "n"}]
    text = curves.text([curve.as_json()])
    assert "c against x (1 run a point)" in text
    assert "250/s" in text
    assert "12.5 ms" in text
    assert "500/s" in text
    table = curves.markdown([curve.as_json()])
    assert "| 250/s | 12.5 ms |  |" in table
    assert "| 500/s | - | n |" in table


def _product(**counts: int) -> dict[str, int | str]:
    row: dict[str, int | str] = {"product_id": "p", "variant_id": "", "active_rows": 0}
    row.update(on_hand=10, reserved=0, sold=0, active=0, converted=0)
    row.update(counts)
    return row


def test_oversell_check_fails_on_rows_over_on_hand_with_consistent_counters() -> None:
    result = StageResult("hot_sku", "t")
    check_no_oversell(result, "service", [_product(reserved=11, active=11)])
    assert result.status == "failed"
    assert [c.name for c in result.checks if not c.passed] == [
        "service: held + sold rows <= on_hand"
    ]
    assert "held + sold rows <= on_hand" in (result.reason or "")


def test_counter_check_fails_when_counters_and_rows_disagree() -> None:
    result = StageResult("apply", "t")
    check_no_oversell(result, "naive", [_product(reserved=3, active=4, sold=1, converted=1)])
    assert [c.name for c in result.checks if not c.passed] == [
        "naive: counters = sums of hold rows"
    ]


def test_fold_comparison_names_what_differs() -> None:
    result = StageResult("apply", "t")
    assert compare(result, "units", {"a": 2, "b": 1}, {"a": 2, "b": 1})
    assert not compare(result, "units", {"a": 2, "b": 1}, {"a": 3, "b": 1})
    assert result.status == "failed"
    assert "'a': (2, 3)" in result.checks[-1].detail


def test_ingest_window_check_fails_on_lost_or_extra_records() -> None:
    fine = {"ok": 100.0, "requests": 100.0, "errors": 0.0, "on_topic": 102.0}
    lost = dict(fine, on_topic=99.0)
    extra = dict(fine, on_topic=200.0)  # e.g. the warm-up counted in
    result = StageResult("ingest", "t")
    check_window(result, [fine, lost, extra], connections=16)
    assert [c.passed for c in result.checks] == [True, False, False]
