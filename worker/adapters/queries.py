"""Reads outside the unit of work, by name: what the HTTP API shows (stock,
experiences and their pools' usage, carts, holds, holds across consumers
for operators, applied commands) and what the expiry scheduler acts on (due
expiries, the next one, the database-wide gauges). Each takes a pool or a
connection and returns typed rows; nothing here writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from worker.adapters import rows as tables
from worker.adapters.store import Conn
from worker.domain.checkout import Hold
from worker.domain.endings import AdmissionStatus
from worker.domain.model import CartLine, ExperienceSettings, ReservationStatus
from worker.domain.stock import StockKey

Reader = Conn | asyncpg.Pool


@dataclass(frozen=True)
class StockCounters:
    on_hand: int
    reserved: int
    sold: int
    updated_at: datetime


@dataclass(frozen=True)
class StoredCart:
    items: list[CartLine]
    updated_at: datetime


@dataclass(frozen=True)
class AppliedCommand:
    """A command's row in the inbox: it was applied, and this is what it did."""

    command_type: str
    outcome: dict[str, Any]
    applied_at: datetime


@dataclass(frozen=True)
class ListedHold:
    """A hold as an operator's listing shows it: never its grant digest."""

    reservation_id: UUID
    experience_id: str
    consumer_id: str
    product_id: str
    variant_id: str
    quantity: int
    status: ReservationStatus
    created_at: datetime
    expires_at: datetime
    order_id: str | None
    end_reason: str | None


@dataclass(frozen=True)
class HoldFilter:
    """What an operator's listing selects; None: any. `after` is the keyset
    position (created_at, id) of the last hold of the previous page."""

    experience_id: str | None = None
    consumer_id: str | None = None
    product_id: str | None = None
    variant_id: str | None = None
    status: ReservationStatus | None = None
    after: tuple[datetime, UUID] | None = None


@dataclass(frozen=True)
class DueExpiry:
    """An active admission whose hold window has run out: the scheduler
    publishes its expiry."""

    grant_digest: str
    experience_id: str
    consumer_id: str
    expires_at: datetime


@dataclass(frozen=True)
class AdmissionTimes:
    """How an admission stands, and the expiry its latest retry followed."""

    status: str
    expires_at: datetime
    ended_at: datetime | None
    retry_follows: datetime | None

    def expiry_to_follow(self, now: datetime) -> datetime | None:
        """The expiry a retry at `now` follows, as far as the rows tell: one
        retry per expiry, so two calls for the same expiry are one command."""
        if self.status == AdmissionStatus.EXPIRED:
            return self.ended_at
        if self.status != AdmissionStatus.ACTIVE:
            return None
        if self.expires_at <= now:
            return self.expires_at
        return self.retry_follows


# --- the HTTP API's reads --------------------------------------------------------


async def stock_counters(db: Reader, product_id: str, variant_id: str) -> StockCounters | None:
    """`variant_id`: '' for a product without variants."""
    row = await db.fetchrow(
        """SELECT on_hand, reserved, sold, updated_at FROM stock
           WHERE product_id = $1 AND variant_id = $2""",
        product_id,
        variant_id,
    )
    if row is None:
        return None
    return StockCounters(row["on_hand"], row["reserved"], row["sold"], row["updated_at"])


async def experience_settings(db: Reader, experience_id: str) -> ExperienceSettings | None:
    """The experience's configuration; None when it was never configured."""
    row = await db.fetchrow(
        f"SELECT {tables.SELECT_EXPERIENCE_SETTINGS} FROM experiences WHERE experience_id = $1",
        experience_id,
    )
    return None if row is None else tables.experience_settings(row)


async def pool_usage(db: Reader, experience_id: str) -> dict[StockKey, int]:
    """Units each product's pool of the experience has handed out, by
    (product_id, variant_id): every pool row it has, at 0 too."""
    rows = await db.fetch(
        "SELECT product_id, variant_id, used FROM experience_pools WHERE experience_id = $1",
        experience_id,
    )
    return {(r["product_id"], r["variant_id"]): r["used"] for r in rows}


async def stored_cart(db: Reader, experience_id: str, consumer_id: str) -> StoredCart | None:
    row = await db.fetchrow(
        "SELECT items, updated_at FROM carts WHERE experience_id = $1 AND consumer_id = $2",
        experience_id,
        consumer_id,
    )
    if row is None:
        return None
    # Read through the domain model, which takes either spelling a line may
    # have been stored in.
    items = [CartLine.model_validate(item) for item in orjson.loads(row["items"])]
    return StoredCart(items, row["updated_at"])


async def consumer_holds(db: Reader, experience_id: str, consumer_id: str) -> list[Hold]:
    """Every reservation of a consumer in an experience, as checkout sees them."""
    rows = await db.fetch(
        """SELECT id, admission_grant, product_id, variant_id, quantity, status, expires_at,
                  end_reason, order_id
           FROM reservations WHERE experience_id = $1 AND consumer_id = $2
           ORDER BY created_at, product_id, variant_id""",
        experience_id,
        consumer_id,
    )
    return [
        Hold(
            reservation_id=str(r["id"]),
            grant_digest=r["admission_grant"],
            product_id=r["product_id"],
            variant_id=r["variant_id"],
            quantity=r["quantity"],
            status=ReservationStatus(r["status"]),
            expires_at=r["expires_at"],
            end_reason=r["end_reason"],
            order_id=r["order_id"],
        )
        for r in rows
    ]


