"""Schemathesis hooks for the receiver: steer generated envelopes to
Fanfare's event types, sign each webhook request as Fanfare would, and two
checks of our own on top of `--checks all`.

Loaded by the Schemathesis CLI from this file (SCHEMATHESIS_HOOKS), in its
own process: it reads the secret from RECEIVER_SIGNING_SECRET and signs with
the standard library alone, as an independent sender would.

The body is encoded here as Schemathesis and `requests` would, and passed
as the request's bytes, so the signature covers exactly what is sent. A case
that carries the signature headers gets valid ones; a case generated without
them (a missing required header) is sent without them, and must get its 401.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
import zlib
from typing import Any

import requests
import schemathesis

WEBHOOK_PATH = "/webhooks/fanfare"
SIGNATURE = "X-Fanfare-Signature"
TIMESTAMP = "X-Fanfare-Timestamp"
# The business refusal a schema-valid envelope may meet: its open `data`
# does not fit its type.
DATA_REFUSAL = "INVALID_EVENT_DATA"


# Generated types are almost never Fanfare's: a generated envelope is steered
# to one of these by a hash of its id and type (one in seven keeps its own), so the
# run meets commands, their answers and the quarantine too.
STEERED_TYPES = (
    "queue.consumer.admitted",
    "draw.consumer.won",
    "queue.consumer.left",
    "queue.admission_expired",
    "queue.consumer.completed",
    "queue.consumer.entered",
)


def _identifier(value: Any) -> bool:
    """What the envelope schema takes as `type` (worker.domain.model.Identifier)."""
    return (
        isinstance(value, str)
        and 1 <= len(value) <= 200
        and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    )


def _fit_data(digest: int) -> dict[str, Any]:
    """`data` every steered type can translate."""
    return {
        "queueId": f"queue-{digest % 7}",
        "consumerId": f"cons-{digest}",
        "admissionToken": f"grant-{digest}",
        "orderId": f"order-{digest}",
    }


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    """Steers a generated envelope to a Fanfare type, and every other one
    of those to data fit for it; a valid body stays valid and an invalid one
    invalid: only a schema-valid `type` and an object `data` are replaced."""
    if context.operation.path != WEBHOOK_PATH or not isinstance(body, dict):
        return body
    event_type, data = body.get("type"), body.get("data")
    if not _identifier(event_type) or not isinstance(data, dict):
        return body
    digest = zlib.crc32(repr((body.get("id"), event_type)).encode("utf-8"))
    choice = digest % (len(STEERED_TYPES) + 1)
    if choice == len(STEERED_TYPES):
        return body
    fit = _fit_data(digest) if digest & 0x100 else {}
    return {**body, "type": STEERED_TYPES[choice], "data": {**data, **fit}}


def _sign(secret: bytes, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def _signs(case: Any) -> bool:
    headers = case.headers or {}
    return case.operation.path == WEBHOOK_PATH and SIGNATURE in headers and TIMESTAMP in headers


def _wire_body(case: Any) -> bytes | None:
    """The bytes Schemathesis would send for this case, as `requests` encodes
    them; None when the case has no body."""
    sent = case.as_transport_kwargs(base_url="http://receiver")
    if "json" in sent:
        body = requests.Request("POST", "http://receiver", json=sent["json"]).prepare().body
    else:
        body = sent.get("data")
    return body.encode("utf-8") if isinstance(body, str) else body


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if not _signs(case):
        return
    body = _wire_body(case)
    if body is not None:
        kwargs["data"] = body
    timestamp = str(int(time.time()))
    secret = os.environ["RECEIVER_SIGNING_SECRET"].encode("utf-8")
    case.headers = {
        **case.headers,
        TIMESTAMP: timestamp,
        SIGNATURE: _sign(secret, timestamp, body or b""),
    }


@schemathesis.check
def signed_requests_pass_verification(ctx: Any, response: Any, case: Any) -> bool | None:
    """A request this hook signed is never refused for its signature, so
    every other check sees the receiver past verification."""
    if _signs(case) and response.status_code == 401:
        raise AssertionError(f"a signed request was refused: {response.text[:300]}")
    return None


@schemathesis.check
def schema_valid_envelopes_meet_only_data_refusals(
    ctx: Any, response: Any, case: Any
) -> bool | None:
    """The 400 that the document marks a business refusal is, for a
    schema-valid request, only ever the event data's: never the envelope's."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return None
    error = response.json().get("error")
    if case.operation.path == WEBHOOK_PATH and error != DATA_REFUSAL:
        raise AssertionError(f"a schema-valid envelope was refused as {error}: {response.text}")
    return None
