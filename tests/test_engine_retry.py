"""Trying again after an expiry (worker.engine.retry), each story in memory
and on PostgreSQL (tests/engine_backends.py): the cart held again within
the retry window and within stock, one retry per expiry, every refusal, and
facts that arrive after the retry weighed against it by time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio

from tests import builders as b
from tests.engine_backends import Engine, PostgresEngine
from tests.helpers import unique
from worker.adapters import queries
from worker.domain.ids import grant_digest

T0 = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)
SPAN = timedelta(seconds=660)  # the default window and buffer
DUE = T0 + SPAN
RETRIED = DUE + timedelta(seconds=30)

Ids = tuple[str, str, str]


@pytest_asyncio.fixture(loop_scope="session")
async def engine(engine_backend: Engine) -> AsyncIterator[Engine]:
    yield engine_backend
    await engine_backend.assert_counters_match_rows()


@pytest.fixture
def ids() -> Ids:
    return unique("exp"), unique("cons"), unique("prod")


async def _expired(
    engine: Engine, ids: Ids, grant: str, on_hand: int = 5, window: int = 300
) -> None:
    exp, cons, p = ids
    await engine(b.configure(exp, retry_window_seconds=window))
    await engine(b.stock(p, on_hand))
    await engine(b.cart(exp, cons, b.line(p, 2), at=T0 - timedelta(minutes=1)))
    await engine(b.admit(exp, cons, grant, T0))
    await engine(b.end(exp, cons, grant, outcome="expired", reason="window_elapsed", at=DUE))


async def test_a_retry_in_its_window_holds_the_cart_again(engine: Engine, ids: Ids) -> None:
    exp, cons, p = ids
    await _expired(engine, ids, "retry-again")
    again = await engine(b.retry(exp, cons, "retry-again", RETRIED))
    assert again["status"] == "retried"
    assert (again["held"], again["rejected"], again["admissionStatus"]) == (1, 0, "active")
    assert again["expiresAt"] == (RETRIED + SPAN).isoformat()
    assert again["lines"] == [
        {"productId": p, "variantId": None, "quantity": 2, "held": True, "reason": None}
    ]
    assert await engine.admission("retry-again") == ("active", None)
    assert await engine.holds("retry-again") == [(2, "active"), (2, "expired")]
    assert await engine.stock(p) == (5, 2, 0)
    # One retry per expiry: another call finds the admission holding.
    second = await engine(b.retry(exp, cons, "retry-again", RETRIED + timedelta(seconds=5)))
    assert second["error"] == "NOT_EXPIRED"
    assert await engine.stock(p) == (5, 2, 0)
    done = await engine(b.complete(exp, cons, "retry-again", "o-1", b.line(p, 2), at=RETRIED))
    assert done["status"] == "converted"
    assert await engine.stock(p) == (5, 0, 2)


async def test_a_retry_past_the_expiry_not_yet_applied_expires_first(
    engine: Engine, ids: Ids
) -> None:
    exp, cons, p = ids
    await engine(b.configure(exp, retry_window_seconds=300))
    await engine(b.stock(p, 5))
    await engine(b.cart(exp, cons, b.line(p, 2), at=T0 - timedelta(minutes=1)))
    await engine(b.admit(exp, cons, "retry-due", T0))
    again = await engine(b.retry(exp, cons, "retry-due", RETRIED))
    assert again["held"] == 1
    assert await engine.holds("retry-due") == [(2, "active"), (2, "expired")]
    old = await engine(
        b.end(exp, cons, "retry-due", outcome="expired", reason="window_elapsed", at=DUE)
    )
    assert old["status"] == "not_yet_due"
    new = b.end(
        exp, cons, "retry-due", outcome="expired", reason="window_elapsed", at=RETRIED + SPAN
    )
    assert (await engine(new))["status"] == "expired"
    assert await engine.holds("retry-due") == [(2, "expired"), (2, "expired")]
    assert await engine.stock(p) == (5, 0, 0)
    # That expiry is a new one: it may be retried too.
    later = await engine(b.retry(exp, cons, "retry-due", RETRIED + SPAN + timedelta(seconds=1)))
    assert later["held"] == 1


async def test_refusals(engine: Engine, ids: Ids) -> None:
    exp, cons, p = ids
    await _expired(engine, ids, "retry-no", window=0)
    off = await engine(b.retry(exp, cons, "retry-no", RETRIED))
    assert off["error"] == "RETRY_NOT_ALLOWED"
    await engine(b.configure(exp, retry_window_seconds=20))
    closed = await engine(b.retry(exp, cons, "retry-no", RETRIED))
    assert closed["error"] == "RETRY_WINDOW_CLOSED"
    stranger = await engine(b.retry(exp, cons, "someone-else", RETRIED))
    assert stranger["error"] == "ADMISSION_MISMATCH"
    await engine(b.admit(exp, cons, "retry-yes", DUE + timedelta(minutes=1)))
    early = await engine(b.retry(exp, cons, "retry-yes", DUE + timedelta(minutes=2)))
    assert early["error"] == "NOT_EXPIRED"
    superseded = await engine(b.retry(exp, cons, "retry-no", DUE + timedelta(minutes=2)))
    assert superseded["error"] == "ADMISSION_MISMATCH"
    await engine(b.end(exp, cons, None, reason="left", at=DUE + timedelta(minutes=3)))
    left = await engine(b.retry(exp, cons, "retry-yes", DUE + timedelta(minutes=4)))
    assert left["error"] == "NOT_EXPIRED"
    assert await engine.stock(p) == (5, 0, 0)


async def test_a_retry_holds_what_stock_allows(engine: Engine, ids: Ids) -> None:
    exp, cons, p = ids
    await _expired(engine, ids, "retry-short", on_hand=3)
    other = unique("cons")
    await engine(b.cart(exp, other, b.line(p, 2), at=T0))
    await engine(b.admit(exp, other, "retry-other", DUE + timedelta(seconds=10)))
    again = await engine(b.retry(exp, cons, "retry-short", RETRIED))
    assert (again["held"], again["rejected"]) == (0, 1)
    assert again["lines"][0]["reason"] == "INSUFFICIENT_STOCK"
    assert await engine.stock(p) == (3, 2, 0)


async def test_a_left_from_before_the_expiry_arriving_late_wins(engine: Engine, ids: Ids) -> None:
    exp, cons, p = ids
    await _expired(engine, ids, "retry-gone")
    await engine(b.retry(exp, cons, "retry-gone", RETRIED))
    left = await engine(b.end(exp, cons, None, reason="left", at=DUE - timedelta(minutes=1)))
    assert left["status"] == "released"
    assert await engine.admission("retry-gone") == ("released", "left")
    assert await engine.stock(p) == (5, 0, 0)


async def test_a_left_between_the_expiry_and_the_retry_changes_nothing(
    engine: Engine, ids: Ids
) -> None:
    exp, cons, p = ids
    await _expired(engine, ids, "retry-stay")
    await engine(b.retry(exp, cons, "retry-stay", RETRIED))
    await engine(b.end(exp, cons, None, reason="left", at=DUE + timedelta(seconds=10)))
    assert await engine.admission("retry-stay") == ("active", None)
    assert await engine.stock(p) == (5, 2, 0)


async def test_a_left_after_the_retry_ends_the_held_again(engine: Engine, ids: Ids) -> None:
    exp, cons, p = ids
    await _expired(engine, ids, "retry-after")
    # It arrives before the retry (kept), and ends what the retry holds.
    await engine(b.end(exp, cons, None, reason="left", at=RETRIED + timedelta(seconds=10)))
    again = await engine(b.retry(exp, cons, "retry-after", RETRIED))
    assert again["admissionStatus"] == "released"
    assert await engine.admission("retry-after") == ("released", "left")
    assert await engine.stock(p) == (5, 0, 0)


async def test_a_completion_after_the_retry_sells_the_held_again(engine: Engine, ids: Ids) -> None:
    exp, cons, p = ids
    await _expired(engine, ids, "retry-sold")
    await engine(b.retry(exp, cons, "retry-sold", RETRIED))
    await engine(b.complete(exp, cons, None, "o-7", at=RETRIED + timedelta(seconds=20)))
    assert await engine.admission("retry-sold") == ("converted", "checkout")
    assert await engine.stock(p) == (5, 0, 2)


async def test_a_later_admission_before_the_retry_arriving_late_voids_it(
    engine: Engine, ids: Ids
) -> None:
    exp, cons, p = ids
    await _expired(engine, ids, "retry-void")
    await engine(b.retry(exp, cons, "retry-void", RETRIED))
    await engine(b.admit(exp, cons, "retry-new", DUE + timedelta(seconds=10)))
    assert (await engine.admission("retry-void"))[0] == "expired"
    assert await engine.holds("retry-new") == [(2, "active")]
    assert await engine.stock(p) == (5, 2, 0)


# Trying again twice (README, Arrival order): admitted with g0, then g1;
# g1's holds expire (our expiry due) and the consumer tries again at +33 s;
# Fanfare's admission-expired, without a grant, ends that holding period at
# +54 s, and the consumer tries again at +75 s, within the 120 s window.
RETRIED_TWICE = [DUE + timedelta(seconds=33), DUE + timedelta(seconds=54)]
LAST_RETRY = DUE + timedelta(seconds=75)


async def _retried_twice(engine: Engine, late_expiry: bool) -> tuple[Ids, str, dict[str, object]]:
    """The story in time order, or with the last retry arriving before
    Fanfare's expiry it follows; the last retry's answer."""
    exp, cons, p = ids = unique("exp"), unique("cons"), unique("prod")
    first, grant = unique("g0"), unique("g1")
    await engine(b.configure(exp, retry_window_seconds=120))
    await engine(b.stock(p, 5))
    await engine(b.cart(exp, cons, b.line(p, 2), at=T0 - timedelta(minutes=1)))
    await engine(b.admit(exp, cons, first, T0 - timedelta(seconds=21)))
    await engine(b.admit(exp, cons, grant, T0))
    assert (await engine(b.retry(exp, cons, grant, RETRIED_TWICE[0])))["held"] == 1
    ended = b.end(
        exp, cons, None, outcome="expired", reason="admission_expired", at=RETRIED_TWICE[1]
    )
    last = b.retry(exp, cons, grant, LAST_RETRY)
    if late_expiry:
        answer = await engine(last)
        await engine(ended)
    else:
        await engine(ended)
        answer = await engine(last)
    return ids, grant, answer


@pytest.mark.parametrize("late_expiry", [False, True], ids=["time_order", "late_expiry"])
async def test_a_retry_refused_before_the_expiry_it_follows_arrived_counts_once_it_does(
    engine: Engine, late_expiry: bool
) -> None:
    (_, _, p), grant, answer = await _retried_twice(engine, late_expiry)
    # The answer at arrival stands (the storefront had it); the outcome does not.
    assert answer.get("error") == ("NOT_EXPIRED" if late_expiry else None)
    assert await engine.admission(grant) == ("active", None)
    assert await engine.holds(grant) == [(2, "active"), (2, "expired"), (2, "expired")]
    assert await engine.expires_at(grant) == LAST_RETRY + SPAN
    assert await engine.stock(p) == (5, 2, 0)
    created = [e for e in engine.events if e.type == "reservation.created"]
    assert created[-1].created_at == LAST_RETRY
    retried = [e for e in engine.events if e.type == "admission.retried"]
    assert (retried[-1].retried_at, retried[-1].follows) == (LAST_RETRY, RETRIED_TWICE[1])


async def test_a_granted_retry_outside_the_window_of_an_earlier_expiry_arriving_late(
    engine: Engine, ids: Ids
) -> None:
    """The retry came 30 s after our expiry, but Fanfare's expiry 200 s
    before it arrives later: the retry was 230 s after the admission stood
    expired, past the 120 s window. It no longer counts, as in time order,
    where it is refused RETRY_WINDOW_CLOSED."""
    exp, cons, p = ids
    await engine(b.configure(exp, retry_window_seconds=120))
    await engine(b.stock(p, 5))
    await engine(b.cart(exp, cons, b.line(p, 2), at=T0 - timedelta(minutes=1)))
    await engine(b.admit(exp, cons, "retry-narrow", T0))
    assert (await engine(b.retry(exp, cons, "retry-narrow", RETRIED)))["held"] == 1
    early = DUE - timedelta(seconds=200)
    late = b.end(exp, cons, None, outcome="expired", reason="admission_expired", at=early)
    assert (await engine(late))["status"] == "expired"
    assert await engine.admission("retry-narrow") == ("expired", "admission_expired")
    assert await engine.holds("retry-narrow") == [(2, "expired"), (2, "expired")]
    assert await engine.stock(p) == (5, 0, 0)


async def test_a_pending_retry_leaves_what_the_api_names_a_call_after(
    engine_db: asyncpg.Pool, ids: Ids
) -> None:
    """The API names a call for an admission holding again after the expiry
    its latest granted retry followed (a second call answers the first
    outcome): a retry kept pending follows none and changes nothing there;
    taken up, it is that latest retry."""
    exp, cons, _ = ids
    engine = PostgresEngine(engine_db)
    await _expired(engine, ids, "retry-named", window=120)
    await engine(b.retry(exp, cons, "retry-named", RETRIED_TWICE[0]))
    refused = await engine(b.retry(exp, cons, "retry-named", LAST_RETRY))
    assert refused["error"] == "NOT_EXPIRED"
    digest = grant_digest("retry-named")
    times = await queries.admission_times(engine_db, digest)
    assert times is not None
    assert times.expiry_to_follow(LAST_RETRY) == DUE
    ended = b.end(
        exp, cons, None, outcome="expired", reason="admission_expired", at=RETRIED_TWICE[1]
    )
    await engine(ended)
    taken = await queries.admission_times(engine_db, digest)
    assert taken is not None
    assert taken.expiry_to_follow(LAST_RETRY) == RETRIED_TWICE[1]
