"""Reconcile: compare every stock row's counters with the sums of its
reservations (reserved = Σ active, sold = Σ converted plus the sold holds
retention pruned, summed in sales_retired) and, with --repair,
set them right in one transaction. Exit status 1 when drift was found."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import asyncpg
import orjson

from worker.adapters.store import Conn
from worker.config import Settings


@dataclass(frozen=True)
class Drift:
    product_id: str
    variant_id: str
    reserved: int
    expected_reserved: int
    sold: int
    expected_sold: int


# Stock rows are locked first, in key order, in one statement; the sums are
# read by a later statement, so under READ COMMITTED they include every
# consumer transaction that touched these rows before us.
LOCK_STOCK = "SELECT 1 FROM stock ORDER BY product_id, variant_id FOR UPDATE"
FIND_DRIFT = """
SELECT s.product_id, s.variant_id, s.reserved, s.sold,
       COALESCE(r.active, 0) AS expected_reserved,
       (COALESCE(r.converted, 0) + COALESCE(p.retired, 0))::int AS expected_sold
FROM stock s
LEFT JOIN (
    SELECT product_id, variant_id,
           sum(quantity) FILTER (WHERE status = 'active') AS active,
           sum(quantity) FILTER (WHERE status = 'converted') AS converted
    FROM reservations GROUP BY product_id, variant_id
) r USING (product_id, variant_id)
LEFT JOIN (
    SELECT product_id, variant_id, sum(quantity) AS retired
    FROM sales_retired GROUP BY product_id, variant_id
) p USING (product_id, variant_id)
WHERE s.reserved <> COALESCE(r.active, 0)
   OR s.sold <> COALESCE(r.converted, 0) + COALESCE(p.retired, 0)
ORDER BY s.product_id, s.variant_id
"""


async def reconcile(conn: Conn, repair: bool) -> list[Drift]:
    async with conn.transaction():
        if repair:
            await conn.execute(LOCK_STOCK)
        rows = await conn.fetch(FIND_DRIFT)
        drift = [Drift(**dict(r)) for r in rows]
        if repair and drift:
            await conn.executemany(
                """UPDATE stock SET reserved = $3, sold = $4
                   WHERE product_id = $1 AND variant_id = $2""",
                [(d.product_id, d.variant_id, d.expected_reserved, d.expected_sold) for d in drift],
            )
        await conn.execute(
            "INSERT INTO reconcile_runs (drift_rows, repaired, details) VALUES ($1, $2, $3::jsonb)",
            len(drift),
            repair and bool(drift),
            orjson.dumps([d.__dict__ for d in drift]).decode(),
        )
    return drift


def render(drift: list[Drift], repaired: bool) -> str:
    if not drift:
        return "reconcile: no drift: every counter equals the sum of its reservations"
    header = (
        f"{'product':<24} {'variant':<12} {'reserved':>9} {'expected':>9} "
        f"{'sold':>7} {'expected':>9}"
    )
    lines = [header, "-" * len(header)]
    for d in drift:
        lines.append(
            f"{d.product_id:<24} {d.variant_id or '-':<12} {d.reserved:>9} "
            f"{d.expected_reserved:>9} {d.sold:>7} {d.expected_sold:>9}"
        )
    verdict = "repaired" if repaired else "not repaired (run with --repair)"
    lines.append(f"reconcile: drift in {len(drift)} stock row(s), {verdict}")
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rec = sub.add_parser("reconcile", help="report (and --repair) counter drift; exit 1 on drift")
    rec.add_argument("--repair", action="store_true", help="set drifted counters right")


async def command(settings: Settings, args: argparse.Namespace) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        drift = await reconcile(conn, args.repair)
    finally:
        await conn.close()
    print(render(drift, repaired=args.repair))
    return 1 if drift else 0
