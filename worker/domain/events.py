"""Events on the reservation events topic: the facts other services fold.

Each carries a stable `eventId` (UUIDv5 of the command and the event's
position among that command's events), so a re-delivery repeats an id and
never invents a new fact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, ConfigDict, Field, TypeAdapter

from worker.domain.base import SchemaVersion, WireModel
from worker.domain.model import CartLine, ExperienceSettings, ReservationStatus, Strategy


class EventBase(WireModel):
    event_id: UUID
    schema_version: SchemaVersion = 1
    command_id: UUID
    occurred_at: AwareDatetime

    def partition_key(self) -> str:
        raise NotImplementedError


class ExperienceEvent(EventBase):
    experience_id: str

    def partition_key(self) -> str:
        return self.experience_id


class AdmissionRecorded(ExperienceEvent):
    type: Literal["admission.recorded"] = "admission.recorded"
    status: Literal["active", "superseded", "released", "expired"]
    supersedes: str | None = None
    end_reason: str | None = None
    ended_at: AwareDatetime | None = Field(
        default=None, description="When it ended, if it arrived already ended or superseded"
    )
    consumer_id: str
    grant_digest: str
    admitted_at: AwareDatetime
    expires_at: AwareDatetime
    strategy: Strategy
    window_seconds: int
    buffer_seconds: int


class ReservationCreated(ExperienceEvent):
    type: Literal["reservation.created"] = "reservation.created"
    reservation_id: UUID
    consumer_id: str
    grant_digest: str
    product_id: str
    variant_id: str | None
    quantity: int
    status: Literal[ReservationStatus.ACTIVE] = ReservationStatus.ACTIVE
    strategy: Strategy
    window_seconds: int
    buffer_seconds: int
    created_at: AwareDatetime
    expires_at: AwareDatetime
    replaces: UUID | None = Field(
        default=None,
        description="The hold this one replaced, released by the same command: after a cart "
        "change, the ordered part of a hold the checkout API's order took only part of, or "
        "an expired hold taken anew when an extension decided before its expiry arrived after it",
    )
    reason: Literal["backfill"] | None = Field(
        default=None,
        description="backfill: units freed later (a hold ended, stock raised) offered to this "
        "refused line of an admission still active, in admission order; null otherwise",
    )


class ReservationRejected(ExperienceEvent):
    type: Literal["reservation.rejected"] = "reservation.rejected"
    consumer_id: str
    grant_digest: str
    product_id: str
    variant_id: str | None
    quantity: int
    reason: Literal["INSUFFICIENT_STOCK", "POOL_EMPTY", "CART_ALL_OR_NOTHING"]


class ReservationEnded(ExperienceEvent):
    type: Literal["reservation.released", "reservation.expired", "reservation.converted"]
    reservation_id: UUID
    consumer_id: str
    grant_digest: str
    product_id: str
    variant_id: str | None
    quantity: int
    reason: str
    ended_at: AwareDatetime
    order_id: str | None = None
    created_at: AwareDatetime | None = Field(
        default=None, description="When the hold was taken, so its duration needs no join"
    )
    strategy: Strategy | None = Field(
        default=None,
        description="The hold's strategy (pool holds give their unit back to the pool)",
    )
    previous_status: ReservationStatus = Field(
        default=ReservationStatus.ACTIVE,
        description="The hold's status before: `active` for a hold that ends or converts; "
        "`released` or `expired` for a late conversion, which takes the units back from the "
        "shelf; `converted` for a sale moved to the admission it belonged to",
    )
    requested_by: str | None = Field(
        default=None,
        description="An operator's release (reason `operator`): the fingerprint of the API key "
        "that asked",
    )
    request_reason: str | None = Field(
        default=None, description="An operator's release: the reason the operator gave"
    )


class AdmissionEnded(ExperienceEvent):
    """An admission left `active`: converted, released, expired or superseded."""

    type: Literal["admission.ended"] = "admission.ended"
    consumer_id: str
    grant_digest: str
    status: Literal["converted", "released", "expired", "superseded"]
    reason: str
    ended_at: AwareDatetime
    order_id: str | None = None


class EndingRemembered(ExperienceEvent):
    """An ending or completion kept for later: every one without a grant (it
    belongs to the consumer's latest admission admitted at or before its time,
    which may arrive later), and one with a grant whose admission has not
    arrived yet."""

    type: Literal["admission.ending_remembered"] = "admission.ending_remembered"
    consumer_id: str
    grant_digest: str | None
    outcome: Literal["released", "expired", "converted"]
    reason: str
    ended_at: AwareDatetime
    order_id: str | None = Field(default=None, description="For a completion: its order")
    ending_id: UUID | None = Field(
        default=None,
        description="The id it is kept under when that is not `commandId`: how an "
        "admission had ended, kept when a late sale took its place",
    )


class AdmissionRevised(ExperienceEvent):
    """An admission that had already ended now stands otherwise, because a fact
    that happened earlier arrived late: an earlier ending, the admission that
    superseded it, or the completion's move to the admission it belonged to."""

    type: Literal["admission.revised"] = "admission.revised"
    consumer_id: str
    grant_digest: str
    status: Literal["converted", "released", "expired", "superseded"]
    previous_status: Literal["converted", "released", "expired", "superseded"]
    reason: str
    ended_at: AwareDatetime
    order_id: str | None = None


class ReservationExtended(ExperienceEvent):
    """An admission's expiry moved by the experience's extensionSeconds: one
    event per admission, naming the active holds that moved with it."""

    type: Literal["reservation.extended"] = "reservation.extended"
    consumer_id: str
    grant_digest: str
    reservation_ids: list[UUID] = Field(description="The active holds whose expiresAt moved")
    expires_at: AwareDatetime
    previous_expires_at: AwareDatetime
    extensions: int = Field(description="Extensions of this admission so far, this one included")
    extensions_left: int


