"""What a batch reads for backfill (worker.engine.backfill), after its own
rows and before it locks stock: the active admissions of backfill
experiences whose current cart has a line on a product the batch can free
units of, with their carts, their holds and their experiences' settings.
At most three statements, however large the batch: the candidates with
their carts (one join), then the holds of the ones the batch had not read,
then the settings of experiences it had not read. Their cart rows then join
the batch's stock rows, so they are locked with them, in key order.

Which products: every product the batch touches, for the backfill
experiences among the batch's own (a hold of theirs may end); the products
whose stock is set, for every backfill experience (a raise offers its
units to all of them)."""

from __future__ import annotations

from collections.abc import Iterable

from worker.adapters import rows as tables
from worker.adapters.store import Conn
from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import CART_ITEMS, TrackedAdmission, TrackedCart, TrackedReservation
from worker.domain.commands import Command, ConfigureExperience, SetStock
from worker.domain.stock import StockKey

# $1 experiences of the batch that backfill, $2 products the batch touches,
# $3 products whose stock is set. The cart is matched by product alone
# (a superset when the product has variants: the engine checks the line).
CANDIDATES_SQL = """SELECT a.*, c.items AS cart_items, c.updated_at AS cart_updated_at
    FROM admissions a
    JOIN carts c ON c.experience_id = a.experience_id AND c.consumer_id = a.consumer_id
    WHERE a.status = 'active' AND (
        (a.experience_id = ANY($1::text[]) AND EXISTS (
            SELECT 1 FROM unnest($2::text[]) AS p(product_id)
            WHERE c.items @> jsonb_build_array(jsonb_build_object('productId', p.product_id))))
        OR (cardinality($3::text[]) > 0
            AND a.experience_id IN (SELECT experience_id FROM experiences WHERE backfill)
            AND EXISTS (
                SELECT 1 FROM unnest($3::text[]) AS p(product_id)
                WHERE c.items @> jsonb_build_array(
                    jsonb_build_object('productId', p.product_id)))))"""
HOLDS_OF_SQL = "SELECT * FROM reservations WHERE admission_grant = ANY($1::text[])"


async def load_candidates(
    uow: UnitOfWork,
    conn: Conn,
    commands: Iterable[Command],
    experiences: set[str],
    stock: set[StockKey],
) -> None:
    """Track the candidates (rows the batch read already stay as they are)
    and add their experiences and cart rows to `experiences` and `stock`."""
    commands = list(commands)
    turned_on = {
        c.experience_id for c in commands if isinstance(c, ConfigureExperience) and c.backfill
    }
    backfilling = sorted(e for e in experiences if _backfills(uow, e, turned_on))
    raised = sorted({c.product_id for c in commands if isinstance(c, SetStock)})
    if not backfilling and not raised:
        return
    products = sorted({p for p, _ in stock})
    found = await conn.fetch(CANDIDATES_SQL, backfilling, products, raised)
    unread = [r["admission_grant"] for r in found if r["admission_grant"] not in uow.admissions]
    for r in found:
        uow.track_admission(TrackedAdmission.loaded(r))
        pair = (r["experience_id"], r["consumer_id"])
        if pair not in uow.carts:
            items = CART_ITEMS.validate_json(r["cart_items"])
            uow.carts[pair] = TrackedCart(items, r["cart_updated_at"])
        stock.update((i.product_id, i.variant_column) for i in uow.carts[pair].items)
        experiences.add(r["experience_id"])
    if unread:
        for h in await conn.fetch(HOLDS_OF_SQL, unread):
            uow.track_reservation(TrackedReservation.loaded(h))
    await _settings(uow, conn, experiences)


def _backfills(uow: UnitOfWork, experience_id: str, configured: set[str]) -> bool:
    """Backfill is on for it now, or may be once the batch configures it."""
    settings = uow.experiences.get(experience_id)
    return experience_id in configured or (settings is not None and settings.backfill)


async def _settings(uow: UnitOfWork, conn: Conn, experiences: set[str]) -> None:
    unread = sorted(e for e in experiences if e not in uow.experiences)
    if not unread:
        return
    records = await conn.fetch(
        f"""SELECT experience_id, {tables.SELECT_EXPERIENCE_SETTINGS}
            FROM experiences WHERE experience_id = ANY($1::text[])""",
        unread,
    )
    for r in records:
        uow.experiences[r["experience_id"]] = tables.experience_settings(r)
