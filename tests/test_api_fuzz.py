"""Schemathesis against the storefront/checkout API (issue 9).

`python -m worker api` (and a consumer, so writes get real outcomes) runs
on a database and topics of its own; Schemathesis loads the document the
API serves at /openapi.json and sends what it derives from it: examples,
boundary values, random valid and invalid requests, and stateful sequences
that follow the document's links, all with a valid bearer key. Every check
runs (`--checks all`): no 5xx, every status, header and body as documented,
schema-valid requests accepted and schema-violating ones refused. A request
the schema allows may still meet a business refusal (no such hold, an
order already sold): the document marks those answers `x-business-refusal`,
and the configuration written from it lets positive data get exactly those.

The CLI runs as a subprocess: its runner keeps its own event loop and
state, which sits badly inside this suite's asyncio session; a subprocess
also gives it a clean working directory for its files.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import OPERATOR_KEY, service_env
from tests.faults_support import record
from tests.helpers import ServiceProcess, wait_for
from tests.isolated import isolated_settings
from tests.stack import Stack
from worker.config import Settings
from worker.openapi import REFUSAL_EXTENSION

pytestmark = pytest.mark.integration

# Per operation and phase; 15 operations. About 1,000 requests, 20 s here.
MAX_EXAMPLES = 25
SEED = 20261126
RUN_TIMEOUT_S = 180
# What Schemathesis expects of a schema-valid request by default.
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]


def refusal_config(document: dict[str, Any]) -> str:
    """schemathesis.toml: per operation, the business refusals its document
    declares are answers a schema-valid request may get."""
    lines = []
    for operations in document["paths"].values():
        for operation in operations.values():
            refused = sorted(
                status
                for status, response in operation["responses"].items()
                if response.get(REFUSAL_EXTENSION) and status not in ACCEPTED
            )
            if refused:
                lines += [
                    "[[operations]]",
                    f"include-operation-id = {json.dumps(operation['operationId'])}",
                    "checks.positive_data_acceptance.expected-statuses = "
                    + json.dumps(ACCEPTED + refused),
                    "",
                ]
    return "\n".join(lines)


async def _document(base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(base + "/openapi.json") as r:
        document: dict[str, Any] = await r.json()
        return document


async def _healthy(base: str) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(base + "/healthz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def test_every_request_derived_from_the_document_is_answered_as_documented(
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
            config = tmp_path / "schemathesis.toml"
            config.write_text(refusal_config(await _document(api.api_url)))
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(config),
                "run",
                f"{api.api_url}/openapi.json",
                "--checks",
                "all",
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
        "Schemathesis against the API document (--checks all)",
        {
            "requests": int(generated.group(1)),
            "server_errors": 0,
            "operations": int(selected.group(1)),
        },
    )
