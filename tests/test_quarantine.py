"""Issue 17, quarantine at the edge: a signed delivery whose data the parser
refuses is kept (grants digested) before its 400, and once the parser is
fixed `quarantine replay` re-drives it into the commands topic, where it is
applied exactly once however often it is re-driven or re-sent.

The bug: a receiver build whose admission parser is too narrow (it refuses
consumer ids with a marker). The fix: the receiver restarted without it."""

from __future__ import annotations

import asyncio
import re
import subprocess
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY
from pydantic import ValidationError, field_validator

from tests.conftest import SECRET, service_env
from tests.helpers import ServiceProcess, admission_envelope, run_worker, unique, wait_for
from tests.isolated import isolated_settings, read_all
from tests.receiver_support import app_client, signed
from tests.stack import Stack
from worker.adapters import kafka
from worker.config import Settings
from worker.domain import ids
from worker.fanfare import events, quarantine
from worker.fanfare.envelope import AdmissionData, Delivery, Envelope
from worker.fanfare.forwarding import stored_digest
from worker.roles.receiver.app import build_app
from worker.roles.receiver.openapi import WEBHOOK_PATH

Client = TestClient[web.Request, web.Application]
NARROWED = "narrow-"
EXPERIENCE = "drop-quarantine"


class NarrowedAdmissionData(AdmissionData):
    """The parser bug: consumer ids with the marker are refused."""

    @field_validator("consumer_id")
    @classmethod
    def _narrow(cls, value: str) -> str:
        if value.startswith(NARROWED):
            raise ValueError("this build refuses the consumer id")
        return value


# --- the records, without a broker ---------------------------------------------


def _delivery() -> Delivery:
    return Delivery("dlv_1", "sha256:abc", datetime(2026, 11, 24, 18, 3, tzinfo=UTC))


def _refused(raw: dict[str, Any]) -> quarantine.QuarantinedDelivery:
    error = quarantine.QuarantineError(
        code="INVALID_EVENT_DATA", field="data.consumerId", message="m", reason="value_error"
    )
    return quarantine.quarantined(raw, Envelope.model_validate(raw), _delivery(), error)


def test_a_quarantined_delivery_holds_the_grant_digest_never_the_grant() -> None:
    raw = admission_envelope(EXPERIENCE, "c1", "grant-clear-1")
    written = quarantine.encode(_refused(raw))
    assert b"grant-clear-1" not in written.value
    assert written.key == raw["id"].encode()
    record = quarantine.decode(written.value)
    assert isinstance(record, quarantine.QuarantinedDelivery)
    stored = record.envelope["data"]["admissionToken"]
    assert stored_digest(stored) == ids.grant_digest("grant-clear-1")


def test_a_re_driven_delivery_becomes_the_command_the_receiver_would_have_produced() -> None:
    raw = admission_envelope(EXPERIENCE, "c1", "grant-clear-2")
    live = events.translate(Envelope.model_validate(raw), _delivery()).command
    record = quarantine.decode(quarantine.encode(_refused(raw)).value)
    assert isinstance(record, quarantine.QuarantinedDelivery)
    again = events.translate(record.stored_envelope(), record.delivery()).command
    assert again is not None
    assert again == live


def test_a_stored_grant_that_is_no_digest_is_refused_on_the_replay_path() -> None:
    raw = admission_envelope(EXPERIENCE, "c1", "grant-clear-3")
    delivery = Delivery("d", "s", datetime.now(UTC), grants_digested=True)
    with pytest.raises(ValueError, match="not a sha256"):
        events.translate(Envelope.model_validate(raw), delivery)
    with pytest.raises(ValidationError):
        quarantine.decode(b'{"type": "fanfare.quarantined"}')


# --- the receiver, the tool and the consumers ----------------------------------


async def _run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_worker, env, *args)


