"""The PostgreSQL and Kafka the benchmark runs against.

Like tests/stack.py: DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS are used as given;
otherwise deploy/local/*.sh start a throwaway server and a single-node KRaft
broker of the benchmark's own (STACK_DIR=.stack/bench, ports 25482/29142 by
default), stopped at the end unless --keep-stack.

A server we start ourselves also gets `track_commit_timestamp = on`, so the
end-to-end and expiry stages can read the exact commit time of a row
(`pg_xact_commit_timestamp(xmin)`); on a server given to us they fall back
to polling.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "deploy" / "local"
BENCH_STACK_DIR = REPO / ".stack" / "bench"


class StackError(RuntimeError):
    pass


@dataclass
class BenchStack:
    database_url: str
    kafka_bootstrap: str
    own_postgres: bool = False  # started (or found running) by deploy/local/postgres.sh
    own_kafka: bool = False
    # What to stop at the end (nothing with --keep-stack).
    started: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def stop(self) -> None:
        for script, env in reversed(self.started):
            subprocess.run(  # noqa: S603
                [str(LOCAL / script), "stop"], env=env, check=False, timeout=120
            )
        self.started.clear()


def _script(script: str, action: str, env: dict[str, str]) -> str:
    try:
        done = subprocess.run(  # noqa: S603
            [str(LOCAL / script), action],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{script} {action} timed out") from exc
    if done.returncode != 0:
        raise StackError(f"{script} {action} failed ({done.returncode}): {done.stderr[-2000:]}")
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else ""


async def _commit_timestamps_on(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval("SHOW track_commit_timestamp") == "on")
    finally:
        await conn.close()


async def _enable_commit_timestamps(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
    finally:
        await conn.close()


def start_stack(keep: bool = False) -> BenchStack:
    """Start (or reuse) the stack; `keep` leaves what we start running."""
    stack = BenchStack(database_url="", kafka_bootstrap="")
    base = dict(os.environ, STACK_DIR=str(BENCH_STACK_DIR))
    try:
        if os.environ.get("DATABASE_URL"):
            stack.database_url = os.environ["DATABASE_URL"]
        else:
            fsync = os.environ.get("BENCH_PG_FSYNC", "on")
            env = dict(base, PG_PORT=os.environ.get("BENCH_PG_PORT", "25482"), PG_FSYNC=fsync)
            stack.database_url = _script("postgres.sh", "start", env)
            if not keep:
                stack.started.append(("postgres.sh", env))
            stack.own_postgres = True
            if not asyncio.run(_commit_timestamps_on(stack.database_url)):
                # A postmaster setting: written to postgresql.auto.conf, then a restart.
                asyncio.run(_enable_commit_timestamps(stack.database_url))
                _script("postgres.sh", "stop", env)
                stack.database_url = _script("postgres.sh", "start", env)
        if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            stack.kafka_bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        else:
            env = dict(base, KAFKA_PORT=os.environ.get("BENCH_KAFKA_PORT", "29142"))
            stack.kafka_bootstrap = _script("kafka.sh", "start", env)
            stack.own_kafka = True
            if not keep:
                stack.started.append(("kafka.sh", env))
    except BaseException:
        stack.stop()
        raise
    return stack
