"""Stage 2, apply: transitions per second applied by ONE consumer process
from a pre-filled commands topic, against the guide's per-event code.

A transition is one applied command. The timed part is carts and admissions
(one cart per consumer, then its admission) over several experiences and
products with stock enough for every hold; the stock itself is set in an
untimed setup part."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from bench.core import Context, Figure, StageResult, fresh_namespace
from bench.stages.drain import drain_race, side_json
from bench.workload import Builder, Record

NAME = "apply"
TITLE = "Apply: transitions/s, one consumer process, vs the guide's per-event code"


def workload(ctx: Context) -> tuple[list[Record], list[Record], int]:
    s = ctx.sizes
    rng = random.Random(2)
    b = Builder()
    products = [f"sku-{b.tag}-{i}" for i in range(s.apply_products)]
    experiences = [f"drop-{b.tag}-{i}" for i in range(s.apply_experiences)]
    setup = [b.stock(p, 10_000_000) for p in products]
    carts: list[Record] = []
    admissions: list[Record] = []
    holds = 0
    now = datetime.now(UTC)
    for n in range(s.apply_consumers):
        exp = experiences[n % len(experiences)]
        consumer = f"c{n}"
        lines = rng.sample(products, rng.choice((1, 1, 2)))
        holds += len(lines)
        carts.append(b.cart(exp, consumer, [(p, rng.choice((1, 1, 2))) for p in lines], now))
        admissions.append(b.admit(exp, consumer, f"grant-{b.tag}-{n}", now))
    return setup, carts + admissions, holds


async def run(ctx: Context, result: StageResult) -> None:
    setup, timed, holds = workload(ctx)
    async with fresh_namespace(ctx) as ns:
        service, naive = await drain_race(
            ctx, ns, NAME, setup, timed, timeout=900, profile=ctx.profile == NAME
        )
        result.details["holds_expected"] = holds
        result.details["holds_taken"] = await _holds(ns.database_url)
        result.details["naive_holds_taken"] = naive.extra.get("holds")
    rate, base = service.rate, naive.rate
    ratio = rate / base if rate and base else None
    ctx.measured["apply_rate"] = rate or 0.0
    result.details.update(
        commands_timed=len(timed),
        commands_setup=len(setup),
        products=ctx.sizes.apply_products,
        experiences=ctx.sizes.apply_experiences,
        transition="one applied command (cart.put or admission.grant)",
        service=side_json(service),
        naive=side_json(naive),
    )
    result.figures += [
        Figure(
            "transitions/s",
            rate,
            "/s",
            baseline=base,
            baseline_name="naive per-event",
            ratio=ratio,
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
        Figure(
            "drain time",
            service.seconds,
            "s",
            baseline=naive.seconds,
            baseline_name="naive per-event",
            ratio=(service.seconds / naive.seconds) if service.seconds and naive.seconds else None,
        ),
    ]
    if service.oversell_final or service.oversold_samples:
        result.status = "failed"
        result.reason = "oversell observed"


async def _holds(dsn: str) -> int:
    from bench.core import scalar

    return int(await scalar(dsn, "SELECT count(*) FROM reservations WHERE status = 'active'"))
