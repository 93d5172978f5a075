"""Shared pydantic base: camelCase on the wire, snake_case in code."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

# The `schemaVersion`s this build reads, for commands and events alike. A
# breaking change to a message ships as a new version read alongside the
# old one for the stated window (README, "Compatibility"): this becomes
# Literal[1, 2], the message's version-2 model joins its union beside the
# version-1 one, and the engine takes either. Until then 1 is all there is.
SchemaVersion = Literal[1]


class WireModel(BaseModel):
    """A message on a topic, or a part of one: camelCase JSON, immutable.

    Read tolerantly: a field this build does not know is ignored, never
    refused, so a writer one release ahead (a field added under the
    compatibility policy, README "Topics and schemas") never has its
    commands parked by a reader one release behind. What we write holds
    only the fields we know. HTTP request bodies are not WireModels: the
    API refuses unknown fields (worker.roles.api.models.ApiBody)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="ignore",
    )


def one_of_forms(*forms: tuple[tuple[str, ...], tuple[str, ...]]) -> dict[str, Any]:
    """JSON Schema for a message that comes in exactly one of several forms,
    each given as (the fields it gives, not null; the fields it leaves
    absent or null), for the schema of a model whose validator checks it."""
    return {
        "oneOf": [
            {
                "required": list(given),
                "properties": {
                    **{name: {"type": "null"} for name in absent},
                    **{name: {"not": {"type": "null"}} for name in given},
                },
            }
            for given, absent in forms
        ]
    }
