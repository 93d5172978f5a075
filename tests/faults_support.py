"""Shared by the fault, cluster and soak runs: a workload, a Fanfare-like
sender that retries every non-2xx, the processes under test, and the checks
that end every scenario (nothing acknowledged lost, nothing applied twice,
counters equal to rows, no oversell, no hold left active past its time).

Every loop here is bounded in count and time, and every request goes to
127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests import builders as b
from tests.conftest import SECRET, service_env
from tests.engine_backends import assert_counters_match_rows
from tests.helpers import REPO, ServiceProcess, signed_headers, wait_for
from tests.isolated import isolated_settings, produce_bulk
from tests.stack import Stack
from worker.adapters import kafka, postgres
from worker.config import Settings
from worker.domain import ids
from worker.domain.commands import CommandBase

SUMMARY_DIR = REPO / ".stack" / "test"
FAULTS_SUMMARY = SUMMARY_DIR / "faults-summary.json"
LOCAL = REPO / "deploy" / "local"
# A hold still active this long after its expires_at means the scheduler or
# the consumers lost it: the scheduler scans every 0.5 s.
STUCK_MARGIN_S = 10
SHORT_WINDOW = "exp-short"  # holds expire during the run: the scheduler is exercised


# --- the workload --------------------------------------------------------------------


@dataclass
class Event:
    """One Fanfare event and its deliveries: the same event id and delivery
    id on every retry, a fresh signature each time (as Fanfare does)."""

    envelope: dict[str, Any]
    kind: str  # admit | regrant | redeliver | left
    grant: str | None = None
    origin: Event | None = None  # the admission a duplicate or a leave refers to
    delivery_id: str = field(default_factory=lambda: f"dlv_{uuid.uuid4().hex[:16]}")
    statuses: list[int] = field(default_factory=list)
    acked: bool = False

    @property
    def command_id(self) -> uuid.UUID:
        return ids.command_id("fanfare", str(self.envelope["id"]))

    def stamp(self) -> None:
        """Times are set at the first delivery, not when the workload is
        built: a 2 s window must start when the event is sent. Retries keep
        them, as Fanfare's do."""
        if self.origin is not None:
            self.origin.stamp()  # a redelivery shares its origin's envelope
        if self.envelope["timestamp"] is not None:
            return
        now = _stamp(datetime.now(UTC))
        self.envelope["timestamp"] = now
        if self.kind == "admit":
            self.envelope["data"]["admittedAt"] = now
        elif self.kind == "regrant" and self.origin is not None:
            self.envelope["data"]["admittedAt"] = self.origin.envelope["data"]["admittedAt"]


@dataclass
class Workload:
    setup: list[CommandBase]
    events: list[Event]
    # stock rows: product -> on hand; demand is well above the scarce one
    stock: dict[str, int]


