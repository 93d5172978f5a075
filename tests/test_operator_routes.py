"""Issue 16, item 4: the operator routes through the running service
(`python -m worker serve`, real Kafka and PostgreSQL), with an operator key
and a storefront key. Every answer is checked against the stored OpenAPI
document (tests/test_api.py's client). After every release, stock counters
equal the sums of the holds. The key scopes and the cursor are unit-tested
at the end."""

from __future__ import annotations

import base64
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio

from tests import builders as b
from tests.conftest import API_KEY, OPERATOR_KEY, service_env
from tests.engine_backends import assert_counters_match_rows
from tests.helpers import ServiceProcess, free_port, now, produce_commands, unique, wait_for
from tests.receiver_support import end_offsets
from tests.test_api import Api, _healthy
from worker.config import ConfigError, Settings, api_key_entry, load_settings
from worker.domain.commands import CommandBase
from worker.roles.api.holds import decode_cursor, encode_cursor
from worker.roles.api.http import ApiKey

HOLDS = "/v1/holds"
RELEASE = "/v1/holds/release"
OPERATOR_FINGERPRINT = ApiKey.from_entry(OPERATOR_KEY).fingerprint


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def operator_api(service: ServiceProcess) -> Api:
    await wait_for(lambda: _healthy(service.api_url), timeout=60)
    return Api(service.api_url)


async def _operator(api: Api, method: str, path: str, body: Any = None, **kw: Any) -> Any:
    answer = await api.call(method, path, body, key=OPERATOR_KEY, **kw)
    return answer


async def _world(
    settings: Settings, db: asyncpg.Pool, experience: str, lines: dict[str, list[Any]]
) -> dict[str, list[dict[str, Any]]]:
    """Each consumer of `lines` admitted in `experience` with that cart, one
    second apart (the first earliest); their holds as the database has them."""
    start = now() - timedelta(seconds=len(lines) + 5)
    commands: list[CommandBase] = []
    for n, (consumer, cart) in enumerate(lines.items()):
        at = start + timedelta(seconds=n)
        commands += [
            b.cart(experience, consumer, *cart, at=at),
            b.admit(experience, consumer, f"{experience}-{consumer}", at),
        ]
    await produce_commands(settings, commands)
    wanted = sum(len(cart) for cart in lines.values())
    await wait_for(
        lambda: db.fetchval(
            "SELECT count(*) = $2 FROM reservations WHERE experience_id = $1", experience, wanted
        ),
        timeout=60,
        interval=0.2,
    )
    rows = await db.fetch(
        """SELECT id, consumer_id, product_id, variant_id, quantity, status, created_at
           FROM reservations WHERE experience_id = $1""",
        experience,
    )
    held: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        held.setdefault(r["consumer_id"], []).append(dict(r))
    return held


async def _stock(settings: Settings, db: asyncpg.Pool, product: str, *variants: str | None) -> None:
    await produce_commands(settings, [b.stock(product, 10_000, v) for v in variants])
    await wait_for(
        lambda: db.fetchval(
            "SELECT count(*) = $2 FROM stock WHERE product_id = $1 AND on_hand = 10000",
            product,
            len(variants),
        ),
        timeout=30,
    )


async def _reserved(db: asyncpg.Pool, product: str) -> int:
    total: int = await db.fetchval(
        "SELECT coalesce(sum(reserved), 0) FROM stock WHERE product_id = $1", product
    )
    return total


async def _listed(api: Api, query: str, limit: int = 2) -> list[str]:
    """Every hold the listing gives for `query`, paging `limit` at a time."""
    ids: list[str] = []
    cursor = None
    while True:
        page_query = f"{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        answer = await _operator(api, "GET", f"{HOLDS}?{page_query}")
        assert answer.status == 200, answer.body
        for hold in answer.body["holds"]:
            assert "grantDigest" not in hold
            assert "admissionGrant" not in hold
            ids.append(hold["reservationId"])
        cursor = answer.body["nextCursor"]
        if cursor is None:
            return ids
        assert len(ids) < 1000, "the cursor does not advance"


# --- scopes ------------------------------------------------------------------------


