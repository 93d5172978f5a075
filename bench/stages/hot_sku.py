"""Stage 3, hot SKU: admissions for ONE product with 1,000 units, all in one
drop (one experience, so one partition: the strictest ordering there is).
Time to drain, oversell (sampled while running and at the end; must be 0),
transitions/s against the guide's per-event code.

Carts (one line, one unit of the product, per consumer) are set up untimed;
the timed part is the admissions alone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench.ceiling_pg import CEILING_NAME, pg_ceiling, share
from bench.ceilings import kafka_figure
from bench.checks import check, check_side
from bench.core import Context, Figure, StageResult, extra_database, fresh_namespace
from bench.stages.drain import Side, check_watch, drain_race, side_json
from bench.workload import Builder, Record

NAME = "hot_sku"
TITLE = "Hot SKU: one product, 1,000 units, every admission wants one"


@dataclass(frozen=True)
class HotDrop:
    """One hot-SKU drop: its setup (the stock, every cart), its admissions,
    its product and its experience."""

    setup: list[Record]
    admissions: list[Record]
    product: str
    experience: str


def drop(admissions: int, units: int) -> HotDrop:
    b = Builder()
    product = f"hot-{b.tag}"
    experience = f"hotdrop-{b.tag}"
    now = datetime.now(UTC)
    setup = [b.stock(product, units)]
    setup += [b.cart(experience, f"c{n}", [(product, 1)], now) for n in range(admissions)]
    timed = [b.admit(experience, f"c{n}", f"grant-{b.tag}-{n}", now) for n in range(admissions)]
    return HotDrop(setup, timed, product, experience)


def workload(ctx: Context) -> tuple[list[Record], list[Record], str]:
    hot = drop(ctx.sizes.hot_admissions, ctx.sizes.hot_units)
    return hot.setup, hot.admissions, hot.product


async def run(ctx: Context, result: StageResult) -> None:
    setup, timed, product = workload(ctx)
    async with (
        fresh_namespace(ctx) as ns,
        extra_database(ns.admin_url, "naive") as naive_dsn,
    ):
        service, naive = await drain_race(
            ctx, ns, naive_dsn, NAME, setup, timed, timeout=1800, profile=ctx.profile == NAME
        )
        row = await _check_units(ctx, result, product, ns.database_url, naive_dsn)
        ceiling = await pg_ceiling(ctx, ns, result, timed)
    check_watch(result, service, naive)
    result.details.update(
        admissions=len(timed),
        units=ctx.sizes.hot_units,
        setup_commands=len(setup),
        stock_after={"on_hand": row["on_hand"], "reserved": row["reserved"], "sold": row["sold"]},
        active_holds_after=row["active_rows"],
        transition="one applied command (admission.grant)",
        service=side_json(service),
        naive=side_json(naive),
    )
    result.figures += _figures(ctx, service, naive, ceiling, row)


async def _check_units(
    ctx: Context, result: StageResult, product: str, dsn: str, naive_dsn: str
) -> dict[str, Any]:
    """Exactly the units on hand are held, each by its own admission, on
    both sides; the service's row of the product."""
    units = ctx.sizes.hot_units
    rows = await check_side(result, "service", dsn, "stock", {product: units})
    naive_rows = await check_side(result, "naive", naive_dsn, "inventory", {product: units})
    for side, found in (("service", rows), ("naive", naive_rows)):
        holds = sum(r["active_rows"] for r in found)
        check(result, f"{side}: one hold per unit", holds == units, f"{holds} active holds")
    return next(r for r in rows if r["product_id"] == product)


def _figures(
    ctx: Context, service: Side, naive: Side, ceiling: float | None, row: dict[str, Any]
) -> list[Figure]:
    rate, base = service.rate, naive.rate
    oversell = service.oversell_final + service.oversold_samples
    units = ctx.sizes.hot_units
    return [
        Figure(
            "transitions/s",
            rate,
            "/s",
            baseline=base,
            baseline_name="naive per-event",
            ratio=rate / base if rate and base else None,
            ceiling=ceiling,
            ceiling_name=CEILING_NAME,
            ceiling_share=share(rate, ceiling),
            target=">= 20,000/s",
            meets=bool(rate and rate >= 20_000),
        ),
        kafka_figure(ctx, "transitions/s vs Kafka read", rate, "consumer"),
        Figure(
            "drain time",
            service.seconds,
            "s",
            baseline=naive.seconds,
            baseline_name="naive per-event",
            ratio=service.seconds / naive.seconds if service.seconds and naive.seconds else None,
        ),
        Figure(
            "oversold rows",
            float(oversell),
            "rows",
            baseline=float(naive.oversell_final + naive.oversold_samples),
            baseline_name="naive per-event",
            target="0",
            meets=oversell == 0,
            note=f"{service.oversell_samples} samples while draining + the end state",
        ),
        Figure(
            "units held",
            float(row["active"]),
            "units",
            target=f"{units}",
            meets=row["active"] == units == row["reserved"] and row["active_rows"] == units,
            note="sum of the active hold rows",
        ),
    ]
