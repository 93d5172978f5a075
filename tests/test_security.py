"""Hostile input against the running service (issue 9): `python -m worker
serve` on a database and topics of its own, attacked over loopback.

- SQL metacharacters and unicode edge cases in every id (experience,
  consumer, product, variant, order, event, organisation), through signed
  webhooks and the API: 2xx and stored verbatim, or a clean 4xx; never 5xx.
- Admission grants never in the service's log, in any database column, or
  in any record (key, value, header) of the commands, events and dead-letter
  topics; nor the bearer key or the webhook secret in the log.
- Every secured API route refuses a missing or wrong key, producing nothing.
- Slow clients (headers, or a body, trickled) are cut off after a deadline.
- Oversized and malformed headers get a 4xx, and the service stays up.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import orjson
import pytest
import pytest_asyncio
import yarl
from aiokafka import TopicPartition

from tests.conftest import API_KEY, SECRET, service_env
from tests.faults_support import log_events
from tests.helpers import ServiceProcess, json_lines, signed_headers, wait_for
from tests.isolated import isolated_settings
from tests.receiver_support import end_offsets, read_since
from tests.stack import Stack
from worker.config import Settings
from worker.domain import ids
from worker.roles.api.routes import ROUTES

pytestmark = pytest.mark.integration

# Accepted ids: each must come back byte for byte from every table it lands in.
HOSTILE = [
    "o'brien",
    'say "cheese"',
    "'; DROP TABLE reservations; --",
    "1' OR '1'='1",
    "back\\slash\\",
    "%s%d%n$1",
    "emoji 🎟️🔥👩‍👩‍👧",
    "rtl \u200f\u202eevil\u202c",
    "zero\u200bwidth",
    "\ufeffbom",
    "e\u0301 combining",
    "slash/and?query#frag&x=1",
    "..",
    " spaced ",
    "\u2028line-sep\u2029",
    "中文-идентификатор",
    "<script>alert(1)</script>",
    "$(reboot)`id`",
    "\\u0000 literal",
    "x" * 200,
]
# Refused ids: control characters (NUL first: PostgreSQL cannot even store
# it), empty, too long.
REFUSED = ["nul\x00byte", "tab\tx", "new\nline", "cr\rx", "del\x7f", "esc\x1b[31m", "", "x" * 201]


@dataclass
class Target:
    settings: Settings
    proc: ServiceProcess
    pool: asyncpg.Pool

    @property
    def webhook(self) -> str:
        return self.proc.webhook_url

    @property
    def api(self) -> str:
        return self.proc.api_url

    def log(self) -> str:
        return self.proc.log_path.read_text(errors="replace")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def target(stack: Stack, settings: Settings) -> AsyncIterator[Target]:
    async with isolated_settings(stack, settings) as iso:
        # The two timeouts are the ones the slow-client tests expect the
        # service to honour (see the final report of issue 9).
        # At debug the receiver logs every accepted webhook too (at info not
        # those), so the checks below see their lines.
        env = service_env(
            iso, HTTP_BODY_TIMEOUT_SECONDS="2", HTTP_IDLE_TIMEOUT_SECONDS="3", LOG_LEVEL="debug"
        )
        proc = ServiceProcess(["serve"], env)
        proc.log_path = proc.log_path.with_name(f"security-{proc.port}.log")
        await proc.start()
        pool = await asyncpg.create_pool(iso.database_url, min_size=1, max_size=3)
        assert pool is not None
        try:
            await wait_for(lambda: _healthy(proc.api_url), timeout=60)
            yield Target(iso, proc, pool)
        finally:
            await pool.close()
            await proc.stop()


async def _healthy(base: str) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(base + "/healthz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


# --- HTTP helpers ---------------------------------------------------------------------


def seg(value: str) -> str:
    """One path segment, every reserved character escaped ('/' included)."""
    return quote(value, safe="")


async def call(
    method: str,
    url: str,
    body: Any = None,
    *,
    key: str | None = API_KEY,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, yarl.URL(url, encoded=True), data=data, headers=sent) as r,
    ):
        text = await r.read()
        try:
            return r.status, orjson.loads(text)
        except orjson.JSONDecodeError:
            return r.status, text


async def webhook(target: Target, envelope: dict[str, Any] | bytes, **kw: Any) -> tuple[int, Any]:
    body = envelope if isinstance(envelope, bytes) else orjson.dumps(envelope)
    secret = kw.pop("secret", SECRET)
    async with (
        aiohttp.ClientSession() as session,
        session.post(target.webhook, data=body, headers=signed_headers(body, secret)) as r,
    ):
        return r.status, await r.json(content_type=None)


def admitted(exp: str, consumer: str, grant: str, *, event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or f"whk_{uuid.uuid4().hex}",
        "type": "queue.consumer.admitted",
        "timestamp": _now(),
        "organizationId": "org_security",
        "data": {"queueId": exp, "consumerId": consumer, "admissionToken": grant},
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def grant() -> str:
    return f"eyJsecret{uuid.uuid4().hex}.grant.sig"


def not_5xx(status: int, what: str) -> None:
    assert status < 500, f"{what}: {status}"


# --- ids ------------------------------------------------------------------------------


async def _hostile_story(target: Target, value: str, n: int) -> None:
    """Stock, cart, admission, validation, checkout and Fanfare's order event,
    every id the hostile value; each answer 2xx and each row verbatim."""
    token = grant()
    item = {"productId": value, "variantId": value, "quantity": 1}
    cart_path = f"{target.api}/v1/experiences/{seg(value)}/consumers/{seg(value)}"
    status, body = await call(
        "PUT", f"{target.api}/v1/stock", {"productId": value, "variantId": value, "onHand": 5}
    )
    assert (status, body.get("status")) == (200, "set"), (value, status, body)
    status, body = await call("PUT", f"{cart_path}/cart", {"items": [item]})
    assert (status, body.get("status")) == (200, "stored"), (value, status, body)

    envelope = admitted(value, value, token, event_id=f"{value[:190]}#{n}")
    envelope["organizationId"] = value
    status, body = await webhook(target, envelope)
    assert (status, body.get("status")) == (200, "accepted"), (value, status, body)
    await wait_for(
        lambda: target.pool.fetchval(
            """SELECT count(*) FROM reservations
               WHERE experience_id = $1 AND consumer_id = $1 AND product_id = $1
                 AND variant_id = $1 AND admission_grant = $2 AND status = 'active'""",
            value,
            ids.grant_digest(token),
        ),
        timeout=30,
    )
    checkout = {
        "experienceId": value,
        "consumerId": value,
        "admissionGrant": token,
        "items": [item],
    }
    status, body = await call("POST", f"{target.api}/v1/checkout/validate", checkout)
    assert (status, body.get("valid")) == (200, True), (value, status, body)
    status, body = await call(
        "POST", f"{target.api}/v1/checkout/complete", {**checkout, "orderId": value}
    )
    assert (status, body.get("status"), body.get("orderId")) == (200, "converted", value), body
    order = {
        "id": f"ord#{value[:190]}#{n}",
        "type": "order.created",
        "timestamp": _now(),
        "organizationId": value,
        "data": {"queueId": value, "consumerId": value, "orderId": value},
    }
    status, body = await webhook(target, order)
    assert (status, body.get("status")) == (200, "accepted"), (value, status, body)

    # Read back through the API and straight from the tables.
    query = f"productId={seg(value)}&variantId={seg(value)}"
    status, body = await call("GET", f"{target.api}/v1/stock?{query}")
    assert (status, body["productId"], body["variantId"], body["sold"]) == (200, value, value, 1)
    status, body = await call("GET", f"{cart_path}/cart")
    assert status == 200
    assert (body["experienceId"], body["consumerId"], body["items"][0]["productId"]) == (
        value,
        value,
        value,
    )
    status, body = await call("GET", f"{cart_path}/reservations")
    assert status == 200
    [hold] = body["reservations"]
    assert (hold["productId"], hold["variantId"], hold["orderId"]) == (value, value, value)
    row = await target.pool.fetchrow(
        """SELECT r.status, r.order_id, a.order_id AS admission_order, c.items::text AS items
           FROM reservations r JOIN admissions a USING (admission_grant)
           JOIN carts c ON c.experience_id = r.experience_id AND c.consumer_id = r.consumer_id
           WHERE r.admission_grant = $1""",
        ids.grant_digest(token),
    )
    assert row is not None
    assert (row["status"], row["order_id"], row["admission_order"]) == (
        "converted",
        value,
        value,
    )
    assert orjson.loads(row["items"])[0]["productId"] == value


async def test_hostile_ids_are_stored_verbatim_everywhere(target: Target) -> None:
    gate = asyncio.Semaphore(5)

    async def one(n: int, value: str) -> None:
        async with gate:
            await _hostile_story(target, value, n)

    await asyncio.gather(*(one(n, v) for n, v in enumerate(HOSTILE)))
    stored = {r["product_id"] for r in await target.pool.fetch("SELECT product_id FROM stock")}
    assert set(HOSTILE) <= stored
    # Nothing was dropped or rewritten by the metacharacters: every table
    # still exists and holds exactly the stories written.
    held = await target.pool.fetchval(
        "SELECT count(*) FROM reservations WHERE experience_id = ANY($1::text[])", HOSTILE
    )
    assert held == len(HOSTILE)


async def test_ids_with_braces_reach_their_api_routes(target: Target) -> None:
    """Identifiers may hold '{' and '}' (webhooks and bodies take them), so
    path parameters must too: otherwise a drop whose id has one can never
    get a cart through the API."""
    for value in ('{"json": [1]}', "%s{0}", "}{"):
        status, body = await call(
            "PUT", f"{target.api}/v1/stock", {"productId": value, "onHand": 1}
        )
        assert status == 200, (value, body)
        path = f"{target.api}/v1/experiences/{seg(value)}/consumers/{seg(value)}/cart"
        status, body = await call("PUT", path, {"items": [{"productId": value, "quantity": 1}]})
        assert (status, body.get("status")) == (200, "stored"), (value, status, body)
        status, body = await call("GET", path)
        assert (status, body.get("experienceId")) == (200, value), (value, status, body)


async def test_refused_ids_are_clean_4xx_and_produce_nothing(target: Target) -> None:
    before = await end_offsets(target.settings)
    answers: list[tuple[str, int]] = []
    api = target.api
    for bad in REFUSED:
        good_item = {"productId": "p", "quantity": 1}
        checkout = {
            "experienceId": "e",
            "consumerId": "c",
            "admissionGrant": grant(),
            "orderId": "o",
            "items": [good_item],
        }
        requests: list[tuple[str, str, str, Any]] = [
            ("stock.productId", "PUT", f"{api}/v1/stock", {"productId": bad, "onHand": 1}),
            (
                "stock.variantId",
                "PUT",
                f"{api}/v1/stock",
                {"productId": "p", "variantId": bad, "onHand": 1},
            ),
            (
                "cart.experienceId",
                "PUT",
                f"{api}/v1/experiences/{seg(bad)}/consumers/c/cart",
                {"items": []},
            ),
            (
                "cart.consumerId",
                "PUT",
                f"{api}/v1/experiences/e/consumers/{seg(bad)}/cart",
                {"items": []},
            ),
            (
                "cart.item.productId",
                "PUT",
                f"{api}/v1/experiences/e/consumers/c/cart",
                {"items": [{"productId": bad, "quantity": 1}]},
            ),
            (
                "cart.item.variantId",
                "PUT",
                f"{api}/v1/experiences/e/consumers/c/cart",
                {"items": [{"productId": "p", "variantId": bad, "quantity": 1}]},
            ),
            (
                "complete.orderId",
                "POST",
                f"{api}/v1/checkout/complete",
                {**checkout, "orderId": bad},
            ),
            (
                "complete.experienceId",
                "POST",
                f"{api}/v1/checkout/complete",
                {**checkout, "experienceId": bad},
            ),
            ("stock.query", "GET", f"{api}/v1/stock?productId={seg(bad)}", None),
        ]
        for what, method, url, body in requests:
            status, _ = await call(method, url, body)
            answers.append((f"api {what} {bad!r}", status))
        for where in ("queueId", "consumerId", "id", "organizationId", "orderId"):
            envelope = admitted("e", "c", grant())
            if where == "orderId":
                envelope["type"] = "order.created"
                envelope["data"] = {"queueId": "e", "consumerId": "c", "orderId": bad}
            elif where in ("id", "organizationId"):
                envelope[where] = bad
            else:
                envelope["data"][where] = bad
            status, _ = await webhook(target, envelope)
            answers.append((f"webhook {where} {bad!r}", status))

    # Lone surrogates are valid JSON escapes and invalid text.
    surrogate = b'{"productId": "lone\\ud800", "onHand": 1}'
    status, _ = await call("PUT", f"{api}/v1/stock", raw=surrogate)
    answers.append(("api stock lone surrogate", status))
    envelope = orjson.dumps(admitted("e", "c", grant())).replace(
        b'"queueId":"e"', b'"queueId":"\\udc00"'
    )
    status, _ = await webhook(target, envelope)
    answers.append(("webhook lone surrogate", status))

    bad = [(what, status) for what, status in answers if not 400 <= status < 500]
    assert not bad, bad
    assert await end_offsets(target.settings) == before


async def test_invalid_utf8_in_a_path_is_never_a_5xx(target: Target) -> None:
    # yarl keeps undecodable percent-escapes as they are, so the id arrives
    # as the literal text "x%ED%A0%80"; whatever the answer, not a 5xx.
    status, _ = await call("GET", f"{target.api}/v1/experiences/x%ED%A0%80/consumers/c/cart")
    not_5xx(status, "invalid UTF-8 path segment")
    status, _ = await call("GET", f"{target.api}/v1/experiences/x%00/consumers/c/cart")
    assert status == 400


# --- credentials ----------------------------------------------------------------------


async def test_admission_grants_are_never_logged_stored_or_produced(target: Target) -> None:
    api = target.api
    exp, consumer = f"exp-{uuid.uuid4().hex[:8]}", f"cons-{uuid.uuid4().hex[:8]}"
    product = f"prod-{uuid.uuid4().hex[:8]}"
    tokens = {
        name: grant()
        for name in (
            "held",
            "left",
            "draw",
            "wrong",
            "bad_sig",
            "bad_data",
            "too_long",
            "unknown",
            "bad_body",
            "order",
        )
    }
    tokens["too_long"] = tokens["too_long"] + "x" * 8200
    item = {"productId": product, "quantity": 1}
    assert (await call("PUT", f"{api}/v1/stock", {"productId": product, "onHand": 10}))[0] == 200
    cart = f"{api}/v1/experiences/{exp}/consumers/{consumer}/cart"
    assert (await call("PUT", cart, {"items": [item]}))[0] == 200

    accepted = []
    for name, event_type in (("held", "queue.consumer.admitted"), ("draw", "draw.consumer.won")):
        envelope = admitted(exp, consumer if name == "held" else f"{consumer}-d", tokens[name])
        if name == "draw":
            envelope["type"] = event_type
            data = envelope["data"]
            envelope["data"] = {
                "drawId": exp,
                "consumerId": data["consumerId"],
                "grant": tokens[name],
            }
        status, body = await webhook(target, envelope)
        assert status == 200, body
        accepted.append(body["commandId"])
    await wait_for(
        lambda: target.pool.fetchval(
            """SELECT count(*) = 1 FROM reservations
               WHERE admission_grant = $1 AND status = 'active'""",
            ids.grant_digest(tokens["held"]),
        )
    )
    checkout = {"experienceId": exp, "consumerId": consumer, "items": [item]}
    status, _ = await call(
        "POST", f"{api}/v1/checkout/validate", {**checkout, "admissionGrant": tokens["held"]}
    )
    assert status == 200
    status, body = await call(
        "POST", f"{api}/v1/checkout/validate", {**checkout, "admissionGrant": tokens["wrong"]}
    )
    assert (status, body["error"]) == (403, "ADMISSION_MISMATCH")
    status, body = await call(
        "POST",
        f"{api}/v1/checkout/complete",
        {**checkout, "admissionGrant": tokens["held"], "orderId": "o-1"},
    )
    assert (status, body["status"]) == (200, "converted")
    status, body = await call(
        "POST",
        f"{api}/v1/checkout/complete",
        {**checkout, "admissionGrant": tokens["bad_body"], "orderId": "o-2", "items": []},
    )
    assert status == 400

    # A second admission that the consumer leaves (the grant in the event).
    other = f"{consumer}-2"
    status, _ = await webhook(target, admitted(exp, other, tokens["left"]))
    assert status == 200
    left = {
        "id": f"whk_{uuid.uuid4().hex}",
        "type": "queue.consumer.left",
        "timestamp": _now(),
        "organizationId": "org_security",
        "data": {"queueId": exp, "consumerId": other, "admissionToken": tokens["left"]},
    }
    status, body = await webhook(target, left)
    assert status == 200
    accepted.append(body["commandId"])
    order = {
        "id": f"whk_{uuid.uuid4().hex}",
        "type": "order.completed",
        "timestamp": _now(),
        "organizationId": "org_security",
        "data": {
            "queueId": exp,
            "consumerId": consumer,
            "orderId": "o-1",
            "admissionGrant": tokens["order"],
        },
    }
    status, body = await webhook(target, order)
    assert status == 200
    # Refused and ignored deliveries carrying grants.
    status, _ = await webhook(target, admitted(exp, consumer, tokens["bad_sig"]), secret="whsec_no")
    assert status == 401
    broken = admitted(exp, consumer, tokens["bad_data"])
    del broken["data"]["consumerId"]
    assert (await webhook(target, broken))[0] == 400
    assert (await webhook(target, admitted(exp, consumer, tokens["too_long"])))[0] == 400
    unknown = admitted(exp, consumer, tokens["unknown"])
    unknown["type"] = "queue.consumer.teleported"
    assert (await webhook(target, unknown))[0] == 200

    # Positive signals first: everything applied, every event published,
    # and the log has the lines of these very requests.
    await wait_for(
        lambda: target.pool.fetchval(
            "SELECT count(*) = $2 FROM inbox WHERE command_id = ANY($1::uuid[])",
            [uuid.UUID(c) for c in accepted],
            len(accepted),
        )
    )
    await wait_for(
        lambda: target.pool.fetchval(
            "SELECT count(*) = 0 FROM outbox WHERE "
            "seq > (SELECT published_seq FROM outbox_position)"
        )
    )
    await wait_for(
        lambda: asyncio.sleep(
            0,
            sum(
                e.get("command_id") in accepted for e in log_events(target.proc, "webhook_accepted")
            )
            == len(accepted),
        )
    )
    await wait_for(
        lambda: asyncio.sleep(
            0, any(e.get("status") == 400 for e in log_events(target.proc, "api_request"))
        )
    )

    clear = {name: t for name, t in tokens.items()}
    log = target.log()
    in_log = [name for name, t in clear.items() if t[:40] in log]
    assert not in_log, f"grants in the service log: {in_log}"
    for credential in (API_KEY, SECRET):
        assert credential not in log

    at_rest = await _search_tables(target.pool, list(clear.values()))
    assert not at_rest, f"grants stored: {at_rest}"
    # The digests are there: the search above looked where the grants would be.
    assert (
        await target.pool.fetchval(
            "SELECT count(*) FROM admissions WHERE admission_grant = ANY($1::text[])",
            [ids.grant_digest(tokens[n]) for n in ("held", "left", "draw")],
        )
        == 3
    )

    for topic in (
        target.settings.commands_topic,
        target.settings.events_topic,
        target.settings.dead_letter_topic,
    ):
        since = {TopicPartition(topic, p): 0 for p in range(target.settings.topic_partitions)}
        records = await read_since(target.settings, since)
        if topic != target.settings.dead_letter_topic:
            assert records, topic
        for record in records:
            blobs = [record.key or b"", record.value or b""]
            blobs += [v for _, v in record.headers or ()]
            for name, t in clear.items():
                prefix = t[:40].encode()
                assert not any(prefix in blob for blob in blobs), (topic, name)


async def _search_tables(pool: asyncpg.Pool, needles: list[str]) -> list[str]:
    """Every text, json and bytea column of every table, searched for every
    needle (the first 40 characters, which no digest or id can contain)."""
    columns = await pool.fetch(
        """SELECT table_name, column_name, data_type FROM information_schema.columns
           WHERE table_schema = 'public'
             AND data_type IN ('text', 'character varying', 'character', 'json', 'jsonb',
                               'bytea', 'ARRAY')"""
    )
    assert len(columns) > 10, columns
    found = []
    for c in columns:
        table, column = c["table_name"], c["column_name"]
        if c["data_type"] == "bytea":
            where = f"position(convert_to($1, 'UTF8') in \"{column}\") > 0"
        else:
            where = f'strpos("{column}"::text, $1) > 0'
        for needle in needles:
            if await pool.fetchval(f'SELECT count(*) FROM "{table}" WHERE {where}', needle[:40]):
                found.append(f"{table}.{column}")
    return found


async def test_malformed_requests_leave_no_credentials_in_the_log(target: Target) -> None:
    """A request aiohttp cannot parse (bare LF line ends) is refused with a
    400; aiohttp's own error log line must not carry the request's bytes
    (here a bearer key and an admission grant)."""
    token = grant()
    body = orjson.dumps(
        {
            "experienceId": "e",
            "consumerId": "c",
            "admissionGrant": token,
            "orderId": "o",
            "items": [{"productId": "p", "quantity": 1}],
        }
    )
    api_port = int(target.api.rsplit(":", 1)[1])
    request = (
        b"POST /v1/checkout/complete HTTP/1.1\nHost: x\nAuthorization: Bearer "
        + API_KEY.encode()
        + b"\nContent-Type: application/json\nContent-Length: %d\n\n" % len(body)
        + body
    )
    status, _ = await raw_request(api_port, request)
    assert 400 <= status < 500
    envelope = orjson.dumps(admitted("e", "c", token))
    request = (
        b"POST /webhooks/fanfare HTTP/1.1\nHost: x\nContent-Type: application/json\n"
        b"Content-Length: %d\n\n" % len(envelope) + envelope
    )
    status, _ = await raw_request(target.proc.port, request)
    assert 400 <= status < 500
    # A well-formed request after them; once its line is logged, so is
    # whatever the malformed ones left.
    marker = f"/v1/experiences/marker-{uuid.uuid4().hex}/consumers/c/cart"
    assert (await call("GET", target.api + marker))[0] == 200
    await wait_for(
        lambda: asyncio.sleep(
            0, any(e.get("path") == marker for e in log_events(target.proc, "api_request"))
        )
    )
    log = target.log()
    assert token not in log, "admission grant of an unparseable request in the log"
    assert API_KEY not in log, "bearer key of an unparseable request in the log"


# --- API keys -------------------------------------------------------------------------


async def test_every_secured_route_refuses_missing_or_wrong_keys(target: Target) -> None:
    # tests/test_api.py checks one read and one write; this walks the table.
    before = await end_offsets(target.settings)
    secured = [op for op in ROUTES if op.secured]
    assert len(secured) >= 8
    for op in secured:
        path = op.path.replace("{commandId}", str(uuid.uuid4()))
        path = path.replace("{experienceId}", "e").replace("{consumerId}", "c")
        body = {"productId": "p", "onHand": 1} if op.method in ("PUT", "POST") else None
        # (Surrounding white space is not part of a header value in HTTP, so
        # "Bearer <key> " is the key itself and rightly accepted.)
        for key in (None, "", "rk_wrong", API_KEY.upper(), API_KEY[:-1], f"{API_KEY}\u200b"):
            headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
            try:
                status, answer = await call(
                    op.method, target.api + path, body, key=None, headers=headers
                )
            except ValueError:
                continue  # a header value the client itself refuses to send
            assert status == 401, (op.method, op.path, key, status, answer)
            assert answer["error"] == "UNAUTHORIZED"
    assert await end_offsets(target.settings) == before


# --- slow clients ---------------------------------------------------------------------


async def raw_request(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(65536), timeout)
    finally:
        writer.close()
    line = data.split(b"\r\n", 1)[0].split()
    return (int(line[1]) if len(line) > 1 and line[1].isdigit() else 0), data


async def trickle(port: int, head: bytes, step: bytes, bound: float) -> tuple[str, float]:
    """Send `head`, then `step` every 0.25 s until the server answers or
    closes, or `bound` seconds pass. Returns what happened and when."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        while time.monotonic() - started < bound:
            try:
                data = await asyncio.wait_for(reader.read(1024), 0.25)
            except TimeoutError:
                try:
                    writer.write(step)
                    await writer.drain()
                except ConnectionError:
                    return "closed", time.monotonic() - started
                continue
            if not data:
                return "closed", time.monotonic() - started
            return data.split(b"\r\n", 1)[0].decode(errors="replace"), time.monotonic() - started
        return "still open", bound
    except ConnectionError:
        return "closed", time.monotonic() - started
    finally:
        writer.close()


