"""tests/ports.py: a claimed port is free, and stays out of every other
claim (this suite's or another checkout's) while its claimant lives."""

from __future__ import annotations

import socket

import pytest

from tests import ports


def _only(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    monkeypatch.setattr(ports, "LOW", port)
    monkeypatch.setattr(ports, "HIGH", port + 2)  # randrange(port, port + 1)


def _spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_claims_are_free_and_never_overlap() -> None:
    taken: set[int] = set()
    for _ in range(20):
        base = ports.claim(6)
        block = set(range(base, base + 6))
        assert not block & taken
        assert all(ports._bindable(p) for p in block)
        taken |= block


def test_a_port_someone_listens_on_is_not_claimed(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        _only(monkeypatch, server.getsockname()[1])
        with pytest.raises(RuntimeError, match="no 1 consecutive free ports"):
            ports.claim()


def test_a_claimed_port_is_not_claimed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # flock conflicts between two opens of the file even in one process, as
    # between the suites of two checkouts.
    _only(monkeypatch, _spare_port())
    first = ports.claim()
    with pytest.raises(RuntimeError):
        ports.claim()
    assert ports._bindable(first)  # claimed, not bound: the server binds it


def test_a_set_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SOME_PORT", "25432")
    assert ports.port("TEST_SOME_PORT", 2) == "25432"
    monkeypatch.delenv("TEST_SOME_PORT")
    assert 20000 <= int(ports.port("TEST_SOME_PORT", 2)) < 32000
