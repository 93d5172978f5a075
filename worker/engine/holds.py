"""Taking units for holds, and recording the holds taken.

The batch's unit of work locked every stock row (and pool row) the batch can
touch with `SELECT … FOR UPDATE` when it loaded them, in key order; `take`
decides against those in-memory values and changes them, and the unit of
work writes the resulting values when it flushes. That is safe because a
batch is one transaction and its rows stay locked from load to commit: no
other transaction can change a level between our decision and our write,
and the key order means two batches never deadlock. The tables' CHECK
constraints (`reserved + sold <= on_hand`, none below zero) are the
database's own net under that: a wrong decision fails the batch rather
than oversell."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.admission import HoldRequest
from worker.domain.model import ExperienceSettings, Strategy
from worker.domain.pools import pool_cap
from worker.domain.stock import StockKey


class HoldTerms(NamedTuple):
    """What the holds an admission takes at one time share: whose they are,
    when they were taken, until when, and on which settings."""

    experience_id: str
    consumer_id: str
    grant_digest: str
    created_at: datetime
    expires_at: datetime
    settings: ExperienceSettings


def take(
    uow: UnitOfWork,
    experience_id: str,
    settings: ExperienceSettings,
    wanted: dict[StockKey, int],
    all_or_nothing: bool,
) -> dict[StockKey, str | None]:
    """Try to hold `wanted` extra units per row, in key order. Returns, per
    row, None when taken or the reason it was not: POOL_EMPTY,
    INSUFFICIENT_STOCK, or CART_ALL_OR_NOTHING (it had stock but another line
    did not)."""
    result = {
        key: _take_row(uow, experience_id, settings, key, wanted[key]) for key in sorted(wanted)
    }
    if all_or_nothing and any(reason is not None for reason in result.values()):
        for key, reason in result.items():
            if reason is None:
                give_back(uow, experience_id, settings, key, wanted[key])
                result[key] = "CART_ALL_OR_NOTHING"
    return result


def _take_row(
    uow: UnitOfWork, experience_id: str, settings: ExperienceSettings, key: StockKey, units: int
) -> str | None:
    product, variant = key
    pooled = settings.strategy is Strategy.POOL
    if pooled and not uow.take_pool(
        experience_id, product, variant, units, pool_cap(settings, product, variant)
    ):
        return "POOL_EMPTY"
    if not uow.take_units(product, variant, units):
        if pooled:
            uow.give_back_pool(experience_id, product, variant, units)
        return "INSUFFICIENT_STOCK"
    return None


def give_back(
    uow: UnitOfWork, experience_id: str, settings: ExperienceSettings, key: StockKey, units: int
) -> None:
    product, variant = key
    uow.give_back_units(product, variant, units)
    if settings.strategy is Strategy.POOL:
        uow.give_back_pool(experience_id, product, variant, units)


def insert(uow: UnitOfWork, terms: HoldTerms, taken: list[HoldRequest]) -> None:
    """Record the holds taken on these terms."""
    uow.insert_reservations(
        holds=taken,
        experience_id=terms.experience_id,
        consumer_id=terms.consumer_id,
        grant_digest=terms.grant_digest,
        created_at=terms.created_at,
        expires_at=terms.expires_at,
        settings=terms.settings,
    )