def _stamp(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _admission(exp: str, consumer: str, grant: str) -> dict[str, Any]:
    return {
        "id": f"whk_{uuid.uuid4().hex}",
        "type": "queue.consumer.admitted",
        "timestamp": None,
        "organizationId": "org_faults",
        "data": {
            "queueId": exp,
            "consumerId": consumer,
            "admittedAt": None,
            "admissionToken": grant,
        },
    }


def build_workload(seed: int, admissions: int, tag: str = "") -> Workload:
    """Admissions over three experiences (one with a 2 s window, so the
    scheduler expires holds during the run) competing for a plentiful and a
    scarce product, with Fanfare's duplicates mixed in: the same event
    delivered twice, the same grant in a second event, and consumers leaving.
    Each consumer's cart is one line, so a grant may hold at most one row."""
    rng = random.Random(seed)
    plenty, scarce = f"plenty{tag}", f"scarce{tag}"
    stock = {plenty: admissions * 3, scarce: max(10, admissions // 6)}
    setup: list[CommandBase] = [b.stock(p, n) for p, n in stock.items()]
    setup.append(b.configure(SHORT_WINDOW, window_seconds=1, buffer_seconds=1))
    experiences = ["exp-long", "exp-scarce", SHORT_WINDOW]
    events: list[Event] = []
    admits: list[Event] = []
    for n in range(admissions):
        exp = experiences[n % len(experiences)]
        consumer = f"c{n}{tag}"
        product = scarce if exp == "exp-scarce" or rng.random() < 0.2 else plenty
        setup.append(b.cart(exp, consumer, b.line(product, rng.randint(1, 2))))
        grant = f"eyJ{uuid.uuid4().hex}.{n}.sig"
        event = Event(_admission(exp, consumer, grant), "admit", grant)
        events.append(event)
        admits.append(event)
        # Duplicates come a little later, as Fanfare's would.
        if n > 10 and rng.random() < 0.06:
            first = rng.choice(admits[:-5])
            events.append(Event(first.envelope, "redeliver", first.grant, origin=first))
        if n > 10 and rng.random() < 0.06:
            first = rng.choice(admits[:-5])
            data = first.envelope["data"]
            again = _admission(data["queueId"], data["consumerId"], str(first.grant))
            events.append(Event(again, "regrant", first.grant, origin=first))
        if n > 10 and rng.random() < 0.06:
            first = rng.choice(admits[:-5])
            data = first.envelope["data"]
            left = {
                "id": f"whk_{uuid.uuid4().hex}",
                "type": "queue.consumer.left",
                "timestamp": None,
                "organizationId": "org_faults",
                "data": {
                    "queueId": data["queueId"],
                    "consumerId": data["consumerId"],
                    "admissionToken": first.grant,
                },
            }
            events.append(Event(left, "left", first.grant, origin=first))
    return Workload(setup, events, stock)


# --- the sender ------------------------------------------------------------------------


class Fanfare:
    """Delivers every event until it is answered 2xx, like Fanfare (with a
    faster schedule): at most `concurrency` requests open, events released at
    `rate` per second, retries after 0.1 s doubling to 1 s, all bounded by
    `deadline_s`. `url` is read at every attempt, so a test may move it."""

    def __init__(
        self,
        url: str | Callable[[], str],
        *,
        concurrency: int = 8,
        rate: float = 40.0,
        deadline_s: float = 150.0,
        secret: str = SECRET,
    ) -> None:
        self._url = url
        self.concurrency = concurrency
        self.rate = rate
        self.deadline_s = deadline_s
        self.secret = secret
        self.open = 0
        self.attempts = 0
        self.answers: Counter[int] = Counter()
        self.connection_errors = 0
        self.acked: list[Event] = []
        self.events: list[Event] = []
        self._acked_changed = asyncio.Event()

    def url(self) -> str:
        return self._url() if callable(self._url) else self._url

    async def run(self, events: list[Event]) -> None:
        self.events = events
        deadline = time.monotonic() + self.deadline_s
        queue: asyncio.Queue[Event] = asyncio.Queue()
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            workers = [
                asyncio.create_task(self._worker(session, queue, deadline))
                for _ in range(self.concurrency)
            ]
            try:
                for event in events:
                    await queue.put(event)
                    await asyncio.sleep(1.0 / self.rate)
                await asyncio.wait_for(queue.join(), max(1.0, deadline - time.monotonic()))
            finally:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        unacked = [e for e in events if not e.acked]
        assert not unacked, (
            f"{len(unacked)} events never acknowledged within {self.deadline_s} s; "
            f"first: {unacked[0].statuses[-10:]}"
        )

    async def _worker(
        self, session: aiohttp.ClientSession, queue: asyncio.Queue[Event], deadline: float
    ) -> None:
        while True:
            event = await queue.get()
            try:
                await self._deliver(session, event, deadline)
            finally:
                queue.task_done()

    async def _deliver(self, session: aiohttp.ClientSession, event: Event, deadline: float) -> None:
        event.stamp()
        body = orjson.dumps(event.envelope)
        pause = 0.1
        while time.monotonic() < deadline:
            headers = signed_headers(body, self.secret, delivery_id=event.delivery_id)
            self.attempts += 1
            self.open += 1
            try:
                async with session.post(self.url(), data=body, headers=headers) as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
                self.connection_errors += 1
            finally:
                self.open -= 1
            event.statuses.append(status)
            if status:
                self.answers[status] += 1
            if 200 <= status < 300:
                event.acked = True
                self.acked.append(event)
                self._acked_changed.set()
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    async def wait_acked(self, count: int, timeout: float = 120.0) -> None:
        """The positive signal a fault waits for: `count` events acknowledged."""
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"only {len(self.acked)} of {count} acknowledged in {timeout} s "
                    f"(answers {dict(self.answers)}, connection errors {self.connection_errors})"
                )
            self._acked_changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._acked_changed.wait(), min(left, 1.0))

    def moment(self) -> Moment:
        return Moment(self.open, tuple(e.command_id for e in self.acked))

    def non_2xx(self) -> int:
        return sum(n for status, n in self.answers.items() if not 200 <= status < 300)


# --- processes -------------------------------------------------------------------------


class Processes:
    """The service's processes for one scenario, each a real `python -m
    worker <role>`; whatever is still running at the end is stopped."""

    def __init__(self, settings: Settings, **extra: str) -> None:
        self.settings = settings
        self.extra = {"OPS_PORT": "0", **extra}
        self.running: list[ServiceProcess] = []
        self._ports: Counter[str] = Counter()

    def env(self, **extra: str) -> dict[str, str]:
        return service_env(self.settings, **{**self.extra, **extra})

    async def start(self, role: str, env: dict[str, str] | None = None) -> ServiceProcess:
        proc = ServiceProcess([role], env or self.env())
        port = proc.env["LISTEN_PORT"]
        if self._ports[port]:
            # A restart on the same port: keep the first process's log.
            proc.log_path = proc.log_path.with_name(
                f"{proc.log_path.stem}-restart{self._ports[port]}.log"
            )
        self._ports[port] += 1
        await proc.start()
        self.running.append(proc)
        return proc

    async def kill(self, proc: ServiceProcess) -> None:
        """SIGKILL: no clean-up of any kind runs in the process."""
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGKILL)
        code = await asyncio.to_thread(proc.proc.wait, 30)
        assert code == -signal.SIGKILL, code
        self.running.remove(proc)

    async def terminate(self, proc: ServiceProcess) -> None:
        """SIGTERM, the orderly scale-in: the process leaves its group."""
        await proc.stop()
        assert proc.proc is not None
        code = await asyncio.to_thread(proc.proc.wait, 30)
        assert code == 0, f"exit {code}: {proc.tail()}"
        self.running.remove(proc)

    def assert_alive(self) -> None:
        for proc in self.running:
            assert proc.proc is not None
            assert proc.proc.poll() is None, f"{proc.args} exited: {proc.tail()}"

    async def stop_all(self) -> None:
        for proc in reversed(self.running):
            await proc.stop()
        self.running.clear()


