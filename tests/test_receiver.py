"""The receiver app in-process against the real broker: every status code,
what lands on the topic (and what never does), the operations endpoints and
the stored OpenAPI document."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import pytest_asyncio
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiokafka import AIOKafkaProducer
from aiokafka.errors import OutOfOrderSequenceNumber
from prometheus_client import REGISTRY
from pydantic import SecretStr

from tests.conftest import OLD_SECRET, SECRET
from tests.helpers import free_port
from tests.receiver_support import (
    app_client,
    dumps,
    end_offsets,
    envelope,
    read_since,
    signed,
    total,
    with_topic,
)
from worker.adapters import kafka
from worker.clock import ManualClock
from worker.config import Settings
from worker.domain import ids
from worker.domain.commands import AdmitConsumer, CompleteCheckout, EndAdmission, decode_command
from worker.roles.ops import database_ready, kafka_ready
from worker.roles.receiver import webhook
from worker.roles.receiver.app import build_app
from worker.roles.receiver.openapi import STORED_OPENAPI, WEBHOOK_PATH, render_openapi

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
# Signing time of a test's requests, refreshed before each test: fixed at
# import, it went stale once the suite had run for longer than the 300 s
# tolerance before reaching these tests (seen under load), and every request
# the real clock checks then failed with TIMESTAMP_OUT_OF_TOLERANCE.
NOW = int(datetime.now(UTC).timestamp())


@pytest.fixture(autouse=True)
def _fresh_now() -> None:
    global NOW
    NOW = int(datetime.now(UTC).timestamp())


NEXT_SECRET = "whsec_test_next_5555555555"


def _grant() -> str:
    return "eyJ" + uuid.uuid4().hex + ".grant.sig"


def _admission(grant: str, experience: str = "queue_r", **extra: Any) -> dict[str, Any]:
    return envelope(
        "queue.consumer.admitted",
        {"queueId": experience, "consumerId": "cons_r", "admissionToken": grant, **extra},
    )


async def _post(
    client: Client,
    value: Any,
    secret: str = SECRET,
    *,
    timestamp: int | None = None,
    **options: Any,
) -> tuple[int, dict[str, Any]]:
    body = value if isinstance(value, bytes) else dumps(value)
    at = NOW if timestamp is None else timestamp
    async with client.post(
        WEBHOOK_PATH, data=body, headers=signed(body, secret, at, **options)
    ) as r:
        return r.status, await r.json()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def app_settings(settings: Settings) -> Settings:
    """A commands topic of this module only: end offsets move only for us."""
    return await with_topic(settings, f"{settings.commands_topic}.receiver")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def producer(app_settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    p = kafka.durable_producer(app_settings)
    await p.start()
    yield p
    await p.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def client(app_settings: Settings, producer: AIOKafkaProducer) -> AsyncIterator[Client]:
    readiness = {
        "kafka": kafka_ready(producer, [app_settings.commands_topic]),
        "database": database_ready(app_settings.database_url),
    }
    app = build_app(
        app_settings,
        producer,
        ManualClock(datetime.fromtimestamp(NOW, UTC)),
        readiness=readiness,
    )
    async with app_client(app) as c:
        yield c


# --- 200: accepted, and what lands ------------------------------------------


async def test_admission_is_accepted_once_durable_and_carries_only_the_digest(
    client: Client, app_settings: Settings
) -> None:
    before = await end_offsets(app_settings)
    grant = _grant()
    sent = _admission(grant, experience="queue_landing")
    status, body = await _post(client, sent, delivery_id="dlv_landing")
    assert status == 200, body
    assert body["status"] == "accepted"
    assert body["eventId"] == sent["id"]
    assert body["commandType"] == "admission.grant"
    assert body["commandId"] == str(ids.command_id("fanfare", sent["id"]))

    records = await read_since(app_settings, before)
    assert len(records) == 1
    record = records[0]
    assert record.key == b"queue_landing"
    assert grant.encode() not in (record.value or b"")
    command = decode_command(record.value or b"")
    assert isinstance(command, AdmitConsumer)
    assert command.grant_digest == ids.grant_digest(grant)
    assert command.source.delivery_id == "dlv_landing"
    assert command.source.secret_id is not None
    assert str(command.command_id) == body["commandId"]


@pytest.mark.parametrize(
    ("event_type", "data", "expected"),
    [
        ("draw.consumer.won", {"drawId": "d1", "consumerId": "c", "grant": "g"}, AdmitConsumer),
        ("auction.consumer.won", {"auctionId": "a1", "consumerId": "c", "token": "g"},
         AdmitConsumer),
        ("queue.consumer.left", {"queueId": "q1", "consumerId": "c"}, EndAdmission),
        ("queue.consumer.denied", {"queueId": "q1", "consumerId": "c"}, EndAdmission),
        ("draw.consumer.lost", {"drawId": "d1", "consumerId": "c"}, EndAdmission),
        ("queue.admission_expired", {"queueId": "q1", "consumerId": "c", "admissionGrant": "g"},
         EndAdmission),
        ("draw.admission_expired", {"drawId": "d1", "consumerId": "c"}, EndAdmission),
        ("queue.consumer.completed", {"queueId": "q1", "consumerId": "c", "orderId": "o1"},
         CompleteCheckout),
        ("order.created", {"experienceId": "e1", "consumerId": "c", "orderId": "o1"},
         CompleteCheckout),
        ("order.completed", {"queueId": "q1", "consumerId": "c", "orderId": 77},
         CompleteCheckout),
    ],
)  # fmt: skip
async def test_every_reservation_event_lands_as_its_command(
    client: Client, app_settings: Settings, event_type: str, data: dict[str, Any], expected: type
) -> None:
    before = await end_offsets(app_settings)
    status, body = await _post(client, envelope(event_type, data))
    assert status == 200, body
    assert body["status"] == "accepted"
    records = await read_since(app_settings, before)
    assert [type(decode_command(r.value or b"")) for r in records] == [expected]


async def test_a_retry_yields_the_same_command_id_and_a_regrant_the_same_digest(
    client: Client, app_settings: Settings
) -> None:
    """Dedupe downstream keys on these: the same event id (a Fanfare retry,
    new delivery id and timestamp) gives the same command id; the same grant
    under another event id gives the same grant digest."""
    grant = _grant()
    first = _admission(grant)
    again = _admission(grant)
    before = await end_offsets(app_settings)
    assert (await _post(client, first, delivery_id="dlv_a"))[0] == 200
    assert (await _post(client, first, delivery_id="dlv_b", timestamp=NOW - 10))[0] == 200
    assert (await _post(client, again))[0] == 200
    commands = [decode_command(r.value or b"") for r in await read_since(app_settings, before)]
    assert len(commands) == 3
    by_id: dict[str, list[Any]] = {}
    for c in commands:
        by_id.setdefault(c.source.source_id, []).append(c)
    assert {c.command_id for c in by_id[first["id"]]} == {ids.command_id("fanfare", first["id"])}
    assert {c.source.delivery_id for c in by_id[first["id"]]} == {"dlv_a", "dlv_b"}
    assert {c.grant_digest for c in commands if isinstance(c, AdmitConsumer)} == {
        ids.grant_digest(grant)
    }


async def test_body_decides_the_type_and_a_strange_delivery_id_is_dropped(
    client: Client, app_settings: Settings
) -> None:
    before = await end_offsets(app_settings)
    sent = _admission(_grant())
    status, _ = await _post(client, sent, event_type="order.cancelled", delivery_id="x" * 300)
    assert status == 200
    [record] = await read_since(app_settings, before)
    command = decode_command(record.value or b"")
    assert isinstance(command, AdmitConsumer)
    assert command.source.delivery_id is None


# --- 200 without effect -------------------------------------------------------


@pytest.fixture
def info_level_logs() -> Iterator[None]:
    """Logs filtered at info, as a service runs by default (the tests'
    unconfigured structlog lets every level through)."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        yield
    finally:
        structlog.configure(**saved)


