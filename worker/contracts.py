"""Public Kafka contracts, generated from the pydantic models.

Writes into `schemas/`:

- `commands.schema.json`, `events.schema.json`: one JSON Schema (draft
  2020-12) per topic, the discriminated union of every message type that
  topic carries;
- `commands/<Model>.schema.json`, `events/<Model>.schema.json`: one JSON
  Schema per message type;
- `asyncapi.json`: an AsyncAPI 3.0 document of the three topics (commands,
  events, dead letters), their messages, keys, headers and delivery
  guarantees, whose payloads reference the files above.

The unions `Command` and `Event` are the only list of message types: a type
added to a union appears here on the next run, with no list to keep by hand.

Schema mode, per direction:

- commands use pydantic's *validation* mode: the service consumes that topic,
  so its schema states what `decode_command` accepts, in the canonical
  camelCase form (the decoder is laxer: it also takes snake_case names and
  numeric timestamps); a command valid against it is never parked as invalid;
- events use *serialization* mode: the service produces that topic, so its
  schema describes what `encode_event` writes (computed fields and custom
  serializers, should any appear, are described as they are on the wire).

Both use the camelCase aliases (`by_alias=True`), as on the wire.

    python -m worker.contracts           # (re)write schemas/
    python -m worker.contracts --check   # exit 1 listing stale files
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode

from worker.config import Settings
from worker.domain.commands import COMMAND_ADAPTER, Command
from worker.domain.events import EVENT_ADAPTER, Event

if TYPE_CHECKING:  # the type pydantic itself uses for this hook
    from pydantic._internal._core_utils import CoreSchemaOrField

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
PAYLOAD_SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"
ASYNCAPI_FILE = "asyncapi.json"
# Version of the contract as a whole; every message also carries its own
# `schemaVersion`. Bump the major on a breaking change.
CONTRACT_VERSION = "1.0.0"
KAFKA_BINDING_VERSION = "0.4.0"
REGENERATE = "run `make schemas` (python -m worker.contracts)"

JsonObject = dict[str, Any]


class ContractError(Exception):
    """The models cannot be described (e.g. a key that is not a field)."""


class _Generator(GenerateJsonSchema):
    """pydantic's generator without the titles it derives from field names
    ("Grantdigest"): the camelCase property name says it better. Titles
    given explicitly with `Field(title=...)` are kept."""

    def field_title_should_be_set(self, schema: CoreSchemaOrField) -> bool:
        return False


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
        return str(_default(self.setting))

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
TOPICS = (COMMANDS, EVENTS)
DEAD_LETTER_CHANNEL = "deadLetters"
DEAD_LETTER_SETTING = "dead_letter_topic"


def _default(setting: str) -> Any:
    return Settings.model_fields[setting].default


def _env(setting: str) -> str:
    return setting.upper()


# --- the unions -------------------------------------------------------------


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


# --- JSON Schema ------------------------------------------------------------


def _finish(schema: JsonObject, title: str, description: str | None) -> JsonObject:
    schema = {"$schema": JSON_SCHEMA_DIALECT, **schema, "title": title}
    if description:
        schema["description"] = description
    return schema


def message_schema(model: type[BaseModel], mode: JsonSchemaMode) -> JsonObject:
    """JSON Schema of one message type, camelCase as on the wire."""
    schema = model.model_json_schema(by_alias=True, mode=mode, schema_generator=_Generator)
    return _finish(schema, model.__name__, schema.get("description"))


def union_schema(topic: Topic) -> JsonObject:
    """JSON Schema of any message of a topic: the discriminated union."""
    schema = topic.adapter.json_schema(by_alias=True, mode=topic.mode, schema_generator=_Generator)
    description = (
        f"Any message of the `{topic.address}` topic (default name; env "
        f"`{_env(topic.setting)}`), told apart by its `{_discriminator(schema)}` property."
    )
    return _finish(schema, topic.title, description)


def _discriminator(schema: JsonObject) -> str:
    discriminator = schema.get("discriminator")
    if isinstance(discriminator, dict):
        return str(discriminator.get("propertyName", "type"))
    return "type"


def _type_values(schema: JsonObject, prop: str) -> list[str]:
    spec = schema.get("properties", {}).get(prop, {})
    if "const" in spec:
        return [str(spec["const"])]
    return [str(value) for value in spec.get("enum", [])]


# --- AsyncAPI ---------------------------------------------------------------


def _key_schema(schema: JsonObject, key: str) -> JsonObject:
    spec = schema.get("properties", {}).get(key, {})
    self_contained = isinstance(spec, dict) and spec.get("type") == "string" and "$ref" not in spec
    key_schema: JsonObject = copy.deepcopy(spec) if self_contained else {"type": "string"}
    key_schema.pop("default", None)
    key_schema["description"] = (
        f"The record key: the message's `{key}`, UTF-8 encoded. Same key, same partition, "
        "so messages of one key are read in the order they were written."
    )
    return key_schema


def _message(topic: Topic, model: type[BaseModel], prop: str) -> JsonObject:
    schema = message_schema(model, topic.mode)
    key = key_field(model)
    doc = inspect.getdoc(model) if model.__doc__ else None
    values = ", ".join(f"`{value}`" for value in _type_values(schema, prop))
    details = f"`{prop}`: {values}. Key: `{key}`."
    message: JsonObject = {
        "name": model.__name__,
        "title": model.__name__,
        "description": f"{doc}\n\n{details}" if doc else details,
        "contentType": "application/json",
        "payload": {
            "schemaFormat": PAYLOAD_SCHEMA_FORMAT,
            "schema": {"$ref": topic.message_file(model)},
        },
        "bindings": {
            "kafka": {
                "key": _key_schema(schema, key),
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }
    if doc:
        message["summary"] = doc.split("\n\n")[0].replace("\n", " ")
    return message


def _keys_text(topic: Topic) -> str:
    by_key: dict[str, list[str]] = {}
    for model in message_types(topic.union):
        by_key.setdefault(key_field(model), []).append(model.__name__)
    return "; ".join(f"`{key}` for {', '.join(names)}" for key, names in sorted(by_key.items()))


def _channel_bindings(address: str) -> JsonObject:
    return {
        "kafka": {
            "topic": address,
            "partitions": _default("topic_partitions"),
            "bindingVersion": KAFKA_BINDING_VERSION,
        }
    }


COMMANDS_TEXT = """\
Inbound commands: the only way reservation state changes. Written by the \
receiver (verified Fanfare webhooks), the API and the scheduler (due expiries) \
with acks=all and an idempotent producer; a 2xx from the receiver or the API \
means the command is durable here. Read by the consumer group, the only \
writer of reservation state.

