"""Fanfare webhook signatures: HMAC-SHA256 over "{timestamp}.{raw body}".

Verified on the raw bytes before anything is parsed. Several secrets may be
active at once (rotation); the fingerprint of the one that matched is logged
and carried on the command so an old secret can be retired with confidence.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

SIGNATURE_PREFIX = "sha256="


class SignatureError(Exception):
    """Rejected signature; `code` is the stable error code sent to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Secret:
    value: bytes
    fingerprint: str

    @classmethod
    def from_text(cls, text: str) -> Secret:
        # The whole string, `whsec_` prefix included, is the key.
        raw = text.encode("utf-8")
        return cls(raw, "sha256:" + hashlib.sha256(raw).hexdigest()[:12])


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The header value Fanfare would send; used by tests and the signing helper."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, "sha256")
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify(
    secrets: list[Secret],
    timestamp_header: str | None,
    signature_header: str | None,
    body: bytes,
    now: float,
    tolerance_seconds: int,
) -> Secret:
    """Return the secret that verified the request or raise SignatureError."""
    if not signature_header:
        raise SignatureError("SIGNATURE_MISSING", "X-Fanfare-Signature header is required")
    if not timestamp_header:
        raise SignatureError("TIMESTAMP_MISSING", "X-Fanfare-Timestamp header is required")
    ts_text = timestamp_header.strip()
    if not ts_text.isascii() or not ts_text.isdigit() or len(ts_text) > 12:
        raise SignatureError("TIMESTAMP_INVALID", "X-Fanfare-Timestamp must be Unix seconds")
    if abs(now - int(ts_text)) > tolerance_seconds:
        raise SignatureError(
            "TIMESTAMP_OUT_OF_TOLERANCE",
            f"X-Fanfare-Timestamp is more than {tolerance_seconds} s from now",
        )
    candidate = signature_header.strip()
    if not candidate.startswith(SIGNATURE_PREFIX):
        raise SignatureError("SIGNATURE_MALFORMED", "X-Fanfare-Signature must be sha256=<hex>")
    given = candidate[len(SIGNATURE_PREFIX) :]
    if len(given) != 64 or not given.isascii():
        raise SignatureError("SIGNATURE_MALFORMED", "X-Fanfare-Signature must be sha256=<hex>")
    signed = ts_text.encode("ascii") + b"." + body
    given_bytes = given.lower().encode("ascii")
    for secret in secrets:
        expected = hmac.new(secret.value, signed, "sha256").hexdigest().encode("ascii")
        if hmac.compare_digest(expected, given_bytes):
            return secret
    raise SignatureError("SIGNATURE_INVALID", "signature does not match any active secret")
