"""Test helpers: signed webhooks, command production, polling, processes."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson

from worker.adapters import kafka
from worker.config import Settings
from worker.domain import ids
from worker.domain.commands import CommandBase, CommandSource, PutCart, SetStock, encode_command
from worker.domain.model import CartLine
from worker.fanfare.signature import sign

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]


def run_worker(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m worker ARGS` from this tree, as an operator runs a tool:
    its exit code and output, never raising on failure."""
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def now() -> datetime:
    return datetime.now(UTC)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def wait_for(
    probe: Callable[[], Awaitable[T]], timeout: float = 30.0, interval: float = 0.1
) -> T:
    """Poll until probe returns a truthy value; fail with the last value."""
    deadline = time.monotonic() + timeout
    last: T = await probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {last!r})")
        await asyncio.sleep(interval)
        last = await probe()
    return last


def json_lines(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """A log's non-empty lines: those that are one JSON object each, parsed,
    and the others as they are."""
    parsed: list[dict[str, Any]] = []
    other: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            other.append(line)
            continue
        if isinstance(entry, dict):
            parsed.append(entry)
        else:
            other.append(line)
    return parsed, other


def admission_envelope(
    experience_id: str,
    consumer_id: str,
    grant: str,
    *,
    event_id: str | None = None,
    event_type: str = "queue.consumer.admitted",
    admitted_at: datetime | None = None,
) -> dict[str, Any]:
    at = (admitted_at or now()).isoformat().replace("+00:00", "Z")
    id_field = {"queue": "queueId", "draw": "drawId", "auction": "auctionId"}[
        event_type.split(".")[0]
    ]
    return {
        "id": event_id or unique("whk"),
        "type": event_type,
        "timestamp": at,
        "organizationId": "org_test",
        "data": {
            id_field: experience_id,
            "consumerId": consumer_id,
            "admittedAt": at,
            "admissionToken": grant,
        },
    }


def signed_headers(
    body: bytes, secret: str, *, timestamp: int | None = None, delivery_id: str | None = None
) -> dict[str, str]:
    ts = str(timestamp if timestamp is not None else int(time.time()))
    return {
        "Content-Type": "application/json",
        "User-Agent": "Fanfare-Webhooks/1.0",
        "X-Fanfare-Delivery-Id": delivery_id or unique("dlv"),
        "X-Fanfare-Timestamp": ts,
        "X-Fanfare-Signature": sign(secret, ts, body),
    }


async def post_webhook(
    url: str, envelope: dict[str, Any], secret: str, **header_options: Any
) -> tuple[int, dict[str, Any]]:
    body = orjson.dumps(envelope)
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=signed_headers(body, secret, **header_options)) as r,
    ):
        return r.status, await r.json(content_type=None)


def _api_source(key: str) -> dict[str, Any]:
    return {
        "command_id": ids.command_id("api", key),
        "occurred_at": now(),
        "received_at": now(),
        "source": CommandSource(kind="api", source_id=key),
    }


def set_stock_command(product_id: str, on_hand: int, variant_id: str | None = None) -> SetStock:
    return SetStock(
        **_api_source(unique("stock")),
        product_id=product_id,
        variant_id=variant_id,
        on_hand=on_hand,
    )


def put_cart_command(experience_id: str, consumer_id: str, items: list[CartLine]) -> PutCart:
    return PutCart(
        **_api_source(unique("cart")),
        experience_id=experience_id,
        consumer_id=consumer_id,
        items=items,
    )


async def produce_commands(settings: Settings, commands: list[CommandBase]) -> None:
    """Tests write carts and stock the way the API will: as commands."""
    producer = kafka.durable_producer(settings)
    await producer.start()
    try:
        for command in commands:
            await producer.send_and_wait(
                settings.commands_topic,
                encode_command(command),
                key=command.partition_key().encode(),
            )
    finally:
        await producer.stop()


class ServiceProcess:
    """The real entry point in a subprocess, logs kept for failure reports."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        self.port = int(env["LISTEN_PORT"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = REPO / ".stack" / "test" / f"service-{self.port}.log"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/fanfare"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['API_PORT']}"

    async def start(self, timeout: float = 60.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "worker", *self.args],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if "receiver" in self.args or "serve" in self.args:
            await self._wait_healthy(timeout)

    async def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"service exited: {self.tail()}")
                try:
                    async with session.get(f"http://127.0.0.1:{self.port}/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"service not healthy within {timeout} s: {self.tail()}")

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        for _ in range(100):
            if self.proc.poll() is not None:
                return
            await asyncio.sleep(0.1)
        self.proc.kill()
