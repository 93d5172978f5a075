"""The batch's unit of work: everything a batch of commands can touch is read
in a handful of set-based queries, the commands are applied in order against
that in-memory state, and the changes are written back with one statement per
table. Round trips per batch stay constant however large the batch is.

Concurrency: reservations, admissions, carts, endings and pools belong to one
experience, and one experience's commands are applied by one consumer at a
time (its partition's position row is locked for the whole transaction).
Stock rows are shared between experiences: every stock row the batch may
touch is locked `FOR UPDATE` at load time, in key order, so two consumers
never deadlock and no decision is made on a value another transaction can
change before we commit. The CHECK constraints still guard the write.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from pydantic import TypeAdapter

from worker.adapters import rows as tables
from worker.adapters.changes import Changes
from worker.adapters.rows import AdmissionRow, EndingRow, ReservationRow
from worker.adapters.store import Conn
from worker.domain.admission import HoldRequest
from worker.domain.cart import ActiveHold
from worker.domain.checkout import Hold
from worker.domain.commands import (
    AdmitConsumer,
    Command,
    CompleteCheckout,
    ConfigureExperience,
    EndAdmission,
    PutCart,
    SetStock,
)
from worker.domain.endings import AdmissionState, AdmissionStatus, Fact, Verdict, Visit
from worker.domain.events import EventBase, encode_event
from worker.domain.model import CartLine, ExperienceSettings, ReservationStatus

StockKey = tuple[str, str]
Pair = tuple[str, str]
# A stored cart's items in one call (jsonb comes back as text).
_CART_ITEMS: TypeAdapter[list[CartLine]] = TypeAdapter(list[CartLine])


@dataclass(frozen=True)
class HeldRow:
    """A hold that just ended or converted, as its events describe it."""

    reservation_id: UUID
    product_id: str
    variant_id: str
    quantity: int
    strategy: str
    created_at: datetime | None


@dataclass
class StockRow:
    on_hand: int
    reserved: int
    sold: int
    updated_at: datetime | None = None  # set when stock.set changed it
    dirty: bool = False


@dataclass
class TrackedAdmission(AdmissionRow):
    new: bool = False
    dirty: bool = False


@dataclass
class TrackedReservation(ReservationRow):
    new: bool = False
    dirty: bool = False

    def held(self) -> HeldRow:
        return HeldRow(
            self.id, self.product_id, self.variant_id, self.quantity, self.strategy, self.created_at
        )


@dataclass
class CartRow:
    items: list[CartLine]
    updated_at: datetime
    dirty: bool = False


@dataclass(frozen=True)
class CartVersion:
    updated_at: datetime
    command_id: UUID
    items: list[CartLine]


@dataclass
class PoolRow:
    used: int
    dirty: bool = False


@dataclass
class Footprint:
    """The keys a batch of commands can touch, read before any decision."""

    experiences: set[str] = field(default_factory=set)
    pairs: set[Pair] = field(default_factory=set)
    grants: set[str] = field(default_factory=set)
    stock: set[StockKey] = field(default_factory=set)
    stock_to_create: set[StockKey] = field(default_factory=set)
    # Consumers with a Fanfare completion in the batch: a sale may need the
    # cart as it stood at an earlier time.
    sales: set[Pair] = field(default_factory=set)

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
                    fp.experiences.add(cmd.experience_id)
                case PutCart():
                    fp.experiences.add(cmd.experience_id)
                    fp.pairs.add((cmd.experience_id, cmd.consumer_id))
                    fp.stock.update((i.product_id, i.variant_column) for i in cmd.items)
                case AdmitConsumer() | EndAdmission() | CompleteCheckout():
                    fp.experiences.add(cmd.experience_id)
                    fp.pairs.add((cmd.experience_id, cmd.consumer_id))
                    if cmd.grant_digest is not None:
                        fp.grants.add(cmd.grant_digest)
                    if isinstance(cmd, CompleteCheckout) and cmd.items is None:
                        fp.sales.add((cmd.experience_id, cmd.consumer_id))
        return fp


CART_LOOKUP_SQL = """SELECT t.* FROM unnest($1::text[], $2::text[]) AS k(e, c)
    CROSS JOIN LATERAL (SELECT experience_id, consumer_id, items, updated_at
        FROM carts WHERE experience_id = k.e AND consumer_id = k.c OFFSET 0) t"""
CART_VERSIONS_SQL = """SELECT t.* FROM unnest($1::text[], $2::text[]) AS k(e, c)
    CROSS JOIN LATERAL (SELECT experience_id, consumer_id, updated_at, command_id, items
        FROM cart_versions WHERE experience_id = k.e AND consumer_id = k.c OFFSET 0) t"""


async def _by_pair_or_grant(conn: Conn, table: str, fp: Footprint) -> list[Any]:
    return await tables.by_pair_or_grant(conn, table, fp.grants, fp.pairs)


def _unzip(pairs: Iterable[Pair]) -> tuple[list[str], list[str]]:
    items = sorted(pairs)
    return [p[0] for p in items], [p[1] for p in items]


class UnitOfWork:
    """In-memory view of the rows a batch touches, with the operations the
    engine needs; `load` reads them, `flush` writes what changed."""

    def __init__(self) -> None:
        self.stock: dict[StockKey, StockRow] = {}
        self.experiences: dict[str, ExperienceSettings] = {}
        self.experiences_dirty: dict[str, datetime] = {}
        self.admissions: dict[str, TrackedAdmission] = {}
        self.admissions_by_pair: dict[Pair, list[TrackedAdmission]] = defaultdict(list)
        self.reservations: dict[UUID, TrackedReservation] = {}
        self.reservations_by_grant: dict[str, list[TrackedReservation]] = defaultdict(list)
        self.reservations_by_pair: dict[Pair, list[TrackedReservation]] = defaultdict(list)
        self.carts: dict[Pair, CartRow] = {}
        # Carts by time, complete for the consumers whose sales may need them
        # (`versions_read`; None: nothing was read, every row is in memory).
        self.cart_versions: dict[Pair, list[CartVersion]] = defaultdict(list)
        self.versions_read: set[Pair] | None = None
        self.new_cart_versions: list[tuple[str, str, datetime, UUID, str]] = []
        # Kept endings and completions, by consumer (experience, consumer).
        self.endings: dict[Pair, list[EndingRow]] = defaultdict(list)
        self.new_endings: list[EndingRow] = []
        self.pools: dict[tuple[str, str, str], PoolRow] = {}
        self.outbox: list[EventBase] = []
        self.inbox: list[tuple[UUID, str, str, str, int, int]] = []

    # --- loading ---------------------------------------------------------------

    async def load(self, conn: Conn, commands: list[Command]) -> None:
        fp = Footprint.of(commands)
        await self._load_experiences(conn, fp.experiences)
        await self._load_admissions(conn, fp)
        await self._load_carts(conn, fp.pairs)
        await self._load_endings(conn, fp)
        await self._load_cart_versions(conn, fp.sales | self._pairs_with_sales())
        await self._load_reservations(conn, fp)
        for cart in self.carts.values():
            fp.stock.update((i.product_id, i.variant_column) for i in cart.items)
        # A sale may sell an earlier cart than the current one.
        for versions in self.cart_versions.values():
            for version in versions:
                fp.stock.update((i.product_id, i.variant_column) for i in version.items)
        # Ended and converted holds too: a late completion sells an ended hold
        # again, and a sale can move to the admission it belonged to.
        fp.stock.update((r.product_id, r.variant_id) for r in self.reservations.values())
        await self._lock_stock(conn, fp)
        await self._lock_pools(conn, fp.experiences)

    async def _load_experiences(self, conn: Conn, experiences: set[str]) -> None:
        if not experiences:
            return
        rows = await conn.fetch(
            """SELECT experience_id, strategy, window_seconds, buffer_seconds, pool_size,
                      multi_item_policy FROM experiences WHERE experience_id = ANY($1::text[])""",
            list(experiences),
        )
        for r in rows:
            data = dict(r)
            experience_id = data.pop("experience_id")
            self.experiences[experience_id] = ExperienceSettings.model_validate(data)

    async def _load_admissions(self, conn: Conn, fp: Footprint) -> None:
        rows = await _by_pair_or_grant(conn, "admissions", fp)
        for r in rows:
            row = TrackedAdmission(
                grant=r["admission_grant"],
                experience_id=r["experience_id"],
                consumer_id=r["consumer_id"],
                admitted_at=r["admitted_at"],
                expires_at=r["expires_at"],
                status=r["status"],
                strategy=r["strategy"],
                window_seconds=r["window_seconds"],
                buffer_seconds=r["buffer_seconds"],
                command_id=r["command_id"],
                ended_at=r["ended_at"],
                end_reason=r["end_reason"],
                order_id=r["order_id"],
            )
            self._index_admission(row)
            fp.pairs.add((row.experience_id, row.consumer_id))
            fp.grants.add(row.grant)

    def _index_admission(self, row: TrackedAdmission) -> None:
        if row.grant in self.admissions:
            return  # read twice: by its pair and by its grant
        self.admissions[row.grant] = row
        self.admissions_by_pair[(row.experience_id, row.consumer_id)].append(row)

    async def _load_carts(self, conn: Conn, pairs: set[Pair]) -> None:
        if not pairs:
            return
        exps, cons = _unzip(pairs)
        rows = await conn.fetch(
            CART_LOOKUP_SQL,
            exps,
            cons,
        )
        for r in rows:
            items = _CART_ITEMS.validate_json(r["items"])
            self.carts[(r["experience_id"], r["consumer_id"])] = CartRow(items, r["updated_at"])

    def _pairs_with_sales(self) -> set[Pair]:
        return {
            pair
            for pair, rows in self.endings.items()
            if any(e.outcome == "converted" for e in rows)
        }

    async def _load_cart_versions(self, conn: Conn, pairs: set[Pair]) -> None:
        self.versions_read = set(pairs)
        if not pairs:
            return
        exps, cons = _unzip(pairs)
        for r in await conn.fetch(CART_VERSIONS_SQL, exps, cons):
            self.cart_versions[(r["experience_id"], r["consumer_id"])].append(
                CartVersion(r["updated_at"], r["command_id"], _CART_ITEMS.validate_json(r["items"]))
            )

    async def _load_endings(self, conn: Conn, fp: Footprint) -> None:
        for row in tables.ending_rows(await _by_pair_or_grant(conn, "admission_endings", fp)):
            self.endings[(row.experience_id, row.consumer_id)].append(row)

    async def _load_reservations(self, conn: Conn, fp: Footprint) -> None:
        rows = await _by_pair_or_grant(conn, "reservations", fp)
        for r in rows:
            self._index_reservation(
                TrackedReservation(
                    id=r["id"],
                    consumer_id=r["consumer_id"],
                    experience_id=r["experience_id"],
                    grant=r["admission_grant"],
                    product_id=r["product_id"],
                    variant_id=r["variant_id"],
                    quantity=r["quantity"],
                    status=r["status"],
                    created_at=r["created_at"],
                    expires_at=r["expires_at"],
                    strategy=r["strategy"],
                    window_seconds=r["window_seconds"],
                    buffer_seconds=r["buffer_seconds"],
                    converted_at=r["converted_at"],
                    order_id=r["order_id"],
                    ended_at=r["ended_at"],
                    end_reason=r["end_reason"],
                )
            )

    def _index_reservation(self, row: TrackedReservation) -> None:
        if row.id in self.reservations:
            return  # read twice: by its pair and by its grant
        self.reservations[row.id] = row
        self.reservations_by_grant[row.grant].append(row)
        self.reservations_by_pair[(row.experience_id, row.consumer_id)].append(row)

    async def _lock_stock(self, conn: Conn, fp: Footprint) -> None:
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
            self.stock[key] = StockRow(r["on_hand"], r["reserved"], r["sold"])

    async def _lock_pools(self, conn: Conn, experiences: set[str]) -> None:
        if not experiences:
            return
        rows = await conn.fetch(
            """SELECT experience_id, product_id, variant_id, used FROM experience_pools
               WHERE experience_id = ANY($1::text[])
               ORDER BY experience_id, product_id, variant_id FOR UPDATE""",
            list(experiences),
        )
        for r in rows:
            self.pools[(r["experience_id"], r["product_id"], r["variant_id"])] = PoolRow(r["used"])

    # --- stock -------------------------------------------------------------------

    def set_stock(self, product_id: str, variant_id: str, on_hand: int, at: datetime) -> int | None:
        """Set on_hand unless it would fall below reserved + sold; returns
        None when set, else the committed units that refused it."""
        row = self.stock[(product_id, variant_id)]
        committed = row.reserved + row.sold
        if committed > on_hand:
            return committed
        row.on_hand = on_hand
        row.updated_at = at
        row.dirty = True
        return None

    def take_units(self, product_id: str, variant_id: str, quantity: int) -> bool:
        row = self.stock.get((product_id, variant_id))
        if row is None or row.on_hand - row.reserved - row.sold < quantity:
            return False
        row.reserved += quantity
        row.dirty = True
        return True

    def give_back_units(self, product_id: str, variant_id: str, quantity: int) -> None:
        row = self.stock[(product_id, variant_id)]
        row.reserved -= quantity
        row.dirty = True

    def _sell_units(self, product_id: str, variant_id: str, quantity: int) -> None:
        row = self.stock[(product_id, variant_id)]
        row.reserved -= quantity
        row.sold += quantity
        row.dirty = True

    # --- pools -------------------------------------------------------------------

    def _pool_row(self, experience_id: str, product_id: str, variant_id: str) -> PoolRow:
        row = self.pools.setdefault((experience_id, product_id, variant_id), PoolRow(0))
        row.dirty = True
        return row

    def take_pool(
        self, experience_id: str, product_id: str, variant_id: str, quantity: int, size: int
    ) -> bool:
        row = self.pools.setdefault((experience_id, product_id, variant_id), PoolRow(0))
        if row.used + quantity > size:
            return False
        row.used += quantity
        row.dirty = True
        return True

    def take_pool_unit(
        self,
        experience_id: str,
        product_id: str,
        variant_id: str,
        quantity: int,
        settings: ExperienceSettings,
    ) -> None:
        """A sale's pool units, counted without the cap: the order happened."""
        if settings.strategy.value == "pool":
            self._pool_row(experience_id, product_id, variant_id).used += quantity

    def give_back_pool(
        self, experience_id: str, product_id: str, variant_id: str, quantity: int
    ) -> None:
        row = self.pools.setdefault((experience_id, product_id, variant_id), PoolRow(0))
        row.used -= quantity
        row.dirty = True

    # --- experiences and carts -------------------------------------------------------

    def load_settings(self, experience_id: str) -> ExperienceSettings | None:
        return self.experiences.get(experience_id)

    def upsert_experience(
        self, experience_id: str, settings: ExperienceSettings, at: datetime
    ) -> None:
        self.experiences[experience_id] = settings
        self.experiences_dirty[experience_id] = at

    def put_cart(
        self,
        experience_id: str,
        consumer_id: str,
        items: list[CartLine],
        at: datetime,
        command_id: UUID,
    ) -> None:
        pair = (experience_id, consumer_id)
        self.carts[pair] = CartRow(list(items), at, dirty=True)
        self.cart_versions[pair].append(CartVersion(at, command_id, list(items)))
        items_json = _CART_ITEMS.dump_json(items, by_alias=True).decode()
        self.new_cart_versions.append((experience_id, consumer_id, at, command_id, items_json))

    def cart_version_at(
        self, experience_id: str, consumer_id: str, at: datetime
    ) -> CartVersion | None:
        """The consumer's cart as it stood at `at` (the last put at or before)."""
        pair = (experience_id, consumer_id)
        if self.versions_read is not None and pair not in self.versions_read:
            raise RuntimeError(f"cart versions of {pair} were not read for this batch")
        versions = self.cart_versions.get(pair, [])
        earlier = [v for v in versions if v.updated_at <= at]
        if not earlier:
            return None
        return max(earlier, key=lambda v: (v.updated_at, v.command_id))

    def cart_at(self, experience_id: str, consumer_id: str, at: datetime) -> list[CartLine]:
        version = self.cart_version_at(experience_id, consumer_id, at)
        return list(version.items) if version is not None else []

    def load_cart(self, experience_id: str, consumer_id: str) -> list[CartLine]:
        cart = self.carts.get((experience_id, consumer_id))
        return list(cart.items) if cart else []

    # --- admissions ----------------------------------------------------------------------

    def grant_seen(self, grant: str) -> bool:
        return grant in self.admissions

    def _latest(self, experience_id: str, consumer_id: str) -> TrackedAdmission | None:
        rows = self.admissions_by_pair.get((experience_id, consumer_id), [])
        return max(rows, key=lambda a: (a.admitted_at, a.grant)) if rows else None

    def current_admission(self, experience_id: str, consumer_id: str) -> AdmissionState | None:
        """The consumer's latest admission in the experience."""
        row = self._latest(experience_id, consumer_id)
        return AdmissionState(row.grant, row.status, row.expires_at) if row else None

    def visits(self, experience_id: str, consumer_id: str) -> list[Visit]:
        return [
            Visit(a.grant, a.admitted_at, a.expires_at)
            for a in self.admissions_by_pair.get((experience_id, consumer_id), [])
        ]

    def standing(self, grant: str) -> Verdict:
        """How an admission stands as recorded."""
        row = self.admissions[grant]
        return Verdict(AdmissionStatus(row.status), row.end_reason, row.ended_at, row.order_id)

    def admission_state(self, grant: str) -> AdmissionState | None:
        row = self.admissions.get(grant)
        return AdmissionState(row.grant, row.status, row.expires_at) if row else None

    def admission_order(self, grant: str) -> str | None:
        row = self.admissions.get(grant)
        return row.order_id if row else None

    def admission_settings(self, grant: str) -> ExperienceSettings | None:
        """The settings an admission was taken under (strategy and window
        stored on it), with the experience's current pool size and policy."""
        row = self.admissions.get(grant)
        if row is None:
            return None
        current = self.experiences.get(row.experience_id)
        return ExperienceSettings.model_validate(
            {
                "strategy": row.strategy,
                "window_seconds": row.window_seconds,
                "buffer_seconds": row.buffer_seconds,
                "pool_size": current.pool_size if current else None,
                "multi_item_policy": current.multi_item_policy if current else "partial",
            }
        )

    def insert_admission(
        self,
        *,
        grant: str,
        experience_id: str,
        consumer_id: str,
        admitted_at: datetime,
        expires_at: datetime,
        status: str,
        settings: ExperienceSettings,
        command_id: UUID,
    ) -> None:
        self._index_admission(
            TrackedAdmission(
                grant=grant,
                experience_id=experience_id,
                consumer_id=consumer_id,
                admitted_at=admitted_at,
                expires_at=expires_at,
                status=status,
                strategy=settings.strategy.value,
                window_seconds=settings.window_seconds,
                buffer_seconds=settings.buffer_seconds,
                command_id=command_id,
                new=True,
            )
        )

    def revise_admission(self, grant: str, verdict: Verdict) -> None:
        """An ended admission that now stands otherwise (a fact that happened
        earlier arrived late)."""
        row = self.admissions[grant]
        row.status, row.end_reason = verdict.status.value, verdict.reason
        row.ended_at, row.order_id = verdict.at, verdict.order_id
        row.dirty = True

    def close_admission(
        self, grant: str, status: str, reason: str, at: datetime, order_id: str | None = None
    ) -> None:
        row = self.admissions.get(grant)
        if row is None or row.status != "active":
            return
        row.status, row.end_reason, row.ended_at, row.order_id = status, reason, at, order_id
        row.dirty = True

    # --- endings and completions ------------------------------------------------------

    def keep_fact(self, fact: Fact, experience_id: str, consumer_id: str) -> None:
        assert fact.command_id is not None
        row = EndingRow(
            fact.command_id,
            experience_id,
            consumer_id,
            fact.grant_digest,
            fact.outcome.value,
            fact.reason,
            fact.at,
            fact.order_id,
        )
        self.endings[(experience_id, consumer_id)].append(row)
        self.new_endings.append(row)

    def kept_facts(self, experience_id: str, consumer_id: str) -> list[EndingRow]:
        return self.endings.get((experience_id, consumer_id), [])

    def facts(self, experience_id: str, consumer_id: str) -> list[Fact]:
        """The consumer's kept endings and completions, and the end each of
        its admissions was recorded with (a fact with a grant, from our
        scheduler or checkout, is not kept once its admission is known)."""
        pair = (experience_id, consumer_id)
        ended = [
            a
            for a in self.admissions_by_pair.get(pair, [])
            if a.ended_at is not None and a.status not in ("active", "superseded")
        ]
        rows = self.endings.get(pair)
        if not rows and not ended:
            return []
        kept = [
            Fact(
                e.command_id, e.grant, AdmissionStatus(e.outcome), e.reason, e.ended_at, e.order_id
            )
            for e in rows or ()
        ]
        known = {(f.grant_digest, f.reason, f.at) for f in kept}
        for a in ended:
            assert a.end_reason is not None
            assert a.ended_at is not None
            if (None, a.end_reason, a.ended_at) in known:
                continue
            if (a.grant, a.end_reason, a.ended_at) in known:
                continue
            kept.append(
                Fact(None, a.grant, AdmissionStatus(a.status), a.end_reason, a.ended_at, a.order_id)
            )
        return kept

    # --- reservations ----------------------------------------------------------------------

    def insert_reservations(
        self,
        *,
        holds: list[HoldRequest],
        experience_id: str,
        consumer_id: str,
        grant: str,
        created_at: datetime,
        expires_at: datetime,
        settings: ExperienceSettings,
    ) -> None:
        for h in holds:
            self._index_reservation(
                TrackedReservation(
                    id=h.reservation_id,
                    consumer_id=consumer_id,
                    experience_id=experience_id,
                    grant=grant,
                    product_id=h.product_id,
                    variant_id=h.variant_id,
                    quantity=h.quantity,
                    status="active",
                    created_at=created_at,
                    expires_at=expires_at,
                    strategy=settings.strategy.value,
                    window_seconds=settings.window_seconds,
                    buffer_seconds=settings.buffer_seconds,
                    new=True,
                )
            )

    def _active_of(self, grant: str) -> list[TrackedReservation]:
        rows = [r for r in self.reservations_by_grant.get(grant, []) if r.status == "active"]
        return sorted(rows, key=lambda r: (r.product_id, r.variant_id))

    def active_holds(self, grant: str) -> list[ActiveHold]:
        return [
            ActiveHold(r.id, r.product_id, r.variant_id, r.quantity, r.created_at)
            for r in self._active_of(grant)
        ]

    def end_active_reservations(
        self, grant: str, status: str, reason: str, at: datetime
    ) -> list[HeldRow]:
        """End every active hold of a grant and give its units back."""
        return [self.end_reservation(r, status, reason, at) for r in self._active_of(grant)]

    def convert_active_reservations(self, grant: str, order_id: str, at: datetime) -> list[HeldRow]:
        """Move every active hold of a grant from reserved to sold."""
        return [self.convert_reservation(r, order_id, at) for r in self._active_of(grant)]

    def active_reservations(self, grant: str) -> list[TrackedReservation]:
        return self._active_of(grant)

    def ended_holds(self, grant: str) -> list[TrackedReservation]:
        """A grant's released and expired holds, latest first: what a late
        completion can sell again."""
        rows = [
            r
            for r in self.reservations_by_grant.get(grant, [])
            if r.status in ("released", "expired")
        ]
        return sorted(rows, key=lambda r: (r.ended_at or r.created_at, r.id), reverse=True)

    def end_reservation(
        self, r: TrackedReservation, status: str, reason: str, at: datetime
    ) -> HeldRow:
        """End one active hold and give its units back."""
        r.status, r.end_reason, r.ended_at, r.dirty = status, reason, at, True
        self.give_back_units(r.product_id, r.variant_id, r.quantity)
        if r.strategy == "pool":
            self.give_back_pool(r.experience_id, r.product_id, r.variant_id, r.quantity)
        return r.held()

    def convert_reservation(self, r: TrackedReservation, order_id: str, at: datetime) -> HeldRow:
        """Sell one active hold: its units move from reserved to sold."""
        r.status, r.converted_at, r.order_id = "converted", at, order_id
        r.ended_at, r.end_reason, r.dirty = at, "checkout", True
        self._sell_units(r.product_id, r.variant_id, r.quantity)
        return r.held()

    def convert_ended(self, reservation_id: UUID, order_id: str, at: datetime) -> bool:
        """Sell an ended hold again if its units are still free (never
        oversells); a pooled hold takes its pool unit back with the sale."""
        r = self.reservations[reservation_id]
        row = self.stock.get((r.product_id, r.variant_id))
        if row is None or row.on_hand - row.reserved - row.sold < r.quantity:
            return False
        row.sold += r.quantity
        row.dirty = True
        if r.strategy == "pool":
            self._pool_row(r.experience_id, r.product_id, r.variant_id).used += r.quantity
        r.status, r.converted_at, r.order_id = "converted", at, order_id
        r.ended_at, r.end_reason, r.dirty = at, "checkout", True
        return True

    def unconvert(self, grant: str, status: str, reason: str, at: datetime) -> list[HeldRow]:
        """Take back the sale of a grant's converted holds (it belonged to
        another admission): the units go back to the shelf."""
        undone = []
        for r in sorted(
            (r for r in self.reservations_by_grant.get(grant, []) if r.status == "converted"),
            key=lambda r: (r.product_id, r.variant_id),
        ):
            stock = self.stock[(r.product_id, r.variant_id)]
            stock.sold -= r.quantity
            stock.dirty = True
            if r.strategy == "pool":
                self._pool_row(r.experience_id, r.product_id, r.variant_id).used -= r.quantity
            r.status, r.converted_at, r.order_id = status, None, None
            r.ended_at, r.end_reason, r.dirty = at, reason, True
            undone.append(r.held())
        return undone

    def release_replaced_holds(
        self, reservation_ids: list[UUID], reason: str, at: datetime
    ) -> None:
        """Mark holds replaced after a cart change; the caller moves the units."""
        for rid in reservation_ids:
            r = self.reservations[rid]
            if r.status == "active":
                r.status, r.end_reason, r.ended_at, r.dirty = "released", reason, at, True

    def consumer_holds(self, experience_id: str, consumer_id: str) -> list[Hold]:
        """Every reservation of a consumer in an experience, as checkout sees them."""
        rows = sorted(
            self.reservations_by_pair.get((experience_id, consumer_id), []),
            key=lambda r: (r.created_at, r.product_id, r.variant_id),
        )
        return [
            Hold(
                reservation_id=str(r.id),
                grant_digest=r.grant,
                product_id=r.product_id,
                variant_id=r.variant_id,
                quantity=r.quantity,
                status=ReservationStatus(r.status),
                expires_at=r.expires_at,
                end_reason=r.end_reason,
                order_id=r.order_id,
            )
            for r in rows
        ]

    # --- inbox and outbox ---------------------------------------------------------------------

    def record(
        self,
        command_id: UUID,
        command_type: str,
        outcome: dict[str, Any],
        events: list[EventBase],
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        self.inbox.append(
            (command_id, command_type, orjson.dumps(outcome).decode(), topic, partition, offset)
        )
        self.outbox.extend(events)

    # --- writing back ---------------------------------------------------------------------------

    def take_changes(self) -> Changes:
        """Everything changed since the last take, as values, marking it
        written: the rows may change again before the write has happened."""
        changes = Changes(
            experiences=self._take_experiences(),
            stock=self._take_stock(),
            carts=self._take_carts(),
            cart_versions=self.new_cart_versions,
            new_endings=self.new_endings,
            pools=self._take_pools(),
            outbox=[
                (e.event_id, getattr(e, "type", ""), e.partition_key(), encode_event(e))
                for e in self.outbox
            ],
            inbox=self.inbox,
        )
        self._take_admissions(changes)
        self._take_reservations(changes)
        self.new_endings, self.outbox, self.inbox = [], [], []
        self.new_cart_versions = []
        return changes

    async def flush(self, conn: Conn) -> None:
        """Write every change not yet written."""
        await self.take_changes().write(conn)

    def _take_experiences(self) -> list[tuple[Any, ...]]:
        taken = [
            (
                i,
                (s := self.experiences[i]).strategy.value,
                s.window_seconds,
                s.buffer_seconds,
                s.pool_size,
                s.multi_item_policy.value,
                self.experiences_dirty[i],
            )
            for i in sorted(self.experiences_dirty)
        ]
        self.experiences_dirty = {}
        return taken

    def _take_stock(self) -> list[tuple[str, str, int, int, int, datetime | None]]:
        taken = []
        for key, row in sorted(self.stock.items()):
            if row.dirty:
                taken.append((*key, row.on_hand, row.reserved, row.sold, row.updated_at))
                row.dirty, row.updated_at = False, None
        return taken

    def _take_carts(self) -> list[tuple[str, str, str, datetime]]:
        taken = []
        for key, cart in sorted(self.carts.items()):
            if cart.dirty:
                items = [i.model_dump(mode="json", by_alias=True) for i in cart.items]
                taken.append((*key, orjson.dumps(items).decode(), cart.updated_at))
                cart.dirty = False
        return taken

    def _take_pools(self) -> list[tuple[str, str, str, int]]:
        taken = []
        for key, pool in sorted(self.pools.items()):
            if pool.dirty:
                taken.append((*key, pool.used))
                pool.dirty = False
        return taken

    def _take_admissions(self, changes: Changes) -> None:
        new = [a for a in self.admissions.values() if a.new]
        changes.new_admissions = tables.admission_records(new)
        for a in self.admissions.values():
            if a.dirty and not a.new:
                changes.changed_admissions.append(
                    (a.grant, a.status, a.ended_at, a.end_reason, a.order_id)
                )
            a.new = a.dirty = False

    def _take_reservations(self, changes: Changes) -> None:
        new = [r for r in self.reservations.values() if r.new]
        changes.new_reservations = tables.reservation_records(new)
        for r in self.reservations.values():
            if r.dirty and not r.new:
                changes.changed_reservations.append(
                    (r.id, r.status, r.converted_at, r.order_id, r.ended_at, r.end_reason)
                )
            r.new = r.dirty = False
