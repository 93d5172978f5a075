"""The HTTP API against the real stack: `python -m worker serve` (and, for the
pending path, `python -m worker api` and `consumer` on a topic of their own),
real Kafka, real PostgreSQL. A few tests also run the app in-process on the
same stack, to inject the clock or a closed producer.

Every answer any test receives is checked against the stored OpenAPI
document (status documented for that operation, body valid against its
schema), and the stored document against what the code builds."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import jsonschema
import orjson
import pytest_asyncio
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from tests.conftest import API_KEY, API_KEY_NEXT, SECRET, service_env
from tests.helpers import (
    ServiceProcess,
    admission_envelope,
    free_port,
    now,
    post_webhook,
    unique,
    wait_for,
)
from worker import openapi
from worker.adapters import kafka
from worker.config import Settings
from worker.roles.api import build_api, routes

STORED = openapi.SCHEMAS_DIR / routes.OPENAPI_FILE
DOCUMENT: dict[str, Any] = orjson.loads(STORED.read_text(encoding="utf-8"))


# --- the document ------------------------------------------------------------------


def test_stored_openapi_document_is_what_the_code_builds() -> None:
    stored = STORED.read_text(encoding="utf-8")
    assert stored == routes.render_document(), f"{STORED} is stale: run `{routes.PROG}`"
    assert routes.main(["--check"]) == 0


def test_document_describes_every_registered_route_and_its_references_resolve() -> None:
    doc = routes.openapi_document()
    assert doc["openapi"].startswith("3.1")
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert described == {(op.method, op.path) for op in routes.ROUTES}
    for path in (
        "/v1/experiences/{experienceId}",
        "/v1/stock",
        "/v1/experiences/{experienceId}/consumers/{consumerId}/cart",
        "/v1/experiences/{experienceId}/consumers/{consumerId}/reservations",
        "/v1/checkout/validate",
        "/v1/checkout/complete",
        "/v1/commands/{commandId}",
    ):
        assert path in doc["paths"], path
        for operation in doc["paths"][path].values():
            assert "security" not in operation  # the global bearer requirement
            assert "401" in operation["responses"]
    grant = doc["components"]["schemas"]["CompleteRequest"]["properties"]["admissionGrant"]
    assert grant["writeOnly"] is True

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return own + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            assert part in target, f"dangling {ref}"
            target = target[part]
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


# --- calling the API, checked against the document --------------------------------


def _operation(method: str, path: str) -> dict[str, Any] | None:
    for template, operations in DOCUMENT["paths"].items():
        pattern = re.sub(r"\{[^/]+\}", "[^/]+", template)
        if re.fullmatch(pattern, path) and method.lower() in operations:
            operation: dict[str, Any] = operations[method.lower()]
            return operation
    return None


def _check_against_document(method: str, path: str, status: int, body: Any) -> None:
    operation = _operation(method, path)
    if operation is None:  # unknown route or method: 404/405, in the error shape
        assert status in (404, 405), (method, path, status)
        assert set(body) == {"error", "message"}
        return
    assert str(status) in operation["responses"], f"{method} {path}: {status} undocumented"
    content = operation["responses"][str(status)].get("content", {})
    if "application/json" not in content:
        return
    schema = {**content["application/json"]["schema"], "components": DOCUMENT["components"]}
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    validator.validate(body)


@dataclass
class Answer:
    status: int
    body: Any
    headers: Any


class Api:
    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = API_KEY,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.base + path, data=data, headers=sent) as r,
        ):
            text = await r.read()
            parsed = orjson.loads(text) if r.content_type == "application/json" else text
            answer = Answer(r.status, parsed, r.headers)
        bare_path = path.split("?", 1)[0]
        if r.content_type == "application/json" and bare_path != "/openapi.json":
            _check_against_document(method, bare_path, answer.status, answer.body)
        return answer

    async def get(self, path: str, **kw: Any) -> Answer:
        return await self.call("GET", path, **kw)

    async def put(self, path: str, body: Any, **kw: Any) -> Answer:
        return await self.call("PUT", path, body, **kw)

    async def post(self, path: str, body: Any, **kw: Any) -> Answer:
        return await self.call("POST", path, body, **kw)


async def _healthy(base: str) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(base + "/healthz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def api(service: ServiceProcess) -> Api:
    await wait_for(lambda: _healthy(service.api_url), timeout=60)
    return Api(service.api_url)


def _cart_path(experience: str, consumer: str) -> str:
    return f"/v1/experiences/{experience}/consumers/{consumer}/cart"


def _holds_path(experience: str, consumer: str) -> str:
    return f"/v1/experiences/{experience}/consumers/{consumer}/reservations"


async def _stock(api: Api, product: str, on_hand: int) -> None:
    answer = await api.put("/v1/stock", {"productId": product, "onHand": on_hand})
    assert answer.status == 200, answer.body


async def _admitted(
    api: Api,
    service: ServiceProcess,
    experience: str,
    consumer: str,
    grant: str,
    admitted_at: datetime | None = None,
) -> list[dict[str, Any]]:
    """Admit through a signed webhook; the consumer's holds once applied."""
    envelope = admission_envelope(experience, consumer, grant, admitted_at=admitted_at)
    status, body = await post_webhook(service.webhook_url, envelope, SECRET)
    assert status == 200, body

    async def holds() -> list[dict[str, Any]]:
        answer = await api.get(_holds_path(experience, consumer))
        assert answer.status == 200
        reservations: list[dict[str, Any]] = answer.body["reservations"]
        return reservations

    return await wait_for(holds)


