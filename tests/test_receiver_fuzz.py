"""Property tests of the receiver: thousands of generated requests (arbitrary
bodies and headers, signed and unsigned), never a 5xx, and nothing reaches
Kafka but what was accepted.

The app runs in-process on the session's event loop with a real producer;
hypothesis drives it from a worker thread, so each outer test can measure the
topic before and after the whole run and end with a positive signal.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.conftest import SECRET
from tests.helpers import wait_for
from tests.receiver_support import (
    app_client,
    end_offsets,
    envelope,
    read_since,
    signed,
    total,
    with_topic,
)
from worker.adapters import kafka
from worker.config import Settings
from worker.fanfare.events import EVENTS
from worker.roles.receiver.app import build_app
from worker.roles.receiver.openapi import WEBHOOK_PATH

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]

ARBITRARY_EXAMPLES = 1300
SIGNED_EXAMPLES = 900  # with the above: more than 2,000 generated requests
ANSWERS = {200, 400, 401, 404, 405, 413, 415}
GRANT_MARK = "GRANT-"  # every generated grant starts so; nothing else can contain it


@dataclass
class Tally:
    requests: int = 0
    accepted: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


class Driver:
    """Sends a request on the loop that owns the client, from hypothesis's
    thread, and checks the invariants every answer must hold."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Client) -> None:
        self.loop = loop
        self.client = client
        self.tally = Tally()
        self.lock = threading.Lock()

    async def _send(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        async with self.client.request(method, path, headers=headers, data=body) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.read()

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes) -> int:
        future = asyncio.run_coroutine_threadsafe(
            self._send(method, path, headers, body), self.loop
        )
        status, content_type, raw = future.result(timeout=60)
        assert status < 500, (status, raw[:300])
        assert status in ANSWERS, (status, raw[:300])
        answer: dict[str, Any] = {}
        # Errors and webhook answers are JSON; /metrics is the one text page.
        if method != "HEAD" and (status >= 400 or path == WEBHOOK_PATH):
            assert content_type.startswith("application/json"), (status, content_type)
            answer = orjson.loads(raw)
            if status >= 400:
                assert set(answer) >= {"error", "message"}, answer
                assert answer["error"].isupper()
        with self.lock:
            self.tally.requests += 1
            self.tally.statuses[status] = self.tally.statuses.get(status, 0) + 1
            if status == 200 and answer.get("status") == "accepted":
                self.tally.accepted += 1
        return status


# --- strategies ---------------------------------------------------------------

_HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80
).map(str.strip)
_HEADER_NAMES = st.one_of(
    st.sampled_from(
        [
            "X-Fanfare-Signature",
            "X-Fanfare-Timestamp",
            "X-Fanfare-Delivery-Id",
            "X-Fanfare-Event-Type",
            "Content-Type",
            "Content-Encoding",
            "User-Agent",
            "Accept",
        ]
    ),
    st.from_regex(r"\AX-[A-Za-z0-9-]{1,20}\Z"),
)
_IDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=24)
_GRANTS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", max_size=40).map(
    lambda s: GRANT_MARK + s
)
_JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
_JSON = st.recursive(
    _JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_TIMESTAMPS = st.one_of(
    st.just("2026-11-24T18:03:12.345Z"),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),  # naive: refused
    st.integers(min_value=-(2**40), max_value=2**40),
    _JSON_LEAVES,
)
_AWARE = st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
_KNOWN_TYPES = st.one_of(
    st.sampled_from(sorted(EVENTS)),
    st.sampled_from(sorted(EVENTS)),
    st.sampled_from(sorted(EVENTS)),
    st.sampled_from(["draw.admission_expired", "queue.admission.expired", "x.y"]),
)
_TYPES = st.one_of(
    st.sampled_from(sorted(EVENTS)),
    st.sampled_from(sorted(EVENTS)),
    st.sampled_from(["draw.admission_expired", "distribution.ended", "x.y", ""]),
    st.text(max_size=20),
)
_EXPERIENCE_KEYS = ("queueId", "drawId", "auctionId", "experienceId")
_GRANT_KEYS = ("admissionToken", "admissionGrant", "grant", "token")


@st.composite
def _data(draw: st.DrawFn, sane: bool) -> dict[str, Any]:
    data: dict[str, Any] = {}
    ids_or_junk = _IDS if sane else st.one_of(_IDS, _JSON_LEAVES)
    if sane:
        # What every reservation event needs, so many reach the translators'
        # success path; the optional keys vary around it.
        data[draw(st.sampled_from(_EXPERIENCE_KEYS))] = draw(_IDS)
        data["consumerId"] = draw(_IDS)
    for key in (*_EXPERIENCE_KEYS, "consumerId", "orderId", "admittedAt", "wonAt"):
        if draw(st.integers(0, 3)) == 0:
            data[key] = draw(
                ids_or_junk if key.endswith("Id") else (_AWARE if sane else _TIMESTAMPS)
            )
    for key in _GRANT_KEYS:
        if draw(st.integers(0, 2)) == 0:
            data[key] = draw(_GRANTS if sane else st.one_of(_GRANTS, _JSON_LEAVES))
    if draw(st.integers(0, 3)) == 0:
        data["order"] = {"id": draw(ids_or_junk)}
    if not sane:
        data.update(draw(st.dictionaries(st.text(max_size=10), _JSON, max_size=3)))
    return data


