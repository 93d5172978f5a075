"""Fanfare's envelope and the events that matter for reservations, each
translated into one typed command for the inbound topic.

What each Fanfare event type becomes is decided here and nowhere else:

- admissions (`queue.consumer.admitted`, `draw.consumer.won`,
  `auction.consumer.won`) -> AdmitConsumer
- the consumer left, was denied or lost the draw -> EndAdmission(released)
- `*.admission_expired` (and `*.admission.expired`) -> EndAdmission(expired)
- completion and order events carrying an order id -> CompleteCheckout
- types Fanfare documents that change no hold -> acknowledged, not acted on
- anything else -> unknown: acknowledged, and forwarded only if configured
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AliasChoices,
    AliasPath,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from worker.domain import ids
from worker.domain.commands import (
    AdmitConsumer,
    CommandBase,
    CommandSource,
    CompleteCheckout,
    EndAdmission,
)
from worker.domain.model import Identifier

# Fanfare names the experience after the product that admitted the consumer.
# The order matters when several are present: the stage id (queue, draw,
# auction) wins over the umbrella experience id, so every event of one drop is
# keyed the same way as its admission was.
EXPERIENCE_ALIASES = ("queueId", "drawId", "auctionId", "experienceId")
# Fanfare's checkout pages renamed the admission token to "admission grant";
# both spellings, and the short ones some pages show, are the same credential.
GRANT_ALIASES = ("admissionToken", "admissionGrant", "grant", "token")
# The first name of each alias group appears in validation errors; the
# message names the alternatives so the sender knows any one will do.
ALIAS_HINTS = {
    EXPERIENCE_ALIASES[0]: "one of " + ", ".join(EXPERIENCE_ALIASES),
    GRANT_ALIASES[0]: "one of " + ", ".join(GRANT_ALIASES),
    "orderId": "orderId or order.id",
}

# A grant is an opaque credential (JWT-like); it is only ever hashed, so any
# non-empty string of sane length is accepted.
Grant = Annotated[str, StringConstraints(min_length=1, max_length=8192)]

_DATA_CONFIG = ConfigDict(extra="allow", frozen=True, hide_input_in_errors=True)


class Envelope(BaseModel):
    """Fanfare's envelope: the five required fields; unknown fields allowed."""

    model_config = ConfigDict(extra="allow", frozen=True, hide_input_in_errors=True)

    id: Identifier = Field(description="Event id, the same across retries (dedupe key)")
    type: Identifier = Field(description="Event type, e.g. queue.consumer.admitted")
    timestamp: AwareDatetime = Field(description="When the event happened at Fanfare")
    organization_id: Identifier = Field(alias="organizationId")
    data: dict[str, Any] = Field(description="Event-specific fields")


class ConsumerEventData(BaseModel):
    """Fields every reservation-relevant event carries: which experience, which
    consumer."""

    model_config = _DATA_CONFIG

    experience_id: Identifier = Field(
        validation_alias=AliasChoices(*EXPERIENCE_ALIASES),
        description="Experience id; also accepted as " + ", ".join(EXPERIENCE_ALIASES[1:]),
    )
    consumer_id: Identifier = Field(validation_alias="consumerId")


class AdmissionData(ConsumerEventData):
    """`data` of queue admissions and draw or auction wins."""

    admitted_at: AwareDatetime | None = Field(
        default=None,
        validation_alias=AliasChoices("admittedAt", "wonAt"),
        description="Start of the admission window; the envelope timestamp if absent",
    )
    grant: Grant = Field(
        validation_alias=AliasChoices(*GRANT_ALIASES),
        repr=False,
        description="The admission grant (token); only its SHA-256 digest goes further. "
        "Also accepted as " + ", ".join(GRANT_ALIASES[1:]),
    )