def _checkout(
    experience: str, consumer: str, grant: str, *items: tuple[str, int], **extra: Any
) -> dict[str, Any]:
    return {
        "experienceId": experience,
        "consumerId": consumer,
        "admissionGrant": grant,
        "items": [{"productId": p, "quantity": q} for p, q in items],
        **extra,
    }


# --- auth ---------------------------------------------------------------------------


async def test_every_route_needs_a_valid_bearer_key(api: Api) -> None:
    experience, consumer = unique("queue"), unique("cons")
    for key in (None, "rk_wrong", API_KEY + "x", API_KEY[:-1]):
        answer = await api.get(_cart_path(experience, consumer), key=key)
        assert answer.status == 401, key
        assert answer.body["error"] == "UNAUTHORIZED"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    basic = await api.get(
        _cart_path(experience, consumer), key=None, headers={"Authorization": f"Basic {API_KEY}"}
    )
    assert basic.status == 401
    # Nothing is produced without a key (a write is refused before the log).
    refused = await api.put("/v1/stock", {"productId": unique("prod"), "onHand": 1}, key=None)
    assert refused.status == 401
    assert "commandId" not in refused.body

    for key in (API_KEY, API_KEY_NEXT):
        answer = await api.get(_cart_path(experience, consumer), key=key)
        assert answer.status == 200, answer.body
        assert answer.body == {
            "experienceId": experience,
            "consumerId": consumer,
            "items": [],
            "updatedAt": None,
        }
    for open_path in ("/healthz", "/readyz", "/openapi.json", "/metrics"):
        assert (await api.get(open_path, key=None)).status == 200, open_path


async def test_served_document_is_the_stored_one(api: Api) -> None:
    answer = await api.get("/openapi.json", key=None)
    assert answer.body == DOCUMENT


# --- stock, experiences, carts ----------------------------------------------------


async def test_set_stock_then_read_it(api: Api) -> None:
    product = unique("prod")
    answer = await api.put("/v1/stock", {"productId": product, "onHand": 10})
    assert answer.status == 200, answer.body
    assert answer.body["status"] == "set"
    assert answer.body["onHand"] == 10
    uuid.UUID(answer.body["commandId"])

    answer = await api.put("/v1/stock", {"productId": product, "variantId": "L", "onHand": 4})
    assert answer.status == 200

    got = await api.get(f"/v1/stock?productId={product}")
    assert got.status == 200
    assert {k: got.body[k] for k in ("onHand", "reserved", "sold", "available")} == {
        "onHand": 10,
        "reserved": 0,
        "sold": 0,
        "available": 10,
    }
    assert got.body["variantId"] is None
    variant = await api.get(f"/v1/stock?productId={product}&variantId=L")
    assert (variant.body["onHand"], variant.body["variantId"]) == (4, "L")

    missing = await api.get(f"/v1/stock?productId={unique('prod')}")
    assert missing.status == 404
    assert missing.body["error"] == "STOCK_NOT_FOUND"
    no_product = await api.get("/v1/stock")
    assert no_product.status == 400
    assert (no_product.body["error"], no_product.body["field"]) == (
        "INVALID_PARAMETER",
        "productId",
    )