async def test_a_storefront_key_gets_403_on_both_routes_and_nothing_is_produced(
    operator_api: Api, settings: Settings
) -> None:
    before = await end_offsets(settings)
    listing = await operator_api.get(HOLDS, key=API_KEY)
    assert listing.status == 403
    assert listing.body["error"] == "FORBIDDEN_SCOPE"
    assert set(listing.body) == {"error", "message"}
    release = await operator_api.post(
        RELEASE, {"experienceId": "e", "consumerId": "c", "reason": "x"}, key=API_KEY
    )
    assert release.status == 403
    assert release.body["error"] == "FORBIDDEN_SCOPE"
    assert await end_offsets(settings) == before
    # Without a key it stays 401; the operator key may call every route.
    assert (await operator_api.get(HOLDS, key=None)).status == 401
    cart = f"/v1/experiences/{unique('exp')}/consumers/c/cart"
    assert (await operator_api.get(cart, key=OPERATOR_KEY)).status == 200
    assert (await operator_api.get(HOLDS + "?limit=1", key=OPERATOR_KEY)).status == 200


# --- listing -----------------------------------------------------------------------


async def test_an_operator_pages_250_holds_of_a_product_and_releases_them(
    operator_api: Api, settings: Settings, db: asyncpg.Pool
) -> None:
    experience, product = unique("exp"), unique("prod")
    await _stock(settings, db, product, "42", "43")
    # 125 consumers, two lines each: two holds share each created_at, so the
    # order falls back to the id.
    carts = {f"c{n:03}": [b.line(product, 1, "42"), b.line(product, 2, "43")] for n in range(125)}
    held = await _world(settings, db, experience, carts)
    every = sorted(
        (h for hs in held.values() for h in hs),
        key=lambda h: (h["created_at"], h["id"]),
        reverse=True,
    )
    assert len(every) == 250
    query = f"experienceId={experience}&productId={product}"

    first = await _operator(operator_api, "GET", f"{HOLDS}?{query}&limit=100")
    assert first.status == 200
    # Newer holds arriving between two pages come before the cursor: the
    # pages after it neither repeat nor miss anything.
    late = {"late": [b.line(product, 1, "42")]}
    start = now()
    await produce_commands(
        settings,
        [
            b.cart(experience, "late", *late["late"], at=start),
            b.admit(experience, "late", f"{experience}-late", start),
        ],
    )
    await wait_for(
        lambda: db.fetchval(
            "SELECT count(*) = 251 FROM reservations WHERE experience_id = $1", experience
        ),
        timeout=30,
    )
    rest = await _pages_from(operator_api, query, first.body["nextCursor"])
    pages = [first.body["holds"], *rest]
    assert [len(p) for p in pages] == [100, 100, 50]
    listed = [h["reservationId"] for p in pages for h in p]
    assert listed == [str(h["id"]) for h in every]
    sample = pages[0][0]
    assert set(sample) == {
        "reservationId",
        "experienceId",
        "consumerId",
        "productId",
        "variantId",
        "quantity",
        "status",
        "expiresAt",
        "secondsRemaining",
        "orderId",
        "endReason",
    }
    assert sample["experienceId"] == experience
    assert sample["status"] == "active"
    assert 0 < sample["secondsRemaining"] <= 660

    reserved = await _reserved(db, product)
    answer = await _operator(
        operator_api,
        "POST",
        RELEASE,
        {"experienceId": experience, "productId": product, "reason": "recount: 3 pairs damaged"},
    )
    assert answer.status == 200, answer.body
    assert len(answer.body["commandIds"]) == 1
    assert len(answer.body["released"]) == 251
    assert answer.body["notActive"] == answer.body["unknown"] == []
    # Exactly those quantities went back: 125 * (1 + 2), plus the late 1.
    assert await _reserved(db, product) == reserved - 376
    await assert_counters_match_rows(db)
    statuses = await db.fetch(
        """SELECT DISTINCT status, end_reason FROM reservations WHERE experience_id = $1""",
        experience,
    )
    assert [tuple(r) for r in statuses] == [("released", "operator")]
    admissions = await db.fetch(
        "SELECT DISTINCT status FROM admissions WHERE experience_id = $1", experience
    )
    assert [r["status"] for r in admissions] == ["active"]  # the admissions stay
    # The events say who asked and why.
    events = await _released_events(db, answer.body["commandIds"][0])
    assert len(events) == 251
    assert {(e["requestedBy"], e["requestReason"], e["reason"]) for e in events} == {
        (OPERATOR_FINGERPRINT, "recount: 3 pairs damaged", "operator")
    }
    released = await _operator(operator_api, "GET", f"{HOLDS}?{query}&status=released&limit=500")
    assert len(released.body["holds"]) == 251
    assert released.body["nextCursor"] is None


