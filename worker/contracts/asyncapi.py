"""The AsyncAPI 3.0 document of the service's four topics (commands,
events, dead letters, quarantine): channels, messages with their keys and headers,
operations, and the delivery guarantees in words. Payloads reference the
JSON Schema files written beside it."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

from pydantic import BaseModel

from worker.contracts.headers import (
    COMMAND_HEADERS,
    DEAD_LETTER_HEADERS,
    EVENT_HEADERS,
    QUARANTINE_HEADERS,
)
from worker.contracts.json_schema import (
    discriminator,
    message_schema,
    type_values,
    union_schema,
)
from worker.contracts.topics import (
    COMMANDS,
    DEAD_LETTER_CHANNEL,
    DEAD_LETTER_SETTING,
    EVENTS,
    QUARANTINE,
    TOPICS,
    JsonObject,
    Topic,
    default,
    env,
    key_field,
    message_types,
)

# Version of the contract as a whole; every message also carries its own
# `schemaVersion`. A minor change (an optional field, a message type, a
# header) bumps the minor; a breaking one the major (README, "Compatibility").
CONTRACT_VERSION = "1.1.0"
KAFKA_BINDING_VERSION = "0.4.0"
PAYLOAD_SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"
TOPIC_HEADERS = {
    COMMANDS.channel: COMMAND_HEADERS,
    EVENTS.channel: EVENT_HEADERS,
    QUARANTINE.channel: QUARANTINE_HEADERS,
}

INFO: JsonObject = {
    "title": "Fanfare cart-reservation worker: Kafka topics",
    "version": CONTRACT_VERSION,
    "description": (
        "Commands in, events out, poison parked, untranslatable deliveries "
        "quarantined. Every delivery is at least "
        "once and ordered per key only; `commandId` and `eventId` are stable "
        "across re-deliveries, so consumers dedupe on them. Topic names and "
        "the partition count shown are the defaults (env `COMMANDS_TOPIC`, "
        "`EVENTS_TOPIC`, `DEAD_LETTER_TOPIC`, `QUARANTINE_TOPIC`, `TOPIC_PARTITIONS`). Payload "
        "schemas are JSON Schema draft 2020-12 files beside this document, "
        "generated from the pydantic models.\n\n"
        "Compatibility: read tolerantly. Every message states `type` and "
        "`schemaVersion`; a minor release may add optional fields and new message "
        "types, so ignore fields you do not know (the schemas allow them) and skip "
        "types you do not fold. A breaking change ships as a new `schemaVersion` "
        "written alongside the old one for a stated window, never in place."
    ),
}


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
    values = ", ".join(f"`{value}`" for value in type_values(schema, prop))
    details = f"`{prop}`: {values}. Key: `{key}`."
    message: JsonObject = {
        "name": model.__name__,
        "title": model.__name__,
        "description": f"{doc}\n\n{details}" if doc else details,
        "contentType": "application/json",
        "headers": TOPIC_HEADERS[topic.channel],
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
            "partitions": default("topic_partitions"),
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

QUARANTINE_TEXT = """\
Signed, in-tolerance Fanfare deliveries whose `data` failed validation or \
translation, written by the receiver before it answers 400 (503 if the write \
is not acknowledged), credentials digested; and the markers the quarantine \
tool writes once it re-drove an event into the commands topic.

Delivery: at least once; each of Fanfare's retries is quarantined again with \
the same `eventId`. Dedupe on `eventId`: an event with a `quarantine.replayed` \
record is done.

Order: per key only. Key: {keys}. An event's deliveries and its marker share \
a partition, the marker after the deliveries it settles."""


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
    """The AsyncAPI 3.0 document of the service's four topics."""
    channels: JsonObject = {}
    messages: JsonObject = {}
    names: dict[str, list[str]] = {}
    for topic in TOPICS:
        channels[topic.channel], names[topic.channel] = _topic_channel(topic, messages)
    messages["deadLetters.DeadLetter"] = _dead_letter_message()
    channels[DEAD_LETTER_CHANNEL] = _dead_letter_channel()
    names[DEAD_LETTER_CHANNEL] = ["DeadLetter"]
    return {
        "asyncapi": "3.0.0",
        "info": INFO,
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": _operations(names),
        "components": {"messages": messages},
    }