async def test_configure_an_experience(api: Api) -> None:
    experience = unique("queue")
    before = await api.get(f"/v1/experiences/{experience}")
    assert before.status == 200
    assert before.body["configured"] is False
    assert before.body["strategy"] == "soft"

    answer = await api.put(
        f"/v1/experiences/{experience}",
        {
            "strategy": "pool",
            "windowSeconds": 300,
            "bufferSeconds": 30,
            "poolSize": 25,
            "multiItemPolicy": "all_or_nothing",
            "backfill": True,
        },
    )
    assert answer.status == 200, answer.body
    assert answer.body["status"] == "configured"
    after = await api.get(f"/v1/experiences/{experience}")
    assert after.body == {
        "experienceId": experience,
        "configured": True,
        "strategy": "pool",
        "windowSeconds": 300,
        "bufferSeconds": 30,
        "poolSize": 25,
        "multiItemPolicy": "all_or_nothing",
        "extensionSeconds": 0,
        "maxExtensions": 0,
        "retryWindowSeconds": 0,
        "onComplete": "convert_ordered",
        "pools": [],
        "backfill": True,
        "poolUsage": [],
    }

    no_pool = await api.put(f"/v1/experiences/{experience}", {"strategy": "pool"})
    assert no_pool.status == 400
    assert no_pool.body["error"] == "INVALID_BODY"
    assert "poolSize" in no_pool.body["message"]
    bad = await api.put(f"/v1/experiences/{experience}", {"strategy": "fifo"})
    assert (bad.status, bad.body["field"]) == (400, "strategy")
    # The refused writes changed nothing.
    assert (await api.get(f"/v1/experiences/{experience}")).body == after.body


async def test_put_and_get_a_cart(api: Api) -> None:
    experience, consumer = unique("queue"), unique("cons")
    items = [
        {"productId": "shoe", "variantId": "42", "quantity": 2},
        {"productId": "cap", "variantId": None, "quantity": 1},
    ]
    answer = await api.put(_cart_path(experience, consumer), {"items": items})
    assert answer.status == 200, answer.body
    assert (answer.body["status"], answer.body["items"]) == ("stored", 2)
    got = await api.get(_cart_path(experience, consumer))
    assert got.body["items"] == items
    assert got.body["updatedAt"] is not None

    emptied = await api.put(_cart_path(experience, consumer), {"items": []})
    assert emptied.status == 200
    assert (await api.get(_cart_path(experience, consumer))).body["items"] == []


# --- bad input ------------------------------------------------------------------------


async def test_bad_input_gets_a_clear_answer(api: Api) -> None:
    experience, consumer = unique("queue"), unique("cons")
    cart = _cart_path(experience, consumer)
    cases: list[tuple[bytes, str]] = [
        (b"not json", "body"),
        (b"[1, 2]", "body"),
        (b"", "body"),
        (b'{"items": [{"productId": "p", "quantity": 0}]}', "items.0.quantity"),
        (b'{"items": [{"productId": "p", "quantity": "2"}]}', "items.0.quantity"),
        (b'{"items": [{"product_id": "p", "quantity": 1}]}', "items.0.productId"),
        (b'{"items": [], "extra": 1}', "extra"),
        (b'{"items": [{"productId": "", "quantity": 1}]}', "items.0.productId"),
    ]
    for raw, field in cases:
        answer = await api.call("PUT", cart, raw=raw)
        assert answer.status == 400, raw
        assert answer.body["error"] == "INVALID_BODY"
        assert answer.body["field"] == field, raw
    huge = await api.call("PUT", cart, raw=b'{"items": "' + b"x" * 300_000 + b'"}')
    assert huge.status == 413
    assert huge.body["error"] == "BODY_TOO_LARGE"
    control = await api.get(_cart_path("bad%01id", consumer))
    assert (control.status, control.body["error"]) == (400, "INVALID_PARAMETER")

    unknown = await api.get("/v1/nothing-here")
    assert (unknown.status, unknown.body["error"]) == (404, "NOT_FOUND")
    wrong_method = await api.call("DELETE", "/v1/stock")
    assert (wrong_method.status, wrong_method.body["error"]) == (405, "METHOD_NOT_ALLOWED")
    assert "PUT" in wrong_method.headers["Allow"]

    bad_key = await api.put(
        "/v1/stock", {"productId": "p", "onHand": 1}, headers={"Idempotency-Key": "é" * 3}
    )
    assert (bad_key.status, bad_key.body["error"]) == (400, "INVALID_IDEMPOTENCY_KEY")

    # A grant that fails validation is never echoed back.
    grant = "eyJ" + "G" * 9000
    answer = await api.post(
        "/v1/checkout/validate", _checkout(experience, consumer, grant, ("p", 1))
    )
    assert (answer.status, answer.body["field"]) == (400, "admissionGrant")
    assert "GGGG" not in orjson.dumps(answer.body).decode()
    complete = await api.post("/v1/checkout/complete", _checkout(experience, consumer, "g"))
    assert complete.status == 400  # no items, no orderId
    assert complete.body["error"] == "INVALID_BODY"


