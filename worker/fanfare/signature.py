"""Fanfare webhook signatures: HMAC-SHA256 over "{timestamp}.{raw body}".

Verified on the raw bytes before anything is parsed. Several secrets may be
active at once (rotation); the fingerprint of the one that matched is logged
and carried on the command so an old secret can be retired with confidence.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from worker.domain import ids

SIGNATURE_PREFIX = "sha256="
# Several `sha256=` values in one header are accepted (comma or space
# separated), so Fanfare could sign with an old and a new secret during a
# rotation on its side. Bounded so a hostile header cannot make us compute
# more than a handful of comparisons per secret.
MAX_SIGNATURES = 8
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_SEPARATORS = re.compile(r"[,\s]+")
_SINGLE_LENGTH = len(SIGNATURE_PREFIX) + 64
# Unix seconds fit in 12 digits until the year 33658; longer is garbage.
_MAX_TIMESTAMP_DIGITS = 12


class SignatureError(Exception):
    """Rejected signature; `code` is the stable error code sent to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Secret:
    # repr=False: a Secret that ends up in a log line or traceback shows only
    # its fingerprint.
    value: bytes = field(repr=False)
    fingerprint: str

    @classmethod
    def from_text(cls, text: str) -> Secret:
        # The whole string, `whsec_` prefix included, is the key.
        raw = text.encode("utf-8")
        return cls(raw, ids.key_fingerprint(raw))


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The header value Fanfare would send; used by tests and the signing helper."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, "sha256")
    return SIGNATURE_PREFIX + mac.hexdigest()


def _timestamp(header: str | None, now: float, tolerance_seconds: int) -> str:
    if not header:
        raise SignatureError("TIMESTAMP_MISSING", "X-Fanfare-Timestamp header is required")
    text = header.strip()
    # isdigit() alone accepts non-ASCII digits ("٣"), which int() would parse
    # but Fanfare never sends.
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_TIMESTAMP_DIGITS:
        raise SignatureError("TIMESTAMP_INVALID", "X-Fanfare-Timestamp must be Unix seconds")
    skew = now - int(text)
    if skew > tolerance_seconds:
        raise SignatureError(
            "TIMESTAMP_OUT_OF_TOLERANCE",
            f"X-Fanfare-Timestamp is more than {tolerance_seconds} s in the past",
        )
    if -skew > tolerance_seconds:
        raise SignatureError(
            "TIMESTAMP_OUT_OF_TOLERANCE",
            f"X-Fanfare-Timestamp is more than {tolerance_seconds} s in the future",
        )
    return text


def _candidates(header: str | None) -> list[bytes]:
    if (
        header is not None
        and len(header) == _SINGLE_LENGTH
        and header.startswith(SIGNATURE_PREFIX)
        and _HEX64.fullmatch(header, len(SIGNATURE_PREFIX))
    ):
        # The usual header, one value and nothing around it: no splitting.
        return [header[len(SIGNATURE_PREFIX) :].lower().encode("ascii")]
    if not header or not header.strip():
        raise SignatureError("SIGNATURE_MISSING", "X-Fanfare-Signature header is required")
    parts = [p for p in _SEPARATORS.split(header.strip()) if p]
    if len(parts) > MAX_SIGNATURES:
        raise SignatureError(
            "SIGNATURE_MALFORMED", f"X-Fanfare-Signature carries more than {MAX_SIGNATURES} values"
        )
    found: list[bytes] = []
    for part in parts:
        if not part.startswith(SIGNATURE_PREFIX):
            raise SignatureError(
                "SIGNATURE_MALFORMED", "X-Fanfare-Signature must be sha256=<64 hex digits>"
            )
        digest = part[len(SIGNATURE_PREFIX) :]
        if not _HEX64.fullmatch(digest):
            raise SignatureError(
                "SIGNATURE_MALFORMED", "X-Fanfare-Signature must be sha256=<64 hex digits>"
            )
        found.append(digest.lower().encode("ascii"))
    return found


def verify(
    secrets: Sequence[Secret],
    timestamp_header: str | None,
    signature_header: str | None,
    body: bytes,
    now: float,
    tolerance_seconds: int,
) -> Secret:
    """Return the secret that verified the request or raise SignatureError.

    The timestamp is checked in both directions: a signature from the future
    is as suspicious as a stale one (a replay signed with a skewed clock)."""
    candidates = _candidates(signature_header)
    ts_text = _timestamp(timestamp_header, now, tolerance_seconds)
    signed = ts_text.encode("ascii") + b"." + body
    for secret in secrets:
        # hmac.digest: OpenSSL's one-shot HMAC, no HMAC object per request.
        expected = hmac.digest(secret.value, signed, "sha256").hex().encode("ascii")
        # Every candidate is compared (no early exit on the first mismatch) so
        # timing reveals nothing about which one was close.
        matched = False
        for given in candidates:
            matched |= hmac.compare_digest(expected, given)
        if matched:
            return secret
    raise SignatureError("SIGNATURE_INVALID", "signature does not match any active secret")
