"""The receiver's OpenAPI 3.1 document.

python -m worker.roles.receiver    # (re)write schemas/openapi-receiver.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

from worker.fanfare.envelope import AdmissionData, AdmissionEndData, CompletionData, Envelope
from worker.fanfare.events import EVENTS, NOT_ACTED_ON_PREFIXES

WEBHOOK_PATH = "/webhooks/fanfare"
OPENAPI_PATH = "/openapi.json"
STORED_OPENAPI = Path(__file__).resolve().parents[3] / "schemas" / "openapi-receiver.json"

_REF = "#/components/schemas/{model}"


def _error_response(description: str, codes: list[str]) -> dict[str, Any]:
    return {
        "description": description + " Codes: " + ", ".join(codes) + ".",
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}},
    }


def _header(name: str, required: bool, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


def _event_catalogue() -> dict[str, Any]:
    catalogue: dict[str, Any] = {}
    for event_type, spec in EVENTS.items():
        entry: dict[str, Any] = {"becomes": spec.becomes}
        if spec.data_model is not None:
            entry["data"] = {"$ref": _REF.format(model=spec.data_model.__name__)}
        catalogue[event_type] = entry
    catalogue["*.admission_expired"] = {
        "becomes": "admission.end (expired, admission_expired); also *.admission.expired",
        "data": {"$ref": _REF.format(model="AdmissionEndData")},
    }
    for prefix in NOT_ACTED_ON_PREFIXES:
        catalogue[prefix + "*"] = {"becomes": "acknowledged, not acted on"}
    catalogue["(any other type)"] = {
        "becomes": "acknowledged and counted; produced to FORWARD_UNKNOWN_EVENTS_TOPIC if set"
    }
    return catalogue


def openapi_document() -> dict[str, Any]:
    """The receiver's HTTP contract. Independent of settings, so the copy in
    schemas/ is the same for every deployment (limits are given as defaults)."""
    _, generated = models_json_schema(
        [
            (Envelope, "validation"),
            (AdmissionData, "validation"),
            (AdmissionEndData, "validation"),
            (CompletionData, "validation"),
        ],
        ref_template=_REF,
    )
    schemas: dict[str, Any] = dict(generated["$defs"])
    schemas["Error"] = {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "Stable error code"},
            "message": {"type": "string"},
            "field": {"type": "string", "description": "Failing field path (400 only)"},
        },
    }
    schemas["WebhookAnswer"] = {
        "type": "object",
        "required": ["status", "eventId"],
        "properties": {
            "status": {"type": "string", "enum": ["accepted", "ignored", "forwarded"]},
            "eventId": {"type": "string"},
            "commandId": {"type": "string", "format": "uuid"},
            "commandType": {"type": "string"},
            "reason": {
                "type": "string",
                "enum": ["unknown_event_type", "not_reservation_relevant", "no_order_id"],
            },
            "topic": {"type": "string"},
        },
    }
    schemas["Readiness"] = {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ready"]},
            "error": {"type": "string", "enum": ["NOT_READY"]},
            "message": {"type": "string"},
            "checks": {
                "type": "object",
                "additionalProperties": {
                    "type": "string",
                    "description": "ok, or the class of the error that failed the check",
                },
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Fanfare reservation worker: webhook receiver",
            "version": "1",
            "description": (
                "Receives Fanfare webhooks, verifies them, and makes each one durable in "
                "Kafka as a typed command before answering 2xx."
            ),
        },
        "paths": {
            WEBHOOK_PATH: {
                "post": {
                    "operationId": "receiveFanfareWebhook",
                    "summary": "A Fanfare webhook delivery",
                    "description": (
                        "HMAC-SHA256 over `{X-Fanfare-Timestamp}.{raw body}` with any active "
                        "secret; timestamps more than SIGNATURE_TOLERANCE_SECONDS (default "
                        "300) from now in either direction are refused. Bodies above "
                        "MAX_BODY_BYTES (default 262144) are refused. A 2xx means durable."
                    ),
                    "parameters": [
                        _header("X-Fanfare-Signature", True, "sha256=<64 hex>; several allowed"),
                        _header("X-Fanfare-Timestamp", True, "Unix seconds of the signature"),
                        _header("X-Fanfare-Delivery-Id", False, "Recorded and logged"),
                        _header("X-Fanfare-Event-Type", False, "Informational; body decides"),
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": _REF.format(model="Envelope")}}
                        },
                    },
                    "x-fanfare-event-types": _event_catalogue(),
                    "responses": {
                        "200": {
                            "description": "Durable in Kafka (accepted or forwarded), or "
                            "acknowledged without effect (ignored)",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": _REF.format(model="WebhookAnswer")}
                                }
                            },
                        },
                        "400": _error_response(
                            "Body cut short or badly framed, not JSON, or the envelope or event "
                            "data is invalid; `field` names the failing path.",
                            [
                                "MALFORMED_BODY",
                                "MALFORMED_JSON",
                                "INVALID_ENVELOPE",
                                "INVALID_EVENT_DATA",
                            ],
                        ),
                        "401": _error_response(
                            "Signature or timestamp refused.",
                            [
                                "SIGNATURE_MISSING",
                                "SIGNATURE_MALFORMED",
                                "SIGNATURE_INVALID",
                                "TIMESTAMP_MISSING",
                                "TIMESTAMP_INVALID",
                                "TIMESTAMP_OUT_OF_TOLERANCE",
                            ],
                        ),
                        "405": _error_response("Only POST.", ["METHOD_NOT_ALLOWED"]),
                        "413": _error_response("Body too large.", ["PAYLOAD_TOO_LARGE"]),
                        "415": _error_response(
                            "Not UTF-8 application/json, or a Content-Encoding.",
                            ["UNSUPPORTED_MEDIA_TYPE"],
                        ),
                        "503": {
                            **_error_response(
                                "Kafka did not acknowledge in time; retry later.",
                                ["BROKER_UNAVAILABLE"],
                            ),
                            "headers": {
                                "Retry-After": {
                                    "description": "Seconds",
                                    "schema": {"type": "integer"},
                                }
                            },
                        },
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "The process is alive",
                    "responses": {"200": {"description": "Alive"}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Kafka (metadata with our topics) and PostgreSQL (SELECT 1) "
                    "reachable",
                    "responses": {
                        code: {
                            "description": text,
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": _REF.format(model="Readiness")}
                                }
                            },
                        }
                        for code, text in (("200", "Ready"), ("503", "NOT_READY"))
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus exposition",
                    "responses": {
                        "200": {
                            "description": "Metrics text",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            OPENAPI_PATH: {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1 document"}},
                }
            },
        },
        "components": {"schemas": schemas},
    }


def render_openapi() -> str:
    """The stored form: stable key order, so a diff shows real changes only."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_openapi(path: Path = STORED_OPENAPI) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_openapi(), encoding="utf-8")
