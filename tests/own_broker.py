"""A single-node broker of a test module's own, which the module may stop,
kill and start again on the same port (the session's broker is shared)."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.ports import port

KAFKA_SCRIPT = REPO / "deploy" / "local" / "kafka.sh"


class OwnBroker:
    def __init__(self, name: str, port_variable: str) -> None:
        self.stack_dir = REPO / ".stack" / name
        self.port_variable = port_variable

    @functools.cached_property
    def port(self) -> str:
        # Claimed once: the broker restarts on the port it was stopped on.
        return port(self.port_variable, 2)

    def run(self, action: str) -> str:
        """`kafka.sh start|stop`; returns the last line printed (start: the
        bootstrap address)."""
        done = subprocess.run(
            [str(KAFKA_SCRIPT), action],
            env=dict(os.environ, STACK_DIR=str(self.stack_dir), KAFKA_PORT=self.port),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"kafka.sh {action} failed: {done.stderr[-2000:]}", pytrace=False)
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    @property
    def data_dir(self) -> Path:
        return self.stack_dir / f"kafka-{self.port}"

    def pid(self) -> int:
        return int((self.data_dir / "broker.pid").read_text().strip())

    @contextlib.contextmanager
    def running(self) -> Iterator[str]:
        """Started for a module, its bootstrap address; stopped and removed after."""
        bootstrap = self.run("start")
        try:
            yield bootstrap
        finally:
            self.run("stop")
            shutil.rmtree(self.stack_dir, ignore_errors=True)
