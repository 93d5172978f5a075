"""The webhook handler: read, verify, translate, make durable, answer.

Each step either hands the next one what it needs or raises `Refusal` with
the answer; a 2xx is given only once Kafka acknowledged the record, and so
is the 400 of a signed delivery whose data cannot be translated: it is
quarantined first (worker.fanfare.quarantine).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from worker.adapters import kafka_sender
from worker.clock import Clock
from worker.config import Settings
from worker.domain.commands import CommandBase, encode_command
from worker.fanfare import quarantine
from worker.fanfare.envelope import Delivery, Envelope, clean_delivery_id, field_path
from worker.fanfare.events import Translation, metric_label, translate
from worker.fanfare.forwarding import forwarded_record
from worker.fanfare.signature import Secret, SignatureError, verify
from worker.roles.ops import error
from worker.roles.receiver.answers import Answer, Refusal, log_answer, refused, unexpected
from worker.roles.receiver.intake import read_body
from worker.roles.receiver.meters import Meters

# Fanfare's own schedule decides when it retries; this is the hint for
# anything else (a proxy, a replay tool) and long enough for a broker
# failover.
RETRY_AFTER_SECONDS = 5


class WebhookHandler:
    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        slot: kafka_sender.ProducerSlot,
        sender: kafka_sender.AcknowledgedSender,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.slot = slot
        self.sender = sender
        self.secrets = [
            Secret.from_text(s.get_secret_value()) for s in settings.fanfare_webhook_secret
        ]
        self.meters = Meters()

    async def handle(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            self.meters.method_not_allowed()
            return error(405, "METHOD_NOT_ALLOWED", "Method Not Allowed", {"Allow": "POST"})
        started = time.perf_counter()
        delivery_id = clean_delivery_id(request.headers.get("X-Fanfare-Delivery-Id"))
        try:
            answer = await self._answer(request, delivery_id)
        except Refusal as refusal:
            answer = refusal.answer
        except Exception:
            return unexpected(request)
        elapsed = time.perf_counter() - started
        self.meters.record(answer.outcome, answer.event_type, elapsed)
        log_answer(answer, delivery_id, elapsed)
        return answer.response()

    async def _answer(self, request: web.Request, delivery_id: str | None) -> Answer:
        body = await read_body(request, self.settings)
        received_at = self.clock.now()
        secret = self._verified(request, body, received_at.timestamp())
        raw, envelope = _parsed(body)
        context = _context(request, envelope, secret)
        delivery = Delivery(
            delivery_id=delivery_id,
            secret_fingerprint=secret.fingerprint,
            received_at=received_at,
        )
        try:
            translation = translate(envelope, delivery)
        except ValidationError as exc:
            raise Refusal(await self._quarantine(exc, raw, envelope, delivery, context)) from None
        if translation.command is not None:
            return await self._produce_command(translation.command, envelope, context)
        topic = self.settings.forward_unknown_events_topic
        if translation.disposition == "unknown" and topic:
            return await self._forward(topic, raw, envelope, delivery, context)
        return _ignored(translation, envelope, context)

    def _verified(self, request: web.Request, body: bytes, now: float) -> Secret:
        try:
            secret = verify(
                self.secrets,
                request.headers.get("X-Fanfare-Timestamp"),
                request.headers.get("X-Fanfare-Signature"),
                body,
                now,
                self.settings.signature_tolerance_seconds,
            )
        except SignatureError as exc:
            raise Refusal(refused(401, exc.code, exc.message, "invalid_signature")) from None
        self.meters.verified(secret.fingerprint)
        return secret

    async def _produce_command(
        self, command: CommandBase, envelope: Envelope, context: dict[str, Any]
    ) -> Answer:
        command_type = str(getattr(command, "type", ""))
        command_id = str(command.command_id)
        context = {**context, "command_id": command_id, "command_type": command_type}
        label = metric_label(envelope.type)
        await self._send(
            self.settings.commands_topic,
            encode_command(command),
            command.partition_key().encode("utf-8"),
            None,
            context,
            label,
        )
        return Answer(
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

    async def _forward(
        self,
        topic: str,
        raw: dict[str, Any],
        envelope: Envelope,
        delivery: Delivery,
        context: dict[str, Any],
    ) -> Answer:
        label = metric_label(envelope.type)
        record = forwarded_record(raw, envelope, delivery)
        await self._send(topic, record.value, record.key, record.headers, context, label)
        return Answer(
            200,
            {"status": "forwarded", "eventId": envelope.id, "topic": topic},
            "forwarded",
            label,
            log_fields={**context, "topic": topic},
        )

    async def _quarantine(
        self,
        exc: ValidationError,
        raw: dict[str, Any],
        envelope: Envelope,
        delivery: Delivery,
        context: dict[str, Any],
    ) -> Answer:
        """The 400 for data Fanfare cannot fix, given once the delivery is
        in quarantine, where an operator can re-drive it after a fix. If
        Kafka does not acknowledge it, _send raises the 503 so Fanfare
        retries: a signed delivery is never dropped."""
        path, message = field_path(exc, "data")
        reason = quarantine.refusal_reason(exc)
        error = quarantine.QuarantineError(
            code="INVALID_EVENT_DATA", field=path, message=message, reason=reason
        )
        record = quarantine.encode(quarantine.quarantined(raw, envelope, delivery, error))
        label = metric_label(envelope.type)
        topic = self.settings.quarantine_topic
        await self._send(topic, record.value, record.key, record.headers, context, label)
        self.meters.quarantined(label, reason)
        answer = refused(
            400, "INVALID_EVENT_DATA", message, "invalid_body", field=path, quarantined=True,
            **context,
        )  # fmt: skip
        answer.event_type = label
        return answer

    async def _send(
        self,
        topic: str,
        value: bytes,
        key: bytes,
        headers: list[tuple[str, bytes]] | None,
        context: dict[str, Any],
        label: str,
    ) -> None:
        """Returns once Kafka acknowledged the record; raises Refusal (503)
        when it did not."""
        producer = self.slot.current
        try:
            await self.sender.send(producer, topic, key, value, headers)
        except Exception as exc:
            # Whatever went wrong, the record is not known to be durable, and
            # that is exactly what 503 tells Fanfare: try again later. A record
            # that lands after all is deduped downstream by its command id.
            self.meters.produce_error(type(exc).__name__)
            if kafka_sender.is_fatal(exc):
                # Fanfare's retry then finds a working producer.
                await self.slot.replace(producer, self.settings.produce_timeout_seconds)
            raise Refusal(_not_durable(exc, context, label)) from None


def _parsed(body: bytes) -> tuple[dict[str, Any], Envelope]:
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Refusal(
            refused(400, "MALFORMED_JSON", "body is not valid JSON", "invalid_body")
        ) from None
    try:
        return raw, Envelope.model_validate(raw)
    except ValidationError as exc:
        path, message = field_path(exc)
        raise Refusal(
            refused(400, "INVALID_ENVELOPE", message, "invalid_body", field=path)
        ) from None


def _context(request: web.Request, envelope: Envelope, secret: Secret) -> dict[str, Any]:
    """The fields every later log line of this event carries."""
    context: dict[str, Any] = {
        "event_id": envelope.id,
        "event_type": envelope.type,
        "secret": secret.fingerprint,
    }
    header_type = request.headers.get("X-Fanfare-Event-Type")
    if header_type is not None and header_type != envelope.type:
        # The header is not signed and the body is: the body decides.
        context["header_event_type_mismatch"] = True
    return context


def _ignored(translation: Translation, envelope: Envelope, context: dict[str, Any]) -> Answer:
    outcome = "ignored" if translation.disposition == "unknown" else "not_acted_on"
    return Answer(
        200,
        {"status": "ignored", "eventId": envelope.id, "reason": translation.reason},
        outcome,
        metric_label(envelope.type),
        log_fields={**context, "reason": translation.reason},
    )


def _not_durable(exc: Exception, context: dict[str, Any], label: str) -> Answer:
    answer = refused(
        503,
        "BROKER_UNAVAILABLE",
        "event not stored, retry later",
        "not_durable",
        produce_error=type(exc).__name__,
        **context,
    )
    answer.event_type = label
    answer.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return answer
