"""The API's HTTP plumbing: what an app holds, the error shape and the status
of every stable error code, bearer-key authentication, the middleware every
request passes (auth, error mapping, metrics, one log line), and parsing of
bodies and parameters into models."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel, ValidationError

from worker import metrics
from worker.adapters import postgres
from worker.clock import Clock
from worker.config import OPERATOR_SCOPE, Settings, api_key_entry
from worker.domain import ids
from worker.logs import get_logger
from worker.openapi import Operation, Reply
from worker.roles.api.models import ErrorBody

log = get_logger("worker.api")

RETRY_AFTER_SECONDS = "5"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# The answer to each refusal the engine records or checkout validation finds,
# by its stable code. A refusal with a code not listed is a conflict with
# state. Inbox rows may hold a status of their own; the code decides.
REFUSAL_STATUS: dict[str, int] = {
    "ADMISSION_MISMATCH": 403,
    "RESERVATION_EXPIRED": 409,
    "RESERVATION_MISSING": 400,
    "RESERVATION_INSUFFICIENT": 400,
    "ORDER_CONFLICT": 409,
    "STOCK_BELOW_COMMITTED": 409,
    "POOL_BELOW_USED": 409,
    "EXTENSION_NOT_ALLOWED": 409,
    "EXTENSIONS_EXHAUSTED": 409,
    "RETRY_NOT_ALLOWED": 409,
    "RETRY_WINDOW_CLOSED": 409,
    "NOT_EXPIRED": 409,
}
UNLISTED_REFUSAL_STATUS = 409

DATABASE_UNAVAILABLE_REPLY = Reply(
    503, "PostgreSQL unavailable (DATABASE_UNAVAILABLE)", ErrorBody, headers=("Retry-After",)
)
# Documented on every read: what parameter parsing and the database may answer.
READ_ERRORS = (
    Reply(400, "Invalid parameter (INVALID_PARAMETER)", ErrorBody),
    DATABASE_UNAVAILABLE_REPLY,
)


def refusal_status(code: object) -> int:
    return REFUSAL_STATUS.get(str(code), UNLISTED_REFUSAL_STATUS)


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

    @classmethod
    def refusal(cls, code: str, message: str, **extra: Any) -> ApiError:
        return cls(refusal_status(code), code, message, **extra)

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
    scope: str

    @classmethod
    def from_entry(cls, entry: str) -> ApiKey:
        """From a RESERVATION_API_KEYS entry (`key` or `key:scope`): the
        fingerprint is the key's alone, whatever its scope."""
        key, scope = api_key_entry(entry)
        raw = key.encode("utf-8")
        return cls(hashlib.sha256(raw).digest(), ids.key_fingerprint(raw), scope)

    def allows(self, scope: str | None) -> bool:
        """Whether this key may call a route that needs `scope` (None: any key)."""
        return scope is None or self.scope == scope or self.scope == OPERATOR_SCOPE


@dataclass
class ApiState:
    settings: Settings
    producer: AIOKafkaProducer
    pool: asyncpg.Pool
    clock: Clock
    keys: list[ApiKey]
    operations: dict[web.AbstractRoute, Operation]
    document: dict[str, Any]


STATE = web.AppKey("api_state", ApiState)
# Per request, for the log line: which key authenticated it, what it produced.
KEY_FINGERPRINT = web.RequestKey("api_key", str)
COMMAND_ID = web.RequestKey("command_id", str)
M = TypeVar("M", bound=BaseModel)


def api_state(request: web.Request) -> ApiState:
    return request.app[STATE]


def json_answer(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def model_answer(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        body=model.model_dump_json(by_alias=True), status=status, content_type="application/json"
    )


# --- parsing -------------------------------------------------------------------------


def _invalid(code: str, exc: ValidationError) -> ApiError:
    # The message names the field and what is wrong with it, never the input
    # (which may be an admission grant).
    first = exc.errors(include_input=False, include_url=False)[0]
    path = ".".join(str(p) for p in first["loc"]) or "body"
    return ApiError(400, code, f"{path}: {first['msg']}", field=path)


async def parse_body(request: web.Request, model: type[M]) -> M:
    settings = api_state(request).settings
    try:
        async with asyncio.timeout(settings.http_body_timeout_seconds):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(408, "REQUEST_TIMEOUT", "body not received in time", close=True) from None
    except web.HTTPRequestEntityTooLarge:
        # Closed with the answer: the rest of the body is not drained.
        raise ApiError(
            413, "BODY_TOO_LARGE", f"body exceeds {settings.max_body_bytes} bytes", close=True
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


def parse_path(request: web.Request, model: type[M]) -> M:
    return _params(dict(request.match_info), model)


def parse_query(request: web.Request, model: type[M]) -> M:
    return _params({k: request.query.getone(k) for k in request.query}, model)


# --- every request -------------------------------------------------------------------


def _authenticate(state: ApiState, request: web.Request) -> ApiKey:
    """The key that matched, or ApiError 401."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    matched: ApiKey | None = None
    if scheme.lower() == "bearer" and token:
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        # Every key is compared, so timing says nothing about which matched.
        for key in state.keys:
            if hmac.compare_digest(presented, key.digest):
                matched = key
    if matched is None:
        raise ApiError(
            401,
            "UNAUTHORIZED",
            "a valid Authorization: Bearer <key> header is required",
            headers={"WWW-Authenticate": 'Bearer realm="reservations"'},
        )
    return matched


def route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


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


def _admit(state: ApiState, request: web.Request) -> None:
    """Raise unless the route exists and the request's key may call it."""
    missed = request.match_info.http_exception
    if missed is not None:
        raise missed
    operation = state.operations.get(request.match_info.route)
    if operation is None or operation.secured:
        key = _authenticate(state, request)
        request[KEY_FINGERPRINT] = key.fingerprint
        if operation is not None and not key.allows(operation.scope):
            raise ApiError(
                403, "FORBIDDEN_SCOPE", f"this route needs a key with the {operation.scope} scope"
            )


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    state = api_state(request)
    response: web.StreamResponse
    error: str | None = None
    try:
        _admit(state, request)
        response = await handler(request)
    except Exception as exc:
        failure = _as_api_error(request, exc)
        error = failure.body.error
        response = failure.response()
    route = route_label(request)
    method = request.method if request.method in KNOWN_METHODS else "other"
    elapsed = time.perf_counter() - started
    metrics.API_REQUESTS.labels(route, method, str(response.status)).inc()
    metrics.API_REQUEST_SECONDS.labels(route, method).observe(elapsed)
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
