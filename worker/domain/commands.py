"""Commands on the inbound topic: the only way reservation state changes.

Every command carries what a replay and an operator need: a deterministic
`commandId` (UUIDv5 of its source and source id), its type and schema version,
when it happened at the source (`occurredAt`) and when we received it, the
experience and consumer it concerns, the admission grant digest where there is
one, and where it came from. Never the clear admission grant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal
from uuid import UUID

from pydantic import (
    AwareDatetime,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    model_validator,
)

from worker.domain.base import SchemaVersion, WireModel, one_of_forms
from worker.domain.model import (
    POOL_SIZE_RULE,
    CartLine,
    ExperienceSettings,
    Identifier,
    check_pool_size,
)

GrantDigest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# An operator's words, for the log: printable, bounded.
OperatorReason = Annotated[
    str, StringConstraints(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]+$")
]
# Reservation ids one release may name.
RELEASE_MAX_IDS = 500


class CommandSource(WireModel):
    """Provenance: which system sent it and the ids to follow it there."""

    kind: Literal["fanfare", "api", "scheduler"]
    source_id: str = Field(description="Fanfare envelope id, API idempotency key, or expiry key")
    delivery_id: str | None = None
    event_type: str | None = None
    organization_id: str | None = None
    secret_id: str | None = Field(
        default=None, description="Which signing secret verified it (fingerprint, not the secret)"
    )


class CommandBase(WireModel):
    command_id: UUID
    schema_version: SchemaVersion = 1
    occurred_at: AwareDatetime
    received_at: AwareDatetime
    source: CommandSource

    def partition_key(self) -> str:
        raise NotImplementedError


class ExperienceCommand(CommandBase):
    experience_id: Identifier

    def partition_key(self) -> str:
        return self.experience_id


class AdmitConsumer(ExperienceCommand):
    """Fanfare admitted a consumer (queue admission, draw or auction win)."""

    type: Literal["admission.grant"] = "admission.grant"
    consumer_id: Identifier
    grant_digest: GrantDigest
    admitted_at: AwareDatetime
    experience_kind: Literal["queue", "draw", "auction"]


class PutCart(ExperienceCommand):
    """The consumer's cart for an experience, replaced whole."""

    type: Literal["cart.put"] = "cart.put"
    consumer_id: Identifier
    items: list[CartLine] = Field(max_length=100)


class SetStock(CommandBase):
    """An operator sets a stock row's on-hand level."""

    type: Literal["stock.set"] = "stock.set"
    product_id: Identifier
    variant_id: Identifier | None = None
    on_hand: int = Field(ge=0, le=1_000_000_000)

    def partition_key(self) -> str:
        # Stock belongs to no experience (DESIGN: keyed by product id).
        return self.product_id


class ConfigureExperience(ExperienceCommand, ExperienceSettings):
    """An experience's settings; they apply to admissions after it."""

    model_config = ConfigDict(json_schema_extra=POOL_SIZE_RULE)

    type: Literal["experience.configure"] = "experience.configure"

    @model_validator(mode="after")
    def _pool_needs_size(self) -> ConfigureExperience:
        check_pool_size(self.strategy, self.pool_size, self.pools)
        return self


class EndAdmission(ExperienceCommand):
    """An admission ended before checkout: the consumer left, was denied or
    lost (`released`), or its window ran out (`expired`, from Fanfare's
    admission-expired event or from our scheduler). Without a grant digest it
    ends the consumer's current admission in the experience."""

    type: Literal["admission.end"] = "admission.end"
    consumer_id: Identifier
    grant_digest: GrantDigest | None = None
    outcome: Literal["released", "expired"]
    reason: Literal["left", "denied", "lost", "admission_expired", "window_elapsed"]
    # For an expiry: the admission's expires_at, so the decision uses the
    # command's own time, never the clock at apply time.
    ended_at: AwareDatetime


class CompleteCheckout(ExperienceCommand):
    """Checkout happened: convert the admission's active holds to a sale.
    From the checkout API (`items` given, grant given) or Fanfare's completion
    and order events; the first one converts, the other is a no-op for the
    same order id."""

    type: Literal["checkout.complete"] = "checkout.complete"
    consumer_id: Identifier
    grant_digest: GrantDigest | None = None
    order_id: Identifier
    items: list[CartLine] | None = Field(default=None, max_length=100)


class ReleaseHolds(ExperienceCommand):
    """An operator releases holds of one experience: the ones named, a
    consumer's, or a product's (every variant unless one is named). Each
    still held at the command's time ends `released`, reason `operator`;
    admissions stay as they are. Who asked is `source.secretId`, the API
    key's fingerprint."""

    # _one_selection in JSON Schema.
    model_config = ConfigDict(
        json_schema_extra=one_of_forms(
            (("reservationIds",), ("consumerId", "productId", "variantId")),
            (("consumerId",), ("reservationIds", "productId", "variantId")),
            (("productId",), ("reservationIds", "consumerId")),
        )
    )

    type: Literal["holds.release"] = "holds.release"
    reservation_ids: list[UUID] | None = Field(
        default=None, min_length=1, max_length=RELEASE_MAX_IDS
    )
    consumer_id: Identifier | None = None
    product_id: Identifier | None = None
    variant_id: Identifier | None = None
    reason: OperatorReason = Field(description="Why, in the operator's words (for the log)")

    @model_validator(mode="after")
    def _one_selection(self) -> ReleaseHolds:
        named = [self.reservation_ids, self.consumer_id, self.product_id]
        if sum(x is not None for x in named) != 1:
            raise ValueError("exactly one of reservationIds, consumerId or productId")
        if self.variant_id is not None and self.product_id is None:
            raise ValueError("variantId needs productId")
        return self


class ExtendReservation(ExperienceCommand):
    """The consumer asks for more time: the admission's holds expire
    `extensionSeconds` later (worker.domain.extension decides, at
    `occurredAt`)."""

    type: Literal["reservation.extend"] = "reservation.extend"
    consumer_id: Identifier
    grant_digest: GrantDigest


class RetryReservation(ExperienceCommand):
    """The consumer tries again after the admission's holds expired: the
    current cart is held again under the same admission, where stock allows
    (worker.domain.retry decides, at `occurredAt`)."""

    type: Literal["reservation.retry"] = "reservation.retry"
    consumer_id: Identifier
    grant_digest: GrantDigest


Command = Annotated[
    AdmitConsumer
    | PutCart
    | SetStock
    | ConfigureExperience
    | EndAdmission
    | CompleteCheckout
    | ReleaseHolds
    | ExtendReservation
    | RetryReservation,
    Field(discriminator="type"),
]
COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)


def encode_command(command: CommandBase) -> bytes:
    return command.model_dump_json(by_alias=True).encode("utf-8")


def decode_command(raw: bytes) -> Command:
    """Parse a command from the topic; raises pydantic.ValidationError if invalid.
    The adapter's validator itself, without its Python wrapper: same checks,
    same errors, once per command on the consumer's path."""
    return _VALIDATE_COMMAND(raw)


_VALIDATE_COMMAND: Callable[[bytes], Command] = COMMAND_ADAPTER.validator.validate_json
