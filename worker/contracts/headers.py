"""The Kafka record headers of each topic, as AsyncAPI message headers
(JSON Schema of an object whose properties are the header names). The
names come from the code that writes them (worker.adapters.kafka); the
dead-letter headers are the consumer's when it parks a command."""

from __future__ import annotations

from worker.adapters.kafka import EVENT_TYPE_HEADER, REPLAYED_HEADER, SEQ_HEADER
from worker.contracts.topics import JsonObject
from worker.fanfare import quarantine

_STRING_HEADERS = "Kafka record headers; every value is a UTF-8 string."

EVENT_HEADERS: JsonObject = {
    "type": "object",
    "description": (
        f"{_STRING_HEADERS} The relay writes both on every event. No W3C "
        "`traceparent` is written: the service runs no tracing, and a webhook is "
        "followed across services by ids instead (`eventId` → `commandId` → the "
        "command's `source.deliveryId` and `source.sourceId`, Fanfare's ids)."
    ),
    "required": [SEQ_HEADER, EVENT_TYPE_HEADER],
    "properties": {
        SEQ_HEADER: {
            "type": "string",
            "pattern": "^[1-9][0-9]*$",
            "description": (
                "The event's outbox sequence, in decimal: the commit order across "
                "every partition. Increasing on each partition except after a "
                "re-send; a view spanning keys merges partitions by it."
            ),
        },
        EVENT_TYPE_HEADER: {
            "type": "string",
            "description": (
                "The payload's `type`, so a subscriber can skip types it does not "
                "fold without decoding the value. A type it does not know is one "
                "added under the compatibility policy: skip it, never fail on it."
            ),
        },
    },
}

COMMAND_HEADERS: JsonObject = {
    "type": "object",
    "description": (
        f"{_STRING_HEADERS} The receiver, the API and the scheduler write none; "
        "the consumer reads none and ignores any."
    ),
    "properties": {
        REPLAYED_HEADER: {
            "type": "string",
            "pattern": "^[0-9]+:[0-9]+$",
            "description": (
                "Only on a command re-injected by `worker dlq replay`: the dead "
                "letter it came from, `partition:offset` on the dead-letter topic."
            ),
        },
    },
}

DEAD_LETTER_HEADERS: JsonObject = {
    "type": "object",
    "description": _STRING_HEADERS,
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

QUARANTINE_HEADERS: JsonObject = {
    "type": "object",
    "description": _STRING_HEADERS,
    "required": [quarantine.EVENT_ID_HEADER],
    "properties": {
        quarantine.EVENT_ID_HEADER: {
            "type": "string",
            "description": "Fanfare's event id, the record's key: a delivery and its marker.",
        },
        quarantine.EVENT_TYPE_HEADER: {
            "type": "string",
            "description": "Fanfare's event type; on quarantined deliveries only.",
        },
    },
}
