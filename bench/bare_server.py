"""The ingest baseline: a bare aiohttp handler that reads the body and
answers 200, hosted the way the service hosts its receiver (one process,
AppRunner, no access log, on uvloop like the service). `python -m bench.bare_server --port N`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import uvloop
from aiohttp import web


async def webhook(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"status": "accepted"})


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def serve(host: str, port: int) -> None:
    app = web.Application()
    app.router.add_post("/webhooks/fanfare", webhook)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bare aiohttp 200 handler")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
