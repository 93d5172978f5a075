"""Fanfare event types -> commands, pure: what each documented type becomes,
the field aliases, the errors' field paths, and the grant kept out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from worker.domain import ids
from worker.domain.commands import (
    AdmitConsumer,
    CompleteCheckout,
    EndAdmission,
    decode_command,
    encode_command,
)
from worker.fanfare.envelope import Delivery, Envelope, clean_delivery_id, field_path
from worker.fanfare.events import EVENTS, metric_label, translate
from worker.fanfare.forwarding import forwarded_record, redact

GRANT = "eyJhbGciOiJFZERTQSJ9.secret-admission-grant.sig"
EVENT_AT = "2026-11-24T18:03:12.345Z"
RECEIVED = datetime(2026, 11, 24, 18, 3, 13, tzinfo=UTC)
DELIVERY = Delivery(delivery_id="dlv_1", secret_fingerprint="sha256:abc", received_at=RECEIVED)


def _envelope(event_type: str, data: dict[str, Any], event_id: str = "whk_1") -> Envelope:
    return Envelope.model_validate(
        {
            "id": event_id,
            "type": event_type,
            "timestamp": EVENT_AT,
            "organizationId": "org_1",
            "data": data,
        }
    )


def _command(event_type: str, data: dict[str, Any]) -> Any:
    result = translate(_envelope(event_type, data), DELIVERY)
    assert result.disposition == "command", result
    assert result.command is not None
    encoded = encode_command(result.command)
    # The clear grant never leaves the receiver, and what does is a valid
    # command on the wire.
    assert GRANT.encode() not in encoded
    assert decode_command(encoded) == result.command
    return result.command


@pytest.mark.parametrize(
    ("event_type", "id_field", "kind"),
    [
        ("queue.consumer.admitted", "queueId", "queue"),
        ("draw.consumer.won", "drawId", "draw"),
        ("auction.consumer.won", "auctionId", "auction"),
    ],
)
def test_admissions_become_admit_consumer(event_type: str, id_field: str, kind: str) -> None:
    cmd = _command(
        event_type,
        {
            id_field: "exp_1",
            "consumerId": "cons_1",
            "admittedAt": "2026-11-24T18:03:12Z",
            "admissionToken": GRANT,
        },
    )
    assert isinstance(cmd, AdmitConsumer)
    assert (cmd.experience_id, cmd.consumer_id, cmd.experience_kind) == ("exp_1", "cons_1", kind)
    assert cmd.grant_digest == ids.grant_digest(GRANT)
    assert cmd.admitted_at == datetime(2026, 11, 24, 18, 3, 12, tzinfo=UTC)
    assert cmd.command_id == ids.command_id("fanfare", "whk_1")
    assert cmd.occurred_at == datetime(2026, 11, 24, 18, 3, 12, 345000, tzinfo=UTC)
    assert cmd.received_at == RECEIVED
    assert cmd.source.delivery_id == "dlv_1"
    assert cmd.source.event_type == event_type
    assert cmd.source.secret_id == "sha256:abc"
    assert cmd.source.organization_id == "org_1"


@pytest.mark.parametrize("grant_field", ["admissionToken", "admissionGrant", "grant", "token"])
@pytest.mark.parametrize("id_field", ["queueId", "drawId", "auctionId", "experienceId"])
def test_admission_aliases(grant_field: str, id_field: str) -> None:
    cmd = _command(
        "queue.consumer.admitted", {id_field: "exp_1", "consumerId": "c", grant_field: GRANT}
    )
    assert cmd.experience_id == "exp_1"
    assert cmd.grant_digest == ids.grant_digest(GRANT)


def test_admission_without_admitted_at_uses_the_event_time() -> None:
    cmd = _command("draw.consumer.won", {"drawId": "d", "consumerId": "c", "token": GRANT})
    assert cmd.admitted_at == cmd.occurred_at


def test_the_stage_id_wins_over_the_experience_id_so_keys_stay_stable() -> None:
    cmd = _command(
        "queue.consumer.admitted",
        {"experienceId": "exp_umbrella", "queueId": "queue_1", "consumerId": "c", "grant": GRANT},
    )
    assert cmd.experience_id == "queue_1"
    assert cmd.partition_key() == "queue_1"


@pytest.mark.parametrize(
    ("event_type", "reason"),
    [
        ("queue.consumer.left", "left"),
        ("queue.consumer.denied", "denied"),
        ("draw.consumer.lost", "lost"),
    ],
)
def test_leaving_denied_and_lost_release(event_type: str, reason: str) -> None:
    cmd = _command(event_type, {"queueId": "q", "consumerId": "c"})
    assert isinstance(cmd, EndAdmission)
    assert (cmd.outcome, cmd.reason, cmd.grant_digest) == ("released", reason, None)
    assert cmd.ended_at == cmd.occurred_at
    with_grant = _command(event_type, {"drawId": "q", "consumerId": "c", "admissionGrant": GRANT})
    assert with_grant.grant_digest == ids.grant_digest(GRANT)


@pytest.mark.parametrize(
    "event_type",
    [
        "queue.admission_expired",
        "draw.admission_expired",
        "auction.admission_expired",
        "queue.consumer.admission_expired",
        "queue.admission.expired",
    ],
)
def test_admission_expired_events_expire_at_the_event_time(event_type: str) -> None:
    cmd = _command(event_type, {"queueId": "q", "consumerId": "c", "admissionToken": GRANT})
    assert isinstance(cmd, EndAdmission)
    assert (cmd.outcome, cmd.reason) == ("expired", "admission_expired")
    assert cmd.ended_at == datetime(2026, 11, 24, 18, 3, 12, 345000, tzinfo=UTC)
    assert cmd.grant_digest == ids.grant_digest(GRANT)


@pytest.mark.parametrize(
    "event_type", ["queue.consumer.completed", "order.created", "order.completed"]
)
def test_completion_and_order_events_complete_checkout(event_type: str) -> None:
    cmd = _command(event_type, {"queueId": "q", "consumerId": "c", "orderId": "ord_1"})
    assert isinstance(cmd, CompleteCheckout)
    assert (cmd.order_id, cmd.grant_digest, cmd.items) == ("ord_1", None, None)
    with_grant = _command(
        event_type, {"queueId": "q", "consumerId": "c", "orderId": 1001, "token": GRANT}
    )
    assert with_grant.order_id == "1001"
    assert with_grant.grant_digest == ids.grant_digest(GRANT)
    nested = _command(event_type, {"queueId": "q", "consumerId": "c", "order": {"id": "ord_9"}})
    assert nested.order_id == "ord_9"


def test_queue_completion_without_an_order_is_acknowledged_not_acted_on() -> None:
    result = translate(_envelope("queue.consumer.completed", {"queueId": "q"}), DELIVERY)
    assert (result.disposition, result.command, result.reason) == (
        "not_acted_on",
        None,
        "no_order_id",
    )


def test_order_event_without_an_order_id_is_invalid_with_its_path() -> None:
    with pytest.raises(ValidationError) as caught:
        translate(_envelope("order.created", {"queueId": "q", "consumerId": "c"}), DELIVERY)
    path, message = field_path(caught.value, "data")
    assert path == "data.orderId"
    assert "order.id" in message


@pytest.mark.parametrize(
    "event_type",
    [
        "queue.consumer.entered",
        "draw.consumer.entered",
        "draw.completed",
        "auction.bid.placed",
        "auction.bid.outbid",
        "auction.settled",
        "order.cancelled",
        "consumer.created",
        "consumer.updated",
        "distribution.started",
    ],
)
def test_documented_types_without_effect_are_not_acted_on(event_type: str) -> None:
    result = translate(_envelope(event_type, {"anything": 1}), DELIVERY)
    assert (result.disposition, result.command) == ("not_acted_on", None)


@pytest.mark.parametrize("event_type", ["queue.consumer.teleported", "admission_expired", "x"])
def test_unknown_types_are_unknown(event_type: str) -> None:
    result = translate(_envelope(event_type, {}), DELIVERY)
    assert (result.disposition, result.reason) == ("unknown", "unknown_event_type")
    assert metric_label(event_type) == "other"


def test_every_documented_type_has_a_bounded_metric_label() -> None:
    for event_type in EVENTS:
        assert metric_label(event_type) == event_type
    assert metric_label("draw.admission_expired") == "*.admission_expired"
    assert metric_label("distribution.ended") == "distribution.*"


@pytest.mark.parametrize(
    ("data", "path", "hint"),
    [
        ({"consumerId": "c", "admissionToken": GRANT}, "data.queueId", "experienceId"),
        ({"queueId": "q", "admissionToken": GRANT}, "data.consumerId", None),
        ({"queueId": "q", "consumerId": "c"}, "data.admissionToken", "admissionGrant"),
        ({"queueId": "q", "consumerId": "c", "token": ""}, "data.token", None),
        ({"queueId": "q", "consumerId": "c", "token": 12}, "data.token", None),
        ({"queueId": "", "consumerId": "c", "token": GRANT}, "data.queueId", None),
        ({"queueId": "q\n", "consumerId": "c", "token": GRANT}, "data.queueId", None),
        ({"queueId": "q", "consumerId": "c", "token": GRANT, "admittedAt": "soon"}, None, None),
    ],
)
def test_invalid_admission_data_names_the_field_and_never_echoes_input(
    data: dict[str, Any], path: str | None, hint: str | None
) -> None:
    with pytest.raises(ValidationError) as caught:
        translate(_envelope("queue.consumer.admitted", data), DELIVERY)
    got_path, message = field_path(caught.value, "data")
    assert got_path == (path or "data.admittedAt")
    if hint:
        assert hint in message
    assert GRANT not in message
    assert "soon" not in message


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ([1, 2], "body"),
        ("text", "body"),
        ({"type": "t", "timestamp": EVENT_AT, "organizationId": "o", "data": {}}, "id"),
        ({"id": "i", "timestamp": EVENT_AT, "organizationId": "o", "data": {}}, "type"),
        ({"id": "i", "type": "t", "organizationId": "o", "data": {}}, "timestamp"),
        ({"id": "i", "type": "t", "timestamp": "2026-11-24T18:03:12", "organizationId": "o",
          "data": {}}, "timestamp"),
        ({"id": "i", "type": "t", "timestamp": EVENT_AT, "data": {}}, "organizationId"),
        ({"id": "i", "type": "t", "timestamp": EVENT_AT, "organizationId": "o"}, "data"),
        ({"id": "i", "type": "t", "timestamp": EVENT_AT, "organizationId": "o", "data": []},
         "data"),
        ({"id": 5, "type": "t", "timestamp": EVENT_AT, "organizationId": "o", "data": {}}, "id"),
    ],
)  # fmt: skip
def test_invalid_envelopes_name_the_field(raw: Any, path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Envelope.model_validate(raw)
    assert field_path(caught.value)[0] == path


def test_unknown_envelope_fields_are_accepted() -> None:
    env = Envelope.model_validate(
        {
            "id": "i",
            "type": "t",
            "timestamp": EVENT_AT,
            "organizationId": "o",
            "data": {},
            "apiVersion": "2026-01",
        }
    )
    assert env.id == "i"


def test_forwarded_record_keeps_the_envelope_and_digests_credentials() -> None:
    raw = {
        "id": "whk_9",
        "type": "queue.consumer.teleported",
        "timestamp": EVENT_AT,
        "organizationId": "org_1",
        "extra": {"x": [1, {"checkoutToken": GRANT}]},
        "data": {"queueId": "q", "admissionGrant": GRANT, "note": "kept"},
    }
    env = Envelope.model_validate(raw)
    record = forwarded_record(raw, env, DELIVERY)
    assert GRANT.encode() not in record.value
    value = orjson.loads(record.value)
    assert value["envelope"]["data"]["admissionGrant"] == "sha256:" + ids.grant_digest(GRANT)
    assert value["envelope"]["extra"]["x"][1]["checkoutToken"].startswith("sha256:")
    assert value["envelope"]["data"]["note"] == "kept"
    assert (value["eventId"], value["eventType"], value["deliveryId"]) == (
        "whk_9",
        "queue.consumer.teleported",
        "dlv_1",
    )
    assert record.key == b"org_1"
    assert ("fanfare-event-id", b"whk_9") in record.headers


def test_redact_leaves_non_credentials_alone() -> None:
    assert redact({"a": [1, "b"], "tokenCount": 3}) == {"a": [1, "b"], "tokenCount": 3}


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        ("dlv_1", "dlv_1"),
        (None, None),
        ("", None),
        ("x" * 201, None),
        ("a\x01b", None),
        ("caf\u00e9", None),
        ("\udcff", None),
    ],
)
def test_delivery_id_is_kept_only_when_sane(header: str | None, kept: str | None) -> None:
    assert clean_delivery_id(header) == kept