def log_events(proc: ServiceProcess, event: str) -> list[dict[str, Any]]:
    """The process's structured log lines of one kind."""
    if not proc.log_path.exists():
        return []
    found = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if f'"{event}"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event:
            found.append(entry)
    return found


def assignments(proc: ServiceProcess) -> list[dict[str, Any]]:
    return log_events(proc, "partitions_assigned")


@asynccontextmanager
async def processes(settings: Settings, **extra: str) -> AsyncIterator[Processes]:
    procs = Processes(settings, **extra)
    try:
        yield procs
    finally:
        await procs.stop_all()


async def prepare(pool: asyncpg.Pool, settings: Settings, workload: Workload) -> None:
    """Stock, configuration and carts through the commands topic, applied
    before any admission arrives (a consumer must be running)."""
    await produce_bulk(settings, workload.setup)
    wanted = len(workload.setup)
    await wait_for(
        lambda: pool.fetchval("SELECT count(*) >= $1 FROM inbox", wanted),
        timeout=120,
        interval=0.2,
    )


# --- measuring -------------------------------------------------------------------------


@dataclass(frozen=True)
class Moment:
    """What the sender knew at one instant: requests open, events acked."""

    open: int
    acked: tuple[uuid.UUID, ...]


async def in_flight(pool: asyncpg.Pool, fanfare: Fanfare, at: Moment | None = None) -> int:
    """Events between Fanfare and the database at an instant (now, or the
    moment given): requests open, plus events acknowledged and not applied
    (counted now, so taken right before a fault)."""
    moment = at or fanfare.moment()
    acked = list(set(moment.acked))
    applied = await pool.fetchval(
        "SELECT count(*) FROM inbox WHERE command_id = ANY($1::uuid[])", acked
    )
    return int(moment.open + len(acked) - applied)


