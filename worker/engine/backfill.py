"""Backfill after each command of a backfill experience, in the same batch:
the units free on the rows that command's events name (a hold of the
experience it ended, or units a stock set freed before it) are offered to
the experience's refused lines of admissions still active
(worker.domain.backfill decides who), and each offer is held and published
as `reservation.created` with reason `backfill`, among the command's own
events. Before an admission is decided, the units already free on its
cart's rows go to the line the same way (`backfill_first`), so a newcomer
never takes them ahead of those waiting. The unit of work read every candidate with the batch
(worker.adapters.uow_backfill), and locked their stock rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import TrackedAdmission
from worker.domain import ids
from worker.domain.admission import HoldRequest
from worker.domain.backfill import (
    BACKFILL_REASON,
    Candidate,
    Offer,
    Shelf,
    offers,
    place_in_line,
)
from worker.domain.commands import AdmitConsumer, CommandBase
from worker.domain.endings import AdmissionStatus
from worker.domain.events import (
    CartUpdated,
    EventBase,
    ReservationCreated,
    ReservationEnded,
    ReservationRejected,
)
from worker.domain.model import ReservationStatus
from worker.domain.reservation import OPERATOR_REASON
from worker.domain.stock import PoolKey, StockKey
from worker.engine import holds
from worker.engine.base import Applied
from worker.engine.events import Events
from worker.engine.holds import HoldTerms


def backfill(uow: UnitOfWork, cmd: CommandBase, applied: Applied) -> Applied:
    """`applied` with the holds its freed units went to, if any."""
    _note_refusals(uow, applied.events)
    freed, at = _freed(uow, cmd, applied.events)
    if not freed:
        return applied
    events = Events(cmd)
    events.items = list(applied.events)  # numbered after the command's own
    if not _offer(uow, events, freed, at, f"{BACKFILL_REASON}:{cmd.command_id}"):
        return applied
    return Applied(applied.outcome, events.items)


def backfill_first(uow: UnitOfWork, cmd: CommandBase) -> list[EventBase]:
    """Before an admission of a backfill experience takes units: the units
    already free on its cart's rows (a stock raised, or units another
    experience freed, since the experience's last command on them) go to
    the line first, so the newcomer comes after everyone waiting. Its
    events are numbered apart from the command's own."""
    if not isinstance(cmd, AdmitConsumer) or not _backfills(uow, cmd.experience_id):
        return []
    cart = uow.load_cart(cmd.experience_id, cmd.consumer_id)
    freed = _free_on(uow, cmd.experience_id, {(i.product_id, i.variant_column) for i in cart})
    if not freed:
        return []
    events = Events(cmd, part=FIRST)
    _offer(uow, events, freed, cmd.occurred_at, f"{BACKFILL_REASON}:{FIRST}{cmd.command_id}")
    return events.items


FIRST = "first:"


def _offer(
    uow: UnitOfWork, events: Events, freed: set[PoolKey], at: datetime, revision: str
) -> bool:
    """Hold the units free on `freed` for the line, in its order; whether
    any were."""
    shelf = Shelf(
        free={key: row.free for key, row in uow.stock.items()},
        pool_used={key: row.used for key, row in uow.pools.items()},
    )
    made = offers(freed, shelf, _in_line(uow, freed), at)
    for offer in made:
        _hold(uow, events, offer, at, revision)
    return bool(made)


CONVERTED = "reservation.converted"


def _backfills(uow: UnitOfWork, experience_id: str) -> bool:
    settings = uow.load_settings(experience_id)
    return settings is not None and settings.backfill


def _freed(
    uow: UnitOfWork, cmd: CommandBase, events: list[EventBase]
) -> tuple[set[PoolKey], datetime]:
    """The rows (experience, product, variant) to offer after a command of a
    backfill experience: the rows its events name (holds ended, taken or
    refused, the cart put) with units free; and the time they were freed:
    the latest hold the command ended, or the command's time. Units a stock
    set or another experience freed reach the line with the experience's
    next command on that row, decided by its own consumer
    (worker.adapters.uow_backfill says why)."""
    experience_id = getattr(cmd, "experience_id", None)
    if experience_id is None or not _backfills(uow, experience_id):
        return set(), cmd.occurred_at
    rows: set[StockKey] = set()
    times = []
    for e in events:
        if isinstance(e, ReservationEnded):
            if e.previous_status is ReservationStatus.ACTIVE and e.type != CONVERTED:
                times.append(e.ended_at)
            rows.add((e.product_id, e.variant_id or ""))
        elif isinstance(e, ReservationCreated | ReservationRejected):
            rows.add((e.product_id, e.variant_id or ""))
        elif isinstance(e, CartUpdated):
            rows.update((i.product_id, i.variant_column) for i in e.items)
    return _free_on(uow, experience_id, rows), max(times, default=cmd.occurred_at)


