"""Mixed traffic over several experiences that share stock: every kind of
command and most decisions the engine can take (holds, rejections, cart
changes, supersedes, remembered endings, expiries on time and too early,
releases, operator releases by id, consumer and product, checkouts with
and without a grant, the checkout API's partial orders, conflicting orders,
refused stock levels and pool sizes, extensions and retries, granted or
refused, a freed unit backfilled), with duplicates and out-of-order arrivals. Every time comes from
the commands, so the same seed always means the same traffic."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from tests import builders as b
from worker.domain import ids
from worker.domain.commands import CommandBase
from worker.domain.model import CartLine, ProductPool

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
ROWS: list[tuple[str, str | None]] = [("shoe", "42"), ("shoe", "43"), ("cap", None), ("bag", None)]
# experience -> (window + buffer seconds, configure options or None for defaults)
EXPERIENCES: dict[str, tuple[int, dict[str, object] | None]] = {
    "drop-soft": (660, None),
    "drop-hard": (
        330,
        {"strategy": "hard", "window_seconds": 300, "buffer_seconds": 30, "backfill": True},
    ),
    "drop-pool": (
        660,
        {
            "strategy": "pool",
            "pool_size": 4,
            "pools": [ProductPool(product_id="shoe", variant_id="42", size=2)],
            "backfill": True,
        },
    ),
    "drop-all": (
        660,
        {
            "multi_item_policy": "all_or_nothing",
            "extension_seconds": 120,
            "max_extensions": 2,
            "retry_window_seconds": 300,
        },
    ),
}


# The backfill line's product: one unit, of its own, so no story's stock set
# or hold (applied on other partitions, in any order) can take it first.
LINE_PRODUCT = "line-bag"


def stock_levels(scale: int = 1) -> list[CommandBase]:
    return [*(b.stock(p, 18 * scale, v) for p, v in ROWS), b.stock(LINE_PRODUCT, 1)]


def _lines(rng: random.Random) -> list[CartLine]:
    lines = []
    for _ in range(rng.randint(0 if rng.random() < 0.1 else 1, 3)):
        product, variant = rng.choice(ROWS)
        lines.append(b.line(product, rng.randint(1, 3), variant))
    return lines


def _operator(
    ops: random.Random, exp: str, who: str, grant: str, at: datetime
) -> list[CommandBase]:
    """Sometimes an operator releases this consumer's holds: by the id the
    first one has, by consumer, or by product (every variant, or one)."""
    roll = ops.random()
    when = at + timedelta(seconds=ops.randint(5, 50))
    if roll < 0.04:
        # The hold the admission would take on a row (maybe never taken: unknown).
        hold = ids.reservation_id(ids.grant_digest(grant), *ops.choice(ROWS))
        return [b.release(exp, reservation_ids=[hold], at=when)]
    if roll < 0.08:
        return [b.release(exp, consumer=who, at=when)]
    if roll < 0.11:
        product, variant = ops.choice(ROWS)
        return [b.release(exp, product=product, variant=ops.choice([variant, None]), at=when)]
    return []


def _extend_or_retry(
    exp: str, who: str, grant: str, at: datetime, life: int, tail: float
) -> list[CommandBase]:
    """Only drop-all extends and retries; elsewhere they are refused."""
    expiry = b.end(
        exp, who, grant, outcome="expired", reason="window_elapsed", at=at + timedelta(seconds=life)
    )
    if tail < 0.95:
        # Extended twice; the expiry for the old time is not due.
        return [
            b.extend(exp, who, grant, at + timedelta(seconds=30)),
            b.extend(exp, who, grant, at + timedelta(seconds=40)),
            expiry,
        ]
    if tail < 0.975:
        # Decided before the expiry, applied after it: the admission holds again.
        return [expiry, b.extend(exp, who, grant, at + timedelta(seconds=life - 1))]
    return [expiry, b.retry(exp, who, grant, at + timedelta(seconds=life + 20))]


def traffic(seed: int, consumers: int = 40) -> list[CommandBase]:
    """Configuration and per-consumer stories; stock levels not included
    (see `stock_levels`), except some late changes."""
    rng = random.Random(seed)
    # Operator releases draw from their own stream, so the stories stay
    # those every other seed-based test was written against.
    ops = random.Random(seed + 1)
    cmds: list[CommandBase] = []
    for exp, (_, options) in EXPERIENCES.items():
        if options is not None:
            cmds.append(b.configure(exp, **options))
    for n in range(consumers):
        if n == consumers // 2:
            # Every pool to 0 halfway: refused while any pool has units out.
            cmds.append(b.configure("drop-pool", strategy="pool", pool_size=0))
        exp = rng.choice(list(EXPERIENCES))
        life = EXPERIENCES[exp][0]
        who = f"c{n}"
        grant = f"{exp}-{who}-g1"
        at = T0 + timedelta(seconds=7 * n)
        story: list[CommandBase] = []
        cart: list[CartLine] = []
        if rng.random() < 0.8:
            cart = _lines(rng)
            story.append(b.cart(exp, who, *cart, at=at - timedelta(seconds=1)))
        admit = b.admit(exp, who, grant, at)
        roll = rng.random()
        if roll < 0.08:
            # The ending arrives first: remembered, the admission takes no holds.
            grantless = rng.random() < 0.5
            story += [
                b.end(exp, who, None if grantless else grant, at=at + timedelta(seconds=20)),
                admit,
            ]
        elif roll < 0.16:
            # A later grant supersedes; half the time it arrives first.
            later = b.admit(exp, who, f"{exp}-{who}-g2", at + timedelta(seconds=90))
            story += [later, admit] if rng.random() < 0.5 else [admit, later]
        else:
            story.append(admit)
        tail = rng.random()
        if tail < 0.2:
            cart = _lines(rng)
            story.append(b.cart(exp, who, *cart, at=at + timedelta(seconds=15)))
            if rng.random() < 0.5:
                cart = _lines(rng)
                story.append(b.cart(exp, who, *cart, at=at + timedelta(seconds=25)))
        if tail < 0.35 and rng.random() < 0.5:
            # Every other one through the checkout API: one unit of the
            # cart's first line, the rest released (not_ordered).
            first = cart[0] if cart and n % 2 else None
            ordered = [b.line(first.product_id, 1, first.variant_id)] if first else []
            sold_at = at + timedelta(seconds=60)
            story.append(b.complete(exp, who, grant, f"o-{exp}-{n}", *ordered, at=sold_at))
        elif tail < 0.5:
            story.append(b.end(exp, who, grant, at=at + timedelta(seconds=40)))
        elif tail < 0.6:
            story.append(b.end(exp, who, None, reason="lost", at=at + timedelta(seconds=45)))
        elif tail < 0.72:
            story.append(
                b.end(
                    exp,
                    who,
                    grant,
                    outcome="expired",
                    reason="window_elapsed",
                    at=at + timedelta(seconds=life),
                )
            )
        elif tail < 0.78:
            early = b.end(
                exp,
                who,
                grant,
                outcome="expired",
                reason="window_elapsed",
                at=at + timedelta(seconds=30),
            )
            story.append(early)  # not yet due: ignored
        elif tail < 0.86:
            # Fanfare's completion (no grant), then a conflicting order.
            story.append(b.complete(exp, who, None, f"f-{exp}-{n}", at=at + timedelta(seconds=70)))
            story.append(b.complete(exp, who, None, f"x-{exp}-{n}", at=at + timedelta(seconds=75)))
        elif tail < 0.92:
            story.append(
                b.end(
                    exp,
                    who,
                    grant,
                    outcome="expired",
                    reason="admission_expired",
                    at=at + timedelta(seconds=life - 5),
                )
            )
        else:
            story += _extend_or_retry(exp, who, grant, at, life, tail)
        if rng.random() < 0.05:
            product, variant = rng.choice(ROWS)
            story.append(b.stock(product, rng.randint(0, 30), variant))  # maybe refused
        story += _operator(ops, exp, who, grant, at)
        cmds += story
    # Duplicates: the same command (same id) delivered again later.
    for cmd in rng.sample(cmds, k=len(cmds) // 12):
        cmds.insert(rng.randint(cmds.index(cmd) + 1, len(cmds)), cmd)
    return cmds + _backfill_line(T0 + timedelta(seconds=7 * consumers))


def _backfill_line(at: datetime) -> list[CommandBase]:
    """One unit of a product of its own, with backfill, after every story
    (its own experience, so the stories stay as they were): the first
    shopper holds it, the second is refused, and holds it once the first
    leaves."""
    exp = "drop-line"
    commands: list[CommandBase] = [b.configure(exp, strategy="pool", pool_size=1, backfill=True)]
    for n, who in enumerate(("first", "second")):
        admitted = at + timedelta(seconds=n)
        commands += [
            b.cart(exp, who, b.line(LINE_PRODUCT, 1), at=admitted - timedelta(seconds=1)),
            b.admit(exp, who, f"{exp}-{who}", admitted),
        ]
    return [*commands, b.end(exp, "first", None, at=at + timedelta(seconds=30))]
