"""What every stage shares: the run's context, figures and results, and a
fresh database and topics per stage."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from bench.stack import BenchStack
from worker.adapters import kafka, postgres
from worker.config import Settings


@dataclass
class Figure:
    """One measured number, with its same-run baseline and target."""

    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None
    # Ratio to the baseline, oriented so that bigger is better.
    ratio: float | None = None
    target: str | None = None
    meets: bool | None = None
    note: str | None = None
    # The machine's limit for the same work, measured in the same run, and
    # the figure's share of it (bigger is closer to the limit).
    ceiling: float | None = None
    ceiling_name: str | None = None
    ceiling_share: float | None = None


@dataclass
class Check:
    """One correctness check a stage ran (bench/checks.py)."""

    name: str
    passed: bool
    detail: str


@dataclass
class StageResult:
    name: str
    title: str
    status: str = "ok"  # ok | failed | not available
    reason: str | None = None
    seconds: float = 0.0
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    charts: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def figure(self, name: str) -> Figure | None:
        return next((f for f in self.figures if f.name == name), None)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Sizes:
    ingest_seconds: float
    ingest_warmup_seconds: float
    ingest_connections: int
    apply_consumers: int
    apply_products: int
    apply_experiences: int
    hot_admissions: int
    hot_units: int
    e2e_rate: float
    e2e_seconds: float
    expiry_holds: int
    expiry_spread_seconds: float
    rebuild_events: int
    failover_rate: float
    failover_seconds: float
    failover_kill_at: float
    failover_restart_after: float
    failover_term_at: float
    failover_gone_at: float
    # The curves (bench/stages/curve_*.py): one run a point.
    curve_batch_sizes: tuple[int, ...]
    curve_apply_consumers: int
    curve_hot_admissions: int
    curve_prefill_admissions: tuple[int, ...]
    curve_prefill_template: int
    curve_rates: tuple[float, ...]
    curve_rate_seconds: float


FULL = Sizes(
    ingest_seconds=15,
    ingest_warmup_seconds=3,
    ingest_connections=64,
    apply_consumers=15_000,  # 15,000 carts + 15,000 admissions = 30,000 commands
    apply_products=16,
    apply_experiences=8,
    hot_admissions=100_000,
    hot_units=1_000,
    e2e_rate=1000,
    e2e_seconds=30,
    expiry_holds=10_000,
    expiry_spread_seconds=60,
    rebuild_events=1_000_000,
    failover_rate=500,
    failover_seconds=80,
    failover_kill_at=20,
    failover_restart_after=2,
    failover_term_at=40,
    failover_gone_at=60,
    curve_batch_sizes=(50, 100, 250, 500, 1_000, 2_000),
    curve_apply_consumers=5_000,
    curve_hot_admissions=20_000,
    curve_prefill_admissions=(0, 1_000_000, 5_000_000),
    curve_prefill_template=1_000,
    curve_rates=(250, 500, 1_000, 2_000, 4_000),
    curve_rate_seconds=10,
)
SMOKE = Sizes(
    ingest_seconds=2,
    ingest_warmup_seconds=0.5,
    ingest_connections=16,
    apply_consumers=1_000,
    apply_products=4,
    apply_experiences=4,
    hot_admissions=5_000,
    hot_units=1_000,
    e2e_rate=200,
    e2e_seconds=3,
    expiry_holds=500,
    expiry_spread_seconds=5,
    rebuild_events=5_000,
    failover_rate=100,
    failover_seconds=14,
    failover_kill_at=3,
    failover_restart_after=1,
    failover_term_at=7,
    failover_gone_at=11,
    curve_batch_sizes=(100, 1_000),
    curve_apply_consumers=500,
    curve_hot_admissions=2_000,
    curve_prefill_admissions=(0, 20_000),
    curve_prefill_template=100,
    curve_rates=(100, 200),
    curve_rate_seconds=2,
)


@dataclass
class Context:
    stack: BenchStack
    base: Settings
    out_dir: Path
    smoke: bool
    sizes: Sizes
    commit_timestamps: bool
    partitions: int = 12
    profile: str | None = None  # the stage whose service process py-spy records
    # Which of the repeated runs of a stage this is: odd runs measure the
    # baseline first, so neither side always runs on the warmer machine.
    repeat_index: int = 0
    # Where `python -m worker` runs from and its migrations come from: the
    # work tree, or a snapshot of a commit (--worker-rev).
    worker_root: Path = field(default_factory=lambda: Path(__file__).resolve().parents[1])
    worker_label: str = "work tree"
    # The machine's ceilings measured at the run's start (bench/ceilings.py).
    ceilings: dict[str, Any] = field(default_factory=dict)
    # Figures later stages may size themselves by (e.g. the apply rate).
    measured: dict[str, float] = field(default_factory=dict)

    def log_dir(self, stage: str) -> Path:
        path = self.out_dir / "logs" / stage
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class Namespace:
    settings: Settings
    admin_url: str

    @property
    def database_url(self) -> str:
        return self.settings.database_url


@contextlib.asynccontextmanager
async def fresh_namespace(ctx: Context) -> AsyncIterator[Namespace]:
    """A database of its own, migrated (from the worker root's sql/), and
    topics of their own, as tests/isolated.py makes them; both dropped
    afterwards."""
    tag = uuid.uuid4().hex[:10]
    async with extra_database(ctx.stack.database_url, "bench") as url:
        await postgres.migrate(url, ctx.worker_root / "sql")
        settings = ctx.base.model_copy(
            update={
                "database_url": url,
                "commands_topic": f"b{tag}.commands",
                "events_topic": f"b{tag}.events",
                "dead_letter_topic": f"b{tag}.commands.dlq",
                "consumer_group": f"b{tag}.consumers",
                "topic_partitions": ctx.partitions,
            }
        )
        await kafka.ensure_topics(settings)
        try:
            yield Namespace(settings, ctx.stack.database_url)
        finally:
            await delete_topics(
                settings,
                [settings.commands_topic, settings.events_topic, settings.dead_letter_topic],
            )


@contextlib.asynccontextmanager
async def extra_database(admin_url: str, prefix: str) -> AsyncIterator[str]:
    """An empty database (the naive baseline's, a rebuild target), dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    head, _, _ = admin_url.rpartition("/")
    try:
        yield f"{head}/{name}"
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def delete_topics(settings: Settings, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [t for t in topics if t in existing]
        if doomed:
            with contextlib.suppress(Exception):
                await admin.delete_topics(doomed)
    finally:
        await admin.close()


async def create_topic(settings: Settings, name: str, partitions: int) -> None:
    from aiokafka.admin import NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


APP_NAME = "bench"  # application_name of the benchmark's own connections


async def connect(dsn: str) -> asyncpg.Connection:
    """A connection of the benchmark's own, told apart from the service's in
    pg_stat_activity by its application_name."""
    return await asyncpg.connect(dsn, server_settings={"application_name": APP_NAME})


async def create_pool(dsn: str, size: int = 2) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=size, server_settings={"application_name": APP_NAME}
    )
    assert pool is not None
    return pool


async def scalar(dsn: str, sql: str, *args: Any) -> Any:
    conn = await connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()