# --- reservations and checkout ------------------------------------------------------


async def test_admission_shows_holds_with_a_countdown(api: Api, service: ServiceProcess) -> None:
    experience, consumer, product = unique("queue"), unique("cons"), unique("prod")
    await _stock(api, product, 5)
    await api.put(
        _cart_path(experience, consumer), {"items": [{"productId": product, "quantity": 2}]}
    )
    holds = await _admitted(api, service, experience, consumer, "eyJ" + unique("grant"))
    (hold,) = holds
    assert hold["productId"] == product
    assert hold["variantId"] is None
    assert hold["quantity"] == 2
    assert hold["status"] == "active"
    assert 0 < hold["secondsRemaining"] <= 660
    uuid.UUID(hold["reservationId"])
    expires = datetime.fromisoformat(hold["expiresAt"])
    assert expires > now()
    stock = await api.get(f"/v1/stock?productId={product}")
    assert (stock.body["reserved"], stock.body["available"]) == (2, 3)


async def test_validate_answers_in_the_guides_order(api: Api, service: ServiceProcess) -> None:
    experience, consumer = unique("queue"), unique("cons")
    shoe, shirt, absent = unique("prod"), unique("prod"), unique("prod")
    grant = "eyJ" + unique("grant")
    await _stock(api, shoe, 10)
    await _stock(api, shirt, 10)
    await api.put(_cart_path(experience, consumer), {"items": [{"productId": shoe, "quantity": 2}]})
    await _admitted(api, service, experience, consumer, grant)

    def validate(*items: tuple[str, int], using: str = grant) -> Any:
        return api.post("/v1/checkout/validate", _checkout(experience, consumer, using, *items))

    ok = await validate((shoe, 2))
    assert ok.status == 200, ok.body
    assert ok.body["valid"] is True
    assert [(h["productId"], h["quantity"]) for h in ok.body["holds"]] == [(shoe, 2)]
    assert (await validate((shoe, 1))).status == 200

    expected = [
        # ADMISSION_MISMATCH comes before every line check.
        (validate((absent, 1), using="eyJ" + unique("other")), 403, "ADMISSION_MISMATCH"),
        (validate((shirt, 1)), 400, "RESERVATION_MISSING"),
        (validate((shoe, 3)), 400, "RESERVATION_INSUFFICIENT"),
        # Per line, in the request's order.
        (validate((shirt, 1), (shoe, 3)), 400, "RESERVATION_MISSING"),
        (validate((shoe, 3), (shirt, 1)), 400, "RESERVATION_INSUFFICIENT"),
        # Two lines on one stock row are checked together.
        (validate((shoe, 1), (shoe, 2)), 400, "RESERVATION_INSUFFICIENT"),
    ]
    for pending, status, code in expected:
        answer = await pending
        assert (answer.status, answer.body["error"]) == (status, code), answer.body
        # A line refusal lists its lines; the first one names it.
        lines = {"missing"} if status == 400 else set()
        assert set(answer.body) == {"error", "message", *lines}
        if lines:
            assert answer.body["missing"][0]["error"] == code

    # Validation is a read: the holds are as they were.
    stock = await api.get(f"/v1/stock?productId={shoe}")
    assert (stock.body["reserved"], stock.body["sold"]) == (2, 0)