async def _pages_from(api: Api, query: str, cursor: str | None) -> list[list[dict[str, Any]]]:
    pages = []
    while cursor is not None:
        answer = await _operator(api, "GET", f"{HOLDS}?{query}&limit=100&cursor={cursor}")
        assert answer.status == 200, answer.body
        pages.append(answer.body["holds"])
        cursor = answer.body["nextCursor"]
        assert len(pages) < 20, "the cursor does not advance"
    return pages


async def _released_events(db: asyncpg.Pool, command_id: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        """SELECT payload FROM outbox
           WHERE convert_from(payload, 'UTF8')::jsonb->>'commandId' = $1""",
        command_id,
    )
    return [orjson.loads(r["payload"]) for r in rows]


async def test_each_filter(operator_api: Api, settings: Settings, db: asyncpg.Pool) -> None:
    e1, e2 = unique("exp"), unique("exp")
    shoe, cap = unique("prod"), unique("prod")
    await _stock(settings, db, shoe, "42", "43")
    await _stock(settings, db, cap, None)
    alice, bob = unique("cons"), unique("cons")
    one = await _world(
        settings,
        db,
        e1,
        {alice: [b.line(shoe, 1, "42"), b.line(cap, 1)], bob: [b.line(shoe, 1, "43")]},
    )
    two = await _world(settings, db, e2, {alice: [b.line(shoe, 2, "42")]})
    everything = [h for world in (one, two) for hs in world.values() for h in hs]

    def ids(*keep: Any) -> list[str]:
        chosen = [h for h in everything if all(k(h) for k in keep)]
        chosen.sort(key=lambda h: (h["created_at"], h["id"]), reverse=True)
        return [str(h["id"]) for h in chosen]

    # Bob's hold ends, so the status filter has something to tell apart.
    ended = await _operator(
        operator_api,
        "POST",
        RELEASE,
        {"experienceId": e1, "consumerId": bob, "reason": "fraud check"},
    )
    assert ended.status == 200, ended.body
    bob_hold = str(one[bob][0]["id"])

    assert await _listed(operator_api, f"experienceId={e1}") == ids(
        lambda h: h in one[alice] or h in one[bob]
    )
    assert await _listed(operator_api, f"experienceId={e2}") == ids(lambda h: h in two[alice])
    assert await _listed(operator_api, f"consumerId={alice}") == ids(
        lambda h: h["consumer_id"] == alice
    )
    assert await _listed(operator_api, f"productId={shoe}") == ids(
        lambda h: h["product_id"] == shoe
    )
    assert await _listed(operator_api, f"productId={shoe}&variantId=42") == ids(
        lambda h: h["product_id"] == shoe, lambda h: h["variant_id"] == "42"
    )
    assert await _listed(
        operator_api, f"experienceId={e1}&productId={shoe}&variantId=42&consumerId={alice}"
    ) == ids(lambda h: h in one[alice], lambda h: h["product_id"] == shoe)
    assert await _listed(operator_api, f"experienceId={e1}&status=released") == [bob_hold]
    active = await _listed(operator_api, f"experienceId={e1}&status=active")
    assert bob_hold not in active
    assert len(active) == 2
    assert await _listed(operator_api, f"experienceId={e1}&status=converted") == []
    assert await _listed(operator_api, f"experienceId={unique('exp')}") == []


