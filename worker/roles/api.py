"""The storefront/checkout/operator HTTP API.

Writes never touch PostgreSQL: each becomes a command on the commands topic
(acknowledged by Kafka with acks=all before anything else happens), and the
call then waits, up to API_WAIT_SECONDS, for the consumer to record the
command's outcome in the inbox. The answer is that outcome; past the
deadline it is 202 with the command id, and GET /v1/commands/{id} gives the
outcome later. Reads (stock, cart, reservations, checkout validation) come
straight from PostgreSQL.

The route table at the bottom is what the app registers and what the
OpenAPI document (worker.openapi) describes; the pydantic models here are
what the handlers parse and answer with, so the document cannot drift.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

import asyncpg
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from worker.adapters import kafka, postgres, store
from worker.clock import Clock, SystemClock
from worker.config import Settings
from worker.domain import ids
from worker.domain.checkout import Hold, check_checkout
from worker.domain.commands import (
    CommandBase,
    CommandSource,
    CompleteCheckout,
    ConfigureExperience,
    PutCart,
    SetStock,
    encode_command,
)
from worker.domain.model import (
    CartLine,
    ExperienceSettings,
    Identifier,
    MultiItemPolicy,
    Quantity,
    ReservationStatus,
    Strategy,
)
from worker.logs import get_logger
from worker.openapi import Operation, Reply, build_document

log = get_logger("worker.api")

API_VERSION = "1.0.0"
RETRY_AFTER_SECONDS = "5"
# The wait for an outcome starts tight (a consumer usually applies within a
# few tens of ms) and backs off so thousands of waiting calls stay cheap.
POLL_FIRST_S = 0.01
POLL_MAX_S = 0.2
PENDING_REMEMBERED = 100_000
IDEMPOTENCY_KEY = re.compile(r"^[ -~]{1,255}$")

REQUESTS = Counter(
    "api_requests",
    "HTTP API requests by route template, method and status",
    ["route", "method", "status"],
    namespace="fanfare_reservations",
)
REQUEST_SECONDS = Histogram(
    "api_request_duration_seconds",
    "Time from request to answer, including the wait for a write's outcome",
    ["route", "method"],
    namespace="fanfare_reservations",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PENDING_ANSWERS = Counter(
    "api_pending_answers",
    "Writes answered 202 because their outcome was not recorded within the wait",
    ["route"],
    namespace="fanfare_reservations",
)


# --- request models ------------------------------------------------------------


class ApiBody(BaseModel):
    """A request body: camelCase only, unknown fields refused, and no silent
    coercion ("10" is not 10), so a client bug surfaces as a clear 400."""

    model_config = ConfigDict(alias_generator=to_camel, extra="forbid", frozen=True, strict=True)


class ApiParams(BaseModel):
    """Path and query parameters: strings on the wire, converted as usual."""

    model_config = ConfigDict(alias_generator=to_camel, extra="ignore", frozen=True)


class ApiOut(BaseModel):
    """A response body, camelCase on the wire."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, frozen=True
    )


class CartItem(ApiBody):
    product_id: Identifier
    variant_id: Identifier | None = Field(
        default=None, description="Omit (or null) for a product without variants"
    )
    quantity: Quantity

    def line(self) -> CartLine:
        return CartLine(
            product_id=self.product_id, variant_id=self.variant_id, quantity=self.quantity
        )


class ExperienceConfig(ApiBody):
    """How an experience holds stock; applies to admissions after it."""

    strategy: Strategy = Field(
        default=Strategy.SOFT,
        description="soft: hold what the cart asks while stock lasts; hard: the whole cart "
        "or nothing; pool: at most poolSize units per product for the experience",
    )
    window_seconds: int | None = Field(
        default=None,
        ge=1,
        le=86_400,
        description="Admission window; omitted: the service default (RESERVATION_WINDOW_SECONDS)",
    )
    buffer_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="Margin after the window before holds expire; omitted: the service "
        "default (RESERVATION_BUFFER_SECONDS)",
    )
    pool_size: int | None = Field(
        default=None, ge=0, le=1_000_000_000, description="Required for the pool strategy"
    )
    multi_item_policy: MultiItemPolicy = Field(
        default=MultiItemPolicy.PARTIAL,
        description="partial: hold each line that has stock; all_or_nothing: every line or none",
    )

    @model_validator(mode="after")
    def _pool_needs_size(self) -> ExperienceConfig:
        if self.strategy is Strategy.POOL and self.pool_size is None:
            raise ValueError("poolSize is required for the pool strategy")
        return self


