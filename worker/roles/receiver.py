"""The webhook receiver: verify, validate, translate, make durable, answer.

A 2xx means the command is acknowledged by Kafka (acks=all); when that cannot
be had within the deadline the answer is 503 with Retry-After, so Fanfare's
retries carry the event later and nothing acknowledged is ever lost.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from worker.clock import Clock, SystemClock
from worker.config import Settings
from worker.domain.commands import CommandBase, encode_command
from worker.fanfare.signature import Secret, SignatureError, verify
from worker.fanfare.webhooks import Delivery, Envelope, translate
from worker.logs import get_logger

log = get_logger("worker.receiver")

PRODUCER_KEY = web.AppKey("producer", AIOKafkaProducer)


def error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


def _field_path(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return ".".join(str(p) for p in first["loc"]) or "body"


class WebhookHandler:
    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.secrets = [
            Secret.from_text(s.get_secret_value()) for s in settings.fanfare_webhook_secret
        ]

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        delivery_id = request.headers.get("X-Fanfare-Delivery-Id")
        bound = log.bind(delivery_id=delivery_id)
        body = await request.read()
        try:
            secret = verify(
                self.secrets,
                request.headers.get("X-Fanfare-Timestamp"),
                request.headers.get("X-Fanfare-Signature"),
                body,
                self.clock.now().timestamp(),
                self.settings.signature_tolerance_seconds,
            )
        except SignatureError as exc:
            bound.warning("webhook_rejected", status=401, error=exc.code)
            return error(401, exc.code, exc.message)

        try:
            envelope = Envelope.model_validate_json(body)
        except ValidationError as exc:
            path = _field_path(exc)
            bound.warning("webhook_rejected", status=400, error="INVALID_ENVELOPE", field=path)
            return error(400, "INVALID_ENVELOPE", f"invalid envelope at {path}")
        bound = bound.bind(event_id=envelope.id, event_type=envelope.type)

        delivery = Delivery(
            delivery_id=delivery_id,
            secret_fingerprint=secret.fingerprint,
            received_at=self.clock.now(),
        )
        try:
            command = translate(envelope, delivery)
        except ValidationError as exc:
            path = "data." + _field_path(exc)
            bound.warning("webhook_rejected", status=400, error="INVALID_EVENT_DATA", field=path)
            return error(400, "INVALID_EVENT_DATA", f"invalid event data at {path}")
        if command is None:
            bound.info("webhook_ignored", status=200, reason="unknown_event_type")
            return web.json_response({"status": "ignored", "eventId": envelope.id})

        try:
            await self._produce(request.app[PRODUCER_KEY], command)
        except (TimeoutError, KafkaError) as exc:
            bound.error("webhook_not_durable", status=503, error=type(exc).__name__)
            return error(
                503, "BROKER_UNAVAILABLE", "event not stored, retry later", **{"Retry-After": "5"}
            )
        bound.info(
            "webhook_accepted",
            status=200,
            command_id=str(command.command_id),
            command_type=getattr(command, "type", ""),
            secret=secret.fingerprint,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return web.json_response(
            {"status": "accepted", "eventId": envelope.id, "commandId": str(command.command_id)}
        )

    async def _produce(self, producer: AIOKafkaProducer, command: CommandBase) -> None:
        await asyncio.wait_for(
            producer.send_and_wait(
                self.settings.commands_topic,
                encode_command(command),
                key=command.partition_key().encode("utf-8"),
            ),
            timeout=self.settings.produce_timeout_seconds,
        )


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(
    settings: Settings, producer: AIOKafkaProducer, clock: Clock | None = None
) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[PRODUCER_KEY] = producer
    handler = WebhookHandler(settings, clock or SystemClock())
    app.router.add_post("/webhooks/fanfare", handler.handle)
    app.router.add_get("/healthz", healthz)
    return app
