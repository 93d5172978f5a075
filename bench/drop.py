"""`python -m bench.drop [--admissions N] [--units N]`: a hot-SKU drop (the
shape of the hot_sku stage) put on the commands topic of the configured
stack for the running service to decide, and left there: a recorded drop
to try `python -m worker simulate` on. The stock and carts go first and
are applied before the admissions, as the stage does. Prints the
experience id."""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from bench.stages.hot_sku import drop
from bench.workload import Record, check_valid, produce
from worker.config import Settings, load_settings


async def _applied(settings: Settings, records: list[Record], timeout: float) -> None:
    """Wait until the service has decided every one of `records`."""
    ids = [r.command_id for r in records]
    conn = await asyncpg.connect(settings.database_url)
    try:
        async with asyncio.timeout(timeout):
            while True:
                done = await conn.fetchval(
                    "SELECT count(*) FROM inbox WHERE command_id = ANY($1::uuid[])", ids
                )
                if done >= len(ids):
                    return
                await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def main(admissions: int, units: int, timeout: float) -> str:
    settings = load_settings()
    hot = drop(admissions, units)
    check_valid(hot.setup + hot.admissions)
    await produce(settings, hot.setup)
    await _applied(settings, hot.setup, timeout)
    await produce(settings, hot.admissions)
    await _applied(settings, hot.admissions, timeout)
    return hot.experience


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.drop", description=__doc__)
    parser.add_argument("--admissions", type=int, default=5_000)
    parser.add_argument("--units", type=int, default=1_000)
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the service"
    )
    args = parser.parse_args()
    print(asyncio.run(main(args.admissions, args.units, args.timeout)))
    sys.exit(0)
