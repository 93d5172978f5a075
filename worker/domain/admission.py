"""What happens when a consumer is admitted: the decision, without I/O.

The engine loads the facts (settings, cart, earlier admissions, endings that
arrived first), asks `plan_admission` what to do, tries the holds with
conditional updates, and records the result with its events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from uuid import UUID

from worker.domain import ids
from worker.domain.commands import AdmitConsumer
from worker.domain.model import CartLine, ExperienceSettings, MultiItemPolicy, Strategy, sum_lines


class AdmissionDecision(StrEnum):
    HOLD = "hold"  # new admission: try holds for the cart
    DUPLICATE = "duplicate"  # this grant was seen before: change nothing
    SUPERSEDED = "superseded"  # a later grant for this consumer is already recorded
    ENDED_EARLY = "ended_early"  # its ending arrived first: record it ended, no holds


@dataclass(frozen=True)
class PriorAdmission:
    """The latest admission already recorded for the same consumer and experience."""

    grant_digest: str
    admitted_at: datetime
    active: bool


@dataclass(frozen=True)
class RememberedEnding:
    """An ending (release or expiry) that arrived before this admission."""

    outcome: str  # released | expired
    reason: str
    ended_at: datetime


@dataclass(frozen=True)
class HoldRequest:
    reservation_id: UUID
    product_id: str
    variant_id: str  # '' when the product has no variants
    quantity: int


@dataclass(frozen=True)
class AdmissionPlan:
    decision: AdmissionDecision
    expires_at: datetime
    holds: list[HoldRequest] = field(default_factory=list)
    # Earlier grant of the same consumer whose holds this admission releases.
    supersedes: str | None = None
    all_or_nothing: bool = False
    ending: RememberedEnding | None = None


def wanted_units(lines: list[CartLine], strategy: Strategy) -> dict[tuple[str, str], int]:
    """Units to hold per stock row. Two lines on one row are summed before
    any check; a pooled experience holds one unit per admitted consumer."""
    totals = sum_lines(lines)
    if strategy is Strategy.POOL:
        return dict.fromkeys(totals, 1)
    return totals


def is_all_or_nothing(settings: ExperienceSettings) -> bool:
    return (
        settings.strategy is Strategy.HARD
        or settings.multi_item_policy is MultiItemPolicy.ALL_OR_NOTHING
    )


def plan_admission(
    command: AdmitConsumer,
    settings: ExperienceSettings,
    cart: list[CartLine],
    grant_seen: bool,
    prior: PriorAdmission | None,
    ending: RememberedEnding | None = None,
) -> AdmissionPlan:
    expires_at = settings.expires_at(command.admitted_at)
    if grant_seen:
        return AdmissionPlan(AdmissionDecision.DUPLICATE, expires_at)
    # Fanfare does not promise order: the later admission wins, whichever
    # arrives first, so the outcome never depends on arrival order.
    if prior is not None and prior.admitted_at > command.admitted_at:
        return AdmissionPlan(AdmissionDecision.SUPERSEDED, expires_at)
    supersedes = prior.grant_digest if prior is not None and prior.active else None
    if ending is not None:
        return AdmissionPlan(
            AdmissionDecision.ENDED_EARLY, expires_at, supersedes=supersedes, ending=ending
        )
    holds = [
        HoldRequest(
            reservation_id=ids.reservation_id(command.grant_digest, product, variant or None),
            product_id=product,
            variant_id=variant,
            quantity=quantity,
        )
        for (product, variant), quantity in sorted(wanted_units(cart, settings.strategy).items())
    ]
    return AdmissionPlan(
        AdmissionDecision.HOLD,
        expires_at,
        holds=holds,
        supersedes=supersedes,
        all_or_nothing=is_all_or_nothing(settings),
    )
