"""What folding a batch of events changes, as values for
worker.replay.sink to write: rows first seen in the batch whole, and the
changes (ends, revisions, extensions, counter deltas) of rows already in
the target."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from worker.adapters.rows import AdmissionRow, EndingRow, Pair, ReservationRow
from worker.domain.model import ExperienceSettings
from worker.domain.stock import PoolKey, StockKey


@dataclass
class ExperienceRow:
    settings: ExperienceSettings
    updated_at: datetime


@dataclass
class StockChange:
    """`on_hand` and `set_at` are the last stock.set of the batch (None: not
    set in it); reserved and sold are deltas."""

    on_hand: int | None = None
    set_at: datetime | None = None
    reserved: int = 0
    sold: int = 0


@dataclass
class FoldCart:
    """A cart as the fold writes it: its items already as JSON."""

    items_json: str
    updated_at: datetime


@dataclass
class AdmissionClose:
    """How an admission ends, or (status active, no end) holds again."""

    status: str
    end_reason: str | None
    ended_at: datetime | None
    order_id: str | None
    # A revision changes an admission that had ended; a close, only an open one.
    revision: bool = False


@dataclass
class ReservationEnd:
    status: str
    ended_at: datetime
    end_reason: str
    converted_at: datetime | None
    order_id: str | None


@dataclass
class FoldChanges:
    """A batch's effect. Rows first seen in the batch are complete (their
    later changes in the batch merged in); rows already in the target are
    changed by the `*_closes`/`*_ends` entries and the deltas."""

    experiences: dict[str, ExperienceRow] = field(default_factory=dict)
    stock: dict[StockKey, StockChange] = field(default_factory=dict)
    carts: dict[Pair, FoldCart] = field(default_factory=dict)
    # (experience_id, consumer_id, updated_at, command_id, items JSON)
    cart_versions: list[tuple[str, str, datetime, UUID, str]] = field(default_factory=list)
    admissions: dict[str, AdmissionRow] = field(default_factory=dict)
    admission_closes: dict[str, AdmissionClose] = field(default_factory=dict)
    # grant digest -> (expires_at, extensions or None: unchanged): the terms
    # of an admission extended or tried again
    admission_terms: dict[str, tuple[datetime, int | None]] = field(default_factory=dict)
    endings: list[EndingRow] = field(default_factory=list)
    reservations: dict[UUID, ReservationRow] = field(default_factory=dict)
    reservation_ends: dict[UUID, ReservationEnd] = field(default_factory=dict)
    reservation_expiries: dict[UUID, datetime] = field(default_factory=dict)
    pools: dict[PoolKey, int] = field(default_factory=dict)  # delta; present = written
    warnings: list[str] = field(default_factory=list)
