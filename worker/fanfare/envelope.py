"""What Fanfare sends: the envelope, the `data` of the events that matter for
reservations, and what the receiver itself knows of one delivery.

Fanfare has renamed fields over time; each alias group is accepted here, and a
validation error names the failing field and its alternatives, never its
value (it may be the grant).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    AliasPath,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticCustomError

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

# RFC 3339's date-time, the `format` the schema gives every time Fanfare sends
# (its contract shows ISO-8601 strings such as 2026-11-24T18:03:12.345Z).
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def _rfc3339_only(value: Any) -> Any:
    # Pydantic's lax datetime also takes Unix numbers, numeric strings and
    # shorter forms; the wire takes only what its schema says, so a number
    # where Fanfare sends a string is refused, never read as 1970.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or _RFC3339.fullmatch(value) is None:
        raise PydanticCustomError(
            "datetime_type", "Input should be an RFC 3339 date-time string with an offset"
        )
    return value


# A time as Fanfare writes it: an RFC 3339 string with its offset.
WireDatetime = Annotated[AwareDatetime, BeforeValidator(_rfc3339_only)]

_DATA_CONFIG = ConfigDict(extra="allow", frozen=True, hide_input_in_errors=True)


class Envelope(BaseModel):
    """Fanfare's envelope: the five required fields; unknown fields allowed."""

    model_config = ConfigDict(extra="allow", frozen=True, hide_input_in_errors=True)

    id: Identifier = Field(description="Event id, the same across retries (dedupe key)")
    type: Identifier = Field(description="Event type, e.g. queue.consumer.admitted")
    timestamp: WireDatetime = Field(description="When the event happened at Fanfare")
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

    admitted_at: WireDatetime | None = Field(
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


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the HTTP layer knows about this attempt (a plain record: every
    field comes from the receiver itself, nothing to validate), or what the
    quarantine kept of it."""

    delivery_id: str | None
    secret_fingerprint: str
    received_at: datetime
    # A delivery re-driven from quarantine: its grants were stored as their
    # digests (`sha256:<hex>`), which translation then takes as they are.
    grants_digested: bool = False


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