LISTED_HOLD_COLUMNS = """id, experience_id, consumer_id, product_id, variant_id, quantity,
    status, created_at, expires_at, order_id, end_reason"""


def listed_holds_sql(where: HoldFilter) -> tuple[str, list[Any]]:
    """The listing's statement and arguments. Only the filters given become
    conditions (from this fixed set, never from input), so each combination
    is planned for its own index rather than one generic plan for all."""
    conditions: list[str] = []
    args: list[Any] = []
    for column, value in (
        ("experience_id", where.experience_id),
        ("consumer_id", where.consumer_id),
        ("product_id", where.product_id),
        ("variant_id", where.variant_id),
        ("status", None if where.status is None else where.status.value),
    ):
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    if where.after is not None:
        args += where.after
        conditions.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    filtered = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    sql = f"""SELECT {LISTED_HOLD_COLUMNS} FROM reservations {filtered}
        ORDER BY created_at DESC, id DESC LIMIT ${len(args) + 1}"""
    return sql, args


async def listed_holds(db: Reader, where: HoldFilter, limit: int) -> list[ListedHold]:
    """Holds across consumers, newest first (created_at, then id, both
    descending): a keyset page, never an offset, so a page is as cheap at
    the end of the list as at its start, and a hold present throughout is
    never repeated or skipped, whatever is added between two pages."""
    sql, args = listed_holds_sql(where)
    rows = await db.fetch(sql, *args, limit)
    return [
        ListedHold(
            reservation_id=r["id"],
            experience_id=r["experience_id"],
            consumer_id=r["consumer_id"],
            product_id=r["product_id"],
            variant_id=r["variant_id"],
            quantity=r["quantity"],
            status=ReservationStatus(r["status"]),
            created_at=r["created_at"],
            expires_at=r["expires_at"],
            order_id=r["order_id"],
            end_reason=r["end_reason"],
        )
        for r in rows
    ]


async def hold_experiences(db: Reader, reservation_ids: list[UUID]) -> dict[UUID, str]:
    """The experience of each of these holds that exists."""
    rows = await db.fetch(
        "SELECT id, experience_id FROM reservations WHERE id = ANY($1::uuid[])", reservation_ids
    )
    return {r["id"]: r["experience_id"] for r in rows}


async def admission_times(db: Reader, grant_digest: str) -> AdmissionTimes | None:
    row = await db.fetchrow(
        """SELECT a.status, a.expires_at, a.ended_at,
                  (SELECT e.follows FROM admission_endings e
                    WHERE e.admission_grant = a.admission_grant AND e.outcome = 'active'
                      AND e.follows IS NOT NULL  -- a retry kept pending followed none
                    ORDER BY e.ended_at DESC LIMIT 1) AS retry_follows
           FROM admissions a WHERE a.admission_grant = $1""",
        grant_digest,
    )
    if row is None:
        return None
    return AdmissionTimes(row["status"], row["expires_at"], row["ended_at"], row["retry_follows"])


async def applied_command(db: Reader, command_id: UUID) -> AppliedCommand | None:
    """The inbox row of a command; None while it is not applied (or unknown)."""
    row = await db.fetchrow(
        "SELECT command_type, outcome, applied_at FROM inbox WHERE command_id = $1", command_id
    )
    if row is None:
        return None
    return AppliedCommand(row["command_type"], orjson.loads(row["outcome"]), row["applied_at"])


# --- the scheduler's reads ---------------------------------------------------------


async def due_expiries(db: Reader, now: datetime, limit: int) -> list[DueExpiry]:
    """Active admissions whose window ended at or before `now`, oldest first."""
    rows = await db.fetch(
        """SELECT admission_grant, experience_id, consumer_id, expires_at FROM admissions
           WHERE status = 'active' AND expires_at <= $1
           ORDER BY expires_at LIMIT $2""",
        now,
        limit,
    )
    return [
        DueExpiry(r["admission_grant"], r["experience_id"], r["consumer_id"], r["expires_at"])
        for r in rows
    ]


async def next_expiry(db: Reader, now: datetime) -> datetime | None:
    """When the next active admission's window ends after `now`; None: none does."""
    at: datetime | None = await db.fetchval(
        "SELECT min(expires_at) FROM admissions WHERE status = 'active' AND expires_at > $1",
        now,
    )
    return at


async def active_hold_count(db: Reader) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM reservations WHERE status = 'active'")
    return count


async def last_reconcile_drift(db: Reader) -> int | None:
    """Stock rows found drifting by the latest reconcile run; None: never run."""
    drift: int | None = await db.fetchval(
        "SELECT drift_rows FROM reconcile_runs ORDER BY id DESC LIMIT 1"
    )
    return drift
