"""Running the entry points' coroutines: on uvloop by default, which the
benchmarks measured faster for every role (see the README), or on the
standard library's loop when EVENT_LOOP=asyncio."""

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