Delivery: at least once. A command may be written or read more than once \
(webhook retries, producer retries, re-delivery after a crash); every copy \
carries the same `commandId` (UUIDv5 of its source and source id) and the \
consumer applies it once (inbox keyed on `commandId`).

Order: per key only. Key: {keys}. Commands of one experience are applied in \
log order, one writer per experience; nothing is ordered across keys.

Poison (undecodable, invalid or impossible) is parked on the dead-letter \
topic and never blocks the partition; transient failures (database or broker \
outages) pause and retry, and are never parked."""

EVENTS_TEXT = """\
Facts: every committed state change, written to the outbox in the database \
transaction that made it and published by the outbox relay. Folding this topic from the \
beginning into an empty store rebuilds the live reservations, carts, stock \
and counters.

Delivery: at least once. A re-delivery repeats the same `eventId` (UUIDv5 of \
the causing `commandId` and the event's position among that command's \
events), never a new one: subscribers dedupe on `eventId`. `commandId` links \
every event to the command that caused it.

Order: per key only. Key: {keys}. Nothing is ordered across keys."""

DEAD_LETTER_TEXT = """\
Poison commands parked by the consumer: the original record's value and key, \
byte for byte, with headers saying where it came from and why. Only poison \
(undecodable, invalid, impossible to apply) is parked; transient failures \
are retried, never parked.

Delivery: at least once. A command is parked before the consumer's position \
moves past it, so a crash in between parks it again: dedupe on \
(`origin-topic`, `origin-partition`, `origin-offset`), or on the payload's \
`commandId` when it decodes.