async def test_unknown_and_inert_types_are_acknowledged_and_produce_nothing(
    client: Client, app_settings: Settings, info_level_logs: None
) -> None:
    before = await end_offsets(app_settings)
    cases = [
        ("queue.consumer.teleported", "unknown_event_type"),
        ("queue.consumer.entered", "not_reservation_relevant"),
        ("order.cancelled", "not_reservation_relevant"),
        ("distribution.started", "not_reservation_relevant"),
    ]
    with structlog.testing.capture_logs() as logs:
        for event_type, reason in cases:
            status, body = await _post(client, envelope(event_type, {"queueId": "q"}))
            assert status == 200, body
            assert (body["status"], body["reason"]) == ("ignored", reason)
    # Logged at the default level; accepted webhooks only at debug (below).
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("webhook_ignored", "info"),
        *[("webhook_not_acted_on", "info")] * 3,
    ]
    status, body = await _post(
        client, envelope("queue.consumer.completed", {"queueId": "q", "consumerId": "c"})
    )
    assert (status, body["reason"]) == (200, "no_order_id")
    # Positive signal: a real event after them lands, and is the only record.
    sent = _admission(_grant())
    with structlog.testing.capture_logs() as accepted_logs:
        assert (await _post(client, sent))[0] == 200
    assert accepted_logs == []
    records = await read_since(app_settings, before)
    assert [decode_command(r.value or b"").source.source_id for r in records] == [sent["id"]]


