"""The HTTP status of every refusal comes from its stable code, in the API:
the domain and the engine name what went wrong, never how HTTP says it.
Needs no database or broker."""

from __future__ import annotations

import uuid

import orjson
import pytest

from worker.roles.api.commands import as_answered
from worker.roles.api.http import REFUSAL_STATUS, ApiError, refusal_status
from worker.roles.api.writes import answer_outcome

COMMAND = uuid.UUID("5b1d3c9e-0000-4000-8000-000000000001")


def test_every_refusal_code_has_its_status() -> None:
    assert REFUSAL_STATUS == {
        "ADMISSION_MISMATCH": 403,
        "RESERVATION_EXPIRED": 409,
        "RESERVATION_MISSING": 400,
        "RESERVATION_INSUFFICIENT": 400,
        "ORDER_CONFLICT": 409,
        "STOCK_BELOW_COMMITTED": 409,
        "POOL_BELOW_USED": 409,
        "EXTENSION_NOT_ALLOWED": 409,
        "EXTENSIONS_EXHAUSTED": 409,
        "RETRY_NOT_ALLOWED": 409,
        "RETRY_WINDOW_CLOSED": 409,
        "NOT_EXPIRED": 409,
    }
    assert refusal_status("SOMETHING_NEW") == 409
    assert refusal_status(None) == 409


@pytest.mark.parametrize("stored_status", [None, 400, 409, "403", 599])
def test_a_refused_write_is_answered_by_its_code_whatever_the_row_holds(
    stored_status: object,
) -> None:
    outcome: dict[str, object] = {
        "status": "rejected",
        "error": "STOCK_BELOW_COMMITTED",
        "message": "onHand 1 is below the 2 units reserved or sold",
        "committed": 2,
    }
    if stored_status is not None:
        outcome["httpStatus"] = stored_status
    with pytest.raises(ApiError) as refused:
        answer_outcome(COMMAND, outcome)
    assert refused.value.status == 409
    body = refused.value.body.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert body == {
        "error": "STOCK_BELOW_COMMITTED",
        "message": "onHand 1 is below the 2 units reserved or sold",
        "commandId": str(COMMAND),
        "committed": 2,
    }


def test_a_pool_refusal_carries_the_units_used() -> None:
    outcome = {"status": "rejected", "error": "POOL_BELOW_USED", "message": "m", "used": 3}
    with pytest.raises(ApiError) as refused:
        answer_outcome(COMMAND, outcome)
    assert refused.value.status == 409
    body = refused.value.body.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert body == {
        "error": "POOL_BELOW_USED",
        "message": "m",
        "commandId": str(COMMAND),
        "used": 3,
    }


def test_an_applied_write_is_answered_with_its_outcome() -> None:
    answer = answer_outcome(COMMAND, {"status": "set", "onHand": 5})
    assert answer.status == 200
    assert orjson.loads(answer.body) == {  # type: ignore[arg-type]
        "status": "set",
        "onHand": 5,
        "commandId": str(COMMAND),
    }


def test_a_refusal_read_back_shows_the_status_it_was_answered_with() -> None:
    new = {"status": "rejected", "error": "ADMISSION_MISMATCH", "message": "m"}
    old = {**new, "httpStatus": 400}
    assert as_answered(new) == as_answered(old) == {**new, "httpStatus": 403}
    applied = {"status": "converted", "orderId": "o1"}
    assert as_answered(applied) == applied
