"""What a unit of work reads before a batch is decided: the batch's
footprint (every key its commands can touch) and the set-based statements
that load those rows: at most twelve (one per table, two for stock, which
may create rows, two more for the holds an operator releases by id or by
product), and at most two more when the batch has commands of a backfill
experience (worker.adapters.uow_backfill), however large the batch is.

Concurrency: reservations, admissions, carts, endings and pools belong to one
experience, and one experience's commands are applied by one consumer at a
time (its partition's position row is locked for the whole transaction).
Stock rows are shared between experiences: every stock row the batch may
touch is locked `FOR UPDATE` at load time, in key order, so two consumers
never deadlock and no decision is made on a value another transaction can
change before we commit. The CHECK constraints still guard the write.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from worker.adapters import rows as tables
from worker.adapters import uow_backfill
from worker.adapters.rows import Pair
from worker.adapters.store import Conn
from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import (
    CartVersion,
    PoolRow,
    StockRow,
    TrackedAdmission,
    TrackedCart,
    TrackedReservation,
    stored_cart_items,
)
from worker.domain.commands import (
    AdmitConsumer,
    Command,
    CompleteCheckout,
    ConfigureExperience,
    EndAdmission,
    ExtendReservation,
    PutCart,
    ReleaseHolds,
    RetryReservation,
    SetStock,
)
from worker.domain.endings import AdmissionStatus
from worker.domain.stock import StockKey


@dataclass
class Footprint:
    """The keys a batch of commands can touch, read before any decision."""

    experiences: set[str] = field(default_factory=set)
    pairs: set[Pair] = field(default_factory=set)
    grant_digests: set[str] = field(default_factory=set)
    stock: set[StockKey] = field(default_factory=set)
    stock_to_create: set[StockKey] = field(default_factory=set)
    # Consumers with a Fanfare completion in the batch: a sale may need the
    # cart as it stood at an earlier time.
    sales: set[Pair] = field(default_factory=set)
    # Holds an operator releases: by id, and the active ones of a product in
    # an experience (variant None: every variant).
    reservation_ids: set[UUID] = field(default_factory=set)
    products_held: set[tuple[str, str, str | None]] = field(default_factory=set)

    @classmethod
    def of(cls, commands: Iterable[Command]) -> Footprint:
        fp = cls()
        for cmd in commands:
            match cmd:
                case SetStock():
                    key = (cmd.product_id, cmd.variant_id or "")
                    fp.stock.add(key)
                    fp.stock_to_create.add(key)
                case ConfigureExperience():
                    # Its settings and pool rows: no pool may shrink below its use.
                    fp.experiences.add(cmd.experience_id)
                case PutCart():
                    fp.experiences.add(cmd.experience_id)
                    fp.pairs.add((cmd.experience_id, cmd.consumer_id))
                    fp.stock.update((i.product_id, i.variant_column) for i in cmd.items)
                case (
                    AdmitConsumer()
                    | EndAdmission()
                    | CompleteCheckout()
                    | ExtendReservation()
                    | RetryReservation()
                ):
                    fp.experiences.add(cmd.experience_id)
                    fp.pairs.add((cmd.experience_id, cmd.consumer_id))
                    if cmd.grant_digest is not None:
                        fp.grant_digests.add(cmd.grant_digest)
                    if isinstance(cmd, CompleteCheckout) and cmd.items is None:
                        fp.sales.add((cmd.experience_id, cmd.consumer_id))
                case ReleaseHolds():
                    fp.experiences.add(cmd.experience_id)  # a pooled hold gives its unit back
                    if cmd.reservation_ids is not None:
                        fp.reservation_ids.update(cmd.reservation_ids)
                    elif cmd.consumer_id is not None:
                        fp.pairs.add((cmd.experience_id, cmd.consumer_id))
                    elif cmd.product_id is not None:
                        fp.products_held.add((cmd.experience_id, cmd.product_id, cmd.variant_id))
        return fp


CART_LOOKUP_SQL = """SELECT t.* FROM unnest($1::text[], $2::text[]) AS k(e, c)
    CROSS JOIN LATERAL (SELECT experience_id, consumer_id, items, updated_at
        FROM carts WHERE experience_id = k.e AND consumer_id = k.c OFFSET 0) t"""
HOLDS_BY_ID_SQL = "SELECT * FROM reservations WHERE id = ANY($1::uuid[])"
# A NULL variant: every variant of the product.
ACTIVE_HOLDS_OF_PRODUCT_SQL = """SELECT t.* FROM unnest($1::text[], $2::text[], $3::text[])
        AS k(e, p, v)
    CROSS JOIN LATERAL (SELECT * FROM reservations
        WHERE experience_id = k.e AND product_id = k.p AND (k.v IS NULL OR variant_id = k.v)
          AND status = 'active' OFFSET 0) t"""
CART_VERSIONS_SQL = """SELECT t.* FROM unnest($1::text[], $2::text[]) AS k(e, c)
    CROSS JOIN LATERAL (SELECT experience_id, consumer_id, updated_at, command_id, items
        FROM cart_versions WHERE experience_id = k.e AND consumer_id = k.c OFFSET 0) t"""


async def load(uow: UnitOfWork, conn: Conn, commands: list[Command]) -> None:
    """Read into `uow` every row `commands` can touch, locking the shared ones."""
    fp = Footprint.of(commands)
    await _experiences(uow, conn, fp.experiences)
    await _admissions(uow, conn, fp)
    await _carts(uow, conn, fp.pairs)
    await _endings(uow, conn, fp)
    await _cart_versions(uow, conn, fp.sales | _pairs_with_sales(uow))
    await _reservations(uow, conn, fp)
    await _released_holds(uow, conn, fp)
    for cart in uow.carts.values():
        fp.stock.update((i.product_id, i.variant_column) for i in cart.items)
    # A sale may sell an earlier cart than the current one.
    for versions in uow.cart_versions.values():
        for version in versions:
            fp.stock.update((i.product_id, i.variant_column) for i in version.items)
    # Ended and converted holds too: a late completion sells an ended hold
    # again, and a sale can move to the admission it belonged to.
    fp.stock.update((r.product_id, r.variant_id) for r in uow.reservations.values())
    await uow_backfill.load_candidates(uow, conn, commands, fp.experiences, fp.stock)
    await _lock_stock(uow, conn, fp)
    await _lock_pools(uow, conn, fp.experiences)


async def _by_pair_or_grant_digest(conn: Conn, table: str, fp: Footprint) -> list[Any]:
    return await tables.by_pair_or_grant_digest(conn, table, fp.grant_digests, fp.pairs)


def _unzip(pairs: Iterable[tuple[str, str]]) -> tuple[list[str], list[str]]:
    items = sorted(pairs)
    return [p[0] for p in items], [p[1] for p in items]


async def _experiences(uow: UnitOfWork, conn: Conn, experiences: set[str]) -> None:
    if not experiences:
        return
    records = await conn.fetch(
        f"""SELECT experience_id, {tables.SELECT_EXPERIENCE_SETTINGS}
            FROM experiences WHERE experience_id = ANY($1::text[])""",
        list(experiences),
    )
    for r in records:
        uow.experiences[r["experience_id"]] = tables.experience_settings(r)


async def _admissions(uow: UnitOfWork, conn: Conn, fp: Footprint) -> None:
    if fp.grant_digests:
        # A pruned admission's grant is still seen: its tombstone.
        uow.tombstones = {
            r["admission_grant"]
            for r in await conn.fetch(
                "SELECT admission_grant FROM grant_tombstones WHERE admission_grant = ANY($1)",
                sorted(fp.grant_digests),
            )
        }
    for r in await _by_pair_or_grant_digest(conn, "admissions", fp):
        row = TrackedAdmission.loaded(r)
        uow.track_admission(row)
        fp.pairs.add((row.experience_id, row.consumer_id))
        fp.grant_digests.add(row.grant_digest)


async def _carts(uow: UnitOfWork, conn: Conn, pairs: set[Pair]) -> None:
    if not pairs:
        return
    exps, cons = _unzip(pairs)
    for r in await conn.fetch(CART_LOOKUP_SQL, exps, cons):
        items = stored_cart_items(r["items"])
        uow.carts[(r["experience_id"], r["consumer_id"])] = TrackedCart(items, r["updated_at"])


def _pairs_with_sales(uow: UnitOfWork) -> set[Pair]:
    return {
        pair
        for pair, rows in uow.endings.items()
        if any(e.outcome == AdmissionStatus.CONVERTED for e in rows)
    }


async def _cart_versions(uow: UnitOfWork, conn: Conn, pairs: set[Pair]) -> None:
    uow.versions_read = set(pairs)
    if not pairs:
        return
    exps, cons = _unzip(pairs)
    for r in await conn.fetch(CART_VERSIONS_SQL, exps, cons):
        uow.cart_versions[(r["experience_id"], r["consumer_id"])].append(
            CartVersion(r["updated_at"], r["command_id"], stored_cart_items(r["items"]))
        )


async def _endings(uow: UnitOfWork, conn: Conn, fp: Footprint) -> None:
    for row in tables.ending_rows(await _by_pair_or_grant_digest(conn, "admission_endings", fp)):
        uow.endings[(row.experience_id, row.consumer_id)].append(row)


async def _reservations(uow: UnitOfWork, conn: Conn, fp: Footprint) -> None:
    for r in await _by_pair_or_grant_digest(conn, "reservations", fp):
        uow.track_reservation(TrackedReservation.loaded(r))


async def _released_holds(uow: UnitOfWork, conn: Conn, fp: Footprint) -> None:
    """The holds operator releases name, by id or by product."""
    found = []
    if fp.reservation_ids:
        found += await conn.fetch(HOLDS_BY_ID_SQL, sorted(fp.reservation_ids))
    if fp.products_held:
        keys = sorted(fp.products_held, key=lambda k: (k[0], k[1], k[2] or ""))
        found += await conn.fetch(
            ACTIVE_HOLDS_OF_PRODUCT_SQL, *(list(column) for column in zip(*keys, strict=True))
        )
    for r in found:
        uow.track_reservation(TrackedReservation.loaded(r))


async def _lock_stock(uow: UnitOfWork, conn: Conn, fp: Footprint) -> None:
    if fp.stock_to_create:
        products, variants = _unzip(fp.stock_to_create)
        await conn.execute(
            """INSERT INTO stock (product_id, variant_id, on_hand)
               SELECT p, v, 0 FROM unnest($1::text[], $2::text[]) AS t(p, v)
               ORDER BY p, v ON CONFLICT DO NOTHING""",
            products,
            variants,
        )
    if not fp.stock:
        return
    products, variants = _unzip(fp.stock)
    rows = await conn.fetch(
        """SELECT product_id, variant_id, on_hand, reserved, sold FROM stock
           WHERE (product_id, variant_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
           ORDER BY product_id, variant_id FOR UPDATE""",
        products,
        variants,
    )
    for r in rows:
        key = (r["product_id"], r["variant_id"])
        uow.stock[key] = StockRow(r["on_hand"], r["reserved"], r["sold"])


async def _lock_pools(uow: UnitOfWork, conn: Conn, experiences: set[str]) -> None:
    if not experiences:
        return
    rows = await conn.fetch(
        """SELECT experience_id, product_id, variant_id, used FROM experience_pools
           WHERE experience_id = ANY($1::text[])
           ORDER BY experience_id, product_id, variant_id FOR UPDATE""",
        list(experiences),
    )
    for r in rows:
        uow.pools[(r["experience_id"], r["product_id"], r["variant_id"])] = PoolRow(r["used"])
