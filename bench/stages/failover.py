"""Stage 7, consumer failover: signed webhooks at a steady rate through a
receiver and two consumer processes; at `kill_at` one consumer is SIGKILLed
and started again `restart_after` seconds later under the same instance id
(what a crashed container in its pod does); at `term_at` the other one is
stopped with SIGTERM and started again at once (a clean restart); at
`gone_at` the first one is SIGKILLed for good (a lost node). Run twice
in the same invocation: with the service's settings (static membership,
1 s heartbeats, a clean stop leaves the group) and, as the baseline, with
what the consumers ran before (dynamic membership, aiokafka's 3 s
heartbeats), so the figures compare on the same machine and load.

The figures, for each fault, over the admissions acknowledged in its
window (from 2 s before the fault to 18 s after it, or to 2 s before the
next fault if that comes sooner):

- *longest partition stall*: for each partition, the longest time during
  which an acknowledged admission on it waited while nothing on that
  partition was applied. With c_k the commit times of the partition's
  admissions in order and a the earliest 2xx among those committed after
  c_k, a stall is c_{k+1} - max(c_k, a). In steady state it is the time
  from an admission's 2xx to the next batch's commit: a batch or so.
- *2xx to applied p99*: from the webhook's 2xx (as the sender saw it) to
  the commit of the transaction that created its hold
  (`pg_xact_commit_timestamp(xmin)`, as in the end-to-end stage).

Every request goes to 127.0.0.1; load, run time and waits are bounded."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.core import Context, Figure, StageResult, create_pool, fresh_namespace
from bench.measure import percentile, summary
from bench.procs import SECRET, Child, free_port, python_module, service_env, worker_role
from bench.workload import Builder, check_valid, produce
from worker.adapters.kafka import _key_hash
from worker.domain import ids

NAME = "failover"
TITLE = "Consumer failover: SIGKILL + restart, SIGTERM + restart, under steady load"
WINDOW_BEFORE_S = 2.0
WINDOW_AFTER_S = 18.0
TARGET_S = 15.0


@dataclass(frozen=True)
class Variant:
    name: str
    static: bool
    env: dict[str, str]


# What the consumers ran with before this stage existed: no instance id,
# aiokafka's default heartbeat (the session timeout was 10 s then too).
BASELINE = Variant(
    "dynamic membership, 3 s heartbeats (before)",
    static=False,
    env={"CONSUMER_HEARTBEAT_INTERVAL_MS": "3000", "CONSUMER_SESSION_TIMEOUT_MS": "10000"},
)
SERVICE = Variant("static membership, 1 s heartbeats, leave on SIGTERM", static=True, env={})


def _experiences(tag: str, partitions: int, per_partition: int = 2) -> list[str]:
    """Experience ids that put load on every partition (keys hash like the
    service's producers), so every partition's stall is measured."""
    chosen: dict[int, list[str]] = {p: [] for p in range(partitions)}
    n = 0
    while any(len(v) < per_partition for v in chosen.values()) and n < 100_000:
        name = f"drop-{tag}-{n}"
        n += 1
        part = _key_hash(name.encode()) % partitions
        if len(chosen[part]) < per_partition:
            chosen[part].append(name)
    return [e for p in sorted(chosen) for e in chosen[p]]


async def run(ctx: Context, result: StageResult) -> None:
    s = ctx.sizes
    variants = [SERVICE] if ctx.smoke else [SERVICE, BASELINE]
    runs: dict[str, dict[str, Any]] = {}
    for variant in variants:
        runs[variant.name] = await _run_variant(ctx, variant)
    result.details.update(
        rate_target=s.failover_rate,
        seconds=s.failover_seconds,
        kill_at_s=s.failover_kill_at,
        restart_after_s=s.failover_restart_after,
        term_at_s=s.failover_term_at,
        gone_at_s=s.failover_gone_at,
        window_s=[-WINDOW_BEFORE_S, WINDOW_AFTER_S],
        variants=runs,
    )
    ours = runs[SERVICE.name]
    base = runs.get(BASELINE.name)
    failed = [name for name, r in runs.items() if r["accepted"] < r["planned"] or r["missing"]]
    if failed:
        result.status = "failed"
        result.reason = "; ".join(
            f"{n}: {runs[n]['planned'] - runs[n]['accepted']} not accepted, "
            f"{runs[n]['missing']} accepted holds never committed"
            for n in failed
        )

    def fig(name: str, fault: str, key: str, target: bool) -> Figure:
        value = ours[fault][key]
        baseline = base[fault][key] if base else None
        return Figure(
            name,
            value,
            "s",
            baseline=baseline,
            baseline_name=BASELINE.name if base else None,
            ratio=(baseline / value) if baseline and value else None,
            target=f"<= {TARGET_S:.0f} s" if target else "one batch (steady stall)",
            # A clean restart should cost no more than a partition waits in
            # steady state for its next batch.
            meets=(value is not None and value <= TARGET_S)
            if target
            else (value is not None and value <= ours["steady"]["longest_stall_s"]),
        )

    result.figures += [
        fig("SIGKILL: longest partition stall", "sigkill", "longest_stall_s", True),
        fig("SIGKILL: 2xx to applied p99", "sigkill", "p99_s", True),
        fig("SIGKILL, no restart: longest partition stall", "gone", "longest_stall_s", True),
        fig("SIGTERM: longest partition stall", "sigterm", "longest_stall_s", False),
        fig("SIGTERM: 2xx to applied p99", "sigterm", "p99_s", False),
        Figure("steady: longest partition stall", ours["steady"]["longest_stall_s"], "s"),
    ]


async def _run_variant(ctx: Context, variant: Variant) -> dict[str, Any]:
    s = ctx.sizes
    count = int(s.failover_rate * s.failover_seconds)
    b = Builder()
    products = [f"sku-{b.tag}-{i}" for i in range(16)]
    experiences = _experiences(b.tag, ctx.partitions)
    now = datetime.now(UTC)
    setup = [b.stock(p, 10_000_000) for p in products]
    plan: list[list[str]] = []
    for n in range(count):
        exp = experiences[n % len(experiences)]
        consumer = f"c{n}"
        setup.append(b.cart(exp, consumer, [(products[n % len(products)], 1)], now))
        plan.append([exp, consumer, f"grant-{b.tag}-{n}"])
    digests = [ids.grant_digest(g) for _, _, g in plan]
    partition_of = [_key_hash(exp.encode()) % ctx.partitions for exp, _, _ in plan]
    check_valid(setup)
    label = "static" if variant.static else "dynamic"
    # One folder per run: with --repeat every run's figures.json is kept.
    log_dir = ctx.log_dir(f"{NAME}-{label}-{time.strftime('%H%M%S')}")
    plan_path = log_dir / "plan.json"
    plan_path.write_bytes(orjson.dumps(plan))
    out_path = log_dir / "loadgen.json"
    timeline: dict[str, float] = {}

    async with fresh_namespace(ctx) as ns:
        env = service_env(ns.settings, **variant.env)
        children: list[Child] = []

        def start_consumer(member: str, generation: int) -> Child:
            extra = {"OPS_PORT": str(free_port())}
            if variant.static:
                extra["CONSUMER_INSTANCE_ID"] = f"{ns.settings.consumer_group}-{member}"
            child = worker_role(
                f"consumer-{member}-{generation}",
                "consumer",
                dict(env, **extra),
                log_dir,
                ctx.worker_root,
            )
            child.start()
            children.append(child)
            return child

        receiver = worker_role(
            "receiver", "receiver", dict(env, OPS_PORT=str(free_port())), log_dir, ctx.worker_root
        )
        pool = await create_pool(ns.database_url)
        try:
            receiver.start()
            children.append(receiver)
            a = start_consumer("a", 1)
            bb = start_consumer("b", 1)
            port = int(env["LISTEN_PORT"])
            await receiver.wait_http(f"http://127.0.0.1:{port}/healthz")
            await produce(ns.settings, setup)
            await _wait(
                lambda: pool.fetchval("SELECT count(*) >= $1 FROM inbox", len(setup)),
                600,
                children,
                "setup not applied",
            )
            # Both members must hold partitions before the clock starts.
            await _wait(
                lambda: _both_assigned([a, bb]), 60, children, "consumers never both assigned"
            )
            start_at = time.time() + 2.0
            timeline["start"] = start_at
            loadgen = python_module(
                "loadgen",
                "bench.loadgen",
                [
                    "open",
                    "--url",
                    f"http://127.0.0.1:{port}/webhooks/fanfare",
                    "--secret",
                    SECRET,
                    "--out",
                    str(out_path),
                    "--duration",
                    str(s.failover_seconds),
                    "--rate",
                    str(s.failover_rate),
                    "--plan",
                    str(plan_path),
                    "--start-at",
                    str(start_at),
                    "--connections",
                    "256",
                ],
                log_dir,
            )
            loadgen.start()
            await _sleep_until(start_at + s.failover_kill_at)
            assert a.proc is not None
            a.proc.send_signal(signal.SIGKILL)
            timeline["sigkill"] = time.time()
            await a.wait_exit(30)
            await _sleep_until(timeline["sigkill"] + s.failover_restart_after)
            timeline["sigkill_restart"] = time.time()
            a = start_consumer("a", 2)
            await _sleep_until(start_at + s.failover_term_at)
            timeline["sigterm"] = time.time()
            await bb.stop(grace=30)
            timeline["sigterm_exited"] = time.time()
            bb = start_consumer("b", 2)
            await _sleep_until(start_at + s.failover_gone_at)
            assert a.proc is not None
            a.proc.send_signal(signal.SIGKILL)
            timeline["gone"] = time.time()
            await a.wait_exit(30)
            code = await loadgen.wait_exit(s.failover_seconds + 120)
            if code != 0:
                raise RuntimeError(f"loadgen failed ({code}):\n{loadgen.tail()}")
            sent: dict[str, Any] = orjson.loads(out_path.read_bytes())
            accepted = [r for r in sent["rows"] if 200 <= r[4] < 300]
            wanted = [digests[r[0]] for r in accepted]
            await _wait(
                lambda: pool.fetchval(
                    "SELECT count(DISTINCT admission_grant) >= $2 FROM reservations "
                    "WHERE admission_grant = ANY($1::text[])",
                    wanted,
                    len(wanted),
                ),
                120,
                children,
                "accepted holds not all committed",
                fail=False,
            )
            # Without commit timestamps (a server not started by the
            # benchmark), the inbox row's applied_at: the batch
            # transaction's start, early by at most one batch.
            applied = (
                "min(extract(epoch FROM pg_xact_commit_timestamp(r.xmin)))"
                if ctx.commit_timestamps
                else "min(extract(epoch FROM i.applied_at))"
            )
            rows = await pool.fetch(
                f"SELECT r.admission_grant, {applied}::float8 AS committed "
                "FROM reservations r JOIN admissions a USING (admission_grant) "
                "JOIN inbox i ON i.command_id = a.command_id "
                "WHERE r.admission_grant = ANY($1::text[]) GROUP BY r.admission_grant",
                wanted,
            )
        finally:
            for child in reversed(children):
                await child.stop()
            await pool.close()

    commits = {r["admission_grant"]: r["committed"] for r in rows}
    samples = [
        (partition_of[r[0]], r[3], commits[digests[r[0]]])
        for r in accepted
        if digests[r[0]] in commits
    ]
    figures = analyse(samples, timeline, ctx.partitions, s.failover_kill_at)
    figures.update(
        planned=sent["planned"],
        accepted=len(accepted),
        missing=len(accepted) - len(samples),
        achieved_rate=_rate(sent["rows"]),
        timeline={k: round(v - start_at, 3) for k, v in timeline.items()},
        rebalances=_rebalances(log_dir),
        sigkill_restart=_startup(log_dir / "consumer-a-2.log", timeline["sigkill_restart"]),
        sigterm_restart=_startup(log_dir / "consumer-b-2.log", timeline["sigterm_exited"]),
        method="commit timestamp" if ctx.commit_timestamps else "inbox applied_at",
    )
    (log_dir / "figures.json").write_text(json.dumps(figures, indent=2))
    return figures


def analyse(
    samples: list[tuple[int, float, float]],
    timeline: dict[str, float],
    partitions: int,
    kill_at: float,
) -> dict[str, Any]:
    """(partition, 2xx time, commit time) per admission -> stalls and
    latencies per fault window; see the module's docstring."""
    stalls: list[tuple[float, float, int]] = []  # (start, length, partition)
    for p in range(partitions):
        mine = sorted((c, a) for part, a, c in samples if part == p)
        if not mine:
            continue
        commit_times = sorted({c for c, _ in mine})
        # The earliest 2xx among the admissions committed after each commit.
        earliest_after: dict[float, float] = {}
        pending = float("inf")
        for c, a in reversed(mine):
            pending = min(pending, a)
            earliest_after[c] = pending
        for before, after in itertools.pairwise(commit_times):
            waited_from = max(before, earliest_after[after])
            if after > waited_from:
                stalls.append((waited_from, after - waited_from, p))

    def window(at: float, next_fault: float | None = None) -> dict[str, Any]:
        # Up to 18 s after the fault, never into the next one's window.
        lo, hi = at - WINDOW_BEFORE_S, at + WINDOW_AFTER_S
        if next_fault is not None:
            hi = min(hi, next_fault - WINDOW_BEFORE_S)
        latencies = sorted(c - a for _, a, c in samples if lo <= a < hi)
        inside = [st for st in stalls if lo <= st[0] < hi]
        worst = max(inside, default=None, key=lambda st: st[1])
        per_partition: dict[int, float] = {}
        for _start, length, p in inside:
            per_partition[p] = max(per_partition.get(p, 0.0), length)
        return {
            "admissions": len(latencies),
            "longest_stall_s": round(worst[1], 3) if worst else None,
            "longest_stall_partition": worst[2] if worst else None,
            "longest_stall_from_s": round(worst[0] - at, 3) if worst else None,
            "stall_by_partition_s": {str(k): round(v, 3) for k, v in sorted(per_partition.items())},
            "p50_s": round(percentile(latencies, 50), 3) if latencies else None,
            "p99_s": round(percentile(latencies, 99), 3) if latencies else None,
            "max_s": round(latencies[-1], 3) if latencies else None,
        }

    start = timeline["start"]
    steady_lo, steady_hi = start + 3.0, start + kill_at - WINDOW_BEFORE_S
    steady_lat = sorted(c - a for _, a, c in samples if steady_lo <= a < steady_hi)
    steady_stalls = [st[1] for st in stalls if steady_lo <= st[0] < steady_hi]
    return {
        "steady": {
            "admissions": len(steady_lat),
            "longest_stall_s": round(max(steady_stalls, default=0.0), 3),
            "latency_s": {k: round(v, 4) for k, v in summary(steady_lat).items()},
        },
        "sigkill": window(timeline["sigkill"], timeline["sigterm"]),
        "sigterm": window(timeline["sigterm"], timeline["gone"]),
        "gone": window(timeline["gone"]),
    }


def _rate(rows: list[list[Any]]) -> float | None:
    if not rows:
        return None
    span = max(r[3] for r in rows) - min(r[2] for r in rows)
    return round(len(rows) / span, 1) if span else None


def _startup(path: Path, spawned: float) -> dict[str, float | None]:
    """Seconds from spawning a restarted consumer to its roles running, to
    its first assignment and to its first applied batch: where a restart's
    stall goes."""
    marks: dict[str, float | None] = {
        "roles_started": None,
        "partitions_assigned": None,
        "batch_applied": None,
    }
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            event = entry.get("event") if isinstance(entry, dict) else None
            if event in marks and marks[event] is None:
                if event == "partitions_assigned" and not entry.get("partitions"):
                    continue
                at = datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00"))
                marks[event] = round(at.timestamp() - spawned, 3)
    return marks


def _rebalances(log_dir: Path) -> dict[str, int]:
    """Per consumer process, how often it had partitions assigned: a
    restart that reclaims its static membership leaves the other member's
    count unchanged."""
    counts: dict[str, int] = {}
    for path in sorted(log_dir.glob("consumer-*.log")):
        counts[path.stem] = path.read_text(errors="replace").count('"partitions_assigned"')
    return counts


async def _both_assigned(children: list[Child]) -> bool:
    return all(_assigned(c.log_path) for c in children)


def _assigned(path: Path) -> bool:
    if not path.exists():
        return False
    for line in path.read_text(errors="replace").splitlines():
        if "partitions_assigned" not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("partitions"):
            return True
    return False


async def _sleep_until(at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.time()))


async def _wait(
    probe: Callable[[], Awaitable[Any]],
    timeout: float,
    children: list[Child],
    what: str,
    fail: bool = True,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await probe():
            return
        dead = [c for c in children if c.exited() not in (None, 0, -signal.SIGKILL)]
        if dead:
            raise RuntimeError(f"{dead[0].name} exited:\n{dead[0].tail()}")
        await asyncio.sleep(0.2)
    if fail:
        raise RuntimeError(f"{what} within {timeout:.0f} s")
