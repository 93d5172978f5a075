"""What every command application returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.domain.events import EventBase

# An experience and one of its consumers: whose admissions a command settles.
Pair = tuple[str, str]


@dataclass
class Applied:
    """What a command did: the answer recorded in the inbox (and returned by
    the API), and the events that describe it."""

    outcome: dict[str, Any]
    events: list[EventBase] = field(default_factory=list)
