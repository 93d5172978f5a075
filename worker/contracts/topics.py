"""The topics the contracts describe, their message models (the unions
`Command`, `Event` and `QuarantineRecord`), and each model's record key."""

from __future__ import annotations

import inspect
import types
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from worker.config import Settings
from worker.domain.commands import COMMAND_ADAPTER, Command
from worker.domain.events import EVENT_ADAPTER, Event
from worker.fanfare.quarantine import QUARANTINE_ADAPTER, QuarantineRecord

JsonObject = dict[str, Any]


class ContractError(Exception):
    """The models cannot be described (e.g. a key that is not a field)."""


@dataclass(frozen=True)
class Topic:
    """One topic whose messages are pydantic models."""

    channel: str  # AsyncAPI channel id and the folder of its per-message schemas
    setting: str  # the Settings field naming the topic
    union: object  # the Annotated discriminated union of its message models
    adapter: TypeAdapter[Any]
    mode: JsonSchemaMode
    title: str

    @property
    def address(self) -> str:
        return str(default(self.setting))

    @property
    def union_file(self) -> str:
        return f"{self.channel}.schema.json"

    def message_file(self, model: type[BaseModel]) -> str:
        return f"{self.channel}/{model.__name__}.schema.json"


COMMANDS = Topic(
    channel="commands",
    setting="commands_topic",
    union=Command,
    adapter=COMMAND_ADAPTER,
    mode="validation",
    title="Command",
)
EVENTS = Topic(
    channel="events",
    setting="events_topic",
    union=Event,
    adapter=EVENT_ADAPTER,
    mode="serialization",
    title="Event",
)
QUARANTINE = Topic(
    channel="quarantine",
    setting="quarantine_topic",
    union=QuarantineRecord,
    adapter=QUARANTINE_ADAPTER,
    mode="serialization",
    title="QuarantineRecord",
)
TOPICS = (COMMANDS, EVENTS, QUARANTINE)
DEAD_LETTER_CHANNEL = "deadLetters"
DEAD_LETTER_SETTING = "dead_letter_topic"


def default(setting: str) -> Any:
    """A setting's default value: what the documents show."""
    return Settings.model_fields[setting].default


def env(setting: str) -> str:
    return setting.upper()


def message_types(union: object) -> tuple[type[BaseModel], ...]:
    """The models of a (possibly Annotated) union, in declaration order."""
    if get_origin(union) is Annotated:
        union = get_args(union)[0]
    members = get_args(union) if get_origin(union) in (Union, types.UnionType) else (union,)
    models: list[type[BaseModel]] = []
    for member in members:
        if not (inspect.isclass(member) and issubclass(member, BaseModel)):
            raise ContractError(f"union member {member!r} is not a pydantic model")
        models.append(member)
    names = [model.__name__ for model in models]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ContractError(f"two message models share a name: {', '.join(duplicates)}")
    return tuple(models)


def key_field(model: type[BaseModel]) -> str:
    """The wire name of the field a message is keyed by, read from the
    model's own `partition_key()` (so the contract follows the code)."""
    sentinels = {name: f"\x00{name}\x00" for name in model.model_fields}
    instance = model.model_construct(None, **sentinels)
    partition_key = getattr(instance, "partition_key", None)
    if not callable(partition_key):
        raise ContractError(f"{model.__name__} has no partition_key()")
    key = partition_key()
    for name, sentinel in sentinels.items():
        if key == sentinel:
            return model.model_fields[name].alias or name
    raise ContractError(f"{model.__name__}.partition_key() does not return one of its fields")
