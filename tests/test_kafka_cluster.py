"""A broker lost for good during load loses nothing (issue 9).

deploy/local/kafka-cluster.sh starts three KRaft nodes (each broker and
controller, all three voters) on loopback; the service creates its topics
with replication factor 3 and min.insync.replicas 2. `python -m worker
serve` runs against the cluster while a Fanfare-like sender delivers signed
webhooks with retries; the node that leads most command partitions is
SIGKILLed mid-load and stays down. Every webhook answered 2xx must be
applied once, and every resulting event published. (The scenario lives in
tests/faults_support.py, shared with the soak.)
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator

import pytest

from tests.faults_support import Size, assert_clean, broker_sigkill, kafka_cluster, record
from tests.helpers import REPO
from tests.ports import port
from tests.stack import Stack
from worker.config import Settings

pytestmark = pytest.mark.integration

CLUSTER_DIR = REPO / ".stack" / "test-cluster"


@functools.cache
def _cluster_port() -> str:
    # Claimed once: a node is killed and addressed again on the same ports.
    return port("TEST_CLUSTER_KAFKA_PORT", 6)


def cluster_cmd(*args: str) -> str:
    return kafka_cluster(*args, stack_dir=CLUSTER_DIR, port=_cluster_port())


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    bootstrap = cluster_cmd("start")
    try:
        yield bootstrap
    finally:
        # The data is thrown away: SIGKILL spares the 30 s a graceful stop
        # takes once the quorum is down to two nodes shutting down together.
        for node in ("1", "2", "3"):
            cluster_cmd("kill", node)
        shutil.rmtree(CLUSTER_DIR, ignore_errors=True)


async def test_a_broker_killed_during_load_loses_nothing(
    stack: Stack, settings: Settings, cluster: str
) -> None:
    figures = await broker_sigkill(
        stack,
        settings,
        Size(admissions=300, rate=40.0),
        seed=6,
        bootstrap=cluster,
        kill=lambda node: cluster_cmd("kill", str(node)),
    )
    record("Kafka broker SIGKILL (3 brokers, RF 3, min ISR 2)", figures)
    assert_clean(figures)