async def test_expired_holds_answer_reservation_expired(api: Api, service: ServiceProcess) -> None:
    experience, consumer, product = unique("queue"), unique("cons"), unique("prod")
    grant = "eyJ" + unique("grant")
    configured = await api.put(
        f"/v1/experiences/{experience}", {"windowSeconds": 1, "bufferSeconds": 0}
    )
    assert configured.status == 200, configured.body
    await _stock(api, product, 3)
    await api.put(
        _cart_path(experience, consumer), {"items": [{"productId": product, "quantity": 1}]}
    )
    (hold,) = await _admitted(api, service, experience, consumer, grant)
    expires = datetime.fromisoformat(hold["expiresAt"])

    async def past_expiry() -> bool:
        return now() > expires + timedelta(milliseconds=50)

    await wait_for(past_expiry, timeout=10)
    body = _checkout(experience, consumer, grant, (unique("prod"), 1))
    answer = await api.post("/v1/checkout/validate", body)
    # RESERVATION_EXPIRED comes before the line checks.
    assert (answer.status, answer.body["error"]) == (409, "RESERVATION_EXPIRED"), answer.body
    done = await api.post(
        "/v1/checkout/complete",
        {**_checkout(experience, consumer, grant, (product, 1)), "orderId": unique("ord")},
    )
    assert (done.status, done.body["error"]) == (409, "RESERVATION_EXPIRED"), done.body
    uuid.UUID(done.body["commandId"])
    # Nothing was sold; the hold is gone now or about to be (the scheduler).
    stock = await api.get(f"/v1/stock?productId={product}")
    assert stock.body["sold"] == 0
    (after,) = (await api.get(_holds_path(experience, consumer))).body["reservations"]
    assert after["secondsRemaining"] == 0


async def test_complete_converts_exactly_once(api: Api, service: ServiceProcess) -> None:
    experience, consumer, product = unique("queue"), unique("cons"), unique("prod")
    grant = "eyJ" + unique("grant")
    order = unique("ord")
    await _stock(api, product, 10)
    await api.put(
        _cart_path(experience, consumer), {"items": [{"productId": product, "quantity": 2}]}
    )
    (hold,) = await _admitted(api, service, experience, consumer, grant)
    body = {**_checkout(experience, consumer, grant, (product, 2)), "orderId": order}
    key = {"Idempotency-Key": unique("idem")}

    first = await api.post("/v1/checkout/complete", body, headers=key)
    assert first.status == 200, first.body
    assert (first.body["status"], first.body["orderId"]) == ("converted", order)
    assert first.body["reservations"] == [hold["reservationId"]]

    retried = await api.post("/v1/checkout/complete", body, headers=key)
    assert retried.status == 200
    assert retried.body == first.body  # the same command, answered from its outcome

    for headers in ({"Idempotency-Key": unique("idem")}, {}):
        again = await api.post("/v1/checkout/complete", body, headers=headers)
        assert again.status == 200, again.body
        assert (again.body["status"], again.body["orderId"]) == ("converted", order)
        assert again.body["duplicate"] is True
        assert again.body["commandId"] != first.body["commandId"]

    conflict = await api.post("/v1/checkout/complete", {**body, "orderId": unique("ord")})
    assert (conflict.status, conflict.body["error"]) == (409, "ORDER_CONFLICT")

    stock = await api.get(f"/v1/stock?productId={product}")
    assert {k: stock.body[k] for k in ("onHand", "reserved", "sold", "available")} == {
        "onHand": 10,
        "reserved": 0,
        "sold": 2,
        "available": 8,
    }
    (converted,) = (await api.get(_holds_path(experience, consumer))).body["reservations"]
    assert (converted["status"], converted["orderId"]) == ("converted", order)
    assert converted["secondsRemaining"] == 0

    # Stock cannot drop below what is sold: refused, nothing changed.
    refused = await api.put("/v1/stock", {"productId": product, "onHand": 1})
    assert refused.status == 409, refused.body
    assert (refused.body["error"], refused.body["committed"]) == ("STOCK_BELOW_COMMITTED", 2)
    command = await api.get(f"/v1/commands/{refused.body['commandId']}")
    assert command.status == 200
    assert command.body["commandType"] == "stock.set"
    assert command.body["outcome"]["error"] == "STOCK_BELOW_COMMITTED"
    assert (await api.get(f"/v1/stock?productId={product}")).body["onHand"] == 10
    lowered = await api.put("/v1/stock", {"productId": product, "onHand": 2})
    assert lowered.status == 200


