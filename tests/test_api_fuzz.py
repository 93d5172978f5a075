"""Schemathesis against the storefront/checkout API (issue 9).

`python -m worker api` (and a consumer, so writes get real outcomes) runs
on a database and topics of its own; Schemathesis loads the document the
API serves at /openapi.json and sends what it derives from it: examples,
boundary values, random valid and invalid requests, and stateful sequences
that follow the document's links, all with a valid bearer key. Every check
runs (`--checks all`): no 5xx, every status, header and body as documented,
schema-valid requests accepted and schema-violating ones refused, business
refusals as the document declares them (tests.schemathesis_support).
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.conftest import OPERATOR_KEY, service_env
from tests.faults_support import record
from tests.helpers import ServiceProcess, wait_for
from tests.isolated import isolated_settings
from tests.schemathesis_support import passed_everything, run_all_checks
from tests.stack import Stack
from worker.config import Settings

pytestmark = pytest.mark.integration

# Per operation and phase; 15 operations. About 1,000 requests, 20 s here.
MAX_EXAMPLES = 25
SEED = 20261126


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
            returncode, text = await run_all_checks(
                api.api_url,
                tmp_path,
                max_examples=MAX_EXAMPLES,
                seed=SEED,
                # The operator key may call every route, the operator ones too.
                options=("--header", f"Authorization: Bearer {OPERATOR_KEY}"),
            )
        finally:
            await consumer.stop()
            await api.stop()
    requests, operations = passed_everything(returncode, text, minimum=200)
    record(
        "Schemathesis against the API document (--checks all)",
        {"requests": requests, "server_errors": 0, "operations": operations},
    )