@st.composite
def _envelopes(draw: st.DrawFn, sane: bool) -> Any:
    fields: dict[str, Any] = {
        "id": draw(_IDS) if sane else draw(st.one_of(_IDS, _JSON_LEAVES)),
        "type": draw(_KNOWN_TYPES if sane else _TYPES),
        "timestamp": draw(st.just("2026-11-24T18:03:12Z") if sane else _TIMESTAMPS),
        "organizationId": draw(_IDS) if sane else draw(st.one_of(_IDS, _JSON_LEAVES)),
        "data": draw(_data(sane)) if sane else draw(st.one_of(_data(sane), _JSON)),
    }
    # Drop some required fields, add unknown ones.
    for key in list(fields):
        if draw(st.integers(0, 19 if sane else 4)) == 0:
            del fields[key]
    if draw(st.booleans()):
        fields["extra"] = draw(_JSON)
    return fields


def _bodies(limit: int) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=512),
        _JSON.map(orjson.dumps),
        _envelopes(sane=False).map(orjson.dumps),
        _envelopes(sane=True).map(orjson.dumps),
        st.sampled_from([b"", b"{", b"null", b"[]", b"{}", b'"\xff"', b"\xef\xbb\xbf{}"]),
        st.integers(min_value=1, max_value=64).map(lambda n: b" " * (limit + n)),
    )


# --- fixtures -----------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fuzz_settings(settings: Settings) -> Settings:
    return await with_topic(settings, f"{settings.commands_topic}.fuzz")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def driver(fuzz_settings: Settings) -> AsyncIterator[Driver]:
    producer: AIOKafkaProducer = kafka.durable_producer(fuzz_settings)
    await producer.start()
    try:
        async with app_client(build_app(fuzz_settings, producer)) as client:
            yield Driver(asyncio.get_running_loop(), client)
    finally:
        await producer.stop()


async def _run_then_check(
    driver: Driver, fuzz_settings: Settings, run: Callable[[], None], at_least: int
) -> None:
    """Run the property in a thread, then prove produced == accepted: one
    valid request must land (positive signal) before the count is compared."""
    before = await end_offsets(fuzz_settings)
    quarantined = await end_offsets(fuzz_settings, fuzz_settings.quarantine_topic)
    start = Tally(driver.tally.requests, driver.tally.accepted)
    await asyncio.to_thread(run)
    requests = driver.tally.requests - start.requests
    accepted = driver.tally.accepted - start.accepted
    assert requests >= at_least, f"only {requests} generated requests"

    body = orjson.dumps(
        envelope(
            "queue.consumer.admitted",
            {"queueId": "q_final", "consumerId": "c", "admissionToken": GRANT_MARK + "final"},
        )
    )
    async with driver.client.post(
        WEBHOOK_PATH, data=body, headers=signed(body, SECRET, int(time.time()))
    ) as r:
        assert r.status == 200

    expected = total(before) + accepted + 1

    async def landed() -> bool:
        return total(await end_offsets(fuzz_settings)) >= expected

    await wait_for(landed)
    assert total(await end_offsets(fuzz_settings)) == expected, driver.tally
    for record in await read_since(fuzz_settings, before):
        assert GRANT_MARK.encode() not in (record.value or b"")
    # Refused data is kept, its grants digested like everywhere else.
    for record in await read_since(fuzz_settings, quarantined):
        assert GRANT_MARK.encode() not in (record.value or b"")


def _weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Pick among strategies by weight: most requests should reach the deep
    end of the handler, some should probe its edges."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(min_value=0, max_value=len(table) - 1).flatmap(lambda i: table[i])


