"""Folding published events into the state tables: the pure part, no I/O.

The events are the facts (DESIGN, guarantee 5): folding them in commit
order (the `outbox-seq` header) reproduces every row the engine wrote.
A batch of events becomes a `FoldChanges`, written by worker.replay.sink.

Counters (stock reserved/sold, pool usage) are folded as deltas, so a batch
needs to read almost nothing from the target: only the strategy of the
admissions its holds belong to (whether a hold's units count against a
pool) and the endings remembered for an admission recorded as already
ended (see `_recorded_end`). `needs` names those rows; the caller loads
them into a `Known`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from worker.adapters.rows import AdmissionRow, EndingRow, Pair, ReservationRow
from worker.domain.endings import AdmissionStatus
from worker.domain.events import (
    AdmissionEnded,
    AdmissionRecorded,
    AdmissionReopened,
    AdmissionRetried,
    AdmissionRevised,
    CartUpdated,
    EndingRemembered,
    Event,
    ExperienceConfigured,
    ReservationCreated,
    ReservationEnded,
    ReservationExtended,
    ReservationRejected,
    RetryKept,
    StockSet,
)
from worker.domain.model import CartLine, ReservationStatus, Strategy
from worker.domain.retry import PENDING_REASON
from worker.domain.stock import PoolKey
from worker.replay.fold_changes import (
    AdmissionClose,
    ExperienceRow,
    FoldCart,
    FoldChanges,
    ReservationEnd,
    StockChange,
)

# Rejections after which the engine had taken a pool unit and given it back:
# the pool row was written (possibly created at 0) even though nothing is held.
_POOL_TOUCHED = frozenset({"INSUFFICIENT_STOCK", "CART_ALL_OR_NOTHING"})
# A cart's lines as the engine stores them, serialised in one call (a
# model_dump per line plus orjson cost four times as much).
_CART_ITEMS: TypeAdapter[list[CartLine]] = TypeAdapter(list[CartLine])


@dataclass
class Known:
    """Rows already in the target that this batch's fold reads."""

    strategies: dict[str, str] = field(default_factory=dict)  # grant digest -> strategy
    endings: list[EndingRow] = field(default_factory=list)


@dataclass
class Needs:
    """What to load into `Known` before folding a batch."""

    grant_digests: set[str] = field(default_factory=set)
    ending_grant_digests: set[str] = field(default_factory=set)
    ending_pairs: set[Pair] = field(default_factory=set)


def needs(events: Iterable[Event]) -> Needs:
    n = Needs()
    # The fold knows the strategy of an admission recorded earlier in the
    # same events: only the others are looked up.
    recorded: set[str] = set()
    # Exact classes (no event class is subclassed): a `match` would make a
    # Python-level ABCMeta.__instancecheck__ call for every class it misses.
    for e in events:
        if type(e) is ReservationEnded or type(e) is ReservationRejected:
            if e.grant_digest not in recorded:
                n.grant_digests.add(e.grant_digest)
        elif type(e) is AdmissionRecorded:
            recorded.add(e.grant_digest)
            if e.end_reason is not None and e.ended_at is None:
                n.ending_grant_digests.add(e.grant_digest)
                n.ending_pairs.add((e.experience_id, e.consumer_id))
    return n


def fold(events: Iterable[Event], known: Known | None = None) -> FoldChanges:
    """The changes that `events`, in commit order, make to the tables."""
    folder = _Fold(known or Known())
    for event in events:
        folder.apply(event)
    return folder.changes


def _variant(variant_id: str | None) -> str:
    # Stored as '' so (product_id, variant_id) can be a primary key.
    return variant_id or ""


