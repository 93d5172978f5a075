"""Loopback ports for the servers the tests start themselves: the session's
PostgreSQL and broker, and the servers the fault modules stop, crash and
restart. A port variable set in the environment is used as it is; unset, a
block of free ports is claimed for this process, so suites of two checkouts
(or two worktrees) running at once never meet on a port, whatever either
chose."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import tempfile
from pathlib import Path

# Below the kernel's ephemeral range (32768 and up by default): outgoing
# connections take their local ports from there, and one could take a port
# between its claim here and the server's bind.
LOW, HIGH = 20000, 32000
# A claim is a lock on a file named after the port, held while this process
# lives (the kernel drops it at exit, even at SIGKILL): a server bound later
# than our check cannot be seen by binding, another suite's claim can.
LOCK_DIR = Path(tempfile.gettempdir()) / "fanfare-test-ports"
_held: list[int] = []


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        # As the servers bind: a connection of an earlier server in
        # TIME_WAIT does not stop them, a listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _lock(port: int) -> int | None:
    LOCK_DIR.mkdir(exist_ok=True)
    fd = os.open(LOCK_DIR / str(port), os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def claim(count: int = 1) -> int:
    """The first of `count` consecutive free ports, claimed until exit."""
    pick = random.SystemRandom()  # whatever a test seeded the module with
    for _ in range(500):
        base = pick.randrange(LOW, HIGH - count)
        fds: list[int] = []
        for port in range(base, base + count):
            fd = _lock(port)
            if fd is None:
                break
            fds.append(fd)
            if not _bindable(port):
                break
        else:
            _held.extend(fds)
            return base
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
    raise RuntimeError(f"no {count} consecutive free ports in {LOW}-{HIGH}")


def port(variable: str, count: int = 1) -> str:
    """The variable's value if set, else the first of `count` claimed ports
    (a broker's controller listens on the port after its own)."""
    return os.environ.get(variable) or str(claim(count))
