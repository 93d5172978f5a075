"""What every command application returns, and stable event numbering."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.adapters.uow_rows import HeldRow
from worker.domain import ids
from worker.domain.commands import CommandBase
from worker.domain.events import EventBase, ReservationEnded


@dataclass
class Applied:
    """What a command did: the answer recorded in the inbox (and returned by
    the API), and the events that describe it."""

    outcome: dict[str, Any]
    events: list[EventBase] = field(default_factory=list)


class Events:
    """Numbers a command's events so each id is stable across re-deliveries."""

    def __init__(self, command: CommandBase) -> None:
        self.command = command
        self.items: list[EventBase] = []
        self._id_prefix = ids.event_id_prefix(command.command_id)

    def common(self) -> dict[str, Any]:
        return {
            # ids.event_id(command_id, n), without formatting the id each time
            "event_id": ids.uuid5(f"{self._id_prefix}{len(self.items)}"),
            "command_id": self.command.command_id,
            "occurred_at": self.command.occurred_at,
        }

    def add(self, event: EventBase) -> None:
        self.items.append(event)

    def hold_ended(
        self,
        *,
        kind: str,
        experience_id: str,
        consumer_id: str,
        grant: str,
        held: HeldRow,
        reason: str,
        at: Any,
        order_id: str | None = None,
        previous_status: str = "active",
    ) -> None:
        self.add(
            ReservationEnded(
                **self.common(),
                type=kind,
                experience_id=experience_id,
                reservation_id=held.reservation_id,
                consumer_id=consumer_id,
                grant_digest=grant,
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