async def test_unknown_types_are_forwarded_with_credentials_digested_when_enabled(
    app_settings: Settings, producer: AIOKafkaProducer
) -> None:
    forward = await with_topic(app_settings, f"{app_settings.commands_topic}.unknown")
    forwarding = app_settings.model_copy(
        update={"forward_unknown_events_topic": forward.commands_topic}
    )
    grant = _grant()
    commands_before = await end_offsets(app_settings)
    forward_before = await end_offsets(forward)
    async with app_client(build_app(forwarding, producer)) as c:
        sent = envelope(
            "queue.consumer.teleported", {"queueId": "q", "admissionToken": grant, "n": 1}
        )
        status, body = await _post(c, sent)
        assert status == 200, body
        assert (body["status"], body["topic"]) == ("forwarded", forward.commands_topic)
        # Known types are still commands, never forwarded.
        assert (await _post(c, _admission(_grant())))[0] == 200
    [record] = await read_since(forward, forward_before)
    assert grant.encode() not in (record.value or b"")
    value = orjson.loads(record.value or b"")
    assert value["eventId"] == sent["id"]
    assert value["envelope"]["data"]["admissionToken"] == "sha256:" + ids.grant_digest(grant)
    assert value["envelope"]["data"]["n"] == 1
    assert record.key == b"org_test"
    commands = await read_since(app_settings, commands_before)
    assert [decode_command(r.value or b"").type for r in commands] == ["admission.grant"]


# --- 401 ----------------------------------------------------------------------


async def test_signature_and_timestamp_refusals_are_401_and_produce_nothing(
    client: Client, app_settings: Settings, producer: AIOKafkaProducer
) -> None:
    before = await end_offsets(app_settings)
    body = dumps(_admission(_grant()))
    good = signed(body, SECRET, NOW)
    cases: list[tuple[dict[str, str], str]] = [
        ({**good, "X-Fanfare-Signature": ""}, "SIGNATURE_MISSING"),
        ({k: v for k, v in good.items() if k != "X-Fanfare-Timestamp"}, "TIMESTAMP_MISSING"),
        ({**good, "X-Fanfare-Timestamp": "yesterday"}, "TIMESTAMP_INVALID"),
        ({**good, "X-Fanfare-Signature": "v1=abc"}, "SIGNATURE_MALFORMED"),
        (signed(body, "whsec_not_ours", NOW), "SIGNATURE_INVALID"),
        (signed(body, SECRET, NOW - 301), "TIMESTAMP_OUT_OF_TOLERANCE"),
        (signed(body, SECRET, NOW + 301), "TIMESTAMP_OUT_OF_TOLERANCE"),
        ({**signed(body, SECRET, NOW), "X-Fanfare-Timestamp": str(NOW + 1)}, "SIGNATURE_INVALID"),
    ]
    for headers, code in cases:
        async with client.post(WEBHOOK_PATH, data=body, headers=headers) as r:
            answer = await r.json()
            assert (r.status, answer["error"]) == (401, code), answer
            assert answer["message"]
    # Inside the tolerance in both directions, with the first and the second
    # active secret alike, the same body is accepted.
    for secret, ts in ((SECRET, NOW - 300), (OLD_SECRET, NOW + 300)):
        async with client.post(WEBHOOK_PATH, data=body, headers=signed(body, secret, ts)) as r:
            assert r.status == 200
    # Positive signal, then the count: only the two accepted requests landed.
    assert total(await end_offsets(app_settings)) == total(before) + 2


