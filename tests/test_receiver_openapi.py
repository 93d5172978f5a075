"""The receiver's OpenAPI document is built from its models and table; it may
only gain detail over the hand-written one it replaced. FLOOR lists what that
one promised (every path, operation, status, header, parameter, body and
schema field); the built document must hold each of them as it was."""

from __future__ import annotations

import json
import time
from typing import Any, cast

import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer

from tests.conftest import SECRET
from tests.receiver_support import app_client, dumps, envelope, signed
from worker.config import Settings
from worker.fanfare.events import EVENTS
from worker.roles.receiver.app import build_app
from worker.roles.receiver.bodies import Error, WebhookAnswer
from worker.roles.receiver.openapi import STORED_OPENAPI, openapi_document, render_openapi

REF = "#/components/schemas/{}"
WEBHOOK = "/webhooks/fanfare"


def _json(model: str, media: str = "application/json") -> dict[str, Any]:
    return {"content": {media: {"schema": {"$ref": REF.format(model)}}}}


def _header(name: str, required: bool) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "schema": {"type": "string"}}


_STRING = {"type": "string"}
_IDENTIFIER = {
    "type": "string",
    "minLength": 1,
    "maxLength": 200,
    "pattern": "^[^\\x00-\\x1f\\x7f]+$",
}
_GRANT = {"type": "string", "minLength": 1, "maxLength": 8192}

FLOOR: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Fanfare reservation worker: webhook receiver", "version": "1"},
    "paths": {
        "/webhooks/fanfare": {
            "post": {
                "operationId": "receiveFanfareWebhook",
                "parameters": [
                    _header("X-Fanfare-Signature", True),
                    _header("X-Fanfare-Timestamp", True),
                    _header("X-Fanfare-Delivery-Id", False),
                    _header("X-Fanfare-Event-Type", False),
                ],
                "requestBody": {"required": True, **_json("Envelope")},
                "responses": {
                    "200": _json("WebhookAnswer"),
                    "400": _json("Error"),
                    "401": _json("Error"),
                    "405": _json("Error"),
                    "413": _json("Error"),
                    "415": _json("Error"),
                    "503": {
                        **_json("Error"),
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                    },
                },
            }
        },
        "/healthz": {"get": {"operationId": "healthz", "responses": {"200": {}}}},
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "responses": {"200": _json("Readiness"), "503": _json("Readiness")},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "responses": {"200": {"content": {"text/plain": {"schema": _STRING}}}},
            }
        },
        "/openapi.json": {"get": {"operationId": "openapi", "responses": {"200": {}}}},
    },
    "components": {
        "schemas": {
            "Envelope": {
                "required": ["id", "type", "timestamp", "organizationId", "data"],
                "properties": {
                    "id": _IDENTIFIER,
                    "type": _IDENTIFIER,
                    "timestamp": {"type": "string", "format": "date-time"},
                    "organizationId": _IDENTIFIER,
                    "data": {"type": "object"},
                },
            },
            "AdmissionData": {
                "required": ["queueId", "consumerId", "admissionToken"],
                "properties": {
                    "queueId": _IDENTIFIER,
                    "consumerId": _IDENTIFIER,
                    "admissionToken": _GRANT,
                    "admittedAt": {},
                },
            },
            "AdmissionEndData": {
                "required": ["queueId", "consumerId"],
                "properties": {"queueId": _IDENTIFIER, "consumerId": _IDENTIFIER},
            },
            "CompletionData": {
                "required": ["queueId", "consumerId", "orderId"],
                "properties": {
                    "queueId": _IDENTIFIER,
                    "consumerId": _IDENTIFIER,
                    "orderId": _IDENTIFIER,
                },
            },
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {"error": _STRING, "message": _STRING, "field": _STRING},
            },
            "WebhookAnswer": {
                "type": "object",
                "required": ["status", "eventId"],
                "properties": {
                    "status": {"type": "string", "enum": ["accepted", "ignored", "forwarded"]},
                    "eventId": _STRING,
                    "commandId": {"type": "string", "format": "uuid"},
                    "commandType": _STRING,
                    "reason": {
                        "type": "string",
                        "enum": ["unknown_event_type", "not_reservation_relevant", "no_order_id"],
                    },
                    "topic": _STRING,
                },
            },
            "Readiness": {
                "type": "object",
                "properties": {
                    "status": _STRING,
                    "error": _STRING,
                    "message": _STRING,
                    "checks": {"type": "object", "additionalProperties": _STRING},
                },
            },
        }
    },
}


def _holds(built: Any, floor: Any, where: str = "") -> list[str]:
    """Where `built` lacks or changes what `floor` promises. Objects may gain
    keys; `required` may gain names; other lists hold the same items in order."""
    if isinstance(floor, dict):
        if not isinstance(built, dict):
            return [f"{where}: not an object"]
        return [
            gap
            for key, value in floor.items()
            for gap in (
                _holds(built[key], value, f"{where}/{key}")
                if key in built
                else [f"{where}/{key}: missing"]
            )
        ]
    if isinstance(floor, list) and where.endswith("/required"):
        return [f"{where}: {name} no longer required" for name in floor if name not in built]
    if isinstance(floor, list):
        if not isinstance(built, list) or len(built) != len(floor):
            return [f"{where}: {built!r} is not {floor!r}"]
        return [
            gap for i, item in enumerate(floor) for gap in _holds(built[i], item, f"{where}/{i}")
        ]
    return [] if built == floor else [f"{where}: {built!r} is not {floor!r}"]


