"""Schemathesis against the signed receiver (issue 17).

`python -m worker receiver` runs on topics of its own; Schemathesis loads
the document it serves at /openapi.json and sends what it derives from it,
with every check (`--checks all`): no 5xx, every status, header and body as
documented, schema-valid envelopes accepted and schema-violating ones
refused. Each webhook request is signed over its exact bytes with the test
secret and a current timestamp (tests/receiver_signing.py, which also adds
two checks: a signed request always passes verification, and a schema-valid
envelope meets no refusal but its event data's, the one business refusal
the document declares).
"""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import SECRET, service_env
from tests.faults_support import record
from tests.helpers import ServiceProcess
from tests.isolated import isolated_settings
from tests.schemathesis_support import passed_everything, run_all_checks
from tests.stack import Stack
from worker.config import Settings

pytestmark = pytest.mark.integration

HOOKS = Path(__file__).resolve().parent / "receiver_signing.py"
# Per operation and phase; 5 operations, most of the cases on the webhook.
MAX_EXAMPLES = 150
SEED = 20261205


async def _counts(base: str) -> dict[str, float]:
    """The receiver's own count of webhooks: verified, quarantined, and by
    outcome."""
    async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as r:
        text = await r.text()
    counts: dict[str, float] = {}
    for name, labels, value in re.findall(
        r"^fanfare_reservations_(?:webhook_)?(verified|requests|quarantined)_total"
        r"\{([^}]*)\} (\S+)$",
        text,
        re.M,
    ):
        outcome = re.search(r'outcome="([^"]+)"', labels)
        key = outcome.group(1) if outcome else name
        counts[key] = counts.get(key, 0.0) + float(value)
    return counts


async def test_every_signed_request_derived_from_the_document_is_answered_as_documented(
    stack: Stack, settings: Settings, tmp_path: Path
) -> None:
    async with isolated_settings(stack, settings) as iso:
        receiver = ServiceProcess(["receiver"], service_env(iso, OPS_PORT="0"))
        base = f"http://127.0.0.1:{receiver.port}"
        await receiver.start()
        try:
            returncode, text = await run_all_checks(
                base,
                tmp_path,
                max_examples=MAX_EXAMPLES,
                seed=SEED,
                env={"SCHEMATHESIS_HOOKS": str(HOOKS), "RECEIVER_SIGNING_SECRET": SECRET},
            )
            counts = await _counts(base)
        finally:
            await receiver.stop()
    requests, operations = passed_everything(returncode, text, minimum=100)
    # The signing reached the receiver, and the run met every kind of
    # answer past verification: commands made durable, deliveries
    # quarantined, events ignored, envelopes refused.
    assert counts.get("verified", 0) >= 100, counts
    for outcome in ("accepted", "quarantined", "invalid_body", "ignored", "not_acted_on"):
        assert counts.get(outcome, 0) >= 1, counts
    record(
        "Schemathesis against the signed receiver document (--checks all)",
        {"requests": requests, "operations": operations, **{k: int(v) for k, v in counts.items()}},
    )