async def measure(
    pool: asyncpg.Pool, fanfare: Fanfare, in_flight_at_fault: int, settle_s: float = 120.0
) -> dict[str, Any]:
    """Wait (bounded) for everything acknowledged to be applied and for
    expired holds to be ended, then count what went wrong. Counting comes
    before asserting, so the summary records a failure too."""
    acked_ids = list({e.command_id for e in fanfare.acked})

    async def missing() -> list[uuid.UUID]:
        rows = await pool.fetch(
            """SELECT c FROM unnest($1::uuid[]) AS c
               WHERE NOT EXISTS (SELECT 1 FROM inbox WHERE command_id = c)""",
            acked_ids,
        )
        return [r["c"] for r in rows]

    deadline = time.monotonic() + settle_s
    lost = await missing()
    while lost and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        lost = await missing()

    stuck_sql = f"""SELECT count(*) FROM reservations WHERE status = 'active'
                    AND expires_at < now() - interval '{STUCK_MARGIN_S} seconds'"""
    stuck = await pool.fetchval(stuck_sql)
    while stuck and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        stuck = await pool.fetchval(stuck_sql)

    admitted = {ids.grant_digest(str(e.grant)) for e in fanfare.acked if e.kind == "admit"}
    recorded = {
        r["admission_grant"]
        for r in await pool.fetch(
            "SELECT admission_grant FROM admissions WHERE admission_grant = ANY($1::text[])",
            list(admitted),
        )
    }
    # One cart line per consumer: a grant holding more than one row, or a
    # row counted twice in the counters, is a double effect.
    doubled = await pool.fetchval(
        """SELECT COALESCE(sum(n - 1), 0) FROM (
               SELECT count(*) AS n FROM reservations GROUP BY admission_grant
               HAVING count(*) > 1) d"""
    )
    oversold = await pool.fetchval("SELECT count(*) FROM stock WHERE reserved + sold > on_hand")
    try:
        await assert_counters_match_rows(pool)
        drift = 0
    except AssertionError:
        drift = 1
    inconsistent = await pool.fetchval(
        """SELECT count(*) FROM reservations r JOIN admissions a USING (admission_grant)
           WHERE (r.status = 'active') <> (a.status = 'active')"""
    )
    statuses = {
        r["status"]: r["n"]
        for r in await pool.fetch("SELECT status, count(*) AS n FROM reservations GROUP BY status")
    }
    return {
        "events": len(fanfare.events),
        "deliveries": fanfare.attempts,
        "acked_2xx": len(fanfare.acked),
        "non_2xx_answers": fanfare.non_2xx(),
        "connection_errors": fanfare.connection_errors,
        "in_flight_at_fault": in_flight_at_fault,
        "lost": len(lost) + len(admitted - recorded),
        "double_effects": int(doubled),
        "oversold_rows": int(oversold),
        "counter_drift": drift,
        "stuck_holds": int(stuck),
        "inconsistent_holds": int(inconsistent),
        "holds": {str(k): int(v) for k, v in statuses.items()},
    }


def assert_clean(figures: dict[str, Any]) -> None:
    bad = {
        k: figures[k]
        for k in (
            "lost",
            "double_effects",
            "oversold_rows",
            "counter_drift",
            "stuck_holds",
            "inconsistent_holds",
        )
        if figures[k]
    }
    assert not bad, f"guarantees broken: {bad} (all figures: {figures})"
    assert figures["acked_2xx"] == figures["events"], figures
    # The run did exercise what it claims: holds taken, refused, expired.
    assert figures["holds"].get("active", 0) > 0, figures
    assert figures["holds"].get("expired", 0) > 0, figures


