"""Stage 1, ingest: signed webhooks/s and latency through `python -m worker
receiver` (verify, validate, produce with acks=all, answer after the
acknowledgement), against a bare aiohttp handler that reads the body and
answers 200: one server process each, the same load generator, the same
machine, the same run, alternating rounds.

Load: wrk (Debian's package) with bench/wrk_sign.lua, which signs every
request in the load generator, or, without wrk, bench/loadgen.py in a
process of its own. Closed loop, fixed connections: the latency figures are
at saturation."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.ceilings import kafka_figure
from bench.checks import check
from bench.core import Context, Figure, Namespace, StageResult, fresh_namespace
from bench.measure import percentile
from bench.procs import SECRET, Child, free_port, python_module, service_env, worker_role

NAME = "ingest"
TITLE = "Ingest: signed webhooks/s through the receiver vs a bare aiohttp 200"
LUA = Path(__file__).resolve().parents[1] / "wrk_sign.lua"


def pick_loadgen(choice: str) -> str:
    if choice in ("wrk", "python"):
        return choice
    return "wrk" if shutil.which("wrk") else "python"


def _load(ctx: Context, tool: str, url: str, seconds: float, out: Path) -> dict[str, Any]:
    conns = ctx.sizes.ingest_connections
    if tool == "wrk":
        env = dict(
            os.environ,
            BENCH_SECRET=SECRET,
            BENCH_NONCE=uuid.uuid4().hex[:8],
            BENCH_OUT=str(out),
            BENCH_EXPERIENCES="8",
        )
        args = [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(LUA),
            url,
        ]
        done = subprocess.run(  # noqa: S603
            args, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-2000:]}")
    else:
        args = [
            "--url",
            url,
            "--secret",
            SECRET,
            "--out",
            str(out),
            "--duration",
            str(seconds),
            "--connections",
            str(conns),
        ]
        child = python_module("loadgen", "bench.loadgen", ["closed", *args], ctx.log_dir(NAME))
        child.start()
        code = child.proc.wait(timeout=seconds + 60) if child.proc else 1
        if code != 0:
            raise RuntimeError(f"loadgen failed ({code}):\n{child.tail()}")
    loaded: dict[str, Any] = orjson.loads(out.read_bytes())
    return loaded


def _round_figures(raw: dict[str, Any]) -> dict[str, float]:
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw["errors"].values())
    ok = raw["requests"] - raw["errors"]["status"]
    return {
        "requests": raw["requests"],
        "ok": ok,
        "errors": errors,
        "seconds": seconds,
        "rps": ok / seconds if seconds else 0.0,
        "p50_ms": raw["latency_us"]["p50"] / 1000,
        "p99_ms": raw["latency_us"]["p99"] / 1000,
    }


async def _server_round(
    ctx: Context,
    child: Child,
    port: int,
    tool: str,
    label: str,
    rnd: int,
    on_topic: Callable[[], Awaitable[int]] | None = None,
) -> dict[str, float]:
    """One server's round; with `on_topic`, also the records the measured
    window (not the warm-up) added to the commands topic."""
    url = f"http://127.0.0.1:{port}/webhooks/fanfare"
    child.start()
    before = after = 0
    try:
        await child.wait_http(f"http://127.0.0.1:{port}/healthz")
        out_dir = ctx.log_dir(NAME)
        _load(
            ctx, tool, url, ctx.sizes.ingest_warmup_seconds, out_dir / f"{label}-warmup-{rnd}.json"
        )
        before = await on_topic() if on_topic else 0
        raw = _load(ctx, tool, url, ctx.sizes.ingest_seconds, out_dir / f"{label}-{rnd}.json")
    finally:
        await child.stop()
        # Stopping lets the answers in flight at the window's end land.
        after = await on_topic() if on_topic else 0
    figures = _round_figures(raw)
    figures["on_topic"] = after - before
    if figures["errors"] > 0.01 * max(1, figures["requests"]):
        raise RuntimeError(f"{label}: {figures['errors']} errors of {figures['requests']}: {raw}")
    return figures


async def _records_on_topic(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(parts)
        return int(sum(ends.values()))
    finally:
        await consumer.stop()


def check_window(result: StageResult, receiver: list[dict[str, float]], connections: int) -> None:
    """Every 2xx of a measured window is on the topic, and nothing more than
    its answered requests, those that timed out or failed (the receiver may
    still have produced them), and those cut off at its end (at most one a
    connection)."""
    for rnd, r in enumerate(receiver):
        most = r["requests"] + r["errors"] + connections
        check(
            result,
            f"round {rnd}: 2xx <= records of the window <= requests + errors + connections",
            r["ok"] <= r["on_topic"] <= most,
            f"{r['ok']:.0f} 2xx, {r['on_topic']:.0f} records, {r['requests']:.0f} requests, "
            f"{r['errors']:.0f} errors",
        )


async def _rounds(
    ctx: Context, ns: Namespace, tool: str, rounds: int
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Rounds of the bare server and the receiver, which goes first
    alternating from round to round and from one repeat to the next."""
    bare: list[dict[str, float]] = []
    receiver: list[dict[str, float]] = []

    async def count() -> int:
        settings = ns.settings
        topic, bootstrap = settings.commands_topic, settings.kafka_bootstrap_servers
        return await _records_on_topic(bootstrap, topic, ctx.partitions)

    async def bare_round(rnd: int) -> None:
        port = free_port()
        args = ["--port", str(port)]
        child = python_module(f"bare-{rnd}", "bench.bare_server", args, ctx.log_dir(NAME))
        bare.append(await _server_round(ctx, child, port, tool, "bare", rnd))

    async def receiver_round(rnd: int) -> None:
        env = service_env(ns.settings)
        port = int(env["LISTEN_PORT"])
        child = worker_role(f"receiver-{rnd}", "receiver", env, ctx.log_dir(NAME), ctx.worker_root)
        receiver.append(await _server_round(ctx, child, port, tool, "receiver", rnd, count))

    for rnd in range(rounds):
        order = (bare_round, receiver_round)
        for step in order if (rnd + ctx.repeat_index) % 2 == 0 else reversed(order):
            await step(rnd)
    return bare, receiver


