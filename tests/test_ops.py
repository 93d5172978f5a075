"""Processes without an HTTP role of their own (consumer here) serve /healthz, /readyz and
/metrics on OPS_PORT, and the metrics move with the work done."""

from __future__ import annotations

import aiohttp

from tests import builders as b
from tests.conftest import service_env
from tests.helpers import ServiceProcess, free_port, unique, wait_for
from tests.isolated import isolated_settings, produce_bulk
from tests.stack import Stack
from worker.config import Settings


async def test_consumer_process_serves_ops_endpoints_and_counts_holds(
    stack: Stack, settings: Settings
) -> None:
    async with isolated_settings(stack, settings, partitions=2) as iso:
        port = free_port()
        proc = ServiceProcess(["consumer"], service_env(iso))
        proc.env["OPS_PORT"] = str(port)
        base = f"http://127.0.0.1:{port}"
        await proc.start()
        try:
            async with aiohttp.ClientSession() as http:

                async def answers(path: str) -> int:
                    try:
                        async with http.get(base + path) as r:
                            return r.status
                    except aiohttp.ClientError:
                        return 0

                assert await wait_for(lambda: answers("/healthz"), timeout=30) == 200
                assert await wait_for(lambda: answers("/readyz"), timeout=30) == 200
                exp, product = unique("queue"), unique("prod")
                await produce_bulk(
                    iso,
                    [
                        b.stock(product, 5),
                        b.cart(exp, "c1", b.line(product, 2)),
                    ],
                )

                # Stock is keyed by product (another partition): wait for it.
                async def stocked() -> bool:
                    async with http.get(base + "/metrics") as r:
                        text = await r.text()
                    return 'outcome="set",type="stock.set"' in text

                await wait_for(stocked, timeout=30)
                await produce_bulk(iso, [b.admit(exp, "c1", f"{exp}-g")])

                async def created_counted() -> bool:
                    async with http.get(base + "/metrics") as r:
                        text = await r.text()
                    return (
                        f'fanfare_reservations_holds_created_total{{experience="{exp}"}} 1.0'
                        in text
                    )

                await wait_for(created_counted, timeout=30)
                async with http.get(base + "/metrics") as r:
                    text = await r.text()
                assert "fanfare_reservations_batches_applied_total" in text
                assert 'fanfare_reservations_commands_applied_total{outcome="active"' in text
        finally:
            await proc.stop()
