"""Stage 4, end to end: webhook accepted (the 2xx, as the sender sees it) to
hold committed, at a steady rate for a bounded time, against the roles
as deployed (deploy/k8s, compose): `python -m worker receiver`, `consumer`,
`relay` and `scheduler`, one process each. (One `serve` process running
every role saturates a core at 1,000 webhooks/s: the receiver and the
consumer then queue behind each other, and the figure measures the queue.)

When is a hold committed? Not `reservations.created_at` (the admission's own
time) and not the outbox row's `created_at` (`now()`, which PostgreSQL fixes
at the START of the batch transaction, so it reads early by the batch's
duration and can even precede the 2xx), nor an event's arrival on the events
topic (that adds the relay's polling and a produce: late). The honest clock
is the commit itself: on a server with `track_commit_timestamp = on` (the
benchmark's own) `pg_xact_commit_timestamp(xmin)` of the reservation row is
the commit time of the transaction that created it, read after the run,
costing the service nothing. As a cross-check, and as the figure on a server
without commit timestamps, the benchmark also polls for the rows every few
milliseconds and records when each became visible (later than the commit by
at most the poll interval plus a query)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from bench.ceilings import commit_floor
from bench.checks import check
from bench.core import (
    Context,
    Figure,
    Namespace,
    StageResult,
    connect,
    create_pool,
    fresh_namespace,
)
from bench.measure import summary, wait_for_count
from bench.procs import SECRET, Child, free_port, python_module, service_env, worker_role
from bench.profiling import Profiler
from bench.workload import Builder, Record, check_valid, produce
from worker.domain import ids

NAME = "e2e"
TITLE = "End to end: webhook 2xx to hold committed, steady rate, one process per role"
ROLES = ("receiver", "consumer", "relay", "scheduler")
POLL_S = 0.01
MAX_PENDING = 2000


async def _poll_visible(
    dsn: str,
    plan_digests: list[str],
    start_at: float,
    rate: float,
    stop: asyncio.Event,
    seen: dict[str, float],
    every: int,
) -> int:
    """Record when each admission's hold became visible to a reader: every
    `every`-th one, at most the oldest MAX_PENDING per poll, so the poll stays
    cheap for the database even when the service falls behind."""
    conn = await connect(dsn)
    polls = 0
    try:
        while not stop.is_set():
            now = time.time()
            due = min(len(plan_digests), max(0, int((now - start_at) * rate) + 1))
            pending = [d for d in plan_digests[:due:every] if d not in seen][:MAX_PENDING]
            if pending:
                rows = await conn.fetch(
                    "SELECT DISTINCT admission_grant FROM reservations "
                    "WHERE admission_grant = ANY($1::text[])",
                    pending,
                )
                stamp = time.time()
                for r in rows:
                    seen[r["admission_grant"]] = stamp
                polls += 1
            await asyncio.sleep(POLL_S)
    finally:
        await conn.close()
    return polls


@dataclass
class _Observed:
    """What one run of the load saw: the loadgen's rows, and when each
    accepted hold was committed (and seen by the poller)."""

    digests: list[str]
    sent: dict[str, Any]
    accepted: set[str]
    watched: set[str]
    seen: dict[str, float]
    commits: dict[str, float]
    start_at: float
    polls: int


@dataclass(frozen=True)
class Load:
    """The offered load of one run: webhooks/s for a number of seconds; its
    logs go under `logs/<logs>/`."""

    rate: float
    seconds: float
    logs: str = NAME


def _workload(load: Load) -> tuple[list[Record], list[list[str]]]:
    """Stock and one cart per consumer (set up untimed), and the plan of
    admissions the load generator sends: (experience, consumer, grant)."""
    b = Builder()
    products = [f"sku-{b.tag}-{i}" for i in range(16)]
    experiences = [f"drop-{b.tag}-{i}" for i in range(8)]
    now = datetime.now(UTC)
    setup = [b.stock(p, 10_000_000) for p in products]
    plan: list[list[str]] = []
    for n in range(int(load.rate * load.seconds)):
        exp = experiences[n % len(experiences)]
        setup.append(b.cart(exp, f"c{n}", [(products[n % len(products)], 1)], now))
        plan.append([exp, f"c{n}", f"grant-{b.tag}-{n}"])
    check_valid(setup)
    return setup, plan


def _loadgen(ctx: Context, load: Load, port: int, plan_path: Path, start_at: float) -> Child:
    logs = ctx.log_dir(load.logs)
    args = [
        *("open", "--url", f"http://127.0.0.1:{port}/webhooks/fanfare", "--secret", SECRET),
        *("--out", str(logs / "loadgen.json"), "--duration", str(load.seconds)),
        *("--rate", str(load.rate), "--plan", str(plan_path), "--start-at", str(start_at)),
        *("--connections", "512"),
    ]
    return python_module("loadgen", "bench.loadgen", args, logs)


async def run(ctx: Context, result: StageResult) -> None:
    await measure(ctx, result, Load(ctx.sizes.e2e_rate, ctx.sizes.e2e_seconds))


async def measure(ctx: Context, result: StageResult, load: Load) -> None:
    """One run at the offered load, its figures and checks into `result`."""
    setup, plan = _workload(load)
    plan_path = ctx.log_dir(load.logs) / "plan.json"
    plan_path.write_bytes(orjson.dumps(plan))
    digests = [ids.grant_digest(g) for _, _, g in plan]
    async with fresh_namespace(ctx) as ns:
        env = service_env(ns.settings)
        roles = {
            role: worker_role(
                role,
                role,
                dict(env, OPS_PORT=str(free_port())),
                ctx.log_dir(load.logs),
                ctx.worker_root,
            )
            for role in ROLES
        }
        pool = await create_pool(ns.database_url)
        try:
            for child in roles.values():
                child.start()
            port = int(env["LISTEN_PORT"])
            await roles["receiver"].wait_http(f"http://127.0.0.1:{port}/healthz")
            await _set_up(ns, pool, roles, setup)
            observed = await _load(ctx, load, ns, pool, roles, port, plan_path, digests, result)
        finally:
            for child in reversed(roles.values()):
                await child.stop()
            await pool.close()
    _analyse(result, ctx, load, observed)


async def _set_up(
    ns: Namespace, pool: asyncpg.Pool, roles: dict[str, Child], setup: list[Record]
) -> None:
    await produce(ns.settings, setup)
    ready = await wait_for_count(
        lambda: _count(pool, "SELECT count(*) FROM inbox"),
        len(setup),
        time.time(),
        600,
        alive=lambda: all(child.exited() is None for child in roles.values()),
    )
    if ready.reached_at is None:
        raise RuntimeError(f"setup not applied:\n{roles['consumer'].tail()}")
    await asyncio.sleep(1.0)  # let the relay publish the setup's events


async def _load(
    ctx: Context,
    load: Load,
    ns: Namespace,
    pool: asyncpg.Pool,
    roles: dict[str, Child],
    port: int,
    plan_path: Path,
    digests: list[str],
    result: StageResult,
) -> _Observed:
    """The timed load, the poller beside it, then the commit times."""
    start_at = time.time() + 2.0
    loadgen = _loadgen(ctx, load, port, plan_path, start_at)
    seen: dict[str, float] = {}
    stop = asyncio.Event()
    # With commit timestamps the poll is only a cross-check: a tenth of the
    # holds is enough, and the database is spared.
    sample = 10 if ctx.commit_timestamps else 1
    watched = set(digests[::sample])
    poller = asyncio.create_task(
        _poll_visible(ns.database_url, digests, start_at, load.rate, stop, seen, sample)
    )
    profiler = (
        Profiler(roles["consumer"].pid, ctx.out_dir / "profile-e2e-consumer.txt")
        if ctx.profile == NAME
        else None
    )
    loadgen.start()
    code = await loadgen.wait_exit(load.seconds + 120)
    if code != 0:
        raise RuntimeError(f"loadgen failed ({code}):\n{loadgen.tail()}")
    sent: dict[str, Any] = orjson.loads((ctx.log_dir(load.logs) / "loadgen.json").read_bytes())
    accepted = {digests[r[0]] for r in sent["rows"] if 200 <= r[4] < 300}
    await _until_seen(accepted & watched, seen)
    stop.set()
    polls = await poller
    commits = {}
    if ctx.commit_timestamps:
        # The poller watched a sample: the last holds may commit after it saw
        # its own. Up to 120 s for every accepted one, as for the sample.
        grants = list(accepted)
        await wait_for_count(lambda: _held(pool, grants), len(grants), time.time(), 120)
        commits = await _commit_times(pool, accepted)
    if profiler is not None:
        result.details["profile"] = {"py_spy": profiler.finish()}
    return _Observed(digests, sent, accepted, watched, seen, commits, start_at, polls)


async def _until_seen(wanted: set[str], seen: dict[str, float]) -> None:
    for _ in range(2400):  # up to 120 s for the last holds to show
        if wanted <= set(seen):
            return
        await asyncio.sleep(0.05)


async def _held(pool: asyncpg.Pool, grants: list[str]) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(DISTINCT admission_grant) FROM reservations "
            "WHERE admission_grant = ANY($1::text[])",
            grants,
        )
    )


async def _commit_times(pool: asyncpg.Pool, accepted: set[str]) -> dict[str, float]:
    rows = await pool.fetch(
        "SELECT admission_grant, "
        "extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 AS committed "
        "FROM reservations WHERE admission_grant = ANY($1::text[])",
        list(accepted),
    )
    return {r["admission_grant"]: r["committed"] for r in rows}


def _intervals(
    done: dict[str, float], answered: dict[str, list[Any]], accepted: set[str], column: int
) -> tuple[list[float], int]:
    """ms from a loadgen timestamp (2 the send, 3 the 2xx) to each accepted
    hold's commit; the negative ones are counted and left out, not kept."""
    all_ms = [(done[d] - answered[d][column]) * 1000 for d in accepted if d in done]
    kept = [v for v in all_ms if v >= 0]
    return kept, len(all_ms) - len(kept)