BOUND_S = 15.0


async def _slow_clients(target: Target, kind: str) -> None:
    api_port = int(target.api.rsplit(":", 1)[1])
    if kind == "body":
        cases = {
            "receiver": (
                target.proc.port,
                b"POST /webhooks/fanfare HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n{",
                b" ",
            ),
            "api": (
                api_port,
                b"PUT /v1/stock HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
                b"Content-Length: 100000\r\n\r\n{",
                b" ",
            ),
        }
    else:
        cases = {
            name: (port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-Slow: 1\r\n")
            for name, port in (("receiver", target.proc.port), ("api", api_port))
        }
    # Many at once, and meanwhile a real delivery still goes through.
    runs = [
        trickle(port, head, step, BOUND_S) for port, head, step in cases.values() for _ in range(10)
    ]
    outcome = asyncio.gather(*runs)
    await asyncio.sleep(0.5)
    status, body = await webhook(target, admitted("e-slow", "c-slow", grant()))
    assert status == 200, body
    results = await outcome
    by_target = dict(
        zip(cases, [results[i * 10 : (i + 1) * 10] for i in range(len(cases))], strict=True)
    )
    held = {name: r for name, r in by_target.items() if any(what == "still open" for what, _ in r)}
    assert not held, f"slow {kind} held the connection for {BOUND_S} s: {held}"
    for name, r in by_target.items():
        for what, _ in r:
            assert what == "closed" or " 4" in what, (name, what)


async def test_slow_bodies_are_cut_off(target: Target) -> None:
    await _slow_clients(target, "body")


async def test_slow_headers_are_cut_off(target: Target) -> None:
    await _slow_clients(target, "headers")


async def answered_then_closed(
    port: int, head: bytes, step: bytes = b"", bound: float = 5.0
) -> tuple[str, float]:
    """Send `head`, then `step` every 0.25 s (a slow body) until the server
    answers, then nothing more. Returns the answer's status line and the
    seconds from the answer to the end of the connection (EOF or reset), or
    `bound` if it was still open then. A raw socket, so data the kernel
    already holds is read before a reset is seen."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, head)
        waited_until = time.monotonic() + bound
        answer = b""
        while not answer:
            if time.monotonic() > waited_until:
                return "no answer", bound
            try:
                answer = await asyncio.wait_for(loop.sock_recv(sock, 65536), 0.25)
            except TimeoutError:
                if step:
                    await loop.sock_sendall(sock, step)
                continue
            if not answer:
                return "closed without an answer", 0.0
        answered = time.monotonic()
        status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
        while True:
            left = answered + bound - time.monotonic()
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), max(left, 0.0))
            except TimeoutError:
                return status, bound
            except ConnectionError:
                return status, time.monotonic() - answered
            if not data:
                return status, time.monotonic() - answered
    finally:
        sock.close()


CLOSED_WITHIN_S = 1.0


async def test_a_refused_body_ends_its_connection_with_the_answer(target: Target) -> None:
    """408 and 413 close the connection as they are sent: no drain of the
    rest of the body (aiohttp's lingering close would read it for another
    10 s), no keep-alive."""
    api_port = int(target.api.rsplit(":", 1)[1])
    limit = target.settings.max_body_bytes
    webhook_head = (
        b"POST /webhooks/fanfare HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    )
    api_head = (
        b"PUT /v1/stock HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
    )
    oversized = b"[" + b" " * limit + b"]"
    cases = {
        "receiver, slow body": (
            target.proc.port,
            webhook_head + b"Content-Length: 100000\r\n\r\n{",
            b" ",
            "408",
        ),
        "api, slow body": (api_port, api_head + b"Content-Length: 100000\r\n\r\n{", b" ", "408"),
        # Answered from the header alone; the sender is still uploading.
        "receiver, declared too large": (
            target.proc.port,
            webhook_head + f"Content-Length: {limit + 1}\r\n\r\n{{".encode(),
            b"",
            "413",
        ),
        "receiver, chunked too large": (
            target.proc.port,
            webhook_head
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + f"{len(oversized):x}\r\n".encode()
            + oversized
            + b"\r\n",
            b"",
            "413",
        ),
        "api, too large": (
            api_port,
            api_head + f"Content-Length: {len(oversized)}\r\n\r\n".encode() + oversized,
            b"",
            "413",
        ),
    }
    results = await asyncio.gather(
        *(answered_then_closed(port, head, step) for port, head, step, _ in cases.values())
    )
    for (name, (_, _, _, code)), (status, after) in zip(cases.items(), results, strict=True):
        assert f" {code} " in status, (name, status)
        assert after < CLOSED_WITHIN_S, f"{name}: connection still open {after:.2f} s after {code}"


async def test_a_body_not_in_its_content_encoding_is_refused_in_json_lines_only(
    target: Target,
) -> None:
    """A body that is not the gzip its header says: the receiver's 415 and
    the API's 400, each logged as one structured line, and no traceback
    from aiohttp's decoder (nothing drains the body after the answer)."""
    start = target.proc.log_path.stat().st_size
    api_port = int(target.api.rsplit(":", 1)[1])
    not_gzip = b'{"id": "whk_not_gzip", "type": "queue.consumer.admitted"}'
    framing = f"Content-Encoding: gzip\r\nContent-Length: {len(not_gzip)}\r\n\r\n".encode()
    signed = "".join(f"{k}: {v}\r\n" for k, v in signed_headers(not_gzip, SECRET).items())
    webhook_request = (
        b"POST /webhooks/fanfare HTTP/1.1\r\nHost: x\r\n" + signed.encode() + framing + not_gzip
    )
    api_request = (
        b"PUT /v1/stock HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + API_KEY.encode() + b"\r\n" + framing + not_gzip
    )
    # Raw requests, read until the server closes: aiohttp would log its
    # traceback while draining the body, before closing.
    webhook_answer, _ = await answered_then_closed(target.proc.port, webhook_request)
    api_answer, _ = await answered_then_closed(api_port, api_request)
    assert " 415 " in webhook_answer, webhook_answer
    assert " 400 " in api_answer, api_answer
    # Each line came before its answer: the log is complete.
    with target.proc.log_path.open("rb") as log:
        log.seek(start)
        written = log.read().decode(errors="replace")
    parsed, other = json_lines(written)
    assert not other, f"lines that are not JSON: {other[:5]}"
    lines = written.splitlines()
    assert not [e for e in parsed if "exception" in e], lines
    assert [e["outcome"] for e in parsed if e.get("event") == "webhook_rejected"] == [
        "unsupported_media_type"
    ], lines
    assert any(e.get("error") == "INVALID_BODY" for e in parsed), lines


# --- headers --------------------------------------------------------------------------


async def test_oversized_and_malformed_headers_are_4xx(target: Target) -> None:
    api_port = int(target.api.rsplit(":", 1)[1])
    cases = {
        "header value over 8 KiB": b"POST /webhooks/fanfare HTTP/1.1\r\nHost: x\r\n"
        b"X-Fanfare-Signature: sha256=" + b"a" * 9000 + b"\r\nContent-Length: 0\r\n\r\n",
        "header name over 8 KiB": b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"X" * 9000
        + b": 1\r\n\r\n",
        "300 headers": b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(300))
        + b"\r\n",
        "request line over 8 KiB": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "bare CR in a value": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b\rX-B: c\r\n\r\n",
        "NUL in a value": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b\x00c\r\n\r\n",
        "both lengths": b"POST /webhooks/fanfare HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    }
    answers = {}
    for name, request in cases.items():
        for who, port in (("receiver", target.proc.port), ("api", api_port)):
            status, _ = await raw_request(port, request)
            answers[f"{who}: {name}"] = status
    bad = {k: v for k, v in answers.items() if not 400 <= v < 500}
    assert not bad, bad
    assert await _healthy(target.webhook.rsplit("/webhooks", 1)[0])
    assert await _healthy(target.api)