class StockLevel(ApiBody):
    product_id: Identifier
    variant_id: Identifier | None = None
    on_hand: int = Field(ge=0, le=1_000_000_000)


class Cart(ApiBody):
    items: list[CartItem] = Field(max_length=100, description="The whole cart; [] empties it")


class CheckoutRequest(ApiBody):
    experience_id: Identifier
    consumer_id: Identifier
    admission_grant: Annotated[SecretStr, Field(min_length=1, max_length=8192)] = Field(
        description="The admission token Fanfare gave the consumer; only its SHA-256 is used"
    )
    items: list[CartItem] = Field(min_length=1, max_length=100)
    order_id: Identifier | None = Field(default=None, description="Ignored by validate")


class CompleteRequest(CheckoutRequest):
    order_id: Identifier = Field(
        description="Your order id: the holds convert to it exactly once, however often "
        "complete is retried"
    )


class ExperiencePath(ApiParams):
    experience_id: Identifier


class ConsumerPath(ApiParams):
    experience_id: Identifier
    consumer_id: Identifier


class CommandPath(ApiParams):
    command_id: UUID


class StockQuery(ApiParams):
    product_id: Identifier
    variant_id: Identifier | None = Field(
        default=None, description="Omit for a product without variants"
    )


# --- response models -----------------------------------------------------------


class ErrorBody(ApiOut):
    error: str = Field(description="Stable code, e.g. ADMISSION_MISMATCH")
    message: str
    field: str | None = Field(default=None, description="Path of the invalid field")
    command_id: UUID | None = Field(default=None, description="The write that was refused")
    committed: int | None = Field(
        default=None, description="STOCK_BELOW_COMMITTED: units reserved or sold"
    )


class Pending(ApiOut):
    status: Literal["pending"] = "pending"
    command_id: UUID


class StockSetOutcome(ApiOut):
    command_id: UUID
    status: Literal["set"]
    on_hand: int


class ExperienceConfiguredOutcome(ApiOut):
    command_id: UUID
    status: Literal["configured"]
    strategy: Strategy
    window_seconds: int
    buffer_seconds: int
    pool_size: int | None
    multi_item_policy: MultiItemPolicy


class CartStoredOutcome(ApiOut):
    command_id: UUID
    status: Literal["stored"]
    items: int = Field(description="Number of lines stored")
    holds_changed: int | None = Field(
        default=None, description="Present when an active admission's holds followed the cart"
    )
    rejected: int | None = Field(default=None, description="Lines the stock could not cover")


class CheckoutConvertedOutcome(ApiOut):
    command_id: UUID
    status: Literal["converted"]
    order_id: str
    reservations: list[UUID] | None = Field(
        default=None, description="The holds this call converted"
    )
    duplicate: bool | None = Field(
        default=None, description="true: an earlier call already converted them for this order"
    )


class CommandView(ApiOut):
    command_id: UUID
    status: Literal["applied"] = "applied"
    command_type: str
    applied_at: datetime
    outcome: dict[str, Any] = Field(
        description="What the command did, as the write would have answered it"
    )


class StockView(ApiOut):
    product_id: str
    variant_id: str | None
    on_hand: int
    reserved: int
    sold: int
    available: int
    updated_at: datetime


class ExperienceView(ApiOut):
    experience_id: str
    configured: bool = Field(description="false: no configuration yet, the defaults apply")
    strategy: Strategy
    window_seconds: int
    buffer_seconds: int
    pool_size: int | None
    multi_item_policy: MultiItemPolicy


class CartView(ApiOut):
    experience_id: str
    consumer_id: str
    items: list[CartItem]
    updated_at: datetime | None = Field(description="null: no cart was ever put")


class ReservationView(ApiOut):
    reservation_id: UUID
    product_id: str
    variant_id: str | None
    quantity: int
    status: ReservationStatus
    expires_at: datetime
    seconds_remaining: int = Field(
        ge=0,
        description="Whole seconds until expiresAt (rounded up) while active; 0 once past "
        "it or ended. An active hold at 0 is about to be expired.",
    )
    order_id: str | None = None
    end_reason: str | None = None


class ReservationsView(ApiOut):
    experience_id: str
    consumer_id: str
    now: datetime = Field(description="The server time secondsRemaining was computed at")
    reservations: list[ReservationView]


