"""The storefront/checkout/operator HTTP API.

Writes never touch PostgreSQL: each becomes a command on the commands topic
and the answer is the outcome the consumer records (worker.roles.api.writes).
Reads come straight from PostgreSQL, through worker.adapters.queries.

One module per resource holds everything about its endpoints: the request
and response models only it uses, the handlers, and its rows of the route
table with their documented replies and errors:

    experiences.py  PUT/GET /v1/experiences/{experienceId}
    stock.py        PUT/GET /v1/stock
    carts.py        PUT/GET .../consumers/{consumerId}/cart, GET .../reservations
    checkout.py     POST /v1/checkout/validate, POST /v1/checkout/complete
    holds.py        GET /v1/holds (operators)
    releases.py     POST /v1/holds/release (operators)
    commands.py     GET /v1/commands/{commandId}
    operations.py   /healthz, /readyz, /metrics (worker.roles.ops), /openapi.json

Adding an endpoint to a resource touches that module only; a new resource is
a new module plus its line in routes.py, which assembles the table the app
registers and the OpenAPI document describes. Shared by all of them:

    models.py   wire conventions (camelCase, strict bodies) and shared models
    http.py     app state, errors and the status of each error code, auth,
                the middleware, body and parameter parsing
    writes.py   the write protocol: envelope, produce, wait, answer
    routes.py   the table, the document, `python -m worker.roles.api`
"""

from __future__ import annotations

import re

import asyncpg
from aiohttp import web
from aiokafka import AIOKafkaProducer

from worker.clock import Clock, SystemClock
from worker.config import Settings
from worker.logs import get_logger
from worker.openapi import Operation
from worker.roles import ops
from worker.roles.api.http import STATE, ApiKey, ApiState, middleware
from worker.roles.api.operations import READINESS
from worker.roles.api.routes import ROUTES, openapi_document
from worker.roles.api.writes import PENDING, PendingCommands

log = get_logger("worker.api")


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
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[middleware])
    keys = [ApiKey.from_entry(k.get_secret_value()) for k in settings.reservation_api_keys]
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
    app[PENDING] = PendingCommands()
    app[READINESS] = ops.Readiness(
        {
            "kafka": ops.kafka_ready(producer, [settings.commands_topic]),
            "database": ops.database_ready(settings.database_url),
        }
    )
    return app
