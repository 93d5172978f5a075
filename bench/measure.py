"""Measuring helpers: percentiles, progress polling, the oversell watch."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.core import connect


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "min": min(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "p999": percentile(values, 99.9),
        "max": max(values),
        "mean": sum(values) / len(values),
    }


@dataclass
class Progress:
    """Samples of a growing count, and when it first reached its goal."""

    started: float  # wall clock the measurement counts from
    goal: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    reached_at: float | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.reached_at is None else self.reached_at - self.started

    def series(self) -> list[list[float]]:
        return [[round(t - self.started, 4), n] for t, n in self.samples]


async def wait_for_count(
    probe: Callable[[], Awaitable[int]],
    goal: int,
    started: float,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
    max_interval: float = 0.5,
    min_interval: float = 0.02,
) -> Progress:
    """Poll `probe` until it returns `goal`. The interval adapts: long while
    far from the goal (so polling costs the database little), short near it
    (so the end is seen within ~min_interval)."""
    progress = Progress(started=started, goal=goal)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = await probe()
        now = time.time()
        progress.samples.append((now, n))
        if n >= goal:
            progress.reached_at = now
            return progress
        if not alive():
            return progress
        rate = _rate(progress.samples)
        interval = max_interval
        if rate > 0:
            interval = min(max_interval, max(min_interval, (goal - n) / rate / 3))
        await asyncio.sleep(interval)
    return progress


def _rate(samples: list[tuple[float, int]]) -> float:
    if len(samples) < 2:
        return 0.0
    (t0, n0), (t1, n1) = samples[max(0, len(samples) - 5)], samples[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


@dataclass
class OversellWatch:
    """Samples `reserved + sold - on_hand > 0` over every stock row while a
    stage runs; records the worst seen and how many samples were taken."""

    samples: int = 0
    oversold_samples: int = 0
    worst: int = 0
    rows_seen: list[dict[str, Any]] = field(default_factory=list)


OVERSELL_SQL = {
    # The service's table and the naive baseline's (the guide's `inventory`).
    "stock": "SELECT product_id, on_hand, reserved, sold FROM stock "
    "WHERE reserved + sold - on_hand > 0",
    "inventory": "SELECT product_id, on_hand, reserved, sold FROM inventory "
    "WHERE reserved + sold - on_hand > 0",
}


@contextlib.asynccontextmanager
async def oversell_watch(
    dsn: str, table: str = "stock", interval: float = 0.1
) -> AsyncIterator[OversellWatch]:
    watch = OversellWatch()
    conn = await connect(dsn)
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            rows = await conn.fetch(OVERSELL_SQL[table])
            watch.samples += 1
            if rows:
                watch.oversold_samples += 1
                for r in rows:
                    over = r["reserved"] + r["sold"] - r["on_hand"]
                    watch.worst = max(watch.worst, over)
                    if len(watch.rows_seen) < 20:
                        watch.rows_seen.append(dict(r))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    task = asyncio.create_task(loop())
    try:
        yield watch
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await task
        await conn.close()


async def final_oversell(dsn: str, table: str = "stock") -> int:
    """Rows over their on-hand at the end (must be 0)."""
    conn = await connect(dsn)
    try:
        return len(await conn.fetch(OVERSELL_SQL[table]))
    finally:
        await conn.close()