async def test_concurrent_retries_convert_once(api: Api, service: ServiceProcess) -> None:
    experience, consumer, product = unique("queue"), unique("cons"), unique("prod")
    grant = "eyJ" + unique("grant")
    await _stock(api, product, 10)
    await api.put(
        _cart_path(experience, consumer), {"items": [{"productId": product, "quantity": 3}]}
    )
    await _admitted(api, service, experience, consumer, grant)
    body = {**_checkout(experience, consumer, grant, (product, 3)), "orderId": unique("ord")}
    same = {"Idempotency-Key": unique("idem")}
    calls = [api.post("/v1/checkout/complete", body, headers=same) for _ in range(4)]
    calls += [
        api.post("/v1/checkout/complete", body, headers={"Idempotency-Key": unique("idem")})
        for _ in range(4)
    ]
    answers = await asyncio.gather(*calls)
    assert all(a.status == 200 and a.body["status"] == "converted" for a in answers), [
        a.body for a in answers
    ]
    assert len({a.body["commandId"] for a in answers[:4]}) == 1
    by_command = {a.body["commandId"]: a.body for a in answers}
    assert len(by_command) == 5
    converting = [b for b in by_command.values() if not b.get("duplicate")]
    assert len(converting) == 1, by_command
    stock = await api.get(f"/v1/stock?productId={product}")
    assert (stock.body["reserved"], stock.body["sold"]) == (0, 3)


async def test_validate_lists_every_missing_line(api: Api, service: ServiceProcess) -> None:
    experience, consumer = unique("queue"), unique("cons")
    shoe, shirt, hat = unique("prod"), unique("prod"), unique("prod")
    grant = "eyJ" + unique("grant")
    await _stock(api, shoe, 10)
    await api.put(_cart_path(experience, consumer), {"items": [{"productId": shoe, "quantity": 2}]})
    await _admitted(api, service, experience, consumer, grant)
    items = ((shirt, 1), (shoe, 2), (hat, 3))
    expected = [
        {"productId": shirt, "requested": 1, "held": 0,
         "error": "RESERVATION_MISSING"},
        {"productId": hat, "requested": 3, "held": 0,
         "error": "RESERVATION_MISSING"},
    ]  # fmt: skip

    answer = await api.post("/v1/checkout/validate", _checkout(experience, consumer, grant, *items))
    assert (answer.status, answer.body["error"]) == (400, "RESERVATION_MISSING"), answer.body
    assert answer.body["message"] == f"No reservation for {shirt}"
    assert answer.body["missing"] == expected
    # complete refuses with the same list, and sells nothing.
    body = {**_checkout(experience, consumer, grant, *items), "orderId": unique("ord")}
    refused = await api.post("/v1/checkout/complete", body)
    assert (refused.status, refused.body["missing"]) == (400, expected), refused.body
    stock = await api.get(f"/v1/stock?productId={shoe}")
    assert (stock.body["reserved"], stock.body["sold"]) == (2, 0)


async def test_complete_sells_the_ordered_line_and_releases_the_other(
    api: Api, service: ServiceProcess
) -> None:
    experience, consumer = unique("queue"), unique("cons")
    shoe, cap = unique("prod"), unique("prod")
    grant, order = "eyJ" + unique("grant"), unique("ord")
    await _stock(api, shoe, 10)
    await _stock(api, cap, 10)
    cart = [{"productId": shoe, "quantity": 2}, {"productId": cap, "quantity": 1}]
    await api.put(_cart_path(experience, consumer), {"items": cart})
    holds = {h["productId"]: h for h in await _admitted(api, service, experience, consumer, grant)}

    body = {**_checkout(experience, consumer, grant, (shoe, 2)), "orderId": order}
    done = await api.post("/v1/checkout/complete", body)
    assert done.status == 200, done.body
    assert done.body["reservations"] == [holds[shoe]["reservationId"]]
    assert done.body["released"] == [holds[cap]["reservationId"]]
    for product, counters in ((shoe, (0, 2, 8)), (cap, (0, 0, 10))):
        stock = (await api.get(f"/v1/stock?productId={product}")).body
        assert (stock["reserved"], stock["sold"], stock["available"]) == counters, product
    after = {h["productId"]: h for h in (await api.get(_holds_path(experience, consumer))).body[
        "reservations"]}  # fmt: skip
    assert (after[shoe]["status"], after[shoe]["orderId"]) == ("converted", order)
    assert (after[cap]["status"], after[cap]["endReason"]) == ("released", "not_ordered")

    # Fanfare's order event for the same order arrives later: the sale stands.
    envelope = {
        "id": unique("whk"),
        "type": "order.completed",
        "timestamp": now().isoformat().replace("+00:00", "Z"),
        "organizationId": "org_test",
        "data": {"queueId": experience, "consumerId": consumer, "orderId": order},
    }
    status, answer = await post_webhook(service.webhook_url, envelope, SECRET)
    assert status == 200, answer
    command = await wait_for(lambda: _applied(api, answer["commandId"]))
    assert command is not None
    assert command["outcome"]["duplicate"] is True
    assert (await api.get(f"/v1/stock?productId={cap}")).body["reserved"] == 0


