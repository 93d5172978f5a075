"""How every write goes through the command log: the request becomes a
command (its id from the Idempotency-Key, if any), Kafka acknowledges it
(acks=all) before anything else happens, and the call waits, up to
API_WAIT_SECONDS, for the consumer to record the outcome in the inbox. The
answer is that outcome; past the deadline it is 202 with the command id,
and GET /v1/commands/{id} gives the outcome later.

A write handler parses its request, builds its command from `envelope` and
hands it to `write`; the replies documented here are the ones `write` may
give on any route. A request that is one command per experience hands them
to `write_each` and adds up their outcomes itself."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import OrderedDict
from typing import Any
from uuid import UUID

from aiohttp import web

from worker import metrics
from worker.adapters import kafka, postgres, queries
from worker.adapters.queries import AppliedCommand
from worker.domain import ids
from worker.domain.commands import CommandBase, CommandSource, encode_command
from worker.logs import get_logger
from worker.openapi import Reply
from worker.roles.api.http import (
    COMMAND_ID,
    KEY_FINGERPRINT,
    RETRY_AFTER_SECONDS,
    ApiError,
    ApiState,
    api_state,
    json_answer,
    model_answer,
    route_label,
)
from worker.roles.api.models import ErrorBody, Pending

log = get_logger("worker.api")

# The wait for an outcome starts tight (a consumer usually applies within a
# few tens of ms) and backs off so thousands of waiting calls stay cheap.
POLL_FIRST_S = 0.01
POLL_MAX_S = 0.2
PENDING_REMEMBERED = 100_000
IDEMPOTENCY_KEY = re.compile(r"^[ -~]{1,255}$")

PENDING_REPLY = Reply(
    202,
    "Stored, but not applied within API_WAIT_SECONDS: GET the Location for the outcome",
    Pending,
    headers=("Location",),
)
INVALID_REPLY = Reply(400, "Invalid body, parameter or Idempotency-Key (INVALID_*)", ErrorBody)
NOT_DURABLE_REPLY = Reply(
    503,
    "Kafka did not acknowledge the command in time (BROKER_UNAVAILABLE); retry, with "
    "the same Idempotency-Key to be sure it applies once",
    ErrorBody,
    headers=("Retry-After",),
)
WRITE_ERRORS = (INVALID_REPLY, NOT_DURABLE_REPLY)
# What a refusal's outcome may carry besides its code and message, as
# ErrorBody names it.
REFUSAL_FIELDS = ("committed", "used", "missing")


class PendingCommands:
    """Commands this process produced and has not yet seen applied, so GET
    /v1/commands/{id} can answer 202 rather than 404 for them. Per process
    and bounded: another replica answers 404 until the outcome is recorded."""

    def __init__(self, limit: int = PENDING_REMEMBERED) -> None:
        self.limit = limit
        self._ids: OrderedDict[UUID, None] = OrderedDict()

    def add(self, command_id: UUID) -> None:
        self._ids[command_id] = None
        self._ids.move_to_end(command_id)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def discard(self, command_id: UUID) -> None:
        self._ids.pop(command_id, None)

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._ids


PENDING = web.AppKey("api_pending", PendingCommands)


def envelope(request: web.Request) -> tuple[dict[str, Any], bool]:
    """Command id, times and source of a write, and whether the client gave
    an Idempotency-Key. The key is scoped by method and path (never by the
    API key, which rotates), so one key on two routes names two commands."""
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        if not IDEMPOTENCY_KEY.match(key):
            raise ApiError(
                400,
                "INVALID_IDEMPOTENCY_KEY",
                "Idempotency-Key must be 1 to 255 printable ASCII characters",
                field="Idempotency-Key",
            )
        source_id = f"{request.method} {request.path} {key}"
    else:
        source_id = str(uuid.uuid4())
    now = api_state(request).clock.now()
    return {
        "command_id": ids.command_id("api", source_id),
        "occurred_at": now,
        "received_at": now,
        "source": CommandSource(
            kind="api", source_id=source_id, secret_id=request.get(KEY_FINGERPRINT)
        ),
    }, key is not None


async def _wait_applied(state: ApiState, command_id: UUID) -> AppliedCommand | None:
    interval = POLL_FIRST_S
    try:
        async with asyncio.timeout(state.settings.api_wait_seconds):
            while True:
                try:
                    applied = await queries.applied_command(state.pool, command_id)
                except postgres.UNREACHABLE as exc:
                    # The command is durable in Kafka already: the truthful
                    # answer is "pending", not an error.
                    log.warning(
                        "api_outcome_poll_failed",
                        command_id=str(command_id),
                        error=type(exc).__name__,
                    )
                    applied = None
                if applied is not None:
                    return applied
                await asyncio.sleep(interval)
                interval = min(interval * 2, POLL_MAX_S)
    except TimeoutError:
        return None


def answer_outcome(command_id: UUID, outcome: dict[str, Any]) -> web.Response:
    """An applied outcome as HTTP: refusals keep the guide's error shape."""
    if outcome.get("status") == "rejected":
        extra = {k: outcome[k] for k in REFUSAL_FIELDS if k in outcome}
        raise ApiError.refusal(
            str(outcome.get("error", "REJECTED")),
            str(outcome.get("message", "")),
            command_id=command_id,
            **extra,
        )
    return json_answer({**outcome, "commandId": str(command_id)})


