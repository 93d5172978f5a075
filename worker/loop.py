"""Running the entry points' coroutines: on uvloop by default, or on the
standard library's loop when EVENT_LOOP=asyncio. Measured (README,
Performance): the receiver and the engine run within noise of the standard
loop on it; the bench runs its baselines on uvloop too, so neither side
gains from the choice."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], loop: Literal["uvloop", "asyncio"] = "uvloop") -> T:
    if loop == "uvloop":
        return uvloop.run(main)
    return asyncio.run(main)
