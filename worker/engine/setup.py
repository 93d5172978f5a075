"""Stock levels and experience configuration, each refused when it would
fall below what is already held or sold."""

from __future__ import annotations

from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.commands import ConfigureExperience, SetStock
from worker.domain.pools import PoolBelowUsed, pool_below_used
from worker.engine.base import Applied
from worker.engine.events import Events


def set_stock(uow: UnitOfWork, cmd: SetStock) -> Applied:
    events = Events(cmd)
    variant = cmd.variant_id or ""
    refused_by = uow.set_stock(cmd.product_id, variant, cmd.on_hand, cmd.occurred_at)
    if refused_by is not None:
        # The holds stand: the operator releases or sells first (DESIGN).
        events.stock_refused(cmd, refused_by)
        return Applied.refused(
            "STOCK_BELOW_COMMITTED",
            f"onHand {cmd.on_hand} is below the {refused_by} units reserved or sold",
            events.items,
            committed=refused_by,
        )
    events.stock_set(cmd)
    return Applied({"status": "set", "onHand": cmd.on_hand}, events.items)


def configure_experience(uow: UnitOfWork, cmd: ConfigureExperience) -> Applied:
    events = Events(cmd)
    settings = cmd.settings()
    earlier = uow.load_settings(cmd.experience_id)
    refused = pool_below_used(earlier, settings, uow.pool_usage(cmd.experience_id))
    if refused is not None:
        # The holds stand, as for stock: the operator releases or sells first.
        events.experience_refused(cmd.experience_id, refused)
        return _pool_refusal(refused, events)
    uow.upsert_experience(cmd.experience_id, settings, cmd.occurred_at)
    events.experience_configured(cmd.experience_id, settings)
    return Applied(
        {"status": "configured", **settings.model_dump(mode="json", by_alias=True)}, events.items
    )


def _pool_refusal(refused: PoolBelowUsed, events: Events) -> Applied:
    product = refused.product_id + (f" variant {refused.variant_id}" if refused.variant_id else "")
    return Applied.refused(
        refused.code,
        f"the pool of {product} would be {refused.size}, below the "
        f"{refused.used} units it has handed out",
        events.items,
        used=refused.used,
    )
