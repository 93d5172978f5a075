"""The webhook receiver: verify, validate, translate, make durable, answer.

A 2xx means the command is acknowledged by Kafka (acks=all); when that cannot
be had within the deadline the answer is 503 with Retry-After, so Fanfare's
retries carry the event later and nothing acknowledged is ever lost.

Checks run cheapest first and nothing is parsed before the signature holds:
method (405), declared size (413), media type (415), body size while reading
(413), signature and timestamp (401), JSON (400), envelope (400), event data
(400). Fanfare retries every non-2xx, so each rejection costs little and
leaves no trace but a log line and a counter.

aiokafka's idempotent producer can die for good after a broker outage; the
receiver then answers 503 once and continues on a fresh producer, so the
retries land instead of failing until the process restarts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError
from pydantic.json_schema import models_json_schema

from worker import metrics
from worker.adapters import kafka
from worker.clock import Clock, SystemClock
from worker.config import Settings
from worker.domain.commands import CommandBase, encode_command
from worker.fanfare.envelope import (
    AdmissionData,
    AdmissionEndData,
    CompletionData,
    Delivery,
    Envelope,
    clean_delivery_id,
    field_path,
)
from worker.fanfare.events import EVENTS, NOT_ACTED_ON_PREFIXES, metric_label, translate
from worker.fanfare.forwarding import forwarded_record
from worker.fanfare.signature import Secret, SignatureError, verify
from worker.logs import get_logger
from worker.roles.ops import (
    Readiness,
    ReadinessCheck,
    error,
    healthz,
    metrics_endpoint,
)

log = get_logger("worker.receiver")

WEBHOOK_PATH = "/webhooks/fanfare"
OPENAPI_PATH = "/openapi.json"
STORED_OPENAPI = Path(__file__).resolve().parents[2] / "schemas" / "openapi-receiver.json"
# Fanfare's own schedule decides when it retries; this is the hint for
# anything else (a proxy, a replay tool) and long enough for a broker
# failover.
RETRY_AFTER_SECONDS = 5
READ_CHUNK = 64 * 1024
# Content-Type values that need no parsing to be accepted (what Fanfare sends).
PLAIN_JSON = frozenset({"application/json", "application/json; charset=utf-8"})

PRODUCER_KEY = web.AppKey("producer", kafka.ProducerSlot)
SENDER_KEY = web.AppKey("sender", kafka.AcknowledgedSender)


@dataclass
class _Reply:
    """One answer to a webhook, with what the metrics and the log line need."""

    status: int
    body: dict[str, Any]
    outcome: str
    event_type: str = "none"
    headers: dict[str, str] = field(default_factory=dict)
    log_fields: dict[str, Any] = field(default_factory=dict)
    close: bool = False


def _rejected(status: int, code: str, message: str, outcome: str, **log_fields: Any) -> _Reply:
    body: dict[str, Any] = {"error": code, "message": message}
    if "field" in log_fields:
        body["field"] = log_fields["field"]
    return _Reply(status, body, outcome, log_fields={"error": code, **log_fields})


def _refused_unread(status: int, code: str, message: str, outcome: str) -> _Reply:
    """A refusal whose body is not (or no longer) read: the connection ends
    with the answer (`Connection: close`; the server does not drain the
    rest, see runtime._serve_http), so a slow or oversized sender holds no
    socket and the body is never decoded."""
    reply = _rejected(status, code, message, outcome)
    reply.close = True
    return reply


class _TooLarge(Exception):
    pass


def _media_type_rejected(request: web.Request) -> _Reply | None:
    try:
        media_type, charset = request.content_type, request.charset
    except (ValueError, IndexError):
        # The standard library's header parser fails on some malformed
        # parameters (`application/json;b*`: IndexError) instead of saying so.
        return _rejected(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "Content-Type could not be parsed",
            "unsupported_media_type",
        )
    if media_type != "application/json":
        return _rejected(
            415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json",
            "unsupported_media_type",
        )  # fmt: skip
    if (charset or "utf-8").lower() not in ("utf-8", "utf8"):
        return _rejected(
            415, "UNSUPPORTED_MEDIA_TYPE", "JSON bodies must be UTF-8", "unsupported_media_type"
        )
    return None


def _unexpected(request: web.Request) -> web.Response:
    # A bug, never an input we failed to anticipate: the fuzz suite holds
    # every input to a 4xx. Logged without the request body.
    log.exception("http_unhandled_error", path=request.path, method=request.method)
    return error(500, "INTERNAL_ERROR", "unexpected error")


def _log(reply: _Reply, delivery_id: str | None, elapsed: float) -> None:
    # A line per accepted webhook was a sixth of the receiver's CPU at load;
    # the counters carry the rates, and LOG_LEVEL=debug follows each event
    # (ids, never the grant) when needed. Building its fields is skipped too.
    if reply.outcome == "accepted" and not log.is_enabled_for(logging.DEBUG):
        return
    fields = {
        "status": reply.status,
        "outcome": reply.outcome,
        "delivery_id": delivery_id,
        "ms": round(elapsed * 1000, 2),
        **reply.log_fields,
    }
    if reply.status >= 500:
        log.error("webhook_not_durable", **fields)
    elif reply.status >= 400:
        log.warning("webhook_rejected", **fields)
    elif reply.outcome == "accepted":
        log.debug("webhook_accepted", **fields)
    else:
        # Ignored, not acted on or forwarded: rare, and the operator's only
        # trace of an event type Fanfare added (DESIGN: logged and counted).
        log.info("webhook_" + reply.outcome, **fields)


class _Meters:
    """The receiver's metric children, each looked up once: labels() checks
    and locks on every call, and the label sets are few (outcomes, known
    event types, secrets)."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str], Any] = {}
        self._durations: dict[str, Any] = {}
        self._verified: dict[str, Any] = {}

    def record(self, outcome: str, event_type: str, seconds: float) -> None:
        counter = self._requests.get((outcome, event_type))
        if counter is None:
            counter = metrics.WEBHOOK_REQUESTS.labels(outcome, event_type)
            self._requests[(outcome, event_type)] = counter
        counter.inc()
        histogram = self._durations.get(outcome)
        if histogram is None:
            histogram = self._durations[outcome] = metrics.WEBHOOK_DURATION.labels(outcome)
        histogram.observe(seconds)

    def verified(self, fingerprint: str) -> None:
        counter = self._verified.get(fingerprint)
        if counter is None:
            counter = self._verified[fingerprint] = metrics.WEBHOOK_VERIFIED.labels(fingerprint)
        counter.inc()


