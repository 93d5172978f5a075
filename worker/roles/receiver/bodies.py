"""The bodies the receiver answers with, as models the OpenAPI document is
built from. The handlers write these shapes as plain dicts (the webhook path
is hot); a test holds the two together."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from worker.fanfare.events import Reason


def _left_out_when_absent(schema: dict[str, Any]) -> None:
    """An optional field is left out of the body, never null: its schema is
    the value's alone."""
    options = schema.pop("anyOf")
    schema.pop("default", None)
    schema.update(next(o for o in options if o != {"type": "null"}))


class Error(BaseModel):
    """Every refusal: a stable code and a message for people."""

    error: str = Field(description="Stable error code")
    message: str
    field: str | None = Field(
        default=None,
        description="Failing field path (400 only)",
        json_schema_extra=_left_out_when_absent,
    )


class WebhookAnswer(BaseModel):
    """A 200: the event is durable (accepted, forwarded) or needs nothing
    (ignored)."""

    model_config = ConfigDict(alias_generator=to_camel)

    status: Literal["accepted", "ignored", "forwarded"]
    event_id: str = Field(description="The envelope's id")
    command_id: UUID | None = Field(
        default=None,
        description="accepted only: the command the event became",
        json_schema_extra=_left_out_when_absent,
    )
    command_type: str | None = Field(
        default=None, description="accepted only", json_schema_extra=_left_out_when_absent
    )
    reason: Reason | None = Field(
        default=None, description="ignored only", json_schema_extra=_left_out_when_absent
    )
    topic: str | None = Field(
        default=None,
        description="forwarded only: FORWARD_UNKNOWN_EVENTS_TOPIC",
        json_schema_extra=_left_out_when_absent,
    )


# A check's result: "ok", or the class name of the error that failed it.
CheckResult = Annotated[
    str, Field(description="ok, or the class of the error that failed the check")
]


class Readiness(BaseModel):
    """`/readyz`: every check's result; `status` when all are ok, `error` and
    `message` when one is not."""

    status: Literal["ready"] | None = Field(default=None, json_schema_extra=_left_out_when_absent)
    error: Literal["NOT_READY"] | None = Field(
        default=None, json_schema_extra=_left_out_when_absent
    )
    message: str | None = Field(default=None, json_schema_extra=_left_out_when_absent)
    checks: dict[str, CheckResult] = Field(description="Each check by name")


class Health(BaseModel):
    """`/healthz`: the process answers."""

    status: Literal["ok"]
