"""The engine run in memory (its unit of work never touches a database once
loaded) and an in-memory copy of the replay sink, so the pure fold can be
checked against the engine's own rows without PostgreSQL or Kafka."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import orjson

from worker.adapters import rows as tables
from worker.adapters.rows import AdmissionRow, EndingRow, Pair, ReservationRow
from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import StockRow
from worker.domain.commands import Command, CommandBase, SetStock
from worker.domain.events import Event, EventBase, decode_event, encode_event
from worker.domain.model import ExperienceSettings
from worker.domain.stock import PoolKey, StockKey
from worker.engine import apply_command
from worker.replay.fold import Known, Needs
from worker.replay.fold_changes import ExperienceRow, FoldCart, FoldChanges

Rows = dict[str, dict[Any, tuple[Any, ...]]]

# The tables' columns but the key, as attribute names of the row dataclasses.
ADMISSION_COLUMNS = [c for c in tables.ADMISSION_COLUMNS if c != "admission_grant"]
RESERVATION_COLUMNS = [
    "grant_digest" if c == "admission_grant" else c for c in tables.RESERVATION_COLUMNS if c != "id"
]
ENDING_COLUMNS = [
    "experience_id",
    "consumer_id",
    "grant_digest",
    "outcome",
    "reason",
    "ended_at",
    "order_id",
    "follows",
    "retry_window_seconds",
]


def _pick(row: Any, columns: list[str]) -> tuple[Any, ...]:
    return tuple(getattr(row, c) for c in columns)


def run_engine(commands: Iterable[CommandBase]) -> tuple[UnitOfWork, list[EventBase]]:
    """Apply commands once each (the inbox), in order, as one long batch."""
    uow = UnitOfWork()
    defaults = ExperienceSettings()
    seen: set[UUID] = set()
    events: list[EventBase] = []
    for cmd in commands:
        if cmd.command_id in seen:
            continue
        seen.add(cmd.command_id)
        if isinstance(cmd, SetStock):
            # What the unit of work's load does: the row exists from its first level.
            uow.stock.setdefault((cmd.product_id, cmd.variant_id or ""), StockRow(0, 0, 0))
        command: Command = cmd  # type: ignore[assignment]
        events.extend(apply_command(uow, command, defaults).events)
    return uow, events


def on_the_wire(events: Iterable[EventBase]) -> list[Event]:
    return [decode_event(encode_event(e)) for e in events]


def engine_rows(uow: UnitOfWork) -> Rows:
    return {
        "experiences": {
            k: (*tables.experience_values(uow.experiences[k]), at)
            for k, at in uow.experiences_dirty.items()
        },
        "stock": {k: (r.on_hand, r.reserved, r.sold) for k, r in uow.stock.items()},
        "carts": {
            k: (orjson.loads(_items(c.items)), c.updated_at)
            for k, c in uow.carts.items()
            if c.dirty
        },
        "admissions": {g: _pick(a, ADMISSION_COLUMNS) for g, a in uow.admissions.items()},
        "admission_endings": {e.command_id: _pick(e, ENDING_COLUMNS) for e in uow.new_endings},
        "cart_versions": {
            (e, c, u, i): (orjson.loads(items),) for e, c, u, i, items in uow.new_cart_versions
        },
        "experience_pools": {k: (p.used,) for k, p in uow.pools.items() if p.dirty},
        "reservations": {i: _pick(r, RESERVATION_COLUMNS) for i, r in uow.reservations.items()},
    }


def _items(items: Sequence[Any]) -> str:
    return orjson.dumps([i.model_dump(mode="json", by_alias=True) for i in items]).decode()


class Tables:
    """What worker.replay.sink writes, kept in dictionaries."""

    def __init__(self) -> None:
        self.experiences: dict[str, ExperienceRow] = {}
        self.stock: dict[StockKey, list[int]] = {}
        self.carts: dict[Pair, FoldCart] = {}
        self.admissions: dict[str, AdmissionRow] = {}
        self.endings: dict[UUID, EndingRow] = {}
        self.cart_versions: dict[tuple[str, str, Any, UUID], str] = {}
        self.reservations: dict[UUID, ReservationRow] = {}
        self.pools: dict[PoolKey, int] = {}

    def known(self, needs: Needs) -> Known:
        return Known(
            strategies={
                g: self.admissions[g].strategy for g in needs.grant_digests if g in self.admissions
            },
            endings=[
                e
                for e in self.endings.values()
                if e.grant_digest in needs.ending_grant_digests
                or (e.experience_id, e.consumer_id) in needs.ending_pairs
            ],
        )

    def apply(self, c: FoldChanges) -> None:
        self.experiences.update(c.experiences)
        for key, s in c.stock.items():
            if s.on_hand is not None:
                self.stock.setdefault(key, [0, 0, 0])
            row = self.stock.get(key)
            if row is None:
                continue  # an UPDATE of a row that does not exist
            if s.on_hand is not None:
                row[0] = s.on_hand
            row[1] += s.reserved
            row[2] += s.sold
        self.carts.update(c.carts)
        for e, cons, u, i, items in c.cart_versions:
            self.cart_versions.setdefault((e, cons, u, i), items)
        for grant, a in c.admissions.items():
            assert grant not in self.admissions, "duplicate admission key"
            self.admissions[grant] = a
        for grant, close in c.admission_closes.items():
            a = self.admissions.get(grant)
            if a is not None and (a.status == "active" or close.revision):
                a.status, a.end_reason = close.status, close.end_reason
                a.ended_at, a.order_id = close.ended_at, close.order_id
        for grant, (expires_at, extensions) in c.admission_terms.items():
            a = self.admissions[grant]
            a.expires_at = expires_at
            if extensions is not None:
                a.extensions = extensions
        for e in c.endings:
            self.endings.setdefault(e.command_id, e)
        for rid, r in c.reservations.items():
            assert rid not in self.reservations, "duplicate reservation key"
            self.reservations[rid] = r
        for rid, expires_at in c.reservation_expiries.items():
            self.reservations[rid].expires_at = expires_at
        for rid, end in c.reservation_ends.items():
            r = self.reservations[rid]
            r.status, r.ended_at, r.end_reason = end.status, end.ended_at, end.end_reason
            r.converted_at, r.order_id = end.converted_at, end.order_id
        for key, delta in c.pools.items():
            self.pools[key] = self.pools.get(key, 0) + delta

    def rows(self) -> Rows:
        return {
            "experiences": {
                k: (*tables.experience_values(e.settings), e.updated_at)
                for k, e in self.experiences.items()
            },
            "stock": {k: tuple(v) for k, v in self.stock.items()},
            "carts": {k: (orjson.loads(c.items_json), c.updated_at) for k, c in self.carts.items()},
            "admissions": {g: _pick(a, ADMISSION_COLUMNS) for g, a in self.admissions.items()},
            "admission_endings": {i: _pick(e, ENDING_COLUMNS) for i, e in self.endings.items()},
            "cart_versions": {k: (orjson.loads(v),) for k, v in self.cart_versions.items()},
            "experience_pools": {k: (u,) for k, u in self.pools.items()},
            "reservations": {
                i: _pick(r, RESERVATION_COLUMNS) for i, r in self.reservations.items()
            },
        }