class AdmissionEndData(ConsumerEventData):
    """`data` of events that end an admission: left, denied, lost, expired.
    Without a grant the consumer's current admission in the experience ends."""

    grant: Grant | None = Field(
        default=None,
        validation_alias=AliasChoices(*GRANT_ALIASES),
        repr=False,
        description="The admission grant, when Fanfare includes it",
    )


class CompletionData(ConsumerEventData):
    """`data` of completion and order events that mean checkout happened."""

    # Order ids come from the merchant's shop, where many are numbers.
    model_config = ConfigDict(coerce_numbers_to_str=True)

    order_id: Identifier = Field(
        validation_alias=AliasChoices("orderId", AliasPath("order", "id")),
        description="The order the checkout created; also accepted as order.id",
    )
    grant: Grant | None = Field(
        default=None,
        validation_alias=AliasChoices(*GRANT_ALIASES),
        repr=False,
        description="The admission grant, when Fanfare includes it",
    )


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the HTTP layer knows about this attempt (a plain record: every
    field comes from the receiver itself, nothing to validate)."""

    delivery_id: str | None
    secret_fingerprint: str
    received_at: datetime


Disposition = Literal["command", "not_acted_on", "unknown"]


@dataclass(frozen=True)
class Translation:
    """What an event becomes: a command, or why none."""

    disposition: Disposition
    command: CommandBase | None = None
    reason: str | None = None


Translator = Callable[[Envelope, Delivery], Translation]


def _source(envelope: Envelope, delivery: Delivery) -> CommandSource:
    return CommandSource(
        kind="fanfare",
        source_id=envelope.id,
        delivery_id=delivery.delivery_id,
        event_type=envelope.type,
        organization_id=envelope.organization_id,
        secret_id=delivery.secret_fingerprint,
    )


def _common(envelope: Envelope, delivery: Delivery) -> dict[str, Any]:
    return {
        "command_id": ids.command_id("fanfare", envelope.id),
        "occurred_at": envelope.timestamp,
        "received_at": delivery.received_at,
        "source": _source(envelope, delivery),
    }


def _digest(grant: str | None) -> str | None:
    return ids.grant_digest(grant) if grant is not None else None


def _admission(kind: Literal["queue", "draw", "auction"]) -> Translator:
    def translate(envelope: Envelope, delivery: Delivery) -> Translation:
        data = AdmissionData.model_validate(envelope.data)
        return Translation(
            "command",
            AdmitConsumer(
                **_common(envelope, delivery),
                experience_id=data.experience_id,
                consumer_id=data.consumer_id,
                grant_digest=ids.grant_digest(data.grant),
                admitted_at=data.admitted_at or envelope.timestamp,
                experience_kind=kind,
            ),
        )

    return translate


def _ending(
    outcome: Literal["released", "expired"],
    reason: Literal["left", "denied", "lost", "admission_expired"],
) -> Translator:
    def translate(envelope: Envelope, delivery: Delivery) -> Translation:
        data = AdmissionEndData.model_validate(envelope.data)
        return Translation(
            "command",
            EndAdmission(
                **_common(envelope, delivery),
                experience_id=data.experience_id,
                consumer_id=data.consumer_id,
                grant_digest=_digest(data.grant),
                outcome=outcome,
                reason=reason,
                # Fanfare's own time of the ending, so a replay decides the same.
                ended_at=envelope.timestamp,
            ),
        )

    return translate


_expiry = _ending("expired", "admission_expired")


def _completion(order_required: bool) -> Translator:
    def translate(envelope: Envelope, delivery: Delivery) -> Translation:
        # A queue completion without an order is a consumer who finished the
        # queue flow without buying: nothing to convert, and nothing a retry
        # could fix, so it is acknowledged. An order event without an order id
        # is malformed and gets its 400 from validation below.
        if not order_required and not _has_order_id(envelope.data):
            return Translation("not_acted_on", reason="no_order_id")
        data = CompletionData.model_validate(envelope.data)
        return Translation(
            "command",
            CompleteCheckout(
                **_common(envelope, delivery),
                experience_id=data.experience_id,
                consumer_id=data.consumer_id,
                grant_digest=_digest(data.grant),
                order_id=data.order_id,
                items=None,
            ),
        )

    return translate


def _has_order_id(data: Mapping[str, Any]) -> bool:
    order = data.get("order")
    return data.get("orderId") is not None or (isinstance(order, dict) and "id" in order)


def _not_acted_on(envelope: Envelope, delivery: Delivery) -> Translation:
    return Translation("not_acted_on", reason="not_reservation_relevant")


@dataclass(frozen=True)
class EventSpec:
    """How one documented event type is handled, and the `data` it needs."""

    translator: Translator
    data_model: type[ConsumerEventData] | None
    becomes: str


EXPIRY_BECOMES = "admission.end (expired, admission_expired)"
COMPLETE_BECOMES = "checkout.complete (orderId required)"
NOT_ACTED_ON = "acknowledged, not acted on"
EVENTS: dict[str, EventSpec] = {
    "queue.consumer.admitted": EventSpec(
        _admission("queue"), AdmissionData, "admission.grant (queue)"
    ),
    "draw.consumer.won": EventSpec(_admission("draw"), AdmissionData, "admission.grant (draw)"),
    "auction.consumer.won": EventSpec(
        _admission("auction"), AdmissionData, "admission.grant (auction)"
    ),
    "queue.consumer.left": EventSpec(
        _ending("released", "left"), AdmissionEndData, "admission.end (released, left)"
    ),
    "queue.consumer.denied": EventSpec(
        _ending("released", "denied"), AdmissionEndData, "admission.end (released, denied)"
    ),
    "draw.consumer.lost": EventSpec(
        _ending("released", "lost"), AdmissionEndData, "admission.end (released, lost)"
    ),
    "queue.admission_expired": EventSpec(_expiry, AdmissionEndData, EXPIRY_BECOMES),
    "queue.consumer.completed": EventSpec(
        _completion(order_required=False),
        CompletionData,
        "checkout.complete with an orderId; without one: not acted on",
    ),
    "order.created": EventSpec(_completion(order_required=True), CompletionData, COMPLETE_BECOMES),
    "order.completed": EventSpec(
        _completion(order_required=True), CompletionData, COMPLETE_BECOMES
    ),
    # Documented by Fanfare, but they neither start nor end a hold:
    # entering a queue or draw admits no one; bids and settlement precede the
    # win event; an order cancelled after conversion is a return, which the
    # merchant books as stock (SetStock), and one cancelled before conversion
    # leaves the admission to run out or be ended by its own event.
    "queue.consumer.entered": EventSpec(_not_acted_on, None, NOT_ACTED_ON),
    "draw.consumer.entered": EventSpec(_not_acted_on, None, NOT_ACTED_ON),
    "draw.completed": EventSpec(_not_acted_on, None, NOT_ACTED_ON),
    "auction.bid.placed": EventSpec(_not_acted_on, None, NOT_ACTED_ON),
    "auction.bid.outbid": EventSpec(_not_acted_on, None, NOT_ACTED_ON),
    "auction.settled": EventSpec(_not_acted_on, None, NOT_ACTED_ON),
    "order.cancelled": EventSpec(_not_acted_on, None, NOT_ACTED_ON),
    "consumer.created": EventSpec(_not_acted_on, None, NOT_ACTED_ON),
    "consumer.updated": EventSpec(_not_acted_on, None, NOT_ACTED_ON),
}
# Families where every member is documented and none changes a hold.
NOT_ACTED_ON_PREFIXES = ("distribution.",)
# The reference promises no expiry event; the merchant guide names
# `queue.admission_expired`. Any family's variant of it is an early expiry.
EXPIRY_SUFFIXES = (".admission_expired", ".admission.expired")


def _is_expiry(event_type: str) -> bool:
    # A bare ".admission_expired" has no family; it is not one of Fanfare's.
    return any(event_type.endswith(s) and len(event_type) > len(s) for s in EXPIRY_SUFFIXES)


def translator_for(event_type: str) -> Translator | None:
    if (spec := EVENTS.get(event_type)) is not None:
        return spec.translator
    if _is_expiry(event_type):
        return _expiry
    if event_type.startswith(NOT_ACTED_ON_PREFIXES):
        return _not_acted_on
    return None


def metric_label(event_type: str) -> str:
    """A bounded label for metrics: known types as they are, the rest folded."""
    if event_type in EVENTS:
        return event_type
    if _is_expiry(event_type):
        return "*.admission_expired"
    if event_type.startswith(NOT_ACTED_ON_PREFIXES):
        return "distribution.*"
    return "other"


def translate(envelope: Envelope, delivery: Delivery) -> Translation:
    """What this event becomes. Raises pydantic.ValidationError when `data`
    lacks what the type needs."""
    translator = translator_for(envelope.type)
    if translator is None:
        return Translation("unknown", reason="unknown_event_type")
    return translator(envelope, delivery)


def field_path(exc: ValidationError, prefix: str = "") -> tuple[str, str]:
    """The failing field as a dotted path, and a message naming it; never the
    input (it may be the grant)."""
    first = exc.errors(include_input=False, include_url=False)[0]
    loc = [str(p) for p in first["loc"]]
    path = ".".join([prefix, *loc] if prefix else loc) or "body"
    hint = ALIAS_HINTS.get(loc[-1]) if loc else None
    message = f"{path}: {first['msg']}"
    if hint and first["type"] == "missing":
        message += f" ({hint})"
    return path, message


# Keys whose values are credentials wherever they appear in a forwarded
# envelope. Matched as substrings of the lower-cased key, so `admissionToken`,
# `checkoutGrant` or `apiSecret` are all caught; a false positive costs only a
# digest in place of a value.
CREDENTIAL_KEY_PARTS = ("token", "grant", "secret", "password", "credential")


def redact(value: Any) -> Any:
    """A copy with every credential-like string replaced by its SHA-256 digest
    (the same digest the commands carry, so forwarded events still join)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if any(part in key.lower() for part in CREDENTIAL_KEY_PARTS) and isinstance(item, str):
                out[key] = "sha256:" + ids.grant_digest(item)
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