class AdmissionReopened(ExperienceEvent):
    """An admission that had expired holds again until `expiresAt`: an
    extension decided before an expiry of ours that was applied first (that
    expiry no longer counts). Its holds follow as `reservation.created`
    (`replaces`: the expired hold) or `reservation.rejected`."""

    type: Literal["admission.reopened"] = "admission.reopened"
    consumer_id: str
    grant_digest: str
    reason: Literal["extended"]
    previous_status: Literal["expired"]
    previous_reason: str
    previous_ended_at: AwareDatetime
    expires_at: AwareDatetime


class AdmissionRetried(ExperienceEvent):
    """The consumer tried again after an expiry: the admission holds again,
    from `retriedAt` until `expiresAt`, and the retry is kept (as an
    ending whose outcome is `active`) so facts that arrive later are weighed
    against it by time. The holds follow as `reservation.created` or
    `reservation.rejected`, per line of the cart."""

    type: Literal["admission.retried"] = "admission.retried"
    consumer_id: str
    grant_digest: str
    reason: str = Field(description="The reason of the expiry it follows")
    follows: AwareDatetime = Field(description="When the expiry it follows ended the admission")
    retried_at: AwareDatetime
    expires_at: AwareDatetime
    retry_window_seconds: int = Field(
        description="The window it was decided with: an expiry that arrives later and "
        "ended the admission earlier counts it from there"
    )
    retry_id: UUID | None = Field(
        default=None,
        description="The id the retry is kept under when that is not `commandId`: a "
        "retry kept pending (`admission.retry_kept`) that a later-arriving expiry made "
        "count, applied by the command that brought that expiry",
    )


class RetryKept(ExperienceEvent):
    """A retry refused `NOT_EXPIRED` (the admission held, by what was known
    at its arrival), kept: an expiry from before it that arrives later may
    make it count, and then it is applied at its own time: an
    `admission.retried` with a `retryId`, holds with ids of this command.
    Nothing else changes."""

    type: Literal["admission.retry_kept"] = "admission.retry_kept"
    consumer_id: str
    grant_digest: str
    retried_at: AwareDatetime
    retry_window_seconds: int


class LateConversionUnfilled(ExperienceEvent):
    """A completion for an admission whose holds had ended found no free
    units for this line: the merchant sold what is no longer on the shelf."""

    type: Literal["reservation.late_conversion_unfilled"] = "reservation.late_conversion_unfilled"
    consumer_id: str
    grant_digest: str
    order_id: str
    product_id: str
    variant_id: str | None
    quantity: int


class CheckoutRejected(ExperienceEvent):
    type: Literal["checkout.rejected"] = "checkout.rejected"
    consumer_id: str
    grant_digest: str | None
    order_id: str
    error: str
    message: str


class ExperienceConfigured(ExperienceEvent, ExperienceSettings):
    # Every setting is on the wire, whatever its default: subscribers may rely on it.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    type: Literal["experience.configured"] = "experience.configured"


class ExperienceRefused(ExperienceEvent):
    """A configuration refused: it would shrink a product's pool below the
    units the pool has handed out. The settings stay as they were."""

    type: Literal["experience.refused"] = "experience.refused"
    product_id: str
    variant_id: str | None
    size: int = Field(description="The pool size asked for")
    used: int = Field(description="Units the pool has handed out (held or sold)")
    reason: Literal["POOL_BELOW_USED"] = "POOL_BELOW_USED"


class CartUpdated(ExperienceEvent):
    type: Literal["cart.updated"] = "cart.updated"
    consumer_id: str
    items: list[CartLine]


class StockSet(EventBase):
    type: Literal["stock.set"] = "stock.set"
    product_id: str
    variant_id: str | None
    on_hand: int

    def partition_key(self) -> str:
        return self.product_id


class StockRefused(EventBase):
    type: Literal["stock.refused"] = "stock.refused"
    product_id: str
    variant_id: str | None
    on_hand: int
    committed: int
    reason: Literal["STOCK_BELOW_COMMITTED"] = "STOCK_BELOW_COMMITTED"

    def partition_key(self) -> str:
        return self.product_id


Event = Annotated[
    AdmissionRecorded
    | ReservationCreated
    | ReservationRejected
    | ReservationEnded
    | AdmissionEnded
    | EndingRemembered
    | AdmissionRevised
    | ReservationExtended
    | AdmissionReopened
    | AdmissionRetried
    | RetryKept
    | LateConversionUnfilled
    | CheckoutRejected
    | ExperienceConfigured
    | ExperienceRefused
    | CartUpdated
    | StockSet
    | StockRefused,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def encode_event(event: EventBase) -> bytes:
    """The event's JSON as the model dumps it, by the serializer itself:
    `model_dump_json` decodes the serializer's bytes into a string, which
    was then encoded back (a third of encoding an event, twice per
    command)."""
    return event.__pydantic_serializer__.to_json(event, by_alias=True)


def decode_event(raw: bytes) -> Event:
    return EVENT_ADAPTER.validate_json(raw)


def event_decoder() -> Callable[[bytes], Event]:
    """`decode_event` without the adapter's Python wrapper around the
    validator: for loops over many events (a replay), where that wrapper
    costs a tenth of the decoding. Same checks, same errors."""
    validate: Callable[[bytes], Event] = EVENT_ADAPTER.validator.validate_json
    return validate
