"""OpenAPI 3.1 documents built from route tables and pydantic models.

A role hands `build_document` the operations its app registers (handler,
models and documented replies each), so its document cannot drift from the
code: a route, field or constraint added there shows up on the next build.
`write_or_check` is the command line that keeps a stored copy in schemas/
fresh; the HTTP API's is `python -m worker.roles.api`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema

if TYPE_CHECKING:  # the type pydantic itself uses for this hook
    from pydantic._internal._core_utils import CoreSchemaOrField

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
REF_TEMPLATE = "#/components/schemas/{model}"

JsonObject = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Headers the API answers with, documented once and referenced by name.
RESPONSE_HEADERS: dict[str, JsonObject] = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 0},
    },
    "Location": {
        "description": "Where the outcome will be: GET it until it is no longer 202",
        "schema": {"type": "string"},
    },
    "WWW-Authenticate": {
        "description": "The scheme to authenticate with (Bearer)",
        "schema": {"type": "string"},
    },
    "Allow": {"description": "The methods this path accepts", "schema": {"type": "string"}},
}

IDEMPOTENCY_KEY_PARAMETER: JsonObject = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes the write idempotent: the same key on the same method and path always names "
        "the same command, so a retry answers the first outcome and never applies twice. "
        "Without it every request is a new command."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
}


# On a response: a well-formed request may get it (a business refusal).
REFUSAL_EXTENSION = "x-business-refusal"


class ContractError(Exception):
    """A route or model that cannot be described (a misuse of the table)."""


@dataclass(frozen=True)
class Reply:
    """One documented answer of an operation."""

    status: int
    description: str
    model: type[BaseModel] | None = None
    media: str = "application/json"
    headers: tuple[str, ...] = ()
    # Schema for a body no model describes (e.g. the metrics text).
    raw_schema: JsonObject | None = None
    # A business refusal: a request the schema allows, refused by the state
    # it meets (no such hold, an order already sold). Documented with
    # REFUSAL_EXTENSION, so a tool can tell it from a malformed request.
    refusal: bool = False


@dataclass(frozen=True)
class Operation:
    """A route as the app registers it and the document describes it."""

    method: str
    path: str
    operation_id: str
    summary: str
    handler: Handler
    tag: str
    description: str = ""
    body: type[BaseModel] | None = None
    path_model: type[BaseModel] | None = None
    query_model: type[BaseModel] | None = None
    replies: tuple[Reply, ...] = ()
    secured: bool = True
    # The key scope the route needs beyond a valid key (None: any valid key).
    scope: str | None = None
    idempotency_key: bool = False


class _Generator(GenerateJsonSchema):
    """No titles derived from field names ("Windowseconds"): the camelCase
    property name says it better. Model titles stay."""

    def field_title_should_be_set(self, schema: CoreSchemaOrField) -> bool:
        return False


def _parameters(model: type[BaseModel], where: str) -> list[JsonObject]:
    schema = model.model_json_schema(
        mode="validation", ref_template=REF_TEMPLATE, schema_generator=_Generator
    )
    if "$defs" in schema:
        raise ContractError(f"{model.__name__}: parameters must be plain values")
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", None)
        # A parameter is absent or a string; "null" cannot be sent in a URL.
        options = prop.get("anyOf", [])
        if len(options) == 2 and {"type": "null"} in options:
            prop.pop("anyOf")
            prop.pop("default", None)
            prop.update(next(o for o in options if o != {"type": "null"}))
        param: JsonObject = {
            "name": name,
            "in": where,
            "required": where == "path" or name in required,
            "schema": prop,
        }
        if description:
            param["description"] = description
        params.append(param)
    return params


def _content(reply: Reply, refs: Mapping[tuple[Any, JsonSchemaMode], JsonObject]) -> Any:
    if reply.model is not None:
        schema = refs[(reply.model, "serialization")]
    elif reply.raw_schema is not None:
        schema = reply.raw_schema
    else:
        return None
    return {reply.media: {"schema": schema}}


def responses(
    replies: Sequence[Reply], refs: Mapping[tuple[Any, JsonSchemaMode], JsonObject]
) -> JsonObject:
    """An operation's `responses` object, by status. `refs` maps each reply's
    model, in serialization mode, to its schema (from models_json_schema)."""
    out: JsonObject = {}
    for reply in sorted(replies, key=lambda r: r.status):
        entry: JsonObject = {"description": reply.description}
        content = _content(reply, refs)
        if content is not None:
            entry["content"] = content
        if reply.headers:
            entry["headers"] = {name: RESPONSE_HEADERS[name] for name in reply.headers}
        if reply.refusal:
            entry[REFUSAL_EXTENSION] = True
        out[str(reply.status)] = entry
    return out


def build_document(
    operations: Sequence[Operation],
    *,
    title: str,
    version: str,
    description: str,
    error_model: type[BaseModel],
) -> JsonObject:
    """The OpenAPI 3.1 document of `operations`. `error_model` is the body of
    the answers every operation of a kind may give: 401 when secured, 403
    when it needs a key scope, 413 when it takes a body."""
    refs, defs = _schemas(operations, error_model)
    paths: dict[str, JsonObject] = {}
    for op in operations:
        method = op.method.lower()
        if method in paths.get(op.path, {}):
            raise ContractError(f"{op.method} {op.path} is in the table twice")
        paths.setdefault(op.path, {})[method] = _operation(op, refs, error_model)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": JSON_SCHEMA_DIALECT,
        "info": {"title": title, "version": version, "description": description},
        "security": [{"bearerAuth": []}],
        "tags": [{"name": tag} for tag in dict.fromkeys(op.tag for op in operations)],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of the keys in RESERVATION_API_KEYS",
                }
            },
        },
    }


# A model's schema reference, by model and mode (from models_json_schema).
Refs = Mapping[tuple[Any, JsonSchemaMode], JsonObject]


def _schemas(
    operations: Sequence[Operation], error_model: type[BaseModel]
) -> tuple[Refs, JsonObject]:
    """Every model the operations name, each once: its reference, and the
    definitions they point into."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(error_model, "serialization")]
    for op in operations:
        if op.body is not None:
            wanted.append((op.body, "validation"))
        wanted.extend((r.model, "serialization") for r in op.replies if r.model is not None)
    unique = list(dict.fromkeys(wanted))
    return models_json_schema(unique, ref_template=REF_TEMPLATE, schema_generator=_Generator)