class WebhookHandler:
    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.secrets = [
            Secret.from_text(s.get_secret_value()) for s in settings.fanfare_webhook_secret
        ]
        self.meters = _Meters()

    async def handle(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            metrics.WEBHOOK_REQUESTS.labels("method_not_allowed", "none").inc()
            return error(405, "METHOD_NOT_ALLOWED", "Method Not Allowed", {"Allow": "POST"})
        started = time.perf_counter()
        delivery_id = clean_delivery_id(request.headers.get("X-Fanfare-Delivery-Id"))
        try:
            reply = await self._handle(request, delivery_id)
        except Exception:
            return _unexpected(request)
        elapsed = time.perf_counter() - started
        self.meters.record(reply.outcome, reply.event_type, elapsed)
        _log(reply, delivery_id, elapsed)
        response = web.Response(
            body=orjson.dumps(reply.body),
            status=reply.status,
            headers=reply.headers,
            content_type="application/json",
            charset="utf-8",
        )
        if reply.close:
            response.force_close()  # Connection: close, and no drain (runtime)
        return response

    async def _handle(self, request: web.Request, delivery_id: str | None) -> _Reply:
        limit = self.settings.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            return _refused_unread(
                413, "PAYLOAD_TOO_LARGE", f"body larger than {limit} bytes", "too_large"
            )
        if request.headers.get("Content-Type") not in PLAIN_JSON and (
            rejected := _media_type_rejected(request)
        ):
            return rejected
        # The signature covers the bytes as sent; a decoded body would be a
        # different text than the one Fanfare signed. Fanfare does not compress.
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            # aiohttp already decodes the body as it arrives; one that is not
            # what its header says must not be drained (nor logged) after this.
            return _refused_unread(
                415, "UNSUPPORTED_MEDIA_TYPE", "Content-Encoding is not supported",
                "unsupported_media_type",
            )  # fmt: skip
        try:
            body = await self._body(request, limit)
        except TimeoutError:
            return _refused_unread(
                408, "REQUEST_TIMEOUT", "body not received in time", "body_timeout"
            )
        except _TooLarge:
            return _refused_unread(
                413, "PAYLOAD_TOO_LARGE", f"body larger than {limit} bytes", "too_large"
            )
        except (web.RequestPayloadError, ConnectionResetError):
            # The sender hung up before its declared length (aiohttp: the
            # connection lost) or framed the body wrongly: bad input, not a
            # fault of ours, so no traceback; the answer may reach no one.
            return _refused_unread(
                400, "MALFORMED_BODY", "body cut short or badly framed", "body_incomplete"
            )

        received_at = self.clock.now()
        try:
            secret = verify(
                self.secrets,
                request.headers.get("X-Fanfare-Timestamp"),
                request.headers.get("X-Fanfare-Signature"),
                body,
                received_at.timestamp(),
                self.settings.signature_tolerance_seconds,
            )
        except SignatureError as exc:
            return _rejected(401, exc.code, exc.message, "invalid_signature")
        self.meters.verified(secret.fingerprint)

        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _rejected(400, "MALFORMED_JSON", "body is not valid JSON", "invalid_body")
        try:
            envelope = Envelope.model_validate(raw)
        except ValidationError as exc:
            path, message = field_path(exc)
            return _rejected(400, "INVALID_ENVELOPE", message, "invalid_body", field=path)

        label = metric_label(envelope.type)
        context: dict[str, Any] = {
            "event_id": envelope.id,
            "event_type": envelope.type,
            "secret": secret.fingerprint,
        }
        header_type = request.headers.get("X-Fanfare-Event-Type")
        if header_type is not None and header_type != envelope.type:
            # The header is not signed and the body is: the body decides.
            context["header_event_type_mismatch"] = True

        delivery = Delivery(
            delivery_id=delivery_id,
            secret_fingerprint=secret.fingerprint,
            received_at=received_at,
        )
        try:
            translation = translate(envelope, delivery)
        except ValidationError as exc:
            path, message = field_path(exc, "data")
            reply = _rejected(
                400, "INVALID_EVENT_DATA", message, "invalid_body", field=path, **context
            )
            reply.event_type = label
            return reply

        if translation.command is not None:
            return await self._produce_command(request, translation.command, envelope, context)
        topic = self.settings.forward_unknown_events_topic
        if translation.disposition == "unknown" and topic:
            record = forwarded_record(raw, envelope, delivery)
            failure = await self._send(
                request, topic, record.value, record.key, record.headers, context
            )
            if failure is not None:
                failure.event_type = label
                return failure
            return _Reply(
                200,
                {"status": "forwarded", "eventId": envelope.id, "topic": topic},
                "forwarded",
                label,
                log_fields={**context, "topic": topic},
            )
        outcome = "ignored" if translation.disposition == "unknown" else "not_acted_on"
        return _Reply(
            200,
            {"status": "ignored", "eventId": envelope.id, "reason": translation.reason},
            outcome,
            label,
            log_fields={**context, "reason": translation.reason},
        )

    async def _body(self, request: web.Request, limit: int) -> bytes:
        content = request.content
        if not content.is_eof():
            async with asyncio.timeout(self.settings.http_body_timeout_seconds):
                return await self._read(request, limit)
        # The body came whole with the headers (the usual case for a webhook):
        # nothing to wait for, so no deadline to arm and no chunk loop.
        body = content.read_nowait()
        if len(body) > limit:
            raise _TooLarge
        return body

    async def _read(self, request: web.Request, limit: int) -> bytes:
        # Read in chunks and stop at the limit: a chunked body declares no
        # length, and buffering it whole would let one request exhaust memory.
        body = bytearray()
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            body += chunk
            if len(body) > limit:
                raise _TooLarge
        return bytes(body)

    async def _produce_command(
        self,
        request: web.Request,
        command: CommandBase,
        envelope: Envelope,
        context: dict[str, Any],
    ) -> _Reply:
        command_type = str(getattr(command, "type", ""))
        command_id = str(command.command_id)
        context = {**context, "command_id": command_id, "command_type": command_type}
        label = metric_label(envelope.type)
        failure = await self._send(
            request,
            self.settings.commands_topic,
            encode_command(command),
            command.partition_key().encode("utf-8"),
            None,
            context,
        )
        if failure is not None:
            failure.event_type = label
            return failure
        return _Reply(
            200,
            {
                "status": "accepted",
                "eventId": envelope.id,
                "commandId": command_id,
                "commandType": command_type,
            },
            "accepted",
            label,
            log_fields=context,
        )

    async def _send(
        self,
        request: web.Request,
        topic: str,
        value: bytes,
        key: bytes,
        headers: list[tuple[str, bytes]] | None,
        context: dict[str, Any],
    ) -> _Reply | None:
        """None once Kafka acknowledged the record; the 503 answer otherwise."""
        slot = request.app[PRODUCER_KEY]
        producer = slot.current
        try:
            await request.app[SENDER_KEY].send(producer, topic, key, value, headers)
        except Exception as exc:
            # Whatever went wrong, the record is not known to be durable, and
            # that is exactly what 503 tells Fanfare: try again later. A record
            # that lands after all is deduped downstream by its command id.
            metrics.WEBHOOK_PRODUCE_ERRORS.labels(type(exc).__name__).inc()
            if kafka.is_fatal(exc):
                # Fanfare's retry then finds a working producer.
                await slot.replace(producer, self.settings.produce_timeout_seconds)
            reply = _rejected(
                503,
                "BROKER_UNAVAILABLE",
                "event not stored, retry later",
                "not_durable",
                produce_error=type(exc).__name__,
                **context,
            )
            reply.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return reply
        return None


def _get_only(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A read-only route answering every other method, and its own failures,
    in the service's JSON shape."""

    async def gated(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return error(405, "METHOD_NOT_ALLOWED", "Method Not Allowed", {"Allow": "GET,HEAD"})
        try:
            return await handler(request)
        except Exception:
            return _unexpected(request)

    return gated


async def not_found(_: web.Request) -> web.Response:
    return error(404, "NOT_FOUND", "Not Found")


async def openapi_endpoint(_: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def build_app(
    settings: Settings,
    producer: AIOKafkaProducer,
    clock: Clock | None = None,
    readiness: Mapping[str, ReadinessCheck] | None = None,
    producer_factory: kafka.ProducerFactory | None = None,
) -> web.Application:
    """The receiver's HTTP app. `producer` must be started; with
    `producer_factory` a dead producer is replaced by a new one from it."""
    # The handler enforces the body limit itself (JSON 413, chunked bodies
    # included); aiohttp's own limit only guards request.read(), unused here.
    # No middleware: every path and method reaches one of the handlers below,
    # each answering errors (404, 405, 500) in the JSON shape itself; a
    # middleware cost the webhook path an eighth of its CPU.
    app = web.Application()
    slot = kafka.ProducerSlot(producer, producer_factory)
    app[PRODUCER_KEY] = slot
    sender = kafka.AcknowledgedSender(settings.produce_timeout_seconds)
    app[SENDER_KEY] = sender

    async def close_replacements(_: web.Application) -> None:
        await sender.close()
        await slot.close(settings.produce_timeout_seconds)

    app.on_cleanup.append(close_replacements)
    handler = WebhookHandler(settings, clock or SystemClock())
    app.router.add_route("*", WEBHOOK_PATH, handler.handle)
    app.router.add_route("*", "/healthz", _get_only(healthz))
    app.router.add_route("*", "/readyz", _get_only(Readiness(readiness or {}).handle))
    app.router.add_route("*", "/metrics", _get_only(metrics_endpoint))
    app.router.add_route("*", OPENAPI_PATH, _get_only(openapi_endpoint))
    app.router.add_route("*", "/{path:.*}", not_found)
    return app


# --- OpenAPI ----------------------------------------------------------------

_REF = "#/components/schemas/{model}"


def _error_response(description: str, codes: list[str]) -> dict[str, Any]:
    return {
        "description": description + " Codes: " + ", ".join(codes) + ".",
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}},
    }


def _header(name: str, required: bool, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


def _event_catalogue() -> dict[str, Any]:
    catalogue: dict[str, Any] = {}
    for event_type, spec in EVENTS.items():
        entry: dict[str, Any] = {"becomes": spec.becomes}
        if spec.data_model is not None:
            entry["data"] = {"$ref": _REF.format(model=spec.data_model.__name__)}
        catalogue[event_type] = entry
    catalogue["*.admission_expired"] = {
        "becomes": "admission.end (expired, admission_expired); also *.admission.expired",
        "data": {"$ref": _REF.format(model="AdmissionEndData")},
    }
    for prefix in NOT_ACTED_ON_PREFIXES:
        catalogue[prefix + "*"] = {"becomes": "acknowledged, not acted on"}
    catalogue["(any other type)"] = {
        "becomes": "acknowledged and counted; produced to FORWARD_UNKNOWN_EVENTS_TOPIC if set"
    }
    return catalogue


def openapi_document() -> dict[str, Any]:
    """The receiver's HTTP contract. Independent of settings, so the copy in
    schemas/ is the same for every deployment (limits are given as defaults)."""
    _, generated = models_json_schema(
        [
            (Envelope, "validation"),
            (AdmissionData, "validation"),
            (AdmissionEndData, "validation"),
            (CompletionData, "validation"),
        ],
        ref_template=_REF,
    )
    schemas: dict[str, Any] = dict(generated["$defs"])
    schemas["Error"] = {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "Stable error code"},
            "message": {"type": "string"},
            "field": {"type": "string", "description": "Failing field path (400 only)"},
        },
    }
    schemas["WebhookAnswer"] = {
        "type": "object",
        "required": ["status", "eventId"],
        "properties": {
            "status": {"type": "string", "enum": ["accepted", "ignored", "forwarded"]},
            "eventId": {"type": "string"},
            "commandId": {"type": "string", "format": "uuid"},
            "commandType": {"type": "string"},
            "reason": {
                "type": "string",
                "enum": ["unknown_event_type", "not_reservation_relevant", "no_order_id"],
            },
            "topic": {"type": "string"},
        },
    }
    schemas["Readiness"] = {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ready"]},
            "error": {"type": "string", "enum": ["NOT_READY"]},
            "message": {"type": "string"},
            "checks": {
                "type": "object",
                "additionalProperties": {
                    "type": "string",
                    "description": "ok, or the class of the error that failed the check",
                },
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Fanfare reservation worker: webhook receiver",
            "version": "1",
            "description": (
                "Receives Fanfare webhooks, verifies them, and makes each one durable in "
                "Kafka as a typed command before answering 2xx."
            ),
        },
        "paths": {
            WEBHOOK_PATH: {
                "post": {
                    "operationId": "receiveFanfareWebhook",
                    "summary": "A Fanfare webhook delivery",
                    "description": (
                        "HMAC-SHA256 over `{X-Fanfare-Timestamp}.{raw body}` with any active "
                        "secret; timestamps more than SIGNATURE_TOLERANCE_SECONDS (default "
                        "300) from now in either direction are refused. Bodies above "
                        "MAX_BODY_BYTES (default 262144) are refused. A 2xx means durable."
                    ),
                    "parameters": [
                        _header("X-Fanfare-Signature", True, "sha256=<64 hex>; several allowed"),
                        _header("X-Fanfare-Timestamp", True, "Unix seconds of the signature"),
                        _header("X-Fanfare-Delivery-Id", False, "Recorded and logged"),
                        _header("X-Fanfare-Event-Type", False, "Informational; body decides"),
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": _REF.format(model="Envelope")}}
                        },
                    },
                    "x-fanfare-event-types": _event_catalogue(),
                    "responses": {
                        "200": {
                            "description": "Durable in Kafka (accepted or forwarded), or "
                            "acknowledged without effect (ignored)",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": _REF.format(model="WebhookAnswer")}
                                }
                            },
                        },
                        "400": _error_response(
                            "Body cut short or badly framed, not JSON, or the envelope or event "
                            "data is invalid; `field` names the failing path.",
                            [
                                "MALFORMED_BODY",
                                "MALFORMED_JSON",
                                "INVALID_ENVELOPE",
                                "INVALID_EVENT_DATA",
                            ],
                        ),
                        "401": _error_response(
                            "Signature or timestamp refused.",
                            [
                                "SIGNATURE_MISSING",
                                "SIGNATURE_MALFORMED",
                                "SIGNATURE_INVALID",
                                "TIMESTAMP_MISSING",
                                "TIMESTAMP_INVALID",
                                "TIMESTAMP_OUT_OF_TOLERANCE",
                            ],
                        ),
                        "405": _error_response("Only POST.", ["METHOD_NOT_ALLOWED"]),
                        "413": _error_response("Body too large.", ["PAYLOAD_TOO_LARGE"]),
                        "415": _error_response(
                            "Not UTF-8 application/json, or a Content-Encoding.",
                            ["UNSUPPORTED_MEDIA_TYPE"],
                        ),
                        "503": {
                            **_error_response(
                                "Kafka did not acknowledge in time; retry later.",
                                ["BROKER_UNAVAILABLE"],
                            ),
                            "headers": {
                                "Retry-After": {
                                    "description": "Seconds",
                                    "schema": {"type": "integer"},
                                }
                            },
                        },
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "The process is alive",
                    "responses": {"200": {"description": "Alive"}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Kafka (metadata with our topics) and PostgreSQL (SELECT 1) "
                    "reachable",
                    "responses": {
                        code: {
                            "description": text,
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": _REF.format(model="Readiness")}
                                }
                            },
                        }
                        for code, text in (("200", "Ready"), ("503", "NOT_READY"))
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus exposition",
                    "responses": {
                        "200": {
                            "description": "Metrics text",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            OPENAPI_PATH: {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1 document"}},
                }
            },
        },
        "components": {"schemas": schemas},
    }


def render_openapi() -> str:
    """The stored form: stable key order, so a diff shows real changes only."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_openapi(path: Path = STORED_OPENAPI) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_openapi(), encoding="utf-8")


if __name__ == "__main__":
    # `python -m worker.roles.receiver` refreshes schemas/openapi-receiver.json.
    write_openapi()