async def _applied(api: Api, command_id: str) -> dict[str, Any] | None:
    answer = await api.get(f"/v1/commands/{command_id}")
    return answer.body if answer.status == 200 else None


async def test_command_outcomes_and_idempotency_keys(api: Api) -> None:
    product = unique("prod")
    key = {"Idempotency-Key": unique("idem")}
    first = await api.put("/v1/stock", {"productId": product, "onHand": 5}, headers=key)
    assert first.status == 200
    # The key names the command: a reuse answers the first outcome, applies nothing.
    reused = await api.put("/v1/stock", {"productId": product, "onHand": 7}, headers=key)
    assert reused.body == first.body
    assert (await api.get(f"/v1/stock?productId={product}")).body["onHand"] == 5
    # Scoped by route: the same key elsewhere is another command.
    cart = await api.put(_cart_path(unique("queue"), unique("cons")), {"items": []}, headers=key)
    assert cart.status == 200
    assert cart.body["commandId"] != first.body["commandId"]

    command = await api.get(f"/v1/commands/{first.body['commandId']}")
    assert command.status == 200
    assert command.body["status"] == "applied"
    assert command.body["commandType"] == "stock.set"
    assert command.body["outcome"] == {"status": "set", "onHand": 5}

    unknown = await api.get(f"/v1/commands/{uuid.uuid4()}")
    assert (unknown.status, unknown.body["error"]) == (404, "COMMAND_NOT_FOUND")
    bad = await api.get("/v1/commands/not-a-uuid")
    assert (bad.status, bad.body["error"], bad.body["field"]) == (
        400,
        "INVALID_PARAMETER",
        "commandId",
    )


async def test_no_grant_in_the_service_log(api: Api, service: ServiceProcess) -> None:
    """Runs after the checkout tests above: their grants went through the
    receiver and the API, and must appear in no log line."""
    text = service.log_path.read_text(errors="replace")
    assert "api_request" in text  # positive signal: the API's lines are there
    assert "eyJgrant_" not in text
    assert "admissionGrant" not in text


# --- the pending path ------------------------------------------------------------------


async def test_pending_answer_then_outcome_later(settings: Settings) -> None:
    """An API whose commands topic no consumer reads yet answers 202 with a
    command id; once a consumer applies it, GET /v1/commands/{id} gives the
    outcome."""
    topic = f"{settings.commands_topic}.pending{uuid.uuid4().hex[:6]}"
    env = service_env(
        settings,
        COMMANDS_TOPIC=topic,
        CONSUMER_GROUP=f"{settings.consumer_group}.pending",
        API_WAIT_SECONDS="0.3",
        OPS_PORT=str(free_port()),
    )
    api_only = ServiceProcess(["api"], env)
    consumer = ServiceProcess(["consumer"], {**env, "LISTEN_PORT": str(free_port())})
    await api_only.start()
    try:
        await wait_for(lambda: _healthy(api_only.api_url), timeout=60)
        client = Api(api_only.api_url)
        product = unique("prod")
        answer = await client.put("/v1/stock", {"productId": product, "onHand": 3})
        assert answer.status == 202, answer.body
        assert answer.body["status"] == "pending"
        command_id = answer.body["commandId"]
        assert answer.headers["Location"] == f"/v1/commands/{command_id}"
        later = await client.get(f"/v1/commands/{command_id}")
        assert later.status == 202

        await consumer.start()

        async def applied() -> Answer | None:
            got = await client.get(f"/v1/commands/{command_id}")
            return got if got.status == 200 else None

        outcome = await wait_for(applied, timeout=60)
        assert outcome.body["outcome"] == {"status": "set", "onHand": 3}
        stock = await client.get(f"/v1/stock?productId={product}")
        assert stock.body["onHand"] == 3
    finally:
        await consumer.stop()
        await api_only.stop()


