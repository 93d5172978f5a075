"""The public Kafka contracts in schemas/: fresh, complete, and true to the
messages the service really writes. Needs no database or broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from worker.contracts import files, topics
from worker.contracts.__main__ import main as contracts_main
from worker.domain.commands import (
    AdmitConsumer,
    CommandBase,
    CommandSource,
    PutCart,
    ReleaseHolds,
    SetStock,
    decode_command,
    encode_command,
)
from worker.domain.events import (
    CartUpdated,
    EventBase,
    ReservationEnded,
    StockSet,
    encode_event,
)
from worker.domain.ids import command_id, event_id, grant_digest
from worker.domain.model import CartLine

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SCHEMAS = files.SCHEMAS_DIR
REGENERATE = "run make schemas (python -m worker.contracts)"


def _load(relative: str) -> Any:
    return json.loads((SCHEMAS / relative).read_text(encoding="utf-8"))


# --- freshness --------------------------------------------------------------


def test_schema_files_match_the_models() -> None:
    """Every generated file is in schemas/ with exactly the generated text."""
    stale = []
    for relative, text in files.generate().items():
        path = SCHEMAS / relative
        if not path.is_file():
            stale.append(f"{relative} (missing)")
        elif path.read_text(encoding="utf-8") != text:
            stale.append(f"{relative} (differs from the models)")
    assert not stale, f"schemas/ is stale, {REGENERATE}: " + ", ".join(stale)


def test_no_leftover_message_schemas() -> None:
    stale = files.stale_files(SCHEMAS)
    assert not stale, f"schemas/ is stale, {REGENERATE}: " + "; ".join(stale)


def test_check_mode_lists_stale_files_and_ignores_foreign_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = tmp_path / "openapi-api.json"
    foreign.write_text('{"not": "ours"}\n')
    assert contracts_main(["--dir", str(tmp_path)]) == 0
    assert contracts_main(["--check", "--dir", str(tmp_path)]) == 0

    (tmp_path / "commands" / "SetStock.schema.json").write_text("{}\n")
    (tmp_path / "events" / "Gone.schema.json").write_text("{}\n")
    (tmp_path / "asyncapi.json").unlink()
    capsys.readouterr()
    assert contracts_main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "commands/SetStock.schema.json: differs" in err
    assert "events/Gone.schema.json: no longer generated" in err
    assert "asyncapi.json: missing" in err
    assert "openapi" not in err
    assert "make schemas" in err

    assert contracts_main(["--dir", str(tmp_path)]) == 0
    assert contracts_main(["--check", "--dir", str(tmp_path)]) == 0
    assert not (tmp_path / "events" / "Gone.schema.json").exists()
    assert foreign.read_text() == '{"not": "ours"}\n'  # never touched


def test_generation_is_deterministic() -> None:
    first = files.generate()
    assert first == files.generate()
    for relative, text in first.items():
        assert text.endswith("}\n"), relative
        assert text == files.render_json(json.loads(text)), f"{relative}: keys not sorted"


# --- completeness -----------------------------------------------------------


@pytest.mark.parametrize("topic", topics.TOPICS, ids=lambda t: t.channel)
def test_every_union_member_is_described(topic: topics.Topic) -> None:
    models = topics.message_types(topic.union)
    union = _load(topic.union_file)
    assert len(union["oneOf"]) == len(models)
    assert union["discriminator"]["propertyName"] == "type"

    doc = _load(files.ASYNCAPI_FILE)
    channel = doc["channels"][topic.channel]
    assert channel["address"] == topic.address
    assert set(channel["messages"]) == {model.__name__ for model in models}
    for model in models:
        assert (SCHEMAS / topic.message_file(model)).is_file()
        ref = channel["messages"][model.__name__]["$ref"]
        message = doc["components"]["messages"][ref.rsplit("/", 1)[1]]
        payload_ref = message["payload"]["schema"]["$ref"]
        assert (SCHEMAS / payload_ref).is_file(), payload_ref
        key = message["bindings"]["kafka"]["key"]
        assert f"`{topics.key_field(model)}`" in key["description"]
        assert key["type"] == "string"


def test_internal_references_of_the_asyncapi_document_resolve() -> None:
    doc = _load(files.ASYNCAPI_FILE)

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in refs(doc):
        if not ref.startswith("#/"):
            assert (SCHEMAS / ref).is_file(), ref
            continue
        target: Any = doc
        for part in ref[2:].split("/"):
            assert part in target, f"dangling {ref}"
            target = target[part]


def test_dead_letter_channel_documents_its_headers() -> None:
    doc = _load(files.ASYNCAPI_FILE)
    channel = doc["channels"][topics.DEAD_LETTER_CHANNEL]
    assert channel["address"] == topics.default("dead_letter_topic")
    (ref,) = channel["messages"].values()
    message = doc["components"]["messages"][ref["$ref"].rsplit("/", 1)[1]]
    assert set(message["headers"]["required"]) == {
        "origin-topic",
        "origin-partition",
        "origin-offset",
        "error-class",
        "error-reason",
        "attempts",
    }
    for channel in doc["channels"].values():
        assert "at least once" in channel["description"]


# --- real messages against the schemas --------------------------------------


def _source() -> CommandSource:
    return CommandSource(kind="fanfare", source_id="evt_1", delivery_id="dlv_1")


def _commands() -> list[CommandBase]:
    cid = command_id("fanfare", "evt_1")
    return [
        AdmitConsumer(
            command_id=cid,
            occurred_at=NOW,
            received_at=NOW,
            source=_source(),
            experience_id="exp_1",
            consumer_id="cons_1",
            grant_digest=grant_digest("eyJ-grant"),
            admitted_at=NOW,
            experience_kind="queue",
        ),
        PutCart(
            command_id=command_id("api", "idem_1"),
            occurred_at=NOW,
            received_at=NOW,
            source=CommandSource(kind="api", source_id="idem_1"),
            experience_id="exp_1",
            consumer_id="cons_1",
            items=[CartLine(product_id="shoe", variant_id="42", quantity=2)],
        ),
        SetStock(
            command_id=command_id("api", "idem_2"),
            occurred_at=NOW,
            received_at=NOW,
            source=CommandSource(kind="api", source_id="idem_2"),
            product_id="shoe",
            variant_id="42",
            on_hand=10,
        ),
        ReleaseHolds(
            command_id=command_id("api", "idem_3"),
            occurred_at=NOW,
            received_at=NOW,
            source=CommandSource(kind="api", source_id="idem_3", secret_id="sha256:0123456789ab"),
            experience_id="exp_1",
            product_id="shoe",
            reason="recount after STOCK_BELOW_COMMITTED",
        ),
    ]


def _events() -> list[EventBase]:
    cid = command_id("api", "idem_1")
    return [
        CartUpdated(
            event_id=event_id(cid, 0),
            command_id=cid,
            occurred_at=NOW,
            experience_id="exp_1",
            consumer_id="cons_1",
            items=[CartLine(product_id="shoe", quantity=1)],
        ),
        StockSet(
            event_id=event_id(cid, 1),
            command_id=cid,
            occurred_at=NOW,
            product_id="shoe",
            variant_id=None,
            on_hand=10,
        ),
        ReservationEnded(
            event_id=event_id(cid, 2),
            command_id=cid,
            occurred_at=NOW,
            type="reservation.released",
            experience_id="exp_1",
            reservation_id=UUID(int=7),
            consumer_id="cons_1",
            grant_digest=grant_digest("eyJ-grant"),
            product_id="shoe",
            variant_id="42",
            quantity=1,
            reason="operator",
            ended_at=NOW,
            requested_by="sha256:0123456789ab",
            request_reason="recount",
        ),
    ]


@pytest.fixture
def validator() -> Any:
    import jsonschema  # a dev dependency: missing, the suite fails rather than skips

    def build(relative: str) -> Any:
        schema = _load(relative)
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        return cls(schema, format_checker=cls.FORMAT_CHECKER)

    return build


def _wire(message: BaseModel) -> Any:
    raw = encode_command(message) if isinstance(message, CommandBase) else encode_event(message)  # type: ignore[arg-type]
    return orjson.loads(raw)


@pytest.mark.parametrize("message", [*_commands(), *_events()], ids=lambda m: type(m).__name__)
def test_real_messages_validate(message: BaseModel, validator: Any) -> None:
    topic = topics.COMMANDS if isinstance(message, CommandBase) else topics.EVENTS
    wire = _wire(message)
    assert "schemaVersion" in wire  # camelCase, as on the wire
    validator(topic.union_file).validate(wire)
    validator(topic.message_file(type(message))).validate(wire)
    # The key the contract names is the key the service produces with.
    key = topics.key_field(type(message))
    assert wire[key] == message.partition_key()  # type: ignore[attr-defined]


def _admit_wire() -> dict[str, Any]:
    wire: dict[str, Any] = _wire(_commands()[0])
    return wire


@pytest.mark.parametrize(
    ("case", "mutate"),
    [
        ("missing required field", lambda w: w.pop("experienceId")),
        ("unknown type", lambda w: w.update(type="admission.unknown")),
        ("grant not a digest", lambda w: w.update(grantDigest="eyJ-clear-grant")),
        ("bad command id", lambda w: w.update(commandId="not-a-uuid")),
        ("wrong schema version", lambda w: w.update(schemaVersion=2)),
    ],
)
def test_invalid_commands_fail_validation(case: str, mutate: Any, validator: Any) -> None:
    wire = _admit_wire()
    mutate(wire)
    union = validator(topics.COMMANDS.union_file)
    assert not union.is_valid(wire), case
    # The schema and the consumer agree: this is parked, never applied.
    with pytest.raises(ValidationError):
        decode_command(orjson.dumps(wire))


def test_schema_states_the_canonical_form(validator: Any) -> None:
    """The decoder also takes snake_case names (populate_by_name); the
    contract admits only the camelCase wire form producers must write."""
    wire = _admit_wire()
    wire["consumer_id"] = wire.pop("consumerId")
    assert not validator(topics.COMMANDS.union_file).is_valid(wire)
    assert isinstance(decode_command(orjson.dumps(wire)), AdmitConsumer)


def test_invalid_event_fails_validation(validator: Any) -> None:
    wire = _wire(_events()[1])
    wire["onHand"] = "ten"
    assert not validator(topics.EVENTS.union_file).is_valid(wire)
    assert not validator(topics.EVENTS.message_file(StockSet)).is_valid(wire)
