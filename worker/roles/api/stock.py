"""Stock: a row's on-hand level, set by operators, and its counters."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from aiohttp import web
from pydantic import Field

from worker.adapters import queries
from worker.domain.commands import SetStock
from worker.domain.model import Identifier
from worker.openapi import Operation, Reply
from worker.roles.api.http import (
    READ_ERRORS,
    ApiError,
    api_state,
    model_answer,
    parse_body,
    parse_query,
)
from worker.roles.api.models import ApiBody, ApiOut, ApiParams, ErrorBody
from worker.roles.api.writes import PENDING_REPLY, WRITE_ERRORS, envelope, write


class StockLevel(ApiBody):
    product_id: Identifier
    variant_id: Identifier | None = None
    on_hand: int = Field(ge=0, le=1_000_000_000)


class StockQuery(ApiParams):
    product_id: Identifier
    variant_id: Identifier | None = Field(
        default=None, description="Omit for a product without variants"
    )


class StockSetOutcome(ApiOut):
    command_id: UUID
    status: Literal["set"]
    on_hand: int


class StockView(ApiOut):
    product_id: str
    variant_id: str | None
    on_hand: int
    reserved: int
    sold: int
    available: int
    updated_at: datetime


async def put_stock(request: web.Request) -> web.Response:
    body = await parse_body(request, StockLevel)
    common, idempotent = envelope(request)
    command = SetStock(
        **common, product_id=body.product_id, variant_id=body.variant_id, on_hand=body.on_hand
    )
    return await write(request, command, idempotent)


async def get_stock(request: web.Request) -> web.Response:
    query = parse_query(request, StockQuery)
    pool = api_state(request).pool
    row = await queries.stock_counters(pool, query.product_id, query.variant_id or "")
    if row is None:
        raise ApiError(404, "STOCK_NOT_FOUND", f"no stock row for {query.product_id}")
    return model_answer(
        StockView(
            product_id=query.product_id,
            variant_id=query.variant_id,
            on_hand=row.on_hand,
            reserved=row.reserved,
            sold=row.sold,
            available=row.on_hand - row.reserved - row.sold,
            updated_at=row.updated_at,
        )
    )


ROUTES = (
    Operation(
        "PUT",
        "/v1/stock",
        "setStock",
        "Set a stock row's on-hand level",
        put_stock,
        "stock",
        body=StockLevel,
        replies=(
            Reply(200, "Applied", StockSetOutcome),
            PENDING_REPLY,
            Reply(
                409,
                "onHand below the units reserved and sold (STOCK_BELOW_COMMITTED); nothing changed",
                ErrorBody,
                refusal=True,
            ),
            *WRITE_ERRORS,
        ),
        idempotency_key=True,
    ),
    Operation(
        "GET",
        "/v1/stock",
        "getStock",
        "A stock row's counters",
        get_stock,
        "stock",
        query_model=StockQuery,
        replies=(
            Reply(200, "The row; available = onHand - reserved - sold", StockView),
            Reply(404, "No such stock row (STOCK_NOT_FOUND)", ErrorBody),
            *READ_ERRORS,
        ),
    ),
)
