"""A command's events, numbered so each id is stable across re-deliveries,
and built from the values the engine decided with: one builder per event
the engine publishes. An event's id is its position among the command's
events, so the order of the builders' calls is part of the contract."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from worker.adapters.rows import Pair
from worker.adapters.uow_rows import HeldRow
from worker.domain import ids, reservation
from worker.domain.admission import HoldRequest
from worker.domain.commands import (
    AdmitConsumer,
    CommandBase,
    CompleteCheckout,
    ExtendReservation,
    PutCart,
    ReleaseHolds,
    SetStock,
)
from worker.domain.endings import AdmissionStatus, Fact, Verdict
from worker.domain.events import (
    AdmissionEnded,
    AdmissionRecorded,
    AdmissionReopened,
    AdmissionRetried,
    AdmissionRevised,
    CartUpdated,
    CheckoutRejected,
    EndingRemembered,
    EventBase,
    ExperienceConfigured,
    ExperienceRefused,
    LateConversionUnfilled,
    ReservationCreated,
    ReservationEnded,
    ReservationExtended,
    ReservationRejected,
    RetryKept,
    StockRefused,
    StockSet,
)
from worker.domain.extension import Extension
from worker.domain.model import ExperienceSettings, ReservationStatus
from worker.domain.pools import PoolBelowUsed
from worker.domain.retry import Retry
from worker.engine.holds import HoldTerms


class Events:
    """Collects and numbers one command's events."""

    def __init__(self, command: CommandBase, part: str = "") -> None:
        """`part` numbers a second set of the command's events apart from
        its own (their ids differ)."""
        self.command = command
        self.items: list[EventBase] = []
        self._id_prefix = ids.event_id_prefix(command.command_id) + part

    def common(self) -> dict[str, Any]:
        return {
            # ids.event_id(command_id, n), without formatting the id each time
            "event_id": ids.uuid5(f"{self._id_prefix}{len(self.items)}"),
            "command_id": self.command.command_id,
            "occurred_at": self.command.occurred_at,
        }

    def about(
        self, experience_id: str, consumer_id: str, grant_digest: str | None
    ) -> dict[str, Any]:
        """The fields of an event about one consumer's admission."""
        fields = self.common()
        fields["experience_id"] = experience_id
        fields["consumer_id"] = consumer_id
        fields["grant_digest"] = grant_digest
        return fields

    def add(self, event: EventBase) -> None:
        self.items.append(event)

    # --- admissions ------------------------------------------------------------

    def admission_recorded(
        self,
        cmd: AdmitConsumer,
        status: AdmissionStatus,
        verdict: Verdict,
        settings: ExperienceSettings,
        expires_at: datetime,
        supersedes: str | None,
    ) -> None:
        ended = status is not AdmissionStatus.ACTIVE
        self.add(
            AdmissionRecorded(
                **self.about(cmd.experience_id, cmd.consumer_id, cmd.grant_digest),
                **_terms(settings),
                status=status.value,
                supersedes=supersedes,
                end_reason=verdict.reason if ended else None,
                ended_at=verdict.at if ended else None,
                admitted_at=cmd.admitted_at,
                expires_at=expires_at,
            )
        )

    def admission_ended(
        self, pair: Pair, grant_digest: str, verdict: Verdict, reason: str, at: datetime
    ) -> None:
        self.add(
            AdmissionEnded(
                **self.about(*pair, grant_digest),
                status=verdict.status.value,
                reason=reason,
                ended_at=at,
                order_id=verdict.order_id,
            )
        )

    def admission_revised(
        self, pair: Pair, grant_digest: str, before: Verdict, after: Verdict, at: datetime
    ) -> None:
        self.add(
            AdmissionRevised(
                **self.about(*pair, grant_digest),
                status=after.status.value,
                previous_status=before.status.value,
                reason=after.reason or "",
                ended_at=at,
                order_id=after.order_id,
            )
        )

    def ending_remembered(self, pair: Pair, fact: Fact) -> None:
        """`fact` kept; its id is named when it is not the command's own."""
        own = fact.command_id == self.command.command_id
        self.add(
            EndingRemembered(
                **self.about(*pair, fact.grant_digest),
                outcome=fact.outcome.value,
                reason=fact.reason,
                ended_at=fact.at,
                order_id=fact.order_id,
                ending_id=None if own else fact.command_id,
            )
        )

    def admission_reopened(
        self, pair: Pair, grant_digest: str, before: Verdict, expires_at: datetime
    ) -> None:
        assert before.reason is not None
        assert before.at is not None
        self.add(
            AdmissionReopened(
                **self.about(*pair, grant_digest),
                reason="extended",
                previous_status="expired",
                previous_reason=before.reason,
                previous_ended_at=before.at,
                expires_at=expires_at,
            )
        )

    def admission_retried(
        self, pair: Pair, grant_digest: str, retry: Retry, at: datetime, kept_as: UUID
    ) -> None:
        """`kept_as`: the id the retry is kept under, named when it is not
        the command's own (a pending retry taken up)."""
        own = kept_as == self.command.command_id
        self.add(
            AdmissionRetried(
                **self.about(*pair, grant_digest),
                reason=retry.reason,
                follows=retry.follows,
                retried_at=at,
                expires_at=retry.expires_at,
                retry_window_seconds=int(retry.window.total_seconds()),
                retry_id=None if own else kept_as,
            )
        )

    def retry_kept(self, pair: Pair, fact: Fact) -> None:
        assert fact.retry_window is not None
        assert fact.grant_digest is not None
        self.add(
            RetryKept(
                **self.about(*pair, fact.grant_digest),
                retried_at=fact.at,
                retry_window_seconds=int(fact.retry_window.total_seconds()),
            )
        )

    # --- holds ---------------------------------------------------------------

    def reservation_extended(
        self, cmd: ExtendReservation, extension: Extension, moved: list[UUID]
    ) -> None:
        self.add(
            ReservationExtended(
                **self.about(cmd.experience_id, cmd.consumer_id, cmd.grant_digest),
                reservation_ids=moved,
                expires_at=extension.expires_at,
                previous_expires_at=extension.previous_expires_at,
                extensions=extension.extensions,
                extensions_left=extension.left,
            )
        )

    def reservation_created(
        self,
        terms: HoldTerms,
        hold: HoldRequest,
        replaces: UUID | None = None,
        reason: Literal["backfill"] | None = None,
    ) -> None:
        settings = terms.settings
        self.add(
            ReservationCreated(
                **self.about(terms.experience_id, terms.consumer_id, terms.grant_digest),
                product_id=hold.product_id,
                variant_id=hold.variant_id or None,
                quantity=hold.quantity,
                reservation_id=hold.reservation_id,
                **_terms(settings),
                created_at=terms.created_at,
                expires_at=terms.expires_at,
                replaces=replaces,
                reason=reason,
            )
        )

    def rejected(self, terms: HoldTerms, hold: HoldRequest, reason: str) -> None:
        """A hold asked for and not taken, and why (worker.engine.holds.take)."""
        self.add(
            ReservationRejected(
                **self.about(terms.experience_id, terms.consumer_id, terms.grant_digest),
                product_id=hold.product_id,
                variant_id=hold.variant_id or None,
                quantity=hold.quantity,
                reason=reason,
            )
        )

    def hold_ended(
        self,
        pair: Pair,
        grant_digest: str,
        held: HeldRow,
        *,
        status: str,
        reason: str,
        at: datetime,
        order_id: str | None = None,
        previous_status: str = ReservationStatus.ACTIVE,
    ) -> None:
        """A hold now `status` (released, expired or converted)."""
        self.add(
            ReservationEnded(
                **self.about(*pair, grant_digest),
                type=f"reservation.{status}",
                reservation_id=held.reservation_id,
                product_id=held.product_id,
                variant_id=held.variant_id or None,
                quantity=held.quantity,
                reason=reason,
                ended_at=at,
                order_id=order_id,
                created_at=held.created_at,
                strategy=held.strategy,
                previous_status=previous_status,
            )
        )

    def released_by_operator(
        self, cmd: ReleaseHolds, consumer_id: str, grant_digest: str, held: HeldRow
    ) -> None:
        """A hold an operator released, with who asked (the key's
        fingerprint) and why."""
        self.add(
            ReservationEnded(
                **self.common(),
                type="reservation.released",
                experience_id=cmd.experience_id,
                reservation_id=held.reservation_id,
                consumer_id=consumer_id,
                grant_digest=grant_digest,
                product_id=held.product_id,
                variant_id=held.variant_id or None,
                quantity=held.quantity,
                reason=reservation.OPERATOR_REASON,
                ended_at=cmd.occurred_at,
                created_at=held.created_at,
                strategy=held.strategy,
                requested_by=cmd.source.secret_id,
                request_reason=cmd.reason,
            )
        )

    def late_conversion_unfilled(
        self, pair: Pair, grant_digest: str, order_id: str, line: HoldRequest
    ) -> None:
        self.add(
            LateConversionUnfilled(
                **self.about(*pair, grant_digest),
                order_id=order_id,
                product_id=line.product_id,
                variant_id=line.variant_id or None,
                quantity=line.quantity,
            )
        )

    # --- carts, checkout, stock and settings -----------------------------------

    def cart_stored(self, cmd: PutCart) -> None:
        self.add(
            CartUpdated(
                **self.common(),
                experience_id=cmd.experience_id,
                consumer_id=cmd.consumer_id,
                items=cmd.items,
            )
        )

    def checkout_rejected(self, cmd: CompleteCheckout, error: str, message: str) -> None:
        self.add(
            CheckoutRejected(
                **self.about(cmd.experience_id, cmd.consumer_id, cmd.grant_digest),
                order_id=cmd.order_id,
                error=error,
                message=message,
            )
        )

    def stock_set(self, cmd: SetStock) -> None:
        self.add(
            StockSet(
                **self.common(),
                product_id=cmd.product_id,
                variant_id=cmd.variant_id,
                on_hand=cmd.on_hand,
            )
        )

    def stock_refused(self, cmd: SetStock, committed: int) -> None:
        self.add(
            StockRefused(
                **self.common(),
                product_id=cmd.product_id,
                variant_id=cmd.variant_id,
                on_hand=cmd.on_hand,
                committed=committed,
            )
        )

    def experience_refused(self, experience_id: str, refused: PoolBelowUsed) -> None:
        self.add(
            ExperienceRefused(
                **self.common(),
                experience_id=experience_id,
                product_id=refused.product_id,
                variant_id=refused.variant_id or None,
                size=refused.size,
                used=refused.used,
            )
        )

    def experience_configured(self, experience_id: str, settings: ExperienceSettings) -> None:
        self.add(
            ExperienceConfigured(
                **self.common(),
                experience_id=experience_id,
                **dict(settings),
            )
        )


def _terms(settings: ExperienceSettings) -> dict[str, Any]:
    """The hold terms an event repeats from the experience's settings."""
    return {
        "strategy": settings.strategy,
        "window_seconds": settings.window_seconds,
        "buffer_seconds": settings.buffer_seconds,
    }
