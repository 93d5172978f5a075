"""Checkout: validate (a read: the checks complete makes, changing nothing)
and complete (a write: the order's lines become a sale, and the admission's
other holds go back, or all of them are sold: the experience's onComplete)."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from aiohttp import web
from pydantic import Field, SecretStr

from worker.adapters import queries
from worker.domain import ids
from worker.domain.checkout import check_checkout
from worker.domain.commands import CompleteCheckout
from worker.domain.model import Identifier, ReservationStatus
from worker.openapi import Operation, Reply
from worker.roles.api.http import (
    DATABASE_UNAVAILABLE_REPLY,
    ApiError,
    api_state,
    model_answer,
    parse_body,
)
from worker.roles.api.models import (
    ApiBody,
    ApiOut,
    CartItem,
    ErrorBody,
    ReservationView,
    hold_view,
)
from worker.roles.api.writes import NOT_DURABLE_REPLY, PENDING_REPLY, envelope, write


class CheckoutRequest(ApiBody):
    experience_id: Identifier
    consumer_id: Identifier
    admission_grant: Annotated[SecretStr, Field(min_length=1, max_length=8192)] = Field(
        description="The admission token Fanfare gave the consumer; only its SHA-256 is used"
    )
    items: list[CartItem] = Field(min_length=1, max_length=100)
    order_id: Identifier | None = Field(default=None, description="Ignored by validate")


class CompleteRequest(CheckoutRequest):
    order_id: Identifier = Field(
        description="Your order id: the holds convert to it exactly once, however often "
        "complete is retried"
    )


class CheckoutConvertedOutcome(ApiOut):
    command_id: UUID
    status: Literal["converted"]
    order_id: str
    reservations: list[UUID] | None = Field(
        default=None, description="The holds this call converted"
    )
    released: list[UUID] | None = Field(
        default=None,
        description="The holds this call released (reason not_ordered): those the order "
        "left out, and those it took only part of, whose ordered part converted as a new "
        "hold listed in reservations. Empty under onComplete convert_all",
    )
    duplicate: bool | None = Field(
        default=None, description="true: an earlier call already converted them for this order"
    )


class ValidationPassed(ApiOut):
    valid: Literal[True] = True
    holds: list[ReservationView] = Field(description="The admission's active holds")


async def validate_checkout(request: web.Request) -> web.Response:
    state = api_state(request)
    at = state.clock.now()  # the request's receive time, as complete would use
    body = await parse_body(request, CheckoutRequest)
    digest = ids.grant_digest(body.admission_grant.get_secret_value())
    holds = await queries.consumer_holds(state.pool, body.experience_id, body.consumer_id)
    error = check_checkout(holds, digest, [item.line() for item in body.items], at)
    if error is not None:
        missing = [line.wire() for line in error.missing] or None
        raise ApiError.refusal(error.code, error.message, missing=missing)
    mine = [h for h in holds if h.grant_digest == digest and h.status is ReservationStatus.ACTIVE]
    return model_answer(ValidationPassed(holds=[hold_view(h, at) for h in mine]))


async def complete_checkout(request: web.Request) -> web.Response:
    body = await parse_body(request, CompleteRequest)
    # Digested at once: only the digest travels on (command, log, Kafka).
    digest = ids.grant_digest(body.admission_grant.get_secret_value())
    common, idempotent = envelope(request)
    command = CompleteCheckout(
        **common,
        experience_id=body.experience_id,
        consumer_id=body.consumer_id,
        grant_digest=digest,
        order_id=body.order_id,
        items=[item.line() for item in body.items],
    )
    return await write(request, command, idempotent)


_MISMATCH = Reply(
    403, "The grant is not the active admission's (ADMISSION_MISMATCH)", ErrorBody, refusal=True
)

ROUTES = (
    Operation(
        "POST",
        "/v1/checkout/validate",
        "validateCheckout",
        "Check that the admission's holds cover the items (changes nothing)",
        validate_checkout,
        "checkout",
        description="The checks complete makes, in the same order, at the request's receive "
        "time: ADMISSION_MISMATCH, RESERVATION_EXPIRED, then per line RESERVATION_MISSING "
        "and RESERVATION_INSUFFICIENT. A line refusal lists every line that is missing or "
        "short in `missing`; `error` is the first one's.",
        body=CheckoutRequest,
        replies=(
            Reply(200, "The holds cover the items", ValidationPassed),
            Reply(
                400,
                "RESERVATION_MISSING or RESERVATION_INSUFFICIENT (with `missing`: every "
                "line missing or short; a refusal), or INVALID_BODY",
                ErrorBody,
                refusal=True,
            ),
            _MISMATCH,
            Reply(
                409,
                "The admission's holds have expired (RESERVATION_EXPIRED)",
                ErrorBody,
                refusal=True,
            ),
            DATABASE_UNAVAILABLE_REPLY,
        ),
    ),
    Operation(
        "POST",
        "/v1/checkout/complete",
        "completeCheckout",
        "Convert the order's lines into a sale; the admission's other holds go back",
        complete_checkout,
        "checkout",
        description="Same checks as validate, at the request's receive time. Under the "
        "experience's onComplete convert_ordered (the default) the quantities on the items "
        "convert and the rest of the admission's active holds are released (reason "
        "not_ordered); under convert_all every active hold converts. Converts exactly once "
        "per order id: a retry (same Idempotency-Key, or a new one with the same orderId) "
        "answers converted again and changes nothing; another orderId for converted holds "
        "is ORDER_CONFLICT.",
        body=CompleteRequest,
        replies=(
            Reply(200, "Converted (or already converted for this order)", CheckoutConvertedOutcome),
            PENDING_REPLY,
            Reply(
                400,
                "RESERVATION_MISSING or RESERVATION_INSUFFICIENT (with `missing`: every "
                "line missing or short; a refusal), or INVALID_*",
                ErrorBody,
                refusal=True,
            ),
            _MISMATCH,
            Reply(
                409,
                "RESERVATION_EXPIRED, or ORDER_CONFLICT (already converted for another order)",
                ErrorBody,
                refusal=True,
            ),
            NOT_DURABLE_REPLY,
        ),
        idempotency_key=True,
    ),
)
