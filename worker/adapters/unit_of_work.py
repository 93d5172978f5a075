"""The batch's unit of work: an identity map of every row a batch of
commands can touch, read by worker.adapters.uow_load in a handful of
set-based statements, changed in memory as the engine applies the commands
in order, and written back by worker.adapters.uow_flush one statement per
table. Round trips per batch stay constant however large the batch is.

It decides nothing: stock and pool arithmetic is worker.domain.stock's, a
hold's moves worker.domain.reservation's, an admission's standing
worker.domain.endings'. It finds the rows, applies what the engine decided,
and remembers what changed.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import orjson

from worker.adapters.rows import EndingRow, Pair
from worker.adapters.uow_holds import BatchHolds
from worker.adapters.uow_rows import (
    CART_ITEMS,
    CartVersion,
    TrackedAdmission,
    TrackedCart,
)
from worker.domain.endings import AdmissionState, AdmissionStatus, Fact, Verdict, Visit
from worker.domain.events import EventBase
from worker.domain.model import CartLine, ExperienceSettings, Strategy

# An admission's recorded end that is not a fact of its own: it is open, or
# its end is the next admission.
_NOT_FACTS = frozenset({AdmissionStatus.ACTIVE, AdmissionStatus.SUPERSEDED})


class UnitOfWork(BatchHolds):
    """In-memory view of the rows a batch touches, with the operations the
    engine needs; `load` reads them, `flush` writes what changed."""

    def __init__(self) -> None:
        super().__init__()
        self.experiences: dict[str, ExperienceSettings] = {}
        self.experiences_dirty: dict[str, datetime] = {}
        self.admissions: dict[str, TrackedAdmission] = {}
        self.admissions_by_pair: dict[Pair, list[TrackedAdmission]] = defaultdict(list)
        # Grants whose admission row was pruned (worker.roles.housekeeping).
        self.tombstones: set[str] = set()
        self.carts: dict[Pair, TrackedCart] = {}
        # Carts by time, complete for the consumers whose sales may need them
        # (`versions_read`; None: nothing was read, every row is in memory).
        self.cart_versions: dict[Pair, list[CartVersion]] = defaultdict(list)
        self.versions_read: set[Pair] | None = None
        self.new_cart_versions: list[tuple[str, str, datetime, UUID, str]] = []
        # Kept endings and completions, by consumer (experience, consumer).
        self.endings: dict[Pair, list[EndingRow]] = defaultdict(list)
        self.new_endings: list[EndingRow] = []
        self.outbox: list[EventBase] = []
        self.inbox: list[tuple[UUID, str, str, str, int, int]] = []
        # Backfill (worker.adapters.uow_backfill): the products whose
        # candidates were read for the batch's experiences, and the grants
        # that may have refused lines (read, or refused since); None: every
        # row is in memory.
        self.backfill_products: set[str] | None = None
        self.backfill_waiting: set[str] | None = None
        # The waiting admissions in line order, kept until one joins; per
        # experience read only in part, the place of the last one read.
        self.backfill_line: list[TrackedAdmission] | None = None
        self.backfill_cutoff: dict[str, tuple[datetime, str]] = {}

    # --- the identity map --------------------------------------------------------

    def track_admission(self, row: TrackedAdmission) -> None:
        if row.grant_digest in self.admissions:
            return  # read twice: by its pair and by its grant digest
        self.admissions[row.grant_digest] = row
        self.admissions_by_pair[(row.experience_id, row.consumer_id)].append(row)

    # --- experiences and carts -------------------------------------------------------

    def load_settings(self, experience_id: str) -> ExperienceSettings | None:
        return self.experiences.get(experience_id)

    def upsert_experience(
        self, experience_id: str, settings: ExperienceSettings, at: datetime
    ) -> None:
        self.experiences[experience_id] = settings
        self.experiences_dirty[experience_id] = at

    def put_cart(
        self,
        experience_id: str,
        consumer_id: str,
        items: list[CartLine],
        at: datetime,
        command_id: UUID,
    ) -> None:
        pair = (experience_id, consumer_id)
        self.carts[pair] = TrackedCart(list(items), at, dirty=True)
        self.cart_versions[pair].append(CartVersion(at, command_id, list(items)))
        items_json = CART_ITEMS.dump_json(items, by_alias=True).decode()
        self.new_cart_versions.append((experience_id, consumer_id, at, command_id, items_json))

    def cart_version_at(
        self, experience_id: str, consumer_id: str, at: datetime
    ) -> CartVersion | None:
        """The consumer's cart as it stood at `at` (the last put at or before)."""
        pair = (experience_id, consumer_id)
        if self.versions_read is not None and pair not in self.versions_read:
            raise RuntimeError(f"cart versions of {pair} were not read for this batch")
        versions = self.cart_versions.get(pair, [])
        earlier = [v for v in versions if v.updated_at <= at]
        if not earlier:
            return None
        return max(earlier, key=lambda v: (v.updated_at, v.command_id))

    def cart_at(self, experience_id: str, consumer_id: str, at: datetime) -> list[CartLine]:
        version = self.cart_version_at(experience_id, consumer_id, at)
        return list(version.items) if version is not None else []

    def load_cart(self, experience_id: str, consumer_id: str) -> list[CartLine]:
        cart = self.carts.get((experience_id, consumer_id))
        return list(cart.items) if cart else []

    # --- admissions ----------------------------------------------------------------------

    def grant_seen(self, grant_digest: str) -> bool:
        return grant_digest in self.admissions or grant_digest in self.tombstones

    def _latest(self, experience_id: str, consumer_id: str) -> TrackedAdmission | None:
        rows = self.admissions_by_pair.get((experience_id, consumer_id), [])
        return max(rows, key=lambda a: (a.admitted_at, a.grant_digest)) if rows else None

    def current_admission(self, experience_id: str, consumer_id: str) -> AdmissionState | None:
        """The consumer's latest admission in the experience."""
        return _state(self._latest(experience_id, consumer_id))

    def visits(self, experience_id: str, consumer_id: str) -> list[Visit]:
        return [
            Visit(
                a.grant_digest,
                a.admitted_at,
                a.expires_at,
                timedelta(seconds=a.window_seconds + a.buffer_seconds),
            )
            for a in self.admissions_by_pair.get((experience_id, consumer_id), [])
        ]

    def standing(self, grant_digest: str) -> Verdict:
        """How an admission stands as recorded."""
        row = self.admissions[grant_digest]
        return Verdict(AdmissionStatus(row.status), row.end_reason, row.ended_at, row.order_id)

    def admission_state(self, grant_digest: str) -> AdmissionState | None:
        return _state(self.admissions.get(grant_digest))

    def admission_order(self, grant_digest: str) -> str | None:
        row = self.admissions.get(grant_digest)
        return row.order_id if row else None

    def admission_settings(self, grant_digest: str) -> ExperienceSettings | None:
        """The settings an admission was taken under (strategy and window
        stored on it), with the experience's current other settings."""
        row = self.admissions.get(grant_digest)
        if row is None:
            return None
        current = self.experiences.get(row.experience_id) or ExperienceSettings()
        return current.model_copy(
            update={
                "strategy": Strategy(row.strategy),
                "window_seconds": row.window_seconds,
                "buffer_seconds": row.buffer_seconds,
            }
        )

    def insert_admission(
        self,
        *,
        grant_digest: str,
        experience_id: str,
        consumer_id: str,
        admitted_at: datetime,
        expires_at: datetime,
        status: str,
        settings: ExperienceSettings,
        command_id: UUID,
    ) -> None:
        self.track_admission(
            TrackedAdmission(
                grant_digest=grant_digest,
                experience_id=experience_id,
                consumer_id=consumer_id,
                admitted_at=admitted_at,
                expires_at=expires_at,
                status=status,
                strategy=settings.strategy.value,
                window_seconds=settings.window_seconds,
                buffer_seconds=settings.buffer_seconds,
                command_id=command_id,
                new=True,
            )
        )

    def revise_admission(self, grant_digest: str, verdict: Verdict) -> None:
        """An ended admission that now stands otherwise (a fact that happened
        earlier arrived late)."""
        row = self.admissions[grant_digest]
        row.status, row.end_reason = verdict.status.value, verdict.reason
        row.ended_at, row.order_id = verdict.at, verdict.order_id
        row.dirty = True

    def admission_extensions(self, grant_digest: str) -> int:
        return self.admissions[grant_digest].extensions

    def extend_admission(self, grant_digest: str, expires_at: datetime) -> None:
        """The admission's expiry moved once more (worker.domain.extension)."""
        row = self.admissions[grant_digest]
        row.expires_at, row.extensions, row.dirty = expires_at, row.extensions + 1, True

    def reopen_admission(self, grant_digest: str, expires_at: datetime | None = None) -> None:
        """An expired admission holds again: its expiry no longer counts, or
        the consumer tried again (then until `expires_at`)."""
        row = self.admissions[grant_digest]
        row.status, row.end_reason, row.ended_at = AdmissionStatus.ACTIVE.value, None, None
        if expires_at is not None:
            row.expires_at = expires_at
        row.dirty = True

    def close_admission(
        self, grant_digest: str, status: str, reason: str, at: datetime, order_id: str | None = None
    ) -> None:
        row = self.admissions.get(grant_digest)
        if row is None or row.status != AdmissionStatus.ACTIVE:
            return
        row.status, row.end_reason, row.ended_at, row.order_id = status, reason, at, order_id
        row.dirty = True

    # --- endings and completions ------------------------------------------------------

    def keep_fact(self, fact: Fact, experience_id: str, consumer_id: str) -> None:
        assert fact.command_id is not None
        row = EndingRow(
            fact.command_id,
            experience_id,
            consumer_id,
            fact.grant_digest,
            fact.outcome.value,
            fact.reason,
            fact.at,
            fact.order_id,
            fact.follows,
            None if fact.retry_window is None else int(fact.retry_window.total_seconds()),
        )
        self.endings[(experience_id, consumer_id)].append(row)
        self.new_endings.append(row)

    def kept_facts(self, experience_id: str, consumer_id: str) -> list[EndingRow]:
        return self.endings.get((experience_id, consumer_id), [])

    def facts(self, experience_id: str, consumer_id: str) -> list[Fact]:
        """The consumer's kept endings and completions, and the end each of
        its admissions was recorded with (a fact with a grant digest, from
        our scheduler or checkout, is not kept once its admission is known)."""
        pair = (experience_id, consumer_id)
        ended = [
            a
            for a in self.admissions_by_pair.get(pair, [])
            if a.ended_at is not None and a.status not in _NOT_FACTS
        ]
        rows = self.endings.get(pair)
        if not rows and not ended:
            return []
        kept = [_kept_fact(e) for e in rows or ()]
        known = {(f.grant_digest, f.reason, f.at) for f in kept}
        recorded = map(_recorded_end, ended)
        kept += [
            f
            for f in recorded
            if (None, f.reason, f.at) not in known and (f.grant_digest, f.reason, f.at) not in known
        ]
        return kept

    # --- inbox and outbox ---------------------------------------------------------------------

    def record(
        self,
        command_id: UUID,
        command_type: str,
        outcome: dict[str, Any],
        events: list[EventBase],
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        self.inbox.append(
            (command_id, command_type, orjson.dumps(outcome).decode(), topic, partition, offset)
        )
        self.outbox.extend(events)


def _state(row: TrackedAdmission | None) -> AdmissionState | None:
    if row is None:
        return None
    return AdmissionState(row.grant_digest, AdmissionStatus(row.status), row.expires_at)


def _kept_fact(e: EndingRow) -> Fact:
    return Fact(
        e.command_id,
        e.grant_digest,
        AdmissionStatus(e.outcome),
        e.reason,
        e.ended_at,
        e.order_id,
        e.follows,
        None if e.retry_window_seconds is None else timedelta(seconds=e.retry_window_seconds),
    )


def _recorded_end(a: TrackedAdmission) -> Fact:
    """The end an admission was recorded with, as a fact of no command."""
    assert a.end_reason is not None
    assert a.ended_at is not None
    return Fact(
        None, a.grant_digest, AdmissionStatus(a.status), a.end_reason, a.ended_at, a.order_id
    )
