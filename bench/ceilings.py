"""The machine's own limits, measured at the start of the run they bound:
how many records a second Kafka takes and gives with the official perf
tools (`kafka-producer-perf-test`, `kafka-consumer-perf-test`, run from the
same jars as the broker) at the stages' record sizes, and how long one
commit's flush takes (`pg_test_fsync`, PostgreSQL's own). The PostgreSQL
ceiling of a drain depends on its rows and is measured by the stage itself
(bench/ceiling_pg.py)."""

from __future__ import annotations

import asyncio
import glob
import re
import subprocess
import uuid
from datetime import UTC, datetime
from typing import Any

from bench.core import Context, Figure, create_topic, delete_topics, scalar
from bench.eventlog import generate
from bench.procs import REPO
from bench.workload import Builder

KAFKA_MAIN = {
    "producer": "org.apache.kafka.tools.ProducerPerformance",
    "consumer": "org.apache.kafka.tools.ConsumerPerformance",
}


def _java(main: str, args: list[str], timeout: float) -> str:
    libs = REPO / ".stack" / "kafka-libs"
    command = ["java", "-Xms64m", "-Xmx256m", "-cp", f"{libs}/*", main, *args]
    done = subprocess.run(  # noqa: S603
        command, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{main} exited {done.returncode}: {done.stderr[-1000:]}")
    return done.stdout


def command_bytes() -> int:
    """Bytes of a command record as the stages put them on the topic (the
    mean of an admission and a one-line cart, the drains' mix)."""
    b = Builder()
    now = datetime.now(UTC)
    admit = b.admit("drop-x", "c1", "grant-x-1", now)
    cart = b.cart("drop-x", "c1", [("sku-x-1", 1)], now)
    return (len(admit.value) + len(cart.value)) // 2


def event_bytes() -> int:
    """Mean bytes of an event record of the rebuild's log."""
    pairs, _ = generate(2_000)
    sizes = [len(value) for _, value in pairs]
    return sum(sizes) // len(sizes)


def _producer_rate(out: str) -> float:
    # "N records sent, X records/sec (Y MB/sec), ..." on the last line
    found = re.findall(r"([\d.]+) records/sec", out)
    if not found:
        raise RuntimeError(f"no rate in the producer's output: {out[-500:]}")
    return float(found[-1])


def _consumer_rate(out: str) -> float:
    # CSV: start.time, end.time, MB, MB.sec, nMsg, nMsg.sec, ...
    last = [line for line in out.splitlines() if line.strip()][-1].split(",")
    return float(last[5])


async def kafka_ceiling(ctx: Context, records: int, size: int) -> dict[str, Any]:
    """Records/s one producer (acks=all) writes, and one consumer reads back,
    on a fresh topic with the stages' partitions, records of `size` bytes."""
    topic = f"bceiling-{uuid.uuid4().hex[:8]}"
    bootstrap = ctx.stack.kafka_bootstrap
    producer = [
        *("--topic", topic, "--num-records", str(records), "--record-size", str(size)),
        *("--throughput", "-1", "--producer-props", f"bootstrap.servers={bootstrap}"),
        *("acks=all", "linger.ms=5", "batch.size=1048576"),
    ]
    consumer = [
        *("--bootstrap-server", bootstrap, "--topic", topic),
        *("--messages", str(records), "--timeout", "60000"),
    ]
    await create_topic(ctx.base, topic, ctx.partitions)
    try:
        produced = await asyncio.to_thread(_java, KAFKA_MAIN["producer"], producer, 300)
        consumed = await asyncio.to_thread(_java, KAFKA_MAIN["consumer"], consumer, 300)
    finally:
        await delete_topics(ctx.base, [topic])
    return {
        "record_bytes": size,
        "records": records,
        "producer_records_per_second": _producer_rate(produced),
        "consumer_records_per_second": _consumer_rate(consumed),
        "how": "kafka-producer-perf-test (acks=all) and kafka-consumer-perf-test",
    }


def pg_test_fsync(method: str) -> dict[str, Any]:
    """Microseconds one 8 kB write and flush takes with the server's
    `wal_sync_method`: a commit's floor. Only the first of pg_test_fsync's
    comparisons is needed; the process is stopped after it."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_test_fsync"))
    if not found:
        return {"error": "pg_test_fsync not found under /usr/lib/postgresql/*/bin"}
    target = REPO / ".stack" / "pg_test_fsync.out"
    target.parent.mkdir(exist_ok=True)
    proc = subprocess.Popen(  # noqa: S603
        [found[-1], "-s", "1", "-f", str(target)], stdout=subprocess.PIPE, text=True
    )
    methods: dict[str, float] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "two 8kB writes" in line:
                break
            hit = re.match(r"\s+(\w+)\s+[\d.]+ ops/sec\s+(\d+) usecs/op", line)
            if hit:
                methods[hit.group(1)] = float(hit.group(2))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        target.unlink(missing_ok=True)
    return {
        "wal_sync_method": method,
        "commit_flush_us": methods.get(method),
        "methods_us": methods,
        "how": f"{found[-1]} -s 1, one 8kB write",
    }


async def measure(ctx: Context) -> dict[str, Any]:
    """Every machine ceiling of the run, measured once before the stages."""
    method = await scalar(ctx.stack.database_url, "SHOW wal_sync_method")
    out: dict[str, Any] = {"commit": await asyncio.to_thread(pg_test_fsync, str(method))}
    records = 20_000 if ctx.smoke else 200_000
    for kind, size in (("kafka", command_bytes()), ("kafka_events", event_bytes())):
        try:
            out[kind] = await kafka_ceiling(ctx, records, size)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            out[kind] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def kafka_figure(
    ctx: Context, name: str, value: float | None, side: str, kind: str = "kafka"
) -> Figure:
    """A rate next to what Kafka alone takes (`producer`) or gives
    (`consumer`) at the same record size: commands' (`kafka`) or events'
    (`kafka_events`)."""
    ceiling = ctx.ceilings.get(kind, {}).get(f"{side}_records_per_second")
    return Figure(
        name,
        value,
        "/s",
        ceiling=ceiling,
        ceiling_name=f"Kafka {side} perf test",
        ceiling_share=value / ceiling if value and ceiling else None,
    )


def commit_floor(ctx: Context, figure: Figure) -> Figure:
    """A latency next to one commit's flush, the least it can be: the share
    is floor / value (1.0 = nothing but the flush)."""
    floor_us = ctx.ceilings.get("commit", {}).get("commit_flush_us")
    if floor_us and figure.value:
        figure.ceiling = floor_us / 1000
        figure.ceiling_name = "one commit's flush (pg_test_fsync)"
        figure.ceiling_share = figure.ceiling / figure.value
    return figure
