"""Draining a pre-filled commands topic: ONE `python -m worker consumer`
process against the naive baseline (bench/naive.py) on the same records,
one after the other, each from its own process start to every command
applied. Shared by the apply and hot-SKU stages.

Each side first applies an untimed setup part of the topic (stock, and for
the hot SKU the carts) in a run of its own; then the timed part is produced
while nothing consumes, and the timed run starts from a cold process, as
after a deploy or a consumer restart behind a backlog."""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from bench import naive
from bench.checks import check
from bench.core import Context, Namespace, StageResult, connect, create_pool, scalar
from bench.measure import Progress, final_oversell, oversell_watch, summary, wait_for_count
from bench.procs import Child, service_env, worker_role
from bench.profiling import DbActivity, Profiler, db_activity
from bench.workload import Record, check_valid, produce


@dataclass
class Side:
    """One drain (the service or the naive baseline) of the timed records."""

    seconds: float | None
    steady_seconds: float | None
    count: int
    progress: list[list[float]]
    oversell_samples: int
    oversold_samples: int
    oversell_worst: int
    oversell_final: int
    extra: dict[str, Any]

    @property
    def rate(self) -> float | None:
        return self.count / self.seconds if self.seconds else None

    @property
    def steady_rate(self) -> float | None:
        return self.count / self.steady_seconds if self.steady_seconds else None


@contextlib.asynccontextmanager
async def _nothing() -> AsyncIterator[DbActivity | None]:
    yield None


async def _inbox_count(pool: asyncpg.Pool, since: float | None) -> int:
    """Inbox rows: all of them, or those applied since a Unix time (when
    the tables were filled beforehand and counting them all is slow)."""
    if since is None:
        return int(await pool.fetchval("SELECT count(*) FROM inbox"))
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM inbox WHERE applied_at >= to_timestamp($1)", since
        )
    )


async def _run_service_consumer(
    ctx: Context,
    ns: Namespace,
    name: str,
    goal: int,
    timeout: float,
    watch: bool,
    profile: bool = False,
    since: float | None = None,
) -> tuple[Progress, dict[str, Any]]:
    env = service_env(ns.settings)
    child = worker_role(name, "consumer", env, ctx.log_dir(name.split("-")[0]), ctx.worker_root)
    pool = await create_pool(ns.database_url)
    assert pool is not None
    extra: dict[str, Any] = {}
    profiler: Profiler | None = None
    try:
        child.start()
        if profile:
            profiler = Profiler(child.pid, ctx.out_dir / f"profile-{name}.txt")
        if watch:
            async with (
                oversell_watch(ns.database_url, "stock") as w,
                db_activity(ns.database_url) if profile else _nothing() as activity,
            ):
                progress = await wait_for_count(
                    lambda: _inbox_count(pool, since),
                    goal,
                    child.started_at,
                    timeout,
                    alive=lambda: child.exited() is None,
                )
            extra["watch"] = w
            if activity is not None:
                extra["db_activity"] = activity.summary()
        else:
            progress = await wait_for_count(
                lambda: _inbox_count(pool, since),
                goal,
                child.started_at,
                timeout,
                alive=lambda: child.exited() is None,
            )
        if progress.reached_at is None:
            raise RuntimeError(
                f"{name}: {progress.samples[-1][1] if progress.samples else 0} of {goal} "
                f"commands applied within {timeout:.0f} s\n{child.tail()}"
            )
    finally:
        await child.stop()
        await pool.close()
    if profiler is not None:
        extra["profile"] = {"py_spy": profiler.finish(), "db": extra.pop("db_activity", None)}
    return progress, extra