class ValidationPassed(ApiOut):
    valid: Literal[True] = True
    holds: list[ReservationView] = Field(description="The admission's active holds")


class Health(ApiOut):
    status: Literal["ok", "ready"]


# --- plumbing ------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        close: bool = False,
        **extra: Any,
    ) -> None:
        super().__init__(code)
        self.close = close
        self.status = status
        self.body = ErrorBody(error=code, message=message, field=field, **extra)
        self.headers = headers or {}

    def response(self) -> web.Response:
        response = web.Response(
            body=self.body.model_dump_json(by_alias=True, exclude_none=True),
            status=self.status,
            content_type="application/json",
            headers=self.headers,
        )
        if self.close:
            response.force_close()
        return response


@dataclass(frozen=True)
class ApiKey:
    # Compared as SHA-256 digests: equal length, so the constant-time
    # compare leaks not even the key's length.
    digest: bytes = field(repr=False)
    fingerprint: str

    @classmethod
    def from_text(cls, text: str) -> ApiKey:
        raw = text.encode("utf-8")
        return cls(hashlib.sha256(raw).digest(), "sha256:" + hashlib.sha256(raw).hexdigest()[:12])


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


@dataclass
class ApiState:
    settings: Settings
    producer: AIOKafkaProducer
    pool: asyncpg.Pool
    clock: Clock
    keys: list[ApiKey]
    operations: dict[web.AbstractRoute, Operation]
    document: dict[str, Any]
    pending: PendingCommands = field(default_factory=PendingCommands)


STATE = web.AppKey("api_state", ApiState)
# Per request, for the log line: which key authenticated it, what it produced.
KEY_FINGERPRINT = web.RequestKey("api_key", str)
COMMAND_ID = web.RequestKey("command_id", str)
M = TypeVar("M", bound=BaseModel)


def _state(request: web.Request) -> ApiState:
    return request.app[STATE]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def _model(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        body=model.model_dump_json(by_alias=True), status=status, content_type="application/json"
    )


def _invalid(code: str, exc: ValidationError) -> ApiError:
    # The message names the field and what is wrong with it, never the input
    # (which may be an admission grant).
    first = exc.errors(include_input=False, include_url=False)[0]
    path = ".".join(str(p) for p in first["loc"]) or "body"
    return ApiError(400, code, f"{path}: {first['msg']}", field=path)


async def _body(request: web.Request, model: type[M]) -> M:
    try:
        async with asyncio.timeout(_state(request).settings.http_body_timeout_seconds):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(408, "REQUEST_TIMEOUT", "body not received in time", close=True) from None
    except web.HTTPRequestEntityTooLarge:
        # Closed with the answer: the rest of the body is not drained.
        raise ApiError(
            413,
            "BODY_TOO_LARGE",
            f"body exceeds {_state(request).settings.max_body_bytes} bytes",
            close=True,
        ) from None
    except (web.RequestPayloadError, ConnectionResetError):
        # A Content-Encoding the body does not match, or a body cut short
        # (aiohttp: the connection lost): the client's fault, answered
        # without a traceback.
        raise ApiError(
            400, "INVALID_BODY", "body could not be read (encoding or framing)", close=True
        ) from None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _invalid("INVALID_BODY", exc) from None


