"""Mixed traffic over several experiences that share stock: every kind of
command and most decisions the engine can take (holds, rejections, cart
changes, supersedes, remembered endings, expiries on time and too early,
releases, checkouts with and without a grant, conflicting orders, refused
stock levels, extensions and retries, granted or refused), with duplicates
and out-of-order arrivals. Every time comes
from the commands, so the same seed always means the same traffic."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from tests import builders as b
from worker.domain.commands import CommandBase
from worker.domain.model import CartLine

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
ROWS: list[tuple[str, str | None]] = [("shoe", "42"), ("shoe", "43"), ("cap", None), ("bag", None)]
# experience -> (window + buffer seconds, configure options or None for defaults)
EXPERIENCES: dict[str, tuple[int, dict[str, object] | None]] = {
    "drop-soft": (660, None),
    "drop-hard": (330, {"strategy": "hard", "window_seconds": 300, "buffer_seconds": 30}),
    "drop-pool": (660, {"strategy": "pool", "pool_size": 4}),
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


def stock_levels(scale: int = 1) -> list[CommandBase]:
    return [b.stock(p, 18 * scale, v) for p, v in ROWS]


def _lines(rng: random.Random) -> list[CartLine]:
    lines = []
    for _ in range(rng.randint(0 if rng.random() < 0.1 else 1, 3)):
        product, variant = rng.choice(ROWS)
        lines.append(b.line(product, rng.randint(1, 3), variant))
    return lines


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
    cmds: list[CommandBase] = []
    for exp, (_, options) in EXPERIENCES.items():
        if options is not None:
            cmds.append(b.configure(exp, **options))
    for n in range(consumers):
        exp = rng.choice(list(EXPERIENCES))
        life = EXPERIENCES[exp][0]
        who = f"c{n}"
        grant = f"{exp}-{who}-g1"
        at = T0 + timedelta(seconds=7 * n)
        story: list[CommandBase] = []
        if rng.random() < 0.8:
            story.append(b.cart(exp, who, *_lines(rng), at=at - timedelta(seconds=1)))
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
            story.append(b.cart(exp, who, *_lines(rng), at=at + timedelta(seconds=15)))
            if rng.random() < 0.5:
                story.append(b.cart(exp, who, *_lines(rng), at=at + timedelta(seconds=25)))
        if tail < 0.35 and rng.random() < 0.5:
            story.append(b.complete(exp, who, grant, f"o-{exp}-{n}", at=at + timedelta(seconds=60)))
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
        cmds += story
    # Duplicates: the same command (same id) delivered again later.
    for cmd in rng.sample(cmds, k=len(cmds) // 12):
        cmds.insert(rng.randint(cmds.index(cmd) + 1, len(cmds)), cmd)
    return cmds
