"""Stories for the order-freedom property (tests/test_order_freedom.py).

A `Scenario` is what happened in one experience, told in labels and Fanfare
times (seconds after T0): the setup, each consumer's cart puts, admissions,
endings and completions, the scheduler's expiries; then when each resulting
command reached the consumers (`arrivals`) and how the consumers cut that
sequence into batches. `commands` turns it into real commands under an id
prefix, so the same story can be applied twice (in time order and in arrival
order) into one database without the two runs touching the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from worker.adapters.queries import DueExpiry
from worker.domain import ids
from worker.domain.commands import (
    AdmitConsumer,
    Command,
    CommandSource,
    CompleteCheckout,
    ConfigureExperience,
    EndAdmission,
    ExtendReservation,
    PutCart,
    RetryReservation,
    SetStock,
)
from worker.domain.model import (
    CartLine,
    ExperienceSettings,
    MultiItemPolicy,
    OnComplete,
    Strategy,
)
from worker.roles.scheduler import expiry_command

T0 = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)
AMPLE = 1_000_000  # more units than any story can hold
HOURS_44 = 44 * 3600  # how long Fanfare keeps retrying a webhook

FactKind = Literal[
    "configure",
    "stock",
    "cart",
    "admit",
    "left",
    "denied",
    "lost",
    "fanfare_expired",
    "complete",
    "checkout",
    "expiry",
    "extend",
    "retry",
]
ENDINGS: dict[str, tuple[Any, Any]] = {
    "left": ("released", "left"),
    "denied": ("released", "denied"),
    "lost": ("released", "lost"),
    "fanfare_expired": ("expired", "admission_expired"),
    "expiry": ("expired", "window_elapsed"),
}


@dataclass(frozen=True)
class Setup:
    strategy: Strategy | None = None  # None: never configured, the defaults apply
    window: int = 600
    buffer: int = 60
    pool_size: int | None = None
    all_or_nothing: bool = False
    convert_all: bool = False  # onComplete: convert_all rather than convert_ordered
    on_hand: tuple[int, ...] = (AMPLE,)  # per product
    extension: int = 0  # extensionSeconds
    max_extensions: int = 0
    retry_window: int = 0  # retryWindowSeconds
    backfill: bool = False

    @property
    def ample(self) -> bool:
        return all(n >= AMPLE for n in self.on_hand) and (
            self.strategy is not Strategy.POOL or (self.pool_size or 0) >= AMPLE
        )

    @property
    def settings(self) -> ExperienceSettings:
        if self.strategy is None:
            return ExperienceSettings()
        return ExperienceSettings(
            strategy=self.strategy,
            window_seconds=self.window,
            buffer_seconds=self.buffer,
            pool_size=self.pool_size,
            multi_item_policy=(
                MultiItemPolicy.ALL_OR_NOTHING if self.all_or_nothing else MultiItemPolicy.PARTIAL
            ),
            on_complete=OnComplete.CONVERT_ALL if self.convert_all else OnComplete.CONVERT_ORDERED,
            extension_seconds=self.extension,
            max_extensions=self.max_extensions,
            retry_window_seconds=self.retry_window,
            backfill=self.backfill,
        )

    @property
    def span(self) -> int:
        """admitted_at to expires_at, in seconds."""
        s = self.settings
        return s.window_seconds + s.buffer_seconds

    def describe(self) -> str:
        if self.strategy is None:
            head = "defaults (soft, 600 s + 60 s)"
        else:
            head = f"{self.strategy.value}, {self.window} s + {self.buffer} s"
            if self.strategy is Strategy.POOL:
                head += f", pool {self.pool_size}"
            if self.all_or_nothing:
                head += ", all_or_nothing"
            if self.convert_all:
                head += ", convert_all"
            if self.max_extensions:
                head += f", {self.max_extensions} extensions of {self.extension} s"
            if self.retry_window:
                head += f", retry within {self.retry_window} s"
            if self.backfill:
                head += ", backfill"
        stock = ", ".join(
            f"p{n}={'ample' if q >= AMPLE else q}" for n, q in enumerate(self.on_hand)
        )
        return f"experience {head}; stock {stock}"


@dataclass(frozen=True)
class Fact:
    """One thing that happened. `grant`: the admission's own grant (admit),
    or the grant the command names (expiry, a Fanfare expiry or completion
    that carries one, the checkout API's complete); None for Fanfare's
    grant-less endings and completions."""

    kind: FactKind
    at: int  # seconds after T0: Fanfare's time, the API's receive time, or expires_at
    consumer: int = 0
    grant: int | None = None
    items: tuple[tuple[int, int], ...] = ()  # cart, checkout: (product, quantity)
    order: int | None = None  # complete, checkout
    experience_kind: Literal["queue", "draw", "auction"] = "queue"

    @property
    def origin(self) -> Literal["api", "fanfare", "scheduler"]:
        if self.kind in ("configure", "stock", "cart", "checkout", "extend", "retry"):
            return "api"
        if self.kind == "expiry":
            return "scheduler"
        return "fanfare"

    def describe(self, setup: Setup) -> str:
        who = f"c{self.consumer}"
        named = f" naming g{self.grant}" if self.grant is not None else " (no grant)"
        match self.kind:
            case "configure":
                return "configure the experience"
            case "stock":
                return f"set stock of p{self.consumer}"
            case "cart":
                return f"{who} puts cart [{self.lines()}]"
            case "checkout":
                return f"{who} checks out order o{self.order} [{self.lines()}]{named} (API)"
            case "admit":
                return f"{who} admitted with g{self.grant} ({self.experience_kind})"
            case "complete":
                return f"{who} completed order o{self.order}{named}"
            case "expiry":
                return f"scheduler expires g{self.grant} (expires_at)"
            case "extend":
                return f"{who} extends g{self.grant}"
            case "retry":
                return f"{who} tries g{self.grant} again"
            case _:
                return f"{who} {self.kind}{named}"

    def lines(self) -> str:
        return ", ".join(f"p{p}x{q}" for p, q in self.items) or "empty"


@dataclass(frozen=True)
class Delivery:
    """One command reaching the consumers. `envelope` 0 is the original;
    n > 0 is the same fact re-sent by Fanfare under a new envelope id (a new
    command id). The same (fact, envelope) twice is a redelivery of one
    command (same command id), which the inbox drops."""

    fact: int
    envelope: int = 0
    arrival: int = 0


@dataclass(frozen=True)
class Scenario:
    setup: Setup
    facts: tuple[Fact, ...]  # in time order, setup first
    arrivals: tuple[Delivery, ...]  # in arrival order
    batches: tuple[int, ...] = field(default=())  # sizes; () = one per delivery

    def batch_sizes(self) -> list[int]:
        if not self.batches:
            return [1] * len(self.arrivals)
        assert sum(self.batches) == len(self.arrivals)
        return list(self.batches)

    def time_order(self) -> list[Delivery]:
        """Every distinct command once, by when it happened (a re-send
        right after its original)."""
        distinct = sorted({(d.fact, d.envelope) for d in self.arrivals})
        return [
            Delivery(f, e, self.facts[f].at)
            for f, e in sorted(distinct, key=lambda k: (self.facts[k[0]].at, k[1]))
        ]

    def label(self, d: Delivery) -> str:
        f = self.facts[d.fact]
        suffix = f" [re-sent #{d.envelope}]" if d.envelope else ""
        return f"{f.describe(self.setup)} @{f.at:+d}s{suffix}"

    def __str__(self) -> str:
        """The story, readable: what happened when, and what arrived when."""
        lines = [self.setup.describe(), "time order:"]
        lines += [f"  {self.label(d)}" for d in self.time_order()]
        lines.append("arrival order (| between batches):")
        seen: set[tuple[int, int]] = set()
        i = 0
        for size in self.batch_sizes():
            for d in self.arrivals[i : i + size]:
                again = " [redelivered]" if (d.fact, d.envelope) in seen else ""
                seen.add((d.fact, d.envelope))
                lines.append(f"  {self.label(d)}{again} arrives @{d.arrival:+d}s")
            i += size
            if i < len(self.arrivals):
                lines.append("  |")
        return "\n".join(lines)


@dataclass(frozen=True)
class Names:
    """The ids of one run of a scenario: every id carries the prefix."""

    prefix: str

    @property
    def experience(self) -> str:
        return f"{self.prefix}x"

    def consumer(self, n: int) -> str:
        return f"{self.prefix}c{n}"

    def product(self, n: int) -> str:
        return f"{self.prefix}p{n}"

    def grant(self, n: int) -> str:
        return f"{self.prefix}g{n}"

    def order(self, n: int) -> str:
        return f"{self.prefix}o{n}"

    def strip(self, value: str) -> str:
        assert value.startswith(self.prefix), (value, self.prefix)
        return value[len(self.prefix) :]

    def digests(self, grants: int) -> dict[str, str]:
        """Grant digest -> grant label (g0, g1...)."""
        return {ids.grant_digest(self.grant(n)): f"g{n}" for n in range(grants)}


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def command(scenario: Scenario, d: Delivery, names: Names) -> Command:
    """The command a delivery carries, under `names`. Deterministic: the
    same delivery twice is the same command id (a redelivery)."""
    f = scenario.facts[d.fact]
    when = at(f.at)
    key = f"{names.prefix}{d.fact}.{d.envelope}"
    common = {
        "command_id": ids.command_id(f.origin, key),
        "occurred_at": when,
        "received_at": at(d.arrival),
        "source": CommandSource(kind=f.origin, source_id=key),
    }
    exp, consumer = names.experience, names.consumer(f.consumer)
    digest = ids.grant_digest(names.grant(f.grant)) if f.grant is not None else None
    match f.kind:
        case "configure":
            s = scenario.setup.settings
            return ConfigureExperience(
                **common,
                experience_id=exp,
                strategy=s.strategy,
                window_seconds=s.window_seconds,
                buffer_seconds=s.buffer_seconds,
                pool_size=s.pool_size,
                multi_item_policy=s.multi_item_policy,
                on_complete=s.on_complete,
                extension_seconds=s.extension_seconds,
                max_extensions=s.max_extensions,
                retry_window_seconds=s.retry_window_seconds,
                backfill=s.backfill,
            )
        case "stock":
            return SetStock(
                **common,
                product_id=names.product(f.consumer),
                on_hand=scenario.setup.on_hand[f.consumer],
            )
        case "cart":
            return PutCart(
                **common,
                experience_id=exp,
                consumer_id=consumer,
                items=[CartLine(product_id=names.product(p), quantity=q) for p, q in f.items],
            )
        case "admit":
            assert digest is not None
            return AdmitConsumer(
                **common,
                experience_id=exp,
                consumer_id=consumer,
                grant_digest=digest,
                admitted_at=when,
                experience_kind=f.experience_kind,
            )
        case "complete" | "checkout":
            assert f.order is not None
            # The checkout API's complete names its lines; Fanfare's none.
            lines = [CartLine(product_id=names.product(p), quantity=q) for p, q in f.items]
            return CompleteCheckout(
                **common,
                experience_id=exp,
                consumer_id=consumer,
                grant_digest=digest,
                order_id=names.order(f.order),
                items=lines if f.kind == "checkout" else None,
            )
        case "extend":
            assert digest is not None
            return ExtendReservation(
                **common, experience_id=exp, consumer_id=consumer, grant_digest=digest
            )
        case "retry":
            assert digest is not None
            return RetryReservation(
                **common, experience_id=exp, consumer_id=consumer, grant_digest=digest
            )
        case "expiry":
            assert digest is not None
            # The scheduler's own command: its id is the product's expiry id.
            return expiry_command(DueExpiry(digest, exp, consumer, when), at(d.arrival))
        case _:
            outcome, reason = ENDINGS[f.kind]
            return EndAdmission(
                **common,
                experience_id=exp,
                consumer_id=consumer,
                grant_digest=digest,
                outcome=outcome,
                reason=reason,
                ended_at=when,
            )


def setup_facts(setup: Setup) -> list[Fact]:
    """Configuration first, then stock, before anything else happens."""
    facts = [Fact("stock", -100 + n, consumer=n) for n in range(len(setup.on_hand))]
    if setup.strategy is not None:
        facts.insert(0, Fact("configure", -200))
    return facts


def grants_in(scenario: Scenario) -> int:
    return sum(1 for f in scenario.facts if f.kind == "admit")


def story(
    setup: Setup,
    facts: list[Fact],
    arrival: list[int | tuple[int, int]],
    batches: tuple[int, ...] = (),
) -> Scenario:
    """A hand-written scenario: `facts` after the setup, in time order;
    `arrival` lists indexes into `facts` (or (index, envelope)) in the order
    they arrive, the setup arriving first."""
    head = setup_facts(setup)
    every = head + facts
    order = [Delivery(n, 0, f.at) for n, f in enumerate(head)]
    clock = 0
    for a in arrival:
        n, envelope = a if isinstance(a, tuple) else (a, 0)
        # Only for the story's printout: nothing arrives before it happened.
        clock = max(clock + 1, facts[n].at)
        order.append(Delivery(len(head) + n, envelope, clock))
    return Scenario(setup, tuple(every), tuple(order), batches)
