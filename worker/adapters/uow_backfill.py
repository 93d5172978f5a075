"""What a batch reads for backfill (worker.engine.backfill), after its own
rows and before it locks stock: the active admissions of the batch's
backfill experiences whose current cart has a line on a product the batch
touches, with their carts, and the holds of the ones the batch had not
read. Two statements at most, however large the batch. Their cart rows
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

from worker.adapters.store import Conn
from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import CART_ITEMS, TrackedAdmission, TrackedCart, TrackedReservation
from worker.domain.commands import Command, ConfigureExperience
from worker.domain.stock import StockKey

# $1 experiences of the batch that backfill, $2 products the batch touches.
# Only admissions with a line of such a product the admission does not hold:
# the refused lines.
CANDIDATES_SQL = """SELECT a.*, c.items AS cart_items, c.updated_at AS cart_updated_at
    FROM admissions a
    JOIN carts c ON c.experience_id = a.experience_id AND c.consumer_id = a.consumer_id
    WHERE a.experience_id = ANY($1::text[]) AND a.status = 'active' AND EXISTS (
        SELECT 1 FROM jsonb_array_elements(c.items) AS i(line)
        WHERE i.line->>'productId' = ANY($2::text[]) AND NOT EXISTS (
            SELECT 1 FROM reservations r
            WHERE r.admission_grant = a.admission_grant AND r.status = 'active'
              AND r.product_id = i.line->>'productId'
              AND r.variant_id = COALESCE(i.line->>'variantId', '')))"""
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
    found = await conn.fetch(CANDIDATES_SQL, backfilling, products)
    uow.backfill_waiting.update(r["admission_grant"] for r in found)
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
