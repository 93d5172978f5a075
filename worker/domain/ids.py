"""Deterministic identifiers: the same fact always gets the same id."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime

# Fixed namespace for every UUIDv5 this service derives; changing it would
# break dedupe against everything already in the log.
NAMESPACE = uuid.UUID("6f1c3a52-9d0e-4a8b-bf37-2f5e8c1d7a90")
_NAMESPACE_BYTES = NAMESPACE.bytes
_VERSION_MASK = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_5 = (5 << 76) | (0x8000 << 48)


def uuid5(name: str) -> uuid.UUID:
    """`uuid.uuid5(NAMESPACE, name)`, the same value, about five times
    faster: the engine derives two or three per admission, and the standard
    library's constructor re-validates what is valid by construction.
    tests/test_domain.py compares the two over many names."""
    digest = hashlib.sha1(_NAMESPACE_BYTES + name.encode("utf-8"), usedforsecurity=False)
    value = (int.from_bytes(digest.digest()[:16]) & _VERSION_MASK) | _VERSION_5
    made = object.__new__(uuid.UUID)
    object.__setattr__(made, "int", value)
    object.__setattr__(made, "is_safe", uuid.SafeUUID.unknown)
    return made


def grant_digest(grant: str) -> str:
    """Unkeyed SHA-256 hex of an admission grant (DESIGN: a keyed digest would
    break dedupe when the key rotates). The clear grant goes no further."""
    return hashlib.sha256(grant.encode("utf-8")).hexdigest()


def key_fingerprint(key: bytes) -> str:
    """What names a secret key in logs and metrics: a prefix of its SHA-256,
    never the key."""
    return "sha256:" + hashlib.sha256(key).hexdigest()[:12]


def command_id(source: str, source_id: str) -> uuid.UUID:
    """UUIDv5 of a command's source and the source's own id."""
    return uuid5(f"command:{source}:{source_id}")


def reservation_id(
    grant_digest: str, product_id: str, variant_id: str | None, revision: str = ""
) -> uuid.UUID:
    """One hold per admission grant and stock row, so a grant can never hold
    twice; `revision` (the command id of a cart change) names the hold that
    replaces an earlier one of the same grant and row."""
    key = f"reservation:{grant_digest}:{product_id}:{variant_id or ''}"
    return uuid5(key + (f":{revision}" if revision else ""))


def event_id(command: uuid.UUID, seq: int) -> uuid.UUID:
    """The n-th event a command produced: stable across re-deliveries."""
    return uuid5(f"{event_id_prefix(command)}{seq}")


def event_id_prefix(command: uuid.UUID) -> str:
    """What `event_id` names before the position: computed once per command
    by callers that number several events."""
    return f"event:{command}:"


def expiry_source_id(grant_digest: str, expires_at: datetime) -> str:
    """Source id of the scheduler's expiry of one admission: every replica
    derives the same command id, so their duplicates dedupe in the inbox."""
    return f"{grant_digest}:{expires_at.isoformat()}"
