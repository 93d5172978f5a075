"""Bounded soak: the fault scenarios of tests/test_faults.py (and, with
--cluster, the three-broker kill of tests/test_kafka_cluster.py) run again
and again with more load until the time is up.

    python -m tests.soak [--minutes 5] [--admissions 1000] [--rate 80] [--cluster]

Starts the same throwaway PostgreSQL and Kafka the tests use (or uses
DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS), on ports of its own so a test run
can go on beside it, plus a PostgreSQL server of its own for the database
faults. Everything listens on 127.0.0.1 and is stopped at the end. No
scenario starts unless its last duration still fits in the time left, so
the whole run ends within --minutes plus the stack's start and stop.

Writes .stack/soak/soak-summary.json (every run's figures and the totals
per fault) and prints the totals; exits 1 if any run lost an acknowledged
webhook, applied one twice, or broke another guarantee.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

from tests.conftest import OLD_SECRET, SECRET
from tests.faults_support import (
    OwnPostgres,
    Size,
    assert_clean,
    broker_sigkill,
    consumer_group_change,
    consumer_sigkill,
    kafka_cluster,
    own_postgres_server,
    postgres_crash,
    postgres_stop_start,
    receiver_sigkill,
)
from tests.helpers import REPO
from tests.stack import Stack, start_stack
from worker.adapters import kafka
from worker.config import Settings, load_settings

SOAK_DIR = REPO / ".stack" / "soak"
SUMMARY = SOAK_DIR / "soak-summary.json"
# Ports apart from the test suite's defaults and from each other.
PORTS = {
    "TEST_PG_PORT": os.environ.get("SOAK_PG_PORT", "25632"),
    "TEST_KAFKA_PORT": os.environ.get("SOAK_KAFKA_PORT", "29232"),
}
OWN_PG_PORT = os.environ.get("SOAK_FAULTS_PG_PORT", "25642")
CLUSTER_PORT = os.environ.get("SOAK_CLUSTER_KAFKA_PORT", "29400")
# No single scenario may run longer than this, whatever happens.
SCENARIO_CAP_S = 300.0

Scenario = Callable[[int], Awaitable[dict[str, Any]]]


def _base_settings(stack: Stack) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return load_settings(
        database_url=stack.database_url,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        fanfare_webhook_secret=f"{SECRET},{OLD_SECRET}",
        commands_topic=f"s{tag}.commands",
        events_topic=f"s{tag}.events",
        dead_letter_topic=f"s{tag}.commands.dlq",
        consumer_group=f"s{tag}.consumers",
        topic_partitions=6,
    )


def _scenarios(
    stack: Stack, base: Settings, own: OwnPostgres, size: Size, cluster: str | None
) -> dict[str, Scenario]:
    scenarios: dict[str, Scenario] = {
        "consumer SIGKILL mid-load (twice), restart": lambda seed: consumer_sigkill(
            stack, base, size, seed
        ),
        "receiver SIGKILL, restart on its port": lambda seed: receiver_sigkill(
            stack, base, size, seed
        ),
        "consumer group 1 -> 3 -> 1": lambda seed: consumer_group_change(stack, base, size, seed),
        "PostgreSQL stop (fast) and start": lambda seed: postgres_stop_start(own, base, size, seed),
        "PostgreSQL backend SIGKILL (crash recovery)": lambda seed: postgres_crash(
            own, base, size, seed
        ),
    }
    if cluster is not None:
        run = functools.partial(kafka_cluster, stack_dir=SOAK_DIR / "cluster", port=CLUSTER_PORT)

        async def broker(seed: int) -> dict[str, Any]:
            victim: list[int] = []

            def kill(node: int) -> None:
                victim.append(node)
                run("kill", str(node))

            try:
                return await broker_sigkill(stack, base, size, seed, cluster, kill)
            finally:
                for node in victim:  # back for the next round
                    await asyncio.to_thread(run, "start-node", str(node))

        scenarios["Kafka broker SIGKILL (3 brokers, RF 3, min ISR 2)"] = broker
    return scenarios


def _failed(error: BaseException) -> dict[str, Any]:
    return {"error": f"{type(error).__name__}: {str(error)[:2000]}"}


async def soak(minutes: float, size: Size, with_cluster: bool) -> int:
    deadline = time.monotonic() + minutes * 60
    os.environ.update({k: v for k, v in PORTS.items() if k not in os.environ})
    SOAK_DIR.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    totals: dict[str, dict[str, int]] = {}
    stack = start_stack()
    try:
        with ExitStack() as resources:
            own = resources.enter_context(own_postgres_server(SOAK_DIR / "pg", OWN_PG_PORT))
            cluster = None
            if with_cluster:
                run = functools.partial(
                    kafka_cluster, stack_dir=SOAK_DIR / "cluster", port=CLUSTER_PORT
                )
                cluster = run("start")
                resources.callback(lambda: [run("kill", n) for n in ("1", "2", "3")])
            base = _base_settings(stack)
            await kafka.ensure_topics(base)
            scenarios = _scenarios(stack, base, own, size, cluster)
            last: dict[str, float] = {}
            seed = 100
            while True:
                progressed = False
                for name, scenario in scenarios.items():
                    left = deadline - time.monotonic()
                    if left < last.get(name, 30.0):
                        continue
                    seed += 1
                    started = time.monotonic()
                    figures: dict[str, Any] = {}
                    try:
                        figures = await asyncio.wait_for(scenario(seed), SCENARIO_CAP_S)
                        assert_clean(figures)
                        ok = True
                    except Exception as exc:
                        figures = {**figures, **_failed(exc)}
                        traceback.print_exc()
                        ok = False
                    took = time.monotonic() - started
                    last[name] = took
                    progressed = True
                    runs.append({"fault": name, "seed": seed, "ok": ok, "seconds": took, **figures})
                    total = totals.setdefault(
                        name,
                        {"runs": 0, "failed": 0, "events": 0, "acked_2xx": 0, "in_flight": 0,
                         "lost": 0, "double_effects": 0},
                    )  # fmt: skip
                    total["runs"] += 1
                    total["failed"] += 0 if ok else 1
                    total["events"] += int(figures.get("events", 0))
                    total["acked_2xx"] += int(figures.get("acked_2xx", 0))
                    total["in_flight"] += int(figures.get("in_flight_at_fault", 0))
                    total["lost"] += int(figures.get("lost", 0))
                    total["double_effects"] += int(figures.get("double_effects", 0))
                    print(
                        f"{'ok  ' if ok else 'FAIL'} {name}: {took:.0f} s, "
                        f"{figures.get('acked_2xx', '?')} acked, lost {figures.get('lost', '?')}, "
                        f"double {figures.get('double_effects', '?')}",
                        flush=True,
                    )
                    _write(runs, totals, minutes, size)
                if not progressed:
                    break
    finally:
        stack.stop()
    _write(runs, totals, minutes, size)
    print(json.dumps(totals, indent=2))
    failed = sum(t["failed"] for t in totals.values())
    return 1 if failed or not runs else 0


def _write(
    runs: list[dict[str, Any]], totals: dict[str, dict[str, int]], minutes: float, size: Size
) -> None:
    summary = {
        "finished_at": datetime.now(UTC).isoformat(),
        "minutes": minutes,
        "size": {"admissions": size.admissions, "rate": size.rate, "concurrency": size.concurrency},
        "totals": totals,
        "runs": runs,
    }
    tmp = SUMMARY.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    tmp.replace(SUMMARY)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak",
        description="Fault scenarios under load, again and again until the time is up.",
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="time budget (default 5)")
    parser.add_argument("--admissions", type=int, default=1000, help="per scenario run")
    parser.add_argument("--rate", type=float, default=80.0, help="webhooks per second")
    parser.add_argument("--concurrency", type=int, default=16, help="open requests at most")
    parser.add_argument("--cluster", action="store_true", help="add the three-broker kill")
    args = parser.parse_args(argv)
    size = Size(admissions=args.admissions, rate=args.rate, concurrency=args.concurrency)
    return asyncio.run(soak(args.minutes, size, args.cluster))


if __name__ == "__main__":
    sys.exit(main())
