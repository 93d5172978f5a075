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
