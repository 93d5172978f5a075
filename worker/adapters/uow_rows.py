"""The rows a unit of work tracks: the stored rows (worker.adapters.rows)
and the domain's counters (worker.domain.stock), each with what tracking
needs on top: whether it is new or changed since the last write. Every
decision is the domain's; these only record that one was made."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import TypeAdapter

from worker.adapters.rows import (
    ADMISSION_COLUMNS_BY_FIELD,
    RESERVATION_COLUMNS_BY_FIELD,
    AdmissionRow,
    ReservationRow,
)
from worker.domain import reservation
from worker.domain.endings import CHECKOUT_REASON
from worker.domain.model import CartLine
from worker.domain.stock import PoolUsage, StockLevel

# A cart's items from and to JSON in one call (jsonb is read as text).
CART_ITEMS: TypeAdapter[list[CartLine]] = TypeAdapter(list[CartLine])


def stored_cart_items(text: str) -> list[CartLine]:
    """A stored cart's items. The carts of a drop are mostly the same few
    JSON texts (PostgreSQL prints jsonb one way) and a CartLine is
    immutable, so each text is validated once and its lines shared."""
    return list(_validated_cart(text))


@functools.lru_cache(maxsize=4096)
def _validated_cart(text: str) -> tuple[CartLine, ...]:
    return tuple(CART_ITEMS.validate_json(text))


@dataclass(frozen=True)
class HeldRow:
    """A hold that just ended or converted, as its events describe it."""

    reservation_id: UUID
    product_id: str
    variant_id: str
    quantity: int
    strategy: str
    created_at: datetime | None


@dataclass(slots=True)
class StockRow(StockLevel):
    updated_at: datetime | None = None  # set when stock.set changed it
    dirty: bool = False


@dataclass(slots=True)
class PoolRow(PoolUsage):
    dirty: bool = False


@dataclass
class TrackedAdmission(AdmissionRow):
    new: bool = False
    dirty: bool = False

    @classmethod
    def loaded(cls, r: Any) -> TrackedAdmission:
        """From an `admissions` record as read."""
        return cls(*[r[c] for c in ADMISSION_COLUMNS_BY_FIELD])


@dataclass
class TrackedReservation(ReservationRow):
    new: bool = False
    dirty: bool = False

    @classmethod
    def loaded(cls, r: Any) -> TrackedReservation:
        """From a `reservations` record as read."""
        return cls(*[r[c] for c in RESERVATION_COLUMNS_BY_FIELD])

    def held(self) -> HeldRow:
        return HeldRow(
            self.id, self.product_id, self.variant_id, self.quantity, self.strategy, self.created_at
        )

    def end(self, status: str, reason: str, at: datetime) -> None:
        """An active hold ends released or expired."""
        self.status = reservation.end(self.status, status)
        self.end_reason, self.ended_at, self.dirty = reason, at, True

    def convert(self, order_id: str, at: datetime) -> None:
        """An active hold sold."""
        self._sold(reservation.convert(self.status), order_id, at)

    def convert_ended(self, order_id: str, at: datetime) -> None:
        """An ended hold sold again by a late completion."""
        self._sold(reservation.convert_ended(self.status), order_id, at)

    def _sold(self, status: str, order_id: str, at: datetime) -> None:
        self.status, self.converted_at, self.order_id = status, at, order_id
        self.ended_at, self.end_reason, self.dirty = at, CHECKOUT_REASON, True

    def take_back_sale(self, status: str, reason: str, at: datetime) -> None:
        """A converted hold whose sale was not its admission's."""
        self.status = reservation.take_back_sale(self.status, status)
        self.converted_at, self.order_id = None, None
        self.ended_at, self.end_reason, self.dirty = at, reason, True


@dataclass(slots=True)
class TrackedCart:
    items: list[CartLine]
    updated_at: datetime
    dirty: bool = False


@dataclass(frozen=True, slots=True)
class CartVersion:
    updated_at: datetime
    command_id: UUID
    items: list[CartLine]
