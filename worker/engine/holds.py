"""Taking units for holds: one conditional statement per stock row (and per
pool row), in stable key order, all-or-nothing where the strategy says so."""

from __future__ import annotations

from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.model import ExperienceSettings, Strategy

RowKey = tuple[str, str]


def take(
    uow: UnitOfWork,
    experience_id: str,
    settings: ExperienceSettings,
    wanted: dict[RowKey, int],
    all_or_nothing: bool,
) -> dict[RowKey, str | None]:
    """Try to hold `wanted` extra units per row. Returns, per row, None when
    taken or the reason it was not: POOL_EMPTY, INSUFFICIENT_STOCK, or
    CART_ALL_OR_NOTHING (it had stock but another line did not)."""
    pooled = settings.strategy is Strategy.POOL
    result: dict[RowKey, str | None] = {}
    for key in sorted(wanted):
        product, variant = key
        units = wanted[key]
        if pooled and not uow.take_pool(
            experience_id, product, variant, units, settings.pool_size or 0
        ):
            result[key] = "POOL_EMPTY"
            continue
        if not uow.take_units(product, variant, units):
            if pooled:
                uow.give_back_pool(experience_id, product, variant, units)
            result[key] = "INSUFFICIENT_STOCK"
            continue
        result[key] = None
    if all_or_nothing and any(reason is not None for reason in result.values()):
        for key, reason in result.items():
            if reason is None:
                give_back(uow, experience_id, settings, key, wanted[key])
                result[key] = "CART_ALL_OR_NOTHING"
    return result


def give_back(
    uow: UnitOfWork, experience_id: str, settings: ExperienceSettings, key: RowKey, units: int
) -> None:
    product, variant = key
    uow.give_back_units(product, variant, units)
    if settings.strategy is Strategy.POOL:
        uow.give_back_pool(experience_id, product, variant, units)