def _analyse(result: StageResult, ctx: Context, load: Load, o: _Observed) -> None:
    sent, accepted, seen, commits = o.sent, o.accepted, o.seen, o.commits
    rows = sent["rows"]
    answered = {o.digests[r[0]]: r for r in rows}
    done, method = (commits, "commit timestamp") if commits else (seen, "polled visibility")
    primary, negative_2xx = _intervals(done, answered, accepted, 3)
    from_send, negative_send = _intervals(done, answered, accepted, 2)
    visible_ms, _ = _intervals(seen, answered, accepted, 3)
    missing = accepted - set(commits) if commits else (accepted & o.watched) - set(seen)
    sends = sorted(r[2] for r in rows)
    achieved = (len(sends) - 1) / (sends[-1] - sends[0]) if len(sends) > 1 else None
    result.details.update(
        rate_target=load.rate,
        seconds=load.seconds,
        planned=sent["planned"],
        accepted=len(accepted),
        failed=sent["failed"],
        achieved_rate=achieved,
        send_lateness_ms=summary([(r[2] - r[1]) * 1000 for r in rows]),
        method=method,
        webhook_2xx_ms=summary([(r[3] - r[2]) * 1000 for r in rows if 200 <= r[4] < 300]),
        accepted_to_commit_ms=summary(primary),
        send_to_commit_ms=summary(from_send),
        accepted_to_visible_ms=summary(visible_ms),
        negative_intervals={"2xx_to_commit": negative_2xx, "send_to_commit": negative_send},
        visibility_poll_interval_ms=POLL_S * 1000,
        visibility_polls=o.polls,
        accepted_holds_missing=len(missing),
        latencies_ms=sorted(round(v, 3) for v in primary),
        latency_over_time=_over_time(answered, done, o.start_at),
    )
    _checks(result, load.rate, achieved, sent, accepted, missing, negative_send)
    _figures(result, load.rate, achieved, primary, from_send, method, negative_2xx)
    for name in ("2xx to hold p50", "send to hold p50"):
        figure = result.figure(name)
        if figure is not None:
            commit_floor(ctx, figure)


