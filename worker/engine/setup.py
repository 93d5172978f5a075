"""Stock levels and experience configuration."""

from __future__ import annotations

from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.commands import ConfigureExperience, SetStock
from worker.engine.base import Applied
from worker.engine.events import Events


def set_stock(uow: UnitOfWork, cmd: SetStock) -> Applied:
    events = Events(cmd)
    variant = cmd.variant_id or ""
    refused_by = uow.set_stock(cmd.product_id, variant, cmd.on_hand, cmd.occurred_at)
    if refused_by is not None:
        # The holds stand: the operator releases or sells first (DESIGN).
        events.stock_refused(cmd, refused_by)
        return Applied(
            {
                "status": "rejected",
                "error": "STOCK_BELOW_COMMITTED",
                "message": f"onHand {cmd.on_hand} is below the {refused_by} units reserved or sold",
                "committed": refused_by,
            },
            events.items,
        )
    events.stock_set(cmd)
    return Applied({"status": "set", "onHand": cmd.on_hand}, events.items)


def configure_experience(uow: UnitOfWork, cmd: ConfigureExperience) -> Applied:
    events = Events(cmd)
    settings = cmd.settings()
    uow.upsert_experience(cmd.experience_id, settings, cmd.occurred_at)
    events.experience_configured(cmd.experience_id, settings)
    return Applied(
        {"status": "configured", **settings.model_dump(mode="json", by_alias=True)}, events.items
    )