class _Fold:
    def __init__(self, known: Known) -> None:
        self.strategies = dict(known.strategies)
        self.endings = list(known.endings)
        self.changes = FoldChanges()

    def apply(self, event: Event) -> None:
        # By exact class, as in `needs`; a refusal (stock.refused,
        # experience.refused, checkout.rejected) has no handler: it changes no row.
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    # --- counters ------------------------------------------------------------

    def _stock(self, product_id: str, variant_id: str | None) -> StockChange:
        key = (product_id, _variant(variant_id))
        row = self.changes.stock.get(key)
        if row is None:
            row = self.changes.stock[key] = StockChange()
        return row

    def _pool(self, grant_digest: str, key: PoolKey, delta: int) -> None:
        strategy = self.strategies.get(grant_digest)
        if strategy is None:
            self.changes.warnings.append(
                f"admission {grant_digest[:12]}… unknown: pool usage of {key} may be off"
            )
            return
        if strategy == Strategy.POOL:
            self.changes.pools[key] = self.changes.pools.get(key, 0) + delta

    # --- per event -----------------------------------------------------------

    def _configured(self, e: ExperienceConfigured) -> None:
        self.changes.experiences[e.experience_id] = ExperienceRow(
            e.settings(), updated_at=e.occurred_at
        )

    def _stock_set(self, e: StockSet) -> None:
        row = self._stock(e.product_id, e.variant_id)
        row.on_hand, row.set_at = e.on_hand, e.occurred_at

    def _cart(self, e: CartUpdated) -> None:
        items = _CART_ITEMS.dump_json(e.items, by_alias=True).decode()
        self.changes.carts[(e.experience_id, e.consumer_id)] = FoldCart(items, e.occurred_at)
        self.changes.cart_versions.append(
            (e.experience_id, e.consumer_id, e.occurred_at, e.command_id, items)
        )

    def _recorded(self, e: AdmissionRecorded) -> None:
        row = AdmissionRow(
            grant_digest=e.grant_digest,
            experience_id=e.experience_id,
            consumer_id=e.consumer_id,
            admitted_at=e.admitted_at,
            expires_at=e.expires_at,
            status=e.status,
            strategy=e.strategy.value,
            window_seconds=e.window_seconds,
            buffer_seconds=e.buffer_seconds,
            command_id=e.command_id,
        )
        if e.end_reason is not None:
            row.end_reason = e.end_reason
            row.ended_at = e.ended_at or self._recorded_end(e)
        self.changes.admissions[row.grant_digest] = row
        self.strategies[row.grant_digest] = row.strategy

    def _recorded_end(self, e: AdmissionRecorded) -> datetime | None:
        """When an admission whose ending came first ended, for an event
        that names the reason but not the time: the remembered ending the
        engine chose then, the earliest one for this grant, or grant-less for
        this consumer at or after the admission."""
        superseded = AdmissionStatus(e.status) is AdmissionStatus.SUPERSEDED
        outcome = AdmissionStatus.RELEASED if superseded else e.status
        matches = [
            x
            for x in self.endings
            if x.outcome != AdmissionStatus.ACTIVE.value  # a retry, pending or not
            and (
                x.grant_digest == e.grant_digest
                or (
                    x.grant_digest is None
                    and x.experience_id == e.experience_id
                    and x.consumer_id == e.consumer_id
                    and x.ended_at >= e.admitted_at
                )
            )
        ]
        if not matches:
            self.changes.warnings.append(
                f"admission {e.grant_digest[:12]}… recorded ended but no remembered ending "
                "is known (log folded from the middle?): ended_at left empty"
            )
            return None
        first = min(matches, key=lambda x: x.ended_at)
        if first.reason != e.end_reason or (not superseded and first.outcome != outcome):
            self.changes.warnings.append(
                f"admission {e.grant_digest[:12]}…: remembered ending {first.reason} does not "
                f"match the recorded {e.end_reason}"
            )
        return first.ended_at

    def _admission_ended(self, e: AdmissionEnded) -> None:
        new = self.changes.admissions.get(e.grant_digest)
        if new is not None:
            if new.status == AdmissionStatus.ACTIVE:
                new.status, new.end_reason = e.status, e.reason
                new.ended_at, new.order_id = e.ended_at, e.order_id
            return
        # An admission reopened earlier in the batch is still ended in the target.
        pending = self.changes.admission_closes.get(e.grant_digest)
        reopened = pending is not None and pending.status == AdmissionStatus.ACTIVE
        self.changes.admission_closes[e.grant_digest] = AdmissionClose(
            e.status, e.reason, e.ended_at, e.order_id, revision=reopened
        )

    def _terms(self, grant_digest: str, expires_at: datetime, extensions: int | None) -> None:
        """An admission already in the target: its new expiry (and count of
        extensions, if it changed)."""
        earlier = self.changes.admission_terms.get(grant_digest)
        if extensions is None and earlier is not None:
            extensions = earlier[1]
        self.changes.admission_terms[grant_digest] = (expires_at, extensions)

    def _extended(self, e: ReservationExtended) -> None:
        new = self.changes.admissions.get(e.grant_digest)
        if new is not None:
            new.expires_at, new.extensions = e.expires_at, e.extensions
        else:
            self._terms(e.grant_digest, e.expires_at, e.extensions)
        for rid in e.reservation_ids:
            hold = self.changes.reservations.get(rid)
            if hold is not None:
                hold.expires_at = e.expires_at
            else:
                self.changes.reservation_expiries[rid] = e.expires_at

    def _reopened(self, e: AdmissionReopened | AdmissionRetried) -> None:
        new = self.changes.admissions.get(e.grant_digest)
        if new is not None:
            new.status, new.end_reason, new.ended_at = AdmissionStatus.ACTIVE.value, None, None
            return
        self.changes.admission_closes[e.grant_digest] = AdmissionClose(
            AdmissionStatus.ACTIVE.value, None, None, None, revision=True
        )

    def _retried(self, e: AdmissionRetried) -> None:
        kept = EndingRow(
            command_id=e.retry_id or e.command_id,
            experience_id=e.experience_id,
            consumer_id=e.consumer_id,
            grant_digest=e.grant_digest,
            outcome=AdmissionStatus.ACTIVE.value,
            reason=e.reason,
            ended_at=e.retried_at,
            follows=e.follows,
            retry_window_seconds=e.retry_window_seconds,
        )
        self.endings.append(kept)
        self.changes.endings.append(kept)
        self._reopened(e)
        new = self.changes.admissions.get(e.grant_digest)
        if new is not None:
            new.expires_at = e.expires_at
        else:
            self._terms(e.grant_digest, e.expires_at, None)

    def _retry_kept(self, e: RetryKept) -> None:
        kept = EndingRow(
            command_id=e.command_id,
            experience_id=e.experience_id,
            consumer_id=e.consumer_id,
            grant_digest=e.grant_digest,
            outcome=AdmissionStatus.ACTIVE.value,
            reason=PENDING_REASON,
            ended_at=e.retried_at,
            retry_window_seconds=e.retry_window_seconds,
        )
        self.endings.append(kept)
        self.changes.endings.append(kept)

    def _revised(self, e: AdmissionRevised) -> None:
        new = self.changes.admissions.get(e.grant_digest)
        if new is not None:
            new.status, new.end_reason = e.status, e.reason
            new.ended_at, new.order_id = e.ended_at, e.order_id
            return
        self.changes.admission_closes[e.grant_digest] = AdmissionClose(
            e.status, e.reason, e.ended_at, e.order_id, revision=True
        )

    def _remembered(self, e: EndingRemembered) -> None:
        row = EndingRow(
            command_id=e.ending_id or e.command_id,
            experience_id=e.experience_id,
            consumer_id=e.consumer_id,
            grant_digest=e.grant_digest,
            outcome=e.outcome,
            reason=e.reason,
            ended_at=e.ended_at,
            order_id=e.order_id,
        )
        self.endings.append(row)
        self.changes.endings.append(row)

    def _created(self, e: ReservationCreated) -> None:
        variant = _variant(e.variant_id)
        self.changes.reservations[e.reservation_id] = ReservationRow(
            id=e.reservation_id,
            consumer_id=e.consumer_id,
            experience_id=e.experience_id,
            grant_digest=e.grant_digest,
            product_id=e.product_id,
            variant_id=variant,
            quantity=e.quantity,
            status=e.status.value,
            created_at=e.created_at,
            expires_at=e.expires_at,
            strategy=e.strategy.value,
            window_seconds=e.window_seconds,
            buffer_seconds=e.buffer_seconds,
        )
        self._stock(e.product_id, e.variant_id).reserved += e.quantity
        if e.strategy is Strategy.POOL:
            key = (e.experience_id, e.product_id, variant)
            self.changes.pools[key] = self.changes.pools.get(key, 0) + e.quantity

    def _ended(self, e: ReservationEnded) -> None:
        status = e.type.removeprefix("reservation.")
        converted = status == ReservationStatus.CONVERTED
        end = ReservationEnd(
            status=status,
            ended_at=e.ended_at,
            end_reason=e.reason,
            converted_at=e.ended_at if converted else None,
            order_id=e.order_id,
        )
        new = self.changes.reservations.get(e.reservation_id)
        if new is not None:
            new.status, new.ended_at, new.end_reason = end.status, end.ended_at, end.end_reason
            new.converted_at, new.order_id = end.converted_at, end.order_id
        else:
            self.changes.reservation_ends[e.reservation_id] = end
        stock = self._stock(e.product_id, e.variant_id)
        key = (e.experience_id, e.product_id, _variant(e.variant_id))
        if e.previous_status is ReservationStatus.ACTIVE:
            stock.reserved -= e.quantity
            if converted:
                stock.sold += e.quantity  # a sale keeps its pool unit
            else:
                self._pool(e.grant_digest, key, -e.quantity)
        elif converted:  # a late completion sold an ended hold again
            stock.sold += e.quantity
            self._pool(e.grant_digest, key, e.quantity)
        else:  # a sale moved to the admission it belonged to
            stock.sold -= e.quantity
            self._pool(e.grant_digest, key, -e.quantity)

    def _rejected(self, e: ReservationRejected) -> None:
        if e.reason in _POOL_TOUCHED:
            self._pool(e.grant_digest, (e.experience_id, e.product_id, _variant(e.variant_id)), 0)


_HANDLERS: dict[type, Callable[[_Fold, Any], None]] = {
    ExperienceConfigured: _Fold._configured,
    StockSet: _Fold._stock_set,
    CartUpdated: _Fold._cart,
    AdmissionRecorded: _Fold._recorded,
    AdmissionEnded: _Fold._admission_ended,
    AdmissionRevised: _Fold._revised,
    ReservationExtended: _Fold._extended,
    AdmissionReopened: _Fold._reopened,
    AdmissionRetried: _Fold._retried,
    RetryKept: _Fold._retry_kept,
    EndingRemembered: _Fold._remembered,
    ReservationCreated: _Fold._created,
    ReservationEnded: _Fold._ended,
    ReservationRejected: _Fold._rejected,
}
