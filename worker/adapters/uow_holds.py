"""The batch's stock rows, pool rows and holds (reservations), and what the
engine does with them: take and give back units, end, convert and take back
sales of holds. The counters' arithmetic is worker.domain.stock's and a
hold's moves worker.domain.reservation's; this finds the rows, applies them,
and marks what changed. Part of worker.adapters.unit_of_work.UnitOfWork."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from uuid import UUID

from worker.adapters.rows import Pair
from worker.adapters.uow_rows import HeldRow, PoolRow, StockRow, TrackedReservation
from worker.domain import reservation
from worker.domain.admission import HoldRequest
from worker.domain.cart import ActiveHold
from worker.domain.checkout import Hold
from worker.domain.model import ExperienceSettings, ReservationStatus, Strategy
from worker.domain.stock import PoolKey, StockKey


class BatchHolds:
    """The stock, pools and holds a batch touches, by key."""

    def __init__(self) -> None:
        self.stock: dict[StockKey, StockRow] = {}
        self.pools: dict[PoolKey, PoolRow] = {}
        self.reservations: dict[UUID, TrackedReservation] = {}
        self.reservations_by_grant_digest: dict[str, list[TrackedReservation]] = defaultdict(list)
        self.reservations_by_pair: dict[Pair, list[TrackedReservation]] = defaultdict(list)

    def track_reservation(self, row: TrackedReservation) -> None:
        if row.id in self.reservations:
            return  # read twice: by its pair and by its grant digest
        self.reservations[row.id] = row
        self.reservations_by_grant_digest[row.grant_digest].append(row)
        self.reservations_by_pair[(row.experience_id, row.consumer_id)].append(row)

    # --- stock -------------------------------------------------------------------

    def set_stock(self, product_id: str, variant_id: str, on_hand: int, at: datetime) -> int | None:
        """Set on_hand unless it would fall below reserved + sold; returns
        None when set, else the committed units that refused it."""
        row = self.stock[(product_id, variant_id)]
        refused = row.set_on_hand(on_hand)
        if refused is not None:
            return refused.committed
        row.updated_at, row.dirty = at, True
        return None

    def take_units(self, product_id: str, variant_id: str, quantity: int) -> bool:
        row = self.stock.get((product_id, variant_id))
        if row is None or not row.take(quantity):
            return False
        row.dirty = True
        return True

    def give_back_units(self, product_id: str, variant_id: str, quantity: int) -> None:
        row = self.stock[(product_id, variant_id)]
        row.give_back(quantity)
        row.dirty = True

    # --- pools -------------------------------------------------------------------

    def _pool(self, experience_id: str, product_id: str, variant_id: str) -> PoolRow:
        key = (experience_id, product_id, variant_id)
        row = self.pools.get(key)
        if row is None:
            row = self.pools[key] = PoolRow()
        return row

    def take_pool(
        self, experience_id: str, product_id: str, variant_id: str, quantity: int, size: int
    ) -> bool:
        row = self._pool(experience_id, product_id, variant_id)
        if not row.take(quantity, size):
            return False
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
        if settings.strategy is Strategy.POOL:
            row = self._pool(experience_id, product_id, variant_id)
            row.count_sale(quantity)
            row.dirty = True

    def give_back_pool(
        self, experience_id: str, product_id: str, variant_id: str, quantity: int
    ) -> None:
        row = self._pool(experience_id, product_id, variant_id)
        row.give_back(quantity)
        row.dirty = True

    def pool_usage(self, experience_id: str) -> dict[StockKey, int]:
        """Units each product's pool of an experience has handed out, from
        its pool rows (the load reads every row of the batch's experiences)."""
        return {(p, v): row.used for (e, p, v), row in self.pools.items() if e == experience_id}

    # --- reservations ----------------------------------------------------------------------

    def insert_reservations(
        self,
        *,
        holds: list[HoldRequest],
        experience_id: str,
        consumer_id: str,
        grant_digest: str,
        created_at: datetime,
        expires_at: datetime,
        settings: ExperienceSettings,
    ) -> None:
        for h in holds:
            self.track_reservation(
                TrackedReservation(
                    id=h.reservation_id,
                    consumer_id=consumer_id,
                    experience_id=experience_id,
                    grant_digest=grant_digest,
                    product_id=h.product_id,
                    variant_id=h.variant_id,
                    quantity=h.quantity,
                    status=ReservationStatus.ACTIVE,
                    created_at=created_at,
                    expires_at=expires_at,
                    strategy=settings.strategy.value,
                    window_seconds=settings.window_seconds,
                    buffer_seconds=settings.buffer_seconds,
                    new=True,
                )
            )

    def _of_grant(self, grant_digest: str, status: ReservationStatus) -> list[TrackedReservation]:
        of_grant = self.reservations_by_grant_digest.get(grant_digest, [])
        rows = [r for r in of_grant if r.status == status]
        return sorted(rows, key=lambda r: (r.product_id, r.variant_id))

    def active_holds(self, grant_digest: str) -> list[ActiveHold]:
        return [
            ActiveHold(r.id, r.product_id, r.variant_id, r.quantity, r.created_at)
            for r in self._of_grant(grant_digest, ReservationStatus.ACTIVE)
        ]

    def extend_active_reservations(self, grant_digest: str, expires_at: datetime) -> list[UUID]:
        """Move the expiry of an admission's active holds; their ids."""
        moved = self._of_grant(grant_digest, ReservationStatus.ACTIVE)
        for r in moved:
            r.expires_at, r.dirty = expires_at, True
        return [r.id for r in moved]

    def holds_ended_by(self, grant_digest: str, reason: str, at: datetime) -> list[ActiveHold]:
        """An admission's holds that one ending ended (its reason and time)."""
        return [
            ActiveHold(r.id, r.product_id, r.variant_id, r.quantity, r.created_at)
            for r in self._of_grant(grant_digest, ReservationStatus.EXPIRED)
            if r.end_reason == reason and r.ended_at == at
        ]

    def end_active_reservations(
        self, grant_digest: str, status: str, reason: str, at: datetime
    ) -> list[HeldRow]:
        """End every active hold of an admission and give its units back."""
        return [
            self.end_reservation(r, status, reason, at)
            for r in self._of_grant(grant_digest, ReservationStatus.ACTIVE)
        ]

    def convert_active_reservations(
        self, grant_digest: str, order_id: str, at: datetime
    ) -> list[HeldRow]:
        """Move every active hold of an admission from reserved to sold."""
        return [
            self.convert_reservation(r, order_id, at)
            for r in self._of_grant(grant_digest, ReservationStatus.ACTIVE)
        ]

    def active_reservations(self, grant_digest: str) -> list[TrackedReservation]:
        return self._of_grant(grant_digest, ReservationStatus.ACTIVE)

    def ended_holds(self, grant_digest: str) -> list[TrackedReservation]:
        """An admission's released and expired holds, latest first: what a
        late completion can sell again."""
        rows = [
            r
            for r in self.reservations_by_grant_digest.get(grant_digest, [])
            if reservation.is_ended(r.status)
        ]
        return sorted(rows, key=lambda r: (r.ended_at or r.created_at, r.id), reverse=True)

    def end_reservation(
        self, r: TrackedReservation, status: str, reason: str, at: datetime
    ) -> HeldRow:
        """End one active hold and give its units back."""
        r.end(status, reason, at)
        self.give_back_units(r.product_id, r.variant_id, r.quantity)
        if r.strategy == Strategy.POOL:
            self.give_back_pool(r.experience_id, r.product_id, r.variant_id, r.quantity)
        return r.held()

    def convert_reservation(self, r: TrackedReservation, order_id: str, at: datetime) -> HeldRow:
        """Sell one active hold: its units move from reserved to sold."""
        r.convert(order_id, at)
        stock = self.stock[(r.product_id, r.variant_id)]
        stock.sell(r.quantity)
        stock.dirty = True
        return r.held()

    def convert_ended(self, reservation_id: UUID, order_id: str, at: datetime) -> bool:
        """Sell an ended hold again if its units are still free (never
        oversells); a pooled hold takes its pool unit back with the sale."""
        r = self.reservations[reservation_id]
        stock = self.stock.get((r.product_id, r.variant_id))
        if stock is None or not stock.sell_free(r.quantity):
            return False
        stock.dirty = True
        if r.strategy == Strategy.POOL:
            pool = self._pool(r.experience_id, r.product_id, r.variant_id)
            pool.count_sale(r.quantity)
            pool.dirty = True
        r.convert_ended(order_id, at)
        return True

    def unconvert(self, grant_digest: str, status: str, reason: str, at: datetime) -> list[HeldRow]:
        """Take back the sale of an admission's converted holds (it belonged
        to another admission): the units go back to the shelf."""
        undone = []
        for r in self._of_grant(grant_digest, ReservationStatus.CONVERTED):
            stock = self.stock[(r.product_id, r.variant_id)]
            stock.unsell(r.quantity)
            stock.dirty = True
            if r.strategy == Strategy.POOL:
                self.give_back_pool(r.experience_id, r.product_id, r.variant_id, r.quantity)
            r.take_back_sale(status, reason, at)
            undone.append(r.held())
        return undone

    def release_replaced_holds(
        self, reservation_ids: list[UUID], reason: str, at: datetime
    ) -> None:
        """Mark holds replaced after a cart change; the caller moves the units."""
        for rid in reservation_ids:
            r = self.reservations[rid]
            if r.status == ReservationStatus.ACTIVE:
                r.end(ReservationStatus.RELEASED, reason, at)

    def holds_named(
        self, experience_id: str, reservation_ids: list[UUID]
    ) -> tuple[list[TrackedReservation], list[UUID]]:
        """The experience's holds among these ids, and the ids it has none for."""
        found, unknown = [], []
        for rid in dict.fromkeys(reservation_ids):
            r = self.reservations.get(rid)
            if r is not None and r.experience_id == experience_id:
                found.append(r)
            else:
                unknown.append(rid)
        return found, unknown

    def active_holds_of(
        self,
        experience_id: str,
        *,
        consumer_id: str | None = None,
        product_id: str | None = None,
        variant_id: str | None = None,
    ) -> list[TrackedReservation]:
        """The experience's active holds of a consumer, or of a product (and
        variant, when given)."""
        if consumer_id is not None:
            rows = self.reservations_by_pair.get((experience_id, consumer_id), [])
        else:
            rows = [
                r
                for r in self.reservations.values()
                if r.experience_id == experience_id
                and r.product_id == product_id
                and variant_id in (None, r.variant_id)
            ]
        return [r for r in rows if r.status == ReservationStatus.ACTIVE]

    def consumer_holds(self, experience_id: str, consumer_id: str) -> list[Hold]:
        """Every reservation of a consumer in an experience, as checkout sees them."""
        rows = sorted(
            self.reservations_by_pair.get((experience_id, consumer_id), []),
            key=lambda r: (r.created_at, r.product_id, r.variant_id),
        )
        return [
            Hold(
                reservation_id=str(r.id),
                grant_digest=r.grant_digest,
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
