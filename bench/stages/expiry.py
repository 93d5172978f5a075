"""Stage 5, expiry lag: holds expiring within a bounded span (10,000 within
one minute), against `python -m worker serve` (the scheduler publishes expiry
commands, the consumer applies them). Lag = the wall-clock moment the hold's
units went back to stock minus its `expires_at`.

`reservations.ended_at` is the command's own time (= expires_at, by design),
so it says nothing about lag. The stock change and the row's status change
commit in one transaction; its commit time is read as
`pg_xact_commit_timestamp(xmin)` of the expired row (after the run, costing
the service nothing) where the server tracks commit timestamps, and the rows
are also polled every 20 ms for when they became visible as expired.

Experiences are configured with `experience.configure` (window 60 s, buffer
0) and admissions carry an `admittedAt` chosen so that `expires_at` =
admittedAt + 60 s falls evenly across the span, which starts once the setup
(carts, admissions) has had time to be applied."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.ceilings import commit_floor
from bench.checks import check, check_no_oversell, held_by_product
from bench.core import Context, Figure, StageResult, connect, create_pool, fresh_namespace
from bench.measure import summary, wait_for_count
from bench.procs import service_env, worker_role
from bench.workload import Builder, Record, check_valid, produce

NAME = "expiry"
TITLE = "Expiry lag: expires_at to stock given back, `worker serve`"
WINDOW_S = 60
POLL_S = 0.02


def workload(ctx: Context, first_expiry: datetime) -> tuple[list[Record], list[Record], list[str]]:
    s = ctx.sizes
    rng = random.Random(5)
    b = Builder()
    products = [f"sku-{b.tag}-{i}" for i in range(4)]
    experiences = [f"drop-{b.tag}-{i}" for i in range(8)]
    setup = [b.stock(p, 10_000_000) for p in products]
    setup += [b.configure(e, WINDOW_S, 0) for e in experiences]
    now = datetime.now(UTC)
    carts: list[Record] = []
    admissions: list[Record] = []
    offsets = [s.expiry_spread_seconds * i / s.expiry_holds for i in range(s.expiry_holds)]
    rng.shuffle(offsets)
    for n, offset in enumerate(offsets):
        exp = experiences[n % len(experiences)]
        expires = first_expiry + timedelta(seconds=offset)
        carts.append(b.cart(exp, f"c{n}", [(products[n % len(products)], 1)], now))
        admitted = expires - timedelta(seconds=WINDOW_S)
        admissions.append(b.admit(exp, f"c{n}", f"grant-{b.tag}-{n}", admitted))
    return setup, carts + admissions, products


async def _poll_expired(
    dsn: str,
    due: list[tuple[float, Any]],
    stop: asyncio.Event,
    seen: dict[Any, float],
    every: int,
) -> None:
    """When each due hold became visible as ended: every `every`-th one, at
    most the 2,000 oldest pending per poll (a cheap poll, even when behind)."""
    conn = await connect(dsn)
    try:
        i = 0
        while not stop.is_set():
            now = time.time()
            while i < len(due) and due[i][0] <= now:
                i += 1
            pending = [rid for _, rid in due[:i:every] if rid not in seen][:2000]
            if pending:
                rows = await conn.fetch(
                    "SELECT id FROM reservations WHERE id = ANY($1::uuid[]) AND status <> 'active'",
                    pending,
                )
                stamp = time.time()
                for r in rows:
                    seen[r["id"]] = stamp
            await asyncio.sleep(POLL_S)
    finally:
        await conn.close()


def _checks(
    result: StageResult,
    admissions: int,
    holds: int,
    not_expired: int,
    reserved_after: int,
    held: list[dict[str, Any]],
) -> None:
    """Every admission held, every hold expired, the stock all given back."""
    check(result, "one hold per admission", holds == admissions, f"{holds} of {admissions}")
    check(result, "every hold expired", not_expired == 0, f"{not_expired} not expired")
    check(result, "no unit still reserved", reserved_after == 0, f"{reserved_after} reserved")
    check_no_oversell(result, "service", held)


async def run(ctx: Context, result: StageResult) -> None:
    s = ctx.sizes
    # Time for the setup to be applied before the first expiry: generous,
    # from the apply rate measured earlier in this run when there is one.
    rate = ctx.measured.get("apply_rate") or 1000.0
    margin = 8.0 + 2 * s.expiry_holds / (0.5 * rate) + s.expiry_holds / 20_000
    first_expiry = datetime.now(UTC) + timedelta(seconds=margin)
    setup, holds, _products = workload(ctx, first_expiry)
    check_valid(setup + holds)
    log_dir = ctx.log_dir(NAME)
    async with fresh_namespace(ctx) as ns:
        env = service_env(ns.settings)
        serve = worker_role("serve", "serve", env, log_dir, ctx.worker_root)
        pool = await create_pool(ns.database_url)
        try:
            serve.start()
            await serve.wait_http(f"http://127.0.0.1:{env['LISTEN_PORT']}/healthz")
            # Stock first, applied before any admission: stock commands are
            # keyed by product, so they sit on other partitions than the
            # admissions and could otherwise be applied after them.
            await produce(ns.settings, setup)
            stocked = await wait_for_count(
                lambda: _count(pool, "SELECT count(*) FROM inbox"),
                len(setup),
                time.time(),
                300,
                alive=lambda: serve.exited() is None,
            )
            if stocked.reached_at is None:
                raise RuntimeError(f"stock not applied:\n{serve.tail()}")
            await produce(ns.settings, holds)
            ready = await wait_for_count(
                lambda: _count(pool, "SELECT count(*) FROM inbox"),
                len(setup) + len(holds),
                time.time(),
                margin + 600,
                alive=lambda: serve.exited() is None,
            )
            if ready.reached_at is None:
                raise RuntimeError(f"setup not applied:\n{serve.tail()}")
            setup_done = ready.reached_at
            rows = await pool.fetch(
                "SELECT id, extract(epoch FROM expires_at)::float8 AS due FROM reservations"
            )
            due = sorted((r["due"], r["id"]) for r in rows)
            seen: dict[Any, float] = {}
            stop = asyncio.Event()
            sample = 5 if ctx.commit_timestamps else 1
            watched = len(due[::sample])
            poller = asyncio.create_task(_poll_expired(ns.database_url, due, stop, seen, sample))
            last_due = due[-1][0] if due else time.time()
            deadline = max(time.time(), last_due) + 60
            while time.time() < deadline and len(seen) < watched:
                if serve.exited() is not None:
                    raise RuntimeError(f"serve exited:\n{serve.tail()}")
                await asyncio.sleep(0.1)
            stop.set()
            await poller
            for _ in range(300):  # the unsampled rest: up to 30 s more
                active = await pool.fetchval(
                    "SELECT count(*) FROM reservations WHERE status = 'active'"
                )
                if not active:
                    break
                await asyncio.sleep(0.1)
            expired = await pool.fetch(
                "SELECT id, status, extract(epoch FROM expires_at)::float8 AS due, "
                "extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 AS committed "
                "FROM reservations"
                if ctx.commit_timestamps
                else "SELECT id, status, extract(epoch FROM expires_at)::float8 AS due, "
                "NULL::float8 AS committed FROM reservations"
            )
            reserved_after = await pool.fetchval("SELECT coalesce(sum(reserved), 0) FROM stock")
            held = await held_by_product(ns.database_url, "stock")
        finally:
            await serve.stop()
            await pool.close()

    early = {r[1] for r in due if r[0] < setup_done}  # due before the setup was applied
    commit_lag = [
        (r["committed"] - r["due"]) * 1000
        for r in expired
        if r["committed"] is not None and r["status"] == "expired" and r["id"] not in early
    ]
    visible_lag = [(seen[rid] - d) * 1000 for d, rid in due if rid in seen and rid not in early]
    primary, method = (
        (commit_lag, "commit timestamp") if commit_lag else (visible_lag, "polled visibility")
    )
    not_expired = sum(1 for r in expired if r["status"] != "expired")
    _checks(result, s.expiry_holds, len(due), not_expired, int(reserved_after), held)
    result.details.update(
        holds=len(due),
        window_seconds=WINDOW_S,
        spread_seconds=s.expiry_spread_seconds,
        setup_margin_seconds=round(margin, 1),
        setup_applied_before_first_expiry=not early,
        due_before_setup_applied=len(early),
        not_expired=not_expired,
        reserved_after=int(reserved_after),
        method=method,
        lag_commit_ms=summary(commit_lag),
        lag_visible_ms=summary(visible_lag),
        visibility_poll_interval_ms=POLL_S * 1000,
        visibility_sample_every=sample,
        lag_ms=sorted(round(v, 3) for v in primary),
        lag_by_due=_by_due(expired, seen, due[0][0] if due else 0.0),
    )
    st = summary(primary)
    result.figures += [
        commit_floor(ctx, Figure("expiry lag p50", st.get("p50"), "ms", note=method)),
        Figure(
            "expiry lag p99",
            st.get("p99"),
            "ms",
            target="<= 1000 ms",
            meets=bool(st.get("p99") is not None and st["p99"] <= 1000),
            note=method,
        ),
    ]


async def _count(pool: asyncpg.Pool, sql: str) -> int:
    return int(await pool.fetchval(sql))


def _by_due(expired: list[Any], seen: dict[Any, float], first: float) -> list[list[float]]:
    """(seconds since the first expires_at, lag ms) for at most 2,000 holds:
    by commit timestamp where there is one, else as polled."""
    points = []
    for r in expired:
        done = r["committed"] if r["committed"] is not None else seen.get(r["id"])
        if done is not None and r["status"] == "expired":
            points.append((r["due"] - first, (done - r["due"]) * 1000))
    points.sort()
    step = max(1, len(points) // 2000)
    return [[round(t, 3), round(ms, 3)] for t, ms in points[::step]]