async def _run_naive(
    ctx: Context, ns: Namespace, dsn: str, name: str, expect: int, timeout: float, watch: bool
) -> tuple[Child, list[dict[str, Any]], Any]:
    args = [
        sys.executable,
        "-m",
        "bench.naive",
        "--dsn",
        dsn,
        "--bootstrap",
        ns.settings.kafka_bootstrap_servers,
        "--topic",
        ns.settings.commands_topic,
        "--group",
        ns.settings.consumer_group + ".naive",
        "--expect",
        str(expect),
        "--timeout",
        str(timeout),
    ]
    child = Child(name, args, service_env(ns.settings), ctx.log_dir(name.split("-")[0]))
    watch_result = None
    try:
        child.start()
        if watch:
            async with oversell_watch(dsn, "inventory") as w:
                code = await child.wait_exit(timeout + 30)
            watch_result = w
        else:
            code = await child.wait_exit(timeout + 30)
    finally:
        await child.stop()
    lines = [
        orjson.loads(line)
        for line in child.log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    if code != 0 or not lines or not lines[-1].get("done"):
        raise RuntimeError(f"{name} did not finish (exit {code}):\n{child.tail()}")
    return child, lines, watch_result


async def drain_race(
    ctx: Context,
    ns: Namespace,
    naive_dsn: str,
    stage: str,
    setup: list[Record],
    timed: list[Record],
    timeout: float,
    profile: bool = False,
) -> tuple[Side, Side]:
    """Both sides drain the same records, the naive code into `naive_dsn`,
    an empty database the caller keeps for its checks."""
    check_valid(setup + timed)
    setup_seconds = await produce(ns.settings, setup)
    await _run_service_consumer(ctx, ns, f"{stage}-service-setup", len(setup), timeout, False)
    await naive.create_schema(naive_dsn)
    await _run_naive(ctx, ns, naive_dsn, f"{stage}-naive-setup", len(setup), timeout, False)
    produce_seconds = await produce(ns.settings, timed)
    # The service reads the timed records from the topic in its own group,
    # the naive code in another: either can go first. Odd repeats measure the
    # baseline first.
    if ctx.repeat_index % 2:
        baseline = await _naive_timed(ctx, ns, stage, naive_dsn, len(timed), timeout)
        service = await _service_timed(ctx, ns, stage, setup, timed, timeout, profile)
    else:
        service = await _service_timed(ctx, ns, stage, setup, timed, timeout, profile)
        baseline = await _naive_timed(ctx, ns, stage, naive_dsn, len(timed), timeout)
    service.extra["produce_seconds"] = {"setup": setup_seconds, "timed": produce_seconds}
    service.extra["order"] = "naive first" if ctx.repeat_index % 2 else "service first"
    return service, baseline


async def _service_timed(
    ctx: Context,
    ns: Namespace,
    stage: str,
    setup: list[Record],
    timed: list[Record],
    timeout: float,
    profile: bool,
    since: float | None = None,
) -> Side:
    before = 0 if since is not None else len(setup)
    progress, extra = await _run_service_consumer(
        ctx, ns, f"{stage}-service", before + len(timed), timeout, True, profile, since
    )
    timed_ids = [r.command_id for r in timed]
    first_applied = await _first_applied(ns.database_url, timed_ids)
    batches = await batch_timeline(ns.database_url, timed_ids, ctx.commit_timestamps)
    w = extra["watch"]
    return Side(
        seconds=progress.seconds,
        steady_seconds=(progress.reached_at - first_applied)
        if progress.reached_at and first_applied
        else None,
        count=len(timed),
        progress=[[t, max(0, n - before)] for t, n in progress.series()],
        oversell_samples=w.samples,
        oversold_samples=w.oversold_samples,
        oversell_worst=w.worst,
        oversell_final=await final_oversell(ns.database_url, "stock"),
        extra={"batches": batches, **({"profile": extra.get("profile")} if profile else {})},
    )


async def service_drain(
    ctx: Context,
    ns: Namespace,
    stage: str,
    setup: list[list[Record]],
    timed: list[Record],
    timeout: float,
    between: Callable[[], Awaitable[None]],
) -> Side:
    """The service alone drains the setup, part after part (commands of
    different keys are ordered only within a part), then `between` runs
    (e.g. fills the tables), then the service drains the timed records from
    a cold process; progress counts the inbox rows applied after `between`."""
    check_valid([r for part in setup for r in part] + timed)
    applied = 0
    for part in setup:
        await produce(ns.settings, part)
        applied += len(part)
        await _run_service_consumer(ctx, ns, f"{stage}-service-setup", applied, timeout, False)
    await between()
    since = float(await scalar(ns.database_url, "SELECT extract(epoch FROM now())"))
    await produce(ns.settings, timed)
    return await _service_timed(ctx, ns, stage, [], timed, timeout, False, since)


async def _naive_timed(
    ctx: Context, ns: Namespace, stage: str, naive_dsn: str, count: int, timeout: float
) -> Side:
    child, lines, nw = await _run_naive(ctx, ns, naive_dsn, f"{stage}-naive", count, timeout, True)
    end = lines[-1]
    first = next((ln["first"] for ln in lines if "first" in ln), None)
    return Side(
        seconds=end["t"] - child.started_at,
        steady_seconds=end["t"] - first if first else None,
        count=count,
        progress=[[round(ln["t"] - child.started_at, 4), ln["n"]] for ln in lines if "n" in ln],
        oversell_samples=nw.samples,
        oversold_samples=nw.oversold_samples,
        oversell_worst=nw.worst,
        oversell_final=await final_oversell(naive_dsn, "inventory"),
        extra={
            "outcomes": end.get("outcomes", {}),
            "holds": await scalar(
                naive_dsn, "SELECT count(*) FROM reservations WHERE status = 'active'"
            ),
        },
    )


async def _first_applied(dsn: str, command_ids: list[str]) -> float | None:
    """When the first timed command's batch started (inbox.applied_at, the
    batch transaction's start), as a Unix time; None if the column is gone."""
    conn = await connect(dsn)
    try:
        value = await conn.fetchval(
            "SELECT extract(epoch FROM min(applied_at)) FROM inbox "
            "WHERE command_id = ANY($1::uuid[])",
            command_ids,
        )
        return float(value) if value is not None else None
    except asyncpg.PostgresError:
        return None
    finally:
        await conn.close()


async def batch_timeline(dsn: str, command_ids: list[str], commit_ts: bool) -> dict[str, Any]:
    """Where a drain's time went, batch by batch, from the tables alone: the
    inbox rows of one batch share `applied_at` (now(), the transaction's
    start) and, with commit timestamps, the commit time of their xmin. So:
    batch sizes, time inside each transaction, and the gap between one
    commit and the next transaction's start (reading Kafka, decoding,
    committing offsets: everything the consumer does outside PostgreSQL)."""
    conn = await connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM applied_at)::float8 AS started, "
            + (
                "extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8"
                if commit_ts
                else "NULL::float8"
            )
            + " AS committed, count(*) AS n FROM inbox WHERE command_id = ANY($1::uuid[]) "
            "GROUP BY 1, 2 ORDER BY 1",
            command_ids,
        )
    except asyncpg.PostgresError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        await conn.close()
    sizes = [float(r["n"]) for r in rows]
    out: dict[str, Any] = {"batches": len(rows), "size": summary(sizes)}
    if rows and rows[0]["committed"] is not None:
        inside = [(r["committed"] - r["started"]) * 1000 for r in rows]
        gaps = [(b["started"] - a["committed"]) * 1000 for a, b in itertools.pairwise(rows)]
        span = (rows[-1]["committed"] - rows[0]["started"]) * 1000
        out.update(
            in_transaction_ms=summary(inside),
            between_batches_ms=summary(gaps),
            share_in_transaction=round(sum(inside) / span, 3) if span > 0 else None,
            commands_per_second_in_transaction=round(sum(sizes) / (sum(inside) / 1000), 1)
            if sum(inside) > 0
            else None,
        )
    return out


def side_json(side: Side) -> dict[str, Any]:
    return {
        "seconds": side.seconds,
        "rate": side.rate,
        "steady_seconds": side.steady_seconds,
        "steady_rate": side.steady_rate,
        "count": side.count,
        "oversell": {
            "samples": side.oversell_samples,
            "oversold_samples": side.oversold_samples,
            "worst": side.oversell_worst,
            "final_rows": side.oversell_final,
        },
        "progress": side.progress,
        **side.extra,
    }


def check_watch(result: StageResult, service: Side, naive: Side) -> None:
    """The oversell the watch sampled while each side drained, and at the end."""
    for name, side in (("service", service), ("naive", naive)):
        seen = side.oversold_samples + side.oversell_final
        check(
            result,
            f"{name}: no oversell sampled while draining",
            side.oversell_samples > 0 and seen == 0,
            f"{side.oversell_samples} samples, {side.oversold_samples} oversold, "
            f"{side.oversell_final} rows over at the end",
        )
