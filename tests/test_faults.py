"""Faults injected while Fanfare keeps delivering (issue 9).

Each scenario runs the real processes on a database and topics of its own,
sends signed admission webhooks (with redeliveries, repeated grants and
consumers leaving) through a sender that retries every non-2xx the way
Fanfare does, injects one fault in the middle of the load, and then checks
DESIGN's guarantees: every webhook answered 2xx applied, none applied
twice, counters equal to rows, no oversell, no hold left active past its
expiry while the scheduler runs. The figures of each run go to
.stack/test/faults-summary.json (the README's reliability table); the
scenarios themselves live in tests/faults_support.py, shared with the soak
(`python -m tests.soak`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults_support import (
    OwnPostgres,
    Size,
    assert_clean,
    consumer_group_change,
    consumer_sigkill,
    own_postgres_server,
    postgres_crash,
    postgres_stop_start,
    receiver_sigkill,
    record,
)
from tests.helpers import REPO
from tests.ports import port
from tests.stack import Stack
from worker.config import Settings

pytestmark = pytest.mark.integration

SIZE = Size(admissions=300, rate=40.0)
FAULTS_PG_DIR = REPO / ".stack" / "test-faults"


@pytest.fixture(scope="module")
def faults_postgres() -> Iterator[OwnPostgres]:
    """A PostgreSQL server of this module's own: stopping or crashing the
    session's would take every other test's database with it."""
    with own_postgres_server(FAULTS_PG_DIR, port("TEST_FAULTS_PG_PORT")) as server:
        yield server


async def test_consumer_sigkill_mid_load_then_restart(stack: Stack, settings: Settings) -> None:
    figures = await consumer_sigkill(stack, settings, SIZE, seed=1)
    record("consumer SIGKILL mid-load (twice), restart", figures)
    assert_clean(figures)


async def test_receiver_sigkill_then_restart_takes_the_retries(
    stack: Stack, settings: Settings
) -> None:
    figures = await receiver_sigkill(stack, settings, SIZE, seed=2)
    record("receiver SIGKILL, restart on its port", figures)
    assert_clean(figures)
    assert figures["connection_errors"] > 0


async def test_postgres_stop_and_start_under_load(
    faults_postgres: OwnPostgres, settings: Settings
) -> None:
    figures = await postgres_stop_start(faults_postgres, settings, SIZE, seed=3)
    record("PostgreSQL stop (fast) and start", figures)
    assert_clean(figures)


async def test_postgres_backend_crash_every_role_lives_through_it(
    faults_postgres: OwnPostgres, settings: Settings
) -> None:
    figures = await postgres_crash(faults_postgres, settings, SIZE, seed=5)
    record("PostgreSQL backend SIGKILL (crash recovery)", figures)
    assert_clean(figures)


async def test_consumer_group_grows_to_three_and_shrinks_back(
    stack: Stack, settings: Settings
) -> None:
    figures = await consumer_group_change(stack, settings, SIZE, seed=4)
    record("consumer group 1 -> 3 -> 1", figures)
    assert_clean(figures)