async def test_after_rotation_the_retired_secret_is_401_and_the_second_active_200(
    app_settings: Settings, producer: AIOKafkaProducer
) -> None:
    rotated = app_settings.model_copy(
        update={"fanfare_webhook_secret": [SecretStr(NEXT_SECRET), SecretStr(SECRET)]}
    )
    clock = ManualClock(datetime.fromtimestamp(NOW, UTC))
    async with app_client(build_app(rotated, producer, clock)) as c:
        status, body = await _post(c, _admission(_grant()), OLD_SECRET)
        assert (status, body["error"]) == (401, "SIGNATURE_INVALID")
        status, body = await _post(c, _admission(_grant()), SECRET)
        assert (status, body["status"]) == (200, "accepted")
        status, body = await _post(c, _admission(_grant()), NEXT_SECRET)
        assert (status, body["status"]) == (200, "accepted")


# --- 400 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code", "field"),
    [
        (b"{not json", "MALFORMED_JSON", None),
        (b"", "MALFORMED_JSON", None),
        (b'{"id": "\xff\xfe"}', "MALFORMED_JSON", None),
        (b"[1, 2, 3]", "INVALID_ENVELOPE", "body"),
        (dumps({"id": "x", "type": "queue.consumer.admitted"}), "INVALID_ENVELOPE", "timestamp"),
        (dumps({**envelope("order.created", {}), "timestamp": "2026-11-24"}),
         "INVALID_ENVELOPE", "timestamp"),
        # Fanfare's times are RFC 3339 strings: a Unix number (as a number or
        # as a string) is no date-time, nor is a time without seconds.
        (dumps({**envelope("order.created", {}), "timestamp": 0}),
         "INVALID_ENVELOPE", "timestamp"),
        (dumps({**envelope("order.created", {}), "timestamp": 1764007392.5}),
         "INVALID_ENVELOPE", "timestamp"),
        (dumps({**envelope("order.created", {}), "timestamp": "1764007392"}),
         "INVALID_ENVELOPE", "timestamp"),
        (dumps({**envelope("order.created", {}), "timestamp": "2026-11-24T18:03Z"}),
         "INVALID_ENVELOPE", "timestamp"),
        (dumps(envelope("queue.consumer.admitted",
                        {"queueId": "q", "consumerId": "c", "token": "t", "admittedAt": 0})),
         "INVALID_EVENT_DATA", "data.admittedAt"),
        (dumps(envelope("queue.consumer.admitted", {"queueId": "q", "consumerId": "c"})),
         "INVALID_EVENT_DATA", "data.admissionToken"),
        (dumps(envelope("queue.consumer.left", {"queueId": "q"})),
         "INVALID_EVENT_DATA", "data.consumerId"),
        (dumps(envelope("order.completed", {"queueId": "q", "consumerId": "c"})),
         "INVALID_EVENT_DATA", "data.orderId"),
    ],
)  # fmt: skip
async def test_malformed_bodies_are_400_with_the_field_path(
    client: Client, raw: bytes, code: str, field: str | None
) -> None:
    status, body = await _post(client, raw)
    assert (status, body["error"]) == (400, code), body
    assert body.get("field") == field
    if field:
        assert field in body["message"]