async def test_parameters_and_cursors_are_validated(operator_api: Api) -> None:
    def forged(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    cases = {
        "limit=0": "limit",
        "limit=501": "limit",
        "limit=ten": "limit",
        "status=held": "status",
        "experienceId=" + "x" * 201: "experienceId",
        "consumerId=%00": "consumerId",
        "cursor=not*base64": "cursor",
        "cursor=" + forged("garbage"): "cursor",
        "cursor=" + forged("2026-11-27T09:00:00|not-a-uuid"): "cursor",
        "cursor=" + forged(f"2026-11-27T09:00:00|{uuid.uuid4()}"): "cursor",  # naive time
        "cursor=" + "A" * 201: "cursor",
    }
    for query, field in cases.items():
        answer = await _operator(operator_api, "GET", f"{HOLDS}?{query}")
        assert answer.status == 400, query
        assert answer.body["error"] == "INVALID_PARAMETER", query
        assert answer.body["field"] == field, query
    # A cursor past every hold: an empty last page.
    past = encode_cursor(now() - timedelta(days=3650), uuid.UUID(int=0))
    answer = await _operator(operator_api, "GET", f"{HOLDS}?cursor={past}")
    assert answer.status == 200
    assert answer.body == {"holds": [], "nextCursor": None}


# --- releasing ----------------------------------------------------------------------


async def test_release_by_consumer_by_product_variant_and_bodies_validated(
    operator_api: Api, settings: Settings, db: asyncpg.Pool
) -> None:
    experience, shoe = unique("exp"), unique("prod")
    await _stock(settings, db, shoe, "42", "43")
    alice, bob = unique("cons"), unique("cons")
    held = await _world(
        settings,
        db,
        experience,
        {alice: [b.line(shoe, 1, "42"), b.line(shoe, 2, "43")], bob: [b.line(shoe, 3, "43")]},
    )
    reserved = await _reserved(db, shoe)
    by_variant = await _operator(
        operator_api,
        "POST",
        RELEASE,
        {"experienceId": experience, "productId": shoe, "variantId": "43", "reason": "recall"},
    )
    assert by_variant.status == 200, by_variant.body
    assert len(by_variant.body["released"]) == 2
    assert await _reserved(db, shoe) == reserved - 5
    by_consumer = await _operator(
        operator_api,
        "POST",
        RELEASE,
        {"experienceId": experience, "consumerId": alice, "reason": "duplicate account"},
    )
    assert by_consumer.status == 200, by_consumer.body
    alice_42 = next(h for h in held[alice] if h["variant_id"] == "42")
    assert by_consumer.body["released"] == [str(alice_42["id"])]
    assert await _reserved(db, shoe) == reserved - 6
    await assert_counters_match_rows(db)

    hold = str(alice_42["id"])
    for body in (
        {"reservationIds": [], "reason": "r"},
        {"reservationIds": [hold], "experienceId": experience, "reason": "r"},
        {"experienceId": experience, "reason": "r"},
        {"experienceId": experience, "consumerId": alice, "productId": shoe, "reason": "r"},
        {"consumerId": alice, "reason": "r"},
        {"experienceId": experience, "consumerId": alice, "variantId": "42", "reason": "r"},
        {"experienceId": experience, "consumerId": alice},
        {"experienceId": experience, "consumerId": alice, "reason": ""},
        {"experienceId": experience, "consumerId": alice, "reason": "x" * 501},
        {"experienceId": experience, "consumerId": alice, "reason": "line\nbreak"},
        {"reservationIds": ["not-a-uuid"], "reason": "r"},
        {"reservationIds": [str(uuid.uuid4()) for _ in range(501)], "reason": "r"},
        {"reservationIds": [hold], "reason": "r", "force": True},
    ):
        answer = await _operator(operator_api, "POST", RELEASE, body)
        assert answer.status == 400, body
        assert answer.body["error"] == "INVALID_BODY", body


async def test_a_release_by_ids_spanning_two_experiences_and_its_retry(
    operator_api: Api, settings: Settings, db: asyncpg.Pool
) -> None:
    e1, e2, product = unique("exp"), unique("exp"), unique("prod")
    await _stock(settings, db, product, None)
    one = await _world(settings, db, e1, {"a": [b.line(product, 1)], "b": [b.line(product, 2)]})
    two = await _world(settings, db, e2, {"a": [b.line(product, 4)]})
    a1, b1, a2 = (str(w[c][0]["id"]) for w, c in ((one, "a"), (one, "b"), (two, "a")))
    gone = await _operator(
        operator_api, "POST", RELEASE, {"reservationIds": [b1], "reason": "first"}
    )
    assert gone.status == 200
    assert gone.body["released"] == [b1]
    reserved = await _reserved(db, product)
    stranger = str(uuid.uuid4())
    body = {"reservationIds": [a2, a1, b1, stranger, a1], "reason": "bots"}
    headers = {"Idempotency-Key": unique("release")}
    first = await _operator(operator_api, "POST", RELEASE, body, headers=headers)
    assert first.status == 200, first.body
    assert len(first.body["commandIds"]) == 2  # one per experience
    assert sorted(first.body["released"]) == sorted([a1, a2])
    assert first.body["notActive"] == [b1]
    assert first.body["unknown"] == [stranger]
    assert await _reserved(db, product) == reserved - 5
    await assert_counters_match_rows(db)

    before = await end_offsets(settings)
    again = await _operator(operator_api, "POST", RELEASE, body, headers=headers)
    assert (again.status, again.body) == (200, first.body)
    assert await end_offsets(settings) == before  # answered from the inbox
    # Each command's outcome is there to read, as for any write.
    for command_id in first.body["commandIds"]:
        outcome = await _operator(operator_api, "GET", f"/v1/commands/{command_id}")
        assert outcome.status == 200
        assert outcome.body["commandType"] == "holds.release"
    # Ids that are no hold at all: nothing to produce, answered at once.
    nothing = await _operator(
        operator_api, "POST", RELEASE, {"reservationIds": [stranger], "reason": "r"}
    )
    assert nothing.status == 200
    assert nothing.body == {
        "status": "released",
        "commandIds": [],
        "released": [],
        "notActive": [],
        "unknown": [stranger],
    }


async def test_a_release_not_applied_in_time_is_202_then_its_retry_answers_it(
    settings: Settings,
) -> None:
    """An API whose commands topic no consumer reads yet answers 202 naming
    the pending command; once a consumer applies it, the same request with
    the same Idempotency-Key answers the whole outcome."""
    topic = f"{settings.commands_topic}.release{uuid.uuid4().hex[:6]}"
    env = service_env(
        settings,
        COMMANDS_TOPIC=topic,
        CONSUMER_GROUP=f"{settings.consumer_group}.release",
        API_WAIT_SECONDS="0.3",
        OPS_PORT=str(free_port()),
    )
    api_only = ServiceProcess(["api"], env)
    consumer = ServiceProcess(["consumer"], {**env, "LISTEN_PORT": str(free_port())})
    await api_only.start()
    try:
        await wait_for(lambda: _healthy(api_only.api_url), timeout=60)
        client = Api(api_only.api_url)
        body = {"experienceId": unique("exp"), "consumerId": "c", "reason": "bots"}
        headers = {"Idempotency-Key": unique("release")}
        answer = await _operator(client, "POST", RELEASE, body, headers=headers)
        assert answer.status == 202, answer.body
        assert answer.body["status"] == "pending"
        assert answer.body["commandIds"] == [answer.body["commandId"]]
        assert answer.headers["Location"] == f"/v1/commands/{answer.body['commandId']}"

        await consumer.start()

        async def applied() -> Any:
            again = await _operator(client, "POST", RELEASE, body, headers=headers)
            return again if again.status == 200 else None

        done = await wait_for(applied, timeout=60)
        assert done.body["commandIds"] == answer.body["commandIds"]
        assert done.body["released"] == []
    finally:
        await consumer.stop()
        await api_only.stop()


# --- units: key scopes and cursors ---------------------------------------------------


def test_key_entries_name_their_scope() -> None:
    assert api_key_entry("rk_plain") == ("rk_plain", "storefront")
    assert api_key_entry("rk_ops:operator") == ("rk_ops", "operator")
    assert api_key_entry("rk_shop:storefront") == ("rk_shop", "storefront")
    assert api_key_entry("rk:with:colons:operator") == ("rk:with:colons", "operator")
    for bad in ("rk_x:admin", ":operator", "rk_secret:part"):
        with pytest.raises(ValueError, match="scope"):
            api_key_entry(bad)
    operator, storefront = ApiKey.from_entry("k:operator"), ApiKey.from_entry("k")
    assert operator.fingerprint == storefront.fingerprint  # the key's, not the entry's
    assert operator.allows("operator")
    assert operator.allows(None)
    assert storefront.allows(None)
    assert not storefront.allows("operator")


def test_an_unknown_scope_stops_the_process_with_one_line_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(
            database_url="postgresql://x/y",
            kafka_bootstrap_servers="k:9092",
            fanfare_webhook_secret="whsec_x",
            reservation_api_keys="rk_good,rk_secret_half:other_half",
        )
    message = str(refused.value)
    assert message.startswith("invalid configuration: RESERVATION_API_KEYS:")
    assert "\n" not in message
    assert "rk_secret_half" not in message
    assert "other_half" not in message


def test_cursors_round_trip_and_refuse_what_they_did_not_make() -> None:
    at, rid = now(), uuid.uuid4()
    assert decode_cursor(encode_cursor(at, rid)) == (at, rid)
    for bad in ("", "@@@", base64.urlsafe_b64encode(b"\xff\xfe").decode()):
        with pytest.raises(ValueError, match="not a cursor"):
            decode_cursor(bad)
