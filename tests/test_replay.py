"""Issue 7, rebuild: folding the events topic reproduces the live tables.

Unit tests check the pure fold against the engine's own rows (the engine
run in memory on mixed traffic), in one batch and across batch boundaries.
The acceptance test runs the real consumers and relay on several partitions,
then the real `replay` CLI: `--verify` finds no difference, folding twice
changes nothing, and a row altered by hand is named in the diff."""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
from collections import Counter
from datetime import timedelta
from typing import Any, cast
from uuid import UUID

import asyncpg
import pytest
from aiokafka import ConsumerRecord

from tests import builders as b
from tests.conftest import service_env
from tests.fold_support import Tables, engine_rows, on_the_wire, run_engine
from tests.helpers import ServiceProcess, run_worker, wait_for
from tests.isolated import isolated_settings, produce_bulk
from tests.stack import Stack
from tests.traffic import T0, stock_levels, traffic
from worker.adapters import kafka
from worker.adapters.kafka import SEQ_HEADER
from worker.config import Settings
from worker.domain.events import (
    AdmissionRecorded,
    ReservationCreated,
    ReservationEnded,
    ReservationRejected,
    encode_event,
)
from worker.replay import sink
from worker.replay.diff import compare
from worker.replay.fold import Known, Needs, fold, needs
from worker.replay.rebuild import ReplayError, _decode_all
from worker.replay.sink import Planned, Planner
from worker.replay.source import Start

# --- the pure fold ---------------------------------------------------------------


def _engine(seed: int) -> tuple[Any, list[Any]]:
    uow, events = run_engine([*stock_levels(), *traffic(seed, consumers=60)])
    return uow, on_the_wire(events)


@pytest.mark.parametrize("seed", range(8))
def test_fold_of_the_events_is_the_engine_rows(seed: int) -> None:
    uow, events = _engine(seed)
    changes = fold(events)
    assert changes.warnings == []
    tables = Tables()
    tables.apply(changes)
    assert tables.rows() == engine_rows(uow)


@pytest.mark.parametrize("size", [1, 2, 7, 64])
def test_fold_across_batches_equals_one_batch(size: int) -> None:
    """Each batch folds against what earlier ones wrote, as the sink loads it."""
    uow, events = _engine(3)
    rng = random.Random(size)
    tables = Tables()
    i = 0
    while i < len(events):
        n = rng.randint(1, size)
        batch = events[i : i + n]
        changes = fold(batch, tables.known(needs(batch)))
        assert changes.warnings == []
        tables.apply(changes)
        i += n
    assert tables.rows() == engine_rows(uow)


class _MemoryPlanner(Planner):
    """The planner over `Tables`: what the writer has committed so far."""

    def __init__(self, tables: Tables, fresh: bool) -> None:
        super().__init__(cast(Any, None), fresh=fresh)
        self.tables = tables
        self.applied: set[int] = set()

    async def committed_applied(self, ids: list[UUID]) -> set[int]:
        return {i.int for i in ids} & self.applied

    async def committed_known(self, wanted: Needs) -> Known:
        return self.tables.known(wanted)

    def commit(self, planned: Planned) -> None:
        self.tables.apply(planned.changes)
        self.applied |= {i.int for i, _ in planned.applied}
        self.committed(planned)