Order: records keep the original key, so the parked commands of one key stay \
in the order they were parked."""

DEAD_LETTER_HEADERS: JsonObject = {
    "type": "object",
    "description": "Kafka record headers; every value is a UTF-8 string.",
    "required": [
        "origin-topic",
        "origin-partition",
        "origin-offset",
        "error-class",
        "error-reason",
        "attempts",
    ],
    "properties": {
        "origin-topic": {
            "type": "string",
            "description": "Topic the command was read from (the commands topic).",
        },
        "origin-partition": {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "Partition of the original record, in decimal.",
        },
        "origin-offset": {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "Offset of the original record, in decimal.",
        },
        "error-class": {
            "type": "string",
            "description": (
                "Class of the error that made it poison: a decoding or validation "
                "error (e.g. `ValidationError`) or a database data or integrity "
                "error raised while applying it."
            ),
        },
        "error-reason": {
            "type": "string",
            "description": "The error's message, truncated.",
        },
        "attempts": {
            "type": "string",
            "pattern": "^[1-9][0-9]*$",
            "description": (
                "Attempts at applying the batch when the command was parked "
                "(above 1 when transient errors forced retries), in decimal."
            ),
        },
    },
}


def _dead_letter_message() -> JsonObject:
    return {
        "name": "DeadLetter",
        "title": "Parked command",
        "summary": "A poison command, unchanged, with where it came from and why.",
        "description": (
            "The payload is the original command record's value, byte for byte: "
            f"normally a JSON command (`{COMMANDS.union_file}`), but possibly bytes "
            "that are not JSON or not a valid command, which is why it was parked."
        ),
        "contentType": "application/octet-stream",
        "headers": DEAD_LETTER_HEADERS,
        "payload": {
            "description": (
                "The original value from the commands topic, unchanged "
                f"(see `{COMMANDS.union_file}`)."
            )
        },
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": (
                        "The original record's key, unchanged: the command's "
                        "`experienceId`, or `productId` for stock commands."
                    ),
                },
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


def _messages_ref(channel: str, names: Sequence[str]) -> list[JsonObject]:
    return [{"$ref": f"#/channels/{channel}/messages/{name}"} for name in names]


def asyncapi_document() -> JsonObject:
    """The AsyncAPI 3.0 document of the service's three topics."""
    channels: JsonObject = {}
    messages: JsonObject = {}
    names: dict[str, list[str]] = {}
    texts = {COMMANDS.channel: COMMANDS_TEXT, EVENTS.channel: EVENTS_TEXT}
    for topic in TOPICS:
        prop = _discriminator(union_schema(topic))
        names[topic.channel] = []
        channel_messages: JsonObject = {}
        for model in message_types(topic.union):
            component = f"{topic.channel}.{model.__name__}"
            messages[component] = _message(topic, model, prop)
            channel_messages[model.__name__] = {"$ref": f"#/components/messages/{component}"}
            names[topic.channel].append(model.__name__)
        channels[topic.channel] = {
            "address": topic.address,
            "title": f"{topic.channel.capitalize()} (`{topic.address}`)",
            "description": texts[topic.channel].format(keys=_keys_text(topic))
            + f"\n\nSchema of any message: `{topic.union_file}`. Topic name from "
            f"`{_env(topic.setting)}`.",
            "messages": channel_messages,
            "bindings": _channel_bindings(topic.address),
        }
    dead_letters = _default(DEAD_LETTER_SETTING)
    messages["deadLetters.DeadLetter"] = _dead_letter_message()
    channels[DEAD_LETTER_CHANNEL] = {
        "address": dead_letters,
        "title": f"Dead letters (`{dead_letters}`)",
        "description": DEAD_LETTER_TEXT + f"\n\nTopic name from `{_env(DEAD_LETTER_SETTING)}`.",
        "messages": {"DeadLetter": {"$ref": "#/components/messages/deadLetters.DeadLetter"}},
        "bindings": _channel_bindings(dead_letters),
    }
    operations: JsonObject = {
        "produceCommand": {
            "action": "send",
            "channel": {"$ref": f"#/channels/{COMMANDS.channel}"},
            "title": "Produce a command",
            "description": (
                "The receiver, the API and the scheduler write commands (acks=all, "
                "idempotent producer) and acknowledge their caller only after the write."
            ),
            "messages": _messages_ref(COMMANDS.channel, names[COMMANDS.channel]),
        },
        "applyCommands": {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{COMMANDS.channel}"},
            "title": "Apply commands",
            "description": (
                "The consumers read commands in batches, apply each batch in one "
                "PostgreSQL transaction (state, inbox, outbox and consumed position), "
                "then commit offsets."
            ),
            "messages": _messages_ref(COMMANDS.channel, names[COMMANDS.channel]),
            "bindings": {
                "kafka": {
                    "groupId": {"type": "string", "enum": [_default("consumer_group")]},
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            },
        },
        "publishEvents": {
            "action": "send",
            "channel": {"$ref": f"#/channels/{EVENTS.channel}"},
            "title": "Publish events",
            "description": "The outbox relay publishes committed events, in order per key.",
            "messages": _messages_ref(EVENTS.channel, names[EVENTS.channel]),
        },
        "parkPoisonCommand": {
            "action": "send",
            "channel": {"$ref": f"#/channels/{DEAD_LETTER_CHANNEL}"},
            "title": "Park a poison command",
            "description": "The consumer parks a command it can never apply, then moves on.",
            "messages": _messages_ref(DEAD_LETTER_CHANNEL, ["DeadLetter"]),
        },
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Fanfare cart-reservation worker: Kafka topics",
            "version": CONTRACT_VERSION,
            "description": (
                "Commands in, events out, poison parked. Every delivery is at least "
                "once and ordered per key only; `commandId` and `eventId` are stable "
                "across re-deliveries, so consumers dedupe on them. Topic names and "
                "the partition count shown are the defaults (env `COMMANDS_TOPIC`, "
                "`EVENTS_TOPIC`, `DEAD_LETTER_TOPIC`, `TOPIC_PARTITIONS`). Payload "
                "schemas are JSON Schema draft 2020-12 files beside this document, "
                "generated from the pydantic models."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


# --- files ------------------------------------------------------------------


def render_json(document: JsonObject) -> str:
    """Deterministic text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """Every generated file: its path relative to schemas/ and its text."""
    files: dict[str, str] = {}
    for topic in TOPICS:
        files[topic.union_file] = render_json(union_schema(topic))
        for model in message_types(topic.union):
            files[topic.message_file(model)] = render_json(message_schema(model, topic.mode))
    files[ASYNCAPI_FILE] = render_json(asyncapi_document())
    return dict(sorted(files.items()))


def _orphans(directory: Path, generated: dict[str, str]) -> list[str]:
    """Files in the folders this module owns wholly that it no longer
    generates (a message type removed or renamed). Files elsewhere in
    schemas/, e.g. the HTTP layers' OpenAPI documents, are not ours."""
    found: list[str] = []
    for topic in TOPICS:
        folder = directory / topic.channel
        if folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                relative = path.relative_to(directory).as_posix()
                if relative not in generated:
                    found.append(relative)
    return found


def stale_files(directory: Path = SCHEMAS_DIR) -> list[str]:
    """Generated files that are missing or differ, and leftovers, as
    `path: why` lines; empty when schemas/ matches the models."""
    generated = generate()
    stale: list[str] = []
    for relative, text in generated.items():
        path = directory / relative
        if not path.is_file():
            stale.append(f"{relative}: missing")
        elif path.read_text(encoding="utf-8") != text:
            stale.append(f"{relative}: differs from the models")
    stale.extend(f"{relative}: no longer generated" for relative in _orphans(directory, generated))
    return stale


def write(directory: Path = SCHEMAS_DIR) -> list[str]:
    """Bring schemas/ up to date; returns the paths written or removed."""
    generated = generate()
    changed: list[str] = []
    for relative, text in generated.items():
        path = directory / relative
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        changed.append(relative)
    for relative in _orphans(directory, generated):
        (directory / relative).unlink()
        changed.append(relative)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.contracts",
        description="Generate the Kafka message JSON Schemas and AsyncAPI document.",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 listing stale files"
    )
    parser.add_argument(
        "--dir", type=Path, default=SCHEMAS_DIR, help=f"output folder (default {SCHEMAS_DIR})"
    )
    args = parser.parse_args(argv)
    directory: Path = args.dir
    if args.check:
        stale = stale_files(directory)
        if stale:
            print(f"stale contract files in {directory}:", file=sys.stderr)
            for line in stale:
                print(f"  {line}", file=sys.stderr)
            print(REGENERATE, file=sys.stderr)
            return 1
        print(f"contracts up to date in {directory}")
        return 0
    changed = write(directory)
    for relative in changed:
        print(f"updated {directory / relative}")
    print(f"contracts in {directory}: {len(changed)} file(s) changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
