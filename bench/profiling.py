"""Optional profile of a stage's service process (`--profile STAGE`): py-spy
attached by pid for as long as the process lives (idle samples included, so
waiting shows as `select`), collapsed stacks written next to the results and
summarised as the functions most often on the stack (inclusive) and at its
top (self); and the service's database sessions sampled from
pg_stat_activity, which says what the waiting was for."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


class Profiler:
    """`py-spy record --pid` of one process; stops when the process exits."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        self.out = out
        exe = py_spy()
        self.proc: subprocess.Popen[bytes] | None = None
        if exe is None:
            return
        self.log = out.with_suffix(".py-spy.log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(  # noqa: S603
                [
                    exe,
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--rate",
                    str(rate),
                    "--nonblocking",
                    "--idle",
                    "-o",
                    str(out),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def finish(self, timeout: float = 30.0) -> dict[str, Any] | None:
        """Call after the profiled process exited; returns the summary."""
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if not self.out.exists():
            return {"error": "py-spy wrote no profile", "log": str(self.log)}
        return summarise(self.out)


def _frame_name(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)" ; lines differ per sample
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    short = "/".join(Path(path).parts[-2:]) if path else ""
    return f"{name} ({short})"


def summarise(path: Path, top: int = 25) -> dict[str, Any]:
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";") if f]
        for name in set(frames):
            inclusive[name] += count
        if frames:
            self_time[frames[-1]] += count
            leaf_where = frames[-1].rpartition("(")[2].rstrip(")")
            modules[leaf_where.split("/")[0] or "?"] += count

    def pct(c: Counter[str]) -> list[list[Any]]:
        return [[name, round(100.0 * n / total, 1)] for name, n in c.most_common(top)]

    return {
        "samples": total,
        "file": str(path),
        "inclusive_pct": pct(inclusive),
        "self_pct": pct(self_time),
        "self_by_package_pct": pct(modules),
    }


@dataclass
class DbActivity:
    """What the service's database sessions were doing, sampled."""

    samples: int = 0
    by_session: dict[int, Counter[str]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        # The session that did the work: the one least often idle.
        busiest = max(
            self.by_session.values(),
            key=lambda c: sum(n for state, n in c.items() if state != "idle"),
            default=Counter[str](),
        )
        total = sum(busiest.values()) or 1
        return {
            "samples": self.samples,
            "sessions_seen": len(self.by_session),
            "busiest_session_states_pct": [
                [state, round(100.0 * n / total, 1)] for state, n in busiest.most_common(15)
            ],
            "meaning": "share of samples of the service's busiest database session: "
            "'active' = PostgreSQL executing a statement (CPU, or the wait event named), "
            "'idle in transaction' = inside the batch transaction, PostgreSQL waits for "
            "the client (its Python work between statements, and round trips), "
            "'idle' = no transaction open (the consumer reads Kafka, decodes, logs, "
            "commits offsets)",
        }


@contextlib.asynccontextmanager
async def db_activity(dsn: str, interval: float = 0.01) -> AsyncIterator[DbActivity]:
    """Samples pg_stat_activity for the service's sessions (every session in
    the stage's database that is not the benchmark's own)."""
    activity = DbActivity()
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "bench"})
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            rows = await conn.fetch(
                """SELECT pid, state, wait_event_type, wait_event FROM pg_stat_activity
                   WHERE datname = current_database() AND pid <> pg_backend_pid()
                     AND application_name NOT LIKE 'bench%'
                     AND backend_type = 'client backend'"""
            )
            activity.samples += 1
            for r in rows:
                state = r["state"] or "?"
                if state == "active":
                    wait = r["wait_event"]
                    state = f"active: {r['wait_event_type']}/{wait}" if wait else "active: CPU"
                activity.by_session.setdefault(r["pid"], Counter())[state] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    task = asyncio.create_task(loop())
    try:
        yield activity
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await task
        await conn.close()