def _topic_channel(topic: Topic, messages: JsonObject) -> tuple[JsonObject, list[str]]:
    """A topic's channel; its messages are added to the components'."""
    texts = {
        COMMANDS.channel: COMMANDS_TEXT,
        EVENTS.channel: EVENTS_TEXT,
        QUARANTINE.channel: QUARANTINE_TEXT,
    }
    prop = discriminator(union_schema(topic))
    names: list[str] = []
    channel_messages: JsonObject = {}
    for model in message_types(topic.union):
        component = f"{topic.channel}.{model.__name__}"
        messages[component] = _message(topic, model, prop)
        channel_messages[model.__name__] = {"$ref": f"#/components/messages/{component}"}
        names.append(model.__name__)
    channel = {
        "address": topic.address,
        "title": f"{topic.channel.capitalize()} (`{topic.address}`)",
        "description": texts[topic.channel].format(keys=_keys_text(topic))
        + f"\n\nSchema of any message: `{topic.union_file}`. Topic name from "
        f"`{env(topic.setting)}`.",
        "messages": channel_messages,
        "bindings": _channel_bindings(topic.address),
    }
    return channel, names


def _dead_letter_channel() -> JsonObject:
    dead_letters = default(DEAD_LETTER_SETTING)
    return {
        "address": dead_letters,
        "title": f"Dead letters (`{dead_letters}`)",
        "description": DEAD_LETTER_TEXT + f"\n\nTopic name from `{env(DEAD_LETTER_SETTING)}`.",
        "messages": {"DeadLetter": {"$ref": "#/components/messages/deadLetters.DeadLetter"}},
        "bindings": _channel_bindings(dead_letters),
    }


def _operation(
    action: str, channel: str, title: str, description: str, names: Sequence[str]
) -> JsonObject:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "title": title,
        "description": description,
        "messages": _messages_ref(channel, names),
    }


def _operations(names: dict[str, list[str]]) -> JsonObject:
    commands, events = COMMANDS.channel, EVENTS.channel
    return {
        "produceCommand": _operation(
            "send",
            commands,
            "Produce a command",
            "The receiver, the API and the scheduler write commands (acks=all, "
            "idempotent producer) and acknowledge their caller only after the write.",
            names[commands],
        ),
        "applyCommands": _apply_commands(names[commands]),
        "publishEvents": _operation(
            "send",
            events,
            "Publish events",
            "The outbox relay publishes committed events, in order per key.",
            names[events],
        ),
        "quarantineDelivery": _operation(
            "send",
            QUARANTINE.channel,
            "Quarantine a delivery, or mark it re-driven",
            "The receiver keeps a signed delivery it cannot translate before answering "
            "400; `worker quarantine replay` marks each event it re-drove.",
            names[QUARANTINE.channel],
        ),
        "parkPoisonCommand": _operation(
            "send",
            DEAD_LETTER_CHANNEL,
            "Park a poison command",
            "The consumer parks a command it can never apply, then moves on.",
            names[DEAD_LETTER_CHANNEL],
        ),
    }


def _apply_commands(names: Sequence[str]) -> JsonObject:
    operation = _operation(
        "receive",
        COMMANDS.channel,
        "Apply commands",
        "The consumers read commands in batches, apply each batch in one "
        "PostgreSQL transaction (state, inbox, outbox and consumed position), "
        "then commit offsets.",
        names,
    )
    operation["bindings"] = {
        "kafka": {
            "groupId": {"type": "string", "enum": [default("consumer_group")]},
            "bindingVersion": KAFKA_BINDING_VERSION,
        }
    }
    return operation