def _checks(
    result: StageResult,
    rate: float,
    achieved: float | None,
    sent: dict[str, Any],
    accepted: set[str],
    missing: set[str],
    negative_send: int,
) -> None:
    failed = sent["planned"] - len(accepted)
    check(result, "every webhook accepted", failed == 0, f"{failed} not accepted")
    check(result, "every accepted hold committed", not missing, f"{len(missing)} never seen")
    # A commit cannot precede its webhook's send: if one does, the clocks
    # compared are not the ones this stage thinks they are.
    check(result, "no commit before its send", negative_send == 0, f"{negative_send} did")
    # Under 90% of the asked rate the figures are marked (see _figures);
    # under half of it they describe another load altogether.
    check(
        result,
        "achieved at least half the asked rate",
        achieved is not None and achieved >= 0.5 * rate,
        f"asked {rate:.0f}/s, sent at {achieved or 0:.0f}/s",
    )


def _figures(
    result: StageResult,
    rate: float,
    achieved: float | None,
    primary: list[float],
    from_send: list[float],
    method: str,
    negative_2xx: int,
) -> None:
    st, sst = summary(primary), summary(from_send)
    short = achieved is None or achieved < 0.9 * rate
    note = method + (f"; RATE NOT REACHED ({achieved or 0:.0f}/s)" if short else "")
    if negative_2xx:
        note += f"; {negative_2xx} commits before their 2xx left out"
    result.figures += [
        Figure("2xx to hold p50", st.get("p50"), "ms", note=note),
        Figure(
            "2xx to hold p99",
            st.get("p99"),
            "ms",
            target="<= 50 ms",
            meets=bool(st.get("p99") is not None and st["p99"] <= 50 and not short),
            note=note,
        ),
        Figure(
            "webhook 2xx p99",
            result.details["webhook_2xx_ms"].get("p99"),
            "ms",
            note=f"send to 2xx at {rate:.0f}/s",
        ),
        Figure("send to hold p50", sst.get("p50"), "ms", note=note),
        Figure("send to hold p99", sst.get("p99"), "ms", note=note),
        Figure("achieved rate", achieved, "/s", target=f">= {0.9 * rate:.0f}/s", meets=not short),
    ]


async def _count(pool: asyncpg.Pool, sql: str) -> int:
    return int(await pool.fetchval(sql))


def _over_time(
    answered: dict[str, list[Any]], done: dict[str, float], start_at: float
) -> list[list[float]]:
    """(seconds since the first send, ms from 2xx to hold) for at most 2,000
    holds, in send order: shows whether the service kept up or fell behind."""
    points = sorted(
        (row[1] - start_at, (done[d] - row[3]) * 1000) for d, row in answered.items() if d in done
    )
    step = max(1, len(points) // 2000)
    return [[round(t, 3), round(ms, 3)] for t, ms in points[::step]]
