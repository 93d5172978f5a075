"""A consumer in an experience: the cart, put and read, and the holds taken
for it with their countdown."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from aiohttp import web
from pydantic import Field, SecretStr

from worker.adapters import queries
from worker.domain import ids
from worker.domain.commands import ExtendReservation, PutCart, RetryReservation
from worker.domain.model import Identifier
from worker.openapi import Operation, Reply
from worker.roles.api.http import READ_ERRORS, api_state, model_answer, parse_body, parse_path
from worker.roles.api.models import (
    ApiBody,
    ApiOut,
    ApiParams,
    CartItem,
    ErrorBody,
    ReservationView,
    hold_view,
)
from worker.roles.api.writes import PENDING_REPLY, WRITE_ERRORS, envelope, write

CONSUMER = "/v1/experiences/{experienceId}/consumers/{consumerId}"


class Cart(ApiBody):
    items: list[CartItem] = Field(max_length=100, description="The whole cart; [] empties it")


class ConsumerPath(ApiParams):
    experience_id: Identifier
    consumer_id: Identifier


class CartStoredOutcome(ApiOut):
    command_id: UUID
    status: Literal["stored"]
    items: int = Field(description="Number of lines stored")
    holds_changed: int | None = Field(
        default=None, description="Present when an active admission's holds followed the cart"
    )
    rejected: int | None = Field(default=None, description="Lines the stock could not cover")


class CartView(ApiOut):
    experience_id: str
    consumer_id: str
    items: list[CartItem]
    updated_at: datetime | None = Field(description="null: no cart was ever put")


class ReservationsView(ApiOut):
    experience_id: str
    consumer_id: str
    now: datetime = Field(description="The server time secondsRemaining was computed at")
    reservations: list[ReservationView]


class AdmissionGrant(ApiBody):
    admission_grant: Annotated[SecretStr, Field(min_length=1, max_length=8192)] = Field(
        description="The admission token Fanfare gave the consumer; only its SHA-256 is used"
    )

    def digest(self) -> str:
        """Digested at once: only the digest travels on (command, log, Kafka)."""
        return ids.grant_digest(self.admission_grant.get_secret_value())


class ExtendedOutcome(ApiOut):
    command_id: UUID
    status: Literal["extended"]
    expires_at: datetime = Field(description="The admission's and its active holds' new expiry")
    previous_expires_at: datetime
    extensions: int = Field(description="Extensions of this admission so far")
    extensions_left: int
    holds_extended: int = Field(description="Active holds whose expiresAt moved")
    reopened: dict[str, object] | None = Field(
        default=None,
        description="Present when an expiry of ours applied first no longer counts: the "
        "holds taken again, per line as at admission",
    )


async def put_cart(request: web.Request) -> web.Response:
    path = parse_path(request, ConsumerPath)
    body = await parse_body(request, Cart)
    common, idempotent = envelope(request)
    command = PutCart(
        **common,
        experience_id=path.experience_id,
        consumer_id=path.consumer_id,
        items=[item.line() for item in body.items],
    )
    return await write(request, command, idempotent)


async def extend_reservations(request: web.Request) -> web.Response:
    path = parse_path(request, ConsumerPath)
    body = await parse_body(request, AdmissionGrant)
    common, idempotent = envelope(request)
    command = ExtendReservation(
        **common,
        experience_id=path.experience_id,
        consumer_id=path.consumer_id,
        grant_digest=body.digest(),
    )
    return await write(request, command, idempotent)


class RetryLine(ApiOut):
    product_id: str
    variant_id: str | None
    quantity: int
    held: bool
    reason: str | None = Field(
        description="Why it was not held: INSUFFICIENT_STOCK, POOL_EMPTY or CART_ALL_OR_NOTHING"
    )


class RetriedOutcome(ApiOut):
    command_id: UUID
    status: Literal["retried"]
    admission_status: str = Field(
        description="active; or how it ended, when a fact from after the retry's time "
        "had already arrived"
    )
    held: int
    rejected: int
    expires_at: datetime = Field(description="The retry's time plus the window and buffer")
    lines: list[RetryLine]


async def retry_reservations(request: web.Request) -> web.Response:
    path = parse_path(request, ConsumerPath)
    body = await parse_body(request, AdmissionGrant)
    digest = body.digest()
    common, idempotent = envelope(request)
    times = await queries.admission_times(api_state(request).pool, digest)
    follows = times.expiry_to_follow(common["occurred_at"]) if times is not None else None
    if follows is not None:
        # One retry per expiry: every call for it is the same command, so a
        # second call answers the first outcome whatever its Idempotency-Key.
        source_id = f"retry {digest} {follows.isoformat()}"
        common["command_id"] = ids.command_id("api", source_id)
        common["source"] = common["source"].model_copy(update={"source_id": source_id})
        idempotent = True
    command = RetryReservation(
        **common,
        experience_id=path.experience_id,
        consumer_id=path.consumer_id,
        grant_digest=digest,
    )
    return await write(request, command, idempotent)


async def get_cart(request: web.Request) -> web.Response:
    path = parse_path(request, ConsumerPath)
    pool = api_state(request).pool
    cart = await queries.stored_cart(pool, path.experience_id, path.consumer_id)
    lines = [] if cart is None else cart.items
    return model_answer(
        CartView(
            experience_id=path.experience_id,
            consumer_id=path.consumer_id,
            items=[CartItem.model_validate(line.model_dump(by_alias=True)) for line in lines],
            updated_at=None if cart is None else cart.updated_at,
        )
    )


async def get_reservations(request: web.Request) -> web.Response:
    path = parse_path(request, ConsumerPath)
    state = api_state(request)
    now = state.clock.now()
    holds = await queries.consumer_holds(state.pool, path.experience_id, path.consumer_id)
    return model_answer(
        ReservationsView(
            experience_id=path.experience_id,
            consumer_id=path.consumer_id,
            now=now,
            reservations=[hold_view(h, now) for h in holds],
        )
    )


ROUTES = (
    Operation(
        "PUT",
        f"{CONSUMER}/cart",
        "putCart",
        "Replace a consumer's cart",
        put_cart,
        "carts",
        description="While the consumer's admission is active its holds change to match, "
        "subject to stock; otherwise the cart is held at the next admission.",
        body=Cart,
        path_model=ConsumerPath,
        replies=(Reply(200, "Applied", CartStoredOutcome), PENDING_REPLY, *WRITE_ERRORS),
        idempotency_key=True,
    ),
    Operation(
        "GET",
        f"{CONSUMER}/cart",
        "getCart",
        "A consumer's cart",
        get_cart,
        "carts",
        path_model=ConsumerPath,
        replies=(Reply(200, "The cart (empty if none was put)", CartView), *READ_ERRORS),
    ),
    Operation(
        "GET",
        f"{CONSUMER}/reservations",
        "getReservations",
        "A consumer's holds with the time remaining",
        get_reservations,
        "reservations",
        path_model=ConsumerPath,
        replies=(Reply(200, "Every hold, oldest first", ReservationsView), *READ_ERRORS),
    ),
    Operation(
        "POST",
        f"{CONSUMER}/reservations/extend",
        "extendReservations",
        "Give the admission's holds more time",
        extend_reservations,
        "reservations",
        description="Moves the admission's expiresAt and its active holds' by the "
        "experience's extensionSeconds, at most maxExtensions times, decided at the "
        "request's receive time.",
        body=AdmissionGrant,
        path_model=ConsumerPath,
        replies=(
            Reply(200, "Extended", ExtendedOutcome),
            PENDING_REPLY,
            Reply(403, "The grant is not the consumer's current admission", ErrorBody),
            Reply(
                409,
                "EXTENSION_NOT_ALLOWED (the experience does not extend), "
                "EXTENSIONS_EXHAUSTED or RESERVATION_EXPIRED",
                ErrorBody,
            ),
            *WRITE_ERRORS,
        ),
        idempotency_key=True,
    ),
    Operation(
        "POST",
        f"{CONSUMER}/reservations/retry",
        "retryReservations",
        "Hold the cart again after the admission's holds expired",
        retry_reservations,
        "reservations",
        description="Within the experience's retryWindowSeconds of the expiry, holds the "
        "consumer's current cart again under the same admission where stock allows (the "
        "outcome is per line, as at admission), until the request's receive time plus the "
        "window and buffer. One retry per expiry: a second call answers the first outcome.",
        body=AdmissionGrant,
        path_model=ConsumerPath,
        replies=(
            Reply(200, "Held again (or the first retry's outcome)", RetriedOutcome),
            PENDING_REPLY,
            Reply(403, "The grant is not the consumer's current admission", ErrorBody),
            Reply(
                409,
                "RETRY_NOT_ALLOWED (the experience does not hold again), NOT_EXPIRED or "
                "RETRY_WINDOW_CLOSED",
                ErrorBody,
            ),
            *WRITE_ERRORS,
        ),
        idempotency_key=True,
    ),
)