def record(name: str, figures: dict[str, Any], path: Path = FAULTS_SUMMARY) -> None:
    """Merge one scenario's figures into the summary the README table is
    built from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    if path.exists():
        try:
            summary = json.loads(path.read_text())
        except ValueError:
            summary = {}
    summary[name] = {**figures, "measured_at": datetime.now(UTC).isoformat()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


# --- a PostgreSQL server of the scenario's own -------------------------------------------


def own_postgres(action: str, stack_dir: Path, port: str) -> str:
    """deploy/local/postgres.sh start|stop for a server no one else uses."""
    done = subprocess.run(
        [str(LOCAL / "postgres.sh"), action],
        env=dict(os.environ, STACK_DIR=str(stack_dir), PG_PORT=port, PG_FSYNC="off"),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"postgres.sh {action} failed: {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


@dataclass(frozen=True)
class OwnPostgres:
    """A server the scenarios may stop, start and crash: never the one the
    rest of the suite uses."""

    stack_dir: Path
    port: str
    url: str

    def stop(self) -> None:
        own_postgres("stop", self.stack_dir, self.port)

    def start(self) -> None:
        own_postgres("start", self.stack_dir, self.port)


@contextmanager
def own_postgres_server(stack_dir: Path, port: str) -> Iterator[OwnPostgres]:
    url = own_postgres("start", stack_dir, port)
    try:
        yield OwnPostgres(stack_dir, port, url)
    finally:
        own_postgres("stop", stack_dir, port)
        shutil.rmtree(stack_dir, ignore_errors=True)


@asynccontextmanager
async def own_database(server: OwnPostgres, base: Settings) -> AsyncIterator[Settings]:
    """A fresh, migrated database on `server` and topics of its own."""
    tag = uuid.uuid4().hex[:10]
    admin = await asyncpg.connect(server.url)
    try:
        await admin.execute(f'CREATE DATABASE "f_{tag}"')
    finally:
        await admin.close()
    url = server.url.rpartition("/")[0] + f"/f_{tag}"
    await postgres.migrate(url)
    own = base.model_copy(
        update={
            "database_url": url,
            "commands_topic": f"f{tag}.commands",
            "events_topic": f"f{tag}.events",
            "dead_letter_topic": f"f{tag}.commands.dlq",
            "consumer_group": f"f{tag}.consumers",
        }
    )
    await kafka.ensure_topics(own)
    try:
        yield own
    finally:
        with suppress(OSError, asyncpg.PostgresError):
            admin = await asyncpg.connect(server.url)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "f_{tag}" WITH (FORCE)')
            finally:
                await admin.close()


@asynccontextmanager
async def scenario_pool(url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=3)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


# --- the scenarios -----------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """How hard a scenario pushes: the tests keep it small, the soak not."""

    admissions: int = 300
    rate: float = 40.0
    concurrency: int = 8


def _sender(url: str, size: Size) -> Fanfare:
    return Fanfare(url, concurrency=size.concurrency, rate=size.rate)


async def consumer_sigkill(stack: Stack, base: Settings, size: Size, seed: int) -> dict[str, Any]:
    """A consumer SIGKILLed twice under load, restarted each time."""
    workload = build_workload(seed, size.admissions)
    async with (
        isolated_settings(stack, base) as iso,
        scenario_pool(iso.database_url) as pool,
        processes(iso, CONSUMER_BATCH_MAX="50") as procs,
    ):
        consumer = await procs.start("consumer")
        await procs.start("scheduler")
        receiver = await procs.start("receiver")
        await prepare(pool, iso, workload)
        fanfare = _sender(receiver.webhook_url, size)
        load = asyncio.create_task(fanfare.run(workload.events))
        try:
            flights = []
            # Twice, so one of the kills very likely lands inside a batch.
            for share in (4, 2):
                await fanfare.wait_acked(len(workload.events) // share)
                flights.append(await in_flight(pool, fanfare))
                await procs.kill(consumer)
                consumer = await procs.start("consumer")
        except BaseException:
            load.cancel()
            raise
        await load
        procs.assert_alive()
        figures = await measure(pool, fanfare, max(flights))
    figures["faults_injected"] = 2
    return figures


async def receiver_sigkill(stack: Stack, base: Settings, size: Size, seed: int) -> dict[str, Any]:
    """The receiver SIGKILLed with requests open, restarted on its port."""
    workload = build_workload(seed, size.admissions)
    async with (
        isolated_settings(stack, base) as iso,
        scenario_pool(iso.database_url) as pool,
        processes(iso) as procs,
    ):
        await procs.start("consumer")
        await procs.start("scheduler")
        env = procs.env()
        receiver = await procs.start("receiver", env)
        await prepare(pool, iso, workload)
        fanfare = _sender(receiver.webhook_url, size)
        load = asyncio.create_task(fanfare.run(workload.events))
        try:
            await fanfare.wait_acked(len(workload.events) // 3)
            # Kill while requests are open: some may be in Kafka already
            # without their 2xx having left; Fanfare retries them and the
            # inbox dedupes.
            for _ in range(5000):
                if fanfare.open:
                    break
                await asyncio.sleep(0.002)
            at_kill = fanfare.moment()
            await procs.kill(receiver)
            flight = await in_flight(pool, fanfare, at_kill)
            # Fanfare notices: its deliveries fail while nothing listens.
            errors = fanfare.connection_errors
            await wait_for(lambda: asyncio.sleep(0, fanfare.connection_errors > errors), timeout=30)
            acked_while_down = len(fanfare.acked)
            await procs.start("receiver", env)  # same port: the retries reach it
        except BaseException:
            load.cancel()
            raise
        await load
        assert len(fanfare.acked) > acked_while_down
        procs.assert_alive()
        figures = await measure(pool, fanfare, flight)
    return figures


async def consumer_group_change(
    stack: Stack, base: Settings, size: Size, seed: int
) -> dict[str, Any]:
    """The group grows from one consumer to three under load, then shrinks
    back (the two newcomers stop in order, as in a scale-in)."""
    workload = build_workload(seed, size.admissions)
    async with (
        isolated_settings(stack, base) as iso,
        scenario_pool(iso.database_url) as pool,
        processes(iso, CONSUMER_BATCH_MAX="50") as procs,
    ):
        await procs.start("consumer")
        await procs.start("scheduler")
        receiver = await procs.start("receiver")
        await prepare(pool, iso, workload)
        fanfare = _sender(receiver.webhook_url, size)
        load = asyncio.create_task(fanfare.run(workload.events))
        try:
            await fanfare.wait_acked(len(workload.events) // 4)
            grow = await in_flight(pool, fanfare)
            extra = [await procs.start("consumer"), await procs.start("consumer")]
            # Each newcomer took partitions over: a rebalance under load.
            for proc in extra:
                await wait_for(
                    lambda p=proc: asyncio.sleep(  # type: ignore[misc]
                        0, any(e["partitions"] for e in assignments(p))
                    ),
                    timeout=60,
                )
            await fanfare.wait_acked(len(workload.events) * 2 // 3)
            shrink = await in_flight(pool, fanfare)
            for proc in extra:
                await procs.terminate(proc)
        except BaseException:
            load.cancel()
            raise
        await load
        procs.assert_alive()
        figures = await measure(pool, fanfare, max(grow, shrink))
    return figures


async def postgres_stop_start(
    server: OwnPostgres, base: Settings, size: Size, seed: int
) -> dict[str, Any]:
    """PostgreSQL stopped (fast shutdown) under load and started again.
    Every role runs in one `serve` process: a role that cannot live through
    the outage takes the whole process, receiver included, down with it."""
    workload = build_workload(seed, size.admissions)
    async with own_database(server, base) as own, processes(own) as procs:
        serve = await procs.start("serve")
        async with scenario_pool(own.database_url) as pool:
            await prepare(pool, own, workload)
            fanfare = _sender(serve.webhook_url, size)
            load = asyncio.create_task(fanfare.run(workload.events))
            try:
                await fanfare.wait_acked(len(workload.events) // 3)
                flight = await in_flight(pool, fanfare)
            except BaseException:
                load.cancel()
                raise
        try:
            await asyncio.to_thread(server.stop)
            acked_at_stop = len(fanfare.acked)
            try:
                # Webhooks are still acknowledged (Kafka is up), and the
                # consumer notices the outage and retries its batch.
                await fanfare.wait_acked(acked_at_stop + 60, timeout=60)
                await wait_for(
                    lambda: asyncio.sleep(0, bool(log_events(serve, "batch_retry"))),
                    timeout=30,
                )
            finally:
                # Acknowledged while the database was away: applied after.
                flight += len(fanfare.acked) - acked_at_stop
                await asyncio.to_thread(server.start)
            procs.assert_alive()
        except BaseException:
            load.cancel()
            raise
        await load
        async with scenario_pool(own.database_url) as pool:
            figures = await measure(pool, fanfare, flight)
        procs.assert_alive()
    return figures


async def _crash_a_backend_mid_query(
    url: str, just_before: Callable[[], Awaitable[int]]
) -> tuple[datetime, int]:
    """SIGKILL a PostgreSQL backend while it runs a query: the server goes
    through crash recovery and drops every connection mid-statement, the
    way a crash of the database (or its host) looks to clients. The outbox
    is locked first, so the relay's read of it or a consumer's write to it
    (a COPY) waits inside a query, deterministically. Returns when it happened
    and what `just_before` counted right before it."""
    holder = await asyncpg.connect(url)
    watcher = await asyncpg.connect(url)
    try:
        tr = holder.transaction()
        await tr.start()
        await holder.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
        waiting = await wait_for(
            lambda: watcher.fetchval(
                """SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                   WHERE l.relation = 'outbox'::regclass AND NOT l.granted
                     AND a.query ILIKE ANY (ARRAY['SELECT%', 'INSERT%', 'COPY%']) LIMIT 1"""
            ),
            timeout=30,
        )
        counted = await just_before()
        crashed_at: datetime = await watcher.fetchval("SELECT now()")
        os.kill(int(waiting), signal.SIGKILL)
    finally:
        for conn in (holder, watcher):
            conn.terminate()
    return crashed_at, counted


async def _published_since(url: str, since: datetime) -> bool:
    # A connection opened while the postmaster is still resetting after the
    # crash is accepted, then dropped mid-query by crash recovery: that is
    # "still recovering" too, not a failure.
    try:
        conn = await asyncpg.connect(url, timeout=2)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        return bool(await conn.fetchval("SELECT updated_at > $1 FROM outbox_position", since))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    finally:
        conn.terminate()


async def _alive_and(proc: ServiceProcess, probe: Awaitable[bool]) -> bool:
    """True once `probe` holds, or at once when the process has exited (the
    caller's assertion then reports it)."""
    assert proc.proc is not None
    if proc.proc.poll() is not None:
        probe.close()  # type: ignore[attr-defined]
        return True
    return await probe


async def postgres_crash(
    server: OwnPostgres, base: Settings, size: Size, seed: int
) -> dict[str, Any]:
    """A PostgreSQL backend SIGKILLed mid-query under load: crash recovery
    drops every connection of every role at once."""
    workload = build_workload(seed, size.admissions)
    async with own_database(server, base) as own, processes(own) as procs:
        serve = await procs.start("serve")
        async with scenario_pool(own.database_url) as pool:
            await prepare(pool, own, workload)
        fanfare = _sender(serve.webhook_url, size)
        load = asyncio.create_task(fanfare.run(workload.events))
        try:
            await fanfare.wait_acked(len(workload.events) // 3)

            async def count() -> int:
                async with scenario_pool(own.database_url) as pool:
                    return await in_flight(pool, fanfare)

            crashed_at, flight = await _crash_a_backend_mid_query(own.database_url, count)
            # The positive signal: events published after the crash (the
            # relay is back), or the process gave up.
            await wait_for(
                lambda: _alive_and(serve, _published_since(own.database_url, crashed_at)),
                timeout=90,
                interval=0.5,
            )
            procs.assert_alive()
        except BaseException:
            load.cancel()
            raise
        await load
        async with scenario_pool(own.database_url) as pool:
            figures = await measure(pool, fanfare, flight)
        procs.assert_alive()
    return figures


# --- a broker of three lost --------------------------------------------------------------


def kafka_cluster(*args: str, stack_dir: Path, port: str) -> str:
    """deploy/local/kafka-cluster.sh with the given arguments."""
    done = subprocess.run(
        [str(LOCAL / "kafka-cluster.sh"), *args],
        env=dict(os.environ, STACK_DIR=str(stack_dir), KAFKA_CLUSTER_PORT=port),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"kafka-cluster.sh {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


async def topic_layout(bootstrap: str, topic: str) -> tuple[list[dict[str, Any]], str]:
    """The topic's partitions (leader, replicas, ISR) and its
    min.insync.replicas."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        [configs] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entries = configs.to_object()["resources"][0]["config_entries"]
        min_isr = next(
            e["config_value"] for e in entries if e["config_names"] == "min.insync.replicas"
        )
        return list(described["partitions"]), str(min_isr)
    finally:
        await admin.close()


async def broker_sigkill(
    stack: Stack,
    base: Settings,
    size: Size,
    seed: int,
    bootstrap: str,
    kill: Callable[[int], object],
) -> dict[str, Any]:
    """`serve` against three brokers (RF 3, min ISR 2); the node leading most
    command partitions is SIGKILLed mid-load (by `kill`) and stays down."""
    cluster = base.model_copy(
        update={"kafka_bootstrap_servers": bootstrap, "topic_replication_factor": 3}
    )
    workload = build_workload(seed, size.admissions)
    async with (
        isolated_settings(stack, cluster) as iso,
        scenario_pool(iso.database_url) as pool,
        processes(iso, TOPIC_REPLICATION_FACTOR="3") as procs,
    ):
        for topic in (iso.commands_topic, iso.events_topic, iso.dead_letter_topic):
            partitions, min_isr = await topic_layout(bootstrap, topic)
            assert min_isr == "2", topic
            assert all(len(p["replicas"]) == 3 for p in partitions), partitions
        serve = await procs.start("serve")
        await prepare(pool, iso, workload)
        fanfare = _sender(serve.webhook_url, size)
        load = asyncio.create_task(fanfare.run(workload.events))
        try:
            await fanfare.wait_acked(len(workload.events) // 3)
            partitions, _ = await topic_layout(bootstrap, iso.commands_topic)
            leaders = Counter(p["leader"] for p in partitions)
            victim = leaders.most_common(1)[0][0]
            flight = await in_flight(pool, fanfare)
            await asyncio.to_thread(kill, victim)
            # The two that remain take writes: acknowledgements go on.
            acked = len(fanfare.acked)
            await fanfare.wait_acked(acked + 60, timeout=90)
        except BaseException:
            load.cancel()
            raise
        await load
        figures = await measure(pool, fanfare, flight)
        # The relay lived through it too: every event is published.
        await wait_for(
            lambda: pool.fetchval(
                "SELECT count(*) = 0 FROM outbox WHERE "
                "seq > (SELECT published_seq FROM outbox_position)"
            ),
            timeout=60,
        )
        # Leadership leaves the dead node when the controller fences it,
        # broker.session.timeout.ms after the kill (later if the node was the
        # active controller too). Only partitions that carry load wait for
        # that; the others may still name the victim a moment after the load
        # ended, so the check waits for the fencing instead of assuming it.
        after: list[dict[str, Any]] = []

        async def moved() -> bool:
            after[:], _ = await topic_layout(bootstrap, iso.commands_topic)
            return all(p["leader"] != victim for p in after)

        try:
            await wait_for(moved, timeout=60, interval=0.5)
        except AssertionError:
            raise AssertionError(f"node {victim} still leads after 60 s: {after}") from None
        procs.assert_alive()
    figures["killed_broker"] = victim
    figures["killed_broker_led_partitions"] = leaders[victim]
    return figures
