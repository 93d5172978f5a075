"""Container health check: GET /healthz of the role running in this container.

Used by the image's HEALTHCHECK (and by compose). Standard library only, since
the slim base has no curl. Exit 0 when the endpoint answers 2xx, 1 otherwise.

    python /app/healthcheck.py [URL]

The URL is, in order: the first argument, $HEALTHCHECK_URL, or derived from
the role of the `python -m worker <role>` process in this container:
receiver and serve answer on LISTEN_PORT (8080), api on API_PORT (8081),
consumer, relay and scheduler on OPS_PORT (9090). One-shot commands
(migrate, replay, dlq, ...) have nothing to check and count as healthy.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

# role -> (environment variable holding its port, default port)
HTTP_PORTS: dict[str, tuple[str, int]] = {
    "serve": ("LISTEN_PORT", 8080),
    "receiver": ("LISTEN_PORT", 8080),
    "api": ("API_PORT", 8081),
}
OPS_PORT: tuple[str, int] = ("OPS_PORT", 9090)
LONG_RUNNING = frozenset({"serve", "receiver", "api", "consumer", "relay", "scheduler"})
TIMEOUT_SECONDS = 3.0


def worker_role(argv: list[str]) -> str | None:
    """The role in `... -m worker <role> ...`, or None for another command."""
    for i in range(len(argv) - 2):
        if argv[i] == "-m" and argv[i + 1] == "worker":
            return argv[i + 2]
    return None


def running_role(proc: Path = Path("/proc")) -> str | None:
    """Role of the first `python -m worker` process found (PID 1 unless an init runs)."""
    try:
        pids = sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit())
    except OSError:
        return None
    for pid in pids:
        try:
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue
        role = worker_role([part.decode(errors="replace") for part in raw.split(b"\0") if part])
        if role is not None:
            return role
    return None


def health_url(role: str | None, env: Mapping[str, str]) -> str | None:
    """URL of /healthz for that role, or None when there is nothing to check."""
    if role is not None and role not in LONG_RUNNING:
        return None
    variable, default = HTTP_PORTS.get(role or "", OPS_PORT)
    port = env.get(variable) or str(default)
    return f"http://127.0.0.1:{port}/healthz"


def check(url: str, timeout: float = TIMEOUT_SECONDS) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            status: int = response.status
            return 200 <= status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    environ = os.environ if env is None else env
    url = args[0] if args else environ.get("HEALTHCHECK_URL") or health_url(running_role(), environ)
    if url is None:
        return 0
    if check(url):
        return 0
    print(f"unhealthy: {url}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