async def _post(client: Client, sent: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = orjson.dumps(sent)
    now = int(datetime.now(UTC).timestamp())
    async with client.post(WEBHOOK_PATH, data=body, headers=signed(body, SECRET, now)) as r:
        return r.status, await r.json()


def _quarantined_count(reason: str) -> float:
    labels = {"event_type": "queue.consumer.admitted", "reason": reason}
    return REGISTRY.get_sample_value("fanfare_reservations_quarantined_total", labels) or 0.0


async def _receive(iso: Settings, sent: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    producer = kafka.durable_producer(iso)
    await producer.start()
    try:
        async with app_client(build_app(iso, producer)) as client:
            return [await _post(client, s) for s in sent]
    finally:
        await producer.stop()


async def _applied(conn: asyncpg.Connection, event_id: str) -> None:
    """Wait until the command of `event_id` is in the inbox: every admission
    here has one key, so all written before it are decided too."""
    command_id = ids.command_id("fanfare", event_id)

    async def landed() -> bool:
        return bool(
            await conn.fetchval("SELECT count(*) FROM inbox WHERE command_id = $1", command_id)
        )

    await wait_for(landed, timeout=60)


async def _counts(conn: asyncpg.Connection, sent: list[dict[str, Any]]) -> tuple[int, int]:
    command_ids = [ids.command_id("fanfare", s["id"]) for s in sent]
    inbox = await conn.fetchval(
        "SELECT count(*) FROM inbox WHERE command_id = ANY($1::uuid[])", command_ids
    )
    admissions = await conn.fetchval("SELECT count(*) FROM admissions")
    return inbox, admissions


async def test_narrowed_parser_quarantines_and_replay_applies_once(
    stack: Stack, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with isolated_settings(stack, settings, partitions=2) as iso:
        conn = await asyncpg.connect(iso.database_url)
        env = service_env(iso, OPS_PORT="0")
        consumer = ServiceProcess(["consumer"], env)
        await consumer.start()
        try:
            await _scenario(iso, env, conn, monkeypatch)
        finally:
            await consumer.stop()
            await conn.close()


async def _scenario(
    iso: Settings, env: dict[str, str], conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    grants = [unique("grant-clear") for _ in range(3)]
    refused = [admission_envelope(EXPERIENCE, f"{NARROWED}c{i}", g) for i, g in enumerate(grants)]
    fine = admission_envelope(EXPERIENCE, "c-fine", unique("grant-clear"))
    before = _quarantined_count("value_error")

    # The buggy build: three admissions refused (one sent twice, as Fanfare
    # retries a 400), the fourth accepted.
    monkeypatch.setattr(events, "AdmissionData", NarrowedAdmissionData)
    answers = await _receive(iso, [*refused, refused[0], fine])
    monkeypatch.undo()
    assert [a[0] for a in answers] == [400, 400, 400, 400, 200], answers
    assert {a[1]["error"] for a in answers[:4]} == {"INVALID_EVENT_DATA"}
    assert {a[1]["field"] for a in answers[:4]} == {"data.consumerId"}
    assert _quarantined_count("value_error") - before == 4
    await _applied(conn, fine["id"])
    assert await _counts(conn, refused) == (0, 1)

    await _inspect(iso, env, grants)

    # The fix is deployed: re-drive everything, once.
    once = await _run_cli(env, "quarantine", "replay", "--all")
    assert once.returncode == 0, once.stderr
    assert len(re.findall(r"^re-driven ", once.stdout, re.M)) == 3, once.stdout
    assert len(re.findall(r"^skipped ", once.stdout, re.M)) == 1, once.stdout
    for sent in refused:
        await _applied(conn, sent["id"])
    assert await _counts(conn, refused) == (3, 4)

    await _second_time_nothing_new(iso, env, conn, refused)


async def _inspect(iso: Settings, env: dict[str, str], grants: list[str]) -> None:
    """Every refused delivery is kept, as its grant's digest and never the
    grant, and the tool lists and shows them."""
    stored = await read_all(iso, iso.quarantine_topic, expect_at_least=4)
    assert len(stored) == 4
    for grant in grants:
        assert not any(grant.encode() in value for value in stored)
        assert any(ids.grant_digest(grant).encode() in value for value in stored)

    listed = await _run_cli(env, "quarantine", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[-1] == "4 quarantined delivery(ies), 4 pending"
    entry = re.match(r"(\d+:\d+)\s", listed.stdout.splitlines()[1])
    assert entry is not None
    shown = await _run_cli(env, "quarantine", "show", "--offset", entry.group(1))
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout)["state"] == "pending"


async def _second_time_nothing_new(
    iso: Settings, env: dict[str, str], conn: asyncpg.Connection, refused: list[dict[str, Any]]
) -> None:
    """Neither a second replay nor Fanfare's retry to the fixed receiver
    applies anything new."""
    again = await _run_cli(env, "quarantine", "replay", "--all")
    assert again.returncode == 0, again.stderr
    assert "re-driven" not in again.stdout
    assert len(re.findall(r"^skipped ", again.stdout, re.M)) == 4, again.stdout
    relisted = await _run_cli(env, "quarantine", "list")
    assert relisted.stdout.splitlines()[-1] == "4 quarantined delivery(ies), 0 pending"

    sentinel = admission_envelope(EXPERIENCE, "c-sentinel", unique("grant-clear"))
    answers = await _receive(iso, [refused[1], sentinel])
    assert [a[1]["status"] for a in answers] == ["accepted", "accepted"]
    await _applied(conn, sentinel["id"])
    assert await _counts(conn, refused) == (3, 5)


async def test_a_quarantine_write_not_acknowledged_is_503(settings: Settings) -> None:
    """Nothing refused is dropped: without the quarantine's acknowledgement
    the answer is 503, so Fanfare retries."""
    unreachable = settings.model_copy(
        update={
            "quarantine_topic": f"{settings.quarantine_topic}.never-created",
            "produce_timeout_seconds": 1.0,
        }
    )
    bad = admission_envelope(EXPERIENCE, "c1", unique("grant-clear"))
    del bad["data"]["consumerId"]
    ((status, body),) = await _receive(unreachable, [bad])
    assert (status, body["error"]) == (503, "BROKER_UNAVAILABLE")