async def test_a_number_for_a_time_is_quarantined_in_the_data_and_not_in_the_envelope(
    client: Client,
) -> None:
    def quarantined() -> float:
        labels = {"event_type": "queue.consumer.admitted", "reason": "datetime_type"}
        return REGISTRY.get_sample_value("fanfare_reservations_quarantined_total", labels) or 0.0

    before = quarantined()
    in_envelope = {**_admission(_grant()), "timestamp": 0}
    status, body = await _post(client, in_envelope)
    assert (status, body["error"], body["field"]) == (400, "INVALID_ENVELOPE", "timestamp")
    assert quarantined() == before
    in_data = _admission(_grant(), admittedAt=1764007392)
    status, body = await _post(client, in_data)
    assert (status, body["error"], body["field"]) == (400, "INVALID_EVENT_DATA", "data.admittedAt")
    assert quarantined() == before + 1
    well_formed = _admission(_grant(), admittedAt="2026-11-24t18:03:12.5+01:00")
    assert (await _post(client, well_formed))[0] == 200


# --- 405, 404, 413, 415 -------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_other_methods_are_405(client: Client, method: str) -> None:
    async with client.request(method, WEBHOOK_PATH) as r:
        assert r.status == 405
        assert r.headers["Allow"] == "POST"
        assert (await r.json())["error"] == "METHOD_NOT_ALLOWED"


async def test_unknown_paths_are_404_json(client: Client) -> None:
    async with client.post("/webhooks/other", data=b"{}") as r:
        assert r.status == 404
        assert (await r.json())["error"] == "NOT_FOUND"
    async with client.delete("/") as r:
        assert r.status == 404
        assert (await r.json())["error"] == "NOT_FOUND"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json"])
async def test_read_routes_answer_reads_and_405_json_otherwise(client: Client, path: str) -> None:
    async with client.head(path) as r:
        assert r.status in (200, 503)
    async with client.post(path, data=b"{}") as r:
        assert r.status == 405
        assert r.headers["Allow"] == "GET,HEAD"
        assert (await r.json())["error"] == "METHOD_NOT_ALLOWED"


async def test_an_unexpected_error_is_500_json_and_logged_without_the_body(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(webhook, "verify", broken)
    grant = _grant()
    with structlog.testing.capture_logs() as logs:
        status, body = await _post(client, _admission(grant))
    assert (status, body["error"]) == (500, "INTERNAL_ERROR")
    assert [e["event"] for e in logs] == ["http_unhandled_error"]
    assert grant not in repr(logs)


async def test_oversized_bodies_are_413_declared_or_chunked(
    client: Client, app_settings: Settings
) -> None:
    limit = app_settings.max_body_bytes
    big = b'{"pad": "' + b"x" * limit + b'"}'
    async with client.post(WEBHOOK_PATH, data=big, headers=signed(big, SECRET, NOW)) as r:
        assert r.status == 413
        assert (await r.json())["error"] == "PAYLOAD_TOO_LARGE"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(limit // 4096 + 2):
            yield b" " * 4096

    headers = {**signed(b"", SECRET, NOW), "Content-Type": "application/json"}
    async with client.post(WEBHOOK_PATH, data=chunks(), headers=headers) as r:
        assert r.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert r.status == 413
        assert (await r.json())["error"] == "PAYLOAD_TOO_LARGE"


async def test_a_body_of_exactly_the_limit_is_accepted(
    client: Client, app_settings: Settings
) -> None:
    compact = dumps(_admission(_grant()))
    padded = compact + b" " * (app_settings.max_body_bytes - len(compact))
    assert len(padded) == app_settings.max_body_bytes
    status, body = await _post(client, padded)
    assert (status, body["status"]) == (200, "accepted")


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "application/json; charset=latin-1"},
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        # The standard library's header parser raises IndexError on this one
        # (found by test_receiver_fuzz): a 500 before.
        {"Content-Type": "application/json;b*"},
        {},
    ],
)
async def test_wrong_media_type_is_415(client: Client, headers: dict[str, str]) -> None:
    body = dumps(_admission(_grant()))
    sent = {**signed(body, SECRET, NOW), **headers}
    if "Content-Type" not in headers:
        del sent["Content-Type"]
    async with client.post(WEBHOOK_PATH, data=body, headers=sent) as r:
        assert r.status == 415
        assert (await r.json())["error"] == "UNSUPPORTED_MEDIA_TYPE"


