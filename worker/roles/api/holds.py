"""Holds across consumers, for operators: listed newest first, a page at a
time, filtered by experience, consumer, product, variant and status. Never
an admission grant, not even its digest."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Literal
from uuid import UUID

from aiohttp import web
from pydantic import Field, field_validator

from worker.adapters import queries
from worker.adapters.queries import HoldFilter, ListedHold
from worker.config import OPERATOR_SCOPE
from worker.domain.model import Identifier, ReservationStatus
from worker.openapi import Operation, Reply
from worker.roles.api.http import (
    DATABASE_UNAVAILABLE_REPLY,
    api_state,
    model_answer,
    parse_query,
)
from worker.roles.api.models import (
    ApiOut,
    ApiParams,
    ErrorBody,
    ReservationView,
    seconds_remaining,
)

LIMIT_DEFAULT = 100
LIMIT_MAX = 500


def encode_cursor(created_at: datetime, reservation_id: UUID) -> str:
    """The position after a hold: base64url of its (created_at, id)."""
    raw = f"{created_at.isoformat()}|{reservation_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """ValueError for anything `encode_cursor` did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, rid = raw.partition("|")
        created_at, reservation_id = datetime.fromisoformat(at), UUID(rid)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor this API gave") from None
    if created_at.tzinfo is None:
        raise ValueError("not a cursor this API gave")
    return created_at, reservation_id


class HoldsQuery(ApiParams):
    experience_id: Identifier | None = None
    consumer_id: Identifier | None = None
    product_id: Identifier | None = None
    variant_id: Identifier | None = Field(
        default=None, description="Omit for every variant of the product"
    )
    # A Literal, not the enum: a parameter's schema must be a plain value.
    status: Literal["active", "converted", "released", "expired"] | None = Field(
        default=None, description="Omit for every status"
    )
    limit: int = Field(default=LIMIT_DEFAULT, ge=1, le=LIMIT_MAX, description="Holds per page")
    cursor: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="nextCursor of the previous page, with the same filters",
    )

    @field_validator("cursor")
    @classmethod
    def _a_cursor_we_gave(cls, value: str | None) -> str | None:
        if value is not None:
            decode_cursor(value)
        return value

    def filter(self) -> HoldFilter:
        return HoldFilter(
            experience_id=self.experience_id,
            consumer_id=self.consumer_id,
            product_id=self.product_id,
            variant_id=self.variant_id,
            status=None if self.status is None else ReservationStatus(self.status),
            after=None if self.cursor is None else decode_cursor(self.cursor),
        )


class ListedHoldView(ReservationView):
    experience_id: str
    consumer_id: str


class HoldsPage(ApiOut):
    holds: list[ListedHoldView] = Field(description="Newest first (createdAt, then id)")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null: last")


def _view(hold: ListedHold, now: datetime) -> ListedHoldView:
    return ListedHoldView(
        reservation_id=hold.reservation_id,
        experience_id=hold.experience_id,
        consumer_id=hold.consumer_id,
        product_id=hold.product_id,
        variant_id=hold.variant_id or None,
        quantity=hold.quantity,
        status=hold.status,
        expires_at=hold.expires_at,
        seconds_remaining=seconds_remaining(hold.status, hold.expires_at, now),
        order_id=hold.order_id,
        end_reason=hold.end_reason,
    )


async def list_holds(request: web.Request) -> web.Response:
    query = parse_query(request, HoldsQuery)
    state = api_state(request)
    now = state.clock.now()
    # One more than the page: whether there is a next one, without a count.
    found = await queries.listed_holds(state.pool, query.filter(), query.limit + 1)
    page = found[: query.limit]
    more = len(found) > query.limit
    last = page[-1] if more else None
    return model_answer(
        HoldsPage(
            holds=[_view(h, now) for h in page],
            next_cursor=None
            if last is None
            else encode_cursor(last.created_at, last.reservation_id),
        )
    )


ROUTES = (
    Operation(
        "GET",
        "/v1/holds",
        "listHolds",
        "Holds across consumers, newest first (operators)",
        list_holds,
        "operators",
        description="A page of holds, newest first (createdAt, then reservationId, both "
        "descending), with the fields getReservations shows plus experienceId and consumerId; "
        "never a grant. Page with nextCursor (a keyset position: a hold present throughout is "
        "never repeated or skipped). Needs a key with the operator scope.",
        query_model=HoldsQuery,
        replies=(
            Reply(200, "A page of holds", HoldsPage),
            Reply(
                400,
                "Invalid parameter (INVALID_PARAMETER); a cursor this API did not give is "
                "one, though any string fits the schema (a refusal)",
                ErrorBody,
                refusal=True,
            ),
            DATABASE_UNAVAILABLE_REPLY,
        ),
        scope=OPERATOR_SCOPE,
    ),
)
