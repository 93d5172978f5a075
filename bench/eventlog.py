"""A synthetic event log for the rebuild stage, shaped as the service's
relay writes it: the public event models (worker.domain.events, the source of
schemas/events.schema.json), keyed by experience id (stock by product id),
each with an increasing `outbox-seq` header (as the relay sets it), ids derived
as the service derives them (UUIDv5 of the command and the event's position).

Per admission: cart.updated; admission.recorded + reservation.created; then
half expire (reservation.expired + admission.ended), a fifth convert
(reservation.converted + admission.ended) and the rest stay active. About 4.4
events per admission; the stock and experience events come first."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from worker.domain import ids
from worker.domain.events import (
    AdmissionEnded,
    AdmissionRecorded,
    CartUpdated,
    EventBase,
    ExperienceConfigured,
    ReservationCreated,
    ReservationEnded,
    StockSet,
    encode_event,
)
from worker.domain.model import CartLine, MultiItemPolicy, Strategy


@dataclass
class Expected:
    """What folding the log must yield."""

    admissions: int = 0
    reservations: int = 0
    active: int = 0
    expired: int = 0
    converted: int = 0
    reserved: dict[str, int] = field(default_factory=dict)
    sold: dict[str, int] = field(default_factory=dict)


def _cmd() -> uuid.UUID:
    return uuid.uuid4()


def _common(command: uuid.UUID, n: int, at: datetime) -> dict[str, object]:
    return {"event_id": ids.event_id(command, n), "command_id": command, "occurred_at": at}


def generate(total: int, seed: int = 11) -> tuple[Iterator[tuple[bytes, bytes]], Expected]:
    """(key, value) pairs in log order, at least `total` of them, and what
    they fold into. The iterator is lazy: a million events never sit in memory."""
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:8]
    products = [f"sku-{tag}-{i}" for i in range(32)]
    experiences = [f"drop-{tag}-{i}" for i in range(16)]
    expected = Expected()
    start = datetime.now(UTC) - timedelta(hours=1)
    # Decide the whole script up front (cheap), so Expected is known now.
    script: list[tuple[int, int, str]] = []  # (product index, experience index, fate)
    n_events = len(products) + len(experiences)
    while n_events < total:
        fate = rng.choices(("expire", "convert", "active"), (5, 2, 3))[0]
        script.append((rng.randrange(len(products)), len(script) % len(experiences), fate))
        n_events += 3 + (2 if fate != "active" else 0)
    for p_index, _, fate in script:
        product = products[p_index]
        expected.admissions += 1
        expected.reservations += 1
        if fate == "active":
            expected.active += 1
            expected.reserved[product] = expected.reserved.get(product, 0) + 1
        elif fate == "convert":
            expected.converted += 1
            expected.sold[product] = expected.sold.get(product, 0) + 1
        else:
            expected.expired += 1

    def events() -> Iterator[EventBase]:
        at = start
        for product in products:
            yield StockSet(
                **_common(_cmd(), 0, at), product_id=product, variant_id=None, on_hand=10_000_000
            )
        for exp in experiences:
            yield ExperienceConfigured(
                **_common(_cmd(), 0, at),
                experience_id=exp,
                strategy=Strategy.SOFT,
                window_seconds=600,
                buffer_seconds=60,
                pool_size=None,
                multi_item_policy=MultiItemPolicy.PARTIAL,
            )
        for n, (p_index, e_index, fate) in enumerate(script):
            at = start + timedelta(milliseconds=n)
            product, exp, consumer = products[p_index], experiences[e_index], f"c{n}"
            grant = ids.grant_digest(f"grant-{tag}-{n}")
            line = CartLine(product_id=product, quantity=1)
            yield CartUpdated(
                **_common(_cmd(), 0, at), experience_id=exp, consumer_id=consumer, items=[line]
            )
            admit = _cmd()
            expires = at + timedelta(seconds=660)
            yield AdmissionRecorded(
                **_common(admit, 0, at),
                experience_id=exp,
                status="active",
                consumer_id=consumer,
                grant_digest=grant,
                admitted_at=at,
                expires_at=expires,
                strategy=Strategy.SOFT,
                window_seconds=600,
                buffer_seconds=60,
            )
            reservation = ids.reservation_id(grant, product, None)
            yield ReservationCreated(
                **_common(admit, 1, at),
                experience_id=exp,
                reservation_id=reservation,
                consumer_id=consumer,
                grant_digest=grant,
                product_id=product,
                variant_id=None,
                quantity=1,
                strategy=Strategy.SOFT,
                window_seconds=600,
                buffer_seconds=60,
                created_at=at,
                expires_at=expires,
            )
            if fate == "active":
                continue
            end = _cmd()
            status = "expired" if fate == "expire" else "converted"
            order = f"order-{n}" if fate == "convert" else None
            reason = "window_elapsed" if fate == "expire" else "checkout"
            ended = expires if fate == "expire" else at + timedelta(seconds=30)
            yield ReservationEnded(
                **_common(end, 0, ended),
                type=f"reservation.{status}",
                experience_id=exp,
                reservation_id=reservation,
                consumer_id=consumer,
                grant_digest=grant,
                product_id=product,
                variant_id=None,
                quantity=1,
                reason=reason,
                ended_at=ended,
                order_id=order,
            )
            yield AdmissionEnded(
                **_common(end, 1, ended),
                experience_id=exp,
                consumer_id=consumer,
                grant_digest=grant,
                status=status,
                reason=reason,
                ended_at=ended,
                order_id=order,
            )

    def encoded() -> Iterator[tuple[bytes, bytes]]:
        for event in events():
            yield event.partition_key().encode(), encode_event(event)

    return encoded(), expected
