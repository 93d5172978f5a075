"""A hold's life: the statuses a reservation may move between.

A hold starts active. It ends released or expired (its units go back), or
converts (its units are sold). A converted hold is released or expired again
when its sale is taken back (the sale belonged to another admission), and a
released or expired hold converts when a late completion sells it again.
Nothing else moves: a move outside these is a bug in the caller."""

from __future__ import annotations

from datetime import datetime

from worker.domain.model import ReservationStatus

ACTIVE = ReservationStatus.ACTIVE
CONVERTED = ReservationStatus.CONVERTED
ENDED = frozenset({ReservationStatus.RELEASED, ReservationStatus.EXPIRED})
# How a hold an operator released ended.
OPERATOR_REASON = "operator"
# By value: a row read from SQL holds the plain string.
_ENDED_AS = {s.value: s for s in ENDED}


class HoldMoveRefused(ValueError):
    """A hold asked to move where its life does not go."""


def end(status: str, to: str) -> ReservationStatus:
    """An active hold ends released or expired."""
    if status != ACTIVE:
        raise HoldMoveRefused(f"a {status} hold cannot end")
    return _ended(to)


def take_back_sale(status: str, to: str) -> ReservationStatus:
    """A converted hold's sale is taken back: released or expired again."""
    if status != CONVERTED:
        raise HoldMoveRefused(f"a {status} hold has no sale to take back")
    return _ended(to)


def convert(status: str) -> ReservationStatus:
    """An active hold sold."""
    if status != ACTIVE:
        raise HoldMoveRefused(f"a {status} hold is not held to be sold")
    return CONVERTED


def convert_ended(status: str) -> ReservationStatus:
    """A released or expired hold sold again by a late completion."""
    if status not in ENDED:
        raise HoldMoveRefused(f"a {status} hold has not ended to be sold again")
    return CONVERTED


def held_at(status: str, expires_at: datetime, at: datetime) -> bool:
    """Whether a hold is still held at `at`: active, and its window not run
    out by then. One past its window is its expiry's to end, even if the
    expiry has not been applied yet."""
    return status == ACTIVE and at < expires_at


def is_ended(status: str) -> bool:
    """Released or expired: what a late completion can sell again."""
    return status in ENDED


def _ended(to: str) -> ReservationStatus:
    ended = _ENDED_AS.get(to)
    if ended is None:
        raise HoldMoveRefused(f"a hold does not end as {to}")
    return ended
