"""Command builders for tests: every command as the API, Fanfare or the
scheduler would produce it, with a fresh deterministic-looking id."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from worker.domain import ids
from worker.domain.commands import (
    AdmitConsumer,
    CommandSource,
    CompleteCheckout,
    ConfigureExperience,
    EndAdmission,
    ExtendReservation,
    PutCart,
    ReleaseHolds,
    RetryReservation,
    SetStock,
)
from worker.domain.model import CartLine


def _common(kind: str = "api", at: datetime | None = None) -> dict[str, Any]:
    key = uuid.uuid4().hex
    when = at or datetime.now(UTC)
    return {
        "command_id": ids.command_id(kind, key),
        "occurred_at": when,
        "received_at": when,
        "source": CommandSource(kind=kind, source_id=key),  # type: ignore[arg-type]
    }


def line(product: str, qty: int, variant: str | None = None) -> CartLine:
    return CartLine(product_id=product, variant_id=variant, quantity=qty)


def stock(product: str, on_hand: int, variant: str | None = None) -> SetStock:
    return SetStock(**_common(), product_id=product, variant_id=variant, on_hand=on_hand)


def cart(experience: str, consumer: str, *lines: CartLine, at: datetime | None = None) -> PutCart:
    return PutCart(
        **_common(at=at), experience_id=experience, consumer_id=consumer, items=list(lines)
    )


def configure(experience: str, **settings: Any) -> ConfigureExperience:
    return ConfigureExperience(**_common(), experience_id=experience, **settings)


def admit(experience: str, consumer: str, grant: str, at: datetime | None = None) -> AdmitConsumer:
    when = at or datetime.now(UTC)
    return AdmitConsumer(
        **_common("fanfare", when),
        experience_id=experience,
        consumer_id=consumer,
        grant_digest=ids.grant_digest(grant),
        admitted_at=when,
        experience_kind="queue",
    )


def end(
    experience: str,
    consumer: str,
    grant: str | None,
    *,
    outcome: str = "released",
    reason: str = "left",
    at: datetime | None = None,
) -> EndAdmission:
    when = at or datetime.now(UTC)
    return EndAdmission(
        **_common("fanfare", when),
        experience_id=experience,
        consumer_id=consumer,
        grant_digest=ids.grant_digest(grant) if grant else None,
        outcome=outcome,  # type: ignore[arg-type]
        reason=reason,  # type: ignore[arg-type]
        ended_at=when,
    )


def complete(
    experience: str,
    consumer: str,
    grant: str | None,
    order_id: str,
    *lines: CartLine,
    at: datetime | None = None,
) -> CompleteCheckout:
    return CompleteCheckout(
        **_common(at=at),
        experience_id=experience,
        consumer_id=consumer,
        grant_digest=ids.grant_digest(grant) if grant else None,
        order_id=order_id,
        items=list(lines) if lines else None,
    )


def release(
    experience: str,
    *,
    reservation_ids: list[UUID] | None = None,
    consumer: str | None = None,
    product: str | None = None,
    variant: str | None = None,
    reason: str = "stock recount",
    at: datetime | None = None,
    key: str | None = "sha256:0123456789ab",
) -> ReleaseHolds:
    """An operator's release, as the API produces it (the key's fingerprint
    as the source's secret id)."""
    common = _common(at=at)
    common["source"] = common["source"].model_copy(update={"secret_id": key})
    return ReleaseHolds(
        **common,
        experience_id=experience,
        reservation_ids=reservation_ids,
        consumer_id=consumer,
        product_id=product,
        variant_id=variant,
        reason=reason,
    )


def extend(experience: str, consumer: str, grant: str, at: datetime) -> ExtendReservation:
    return ExtendReservation(
        **_common(at=at),
        experience_id=experience,
        consumer_id=consumer,
        grant_digest=ids.grant_digest(grant),
    )


def retry(experience: str, consumer: str, grant: str, at: datetime) -> RetryReservation:
    return RetryReservation(
        **_common(at=at),
        experience_id=experience,
        consumer_id=consumer,
        grant_digest=ids.grant_digest(grant),
    )
