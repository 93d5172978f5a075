"""Expiry scheduler, two replicas at once, and reconcile."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg

from tests import builders as b
from tests.conftest import service_env
from tests.helpers import REPO, ServiceProcess, produce_commands, unique, wait_for
from tests.isolated import read_all
from worker.adapters import kafka, kafka_sender
from worker.clock import ManualClock
from worker.config import Settings
from worker.domain.commands import decode_command
from worker.domain.events import decode_event
from worker.roles.scheduler import ExpiryScheduler


async def test_two_scheduler_replicas_expire_every_hold_exactly_once(
    service: ServiceProcess, settings: Settings, db: asyncpg.Pool
) -> None:
    # `service` runs every role, its scheduler included; a second replica
    # runs beside it as its own process.
    replica = ServiceProcess(["scheduler"], service_env(settings, OPS_PORT="0"))
    await replica.start()
    try:
        exp, product = unique("queue"), unique("prod")
        consumers = [unique("cons") for _ in range(40)]
        setup = [b.stock(product, 1000), b.configure(exp, window_seconds=1, buffer_seconds=0)]
        setup += [b.cart(exp, c, b.line(product, 2)) for c in consumers]
        await produce_commands(settings, setup)
        await wait_for(
            lambda: db.fetchval(
                "SELECT count(*) = $2 FROM carts WHERE experience_id = $1", exp, len(consumers)
            )
        )
        await wait_for(
            lambda: db.fetchval("SELECT true FROM experiences WHERE experience_id=$1", exp)
        )
        # Stock is keyed by product, on another partition: wait for it too.
        await wait_for(lambda: db.fetchval("SELECT true FROM stock WHERE product_id=$1", product))
        await produce_commands(settings, [b.admit(exp, c, f"{exp}-{c}") for c in consumers])

        async def all_expired() -> bool:
            counts = await db.fetchrow(
                """SELECT count(*) FILTER (WHERE status = 'expired') AS expired,
                          count(*) AS total FROM reservations WHERE experience_id = $1""",
                exp,
            )
            return bool(counts["total"] == len(consumers) and counts["expired"] == len(consumers))

        await wait_for(all_expired, timeout=60)
        row = await db.fetchrow(
            "SELECT reserved, sold FROM stock WHERE product_id = $1 AND variant_id = ''", product
        )
        assert (row["reserved"], row["sold"]) == (0, 0)
        reservation_ids = {
            r["id"]
            for r in await db.fetch("SELECT id FROM reservations WHERE experience_id = $1", exp)
        }

        async def expired_events() -> Counter[str] | None:
            raw = await read_all(settings, settings.events_topic)
            per_hold: dict[str, set[str]] = {}
            for value in raw:
                event = decode_event(value)
                if event.type == "reservation.expired" and event.experience_id == exp:
                    per_hold.setdefault(str(event.reservation_id), set()).add(str(event.event_id))
            if len(per_hold) < len(consumers):
                return None
            return Counter({k: len(v) for k, v in per_hold.items()})

        per_hold = await wait_for(expired_events, timeout=60, interval=1.0)
        assert set(per_hold) == {str(r) for r in reservation_ids}
        # One expiry event per hold: redeliveries may repeat an id, never add one.
        assert set(per_hold.values()) == {1}
        applied = await db.fetchval(
            """SELECT count(*) FROM inbox WHERE command_type = 'admission.end'
               AND outcome->>'status' = 'expired' AND command_id IN (
                   SELECT command_id FROM inbox) AND outcome->>'holdsEnded' = '1'"""
        )
        assert applied >= len(consumers)
    finally:
        await replica.stop()


async def test_scheduler_publishes_only_what_is_due_on_its_clock(
    settings: Settings, db: asyncpg.Pool
) -> None:
    """In-process with a manual clock: nothing before expires_at, then one
    deterministic expiry command per admission."""
    from tests.engine_backends import PostgresEngine

    engine = PostgresEngine(db)
    exp, cons, product = unique("queue"), unique("cons"), unique("prod")
    t0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)  # far from any other test's holds
    await engine(b.stock(product, 5))
    await engine(b.cart(exp, cons, b.line(product, 1)))
    await engine(b.admit(exp, cons, f"{exp}-grant", t0))

    clock = ManualClock(t0 + timedelta(seconds=659))
    topic_settings = settings.model_copy(
        update={"commands_topic": f"{settings.commands_topic}.sched"}
    )
    await kafka.ensure_topics(topic_settings)
    producer = kafka.durable_producer(topic_settings)
    await producer.start()
    try:
        scheduler = ExpiryScheduler(
            topic_settings, db, kafka_sender.ProducerSlot(producer, None), clock=clock
        )
        mine = [d for d in await scheduler.due(clock.now()) if d.experience_id == exp]
        assert mine == []
        clock.advance(1)
        mine = [d for d in await scheduler.due(clock.now()) if d.experience_id == exp]
        assert len(mine) == 1
        assert mine[0].expires_at == t0 + timedelta(seconds=660)
        await scheduler.publish(mine, clock.now())
        await scheduler.publish(mine, clock.now())  # a second replica's duplicate
    finally:
        await producer.stop()
    raw = await read_all(topic_settings, topic_settings.commands_topic, expect_at_least=2)
    commands = [decode_command(v) for v in raw]
    mine_cmds = [c for c in commands if getattr(c, "experience_id", None) == exp]
    assert len(mine_cmds) == 2
    assert len({c.command_id for c in mine_cmds}) == 1  # duplicates share the id
    assert mine_cmds[0].occurred_at == t0 + timedelta(seconds=660)


def _reconcile(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "reconcile", *args],
        env=service_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_reconcile_reports_repairs_and_then_is_clean(
    settings: Settings, db: asyncpg.Pool
) -> None:
    from tests.engine_backends import PostgresEngine

    engine = PostgresEngine(db)
    exp, cons, product = unique("queue"), unique("cons"), unique("prod")
    await engine(b.stock(product, 10))
    await engine(b.cart(exp, cons, b.line(product, 3)))
    await engine(b.admit(exp, cons, f"{exp}-g", datetime.now(UTC)))
    # Corrupt a counter by hand: the kind of drift reconcile exists for.
    await db.execute(
        "UPDATE stock SET reserved = reserved + 2 WHERE product_id = $1 AND variant_id = ''",
        product,
    )
    report = await asyncio.to_thread(_reconcile, settings)
    assert report.returncode == 1, report.stderr
    assert product in report.stdout
    assert "not repaired" in report.stdout
    repaired = await asyncio.to_thread(_reconcile, settings, "--repair")
    assert repaired.returncode == 1
    assert "repaired" in repaired.stdout
    assert (
        await db.fetchval(
            "SELECT reserved FROM stock WHERE product_id = $1 AND variant_id = ''", product
        )
        == 3
    )
    clean = await asyncio.to_thread(_reconcile, settings)
    assert clean.returncode == 0, clean.stdout
    assert "no drift" in clean.stdout
