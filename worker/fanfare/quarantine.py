"""The quarantine topic's records: a signed delivery whose `data` could not
be translated, kept so it can be re-driven once the parser is fixed, and the
marker that says it was.

A quarantined delivery holds Fanfare's envelope as sent with every
credential-like value replaced by its digest (`sha256:<hex>`, as forwarded
events have them), so the quarantine never holds a clear grant and still
holds all translation needs: re-driven, the delivery is translated with
`grants_digested`, which takes each stored digest as the command's
`grantDigest`. Both records are keyed by the Fanfare event id, so a
delivery's retries and its marker share a partition, the marker after them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, Field, TypeAdapter, ValidationError

from worker.domain.base import SchemaVersion, WireModel
from worker.domain.model import Identifier
from worker.fanfare.envelope import Delivery, Envelope
from worker.fanfare.forwarding import redact


class QuarantineError(WireModel):
    """Why the delivery was refused, as its 400 answer said; never its input."""

    code: str = Field(description="The answer's error code, e.g. INVALID_EVENT_DATA")
    field: str | None = Field(description="The failing field's path, e.g. data.consumerId")
    message: str = Field(description="The answer's message: the field and what is wrong")
    reason: str = Field(description="The validation error's type, e.g. missing (a metric label)")


class QuarantinedDelivery(WireModel):
    """A signed, in-tolerance Fanfare delivery whose `data` failed validation
    or translation, answered 400 once this record was acknowledged.

    `envelope` is the body as Fanfare sent it, every value under a key
    containing token, grant, secret, password or credential replaced by
    `sha256:<SHA-256 hex>`: never the clear grant."""

    type: Literal["fanfare.quarantined"] = "fanfare.quarantined"
    schema_version: SchemaVersion = 1
    event_id: Identifier = Field(description="Fanfare's event id (the command id derives from it)")
    event_type: Identifier = Field(description="Fanfare's event type")
    organization_id: Identifier
    delivery_id: str | None = Field(description="X-Fanfare-Delivery-Id of this attempt, if sane")
    secret_id: str = Field(description="Fingerprint of the secret that verified the signature")
    received_at: AwareDatetime = Field(description="When the receiver read the delivery")
    error: QuarantineError
    envelope: dict[str, Any] = Field(description="The envelope as sent, credentials digested")

    def partition_key(self) -> str:
        return self.event_id

    def delivery(self) -> Delivery:
        """The delivery as the receiver knew it, its grants stored digested."""
        return Delivery(
            delivery_id=self.delivery_id,
            secret_fingerprint=self.secret_id,
            received_at=self.received_at,
            grants_digested=True,
        )

    def stored_envelope(self) -> Envelope:
        """The envelope to translate again; ValidationError if it no longer
        passes as one."""
        return Envelope.model_validate(self.envelope)


class QuarantineReplayed(WireModel):
    """The quarantine tool re-drove this event: its deliveries are done.
    Written after the command it produced was acknowledged."""

    type: Literal["quarantine.replayed"] = "quarantine.replayed"
    schema_version: SchemaVersion = 1
    event_id: Identifier = Field(description="The Fanfare event id re-driven")
    entry: str = Field(description="Partition:offset of the quarantined delivery re-driven")
    command_id: UUID | None = Field(
        description="The command produced; null when today's code acts on none"
    )
    replayed_at: AwareDatetime

    def partition_key(self) -> str:
        return self.event_id


QuarantineRecord = Annotated[QuarantinedDelivery | QuarantineReplayed, Field(discriminator="type")]
QUARANTINE_ADAPTER: TypeAdapter[QuarantineRecord] = TypeAdapter(QuarantineRecord)


@dataclass(frozen=True)
class QuarantineWrite:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


# Headers on every quarantine record, so the tool and readers filter without decoding.
EVENT_ID_HEADER = "fanfare-event-id"
EVENT_TYPE_HEADER = "fanfare-event-type"  # deliveries only, not markers


def encode(record: QuarantinedDelivery | QuarantineReplayed) -> QuarantineWrite:
    headers = [(EVENT_ID_HEADER, record.event_id.encode("utf-8"))]
    if isinstance(record, QuarantinedDelivery):
        headers.append((EVENT_TYPE_HEADER, record.event_type.encode("utf-8")))
    return QuarantineWrite(
        key=record.partition_key().encode("utf-8"),
        value=record.model_dump_json(by_alias=True).encode("utf-8"),
        headers=headers,
    )


def decode(value: bytes) -> QuarantineRecord:
    """Raises ValidationError when the bytes are not a quarantine record."""
    return QUARANTINE_ADAPTER.validate_json(value)


def quarantined(
    raw: dict[str, Any], envelope: Envelope, delivery: Delivery, error: QuarantineError
) -> QuarantinedDelivery:
    return QuarantinedDelivery(
        event_id=envelope.id,
        event_type=envelope.type,
        organization_id=envelope.organization_id,
        delivery_id=delivery.delivery_id,
        secret_id=delivery.secret_fingerprint,
        received_at=delivery.received_at,
        error=error,
        envelope=redact(raw),
    )


def refusal_reason(exc: ValidationError) -> str:
    """The first error's type: pydantic's own bounded vocabulary (missing,
    string_type, ...), so a metric label that never carries input."""
    return str(exc.errors(include_input=False, include_url=False)[0]["type"])