_ROUTES = _weighted(
    (14, st.just(("POST", WEBHOOK_PATH))),
    (2, st.tuples(st.sampled_from(["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
                  st.just(WEBHOOK_PATH))),
    (1, st.tuples(st.just("GET"),
                  st.sampled_from(["/healthz", "/readyz", "/metrics", "/openapi.json"]))),
    (1, st.tuples(st.sampled_from(["POST", "GET"]),
                  st.from_regex(r"\A/([a-z0-9_-][a-z0-9_/-]{0,30})?\Z"))),
)  # fmt: skip
_SIGNING = _weighted(
    (5, st.just("valid")),
    (2, st.sampled_from(["none", "wrong_secret", "stale", "future", "garbage", "tampered"])),
)
_CONTENT_TYPES = _weighted(
    (6, st.sampled_from(["application/json", "application/json; charset=utf-8"])),
    (1, st.sampled_from(
        [None, "application/json; charset=latin-1", "text/plain", "multipart/form-data; b=x"]
    )),
    (1, _HEADER_TEXT),
)  # fmt: skip
_EXTRA_HEADERS = _weighted(
    (3, st.just({})),
    (1, st.dictionaries(_HEADER_NAMES, _HEADER_TEXT, min_size=1, max_size=4)),
)


async def test_arbitrary_requests_never_5xx_and_only_accepted_ones_produce(
    driver: Driver, fuzz_settings: Settings
) -> None:
    limit = fuzz_settings.max_body_bytes

    @hsettings(
        max_examples=ARBITRARY_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        route=_ROUTES,
        body=_bodies(limit),
        signing=_SIGNING,
        skew=st.integers(min_value=0, max_value=100),
        content_type=_CONTENT_TYPES,
        extra=_EXTRA_HEADERS,
    )
    def run(
        route: tuple[str, str],
        body: bytes,
        signing: str,
        skew: int,
        content_type: str | None,
        extra: dict[str, str],
    ) -> None:
        method, path = route
        now = int(time.time())
        headers: dict[str, str] = {}
        if signing != "none":
            secret = "whsec_intruder" if signing == "wrong_secret" else SECRET
            ts = {"stale": now - 301 - skew, "future": now + 301 + skew}.get(signing, now)
            headers = signed(body, secret, ts)
            if signing == "garbage":
                headers["X-Fanfare-Signature"] = "sha256=" + uuid.uuid4().hex * 2
            if signing == "tampered":
                body = body + b" "
        headers.pop("Content-Type", None)
        if content_type is not None:
            headers["Content-Type"] = content_type
        headers.update(extra)
        if method in ("GET", "HEAD", "OPTIONS", "DELETE") and path != WEBHOOK_PATH:
            body = b""
        driver.send(method, path, headers, body)

    before = dict(driver.tally.statuses)
    await _run_then_check(driver, fuzz_settings, run, ARBITRARY_EXAMPLES)
    # The generator reaches every answer, not just the cheap early ones.
    seen = {code for code, n in driver.tally.statuses.items() if n > before.get(code, 0)}
    assert seen >= {200, 400, 401, 404, 405, 413, 415}, driver.tally


async def test_signed_envelopes_are_accepted_ignored_or_400_with_a_field(
    driver: Driver, fuzz_settings: Settings
) -> None:
    """Every request correctly signed: the envelope and data validation and
    the translators get the whole of the generated input."""

    @hsettings(
        max_examples=SIGNED_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(sent=st.one_of(_envelopes(sane=True), _envelopes(sane=False)))
    def run(sent: Any) -> None:
        body = orjson.dumps(sent)
        status = driver.send("POST", WEBHOOK_PATH, signed(body, SECRET, int(time.time())), body)
        assert status in (200, 400)

    before = Tally(driver.tally.requests, driver.tally.accepted, dict(driver.tally.statuses))
    await _run_then_check(driver, fuzz_settings, run, SIGNED_EXAMPLES)
    # The generator reaches both outcomes, many times.
    assert driver.tally.accepted - before.accepted > 50, driver.tally
    assert driver.tally.statuses.get(400, 0) - before.statuses.get(400, 0) > 50, driver.tally


RAW_EXAMPLES = 200
_RAW_HEADER_NAMES = (
    b"X-Fanfare-Signature",
    b"X-Fanfare-Timestamp",
    b"X-Fanfare-Delivery-Id",
    b"X-Fanfare-Event-Type",
    b"Content-Type",
)


async def _raw_request(port: int, head: bytes, body: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"\r\n" + body)
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()
    finally:
        writer.close()
    return int(status_line.split()[1])


async def test_header_bytes_that_are_not_text_never_5xx(
    driver: Driver, fuzz_settings: Settings
) -> None:
    """Header values as raw bytes (not even UTF-8), on an otherwise valid
    signed delivery: aiohttp's client cannot send these, a socket can."""
    port = driver.client.server.port
    assert port is not None
    statuses: list[int] = []

    @hsettings(max_examples=RAW_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        name=st.sampled_from(_RAW_HEADER_NAMES),
        value=st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    )
    def run(name: bytes, value: bytes) -> None:
        body = orjson.dumps(
            envelope(
                "queue.consumer.left", {"queueId": "q_raw", "consumerId": "c_raw", "token": "t"}
            )
        )
        headers = signed(body, SECRET, int(time.time()))
        lines = [b"POST " + WEBHOOK_PATH.encode() + b" HTTP/1.1", b"Host: 127.0.0.1"]
        lines += [f"{k}: {v}".encode() for k, v in headers.items() if k.encode() != name]
        lines += [name + b": " + value, b"Content-Length: %d" % len(body), b"Connection: close"]
        head = b"\r\n".join(lines) + b"\r\n"
        future = asyncio.run_coroutine_threadsafe(_raw_request(port, head, body), driver.loop)
        status = future.result(timeout=60)
        assert status < 500, (name, value)
        statuses.append(status)
        with driver.lock:
            driver.tally.requests += 1
            # Every answer of 200 here is a known type made durable.
            driver.tally.accepted += status == 200

    await _run_then_check(driver, fuzz_settings, run, RAW_EXAMPLES)
    # Some got all the way through (a strange delivery id is only dropped).
    assert 200 in statuses
