"""The engine: applies one command inside the batch transaction. It loads the
facts, asks the pure domain what to do, writes the result and the events that
describe it. Dispatch is here; each command kind has its own module."""

from __future__ import annotations

from worker.adapters.store import Conn
from worker.domain.commands import (
    AdmitConsumer,
    Command,
    CompleteCheckout,
    ConfigureExperience,
    EndAdmission,
    PutCart,
    SetStock,
)
from worker.domain.model import ExperienceSettings
from worker.engine.admission import admit
from worker.engine.base import Applied
from worker.engine.cart import put_cart
from worker.engine.checkout import complete_checkout
from worker.engine.endings import end_admission
from worker.engine.setup import configure_experience, set_stock

__all__ = ["Applied", "apply_command"]


async def apply_command(conn: Conn, command: Command, defaults: ExperienceSettings) -> Applied:
    match command:
        case AdmitConsumer():
            return await admit(conn, command, defaults)
        case PutCart():
            return await put_cart(conn, command, defaults)
        case SetStock():
            return await set_stock(conn, command)
        case ConfigureExperience():
            return await configure_experience(conn, command)
        case EndAdmission():
            return await end_admission(conn, command)
        case CompleteCheckout():
            return await complete_checkout(conn, command)
