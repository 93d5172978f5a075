"""Schemathesis against the storefront/checkout API (issue 9).

`python -m worker api` (and a consumer, so writes get real outcomes) runs
on a database and topics of its own; Schemathesis loads the document the
API serves at /openapi.json and sends what it derives from it: examples,
boundary values, random valid and invalid requests, and stateful sequences
that follow the document's links, all with a valid bearer key. The one
property asserted is the `not_a_server_error` check: no answer is a 5xx.

The CLI runs as a subprocess: its runner keeps its own event loop and
state, which sits badly inside this suite's asyncio session; a subprocess
also gives it a clean working directory for its files.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import OPERATOR_KEY, service_env
from tests.faults_support import record
from tests.helpers import ServiceProcess, wait_for
from tests.isolated import isolated_settings
from tests.stack import Stack
from worker.config import Settings

pytestmark = pytest.mark.integration

# Per operation and phase; 15 operations. About 1,000 requests, 20 s here.
MAX_EXAMPLES = 25
SEED = 20261126
RUN_TIMEOUT_S = 180


async def _healthy(base: str) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(base + "/healthz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def test_no_request_derived_from_the_document_gets_a_5xx(
    stack: Stack, settings: Settings, tmp_path: Path
) -> None:
    async with isolated_settings(stack, settings) as iso:
        env = service_env(iso, OPS_PORT="0", API_WAIT_SECONDS="1")
        api = ServiceProcess(["api"], env)
        consumer = ServiceProcess(["consumer"], service_env(iso, OPS_PORT="0"))
        await api.start()
        await consumer.start()
        try:
            await wait_for(lambda: _healthy(api.api_url), timeout=60)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                f"{api.api_url}/openapi.json",
                "--checks",
                "not_a_server_error",
                "--header",
                # The operator key may call every route, the operator ones too.
                f"Authorization: Bearer {OPERATOR_KEY}",
                "--max-examples",
                str(MAX_EXAMPLES),
                "--seed",
                str(SEED),
                "--workers",
                "2",
                "--request-timeout",
                "20",
                "--generation-database",
                "none",
                "--no-color",
                "--report",
                "junit",
                "--report-dir",
                str(tmp_path / "report"),
                cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise
        finally:
            await consumer.stop()
            await api.stop()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    # It did test: every operation, and a few hundred cases at least.
    selected = re.search(r"Selected: (\d+)/(\d+)", text)
    assert selected is not None, text[-3000:]
    assert selected.group(1) == selected.group(2), text[-3000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", text)
    assert generated is not None, text[-3000:]
    assert int(generated.group(1)) >= 200
    assert generated.group(1) == generated.group(2), text[-3000:]
    assert "Server error" not in text
    record(
        "Schemathesis against the API document (not_a_server_error)",
        {
            "requests": int(generated.group(1)),
            "server_errors": 0,
            "operations": int(selected.group(1)),
        },
    )
