"""What happens when a consumer is admitted: the decision, without I/O.

The adapter loads the facts (settings, cart, earlier admissions), asks
`plan_admission` what to do, tries the holds with conditional updates, and
hands the per-row results to `admission_outcome` for the resulting events.
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
    SUPERSEDED = "superseded"  # a newer grant for this consumer already holds


@dataclass(frozen=True)
class PriorAdmission:
    """An admission already recorded for the same consumer and experience."""

    grant_digest: str
    admitted_at: datetime
    active: bool


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


def plan_admission(
    command: AdmitConsumer,
    settings: ExperienceSettings,
    cart: list[CartLine],
    grant_seen: bool,
    prior: PriorAdmission | None,
) -> AdmissionPlan:
    expires_at = settings.expires_at(command.admitted_at)
    if grant_seen:
        return AdmissionPlan(AdmissionDecision.DUPLICATE, expires_at)
    # Fanfare does not promise order: the later admission wins, whichever
    # arrives first, so the outcome never depends on arrival order.
    if prior is not None and prior.admitted_at > command.admitted_at:
        return AdmissionPlan(AdmissionDecision.SUPERSEDED, expires_at)
    supersedes = prior.grant_digest if prior is not None and prior.active else None
    holds = [
        HoldRequest(
            reservation_id=ids.reservation_id(command.grant_digest, product, variant or None),
            product_id=product,
            variant_id=variant,
            quantity=quantity,
        )
        for (product, variant), quantity in sorted(sum_lines(cart).items())
    ]
    all_or_nothing = (
        settings.strategy is Strategy.HARD
        or settings.multi_item_policy is MultiItemPolicy.ALL_OR_NOTHING
    )
    return AdmissionPlan(
        AdmissionDecision.HOLD,
        expires_at,
        holds=holds,
        supersedes=supersedes,
        all_or_nothing=all_or_nothing,
    )