def _operation(op: Operation, refs: Refs, error_model: type[BaseModel]) -> JsonObject:
    parameters = _operation_parameters(op)
    operation: JsonObject = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses(_replies(op, error_model), refs),
    }
    if op.description:
        operation["description"] = op.description
    if parameters:
        operation["parameters"] = parameters
    if op.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
        }
    if not op.secured:
        operation["security"] = []
    return operation


def _operation_parameters(op: Operation) -> list[JsonObject]:
    """Its path, query and header parameters; the path's must be the ones
    its template names."""
    parameters: list[JsonObject] = []
    if op.path_model is not None:
        parameters += _parameters(op.path_model, "path")
    if op.query_model is not None:
        parameters += _parameters(op.query_model, "query")
    if op.idempotency_key:
        parameters.append(IDEMPOTENCY_KEY_PARAMETER)
    declared = {p["name"] for p in parameters if p["in"] == "path"}
    in_template = {part[1:-1] for part in op.path.split("/") if part.startswith("{")}
    if declared != in_template:
        raise ContractError(f"{op.path}: path parameters {sorted(declared)} do not match")
    return parameters


def _replies(op: Operation, error_model: type[BaseModel]) -> list[Reply]:
    """Its own replies, and those every operation of its kind may give."""
    replies = list(op.replies)
    if op.secured:
        replies.append(
            Reply(
                401,
                "No valid `Authorization: Bearer <key>` (UNAUTHORIZED)",
                error_model,
                headers=("WWW-Authenticate",),
            )
        )
    if op.scope is not None:
        replies.append(
            Reply(403, f"The key lacks the `{op.scope}` scope (FORBIDDEN_SCOPE)", error_model)
        )
    if op.body is not None:
        replies.append(Reply(413, "Body larger than MAX_BODY_BYTES (BODY_TOO_LARGE)", error_model))
    return replies


def render_json(document: JsonObject) -> str:
    """Deterministic text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_or_check(
    argv: Sequence[str] | None, *, prog: str, file_name: str, render: Callable[[], str]
) -> int:
    """The command line of one stored document: (re)write schemas/`file_name`
    with what `render` builds, or with --check write nothing and exit 1 if
    the stored copy differs."""
    parser = argparse.ArgumentParser(
        prog=prog, description=f"Write the OpenAPI document to schemas/{file_name}."
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if stale")
    parser.add_argument("--dir", type=Path, default=SCHEMAS_DIR, help="output folder")
    args = parser.parse_args(argv)
    path: Path = args.dir / file_name
    text = render()
    current = path.read_text(encoding="utf-8") if path.is_file() else None
    if args.check:
        if current != text:
            print(f"{path} is stale: run `{prog}`", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    if current != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"updated {path}")
    else:
        print(f"{path} unchanged")
    return 0
