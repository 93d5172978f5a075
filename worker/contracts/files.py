"""The generated files: their text, writing them into `schemas/`, and
telling which are stale."""

from __future__ import annotations

import json
from pathlib import Path

from worker.contracts.asyncapi import asyncapi_document
from worker.contracts.json_schema import message_schema, union_schema
from worker.contracts.topics import TOPICS, JsonObject, message_types

SCHEMAS_DIR = Path(__file__).resolve().parent.parent.parent / "schemas"
ASYNCAPI_FILE = "asyncapi.json"
REGENERATE = "run `make schemas` (python -m worker.contracts)"


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
