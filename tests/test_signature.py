"""Webhook signatures, pure: no network, no clock but the one passed in."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.fanfare.signature import MAX_SIGNATURES, Secret, SignatureError, sign, verify

CURRENT = "whsec_current_0123456789abcdef"
PREVIOUS = "whsec_previous_fedcba9876543210"
RETIRED = "whsec_retired_00000000000000000"
NOW = 1_795_000_000
BODY = b'{"id":"whk_1","type":"queue.consumer.admitted"}'
ACTIVE = [Secret.from_text(CURRENT), Secret.from_text(PREVIOUS)]


def _verify(
    timestamp: str | None,
    signature: str | None,
    body: bytes = BODY,
    now: float = NOW,
    secrets: list[Secret] | None = None,
    tolerance: int = 300,
) -> Secret:
    return verify(secrets or ACTIVE, timestamp, signature, body, now, tolerance)


def _code(**kwargs: object) -> str:
    with pytest.raises(SignatureError) as caught:
        _verify(**kwargs)  # type: ignore[arg-type]
    return caught.value.code


def test_sign_is_hmac_sha256_of_timestamp_dot_body_keyed_by_the_whole_secret() -> None:
    expected = hmac.new(CURRENT.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(CURRENT, str(NOW), BODY) == "sha256=" + expected


def test_current_secret_verifies_and_is_named_by_fingerprint() -> None:
    matched = _verify(str(NOW), sign(CURRENT, str(NOW), BODY))
    assert matched == ACTIVE[0]
    assert matched.fingerprint.startswith("sha256:")
    assert CURRENT not in matched.fingerprint


def test_second_active_secret_verifies_during_rotation() -> None:
    assert _verify(str(NOW), sign(PREVIOUS, str(NOW), BODY)) == ACTIVE[1]


def test_rotated_out_secret_is_refused() -> None:
    assert _code(timestamp=str(NOW), signature=sign(RETIRED, str(NOW), BODY)) == (
        "SIGNATURE_INVALID"
    )
    # Once PREVIOUS is retired, its signatures stop working too.
    assert (
        _code(
            timestamp=str(NOW),
            signature=sign(PREVIOUS, str(NOW), BODY),
            secrets=[ACTIVE[0]],
        )
        == "SIGNATURE_INVALID"
    )


@pytest.mark.parametrize("offset", [-300, -1, 0, 1, 300])
def test_timestamps_within_tolerance_either_way_verify(offset: int) -> None:
    ts = str(NOW + offset)
    assert _verify(ts, sign(CURRENT, ts, BODY)) == ACTIVE[0]


@pytest.mark.parametrize(("offset", "direction"), [(-301, "past"), (301, "future")])
def test_timestamps_beyond_tolerance_either_way_are_refused(offset: int, direction: str) -> None:
    ts = str(NOW + offset)
    with pytest.raises(SignatureError) as caught:
        _verify(ts, sign(CURRENT, ts, BODY))
    assert caught.value.code == "TIMESTAMP_OUT_OF_TOLERANCE"
    assert direction in caught.value.message


def test_tolerance_is_configurable() -> None:
    ts = str(NOW - 100)
    assert _code(timestamp=ts, signature=sign(CURRENT, ts, BODY), tolerance=60) == (
        "TIMESTAMP_OUT_OF_TOLERANCE"
    )
    assert _verify(ts, sign(CURRENT, ts, BODY), tolerance=120) == ACTIVE[0]


@pytest.mark.parametrize(
    ("timestamp", "signature", "code"),
    [
        (str(NOW), None, "SIGNATURE_MISSING"),
        (str(NOW), "", "SIGNATURE_MISSING"),
        (str(NOW), "   ", "SIGNATURE_MISSING"),
        (None, "sha256=" + "0" * 64, "TIMESTAMP_MISSING"),
        ("", "sha256=" + "0" * 64, "TIMESTAMP_MISSING"),
        ("12.5", "sha256=" + "0" * 64, "TIMESTAMP_INVALID"),
        ("-5", "sha256=" + "0" * 64, "TIMESTAMP_INVALID"),
        ("+1795000000", "sha256=" + "0" * 64, "TIMESTAMP_INVALID"),
        ("١٧٩٥٠٠٠٠٠٠", "sha256=" + "0" * 64, "TIMESTAMP_INVALID"),
        ("9" * 13, "sha256=" + "0" * 64, "TIMESTAMP_INVALID"),
        ("2026-11-24T18:03:12Z", "sha256=" + "0" * 64, "TIMESTAMP_INVALID"),
        (str(NOW), "0" * 64, "SIGNATURE_MALFORMED"),
        (str(NOW), "sha1=" + "0" * 40, "SIGNATURE_MALFORMED"),
        (str(NOW), "sha256=" + "0" * 63, "SIGNATURE_MALFORMED"),
        (str(NOW), "sha256=" + "g" * 64, "SIGNATURE_MALFORMED"),
        (str(NOW), "t=1795000000,v1=" + "0" * 64, "SIGNATURE_MALFORMED"),
        (str(NOW), "sha256=" + "0" * 64, "SIGNATURE_INVALID"),
    ],
)
def test_bad_headers_get_stable_codes(
    timestamp: str | None, signature: str | None, code: str
) -> None:
    assert _code(timestamp=timestamp, signature=signature) == code


def test_tampered_body_or_timestamp_is_refused() -> None:
    signature = sign(CURRENT, str(NOW), BODY)
    assert _code(timestamp=str(NOW), signature=signature, body=BODY + b" ") == ("SIGNATURE_INVALID")
    assert _code(timestamp=str(NOW - 1), signature=signature) == "SIGNATURE_INVALID"


def test_uppercase_hex_and_surrounding_space_are_tolerated() -> None:
    signature = sign(CURRENT, str(NOW), BODY).upper().replace("SHA256=", "sha256=")
    assert _verify(f" {NOW} ", f"  {signature} ") == ACTIVE[0]


def test_several_signatures_in_one_header_any_may_match() -> None:
    good = sign(PREVIOUS, str(NOW), BODY)
    wrong = sign(RETIRED, str(NOW), BODY)
    assert _verify(str(NOW), f"{wrong}, {good}") == ACTIVE[1]
    assert _verify(str(NOW), f"{good} {wrong}") == ACTIVE[1]
    too_many = ",".join([wrong] * MAX_SIGNATURES + [good])
    assert _code(timestamp=str(NOW), signature=too_many) == "SIGNATURE_MALFORMED"


def test_secret_value_never_appears_in_its_repr() -> None:
    assert CURRENT not in repr(ACTIVE[0])
    assert CURRENT not in str(ACTIVE[0])


@settings(max_examples=200, deadline=None)
@given(
    secret=st.text(min_size=1, max_size=64),
    body=st.binary(max_size=2048),
    offset=st.integers(min_value=-300, max_value=300),
)
def test_any_body_signed_with_an_active_secret_verifies(
    secret: str, body: bytes, offset: int
) -> None:
    ts = str(NOW + offset)
    assert _verify(ts, sign(secret, ts, body), body=body, secrets=[Secret.from_text(secret)])


@settings(max_examples=200, deadline=None)
@given(body=st.binary(min_size=1, max_size=512), data=st.data())
def test_any_flipped_bit_in_the_body_is_refused(body: bytes, data: st.DataObject) -> None:
    signature = sign(CURRENT, str(NOW), body)
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    flipped = bytearray(body)
    flipped[index] ^= 1 << bit
    assert _code(timestamp=str(NOW), signature=signature, body=bytes(flipped)) == (
        "SIGNATURE_INVALID"
    )