def _params(data: Any, model: type[M]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid("INVALID_PARAMETER", exc) from None


def _path(request: web.Request, model: type[M]) -> M:
    return _params(dict(request.match_info), model)


def _query(request: web.Request, model: type[M]) -> M:
    return _params({k: request.query.getone(k) for k in request.query}, model)


def _authenticate(state: ApiState, request: web.Request) -> str:
    """The fingerprint of the key that matched, or ApiError 401."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    matched: str | None = None
    if scheme.lower() == "bearer" and token:
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        # Every key is compared, so timing says nothing about which matched.
        for key in state.keys:
            if hmac.compare_digest(presented, key.digest):
                matched = key.fingerprint
    if matched is None:
        raise ApiError(
            401,
            "UNAUTHORIZED",
            "a valid Authorization: Bearer <key> header is required",
            headers={"WWW-Authenticate": 'Bearer realm="reservations"'},
        )
    return matched


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _as_api_error(request: web.Request, exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return ApiError(
            405,
            "METHOD_NOT_ALLOWED",
            f"{request.method} is not allowed here",
            headers={"Allow": ", ".join(sorted(exc.allowed_methods))},
        )
    if isinstance(exc, web.HTTPNotFound):
        return ApiError(404, "NOT_FOUND", "no such route")
    if isinstance(exc, web.HTTPException):
        return ApiError(exc.status, exc.reason.upper().replace(" ", "_"), exc.text or "")
    if isinstance(exc, postgres.UNREACHABLE):
        log.error("api_database_unavailable", path=request.path, error=type(exc).__name__)
        return ApiError(
            503,
            "DATABASE_UNAVAILABLE",
            "the database is unavailable, retry later",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    log.error("api_unhandled", method=request.method, path=request.path, exc_info=exc)
    return ApiError(500, "INTERNAL", "internal error")


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    state = _state(request)
    response: web.StreamResponse
    error: str | None = None
    try:
        missed = request.match_info.http_exception
        if missed is not None:
            raise missed
        operation = state.operations.get(request.match_info.route)
        if operation is None or operation.secured:
            request[KEY_FINGERPRINT] = _authenticate(state, request)
        response = await handler(request)
    except Exception as exc:
        failure = _as_api_error(request, exc)
        error = failure.body.error
        response = failure.response()
    route = _route_label(request)
    method = request.method if request.method in KNOWN_METHODS else "other"
    elapsed = time.perf_counter() - started
    REQUESTS.labels(route, method, str(response.status)).inc()
    REQUEST_SECONDS.labels(route, method).observe(elapsed)
    # One line per request. Never the body or the headers: a grant or a
    # bearer key must not reach a log.
    log.info(
        "api_request",
        method=request.method,
        path=request.path,
        route=route,
        status=response.status,
        error=error,
        command_id=request.get(COMMAND_ID),
        key=request.get(KEY_FINGERPRINT),
        ms=round(elapsed * 1000, 2),
    )
    return response


# --- writes --------------------------------------------------------------------------


def _envelope(request: web.Request) -> tuple[dict[str, Any], bool]:
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
    now = _state(request).clock.now()
    return {
        "command_id": ids.command_id("api", source_id),
        "occurred_at": now,
        "received_at": now,
        "source": CommandSource(
            kind="api", source_id=source_id, secret_id=request.get(KEY_FINGERPRINT)
        ),
    }, key is not None


async def _inbox_row(pool: asyncpg.Pool, command_id: UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT command_type, outcome, applied_at FROM inbox WHERE command_id = $1", command_id
    )
    return row


async def _wait_applied(state: ApiState, command_id: UUID) -> asyncpg.Record | None:
    interval = POLL_FIRST_S
    try:
        async with asyncio.timeout(state.settings.api_wait_seconds):
            while True:
                try:
                    row = await _inbox_row(state.pool, command_id)
                except postgres.UNREACHABLE as exc:
                    # The command is durable in Kafka already: the truthful
                    # answer is "pending", not an error.
                    log.warning(
                        "api_outcome_poll_failed",
                        command_id=str(command_id),
                        error=type(exc).__name__,
                    )
                    row = None
                if row is not None:
                    return row
                await asyncio.sleep(interval)
                interval = min(interval * 2, POLL_MAX_S)
    except TimeoutError:
        return None


def _outcome(row: asyncpg.Record) -> dict[str, Any]:
    outcome: dict[str, Any] = orjson.loads(row["outcome"])
    return outcome


def _answer(command_id: UUID, outcome: dict[str, Any]) -> web.Response:
    """An applied outcome as HTTP: refusals keep the guide's error shape."""
    if outcome.get("status") == "rejected":
        status = outcome.get("httpStatus")
        if not isinstance(status, int) or not 400 <= status <= 499:
            status = 409  # a refusal without a status of its own is a conflict with state
        extra = {"committed": outcome["committed"]} if "committed" in outcome else {}
        raise ApiError(
            status,
            str(outcome.get("error", "REJECTED")),
            str(outcome.get("message", "")),
            command_id=command_id,
            **extra,
        )
    return _json({**outcome, "commandId": str(command_id)})


async def _write(request: web.Request, command: CommandBase, idempotent: bool) -> web.Response:
    state = _state(request)
    command_id = command.command_id
    request[COMMAND_ID] = str(command_id)
    if idempotent:
        # A retry of a write already applied: answer it without producing again.
        try:
            row = await _inbox_row(state.pool, command_id)
        except postgres.UNREACHABLE:
            row = None
        if row is not None:
            return _answer(command_id, _outcome(row))
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
        log.error("api_not_durable", command_id=str(command_id), error=type(exc).__name__)
        raise ApiError(
            503,
            "BROKER_UNAVAILABLE",
            "Kafka did not acknowledge the command; retry (with the same Idempotency-Key)",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        ) from None
    state.pending.add(command_id)
    row = await _wait_applied(state, command_id)
    if row is None:
        PENDING_ANSWERS.labels(_route_label(request)).inc()
        return _pending(command_id)
    state.pending.discard(command_id)
    return _answer(command_id, _outcome(row))


def _pending(command_id: UUID) -> web.Response:
    response = _model(Pending(command_id=command_id), status=202)
    response.headers["Location"] = f"/v1/commands/{command_id}"
    return response


async def put_experience(request: web.Request) -> web.Response:
    path = _path(request, ExperiencePath)
    body = await _body(request, ExperienceConfig)
    settings = _state(request).settings
    envelope, idempotent = _envelope(request)
    command = ConfigureExperience(
        **envelope,
        experience_id=path.experience_id,
        strategy=body.strategy,
        window_seconds=body.window_seconds or settings.reservation_window_seconds,
        buffer_seconds=(
            body.buffer_seconds
            if body.buffer_seconds is not None
            else settings.reservation_buffer_seconds
        ),
        pool_size=body.pool_size,
        multi_item_policy=body.multi_item_policy,
    )
    return await _write(request, command, idempotent)


async def put_stock(request: web.Request) -> web.Response:
    body = await _body(request, StockLevel)
    envelope, idempotent = _envelope(request)
    command = SetStock(
        **envelope, product_id=body.product_id, variant_id=body.variant_id, on_hand=body.on_hand
    )
    return await _write(request, command, idempotent)


async def put_cart(request: web.Request) -> web.Response:
    path = _path(request, ConsumerPath)
    body = await _body(request, Cart)
    envelope, idempotent = _envelope(request)
    command = PutCart(
        **envelope,
        experience_id=path.experience_id,
        consumer_id=path.consumer_id,
        items=[item.line() for item in body.items],
    )
    return await _write(request, command, idempotent)


async def complete_checkout(request: web.Request) -> web.Response:
    body = await _body(request, CompleteRequest)
    # Digested at once: only the digest travels on (command, log, Kafka).
    digest = ids.grant_digest(body.admission_grant.get_secret_value())
    envelope, idempotent = _envelope(request)
    command = CompleteCheckout(
        **envelope,
        experience_id=body.experience_id,
        consumer_id=body.consumer_id,
        grant_digest=digest,
        order_id=body.order_id,
        items=[item.line() for item in body.items],
    )
    return await _write(request, command, idempotent)


# --- reads ---------------------------------------------------------------------------


async def get_command(request: web.Request) -> web.Response:
    command_id = _path(request, CommandPath).command_id
    state = _state(request)
    row = await _inbox_row(state.pool, command_id)
    if row is None:
        if command_id in state.pending:
            return _pending(command_id)
        raise ApiError(
            404,
            "COMMAND_NOT_FOUND",
            "no outcome recorded for this command (unknown, or still in flight)",
        )
    state.pending.discard(command_id)
    return _model(
        CommandView(
            command_id=command_id,
            command_type=row["command_type"],
            applied_at=row["applied_at"],
            outcome=_outcome(row),
        )
    )


async def get_stock(request: web.Request) -> web.Response:
    query = _query(request, StockQuery)
    row = await _state(request).pool.fetchrow(
        """SELECT on_hand, reserved, sold, updated_at FROM stock
           WHERE product_id = $1 AND variant_id = $2""",
        query.product_id,
        query.variant_id or "",
    )
    if row is None:
        raise ApiError(404, "STOCK_NOT_FOUND", f"no stock row for {query.product_id}")
    return _model(
        StockView(
            product_id=query.product_id,
            variant_id=query.variant_id,
            on_hand=row["on_hand"],
            reserved=row["reserved"],
            sold=row["sold"],
            available=row["on_hand"] - row["reserved"] - row["sold"],
            updated_at=row["updated_at"],
        )
    )


async def get_experience(request: web.Request) -> web.Response:
    path = _path(request, ExperiencePath)
    state = _state(request)
    row = await state.pool.fetchrow(
        """SELECT strategy, window_seconds, buffer_seconds, pool_size, multi_item_policy
           FROM experiences WHERE experience_id = $1""",
        path.experience_id,
    )
    configured = None if row is None else ExperienceSettings.model_validate(dict(row))
    effective = configured
    if effective is None:
        effective = ExperienceSettings(
            window_seconds=state.settings.reservation_window_seconds,
            buffer_seconds=state.settings.reservation_buffer_seconds,
        )
    return _model(
        ExperienceView(
            experience_id=path.experience_id,
            configured=configured is not None,
            strategy=effective.strategy,
            window_seconds=effective.window_seconds,
            buffer_seconds=effective.buffer_seconds,
            pool_size=effective.pool_size,
            multi_item_policy=effective.multi_item_policy,
        )
    )


async def get_cart(request: web.Request) -> web.Response:
    path = _path(request, ConsumerPath)
    row = await _state(request).pool.fetchrow(
        "SELECT items, updated_at FROM carts WHERE experience_id = $1 AND consumer_id = $2",
        path.experience_id,
        path.consumer_id,
    )
    items = [] if row is None else orjson.loads(row["items"])
    return _model(
        CartView(
            experience_id=path.experience_id,
            consumer_id=path.consumer_id,
            # Read through the domain model, which takes either spelling the
            # consumer may have stored.
            items=[
                CartItem.model_validate(CartLine.model_validate(item).model_dump(by_alias=True))
                for item in items
            ],
            updated_at=None if row is None else row["updated_at"],
        )
    )


def _view(hold: Hold, now: datetime) -> ReservationView:
    remaining = 0
    if hold.status is ReservationStatus.ACTIVE:
        remaining = max(0, math.ceil((hold.expires_at - now).total_seconds()))
    return ReservationView(
        reservation_id=UUID(hold.reservation_id),
        product_id=hold.product_id,
        variant_id=hold.variant_id or None,
        quantity=hold.quantity,
        status=hold.status,
        expires_at=hold.expires_at,
        seconds_remaining=remaining,
        order_id=hold.order_id,
        end_reason=hold.end_reason,
    )


async def get_reservations(request: web.Request) -> web.Response:
    path = _path(request, ConsumerPath)
    state = _state(request)
    now = state.clock.now()
    holds = await store.consumer_holds(state.pool, path.experience_id, path.consumer_id)
    return _model(
        ReservationsView(
            experience_id=path.experience_id,
            consumer_id=path.consumer_id,
            now=now,
            reservations=[_view(h, now) for h in holds],
        )
    )


async def validate_checkout(request: web.Request) -> web.Response:
    state = _state(request)
    at = state.clock.now()  # the request's receive time, as complete would use
    body = await _body(request, CheckoutRequest)
    digest = ids.grant_digest(body.admission_grant.get_secret_value())
    holds = await store.consumer_holds(state.pool, body.experience_id, body.consumer_id)
    error = check_checkout(holds, digest, [item.line() for item in body.items], at)
    if error is not None:
        raise ApiError(error.status, error.code, error.message)
    mine = [h for h in holds if h.grant_digest == digest and h.status is ReservationStatus.ACTIVE]
    return _model(ValidationPassed(holds=[_view(h, at) for h in mine]))


# --- open routes -------------------------------------------------------------------


async def healthz(_: web.Request) -> web.Response:
    return _model(Health(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    state = _state(request)
    down: list[str] = []
    try:
        async with asyncio.timeout(2):
            await state.pool.fetchval("SELECT 1")
    except Exception:
        down.append("database")
    try:
        async with asyncio.timeout(2):
            await state.producer.partitions_for(state.settings.commands_topic)
    except Exception:
        down.append("kafka")
    if down:
        raise ApiError(503, "NOT_READY", "unavailable: " + ", ".join(down))
    return _model(Health(status="ready"))


async def metrics(_: web.Request) -> web.Response:
    response = web.Response(body=generate_latest(REGISTRY))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def openapi_json(request: web.Request) -> web.Response:
    return _json(_state(request).document)


# --- the route table ---------------------------------------------------------------

_WRITE_ERRORS = (
    Reply(400, "Invalid body, parameter or Idempotency-Key (INVALID_*)", ErrorBody),
    Reply(
        503,
        "Kafka did not acknowledge the command in time (BROKER_UNAVAILABLE); retry, with "
        "the same Idempotency-Key to be sure it applies once",
        ErrorBody,
        headers=("Retry-After",),
    ),
)
_PENDING = Reply(
    202,
    "Stored, but not applied within API_WAIT_SECONDS: GET the Location for the outcome",
    Pending,
    headers=("Location",),
)
_READ_ERRORS = (
    Reply(400, "Invalid parameter (INVALID_PARAMETER)", ErrorBody),
    Reply(
        503,
        "PostgreSQL unavailable (DATABASE_UNAVAILABLE)",
        ErrorBody,
        headers=("Retry-After",),
    ),
)
_CONSUMER = "/v1/experiences/{experienceId}/consumers/{consumerId}"

ROUTES: tuple[Operation, ...] = (
    Operation(
        "PUT",
        "/v1/experiences/{experienceId}",
        "configureExperience",
        "Set an experience's strategy, window and multi-item policy",
        put_experience,
        "experiences",
        description="Applies to admissions after it; holds already taken keep the settings "
        "they were taken under.",
        body=ExperienceConfig,
        path_model=ExperiencePath,
        replies=(Reply(200, "Applied", ExperienceConfiguredOutcome), _PENDING, *_WRITE_ERRORS),
        idempotency_key=True,
    ),
    Operation(
        "GET",
        "/v1/experiences/{experienceId}",
        "getExperience",
        "The settings an admission to this experience would be held under",
        get_experience,
        "experiences",
        path_model=ExperiencePath,
        replies=(Reply(200, "Configured or default settings", ExperienceView), *_READ_ERRORS),
    ),
    Operation(
        "PUT",
        "/v1/stock",
        "setStock",
        "Set a stock row's on-hand level",
        put_stock,
        "stock",
        body=StockLevel,
        replies=(
            Reply(200, "Applied", StockSetOutcome),
            _PENDING,
            Reply(
                409,
                "onHand below the units reserved and sold (STOCK_BELOW_COMMITTED); nothing changed",
                ErrorBody,
            ),
            *_WRITE_ERRORS,
        ),
        idempotency_key=True,
    ),
    Operation(
        "GET",
        "/v1/stock",
        "getStock",
        "A stock row's counters",
        get_stock,
        "stock",
        query_model=StockQuery,
        replies=(
            Reply(200, "The row; available = onHand - reserved - sold", StockView),
            Reply(404, "No such stock row (STOCK_NOT_FOUND)", ErrorBody),
            *_READ_ERRORS,
        ),
    ),
    Operation(
        "PUT",
        f"{_CONSUMER}/cart",
        "putCart",
        "Replace a consumer's cart",
        put_cart,
        "carts",
        description="While the consumer's admission is active its holds change to match, "
        "subject to stock; otherwise the cart is held at the next admission.",
        body=Cart,
        path_model=ConsumerPath,
        replies=(Reply(200, "Applied", CartStoredOutcome), _PENDING, *_WRITE_ERRORS),
        idempotency_key=True,
    ),
    Operation(
        "GET",
        f"{_CONSUMER}/cart",
        "getCart",
        "A consumer's cart",
        get_cart,
        "carts",
        path_model=ConsumerPath,
        replies=(Reply(200, "The cart (empty if none was put)", CartView), *_READ_ERRORS),
    ),
    Operation(
        "GET",
        f"{_CONSUMER}/reservations",
        "getReservations",
        "A consumer's holds with the time remaining",
        get_reservations,
        "reservations",
        path_model=ConsumerPath,
        replies=(Reply(200, "Every hold, oldest first", ReservationsView), *_READ_ERRORS),
    ),
    Operation(
        "POST",
        "/v1/checkout/validate",
        "validateCheckout",
        "Check that the admission's holds cover the items (changes nothing)",
        validate_checkout,
        "checkout",
        description="The checks complete makes, in the same order, at the request's receive "
        "time: ADMISSION_MISMATCH, RESERVATION_EXPIRED, then per line RESERVATION_MISSING "
        "and RESERVATION_INSUFFICIENT.",
        body=CheckoutRequest,
        replies=(
            Reply(200, "The holds cover the items", ValidationPassed),
            Reply(
                400,
                "RESERVATION_MISSING, RESERVATION_INSUFFICIENT or INVALID_BODY",
                ErrorBody,
            ),
            Reply(403, "The grant is not the active admission's (ADMISSION_MISMATCH)", ErrorBody),
            Reply(409, "The admission's holds have expired (RESERVATION_EXPIRED)", ErrorBody),
            Reply(
                503,
                "PostgreSQL unavailable (DATABASE_UNAVAILABLE)",
                ErrorBody,
                headers=("Retry-After",),
            ),
        ),
    ),
    Operation(
        "POST",
        "/v1/checkout/complete",
        "completeCheckout",
        "Convert the admission's holds into a sale for the order",
        complete_checkout,
        "checkout",
        description="Same checks as validate, at the request's receive time. Converts "
        "exactly once per order id: a retry (same Idempotency-Key, or a new one with the "
        "same orderId) answers converted again and changes nothing; another orderId for "
        "converted holds is ORDER_CONFLICT.",
        body=CompleteRequest,
        replies=(
            Reply(200, "Converted (or already converted for this order)", CheckoutConvertedOutcome),
            _PENDING,
            Reply(
                400,
                "RESERVATION_MISSING, RESERVATION_INSUFFICIENT or INVALID_*",
                ErrorBody,
            ),
            Reply(403, "The grant is not the active admission's (ADMISSION_MISMATCH)", ErrorBody),
            Reply(
                409,
                "RESERVATION_EXPIRED, or ORDER_CONFLICT (already converted for another order)",
                ErrorBody,
            ),
            _WRITE_ERRORS[1],
        ),
        idempotency_key=True,
    ),
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
            *_READ_ERRORS,
        ),
    ),
    Operation(
        "GET",
        "/healthz",
        "healthz",
        "Liveness",
        healthz,
        "operations",
        replies=(Reply(200, "The process is serving", Health),),
        secured=False,
    ),
    Operation(
        "GET",
        "/readyz",
        "readyz",
        "Readiness: PostgreSQL and Kafka reachable",
        readyz,
        "operations",
        replies=(
            Reply(200, "Ready", Health),
            Reply(503, "Not ready (NOT_READY)", ErrorBody),
        ),
        secured=False,
    ),
    Operation(
        "GET",
        "/metrics",
        "metrics",
        "Prometheus metrics",
        metrics,
        "operations",
        replies=(
            Reply(
                200,
                "Prometheus text exposition",
                media="text/plain",
                raw_schema={"type": "string"},
            ),
        ),
        secured=False,
    ),
    Operation(
        "GET",
        "/openapi.json",
        "openapi",
        "This document",
        openapi_json,
        "operations",
        replies=(Reply(200, "OpenAPI 3.1", raw_schema={"type": "object"}),),
        secured=False,
    ),
)

DESCRIPTION = """\
What the storefront, checkout and operators need from the cart-reservation \
service: configure experiences, set stock, put carts, read holds with their \
countdown, validate and complete checkout.

Every route except the operations ones needs `Authorization: Bearer <key>` \
with one of the keys in RESERVATION_API_KEYS (401 UNAUTHORIZED otherwise).

Writes go through the command log: the answer is the applied outcome, or 202 \
with a commandId when it was not applied within API_WAIT_SECONDS (GET \
/v1/commands/{commandId} gives it later). Send an Idempotency-Key to make a \
write safe to retry. Errors are `{"error": "CODE", "message": "..."}`."""


def openapi_document() -> dict[str, Any]:
    return build_document(
        ROUTES,
        title="Fanfare cart-reservation API",
        version=API_VERSION,
        description=DESCRIPTION,
        error_model=ErrorBody,
    )


def _router_path(path: str) -> str:
    """aiohttp's default parameter pattern is [^{}/]+, which refuses ids that
    hold a brace; any character but '/' (still %2F-escaped when matched)
    is an id character here."""
    return re.sub(r"\{(\w+)\}", r"{\1:[^/]+}", path)


def build_api(
    settings: Settings,
    producer: AIOKafkaProducer,
    pool: asyncpg.Pool,
    clock: Clock | None = None,
) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[_middleware])
    keys = [ApiKey.from_text(k.get_secret_value()) for k in settings.reservation_api_keys]
    if not keys:
        log.warning("api_without_keys", detail="RESERVATION_API_KEYS is empty: every call is 401")
    operations: dict[web.AbstractRoute, Operation] = {}
    for op in ROUTES:
        route = app.router.add_route(op.method, _router_path(op.path), op.handler)
        operations[route] = op
    app[STATE] = ApiState(
        settings=settings,
        producer=producer,
        pool=pool,
        clock=clock or SystemClock(),
        keys=keys,
        operations=operations,
        document=openapi_document(),
    )
    return app