def _values(schema: dict[str, Any]) -> list[Any]:
    """The values a schema allows: `const` and a one-item `enum` say the same."""
    return [schema["const"]] if "const" in schema else list(schema["enum"])


def test_the_document_keeps_every_path_operation_status_header_and_field() -> None:
    document = openapi_document()
    assert _holds(document, FLOOR) == []
    readiness = document["components"]["schemas"]["Readiness"]["properties"]
    assert _values(readiness["status"]) == ["ready"]
    assert _values(readiness["error"]) == ["NOT_READY"]


def test_the_paths_and_operations_are_exactly_these() -> None:
    paths = openapi_document()["paths"]
    assert {(path, method) for path, ops in paths.items() for method in ops} == {
        ("/webhooks/fanfare", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    }


def test_the_event_catalogue_names_every_type_and_its_data() -> None:
    catalogue = openapi_document()["paths"]["/webhooks/fanfare"]["post"]["x-fanfare-event-types"]
    assert set(catalogue) == {
        *EVENTS,
        "*.admission_expired",
        "distribution.*",
        "(any other type)",
    }
    schemas = openapi_document()["components"]["schemas"]
    for event_type, spec in EVENTS.items():
        if spec.data_model is not None:
            ref = catalogue[event_type]["data"]["$ref"]
            assert ref == REF.format(spec.data_model.__name__)
            assert spec.data_model.__name__ in schemas


def test_the_stored_copy_is_what_the_code_builds() -> None:
    stored = STORED_OPENAPI.read_text(encoding="utf-8")
    assert stored == render_openapi(), "regenerate with: python -m worker.roles.receiver"
    assert json.loads(stored) == openapi_document()


def _settings(**changes: Any) -> Settings:
    return Settings(
        database_url="postgresql://unused/unused",
        kafka_bootstrap_servers="unused:9092",
        fanfare_webhook_secret=SECRET,
        **changes,
    )


def _app(settings: Settings, sender: Any) -> web.Application:
    # The app only holds the producer; `sender` stands in for Kafka.
    app = build_app(settings, cast(AIOKafkaProducer, object()))
    route = next(r for r in app.router.routes() if r.resource and r.resource.canonical == WEBHOOK)
    handler = cast(Any, route.handler).__self__
    handler.sender = sender
    return app


class _Acknowledging:
    async def send(self, *_: Any) -> None:
        return None


class _Failing:
    async def send(self, *_: Any) -> None:
        raise TimeoutError


def test_the_document_describes_every_route_the_app_serves() -> None:
    app = _app(_settings(), _Acknowledging())
    served = {r.canonical for r in app.router.resources()} - {"/{path}"}
    assert served == set(openapi_document()["paths"])


ADMISSION = {"queueId": "q_1", "consumerId": "c_1", "admissionToken": "grant"}


@pytest.mark.parametrize(
    ("forward", "sender", "event_type", "data", "headers", "status"),
    [
        (None, _Acknowledging(), "queue.consumer.admitted", ADMISSION, {}, 200),
        ("unknown.events", _Acknowledging(), "shop.opened", {}, {}, 200),
        (None, _Acknowledging(), "shop.opened", {}, {}, 200),
        (None, _Acknowledging(), "draw.completed", {}, {}, 200),
        (None, _Acknowledging(), "queue.consumer.admitted", {}, {}, 400),
        (
            None,
            _Acknowledging(),
            "queue.consumer.admitted",
            ADMISSION,
            {"X-Fanfare-Signature": "sha256=" + "0" * 64},
            401,
        ),
        (
            None,
            _Acknowledging(),
            "queue.consumer.admitted",
            ADMISSION,
            {"Content-Type": "text/plain"},
            415,
        ),
        (None, _Failing(), "queue.consumer.admitted", ADMISSION, {}, 503),
    ],
)
async def test_every_answer_has_the_documented_shape(
    forward: str | None,
    sender: Any,
    event_type: str,
    data: dict[str, Any],
    headers: dict[str, str],
    status: int,
) -> None:
    body = dumps(envelope(event_type, data))
    sent = signed(body, SECRET, int(time.time()))
    sent.update(headers)
    app = _app(_settings(forward_unknown_events_topic=forward), sender)
    async with app_client(app) as client, client.post(WEBHOOK, data=body, headers=sent) as r:
        assert r.status == status
        answer = await r.json()
        documented = openapi_document()["paths"][WEBHOOK]["post"]["responses"][str(status)]
        for header in documented.get("headers", {}):
            assert header in r.headers
    model = WebhookAnswer if status == 200 else Error
    model.model_validate(answer)
    assert set(answer) <= {f.alias or name for name, f in model.model_fields.items()}
