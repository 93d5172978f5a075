"""Running the Schemathesis CLI with every check against a served document.

The CLI runs as a subprocess: its runner keeps its own event loop and
state, which sits badly inside this suite's asyncio session; a subprocess
also gives it a clean working directory for its files. A request the schema
allows may still meet a business refusal: the document marks those answers
`x-business-refusal`, and the configuration written from it lets positive
data get exactly those.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp

from worker.openapi import REFUSAL_EXTENSION

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


async def served_document(base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(base + "/openapi.json") as r:
        document: dict[str, Any] = await r.json()
        return document


async def run_all_checks(
    base: str,
    workdir: Path,
    *,
    max_examples: int,
    seed: int,
    options: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> tuple[int, str]:
    """`schemathesis run --checks all` against the document served at
    `base`; its exit code and output."""
    config = workdir / "schemathesis.toml"
    config.write_text(refusal_config(await served_document(base)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{base}/openapi.json",
        "--checks",
        "all",
        *options,
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
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
        str(workdir / "report"),
        cwd=workdir,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def passed_everything(returncode: int, text: str, minimum: int) -> tuple[int, int]:
    """Asserts a run tested every operation, at least `minimum` cases, all
    passed and no 5xx; returns (cases, operations)."""
    assert returncode == 0, text[-6000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", text)
    assert selected is not None, text[-3000:]
    assert selected.group(1) == selected.group(2), text[-3000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", text)
    assert generated is not None, text[-3000:]
    assert int(generated.group(1)) >= minimum, text[-3000:]
    assert generated.group(1) == generated.group(2), text[-3000:]
    assert "Server error" not in text
    return int(generated.group(1)), int(selected.group(1))