def _free_on(uow: UnitOfWork, experience_id: str, rows: set[StockKey]) -> set[PoolKey]:
    """Those of `rows` with units free, as the experience's rows; only the
    products whose line the batch read."""
    read = uow.backfill_products
    return {
        (experience_id, *key)
        for key in rows
        if key in uow.stock and uow.stock[key].free > 0 and (read is None or key[0] in read)
    }


def _note_refusals(uow: UnitOfWork, events: list[EventBase]) -> None:
    """Admissions refused a line by this command join the ones waiting."""
    waiting = uow.backfill_waiting
    if waiting is None:
        return
    for e in events:
        if isinstance(e, ReservationRejected) and e.grant_digest not in waiting:
            waiting.add(e.grant_digest)
            uow.backfill_line = None


def _line(uow: UnitOfWork) -> list[TrackedAdmission]:
    """The admissions that may have refused lines, in line order (every
    admission when all rows are in memory), sorted once per change."""
    if uow.backfill_line is None or uow.backfill_waiting is None:
        waiting = uow.backfill_waiting
        tracked = (
            list(uow.admissions.values())
            if waiting is None
            else [uow.admissions[g] for g in waiting if g in uow.admissions]
        )
        tracked.sort(key=lambda a: place_in_line(a.admitted_at, a.grant_digest))
        if waiting is None:
            return tracked
        uow.backfill_line = tracked
    return uow.backfill_line


def _in_line(uow: UnitOfWork, freed: set[PoolKey]) -> Iterator[Candidate]:
    """Each consumer's current admission in the freed rows' experiences, if
    active and its cart has a line without a hold on a freed row, in line
    order; built one at a time, as the offers read them."""
    experiences = {e for e, _, _ in freed}
    cutoff = uow.backfill_cutoff
    for a in _line(uow):
        if a.experience_id not in experiences or a.status != AdmissionStatus.ACTIVE:
            continue
        last = cutoff.get(a.experience_id)
        if last is not None and place_in_line(a.admitted_at, a.grant_digest) > last:
            continue  # past the part of the line the batch read
        held = {(r.product_id, r.variant_id) for r in uow.active_reservations(a.grant_digest)}
        lacking = (
            (line.product_id, line.variant_column)
            for line in uow.load_cart(a.experience_id, a.consumer_id)
        )
        if not any(k not in held and (a.experience_id, *k) in freed for k in lacking):
            continue
        latest = uow.current_admission(a.experience_id, a.consumer_id)
        if latest is not None and latest.grant_digest == a.grant_digest:
            yield _candidate(uow, a)


def _candidate(uow: UnitOfWork, a: TrackedAdmission) -> Candidate:
    settings = uow.admission_settings(a.grant_digest)
    assert settings is not None  # the admission is tracked
    taken_away = frozenset(
        (r.product_id, r.variant_id)
        for r in uow.reservations_by_grant_digest.get(a.grant_digest, [])
        if r.status == ReservationStatus.RELEASED and r.end_reason == OPERATOR_REASON
    )
    return Candidate(
        experience_id=a.experience_id,
        consumer_id=a.consumer_id,
        grant_digest=a.grant_digest,
        admitted_at=a.admitted_at,
        expires_at=a.expires_at,
        status=AdmissionStatus(a.status),
        settings=settings,
        cart=uow.load_cart(a.experience_id, a.consumer_id),
        held=frozenset((h.product_id, h.variant_id) for h in uow.active_holds(a.grant_digest)),
        released_by_operator=taken_away,
    )


def _hold(uow: UnitOfWork, events: Events, offer: Offer, at: datetime, revision: str) -> None:
    c = offer.candidate
    taken = holds.take(uow, c.experience_id, c.settings, offer.units, all_or_nothing=False)
    if any(reason is not None for reason in taken.values()):
        # The domain decided on the same counters: a mismatch is a bug, and
        # the batch fails rather than hold units the rows do not have.
        raise RuntimeError(f"backfill offered units the rows do not have: {taken}")
    requests = [
        HoldRequest(ids.reservation_id(c.grant_digest, p, v, revision), p, v, units)
        for (p, v), units in sorted(offer.units.items())
    ]
    # Never before its admission: one that arrived before the freeing but was
    # admitted after it is held from its admission on.
    created_at = max(at, c.admitted_at)
    terms = HoldTerms(
        c.experience_id, c.consumer_id, c.grant_digest, created_at, c.expires_at, c.settings
    )
    holds.insert(uow, terms, requests)
    for request in requests:
        events.reservation_created(terms, request, reason="backfill")
