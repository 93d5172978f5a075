"""What every command application returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.domain.events import EventBase


@dataclass
class Applied:
    """What a command did: the answer recorded in the inbox (and returned by
    the API), and the events that describe it."""

    outcome: dict[str, Any]
    events: list[EventBase] = field(default_factory=list)

    @classmethod
    def refused(
        cls, code: str, message: str, events: list[EventBase] | None = None, **detail: Any
    ) -> Applied:
        """A refusal as the API answers it: its stable code, a message, and
        the fields the code carries (worker.roles.api.writes.REFUSAL_FIELDS)."""
        outcome = {"status": "rejected", "error": code, "message": message, **detail}
        return cls(outcome, events if events is not None else [])
