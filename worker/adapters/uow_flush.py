"""Taking a unit of work's changes: every row changed since the last take,
as plain values (worker.adapters.changes.BatchChanges), each row marked
written as it is taken, so the unit of work can go on changing it while
the values are written."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from operator import attrgetter
from typing import Any, TypeVar

from worker.adapters import rows as tables
from worker.adapters.changes import BatchChanges
from worker.adapters.store import Conn
from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import CART_ITEMS, TrackedAdmission, TrackedReservation
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
    admissions, changes.changed_admissions = _taken(uow.admissions.values(), _ADMISSION_END)
    changes.new_admissions = tables.admission_records(admissions)
    reservations, changes.changed_reservations = _taken(uow.reservations.values(), _RESERVATION_END)
    changes.new_reservations = tables.reservation_records(reservations)
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
            items = CART_ITEMS.dump_json(cart.items, by_alias=True).decode()
            taken.append((*key, items, cart.updated_at))
            cart.dirty = False
    return taken


def _pools(uow: UnitOfWork) -> list[tuple[str, str, str, int]]:
    taken = []
    for key, pool in sorted(uow.pools.items()):
        if pool.dirty:
            taken.append((*key, pool.used))
            pool.dirty = False
    return taken


# What an ended, converted or extended row changes, in its update's order.
_ADMISSION_END = attrgetter(
    "grant_digest", "status", "ended_at", "end_reason", "order_id", "expires_at", "extensions"
)
_RESERVATION_END = attrgetter(
    "id", "status", "converted_at", "order_id", "ended_at", "end_reason", "expires_at"
)

_Tracked = TypeVar("_Tracked", TrackedAdmission, TrackedReservation)


def _taken(
    rows: Iterable[_Tracked], end: Callable[[_Tracked], tuple[Any, ...]]
) -> tuple[list[_Tracked], list[tuple[Any, ...]]]:
    """The new rows, and how each other changed row ended; all marked written."""
    new, changed = [], []
    for row in rows:
        if row.new:
            new.append(row)
        elif row.dirty:
            changed.append(end(row))
        row.new = row.dirty = False
    return new, changed
