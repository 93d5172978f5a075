"""The receiver's OpenAPI 3.1 document, built from the models it reads and
answers with (worker.fanfare.envelope, bodies) and from the table of its
operations below. Independent of settings, so the copy in schemas/ is the
same for every deployment (limits are given as defaults).

    python -m worker.roles.receiver    # (re)write schemas/openapi-receiver.json
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from worker.fanfare.envelope import AdmissionEndData, Envelope
from worker.fanfare.events import (
    EVENTS,
    EXPIRY_BECOMES,
    EXPIRY_SUFFIXES,
    NOT_ACTED_ON,
    NOT_ACTED_ON_PREFIXES,
)
from worker.openapi import (
    JSON_SCHEMA_DIALECT,
    REF_TEMPLATE,
    JsonObject,
    Reply,
    render_json,
    responses,
)
from worker.roles.receiver.bodies import Error, Health, Readiness, WebhookAnswer

WEBHOOK_PATH = "/webhooks/fanfare"
OPENAPI_PATH = "/openapi.json"
STORED_OPENAPI = Path(__file__).resolve().parents[3] / "schemas" / "openapi-receiver.json"

TITLE = "Fanfare reservation worker: webhook receiver"
DESCRIPTION = (
    "Receives Fanfare webhooks, verifies them, and makes each one durable in "
    "Kafka as a typed command before answering 2xx."
)


@dataclass(frozen=True)
class Header:
    """A request header the operation reads."""

    name: str
    required: bool
    description: str

    def parameter(self) -> JsonObject:
        return {
            "name": self.name,
            "in": "header",
            "required": self.required,
            "description": self.description,
            "schema": {"type": "string"},
        }


@dataclass(frozen=True)
class Endpoint:
    """One operation of the receiver as the document describes it."""

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    replies: tuple[Reply, ...]
    description: str = ""
    headers: tuple[Header, ...] = ()
    body: type[BaseModel] | None = None
    extensions: Mapping[str, Any] = field(default_factory=dict)


def _refusal(
    status: int,
    description: str,
    *codes: str,
    headers: tuple[str, ...] = (),
    business: bool = False,
) -> Reply:
    return Reply(
        status,
        f"{description} Codes: {', '.join(codes)}.",
        Error,
        headers=headers,
        refusal=business,
    )


def _event_catalogue() -> JsonObject:
    """What each event type becomes, and the `data` it must carry."""
    catalogue: JsonObject = {}
    for event_type, spec in EVENTS.items():
        entry: JsonObject = {"becomes": spec.becomes}
        if spec.data_model is not None:
            entry["data"] = {"$ref": REF_TEMPLATE.format(model=spec.data_model.__name__)}
        catalogue[event_type] = entry
    catalogue["*" + EXPIRY_SUFFIXES[0]] = {
        "becomes": f"{EXPIRY_BECOMES}; also *{EXPIRY_SUFFIXES[1]}",
        "data": {"$ref": REF_TEMPLATE.format(model=AdmissionEndData.__name__)},
    }
    for prefix in NOT_ACTED_ON_PREFIXES:
        catalogue[prefix + "*"] = {"becomes": NOT_ACTED_ON}
    catalogue["(any other type)"] = {
        "becomes": "acknowledged and counted; produced to FORWARD_UNKNOWN_EVENTS_TOPIC if set"
    }
    return catalogue


WEBHOOK = Endpoint(
    "POST",
    WEBHOOK_PATH,
    "receiveFanfareWebhook",
    "A Fanfare webhook delivery",
    "webhooks",
    description=(
        "HMAC-SHA256 over `{X-Fanfare-Timestamp}.{raw body}` with any active "
        "secret; timestamps more than SIGNATURE_TOLERANCE_SECONDS (default "
        "300) from now in either direction are refused. Bodies above "
        "MAX_BODY_BYTES (default 262144) are refused. A 2xx means durable."
    ),
    headers=(
        Header("X-Fanfare-Signature", True, "sha256=<64 hex>; several allowed"),
        Header("X-Fanfare-Timestamp", True, "Unix seconds of the signature"),
        Header("X-Fanfare-Delivery-Id", False, "Recorded and logged"),
        Header("X-Fanfare-Event-Type", False, "Informational; body decides"),
    ),
    body=Envelope,
    extensions={"x-fanfare-event-types": _event_catalogue()},
    replies=(
        Reply(
            200,
            "Durable in Kafka (accepted or forwarded), or acknowledged without effect (ignored)",
            WebhookAnswer,
        ),
        _refusal(
            400,
            "Body cut short or badly framed, not JSON, or the envelope or event data is "
            "invalid; `field` names the failing path. Invalid event data is answered only "
            "once the delivery is in the quarantine topic (credentials digested), from "
            "where an operator re-drives it after a fix. The envelope leaves `data` open "
            "(its shape depends on the type, see x-fanfare-event-types), so a schema-valid "
            "body may still get INVALID_EVENT_DATA.",
            "MALFORMED_BODY",
            "MALFORMED_JSON",
            "INVALID_ENVELOPE",
            "INVALID_EVENT_DATA",
            business=True,
        ),
        _refusal(
            401,
            "Signature or timestamp refused.",
            "SIGNATURE_MISSING",
            "SIGNATURE_MALFORMED",
            "SIGNATURE_INVALID",
            "TIMESTAMP_MISSING",
            "TIMESTAMP_INVALID",
            "TIMESTAMP_OUT_OF_TOLERANCE",
        ),
        _refusal(405, "Only POST.", "METHOD_NOT_ALLOWED", headers=("Allow",)),
        _refusal(413, "Body too large.", "PAYLOAD_TOO_LARGE"),
        _refusal(
            415, "Not UTF-8 application/json, or a Content-Encoding.", "UNSUPPORTED_MEDIA_TYPE"
        ),
        _refusal(
            503,
            "Kafka did not acknowledge the command, forwarded event or quarantined "
            "delivery in time; retry later.",
            "BROKER_UNAVAILABLE",
            headers=("Retry-After",),
        ),
    ),
)

ENDPOINTS = (
    WEBHOOK,
    Endpoint(
        "GET",
        "/healthz",
        "healthz",
        "The process is alive",
        "operations",
        replies=(Reply(200, "Alive", Health),),
    ),
    Endpoint(
        "GET",
        "/readyz",
        "readyz",
        "Kafka (metadata with our topics) and PostgreSQL (SELECT 1) reachable",
        "operations",
        replies=(Reply(200, "Ready", Readiness), Reply(503, "NOT_READY", Readiness)),
    ),
    Endpoint(
        "GET",
        "/metrics",
        "metrics",
        "Prometheus exposition",
        "operations",
        replies=(Reply(200, "Metrics text", media="text/plain", raw_schema={"type": "string"}),),
    ),
    Endpoint(
        "GET",
        OPENAPI_PATH,
        "openapi",
        "This document",
        "operations",
        replies=(Reply(200, "OpenAPI 3.1 document", raw_schema={"type": "object"}),),
    ),
)


def _models() -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    """Every model the document names: what is read (validation) and what is
    answered (serialization), the event data models included."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for endpoint in ENDPOINTS:
        if endpoint.body is not None:
            wanted.append((endpoint.body, "validation"))
        wanted += [(r.model, "serialization") for r in endpoint.replies if r.model is not None]
    wanted += [(s.data_model, "validation") for s in EVENTS.values() if s.data_model is not None]
    return list(dict.fromkeys(wanted))


