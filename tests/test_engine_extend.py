"""Extending a hold (worker.engine.extension), each story in memory and on
PostgreSQL (tests/engine_backends.py): the expiry moves by extensionSeconds
at most maxExtensions times, every refusal, counters untouched, and an
expiry of ours computed for the old time never ends the extended hold,
whether it is applied after the extension or before it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from tests import builders as b
from tests.engine_backends import Engine
from tests.helpers import unique

T0 = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)
# The default window and buffer: 600 s + 60 s.
DUE = T0 + timedelta(seconds=660)
EXTENSION = timedelta(seconds=120)


@pytest_asyncio.fixture(loop_scope="session")
async def engine(engine_backend: Engine) -> AsyncIterator[Engine]:
    yield engine_backend
    await engine_backend.assert_counters_match_rows()


@pytest.fixture
def ids() -> tuple[str, str, str]:
    return unique("exp"), unique("cons"), unique("prod")


async def _admitted(engine: Engine, ids: tuple[str, str, str], grant: str, **settings: int) -> None:
    exp, cons, p = ids
    await engine(b.configure(exp, **settings))
    await engine(b.stock(p, 5))
    await engine(b.cart(exp, cons, b.line(p, 2)))
    await engine(b.admit(exp, cons, grant, T0))


def _expiry(ids: tuple[str, str, str], grant: str, at: datetime) -> b.EndAdmission:
    exp, cons, _ = ids
    return b.end(exp, cons, grant, outcome="expired", reason="window_elapsed", at=at)


async def test_extensions_move_the_expiry_up_to_the_maximum(
    engine: Engine, ids: tuple[str, str, str]
) -> None:
    exp, cons, p = ids
    await _admitted(engine, ids, "extend-ext", extension_seconds=120, max_extensions=2)
    first = await engine(b.extend(exp, cons, "extend-ext", T0 + timedelta(minutes=9)))
    assert first["status"] == "extended"
    assert first["expiresAt"] == (DUE + EXTENSION).isoformat()
    assert (first["extensions"], first["extensionsLeft"], first["holdsExtended"]) == (1, 1, 1)
    second = await engine(b.extend(exp, cons, "extend-ext", T0 + timedelta(minutes=12)))
    assert second["expiresAt"] == (DUE + 2 * EXTENSION).isoformat()
    assert second["extensionsLeft"] == 0
    third = await engine(b.extend(exp, cons, "extend-ext", T0 + timedelta(minutes=13)))
    assert third["error"] == "EXTENSIONS_EXHAUSTED"
    assert await engine.stock(p) == (5, 2, 0)
    [moved, again] = [e for e in engine.events if e.type == "reservation.extended"]
    assert len(moved.reservation_ids) == 1
    assert again.expires_at == DUE + 2 * EXTENSION


async def test_refusals(engine: Engine, ids: tuple[str, str, str]) -> None:
    exp, cons, p = ids
    await _admitted(engine, ids, "extend-off")
    off = await engine(b.extend(exp, cons, "extend-off", T0 + timedelta(minutes=1)))
    assert off["error"] == "EXTENSION_NOT_ALLOWED"
    await engine(b.configure(exp, extension_seconds=120, max_extensions=1))
    stranger = await engine(b.extend(exp, cons, "someone-else", T0 + timedelta(minutes=1)))
    assert stranger["error"] == "ADMISSION_MISMATCH"
    late = await engine(b.extend(exp, cons, "extend-off", DUE))
    assert late["error"] == "RESERVATION_EXPIRED"
    await engine(b.admit(exp, cons, "extend-next", T0 + timedelta(minutes=2)))
    superseded = await engine(b.extend(exp, cons, "extend-off", T0 + timedelta(minutes=3)))
    assert superseded["error"] == "ADMISSION_MISMATCH"
    await engine(b.end(exp, cons, None, reason="left", at=T0 + timedelta(minutes=4)))
    left = await engine(b.extend(exp, cons, "extend-next", T0 + timedelta(minutes=5)))
    assert left["error"] == "RESERVATION_EXPIRED"
    assert await engine.stock(p) == (5, 0, 0)


async def test_the_old_expiry_after_the_extension_is_not_due(
    engine: Engine, ids: tuple[str, str, str]
) -> None:
    exp, cons, p = ids
    await _admitted(engine, ids, "extend-old", extension_seconds=120, max_extensions=2)
    await engine(b.extend(exp, cons, "extend-old", T0 + timedelta(minutes=9)))
    old = await engine(_expiry(ids, "extend-old", DUE))
    assert old["status"] == "not_yet_due"
    assert await engine.statuses(exp, cons) == [(p, 2, "active")]
    new = await engine(_expiry(ids, "extend-old", DUE + EXTENSION))
    assert new["status"] == "expired"
    assert await engine.statuses(exp, cons) == [(p, 2, "expired")]
    assert await engine.stock(p) == (5, 0, 0)


async def test_an_extension_decided_before_an_expiry_applied_first_holds_again(
    engine: Engine, ids: tuple[str, str, str]
) -> None:
    exp, cons, p = ids
    await _admitted(engine, ids, "extend-race", extension_seconds=120, max_extensions=2)
    expired = await engine(_expiry(ids, "extend-race", DUE))
    assert expired["status"] == "expired"
    # Decided a second before the expiry's time, applied after it.
    late = await engine(b.extend(exp, cons, "extend-race", DUE - timedelta(seconds=1)))
    assert late["status"] == "extended"
    assert late["reopened"]["held"] == 1
    assert await engine.admission("extend-race") == ("active", None)
    assert await engine.holds("extend-race") == [(2, "active"), (2, "expired")]
    assert await engine.stock(p) == (5, 2, 0)
    [created] = [e for e in engine.events if e.type == "reservation.created" and e.replaces]
    assert created.expires_at == DUE + EXTENSION
    done = await engine(b.complete(exp, cons, "extend-race", "o-1", b.line(p, 2), at=DUE))
    assert done["status"] == "converted"
    assert await engine.stock(p) == (5, 0, 2)


async def test_a_reopened_admission_expires_at_its_new_time(
    engine: Engine, ids: tuple[str, str, str]
) -> None:
    exp, cons, p = ids
    await _admitted(engine, ids, "extend-again", extension_seconds=120, max_extensions=2)
    await engine(_expiry(ids, "extend-again", DUE))
    await engine(b.extend(exp, cons, "extend-again", DUE - timedelta(seconds=1)))
    assert (await engine(_expiry(ids, "extend-again", DUE + EXTENSION)))["status"] == "expired"
    assert await engine.holds("extend-again") == [(2, "expired"), (2, "expired")]
    assert await engine.stock(p) == (5, 0, 0)


async def test_an_earlier_leave_arriving_after_the_extension_still_ends_it(
    engine: Engine, ids: tuple[str, str, str]
) -> None:
    exp, cons, p = ids
    await _admitted(engine, ids, "extend-gone", extension_seconds=120, max_extensions=2)
    await engine(b.extend(exp, cons, "extend-gone", T0 + timedelta(minutes=9)))
    left = await engine(b.end(exp, cons, None, reason="left", at=T0 + timedelta(minutes=5)))
    assert left["status"] == "released"
    assert await engine.statuses(exp, cons) == [(p, 2, "released")]
    assert await engine.stock(p) == (5, 0, 0)


async def test_a_checkout_after_the_old_expiry_sells_what_the_extension_kept(
    engine: Engine, ids: tuple[str, str, str]
) -> None:
    """Extended at +9 min, checked out after the old expiry: the extension is
    in the log before the checkout (the API's writes of an experience share
    a partition, in the order received), so the checkout sells the hold."""
    exp, cons, p = ids
    await _admitted(engine, ids, "extend-sold", extension_seconds=120, max_extensions=1)
    await engine(b.extend(exp, cons, "extend-sold", T0 + timedelta(minutes=9)))
    after_old = DUE + timedelta(seconds=30)
    done = await engine(b.complete(exp, cons, "extend-sold", "o-1", b.line(p, 1), at=after_old))
    assert done["status"] == "converted"
    assert await engine.admission("extend-sold") == ("converted", "checkout")
    assert await engine.holds("extend-sold") == [(1, "converted"), (2, "released")]
    assert await engine.stock(p) == (5, 0, 1)


async def test_a_checkout_applied_before_an_earlier_extension_keeps_its_answer(
    engine: Engine, ids: tuple[str, str, str]
) -> None:
    """The order the log never has (the test above): the checkout is decided
    against the holds as they stand, past the old expiry, and answered; the
    extension applied after it extends the holds but takes no sale back."""
    exp, cons, p = ids
    await _admitted(engine, ids, "extend-unsold", extension_seconds=120, max_extensions=1)
    after_old = DUE + timedelta(seconds=30)
    done = await engine(b.complete(exp, cons, "extend-unsold", "o-1", b.line(p, 1), at=after_old))
    assert done["error"] == "RESERVATION_EXPIRED"
    late = await engine(b.extend(exp, cons, "extend-unsold", T0 + timedelta(minutes=9)))
    assert late["status"] == "extended"
    assert await engine.admission("extend-unsold") == ("active", None)
    assert await engine.holds("extend-unsold") == [(2, "active")]
    assert await engine.stock(p) == (5, 2, 0)
