"""Stage 2, apply: transitions per second applied by ONE consumer process
from a pre-filled commands topic, against the guide's per-event code.

A transition is one applied command. The timed part is carts and admissions
(one cart per consumer, then its admission) over several experiences and
products with stock enough for every hold; the stock itself is set in an
untimed setup part."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from bench.ceiling_pg import CEILING_NAME, pg_ceiling, share
from bench.ceilings import kafka_figure
from bench.checks import check_side
from bench.core import Context, Figure, StageResult, extra_database, fresh_namespace
from bench.stages.drain import Side, check_watch, drain_race, side_json
from bench.workload import Builder, Record

NAME = "apply"
TITLE = "Apply: transitions/s, one consumer process, vs the guide's per-event code"


def workload(ctx: Context) -> tuple[list[Record], list[Record], dict[str, int]]:
    """Setup, timed records, and the units each product must hold after:
    every line of every cart, as stock is ample for all of them."""
    s = ctx.sizes
    rng = random.Random(2)
    b = Builder()
    products = [f"sku-{b.tag}-{i}" for i in range(s.apply_products)]
    experiences = [f"drop-{b.tag}-{i}" for i in range(s.apply_experiences)]
    setup = [b.stock(p, 10_000_000) for p in products]
    carts: list[Record] = []
    admissions: list[Record] = []
    held: dict[str, int] = {}
    now = datetime.now(UTC)
    for n in range(s.apply_consumers):
        exp = experiences[n % len(experiences)]
        consumer = f"c{n}"
        lines = [(p, rng.choice((1, 1, 2))) for p in rng.sample(products, rng.choice((1, 1, 2)))]
        for p, quantity in lines:
            held[p] = held.get(p, 0) + quantity
        carts.append(b.cart(exp, consumer, lines, now))
        admissions.append(b.admit(exp, consumer, f"grant-{b.tag}-{n}", now))
    return setup, carts + admissions, held


async def run(ctx: Context, result: StageResult) -> None:
    setup, timed, held = workload(ctx)
    async with (
        fresh_namespace(ctx) as ns,
        extra_database(ns.admin_url, "naive") as naive_dsn,
    ):
        service, naive = await drain_race(
            ctx, ns, naive_dsn, NAME, setup, timed, timeout=900, profile=ctx.profile == NAME
        )
        await check_side(result, "service", ns.database_url, "stock", held)
        await check_side(result, "naive", naive_dsn, "inventory", held)
        ceiling = await pg_ceiling(ctx, ns, result, timed)
    check_watch(result, service, naive)
    ctx.measured["apply_rate"] = service.rate or 0.0
    result.details.update(
        units_held_expected=sum(held.values()),
        commands_timed=len(timed),
        commands_setup=len(setup),
        products=ctx.sizes.apply_products,
        experiences=ctx.sizes.apply_experiences,
        transition="one applied command (cart.put or admission.grant)",
        service=side_json(service),
        naive=side_json(naive),
    )
    result.figures += _figures(ctx, service, naive, ceiling)


def _figures(ctx: Context, service: Side, naive: Side, ceiling: float | None) -> list[Figure]:
    rate, base = service.rate, naive.rate
    ratio = rate / base if rate and base else None
    return [
        Figure(
            "transitions/s",
            rate,
            "/s",
            baseline=base,
            baseline_name="naive per-event",
            ratio=ratio,
            ceiling=ceiling,
            ceiling_name=CEILING_NAME,
            ceiling_share=share(rate, ceiling),
            target=">= 20x naive and >= 20,000/s",
            meets=bool(ratio and rate and ratio >= 20 and rate >= 20_000),
            note="process start to last command in the inbox",
        ),
        Figure(
            "steady transitions/s",
            service.steady_rate,
            "/s",
            baseline=naive.steady_rate,
            baseline_name="naive per-event",
            ratio=(service.steady_rate / naive.steady_rate)
            if service.steady_rate and naive.steady_rate
            else None,
            note="first applied to last applied (start-up excluded)",
        ),
        kafka_figure(ctx, "transitions/s vs Kafka read", rate, "consumer"),
        Figure(
            "drain time",
            service.seconds,
            "s",
            baseline=naive.seconds,
            baseline_name="naive per-event",
            ratio=(service.seconds / naive.seconds) if service.seconds and naive.seconds else None,
        ),
    ]
