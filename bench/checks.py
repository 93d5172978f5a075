"""Correctness checks a stage's figures stand on, each able to fail it.

A check is recorded on the stage's result whether it passes or not, so the
JSON shows it ran; a failed one fails the stage with a line naming it. The
numbers are read from the tables (or the topic) by the benchmark itself and
compared with what the workload implies, never with what the engine says it
did, and never through the schema's own `CHECK` constraints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.core import Check, StageResult, connect


def check(result: StageResult, name: str, passed: bool, detail: str) -> bool:
    """Record one check; a failed one fails the stage and names itself."""
    result.checks.append(Check(name, passed, detail))
    if not passed:
        result.status = "failed"
        line = f"check {name} failed: {detail}"
        result.reason = f"{result.reason}; {line}" if result.reason else line
    return passed


def compare(
    result: StageResult, name: str, want: Mapping[str, Any], got: Mapping[str, Any]
) -> bool:
    """Check two keyed tallies are equal; the detail names what differs."""
    keys = sorted(set(want) | set(got), key=str)
    diff = {k: (want.get(k, 0), got.get(k, 0)) for k in keys if want.get(k, 0) != got.get(k, 0)}
    shown = dict(list(diff.items())[:5])
    detail = (
        f"{len(keys)} keys equal"
        if not diff
        else f"{len(diff)} of {len(keys)} differ (want, got): {shown}"
    )
    return check(result, name, not diff, detail)


# Per product: its counters and what the hold rows add up to. The service's
# tables and the naive baseline's have the same column names; the naive
# reservations' variant may be NULL.
_HELD_SQL = """
WITH held AS (
    SELECT product_id, coalesce(variant_id, '') AS variant_id,
           coalesce(sum(quantity) FILTER (WHERE status = 'active'), 0) AS active,
           coalesce(sum(quantity) FILTER (WHERE status = 'converted'), 0) AS converted,
           count(*) FILTER (WHERE status = 'active') AS active_rows
    FROM reservations GROUP BY 1, 2
)
SELECT s.product_id, s.variant_id, s.on_hand, s.reserved, s.sold,
       coalesce(h.active, 0)::int AS active, coalesce(h.converted, 0)::int AS converted,
       coalesce(h.active_rows, 0)::int AS active_rows
FROM {table} s FULL JOIN held h USING (product_id, variant_id)
"""


async def held_by_product(dsn: str, table: str) -> list[dict[str, Any]]:
    """`table` is `stock` (the service) or `inventory` (the naive code)."""
    assert table in ("stock", "inventory")
    conn = await connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(_HELD_SQL.format(table=table))]
    finally:
        await conn.close()


def check_no_oversell(result: StageResult, side: str, rows: list[dict[str, Any]]) -> None:
    """Per product: Σ active + converted quantities ≤ on_hand, and the
    counters equal the sums of the rows."""
    over = [r for r in rows if r["active"] + r["converted"] > (r["on_hand"] or 0)]
    check(
        result,
        f"{side}: held + sold rows <= on_hand",
        not over,
        f"{len(rows)} products" if not over else f"{len(over)} oversold: {over[:3]}",
    )
    off = [
        r
        for r in rows
        if (r["reserved"], r["sold"]) != (r["active"], r["converted"]) or r["on_hand"] is None
    ]
    check(
        result,
        f"{side}: counters = sums of hold rows",
        not off,
        f"{len(rows)} products" if not off else f"{len(off)} differ: {off[:3]}",
    )


async def check_side(
    result: StageResult, side: str, dsn: str, table: str, want_active: Mapping[str, int]
) -> list[dict[str, Any]]:
    """The oversell checks, then the active units per product against
    `want_active`, the fold of the workload."""
    rows = await held_by_product(dsn, table)
    check_no_oversell(result, side, rows)
    got = {r["product_id"]: r["active"] for r in rows if r["active"]}
    compare(result, f"{side}: units held per product = workload's", want_active, got)
    return rows