@dataclass(frozen=True)
class ForwardedRecord:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def forwarded_record(
    raw: dict[str, Any], envelope: Envelope, delivery: Delivery
) -> ForwardedRecord:
    """An unknown event for the forward topic: the whole envelope as Fanfare
    sent it (unknown fields kept), credentials digested, with its provenance.
    Keyed by organization so one organization's events keep their order."""
    value = {
        "schemaVersion": 1,
        "kind": "fanfare.event",
        "eventId": envelope.id,
        "eventType": envelope.type,
        "deliveryId": delivery.delivery_id,
        "secretId": delivery.secret_fingerprint,
        "receivedAt": delivery.received_at.isoformat(),
        "envelope": redact(raw),
    }
    headers = [
        ("fanfare-event-id", envelope.id.encode("utf-8")),
        ("fanfare-event-type", envelope.type.encode("utf-8")),
    ]
    if delivery.delivery_id is not None:
        headers.append(("fanfare-delivery-id", delivery.delivery_id.encode("utf-8")))
    return ForwardedRecord(
        key=envelope.organization_id.encode("utf-8"),
        value=orjson.dumps(value),
        headers=headers,
    )


_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)


def clean_delivery_id(header: str | None) -> str | None:
    """The delivery id if it is a sane identifier, else None. The header is
    not signed and only recorded, so a strange one never costs a genuine event
    its delivery; it is just not kept."""
    # Fanfare's ids are ASCII; anything else (header bytes that are not even
    # valid UTF-8 included) would only be trouble in logs and on the wire.
    if header is None or not header.isascii():
        return None
    try:
        return _IDENTIFIER.validate_python(header)
    except ValidationError:
        return None
