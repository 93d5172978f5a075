"""Session fixtures: the real stack, a fresh database and fresh topics per
session, and the service itself running as a subprocess (`python -m worker
serve`). Integration tests fail, never skip, when a part cannot start."""

from __future__ import annotations

import atexit
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import pytest_asyncio

from tests.engine_backends import Engine, MemoryEngine, PostgresEngine
from tests.helpers import ServiceProcess, free_port
from tests.stack import Stack, StackError, start_stack
from worker.adapters import kafka, postgres
from worker.config import Settings, load_settings, settings_env
from worker.replay.scratch import scratch_database

SECRET = "whsec_test_current_0123456789"
OLD_SECRET = "whsec_test_previous_9876543210"
# Two bearer keys for the HTTP API, as during a key rotation, and one with
# the operator scope.
API_KEY = "rk_test_current_0123456789"
API_KEY_NEXT = "rk_test_next_9876543210"
OPERATOR_KEY = "rk_test_operator_5647382910"


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    try:
        running = start_stack()
    except StackError as exc:
        pytest.fail(f"integration stack could not start: {exc}", pytrace=False)
    atexit.register(running.stop)  # also on an interrupted session
    yield running
    running.stop()


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database_url(stack: Stack, run_id: str) -> AsyncIterator[str]:
    """A database of its own for this session, migrated."""
    admin = await asyncpg.connect(stack.database_url)
    name = f"test_{run_id}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    head, _, _ = stack.database_url.rpartition("/")
    url = f"{head}/{name}"
    await postgres.migrate(url)
    yield url
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def settings(stack: Stack, database_url: str, run_id: str) -> Settings:
    """Settings with topics and group of this session only."""
    s = load_settings(
        database_url=database_url,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        fanfare_webhook_secret=f"{SECRET},{OLD_SECRET}",
        commands_topic=f"t{run_id}.commands",
        events_topic=f"t{run_id}.events",
        dead_letter_topic=f"t{run_id}.commands.dlq",
        quarantine_topic=f"t{run_id}.quarantine",
        consumer_group=f"t{run_id}.consumers",
        topic_partitions=6,
    )
    await kafka.ensure_topics(s)
    return s


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await postgres.create_pool(database_url, max_size=5)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engine_db(stack: Stack, run_id: str) -> AsyncIterator[asyncpg.Pool]:
    """A database only the tests that apply commands themselves write to.
    The session's service runs a scheduler on the session database: it would
    expire their holds, which carry fixed times in the past, between two
    commands of a test."""
    async with scratch_database(stack.database_url, f"engine_{run_id}") as url:
        pool = await postgres.create_pool(url, max_size=5)
        yield pool
        await pool.close()


@pytest.fixture(params=["memory", pytest.param("postgresql", marks=pytest.mark.integration)])
def engine_backend(request: pytest.FixtureRequest) -> Engine:
    """The engine test helper, once in memory (no database: a unit test)
    and once on PostgreSQL (`engine_db`: an integration test)."""
    if request.param == "memory":
        return MemoryEngine()
    return PostgresEngine(request.getfixturevalue("engine_db"))


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(settings_env(settings))
    env.update(
        LISTEN_PORT=str(free_port()),
        API_PORT=str(free_port()),
        RESERVATION_API_KEYS=f"{API_KEY},{API_KEY_NEXT},{OPERATOR_KEY}:operator",
    )
    env.update(extra)
    return env


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def service(settings: Settings) -> AsyncIterator[ServiceProcess]:
    """`python -m worker serve`, every role in one process, for the session."""
    proc = ServiceProcess(["serve"], service_env(settings))
    await proc.start()
    yield proc
    await proc.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything that needs the real stack is an integration test, whether
    or not its module says so: `make unit` runs the rest alone."""
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
