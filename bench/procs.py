"""Child processes of the benchmark: the service's own entry points
(`python -m worker <role>`), the baselines and the load generators. Each is
stopped by its own pid (SIGTERM, then SIGKILL), never by name."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from worker.config import Settings, settings_env

REPO = Path(__file__).resolve().parents[1]
SECRET = "whsec_bench_0123456789abcdef"  # noqa: S105 - a throwaway benchmark secret

_RUNNING: set[Child] = set()
# Resident memory of every child, recorded when it is stopped (VmRSS then)
# or seen to exit (its VmHWM as last read); a stage's run collects and
# clears it (take_memory).
_MEMORY: list[dict[str, Any]] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a role process of this stage reads its settings from."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(settings_env(settings))
    env.update(
        LISTEN_PORT=str(free_port()),
        API_PORT=str(free_port()),
        OPS_PORT=str(free_port()),
    )
    env.update(extra)
    return env


class Child:
    """One child process with its output in a log file."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log_dir: Path,
        cwd: Path = REPO,
    ) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.cwd = cwd
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.time() just before spawning
        self.role = args[3] if args[1:3] == ["-m", "worker"] and len(args) > 3 else None
        self.memory: dict[str, Any] | None = None
        self._peak: float | None = None  # VmHWM, MiB, as last read

    def start(self) -> None:
        log = self.log_path.open("wb")
        self.started_at = time.time()
        self.memory = None
        self._peak = None
        self.proc = subprocess.Popen(  # noqa: S603
            self.args, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        _RUNNING.add(self)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def exited(self) -> int | None:
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is not None:
            # Gone by itself (or killed): its peak as last read while it ran.
            self._record(None, self._peak)
        return code

    def _read_memory(self) -> float | None:
        """VmRSS now, in MiB, from /proc; keeps VmHWM (the peak so far).
        Not wait4's ru_maxrss: on Linux it counts the parent's memory the
        child had before exec, the bench's own."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        rss = fields.get("VmRSS", "").split()
        peak = fields.get("VmHWM", "").split()
        if peak:
            self._peak = int(peak[0]) / 1024
        return int(rss[0]) / 1024 if rss else None

    def _record(self, rss_mib: float | None, peak_mib: float | None) -> None:
        if self.memory is not None or (rss_mib is None and peak_mib is None):
            return
        self.memory = {
            "name": self.name,
            "role": self.role,
            "pid": self.pid,
            "rss_mib": None if rss_mib is None else round(rss_mib, 1),
            "peak_rss_mib": None if peak_mib is None else round(peak_mib, 1),
            "seconds": round(time.time() - self.started_at, 1),
        }
        _MEMORY.append(self.memory)

    def tail(self, lines: int = 30) -> str:
        """The log's last lines, its very last one first (the error, usually)."""
        if not self.log_path.exists():
            return ""
        text = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        if not text:
            return ""
        return f"[{self.name}: {text[-1][:300]}]\n" + "\n".join(text[-lines:])

    async def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        polls = 0
        while time.monotonic() < deadline:
            if polls % 5 == 0:  # the peak so far, every ~0.1 s
                self._read_memory()
            polls += 1
            code = self.exited()
            if code is not None:
                _RUNNING.discard(self)
                return code
            await asyncio.sleep(0.02)
        raise TimeoutError(f"{self.name} still running after {timeout:.0f} s")

    async def stop(self, grace: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.exited() is None:
            rss = self._read_memory()
            self._record(rss, self._peak)
            self.proc.send_signal(signal.SIGTERM)
            try:
                await self.wait_exit(grace)
            except TimeoutError:
                self.proc.kill()
                await self.wait_exit(10)
        _RUNNING.discard(self)

    async def wait_http(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.exited() is not None:
                    raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError(
            f"{self.name} not answering {url} within {timeout:.0f} s:\n{self.tail()}"
        )


def worker_role(
    name: str, role: str, env: dict[str, str], log_dir: Path, root: Path = REPO
) -> Child:
    """`python -m worker ROLE`, run from `root`: the work tree, or a snapshot
    of a commit (--worker-rev), whose `worker` package then comes first."""
    return Child(name, [sys.executable, "-m", "worker", role], env, log_dir, cwd=root)


def python_module(name: str, module: str, argv: list[str], log_dir: Path) -> Child:
    env = dict(os.environ)
    return Child(name, [sys.executable, "-m", module, *argv], env, log_dir)


@contextlib.asynccontextmanager
async def running(*children: Child) -> AsyncIterator[tuple[Child, ...]]:
    """Start the children; stop every one of them on the way out."""
    try:
        for child in children:
            child.start()
        yield children
    finally:
        for child in reversed(children):
            await child.stop()


def take_memory() -> list[dict[str, Any]]:
    """The memory recorded for the children that stopped since the last
    call, in the order they stopped."""
    taken = list(_MEMORY)
    _MEMORY.clear()
    return taken


def stop_all_sync() -> None:
    """Last resort at interpreter exit: SIGKILL whatever we started and is alive."""
    for child in list(_RUNNING):
        if child.proc is not None and child.proc.poll() is None:
            child.proc.kill()
    _RUNNING.clear()
