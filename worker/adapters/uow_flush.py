"""Taking a unit of work's changes: every row changed since the last take,
as plain values (worker.adapters.changes.BatchChanges), each row marked
written as it is taken, so the unit of work can go on changing it while
the values are written."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from worker.adapters import rows as tables
from worker.adapters.changes import BatchChanges
from worker.adapters.store import Conn
from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.events import encode_event


def take_changes(uow: UnitOfWork) -> BatchChanges:
    """Everything changed since the last take, marking it written."""
    changes = BatchChanges(
        experiences=_experiences(uow),
        stock=_stock(uow),
        carts=_carts(uow),
        cart_versions=uow.new_cart_versions,
        new_endings=uow.new_endings,
        pools=_pools(uow),
        outbox=[
            (e.event_id, getattr(e, "type", ""), e.partition_key(), encode_event(e))
            for e in uow.outbox
        ],
        inbox=uow.inbox,
    )
    _admissions(uow, changes)
    _reservations(uow, changes)
    uow.new_endings, uow.outbox, uow.inbox = [], [], []
    uow.new_cart_versions = []
    return changes


async def flush(uow: UnitOfWork, conn: Conn) -> None:
    """Write every change not yet written."""
    await take_changes(uow).write(conn)


def _experiences(uow: UnitOfWork) -> list[tuple[str, tuple[Any, ...], datetime]]:
    taken = [
        (i, tables.experience_values(uow.experiences[i]), uow.experiences_dirty[i])
        for i in sorted(uow.experiences_dirty)
    ]
    uow.experiences_dirty = {}
    return taken


def _stock(uow: UnitOfWork) -> list[tuple[str, str, int, int, int, datetime | None]]:
    taken = []
    for key, row in sorted(uow.stock.items()):
        if row.dirty:
            taken.append((*key, row.on_hand, row.reserved, row.sold, row.updated_at))
            row.dirty, row.updated_at = False, None
    return taken


def _carts(uow: UnitOfWork) -> list[tuple[str, str, str, datetime]]:
    taken = []
    for key, cart in sorted(uow.carts.items()):
        if cart.dirty:
            items = [i.model_dump(mode="json", by_alias=True) for i in cart.items]
            taken.append((*key, orjson.dumps(items).decode(), cart.updated_at))
            cart.dirty = False
    return taken


def _pools(uow: UnitOfWork) -> list[tuple[str, str, str, int]]:
    taken = []
    for key, pool in sorted(uow.pools.items()):
        if pool.dirty:
            taken.append((*key, pool.used))
            pool.dirty = False
    return taken


def _admissions(uow: UnitOfWork, changes: BatchChanges) -> None:
    new = [a for a in uow.admissions.values() if a.new]
    changes.new_admissions = tables.admission_records(new)
    for a in uow.admissions.values():
        if a.dirty and not a.new:
            changes.changed_admissions.append(
                (a.grant_digest, a.status, a.ended_at, a.end_reason, a.order_id)
            )
        a.new = a.dirty = False


def _reservations(uow: UnitOfWork, changes: BatchChanges) -> None:
    new = [r for r in uow.reservations.values() if r.new]
    changes.new_reservations = tables.reservation_records(new)
    for r in uow.reservations.values():
        if r.dirty and not r.new:
            changes.changed_reservations.append(
                (r.id, r.status, r.converted_at, r.order_id, r.ended_at, r.end_reason)
            )
        r.new = r.dirty = False
