"""Process hosting: start the chosen roles, stop them cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from aiohttp import web
from aiokafka import AIOKafkaProducer

from worker.adapters import kafka, kafka_sender, postgres
from worker.config import Settings
from worker.logs import get_logger
from worker.roles.api import build_api
from worker.roles.consumer import CommandConsumer
from worker.roles.ops import ReadinessCheck, build_ops_app, database_ready, kafka_ready
from worker.roles.receiver.app import build_app
from worker.roles.relay import OutboxRelay
from worker.roles.scheduler import ExpiryScheduler

log = get_logger("worker.runtime")

ROLES = ("receiver", "api", "consumer", "relay", "scheduler")


@contextlib.asynccontextmanager
async def started_producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    producer = kafka.durable_producer(settings)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def started_pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await postgres.create_pool(settings.database_url, settings.db_pool_max)
    try:
        yield pool
    finally:
        await pool.close()


async def _serve_http(
    app: web.Application, host: str, port: int, stop: asyncio.Event, idle_timeout: float = 15.0
) -> None:
    # aiohttp closes a connection idle (or still sending its headers) for
    # keepalive_timeout; its default (an hour) lets slow clients hold sockets.
    # An answer sent before its request body arrived whole (a 408, a 413, a
    # refusal that never reads the body) closes the connection when it is
    # written: aiohttp would otherwise drain the rest of the body for up to
    # lingering_time (10 s) even after response.force_close() (aiohttp issue
    # #1800), holding the socket, and its drain logs a body that fails to
    # decode (a bad gzip) as an unhandled traceback. A body read whole keeps
    # the connection alive as before.
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=idle_timeout, lingering_time=0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("http_listening", host=host, port=port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def run_roles(settings: Settings, roles: tuple[str, ...], stop: asyncio.Event) -> None:
    await kafka.ensure_topics(settings)
    async with contextlib.AsyncExitStack() as stack:
        producer = await stack.enter_async_context(started_producer(settings))
        # The roles without a receiver of their own share one slot: a dead
        # producer is replaced once for all of them.
        producers = kafka_sender.ProducerSlot(producer, lambda: kafka.durable_producer(settings))
        stack.push_async_callback(producers.close, settings.produce_timeout_seconds)
        readiness = {
            "kafka": kafka_ready(producer, [settings.commands_topic]),
            "database": database_ready(settings.database_url),
        }
        tasks: list[Awaitable[None]] = []
        if "receiver" in roles:
            tasks.append(_receiver(settings, producer, readiness, stop))
        if {"api", "consumer", "relay", "scheduler"} & set(roles):
            pool = await stack.enter_async_context(started_pool(settings))
            tasks += _database_roles(settings, roles, pool, producer, producers, stop)
        if not {"receiver", "api"} & set(roles) and settings.ops_port:
            ops = build_ops_app(readiness)
            tasks.append(_serve_http(ops, settings.ops_host, settings.ops_port, stop))
        log.info("roles_started", roles=list(roles))
        await _until_first_failure(tasks, stop)


def _receiver(
    settings: Settings,
    producer: AIOKafkaProducer,
    readiness: dict[str, ReadinessCheck],
    stop: asyncio.Event,
) -> Awaitable[None]:
    """The webhook receiver, ready when every topic it writes to is."""
    topics = [settings.commands_topic, settings.quarantine_topic]
    if settings.forward_unknown_events_topic:
        topics.append(settings.forward_unknown_events_topic)
    app = build_app(
        settings,
        producer,
        readiness={**readiness, "kafka": kafka_ready(producer, topics)},
        producer_factory=lambda: kafka.durable_producer(settings),
    )
    return _serve_http(
        app, settings.listen_host, settings.listen_port, stop, settings.http_idle_timeout_seconds
    )


def _database_roles(
    settings: Settings,
    roles: tuple[str, ...],
    pool: asyncpg.Pool,
    producer: AIOKafkaProducer,
    producers: kafka_sender.ProducerSlot,
    stop: asyncio.Event,
) -> list[Awaitable[None]]:
    """The chosen roles that work against the database, sharing its pool."""
    tasks: list[Awaitable[None]] = []
    if "api" in roles:
        api = build_api(settings, producer, pool)
        tasks.append(
            _serve_http(
                api, settings.api_host, settings.api_port, stop, settings.http_idle_timeout_seconds
            )
        )
    if "consumer" in roles:
        consumer = CommandConsumer(
            settings, pool, producers, lambda: kafka.command_consumer(settings)
        )
        tasks.append(consumer.run(stop))
    if "relay" in roles:
        tasks.append(OutboxRelay(settings, pool, producers).run(stop))
    if "scheduler" in roles:
        tasks.append(ExpiryScheduler(settings, pool, producers).run(stop))
    return tasks


async def _until_first_failure(tasks: list[Awaitable[None]], stop: asyncio.Event) -> None:
    running = [asyncio.ensure_future(t) for t in tasks]
    try:
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        stop.set()
        await asyncio.gather(*running, return_exceptions=True)


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def main_async(
    settings: Settings, roles: tuple[str, ...], prepare: Callable[[], Awaitable[None]] | None = None
) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    if prepare is not None:
        await prepare()
    await run_roles(settings, roles, stop)