async def test_json_with_utf8_charset_is_fine(client: Client) -> None:
    body = dumps(_admission(_grant()))
    sent = {**signed(body, SECRET, NOW), "Content-Type": "application/json; charset=UTF-8"}
    async with client.post(WEBHOOK_PATH, data=body, headers=sent) as r:
        assert r.status == 200


# --- 503 ----------------------------------------------------------------------


async def test_no_acknowledgement_within_the_deadline_is_503_with_retry_after(
    app_settings: Settings, producer: AIOKafkaProducer
) -> None:
    """A topic that does not exist (the broker creates none) is a write Kafka
    never acknowledges; the receiver gives up at its deadline."""
    unreachable = app_settings.model_copy(
        update={
            "commands_topic": f"{app_settings.commands_topic}.never-created",
            "produce_timeout_seconds": 1.0,
        }
    )
    errors_before = sum(
        s.value
        for m in REGISTRY.collect()
        if m.name == "fanfare_reservations_webhook_produce_errors"
        for s in m.samples
        if s.name.endswith("_total")
    )
    clock = ManualClock(datetime.fromtimestamp(NOW, UTC))
    async with app_client(build_app(unreachable, producer, clock)) as c:
        body = dumps(_admission(_grant()))
        async with c.post(WEBHOOK_PATH, data=body, headers=signed(body, SECRET, NOW)) as r:
            assert r.status == 503
            assert r.headers["Retry-After"].isdigit()
            assert (await r.json())["error"] == "BROKER_UNAVAILABLE"
    errors_after = sum(
        s.value
        for m in REGISTRY.collect()
        if m.name == "fanfare_reservations_webhook_produce_errors"
        for s in m.samples
        if s.name.endswith("_total")
    )
    assert errors_after == errors_before + 1


async def test_a_dead_producer_is_replaced_and_the_retry_lands(
    app_settings: Settings,
) -> None:
    """aiokafka's producer never sends again once its sender task died (after
    a broker outage, with OutOfOrderSequenceNumber; aio-libs/aiokafka#1017):
    every later send raises the same error. The receiver answers 503 and swaps
    in a new producer, so Fanfare's retry lands.

    The broker outage test meets this state only sometimes (it depends on
    timing), so here a real producer is put into it the way aiokafka's own
    sender does when it dies: its accumulator fails everything with the error.
    """
    dead = kafka.durable_producer(app_settings)
    await dead.start()
    dead._message_accumulator.fail_all(OutOfOrderSequenceNumber())
    replaced_before = REGISTRY.get_sample_value("fanfare_reservations_producer_replacements_total")
    app = build_app(
        app_settings,
        dead,
        ManualClock(datetime.fromtimestamp(NOW, UTC)),
        producer_factory=lambda: kafka.durable_producer(app_settings),
    )
    before = await end_offsets(app_settings)
    sent = _admission(_grant())
    async with app_client(app) as c:
        status, body = await _post(c, sent)
        assert (status, body["error"]) == (503, "BROKER_UNAVAILABLE")
        status, body = await _post(c, sent)
        assert (status, body.get("status")) == (200, "accepted"), body
    assert (
        REGISTRY.get_sample_value("fanfare_reservations_producer_replacements_total")
        == (replaced_before or 0) + 1
    )
    records = await read_since(app_settings, before)
    assert [decode_command(r.value or b"").source.source_id for r in records] == [sent["id"]]
    await dead.stop()  # handed in from outside: the app leaves it to its owner


# --- operations ---------------------------------------------------------------


async def test_healthz(client: Client) -> None:
    async with client.get("/healthz") as r:
        assert (r.status, await r.json()) == (200, {"status": "ok"})


