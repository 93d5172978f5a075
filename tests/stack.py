"""The real PostgreSQL and Kafka the integration tests run against.

Given DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS they are used as they are;
otherwise the project's own scripts (deploy/local) start a throwaway server
and a single-node KRaft broker, which are stopped when the session ends: on
TEST_PG_PORT / TEST_KAFKA_PORT if set (their files kept for the next session
on the same port), else on ports claimed for the session (tests/ports.py),
their files removed with them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.ports import port

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "deploy" / "local"
TEST_STACK_DIR = REPO / ".stack" / "test"


class StackError(RuntimeError):
    pass


@dataclass
class Stack:
    database_url: str
    kafka_bootstrap: str
    started: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    # Data of servers on ports claimed for this session: no later session
    # comes back to the same port, so nothing would ever reuse them.
    throwaway: list[Path] = field(default_factory=list)

    def stop(self) -> None:
        for script, env in reversed(self.started):
            subprocess.run([str(LOCAL / script), "stop"], env=env, check=False, timeout=120)
        self.started.clear()
        for path in self.throwaway:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        self.throwaway.clear()


def _run_script(script: str, env: dict[str, str]) -> str:
    try:
        done = subprocess.run(
            [str(LOCAL / script), "start"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{script} start timed out") from exc
    if done.returncode != 0:
        raise StackError(f"{script} start failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def start_stack() -> Stack:
    stack = Stack(database_url="", kafka_bootstrap="")
    base = dict(os.environ, STACK_DIR=str(TEST_STACK_DIR))
    try:
        if os.environ.get("DATABASE_URL"):
            stack.database_url = os.environ["DATABASE_URL"]
        else:
            pg_port = port("TEST_PG_PORT")
            env = dict(base, PG_PORT=pg_port, PG_FSYNC="off")
            if not os.environ.get("TEST_PG_PORT"):
                stack.throwaway += [
                    TEST_STACK_DIR / f"pg-{pg_port}",
                    TEST_STACK_DIR / f"pg-{pg_port}.initdb.log",
                ]
            stack.started.append(("postgres.sh", env))
            stack.database_url = _run_script("postgres.sh", env)
        if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            stack.kafka_bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        else:
            kafka_port = port("TEST_KAFKA_PORT", 2)
            env = dict(base, KAFKA_PORT=kafka_port)
            if not os.environ.get("TEST_KAFKA_PORT"):
                stack.throwaway.append(TEST_STACK_DIR / f"kafka-{kafka_port}")
            stack.started.append(("kafka.sh", env))
            stack.kafka_bootstrap = _run_script("kafka.sh", env)
    except BaseException:
        stack.stop()
        raise
    return stack
