"""Commands: the outcome of a write, for a caller that was answered 202."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from aiohttp import web
from pydantic import Field

from worker.adapters import queries
from worker.openapi import Operation, Reply
from worker.roles.api.http import (
    READ_ERRORS,
    ApiError,
    api_state,
    model_answer,
    parse_path,
    refusal_status,
)
from worker.roles.api.models import ApiOut, ApiParams, ErrorBody, Pending
from worker.roles.api.writes import PENDING, pending_answer


class CommandPath(ApiParams):
    command_id: UUID


class CommandView(ApiOut):
    command_id: UUID
    status: Literal["applied"] = "applied"
    command_type: str
    applied_at: datetime
    outcome: dict[str, Any] = Field(
        description="What the command did, as the write would have answered it"
    )


def as_answered(outcome: dict[str, Any]) -> dict[str, Any]:
    """A refusal shows the status its write was answered with, from its code."""
    if outcome.get("status") != "rejected":
        return outcome
    return {**outcome, "httpStatus": refusal_status(outcome.get("error"))}


async def get_command(request: web.Request) -> web.Response:
    command_id = parse_path(request, CommandPath).command_id
    pending = request.app[PENDING]
    applied = await queries.applied_command(api_state(request).pool, command_id)
    if applied is None:
        if command_id in pending:
            return pending_answer(command_id)
        raise ApiError(
            404,
            "COMMAND_NOT_FOUND",
            "no outcome recorded for this command (unknown, or still in flight)",
        )
    pending.discard(command_id)
    return model_answer(
        CommandView(
            command_id=command_id,
            command_type=applied.command_type,
            applied_at=applied.applied_at,
            outcome=as_answered(applied.outcome),
        )
    )


ROUTES = (
    Operation(
        "GET",
        "/v1/commands/{commandId}",
        "getCommand",
        "The outcome of a write",
        get_command,
        "commands",
        path_model=CommandPath,
        replies=(
            Reply(200, "Applied; outcome is what the write answered", CommandView),
            Reply(
                202,
                "Produced by this API process and not applied yet",
                Pending,
                headers=("Location",),
            ),
            Reply(404, "No outcome recorded (COMMAND_NOT_FOUND)", ErrorBody),
            *READ_ERRORS,
        ),
    ),
)