def pending_answer(command_id: UUID) -> web.Response:
    response = model_answer(Pending(command_id=command_id), status=202)
    response.headers["Location"] = f"/v1/commands/{command_id}"
    return response


async def _produce(state: ApiState, command: CommandBase) -> None:
    try:
        await asyncio.wait_for(
            state.producer.send_and_wait(
                state.settings.commands_topic,
                encode_command(command),
                key=command.partition_key().encode("utf-8"),
            ),
            timeout=state.settings.produce_timeout_seconds,
        )
    except kafka.UNREACHABLE as exc:
        log.error("api_not_durable", command_id=str(command.command_id), error=type(exc).__name__)
        raise ApiError(
            503,
            "BROKER_UNAVAILABLE",
            "Kafka did not acknowledge the command; retry (with the same Idempotency-Key)",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        ) from None


async def _applied_before(state: ApiState, command_id: UUID) -> AppliedCommand | None:
    """A retry of a write already applied is answered without producing again."""
    try:
        return await queries.applied_command(state.pool, command_id)
    except postgres.UNREACHABLE:
        return None


async def write(request: web.Request, command: CommandBase, idempotent: bool) -> web.Response:
    state = api_state(request)
    pending = request.app[PENDING]
    command_id = command.command_id
    request[COMMAND_ID] = str(command_id)
    if idempotent:
        applied = await _applied_before(state, command_id)
        if applied is not None:
            return answer_outcome(command_id, applied.outcome)
    await _produce(state, command)
    pending.add(command_id)
    applied = await _wait_applied(state, command_id)
    if applied is None:
        metrics.API_PENDING_ANSWERS.labels(route_label(request)).inc()
        return pending_answer(command_id)
    pending.discard(command_id)
    return answer_outcome(command_id, applied.outcome)


async def write_each(
    request: web.Request, commands: list[CommandBase], idempotent: bool
) -> list[dict[str, Any] | None]:
    """One request that is several commands (one per experience, as each
    experience has one writer): each produced unless already applied, then
    all waited for together. Their outcomes in order, None for one not
    applied within API_WAIT_SECONDS (the caller answers 202)."""
    state = api_state(request)
    pending = request.app[PENDING]
    request[COMMAND_ID] = ",".join(str(c.command_id) for c in commands)
    applied: dict[UUID, AppliedCommand | None] = {}
    if idempotent:
        for command in commands:
            applied[command.command_id] = await _applied_before(state, command.command_id)
    todo = [c for c in commands if applied.get(c.command_id) is None]
    for command in todo:
        await _produce(state, command)
        pending.add(command.command_id)
    waited = await asyncio.gather(*(_wait_applied(state, c.command_id) for c in todo))
    for command, outcome in zip(todo, waited, strict=True):
        applied[command.command_id] = outcome
        if outcome is not None:
            pending.discard(command.command_id)
    if any(a is None for a in applied.values()):
        metrics.API_PENDING_ANSWERS.labels(route_label(request)).inc()
    return [(a.outcome if (a := applied[c.command_id]) is not None else None) for c in commands]
