"""The README's "Try it by hand" commands, run as a new user would copy them,
against the session's running service: they must leave the consumer's hold
active with its window ahead of it, and `reserved = 1`, as the README says.

Only the addresses and the secret of the README's local stack are swapped for
the session's; every swapped value must still be in the README, so the test
fails when the walkthrough changes shape under it."""

from __future__ import annotations

import asyncio
import re
import subprocess
from datetime import UTC, datetime, timedelta

import asyncpg

from tests.conftest import SECRET
from tests.helpers import REPO, ServiceProcess, wait_for
from worker.config import Settings

SECTION = "### Try it by hand"


def walkthrough() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index(SECTION) :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "the walkthrough has no sh block"
    return block.group(1)


def for_session(script: str, settings: Settings, service: ServiceProcess) -> str:
    swaps = {
        "postgresql://postgres@127.0.0.1:15432/reservations": settings.database_url,
        "127.0.0.1:19092": settings.kafka_bootstrap_servers,
        "whsec_local_development_only": SECRET,
        "http://127.0.0.1:8080/": f"http://127.0.0.1:{service.port}/",
    }
    for local, session in swaps.items():
        assert local in script, f"the walkthrough no longer uses {local}"
        script = script.replace(local, session)
    return script


async def test_the_walkthrough_leaves_an_active_hold(
    service: ServiceProcess, settings: Settings, db: asyncpg.Pool
) -> None:
    script = for_session(walkthrough(), settings, service)
    started = datetime.now(UTC)
    # The service's environment carries the session's topic names, which the
    # README's commands take from the defaults on a local stack.
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPO,
        env=service.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"status":"accepted"' in done.stdout.replace(" ", ""), done.stdout

    async def held() -> asyncpg.Record | None:
        return await db.fetchrow(
            """SELECT s.reserved, r.status, r.quantity, r.expires_at
               FROM stock s JOIN reservations r USING (product_id, variant_id)
               WHERE s.product_id = 'sneaker-1' AND s.variant_id = '42'
                 AND r.experience_id = 'queue_demo' AND r.consumer_id = 'cons_demo'
                 AND r.status = 'active'"""
        )

    row = await wait_for(held)
    assert (row["reserved"], row["status"], row["quantity"]) == (1, "active", 1)
    # Admitted now: the default window (600 s) and buffer (60 s) lie ahead.
    assert row["expires_at"] > started + timedelta(seconds=600)