def _operation(
    endpoint: Endpoint, refs: Mapping[tuple[Any, JsonSchemaMode], JsonObject]
) -> JsonObject:
    operation: JsonObject = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
        "responses": responses(endpoint.replies, refs),
        **endpoint.extensions,
    }
    if endpoint.description:
        operation["description"] = endpoint.description
    if endpoint.headers:
        operation["parameters"] = [header.parameter() for header in endpoint.headers]
    if endpoint.body is not None:
        schema = refs[(endpoint.body, "validation")]
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    return operation


def openapi_document() -> JsonObject:
    """The receiver's HTTP contract."""
    refs, defs = models_json_schema(_models(), ref_template=REF_TEMPLATE)
    paths: dict[str, JsonObject] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint, refs)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": JSON_SCHEMA_DIALECT,
        "info": {"title": TITLE, "version": "1", "description": DESCRIPTION},
        "tags": [{"name": tag} for tag in dict.fromkeys(e.tag for e in ENDPOINTS)],
        "paths": paths,
        "components": {"schemas": defs["$defs"]},
    }


def render_openapi() -> str:
    """The stored form: stable key order, so a diff shows real changes only."""
    return render_json(openapi_document())


def write_openapi(path: Path = STORED_OPENAPI) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_openapi(), encoding="utf-8")
