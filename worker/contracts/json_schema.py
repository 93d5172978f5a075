"""JSON Schema (draft 2020-12) of each message type and of each topic's
union, camelCase as on the wire."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import core_schema

from worker.contracts.topics import JsonObject, Topic, env

if TYPE_CHECKING:  # the type pydantic itself uses for this hook
    from pydantic._internal._core_utils import CoreSchemaOrField

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
# What every message states, whatever defaults its model gives them: a
# reader tells messages apart by `type` and their form by `schemaVersion`.
ENVELOPE_REQUIRED = ("type", "schemaVersion")


class _Generator(GenerateJsonSchema):
    """pydantic's generator without the titles it derives from field names
    ("Grantdigest"): the camelCase property name says it better. Titles
    given explicitly with `Field(title=...)` are kept. A message's `type`
    and `schemaVersion` are required. Unknown properties are allowed (no
    `additionalProperties: false`): the models ignore them on reading."""

    def field_title_should_be_set(self, schema: CoreSchemaOrField) -> bool:
        return False

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        json_schema = super().model_schema(schema)
        properties = json_schema.get("properties", {})
        if all(name in properties for name in ENVELOPE_REQUIRED):
            required = json_schema.get("required", [])
            missing = [name for name in ENVELOPE_REQUIRED if name not in required]
            json_schema["required"] = missing + required
        return json_schema


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
        f"`{env(topic.setting)}`), told apart by its `{discriminator(schema)}` property."
    )
    return _finish(schema, topic.title, description)


def discriminator(schema: JsonObject) -> str:
    discriminator = schema.get("discriminator")
    if isinstance(discriminator, dict):
        return str(discriminator.get("propertyName", "type"))
    return "type"


def type_values(schema: JsonObject, prop: str) -> list[str]:
    spec = schema.get("properties", {}).get(prop, {})
    if "const" in spec:
        return [str(spec["const"])]
    return [str(value) for value in spec.get("enum", [])]
