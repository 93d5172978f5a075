"""Stage 6, rebuild: events/s folding an event log (1,000,000 events) into an
empty database with `python -m worker replay --target-database-url URL`,
from process start to exit. When the command does not exist (yet), the stage
reports "not available" with the reason and builds no log.

The log is synthetic but shaped as the relay writes it (bench/eventlog.py);
after the replay the target must hold exactly the reservations, states and
counters the log implies, or the stage fails."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from bench.ceilings import kafka_figure
from bench.checks import check_no_oversell, compare, held_by_product
from bench.core import Context, Figure, StageResult, connect, extra_database, fresh_namespace
from bench.eventlog import Expected, generate
from bench.procs import service_env, worker_role
from worker.adapters import postgres
from worker.adapters.kafka import SEQ_HEADER

NAME = "rebuild"
TITLE = "Rebuild: events/s folding the event log into an empty database"


def replay_help(root: Path) -> tuple[bool, str]:
    """Whether `python -m worker replay` exists, and its help text (or why not)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "worker", "replay", "--help"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, "`python -m worker replay --help` did not answer within 60 s"
    text = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        first = text.splitlines()[-1] if text else f"exit {done.returncode}"
        return False, f"`python -m worker replay` is not a sub-command yet ({first})"
    if "--target-database-url" not in text:
        return False, "`python -m worker replay` has no --target-database-url option"
    return True, text


async def _produce_log(settings: Any, total: int) -> tuple[int, Any, float]:
    pairs, expected = generate(total)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=50,
        max_batch_size=1024 * 1024,
    )
    started = time.monotonic()
    await producer.start()
    sent = 0
    try:
        futures = []
        for key, value in pairs:
            sent += 1
            futures.append(
                await producer.send(
                    settings.events_topic,
                    value,
                    key=key,
                    headers=[(SEQ_HEADER, str(sent).encode())],
                )
            )
            if len(futures) >= 20_000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent, expected, time.monotonic() - started


async def check_fold(result: StageResult, target: str, expected: Expected) -> None:
    """Every product's counters and every status count of the rebuilt
    database against the fold of the log the benchmark generated."""
    conn = await connect(target)
    try:
        statuses = await conn.fetch("SELECT status, count(*) AS n FROM reservations GROUP BY 1")
        admissions = await conn.fetchval("SELECT count(*) FROM admissions")
    finally:
        await conn.close()
    rows = await held_by_product(target, "stock")
    check_no_oversell(result, "rebuilt", rows)
    got = {r["status"]: r["n"] for r in statuses}
    got["admissions"] = admissions
    want = {
        "active": expected.active,
        "expired": expected.expired,
        "converted": expected.converted,
        "admissions": expected.admissions,
    }
    compare(result, "status counts = the log's fold", want, got)
    compare(
        result,
        "reserved per product = the log's fold",
        expected.reserved,
        {r["product_id"]: r["reserved"] for r in rows if r["reserved"]},
    )
    compare(
        result,
        "sold per product = the log's fold",
        expected.sold,
        {r["product_id"]: r["sold"] for r in rows if r["sold"]},
    )


async def run(ctx: Context, result: StageResult) -> None:
    available, text = await asyncio.to_thread(replay_help, ctx.worker_root)
    if not available:
        result.status = "not available"
        result.reason = text
        result.figures.append(
            Figure("events/s", None, "/s", target=">= 30,000/s", note="not available")
        )
        return
    result.details["replay_help"] = text[:2000]
    total = ctx.sizes.rebuild_events
    async with fresh_namespace(ctx) as ns, extra_database(ns.admin_url, "rebuild") as target:
        sent, expected, produce_s = await _produce_log(ns.settings, total)
        await postgres.migrate(target, ctx.worker_root / "sql")
        env = service_env(ns.settings)
        child = worker_role("replay", "replay", env, ctx.log_dir(NAME), ctx.worker_root)
        child.args += ["--target-database-url", target]
        child.start()
        code = await child.wait_exit(timeout=3600)
        elapsed = time.time() - child.started_at
        if code != 0:
            result.status = "failed"
            result.reason = f"replay exited {code}: {child.tail(10)}"
        await check_fold(result, target, expected)
    result.details.update(events=sent, produce_seconds=produce_s, replay_seconds=elapsed)
    rate = sent / elapsed if elapsed else None
    result.figures.append(
        Figure(
            "events/s",
            rate,
            "/s",
            target=">= 30,000/s",
            meets=bool(rate and rate >= 30_000),
            note=f"{sent:,} events, process start to exit",
        )
    )
    result.figures.append(
        kafka_figure(ctx, "events/s vs Kafka read", rate, "consumer", "kafka_events")
    )
    peak = (child.memory or {}).get("peak_rss_mib")
    per_million = peak * 1_000_000 / sent if peak and sent else None
    result.details.update(replay_peak_rss_mib=peak, replay_peak_rss_mib_per_million=per_million)
    result.figures.append(
        Figure(
            "replay peak RSS",
            peak,
            "MiB",
            note=f"VmHWM of the replay process for {sent:,} events: "
            f"{per_million or 0:,.0f} MiB per 1M events (its ~70 MiB at start included)",
        )
    )
