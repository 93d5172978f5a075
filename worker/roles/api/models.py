"""The API's wire conventions, and the models more than one resource answers
with. A model only one resource uses lives with that resource's routes."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from worker.domain.checkout import Hold
from worker.domain.model import CartLine, Identifier, Quantity, ReservationStatus


class ApiBody(BaseModel):
    """A request body: camelCase only, unknown fields refused, and no silent
    coercion ("10" is not 10), so a client bug surfaces as a clear 400.

    Unlike the topics' messages, which readers take tolerantly, a body the
    API does not understand whole is refused: its client is in front of us
    and can be told. One number is not a coercion: JSON has a single number
    type, and JSON Schema counts 284.0 as the integer 284, so an integral
    number is an integer whichever way it is written (284.5 still is not)."""

    model_config = ConfigDict(alias_generator=to_camel, extra="forbid", frozen=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _integral_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {name: _integral(value) for name, value in data.items()}
        return data


def _integral(value: Any) -> Any:
    """284.0 as 284; anything else as it is, for strict validation to judge."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class ApiParams(BaseModel):
    """Path and query parameters: strings on the wire, converted as usual."""

    model_config = ConfigDict(alias_generator=to_camel, extra="ignore", frozen=True)


class ApiOut(BaseModel):
    """A response body, camelCase on the wire."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, frozen=True
    )


class MissingItem(ApiOut):
    """A checkout line the admission's holds do not cover."""

    product_id: str
    variant_id: str | None = Field(default=None, description="Absent for no variant")
    requested: int = Field(description="Units the items ask for on this stock row")
    held: int = Field(description="Units the admission's active holds cover (0: none)")
    error: Literal["RESERVATION_MISSING", "RESERVATION_INSUFFICIENT"]


class ErrorBody(ApiOut):
    error: str = Field(description="Stable code, e.g. ADMISSION_MISMATCH")
    message: str
    field: str | None = Field(default=None, description="Path of the invalid field")
    command_id: UUID | None = Field(default=None, description="The write that was refused")
    committed: int | None = Field(
        default=None, description="STOCK_BELOW_COMMITTED: units reserved or sold"
    )
    used: int | None = Field(
        default=None, description="POOL_BELOW_USED: units the pool has handed out"
    )
    missing: list[MissingItem] | None = Field(
        default=None,
        description="RESERVATION_MISSING, RESERVATION_INSUFFICIENT: every line that is "
        "missing or short, in the items' order; `error` is the first one's",
    )


class Pending(ApiOut):
    status: Literal["pending"] = "pending"
    command_id: UUID


class CartItem(ApiBody):
    product_id: Identifier
    variant_id: Identifier | None = Field(
        default=None, description="Omit (or null) for a product without variants"
    )
    quantity: Quantity

    def line(self) -> CartLine:
        return CartLine(
            product_id=self.product_id, variant_id=self.variant_id, quantity=self.quantity
        )


class ReservationView(ApiOut):
    reservation_id: UUID
    product_id: str
    variant_id: str | None
    quantity: int
    status: ReservationStatus
    expires_at: datetime
    seconds_remaining: int = Field(
        ge=0,
        description="Whole seconds until expiresAt (rounded up) while active; 0 once past "
        "it or ended. An active hold at 0 is about to be expired.",
    )
    order_id: str | None = None
    end_reason: str | None = None


def seconds_remaining(status: ReservationStatus, expires_at: datetime, now: datetime) -> int:
    if status is not ReservationStatus.ACTIVE:
        return 0
    return max(0, math.ceil((expires_at - now).total_seconds()))


def hold_view(hold: Hold, now: datetime) -> ReservationView:
    remaining = seconds_remaining(hold.status, hold.expires_at, now)
    return ReservationView(
        reservation_id=UUID(hold.reservation_id),
        product_id=hold.product_id,
        variant_id=hold.variant_id or None,
        quantity=hold.quantity,
        status=hold.status,
        expires_at=hold.expires_at,
        seconds_remaining=remaining,
        order_id=hold.order_id,
        end_reason=hold.end_reason,
    )