@pytest.mark.parametrize(
    ("seed", "fresh", "remembered"),
    [(0, False, 0), (1, False, 0), (2, True, 10**9), (3, True, 10**9), (4, True, 300)],
)
async def test_planning_ahead_of_the_writer_equals_one_batch(
    seed: int, fresh: bool, remembered: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches are folded while up to four earlier ones are not committed
    yet: what those will write (applied ids, admissions' strategies,
    remembered endings) must count as written, and an event the relay sent
    again (even into a batch still pending) must fold once; also when the
    planner remembers the ids of a fresh target, and after it forgot them."""
    monkeypatch.setattr(sink, "REMEMBERED_IDS", remembered)
    uow, events = _engine(seed)
    rng = random.Random(seed)
    log = [(n, e) for n, e in enumerate(events)]
    for _ in range(40):  # resends, a few events later in the log
        at = rng.randrange(len(log))
        log.insert(min(len(log), at + rng.randint(1, 30)), log[at])
    planner = _MemoryPlanner(Tables(), fresh)
    in_flight: list[Planned] = []
    folded = i = 0
    while i < len(log):
        n = rng.randint(1, 12)
        planned = await planner.plan(log[i : i + n])
        assert planned.changes.warnings == []
        in_flight.append(planned)
        folded += len(planned.applied)
        while len(in_flight) > rng.randint(0, 4):
            planner.commit(in_flight.pop(0))
        i += n
    for planned in in_flight:
        planner.commit(planned)
    assert planner.tables.rows() == engine_rows(uow)
    assert folded == len(events)


def _record(offset: int, value: bytes) -> Any:
    return ConsumerRecord("t", 3, offset, 0, 0, None, value, None, 0, len(value), [])


def test_a_malformed_event_stops_the_replay_naming_it() -> None:
    """Events are decoded a slice at a time; the error still names the one
    record that does not validate."""
    _, events = _engine(0)
    good = encode_event(events[0])
    bad = good.replace(b'"eventId":"', b'"eventId":"x', 1)
    records = [(1, _record(6, good)), (2, _record(7, bad)), (3, _record(8, good))]
    with pytest.raises(ReplayError, match=r"event at t 3:7 cannot be decoded"):
        _decode_all(records)
    assert [e for _, e in _decode_all(records[:1])] == events[:1]


def test_traffic_exercises_every_fact() -> None:
    seen: Counter[str] = Counter()
    for seed in range(8):
        _, events = _engine(seed)
        for e in events:
            seen[e.type] += 1
            if isinstance(e, AdmissionRecorded):
                seen[f"recorded:{e.status}:{e.end_reason is not None}"] += 1
            if isinstance(e, ReservationRejected):
                seen[f"rejected:{e.reason}"] += 1
            if isinstance(e, ReservationCreated) and e.reason is not None:
                seen[f"created:{e.reason}"] += 1
            if isinstance(e, ReservationEnded):
                seen[f"ended:{e.reason}"] += 1
                seen[f"from:{e.previous_status}"] += 1
    expected = {
        "experience.configured",
        "experience.refused",
        "stock.set",
        "stock.refused",
        "cart.updated",
        "admission.recorded",
        "admission.ended",
        "admission.ending_remembered",
        "admission.revised",
        "reservation.created",
        "reservation.rejected",
        "reservation.released",
        "reservation.expired",
        "reservation.converted",
        "checkout.rejected",
        "recorded:active:False",
        "recorded:superseded:True",
        "recorded:released:True",
        "rejected:INSUFFICIENT_STOCK",
        "rejected:POOL_EMPTY",
        "rejected:CART_ALL_OR_NOTHING",
        "ended:cart_changed",
        "ended:operator",
        "ended:superseded",
        "ended:window_elapsed",
        "ended:checkout",
        "ended:not_ordered",
        "from:released",
        "reservation.late_conversion_unfilled",
        "reservation.extended",
        "admission.reopened",
        "admission.retried",
        "created:backfill",
    }
    assert expected <= set(seen), expected - set(seen)


def test_admission_recorded_ended_takes_the_remembered_time() -> None:
    """An admission whose endings came first is recorded with the earliest
    of them, reason and time, and the fold writes exactly that."""
    late = b.end("x", "c", "g", reason="left", at=T0 + timedelta(seconds=50))
    early = b.end("x", "c", "g", reason="denied", at=T0 + timedelta(seconds=20))
    uow, events = run_engine([late, early, b.admit("x", "c", "g", T0)])
    tables = Tables()
    tables.apply(fold(on_the_wire(events)))
    (admission,) = tables.admissions.values()
    assert (admission.status, admission.end_reason, admission.ended_at) == (
        "released",
        "denied",
        early.ended_at,
    )
    assert tables.rows() == engine_rows(uow)


def test_a_pending_retry_and_its_taking_up_fold_to_the_engine_rows() -> None:
    """A retry refused NOT_EXPIRED is kept pending; Fanfare's expiry from
    before it arrives and makes it count. A rebuild keeps both rows (the
    pending retry, and the retry as taken up) and the holds taken again."""
    due = T0 + timedelta(seconds=660)
    cmds = [
        b.configure("r", retry_window_seconds=120),
        b.stock("r-p", 5),
        b.cart("r", "c", b.line("r-p", 1), at=T0 - timedelta(seconds=30)),
        b.admit("r", "c", "g", T0),
        b.retry("r", "c", "g", due + timedelta(seconds=33)),
        b.retry("r", "c", "g", due + timedelta(seconds=75)),
        b.end(
            "r",
            "c",
            None,
            outcome="expired",
            reason="admission_expired",
            at=due + timedelta(seconds=54),
        ),
    ]
    uow, events = run_engine(cmds)
    kinds = Counter(e.type for e in events)
    assert (kinds["admission.retry_kept"], kinds["admission.retried"]) == (1, 2)
    kept = sorted((e.outcome, e.reason, e.follows is None) for e in uow.endings[("r", "c")])
    assert kept == [
        ("active", "admission_expired", False),  # the pending retry, taken up
        ("active", "not_expired", True),  # the pending retry as refused
        ("active", "window_elapsed", False),  # the first retry
        ("expired", "admission_expired", True),  # Fanfare's expiry, without a grant
    ]
    tables = Tables()
    tables.apply(fold(on_the_wire(events)))
    assert tables.rows() == engine_rows(uow)


def test_pool_row_written_by_a_rejection_exists_at_zero() -> None:
    """The engine takes the pool unit, finds no stock, gives it back, and
    writes the row: a rebuild must have the same row."""
    cmds = [
        b.configure("p", strategy="pool", pool_size=5),
        b.stock("sold-out", 0),
        b.cart("p", "c", b.line("sold-out", 1)),
        b.admit("p", "c", "g", T0),
    ]
    uow, events = run_engine(cmds)
    changes = fold(on_the_wire(events))
    assert changes.pools == {("p", "sold-out", ""): 0}
    tables = Tables()
    tables.apply(changes)
    assert tables.rows() == engine_rows(uow)


def test_start_positions_parse() -> None:
    start = Start.parse(["3:40", "12", "0:7"], None)
    assert (start.offset, start.partition_offsets, start.time) == (12, {3: 40, 0: 7}, None)
    assert Start.parse(None, None) == Start()


def test_fold_from_the_middle_warns_instead_of_guessing() -> None:
    _, events = _engine(1)
    ended = [e for e in events if isinstance(e, ReservationEnded)]
    changes = fold(ended[:3])
    assert changes.warnings
    assert "unknown" in changes.warnings[0]


# --- acceptance: the real services and CLI ---------------------------------------


async def _run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_worker, env, *args)


SNAPSHOT = [
    "SELECT product_id, variant_id, on_hand, reserved, sold, updated_at FROM stock ORDER BY 1, 2",
    "SELECT * FROM reservations ORDER BY id",
    "SELECT * FROM admissions ORDER BY admission_grant",
    "SELECT * FROM carts ORDER BY 1, 2",
    "SELECT * FROM experience_pools ORDER BY 1, 2, 3",
    "SELECT * FROM admission_endings ORDER BY command_id",
    "SELECT * FROM experiences ORDER BY 1",
    "SELECT event_id, seq FROM replay_applied ORDER BY 1",
]


async def _snapshot(url: str) -> list[list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        return [[tuple(r) for r in await conn.fetch(q)] for q in SNAPSHOT]
    finally:
        await conn.close()


async def _drift(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Counters against rows (guarantee 2), pools per variant too (the
    check in tests/engine_backends.py groups pools by product only)."""
    rows = await conn.fetch(
        """SELECT 'stock' AS t, s.product_id, s.variant_id, s.reserved AS counted,
                  COALESCE(sum(r.quantity) FILTER (WHERE r.status = 'active'), 0) AS held
           FROM stock s LEFT JOIN reservations r USING (product_id, variant_id)
           GROUP BY 1, 2, 3, 4
           HAVING s.reserved <> COALESCE(sum(r.quantity) FILTER (WHERE r.status = 'active'), 0)
           UNION ALL
           SELECT 'sold', s.product_id, s.variant_id, s.sold,
                  COALESCE(sum(r.quantity) FILTER (WHERE r.status = 'converted'), 0)
           FROM stock s LEFT JOIN reservations r USING (product_id, variant_id)
           GROUP BY 1, 2, 3, 4
           HAVING s.sold <> COALESCE(sum(r.quantity) FILTER (WHERE r.status = 'converted'), 0)
           UNION ALL
           SELECT 'pool:' || p.experience_id, p.product_id, p.variant_id, p.used,
                  COALESCE(sum(r.quantity)
                           FILTER (WHERE r.status IN ('active', 'converted')), 0)
           FROM experience_pools p LEFT JOIN reservations r
             ON r.experience_id = p.experience_id AND r.product_id = p.product_id
            AND r.variant_id = p.variant_id
           GROUP BY 1, 2, 3, 4
           HAVING p.used <> COALESCE(sum(r.quantity)
                                     FILTER (WHERE r.status IN ('active', 'converted')), 0)"""
    )
    return [dict(r) for r in rows]


async def test_replay_verify_rebuilds_live_state(stack: Stack, settings: Settings) -> None:
    async with isolated_settings(stack, settings, partitions=4) as iso:
        env = service_env(iso, OPS_PORT="0", CONSUMER_BATCH_MAX="40")
        services = [
            ServiceProcess(["consumer"], env),
            ServiceProcess(["consumer"], env),
            ServiceProcess(["relay"], env),
        ]
        for s in services:
            await s.start()
        conn = await asyncpg.connect(iso.database_url)
        try:
            # Stock first, so the traffic meets the levels it was written for.
            levels = stock_levels(scale=3)
            await produce_bulk(iso, levels)
            await wait_for(
                lambda: conn.fetchval("SELECT count(*) = $1 FROM stock", len(levels)), timeout=60
            )
            commands = traffic(seed=7, consumers=160)
            # Arrival order differs from the story order within a partition
            # only where the traffic says so; across partitions anything goes.
            await produce_bulk(iso, commands)
            total = len({c.command_id for c in [*levels, *commands]})
            await wait_for(
                lambda: conn.fetchval("SELECT count(*) >= $1 FROM inbox", total),
                timeout=120,
                interval=0.3,
            )
            await wait_for(
                lambda: conn.fetchval(
                    "SELECT count(*) > 0 AND bool_and(seq <= (SELECT published_seq "
                    "FROM outbox_position)) FROM outbox"
                ),
                timeout=60,
            )
            assert await _drift(conn) == []
            statuses = {r[0] for r in await conn.fetch("SELECT DISTINCT status FROM reservations")}
            assert {"active", "converted", "released", "expired"} <= statuses
            operator = "SELECT count(*) FROM reservations WHERE end_reason = 'operator'"
            assert await conn.fetchval(operator) > 0  # operator releases are replayed too
            backfilled = """SELECT count(*) FROM outbox WHERE event_type = 'reservation.created'
                AND convert_from(payload, 'UTF8')::jsonb->>'reason' = 'backfill'"""
            assert await conn.fetchval(backfilled) > 0  # and backfilled holds
            events = await conn.fetchval("SELECT count(*) FROM outbox")
            # The relay's crash window (sent, not yet marked): some events
            # are published again, later in their partitions.
            resent = await conn.fetch(
                "SELECT seq, partition_key, payload FROM outbox ORDER BY random() LIMIT 40"
            )
        finally:
            await conn.close()
            for s in services:
                await s.stop()
        producer = kafka.durable_producer(iso)
        await producer.start()
        try:
            for r in resent:
                await producer.send_and_wait(
                    iso.events_topic,
                    bytes(r["payload"]),
                    key=r["partition_key"].encode(),
                    headers=[(SEQ_HEADER, str(r["seq"]).encode())],
                )
        finally:
            await producer.stop()

        verified = await _run_cli(env, "replay", "--verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "no differences" in verified.stdout
        assert f"{events + 40:,} events read, {events:,} folded, 40 already" in verified.stdout

        # Small batches through the real sink: every batch boundary folds
        # against what the earlier batches wrote.
        head, _, _ = stack.database_url.rpartition("/")
        target = f"{head}/replay_target_{iso.consumer_group.split('.')[0]}"
        try:
            first = await _run_cli(
                env, "replay", "--target-database-url", target, "--batch-events", "97"
            )
            assert first.returncode == 0, first.stdout + first.stderr
            assert f" {events:,} folded" in first.stdout
            reports = await compare(iso.database_url, target)
            assert [d.render() for r in reports for d in r.diffs] == []
            before = await _snapshot(target)
            again = await _run_cli(env, "replay", "--target-database-url", target)
            assert again.returncode == 0, again.stdout + again.stderr
            assert " 0 folded" in again.stdout
            assert await _snapshot(target) == before
            # From a time after every event: nothing to fold, nothing breaks.
            later = await _run_cli(
                env,
                "replay",
                "--target-database-url",
                f"{target}_later",
                "--from-time",
                "2100-01-01",
            )
            assert later.returncode == 0, later.stderr
            assert later.stdout.startswith("replay: 0 events read")
        finally:
            admin = await asyncpg.connect(stack.database_url)
            try:
                for name in (target.rsplit("/", 1)[1], target.rsplit("/", 1)[1] + "_later"):
                    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()

        # Refused: folding into the live database would count everything twice.
        live = await _run_cli(env, "replay", "--target-database-url", iso.database_url)
        assert live.returncode == 2
        assert "live database" in live.stderr

        conn = await asyncpg.connect(iso.database_url)
        try:
            rid, qty = await conn.fetchrow(
                "SELECT id, quantity FROM reservations WHERE status = 'active' ORDER BY id LIMIT 1"
            )
            await conn.execute("UPDATE reservations SET quantity = quantity + 1 WHERE id = $1", rid)
        finally:
            await conn.close()
        altered = await _run_cli(env, "replay", "--verify")
        assert altered.returncode == 1, altered.stdout + altered.stderr
        diff_lines = [ln for ln in altered.stdout.splitlines() if ln.startswith("reservations ")]
        assert diff_lines == [f"reservations id={rid}: quantity: live={qty + 1} rebuilt={qty}"]
        assert re.search(r"^1 row\(s\) differ \(reservations 1\)", altered.stdout, re.M)
