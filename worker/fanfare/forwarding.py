"""Events of a type the receiver does not know, as records for the forward
topic (FORWARD_UNKNOWN_EVENTS_TOPIC): the envelope whole, credentials
digested, with where it came from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from worker.domain import ids
from worker.fanfare.envelope import Delivery, Envelope

# Keys whose values are credentials wherever they appear in a forwarded
# envelope. Matched as substrings of the lower-cased key, so `admissionToken`,
# `checkoutGrant` or `apiSecret` are all caught; a false positive costs only a
# digest in place of a value.
CREDENTIAL_KEY_PARTS = ("token", "grant", "secret", "password", "credential")
# What a redacted credential starts with; the SHA-256 hex follows.
DIGEST_PREFIX = "sha256:"
_HEX = frozenset("0123456789abcdef")


def redact(value: Any) -> Any:
    """A copy with every credential-like string replaced by its SHA-256 digest
    (the same digest the commands carry, so forwarded events still join)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if any(part in key.lower() for part in CREDENTIAL_KEY_PARTS) and isinstance(item, str):
                out[key] = DIGEST_PREFIX + ids.grant_digest(item)
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def stored_digest(value: str) -> str:
    """The grant digest a redacted credential holds. Raises ValueError when
    `value` is not one (a stored record always holds digests, never grants)."""
    digest = value.removeprefix(DIGEST_PREFIX)
    if digest == value or len(digest) != 64 or not set(digest) <= _HEX:
        raise ValueError("a stored grant is not a sha256:<hex> digest")
    return digest


@dataclass(frozen=True)
class ForwardedRecord:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def forwarded_record(
    raw: dict[str, Any], envelope: Envelope, delivery: Delivery
) -> ForwardedRecord:
    """An unknown event for the forward topic: the whole envelope as Fanfare
    sent it (unknown fields kept), credentials digested, with its provenance.
    Keyed by organization so one organization's events keep their order."""
    value = {
        "schemaVersion": 1,
        "kind": "fanfare.event",
        "eventId": envelope.id,
        "eventType": envelope.type,
        "deliveryId": delivery.delivery_id,
        "secretId": delivery.secret_fingerprint,
        "receivedAt": delivery.received_at.isoformat(),
        "envelope": redact(raw),
    }
    headers = [
        ("fanfare-event-id", envelope.id.encode("utf-8")),
        ("fanfare-event-type", envelope.type.encode("utf-8")),
    ]
    if delivery.delivery_id is not None:
        headers.append(("fanfare-delivery-id", delivery.delivery_id.encode("utf-8")))
    return ForwardedRecord(
        key=envelope.organization_id.encode("utf-8"),
        value=orjson.dumps(value),
        headers=headers,
    )
