"""What a batch reads for backfill (worker.engine.backfill), after its own
rows and before it locks stock: the head of each of the batch's backfill
experiences' line (its active admissions lacking a line of a product the
batch touches, oldest first, at most LINE_READ), with their carts, and the
holds of the ones the batch had not read. Two statements at most, however
large the batch. Their cart rows
then join the batch's stock rows, so they are locked with them, in key
order.

Only the batch's own experiences: their commands are applied by this
consumer alone (the partition's position row is locked for the
transaction), so no other transaction changes these admissions, carts or
holds between this read and the commit. A stock set (partitioned by
product) never reads or changes another experience's admissions.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from worker.adapters.store import Conn
from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import CART_ITEMS, TrackedAdmission, TrackedCart, TrackedReservation
from worker.domain.backfill import place_in_line
from worker.domain.commands import Command, ConfigureExperience
from worker.domain.stock import StockKey

# Candidates read per experience and batch: the head of its line. Offers in a
# batch are as many as the units it frees, so a head this long covers them
# unless that many candidates in a row do not fit what is free.
LINE_READ = 500
# $1 experiences of the batch that backfill, $2 products the batch touches,
# $3 LINE_READ. Only admissions with a line of such a product the admission
# does not hold (the refused lines), each experience's in line order (grant
# digests are lowercase hex: every collation orders them as Python does).
CANDIDATES_SQL = """SELECT t.* FROM unnest($1::text[]) AS x(experience_id)
    CROSS JOIN LATERAL (
        SELECT a.*, c.items AS cart_items, c.updated_at AS cart_updated_at
        FROM admissions a
        JOIN carts c ON c.experience_id = a.experience_id AND c.consumer_id = a.consumer_id
        WHERE a.experience_id = x.experience_id AND a.status = 'active' AND EXISTS (
            SELECT 1 FROM jsonb_array_elements(c.items) AS i(line)
            WHERE i.line->>'productId' = ANY($2::text[]) AND NOT EXISTS (
                SELECT 1 FROM reservations r
                WHERE r.admission_grant = a.admission_grant AND r.status = 'active'
                  AND r.product_id = i.line->>'productId'
                  AND r.variant_id = COALESCE(i.line->>'variantId', '')))
        ORDER BY a.admitted_at, a.admission_grant
        LIMIT $3) t"""
HOLDS_OF_SQL = "SELECT * FROM reservations WHERE admission_grant = ANY($1::text[])"


async def load_candidates(
    uow: UnitOfWork,
    conn: Conn,
    commands: Iterable[Command],
    experiences: set[str],
    stock: set[StockKey],
) -> None:
    """Track the candidates (rows the batch read already stay as they are),
    add their cart rows to `stock`, and record the products they were read
    for: only those are offered (another product's line may have a
    candidate the batch did not read)."""
    turned_on = {
        c.experience_id for c in commands if isinstance(c, ConfigureExperience) and c.backfill
    }
    backfilling = sorted(e for e in experiences if _backfills(uow, e, turned_on))
    uow.backfill_products, uow.backfill_waiting = set(), set()
    if not backfilling:
        return
    products = sorted({p for p, _ in stock})
    uow.backfill_products.update(products)
    found = await conn.fetch(CANDIDATES_SQL, backfilling, products, LINE_READ)
    uow.backfill_waiting.update(r["admission_grant"] for r in found)
    uow.backfill_cutoff = _cutoffs(found)
    unread = [r["admission_grant"] for r in found if r["admission_grant"] not in uow.admissions]
    for r in found:
        uow.track_admission(TrackedAdmission.loaded(r))
        pair = (r["experience_id"], r["consumer_id"])
        if pair not in uow.carts:
            items = CART_ITEMS.validate_json(r["cart_items"])
            uow.carts[pair] = TrackedCart(items, r["cart_updated_at"])
        stock.update((i.product_id, i.variant_column) for i in uow.carts[pair].items)
    if unread:
        for h in await conn.fetch(HOLDS_OF_SQL, unread):
            uow.track_reservation(TrackedReservation.loaded(h))


def _backfills(uow: UnitOfWork, experience_id: str, configured: set[str]) -> bool:
    """Backfill is on for it now, or may be once the batch configures it."""
    settings = uow.experiences.get(experience_id)
    return experience_id in configured or (settings is not None and settings.backfill)


def _cutoffs(found: list[Any]) -> dict[str, tuple[datetime, str]]:
    """Per experience whose line was read only to LINE_READ, the place of
    the last one read: the batch offers nothing past it, where candidates it
    did not read may stand before those it knows."""
    read: dict[str, list[Any]] = {}
    for r in found:
        read.setdefault(r["experience_id"], []).append(r)
    return {
        experience: place_in_line(rows[-1]["admitted_at"], rows[-1]["admission_grant"])
        for experience, rows in read.items()
        if len(rows) >= LINE_READ
    }
