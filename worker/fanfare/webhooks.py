"""Fanfare's envelope and the events that matter for reservations, each
translated into one typed command for the inbound topic."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import AliasChoices, AwareDatetime, BaseModel, ConfigDict, Field

from worker.domain import ids
from worker.domain.commands import AdmitConsumer, CommandBase, CommandSource
from worker.domain.model import Identifier


class Envelope(BaseModel):
    """Fanfare's envelope: the five required fields; unknown fields allowed."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: Identifier
    type: Identifier
    timestamp: AwareDatetime
    organization_id: str = Field(alias="organizationId")
    data: dict[str, Any]


class AdmissionData(BaseModel):
    """`data` of queue admissions and draw or auction wins."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    experience_id: Identifier = Field(
        validation_alias=AliasChoices("queueId", "drawId", "auctionId", "experienceId")
    )
    consumer_id: Identifier = Field(validation_alias="consumerId")
    admitted_at: AwareDatetime | None = Field(
        default=None, validation_alias=AliasChoices("admittedAt", "wonAt")
    )
    grant: str = Field(
        min_length=1,
        max_length=8192,
        validation_alias=AliasChoices("admissionToken", "admissionGrant", "grant", "token"),
        repr=False,
    )


class Delivery(BaseModel):
    """What the HTTP layer knows about this attempt."""

    delivery_id: str | None
    secret_fingerprint: str
    received_at: datetime


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


def _admission(kind: str) -> Callable[[Envelope, Delivery], CommandBase]:
    def translate(envelope: Envelope, delivery: Delivery) -> CommandBase:
        data = AdmissionData.model_validate(envelope.data)
        return AdmitConsumer(
            **_common(envelope, delivery),
            experience_id=data.experience_id,
            consumer_id=data.consumer_id,
            grant_digest=ids.grant_digest(data.grant),
            admitted_at=data.admitted_at or envelope.timestamp,
            experience_kind=kind,
        )

    return translate


TRANSLATORS: dict[str, Callable[[Envelope, Delivery], CommandBase]] = {
    "queue.consumer.admitted": _admission("queue"),
    "draw.consumer.won": _admission("draw"),
    "auction.consumer.won": _admission("auction"),
}


def translate(envelope: Envelope, delivery: Delivery) -> CommandBase | None:
    """The command for this event, or None for a type we do not act on.
    Raises pydantic.ValidationError when `data` lacks what the type needs."""
    translator = TRANSLATORS.get(envelope.type)
    return translator(envelope, delivery) if translator is not None else None
