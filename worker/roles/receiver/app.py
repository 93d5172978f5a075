"""The receiver's HTTP app: the webhook, the operations endpoints and the
OpenAPI document, every error in the service's JSON shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiokafka import AIOKafkaProducer

from worker.adapters import kafka_sender
from worker.clock import Clock, SystemClock
from worker.config import Settings
from worker.roles.ops import Readiness, ReadinessCheck, error, healthz, metrics_endpoint
from worker.roles.receiver.answers import unexpected
from worker.roles.receiver.openapi import OPENAPI_PATH, WEBHOOK_PATH, openapi_document
from worker.roles.receiver.webhook import WebhookHandler

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _get_only(handler: Handler) -> Handler:
    """A read-only route answering every other method, and its own failures,
    in the service's JSON shape."""

    async def gated(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return error(405, "METHOD_NOT_ALLOWED", "Method Not Allowed", {"Allow": "GET,HEAD"})
        try:
            return await handler(request)
        except Exception:
            return unexpected(request)

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
    producer_factory: kafka_sender.ProducerFactory | None = None,
) -> web.Application:
    """The receiver's HTTP app. `producer` must be started; with
    `producer_factory` a dead producer is replaced by a new one from it."""
    # The handler enforces the body limit itself (JSON 413, chunked bodies
    # included); aiohttp's own limit only guards request.read(), unused here.
    # No middleware: every path and method reaches one of the handlers below,
    # each answering errors (404, 405, 500) in the JSON shape itself; a
    # middleware cost the webhook path an eighth of its CPU.
    app = web.Application()
    slot = kafka_sender.ProducerSlot(producer, producer_factory)
    sender = kafka_sender.AcknowledgedSender(settings.produce_timeout_seconds)

    async def close_replacements(_: web.Application) -> None:
        await sender.close()
        await slot.close(settings.produce_timeout_seconds)

    app.on_cleanup.append(close_replacements)
    handler = WebhookHandler(settings, clock or SystemClock(), slot, sender)
    app.router.add_route("*", WEBHOOK_PATH, handler.handle)
    app.router.add_route("*", "/healthz", _get_only(healthz))
    app.router.add_route("*", "/readyz", _get_only(Readiness(readiness or {}).handle))
    app.router.add_route("*", "/metrics", _get_only(metrics_endpoint))
    app.router.add_route("*", OPENAPI_PATH, _get_only(openapi_endpoint))
    app.router.add_route("*", "/{path:.*}", not_found)
    return app
