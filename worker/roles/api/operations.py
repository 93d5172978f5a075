"""The open routes: liveness, readiness and metrics as every role serves them
(worker.roles.ops), and this API's OpenAPI document."""

from __future__ import annotations

from typing import Literal

from aiohttp import web

from worker.openapi import Operation, Reply
from worker.roles import ops
from worker.roles.api.http import api_state, json_answer
from worker.roles.api.models import ApiOut, ErrorBody

# The app's readiness checks: its Kafka producer and PostgreSQL.
READINESS = web.AppKey("api_readiness", ops.Readiness)


class Health(ApiOut):
    status: Literal["ok", "ready"]


async def readyz(request: web.Request) -> web.Response:
    return await request.app[READINESS].handle(request)


async def openapi_json(request: web.Request) -> web.Response:
    return json_answer(api_state(request).document)


ROUTES = (
    Operation(
        "GET",
        "/healthz",
        "healthz",
        "Liveness",
        ops.healthz,
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
        ops.metrics_endpoint,
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
