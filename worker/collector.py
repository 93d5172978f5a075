"""The cyclic garbage collector paused while a batch keeps many objects
alive: every object a batch allocates and keeps (rows, events, outcomes)
survives the young collections that its allocations trigger, so the
collector rescans them again and again for nothing; reference counting
frees nearly all of them when the batch ends. What cycles a batch makes are
collected once it has, at the next collection the allocations trigger."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
