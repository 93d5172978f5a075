"""Operations endpoints every role serves: `/healthz` (the process is alive),
`/readyz` (its broker and database are reachable), `/metrics` (Prometheus).
HTTP roles mount them on their own app; consumer, relay and scheduler
processes without one serve them on OPS_HOST:OPS_PORT."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
from aiohttp import web
from aiokafka import AIOKafkaProducer

from worker import metrics
from worker.logs import get_logger

log = get_logger("worker.ops")

READINESS_TIMEOUT_SECONDS = 3.0

# An async callable that returns when its dependency is usable and raises
# (anything) when it is not.
ReadinessCheck = Callable[[], Awaitable[None]]


def error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    return web.json_response(
        {"error": code, "message": message, **extra}, status=status, headers=headers
    )


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


class Readiness:
    def __init__(self, checks: Mapping[str, ReadinessCheck]) -> None:
        self.checks = dict(checks)

    async def _one(self, name: str, check: ReadinessCheck) -> str:
        try:
            await asyncio.wait_for(check(), READINESS_TIMEOUT_SECONDS)
        except Exception as exc:
            log.warning("not_ready", check=name, error=type(exc).__name__, detail=str(exc)[:200])
            return type(exc).__name__
        return "ok"

    async def handle(self, _: web.Request) -> web.Response:
        names = list(self.checks)
        results = await asyncio.gather(*(self._one(n, self.checks[n]) for n in names))
        checks = dict(zip(names, results, strict=True))
        if all(r == "ok" for r in results):
            return web.json_response({"status": "ready", "checks": checks})
        failing = ", ".join(n for n, r in checks.items() if r != "ok")
        return error(503, "NOT_READY", f"not reachable: {failing}", checks=checks)


def kafka_ready(producer: AIOKafkaProducer, topics: list[str]) -> ReadinessCheck:
    """Fresh cluster metadata from a broker, with every topic we write to."""

    async def check() -> None:
        cluster = await producer.client.fetch_all_metadata()
        missing = [t for t in topics if not cluster.partitions_for_topic(t)]
        if missing:
            raise LookupError(f"topics missing: {', '.join(missing)}")

    return check


def database_ready(dsn: str) -> ReadinessCheck:
    """A fresh connection and `SELECT 1`: the receiver holds no pool, and a
    pool's idle connection would say nothing about a new one."""

    async def check() -> None:
        conn = await asyncpg.connect(dsn, timeout=READINESS_TIMEOUT_SECONDS)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    return check


async def metrics_endpoint(_: web.Request) -> web.Response:
    body, content_type = metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def build_ops_app(readiness: Mapping[str, ReadinessCheck]) -> web.Application:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", Readiness(readiness).handle)
    app.router.add_get("/metrics", metrics_endpoint)
    return app