async def run(ctx: Context, result: StageResult, loadgen: str = "auto") -> None:
    tool = pick_loadgen(loadgen)
    rounds = 1 if ctx.smoke else 2
    async with fresh_namespace(ctx) as ns:
        bare, receiver = await _rounds(ctx, ns, tool, rounds)
    check_window(result, receiver, ctx.sizes.ingest_connections)
    result.details.update(
        loadgen=tool,
        connections=ctx.sizes.ingest_connections,
        seconds_per_round=ctx.sizes.ingest_seconds,
        rounds={"bare": bare, "receiver": receiver},
        accepted_2xx=sum(r["ok"] for r in receiver),
        records_of_measured_windows=sum(r["on_topic"] for r in receiver),
        server_processes={"receiver": 1, "bare": 1},
    )
    result.figures += _figures(ctx, tool, rounds, bare, receiver)


def _figures(
    ctx: Context,
    tool: str,
    rounds: int,
    bare: list[dict[str, float]],
    receiver: list[dict[str, float]],
) -> list[Figure]:
    def med(rows: list[dict[str, float]], key: str) -> float:
        return percentile([r[key] for r in rows], 50)

    rps, base = med(receiver, "rps"), med(bare, "rps")
    p50, bp50 = med(receiver, "p50_ms"), med(bare, "p50_ms")
    p99, bp99 = med(receiver, "p99_ms"), med(bare, "p99_ms")
    return [
        Figure(
            "webhooks/s",
            rps,
            "/s",
            baseline=base,
            baseline_name="bare aiohttp 200",
            ratio=rps / base if base else None,
            ceiling=base,
            ceiling_name="bare aiohttp 200",
            ceiling_share=rps / base if base else None,
            target=">= 0.5x bare",
            meets=bool(base and rps / base >= 0.5),
            note=f"{tool}, {ctx.sizes.ingest_connections} connections, median of {rounds}"
            + (
                "; the Python load generator caps the bare baseline: install wrk for a fair ratio"
                if tool == "python"
                else ""
            ),
        ),
        Figure(
            "latency p50",
            p50,
            "ms",
            baseline=bp50,
            baseline_name="bare aiohttp 200",
            ratio=p50 / bp50 if bp50 else None,
            note="at saturation",
        ),
        Figure(
            "latency p99",
            p99,
            "ms",
            baseline=bp99,
            baseline_name="bare aiohttp 200",
            ratio=p99 / bp99 if bp99 else None,
            note="at saturation",
        ),
        kafka_figure(ctx, "webhooks/s vs Kafka produce", rps, "producer"),
    ]