async def test_readyz_reports_each_dependency(
    client: Client, app_settings: Settings, producer: AIOKafkaProducer
) -> None:
    async with client.get("/readyz") as r:
        assert r.status == 200
        assert await r.json() == {"status": "ready", "checks": {"kafka": "ok", "database": "ok"}}

    broken = {
        "kafka": kafka_ready(producer, [f"{app_settings.commands_topic}.absent"]),
        "database": database_ready(f"postgresql://nobody@127.0.0.1:{free_port()}/none"),
    }
    async with (
        app_client(build_app(app_settings, producer, readiness=broken)) as c,
        c.get("/readyz") as r,
    ):
        assert r.status == 503
        answer = await r.json()
        assert answer["error"] == "NOT_READY"
        assert answer["checks"]["kafka"] == "LookupError"
        assert answer["checks"]["database"] not in ("ok", "")


async def test_metrics_count_outcomes_by_event_type(client: Client) -> None:
    def accepted() -> float:
        value = REGISTRY.get_sample_value(
            "fanfare_reservations_webhook_requests_total",
            {"outcome": "accepted", "event_type": "queue.consumer.admitted"},
        )
        return value or 0.0

    def refused() -> float:
        value = REGISTRY.get_sample_value(
            "fanfare_reservations_webhook_requests_total",
            {"outcome": "invalid_signature", "event_type": "none"},
        )
        return value or 0.0

    before_ok, before_bad = accepted(), refused()
    assert (await _post(client, _admission(_grant())))[0] == 200
    assert (await _post(client, _admission(_grant()), "whsec_wrong"))[0] == 401
    assert (accepted(), refused()) == (before_ok + 1, before_bad + 1)
    async with client.get("/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    assert "fanfare_reservations_webhook_requests_total{" in text
    assert "fanfare_reservations_webhook_request_duration_seconds_bucket{" in text
    assert "fanfare_reservations_webhook_verified_total{" in text


async def test_served_openapi_equals_the_stored_copy(client: Client) -> None:
    async with client.get("/openapi.json") as r:
        assert r.status == 200
        served = await r.json()
    stored = STORED_OPENAPI.read_text(encoding="utf-8")
    hint = "regenerate with: python -m worker.roles.receiver"
    assert json.loads(stored) == served, hint
    assert stored == render_openapi(), hint
    post = served["paths"][WEBHOOK_PATH]["post"]
    assert set(post["responses"]) == {"200", "400", "401", "405", "413", "415", "503"}
    assert "queue.consumer.admitted" in post["x-fanfare-event-types"]


# --- logs ---------------------------------------------------------------------


async def test_logs_carry_ids_never_the_grant_the_secret_or_the_body(client: Client) -> None:
    grant = _grant()
    sent = _admission(grant, marker="body-only-marker")
    with structlog.testing.capture_logs() as logs:
        assert (await _post(client, sent, delivery_id="dlv_logged"))[0] == 200
        assert (await _post(client, sent, "whsec_wrong"))[0] == 401
        bad = envelope("queue.consumer.admitted", {"queueId": "q", "token": grant})
        assert (await _post(client, bad))[0] == 400
    accepted = [e for e in logs if e["event"] == "webhook_accepted"]
    assert len(accepted) == 1
    # Successes are followed at debug (one line each at info was a sixth of
    # the receiver's CPU under load); rejections stay warnings.
    assert accepted[0]["log_level"] == "debug"
    assert {e["log_level"] for e in logs if e["event"] == "webhook_rejected"} == {"warning"}
    assert accepted[0]["delivery_id"] == "dlv_logged"
    assert accepted[0]["event_id"] == sent["id"]
    assert accepted[0]["event_type"] == "queue.consumer.admitted"
    assert [e["error"] for e in logs if e["event"] == "webhook_rejected"] == [
        "SIGNATURE_INVALID",
        "INVALID_EVENT_DATA",
    ]
    text = repr(logs)
    for secret_text in (grant, SECRET, OLD_SECRET, "body-only-marker"):
        assert secret_text not in text
