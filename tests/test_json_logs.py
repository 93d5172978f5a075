"""With LOG_FORMAT=json every line a role writes is one JSON object: the
service's own structlog lines and the standard library's (aiohttp,
aiokafka, asyncpg, asyncio) alike, tracebacks included, also while
PostgreSQL goes away under load and comes back.

The scenario runs `serve` (every role, so every pool and client) against a
PostgreSQL server of this module's own: stopping the session's would take
every other test's database with it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.faults_support import (
    Fanfare,
    OwnPostgres,
    build_workload,
    log_events,
    own_database,
    own_postgres_server,
    prepare,
    processes,
    scenario_pool,
)
from tests.helpers import REPO, ServiceProcess, free_port, json_lines, wait_for
from worker.config import Settings

ADMISSIONS = 150


@pytest.fixture(scope="module")
def json_logs_postgres() -> Iterator[OwnPostgres]:
    # A free port, not a fixed one: other checkouts' suites may run their
    # own servers on this machine at the same time.
    with own_postgres_server(REPO / ".stack" / "test-json-logs", str(free_port())) as server:
        yield server


@pytest.mark.integration
async def test_every_line_is_json_through_a_postgres_restart(
    json_logs_postgres: OwnPostgres, settings: Settings
) -> None:
    server = json_logs_postgres
    workload = build_workload(seed=17, admissions=ADMISSIONS)
    async with (
        own_database(server, settings) as own,
        processes(own, LOG_FORMAT="json", LOG_LEVEL="info") as procs,
    ):
        serve: ServiceProcess = await procs.start("serve")
        async with scenario_pool(own.database_url) as pool:
            await prepare(pool, own, workload)
        fanfare = Fanfare(serve.webhook_url, rate=40.0)
        load = asyncio.create_task(fanfare.run(workload.events))
        try:
            await fanfare.wait_acked(len(workload.events) // 3)
            await asyncio.to_thread(server.stop)
            try:
                # The outage is seen: the consumer retries its batch, and
                # asyncpg's pool (a standard library logger) reports with a
                # traceback that it cannot restore its connection floor.
                # Looked for in any format: without the routing it is text.
                acked_at_stop = len(fanfare.acked)
                await wait_for(
                    lambda: asyncio.sleep(0, bool(log_events(serve, "batch_retry"))),
                    timeout=60,
                )
                await wait_for(lambda: asyncio.sleep(0, FLOOR_WARNING in _text(serve)), timeout=60)
                # Webhooks are still acknowledged meanwhile (Kafka is up).
                await fanfare.wait_acked(acked_at_stop + 20, timeout=60)
            finally:
                await asyncio.to_thread(server.start)
        except BaseException:
            load.cancel()
            raise
        await load
        # Recovered: everything acknowledged was applied after the restart.
        acked = list({e.command_id for e in fanfare.acked})
        async with scenario_pool(own.database_url) as pool:
            await wait_for(
                lambda: pool.fetchval(
                    "SELECT count(*) = $2 FROM inbox WHERE command_id = ANY($1::uuid[])",
                    acked,
                    len(acked),
                ),
                timeout=120,
                interval=0.5,
            )
        procs.assert_alive()
        # An orderly stop, so the shutdown's lines are read too.
        await procs.terminate(serve)

    parsed, bad = json_lines(_text(serve))
    assert not bad, f"{len(bad)} lines of {serve.log_path} are not JSON, first: {bad[:5]}"
    # asyncpg's warning came as one object: its logger, level, time, and
    # the traceback as one string field.
    floor = [e for e in parsed if e.get("event", "").startswith(FLOOR_WARNING)]
    assert floor, "asyncpg's warning is not among the JSON lines"
    assert all(
        e.get("logger") == "asyncpg.pool"
        and e.get("level") == "warning"
        and "timestamp" in e
        and "Traceback" in e.get("exception", "")
        for e in floor
    ), floor[:2]


FLOOR_WARNING = "Failed to restore the pool connection floor"


def _text(proc: ServiceProcess) -> str:
    # The process's stdout and stderr, both in this one file.
    return proc.log_path.read_text(errors="replace") if proc.log_path.exists() else ""


# Whatever Python itself would print, in one process configured as a role is.
INTERPRETER_OUTPUT = """
import asyncio, gc, logging, warnings
from worker.logs import configure_logging, get_logger

configure_logging("info", "json")
get_logger("worker.test").info("ours", detail="a field")
warnings.warn("a warning")
logging.getLogger("aiokafka").error("foreign\\nwith a newline")
try:
    raise KeyError("inner")
except KeyError:
    logging.getLogger("asyncpg.pool").warning("foreign with a traceback", exc_info=True)

async def fails() -> None:
    raise RuntimeError("never retrieved")

async def main() -> None:
    task = asyncio.ensure_future(fails())
    await asyncio.sleep(0.01)
    del task
    gc.collect()

asyncio.run(main())

class Finalizer:
    def __del__(self) -> None:
        raise ValueError("in a finalizer")

Finalizer()
gc.collect()
raise SystemError("uncaught")
"""


def test_interpreter_and_library_output_is_json_lines() -> None:
    done = subprocess.run(
        [sys.executable, "-c", INTERPRETER_OUTPUT],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    parsed, bad = json_lines(done.stdout + done.stderr)
    assert not bad, bad
    events = {str(e["event"]).split("\n")[0]: e for e in parsed}
    assert events["ours"]["detail"] == "a field"
    assert events["foreign"]["logger"] == "aiokafka"
    assert "KeyError: 'inner'" in events["foreign with a traceback"]["exception"]
    assert any("a warning" in str(e["event"]) and e["logger"] == "py.warnings" for e in parsed)
    assert events["Task exception was never retrieved"]["logger"] == "asyncio"
    assert "never retrieved" in events["Task exception was never retrieved"]["exception"]
    assert "in a finalizer" in events["unraisable_exception"]["exception"]
    assert "SystemError: uncaught" in events["uncaught_exception"]["exception"]