# --- in process: injected clock, broker down ------------------------------------------


class SettableClock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


@dataclass
class InProcess:
    api: Api
    clock: SettableClock


@pytest_asyncio.fixture(loop_scope="session")
async def in_process(
    settings: Settings, db: Any, service: ServiceProcess
) -> AsyncIterator[InProcess]:
    """build_api on the session's topic and database, with a clock the test
    sets; the service's consumer applies what it produces."""
    keyed = settings.model_copy(update={"reservation_api_keys": [SecretStr(API_KEY)]})
    producer = kafka.durable_producer(keyed)
    await producer.start()
    clock = SettableClock(datetime.now(UTC))
    server = TestServer(build_api(keyed, producer, db, clock=clock), host="127.0.0.1")
    await server.start_server()
    try:
        yield InProcess(Api(str(server.make_url("/"))), clock)
    finally:
        await server.close()
        await producer.stop()


async def test_countdown_and_expiry_follow_the_injected_clock(
    in_process: InProcess, api: Api, service: ServiceProcess
) -> None:
    local, clock = in_process.api, in_process.clock
    experience, consumer, product = unique("queue"), unique("cons"), unique("prod")
    grant = "eyJ" + unique("grant")
    admitted = now().replace(microsecond=0)
    await _stock(local, product, 4)
    cart = await local.put(
        _cart_path(experience, consumer), {"items": [{"productId": product, "quantity": 1}]}
    )
    assert cart.status == 200
    await _admitted(local, service, experience, consumer, grant, admitted_at=admitted)

    clock.at = admitted + timedelta(seconds=100)
    (hold,) = (await local.get(_holds_path(experience, consumer))).body["reservations"]
    assert hold["secondsRemaining"] == 560  # window 600 + buffer 60 - 100
    clock.at = admitted + timedelta(seconds=659, milliseconds=500)
    (hold,) = (await local.get(_holds_path(experience, consumer))).body["reservations"]
    assert hold["secondsRemaining"] == 1  # rounded up while it still holds
    clock.at = admitted + timedelta(hours=3)
    (hold,) = (await local.get(_holds_path(experience, consumer))).body["reservations"]
    assert (hold["status"], hold["secondsRemaining"]) == ("active", 0)

    # At a receive time past expiresAt both checks say expired; the command
    # carries that time, so the consumer decides the same whenever it runs.
    body = {**_checkout(experience, consumer, grant, (product, 1)), "orderId": unique("ord")}
    validated = await local.post("/v1/checkout/validate", body)
    assert (validated.status, validated.body["error"]) == (409, "RESERVATION_EXPIRED")
    refused = await local.post("/v1/checkout/complete", body)
    assert (refused.status, refused.body["error"]) == (409, "RESERVATION_EXPIRED")

    clock.at = admitted + timedelta(seconds=200)
    assert (await local.post("/v1/checkout/validate", body)).status == 200
    converted = await local.post("/v1/checkout/complete", body)
    assert converted.status == 200, converted.body
    stock = await api.get(f"/v1/stock?productId={product}")
    assert (stock.body["reserved"], stock.body["sold"]) == (0, 1)


async def test_broker_unavailable_is_503_with_retry_after(settings: Settings, db: Any) -> None:
    keyed = settings.model_copy(update={"reservation_api_keys": [SecretStr(API_KEY)]})
    producer = kafka.durable_producer(keyed)
    await producer.start()
    await producer.stop()  # a real producer that can no longer reach Kafka
    server = TestServer(build_api(keyed, producer, db), host="127.0.0.1")
    await server.start_server()
    try:
        local = Api(str(server.make_url("/")))
        product = unique("prod")
        answer = await local.put("/v1/stock", {"productId": product, "onHand": 1})
        assert (answer.status, answer.body["error"]) == (503, "BROKER_UNAVAILABLE")
        assert int(answer.headers["Retry-After"]) > 0
        assert "commandId" not in answer.body
        # Reads do not need Kafka.
        assert (await local.get(f"/v1/stock?productId={product}")).status == 404
    finally:
        await server.close()
