"""The unit of work's round trips are fixed per batch, however many commands
it holds (README, Layout: the batch's rows are loaded in at most twelve
set-based statements and written one statement per table)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

from tests import builders as b
from tests.helpers import unique
from worker.adapters import uow_flush, uow_load
from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import stored_cart_items
from worker.domain.commands import Command, CommandBase
from worker.domain.model import ExperienceSettings
from worker.engine import Coordinates, apply_batch, apply_command

DEFAULTS = ExperienceSettings()
T0 = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)
# experiences, grant tombstones, admissions, carts, endings, cart versions,
# reservations, holds released by id, holds released by product, stock
# created, stock locked, pools.
LOAD_STATEMENTS = 12
# With backfill on: its candidates, and the holds of those the batch had
# not read (worker.adapters.uow_backfill).
BACKFILL_STATEMENTS = 2
# experiences, stock, carts, cart versions, admissions (new, changed),
# endings, reservations (new, changed), pools, the outbox commit lock,
# outbox, inbox.
FLUSH_STATEMENTS = 13


SENDS = frozenset(
    {"fetch", "fetchrow", "fetchval", "execute", "executemany", "copy_records_to_table"}
)


class Counting:
    """A connection that counts the statements sent through it (and has
    nothing else: a statement sent another way fails the test)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.statements = 0

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name not in SENDS:
            raise AttributeError(name)
        method = getattr(self.conn, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.statements += 1
            return await method(*args, **kwargs)

        return counted


def _setup(run: str, n: int, backfill: bool) -> list[CommandBase]:
    """Per round: a pooled experience, a stock row, and an admission that
    holds a unit (the batch ends it). With backfill: the row's one unit is
    held, and an admission outside the batch is refused it, which the
    batch's stock raise offers to."""
    commands: list[CommandBase] = []
    for i in range(n):
        exp, sku = f"{run}-e{i}", f"{run}-p{i}"
        commands += [
            b.stock(sku, 1 if backfill else 10),
            b.configure(exp, strategy="pool", pool_size=5, backfill=backfill),
            b.cart(exp, "held", b.line(sku, 1), at=T0),
            b.admit(exp, "held", f"{run}-old-{i}", T0),
        ]
        if backfill:
            commands += [
                b.cart(exp, "waiting", b.line(sku, 1), at=T0),
                b.admit(exp, "waiting", f"{run}-waiting-{i}", T0),
            ]
    return commands


def _batch(run: str, n: int, backfill: bool) -> list[Command]:
    """Per round, one command of each kind, touching every table."""
    commands: list[CommandBase] = []
    for i in range(n):
        exp, sku, at = f"{run}-e{i}", f"{run}-p{i}", T0 + timedelta(seconds=10)
        commands += [
            b.stock(sku, 20).model_copy(update={"occurred_at": at}),
            b.configure(exp, strategy="pool", pool_size=6, backfill=backfill),
            b.end(exp, "held", None, at=at),
            b.cart(exp, "new", b.line(sku, 1), at=at),
            b.admit(exp, "new", f"{run}-new-{i}", at),
            b.complete(exp, "sold", None, f"{run}-order-{i}", at=at),
            b.release(exp, reservation_ids=[uuid.uuid4()], at=at),
            b.release(exp, product=sku, at=at),
        ]
    return commands  # type: ignore[return-value]


async def _apply(pool: asyncpg.Pool, commands: list[CommandBase]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        placed = [(c, Coordinates("t", 0, n)) for n, c in enumerate(commands)]
        await apply_batch(conn, placed, DEFAULTS)  # type: ignore[arg-type]


async def _round_trips(pool: asyncpg.Pool, n: int, backfill: bool = False) -> tuple[int, int, int]:
    """Statements loaded and flushed, and the units backfilled."""
    run = unique("rt")
    await _apply(pool, _setup(run, n, backfill))
    commands = _batch(run, n, backfill)
    async with pool.acquire() as conn, conn.transaction():
        counting = Counting(conn)
        uow = UnitOfWork()
        await uow_load.load(uow, counting, commands)  # type: ignore[arg-type]
        loaded, counting.statements = counting.statements, 0
        backfilled = 0
        for offset, command in enumerate(commands):
            applied = apply_command(uow, command, DEFAULTS)
            outcome, events = applied.outcome, applied.events
            uow.record(command.command_id, command.type, outcome, events, "t", 0, offset)
            backfilled += sum(getattr(e, "reason", None) == "backfill" for e in events)
        await uow_flush.flush(uow, counting)  # type: ignore[arg-type]
        return loaded, counting.statements, backfilled


@pytest.mark.parametrize("n", [1, 10, 200])
async def test_a_batch_loads_and_flushes_in_a_fixed_number_of_statements(
    engine_db: asyncpg.Pool, n: int
) -> None:
    """n rounds of one command of each kind (n * 8 commands)."""
    assert await _round_trips(engine_db, n) == (LOAD_STATEMENTS, FLUSH_STATEMENTS, 0)


@pytest.mark.parametrize("n", [1, 10, 200])
async def test_backfill_loads_a_fixed_number_of_statements_more(
    engine_db: asyncpg.Pool, n: int
) -> None:
    """The same rounds with backfill on, and candidates outside the batch."""
    loaded = LOAD_STATEMENTS + BACKFILL_STATEMENTS
    # Each round's raise goes to the refused admission.
    assert await _round_trips(engine_db, n, backfill=True) == (loaded, FLUSH_STATEMENTS, n)


@pytest.mark.parametrize(
    "command",
    [
        b.stock("rt-single", 3),
        b.configure("rt-single"),
        b.cart("rt-single", "c", b.line("rt-single", 1)),
        b.admit("rt-single", "c", "rt-single-grant"),
        b.end("rt-single", "c", None),
        b.complete("rt-single", "c", None, "rt-single-order"),
        b.release("rt-single", product="rt-single"),
    ],
    ids=lambda c: c.type,
)
async def test_a_batch_of_one_command_loads_no_more(
    engine_db: asyncpg.Pool, command: Command
) -> None:
    async with engine_db.acquire() as conn, conn.transaction():
        counting = Counting(conn)
        await uow_load.load(UnitOfWork(), counting, [command])  # type: ignore[arg-type]
        assert 0 < counting.statements <= LOAD_STATEMENTS


def test_a_stored_cart_is_validated_once_per_text_and_its_list_is_its_own() -> None:
    text = '[{"quantity": 2, "productId": "p", "variantId": null}]'
    first, second = stored_cart_items(text), stored_cart_items(text)
    assert first == second == [b.line("p", 2)]
    assert first[0] is second[0]  # immutable lines, shared
    first.append(b.line("q", 1))
    assert stored_cart_items(text) == [b.line("p", 2)]
    with pytest.raises(ValidationError):
        stored_cart_items('[{"productId": "p", "quantity": 0}]')
