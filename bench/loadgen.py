"""Webhook load generator in a process of its own (aiohttp client).

Every request is a fresh Fanfare admission envelope, signed at send time with
its own timestamp (HMAC-SHA256 over "{timestamp}.{raw body}", the service's
own `sign()`), its own event id and delivery id: no signature is ever reused.

- `closed`: C connections, each sending its next request when the previous
  answered, for D seconds (the ingest fallback when wrk is not installed).
  Writes a summary shaped like the wrk script's.
- `open`: a plan of admissions sent at a fixed rate from a given wall-clock
  start, whether or not earlier ones answered (no coordinated omission);
  writes, per request, when it was scheduled, sent and answered.

`python -m bench.loadgen closed|open --url ... --out FILE ...`; bounded in
count and time, 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlparse

import aiohttp
import orjson

from worker.fanfare.signature import sign

MAX_IN_FLIGHT = 2048


def envelope(event_id: str, experience: str, consumer: str, grant: str, at: float) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"
    return orjson.dumps(
        {
            "id": event_id,
            "type": "queue.consumer.admitted",
            "timestamp": stamp,
            "organizationId": "org_bench",
            "data": {
                "queueId": experience,
                "consumerId": consumer,
                "admittedAt": stamp,
                "admissionToken": grant,
            },
        }
    )


def signed(secret: str, body: bytes, delivery_id: str) -> dict[str, str]:
    ts = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        "User-Agent": "Fanfare-Webhooks/1.0",
        "X-Fanfare-Event-Type": "queue.consumer.admitted",
        "X-Fanfare-Delivery-Id": delivery_id,
        "X-Fanfare-Timestamp": ts,
        "X-Fanfare-Signature": sign(secret, ts, body),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def _check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        raise SystemExit(f"refusing to load a non-loopback address: {host}")


async def closed_loop(args: argparse.Namespace) -> dict[str, Any]:
    nonce = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    count = 0
    stop_at = time.monotonic() + args.duration
    connector = aiohttp.TCPConnector(limit=args.connections)
    timeout = aiohttp.ClientTimeout(total=10)

    async def one_connection(worker: int) -> None:
        nonlocal count
        n = 0
        while time.monotonic() < stop_at and count < args.max_requests:
            n += 1
            count += 1
            uid = f"{nonce}-{worker}-{n}"
            body = envelope(
                f"whk-{uid}",
                f"bench_q{n % args.experiences}",
                f"c-{uid}",
                f"grant-{uid}",
                time.time(),
            )
            started = time.perf_counter()
            try:
                async with session.post(
                    args.url, data=body, headers=signed(args.secret, body, f"dlv-{uid}")
                ) as r:
                    await r.read()
                    if r.status >= 400:
                        errors["status"] += 1
            except TimeoutError:
                errors["timeout"] += 1
                continue
            except aiohttp.ClientError:
                errors["read"] += 1
                continue
            latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(one_connection(i) for i in range(args.connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    us = [v * 1e6 for v in latencies]
    return {
        "requests": count,
        "duration_us": int(elapsed * 1e6),
        "errors": errors,
        "latency_us": {
            "min": us[0] if us else 0,
            "mean": sum(us) / len(us) if us else 0,
            "max": us[-1] if us else 0,
            "p50": percentile(us, 50),
            "p75": percentile(us, 75),
            "p90": percentile(us, 90),
            "p99": percentile(us, 99),
            "p999": percentile(us, 99.9),
        },
    }


async def open_loop(args: argparse.Namespace) -> dict[str, Any]:
    plan: list[list[str]] = orjson.loads(open(args.plan, "rb").read())  # noqa: ASYNC230, SIM115
    count = min(len(plan), int(args.rate * args.duration))
    interval = 1.0 / args.rate
    rows: list[list[Any]] = []
    in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
    connector = aiohttp.TCPConnector(limit=args.connections)
    timeout = aiohttp.ClientTimeout(total=30)
    nonce = uuid.uuid4().hex[:8]

    async def send(i: int, scheduled: float) -> None:
        experience, consumer, grant = plan[i]
        async with in_flight:
            body = envelope(f"whk-{nonce}-{i}", experience, consumer, grant, time.time())
            headers = signed(args.secret, body, f"dlv-{nonce}-{i}")
            sent = time.time()
            status = 0
            try:
                async with session.post(args.url, data=body, headers=headers) as r:
                    await r.read()
                    status = r.status
            except (TimeoutError, aiohttp.ClientError):
                status = -1
            rows.append([i, scheduled, sent, time.time(), status])

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
        tasks: list[asyncio.Task[None]] = []
        for i in range(count):
            scheduled = args.start_at + i * interval
            delay = scheduled - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(i, scheduled)))
        await asyncio.gather(*tasks)
    ok = sum(1 for r in rows if 200 <= r[4] < 300)
    rows.sort()
    return {
        "planned": count,
        "accepted": ok,
        "failed": len(rows) - ok,
        "columns": ["i", "scheduled", "sent", "answered", "status"],
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="signed webhook load generator")
    parser.add_argument("mode", choices=["closed", "open"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--experiences", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=2_000_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--plan", help="open mode: JSON list of [experience, consumer, grant]")
    parser.add_argument("--start-at", type=float, default=0.0, help="open mode: wall-clock start")
    args = parser.parse_args(argv)
    _check_loopback(args.url)
    args.duration = min(args.duration, 600.0)  # bounded, whatever the caller asked
    result = asyncio.run(closed_loop(args) if args.mode == "closed" else open_loop(args))
    with open(args.out, "wb") as fh:
        fh.write(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
