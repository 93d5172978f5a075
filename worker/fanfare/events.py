"""The Fanfare event types that matter for reservations, each translated into
one typed command for the inbound topic.

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
from typing import Any, Literal

from worker.domain import ids
from worker.domain.commands import (
    AdmitConsumer,
    CommandBase,
    CommandSource,
    CompleteCheckout,
    EndAdmission,
)
from worker.fanfare.envelope import (
    AdmissionData,
    AdmissionEndData,
    CompletionData,
    ConsumerEventData,
    Delivery,
    Envelope,
)
from worker.fanfare.forwarding import stored_digest

Disposition = Literal["command", "not_acted_on", "unknown"]
# Why an event became no command; the receiver's answer says it.
Reason = Literal["unknown_event_type", "not_reservation_relevant", "no_order_id"]


@dataclass(frozen=True)
class Translation:
    """What an event becomes: a command, or why none."""

    disposition: Disposition
    command: CommandBase | None = None
    reason: Reason | None = None


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


def _common(
    envelope: Envelope, delivery: Delivery, data: ConsumerEventData, grant: str | None
) -> dict[str, Any]:
    """The fields every command from a Fanfare event carries."""
    return {
        "command_id": ids.command_id("fanfare", envelope.id),
        "occurred_at": envelope.timestamp,
        "received_at": delivery.received_at,
        "source": _source(envelope, delivery),
        "experience_id": data.experience_id,
        "consumer_id": data.consumer_id,
        "grant_digest": _digest(grant, delivery) if grant is not None else None,
    }


def _digest(grant: str, delivery: Delivery) -> str:
    if delivery.grants_digested:
        return stored_digest(grant)
    return ids.grant_digest(grant)


def _admission(kind: Literal["queue", "draw", "auction"]) -> Translator:
    def translate(envelope: Envelope, delivery: Delivery) -> Translation:
        data = AdmissionData.model_validate(envelope.data)
        command = AdmitConsumer(
            **_common(envelope, delivery, data, data.grant),
            admitted_at=data.admitted_at or envelope.timestamp,
            experience_kind=kind,
        )
        return Translation("command", command)

    return translate


def _ending(
    outcome: Literal["released", "expired"],
    reason: Literal["left", "denied", "lost", "admission_expired"],
) -> Translator:
    def translate(envelope: Envelope, delivery: Delivery) -> Translation:
        data = AdmissionEndData.model_validate(envelope.data)
        command = EndAdmission(
            **_common(envelope, delivery, data, data.grant),
            outcome=outcome,
            reason=reason,
            # Fanfare's own time of the ending, so a replay decides the same.
            ended_at=envelope.timestamp,
        )
        return Translation("command", command)

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
        command = CompleteCheckout(
            **_common(envelope, delivery, data, data.grant), order_id=data.order_id, items=None
        )
        return Translation("command", command)

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
    lacks what the type needs; on a delivery re-driven from quarantine,
    ValueError when a stored grant is not a digest."""
    translator = translator_for(envelope.type)
    if translator is None:
        return Translation("unknown", reason="unknown_event_type")
    return translator(envelope, delivery)
