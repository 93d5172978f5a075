"""Public Kafka contracts, generated from the pydantic models.

`python -m worker.contracts` writes into `schemas/`:

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

Both use the camelCase aliases (`by_alias=True`), as on the wire. Every
message schema requires `type` and `schemaVersion` and allows properties it
does not list, since readers ignore them (README, "Compatibility").


Modules: `topics` (the topics and their message models), `json_schema`,
`headers` (each topic's record headers), `asyncapi` (the document and its
parts), `files` (writing and staleness).

    python -m worker.contracts           # (re)write schemas/
    python -m worker.contracts --check   # exit 1 listing stale files
"""
