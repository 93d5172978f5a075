"""What the numbers were measured on."""

from __future__ import annotations

import asyncio
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg

from bench.procs import REPO


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def _kafka_version() -> str:
    libs = REPO / ".stack" / "kafka-libs"
    for jar in sorted(libs.glob("kafka_2.13-*.jar")) if libs.exists() else []:
        found = re.match(r"kafka_2\.13-([\d.]+)\.jar$", jar.name)
        if found:
            return found.group(1)
    pom = REPO / "deploy" / "kafka" / "pom.xml"
    if pom.exists():
        found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text())
        if found:
            return found.group(1) + " (pom)"
    return "unknown"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(args[0]) or args[0]
    return subprocess.run(  # noqa: S603
        [exe, *args[1:]], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
    )


def _git() -> dict[str, Any]:
    def run(*args: str) -> str:
        return _run("git", *args).stdout.strip()

    dirty = run("status", "--porcelain", "--", "worker", "sql")
    return {
        "commit": run("rev-parse", "HEAD"),
        "subject": run("log", "-1", "--format=%s"),
        "worker_or_sql_uncommitted_changes": bool(dirty),
    }


def measured_commit(worker_rev: str | None, folder: Path) -> dict[str, Any]:
    """The commit whose service the run measured, and whether the tree it
    ran from (`folder`) had uncommitted changes; a --worker-rev snapshot
    never has."""

    def git(*args: str) -> str:
        return _run("git", "-C", str(folder), *args).stdout.strip()

    if worker_rev:
        sha = git("rev-parse", "--verify", f"{worker_rev}^{{commit}}")
        return {"commit": sha, "dirty": False, "from": f"--worker-rev {worker_rev}"}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    source = "work tree" if folder == REPO else f"folder {folder}"
    return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": bool(dirty), "from": source}


def _pip_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


async def describe(
    database_url: str, kafka_bootstrap: str, own_postgres: bool, own_kafka: bool
) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        pg = {
            "version": await conn.fetchval("SHOW server_version"),
            "fsync": await conn.fetchval("SHOW fsync"),
            "synchronous_commit": await conn.fetchval("SHOW synchronous_commit"),
            "shared_buffers": await conn.fetchval("SHOW shared_buffers"),
            "track_commit_timestamp": await conn.fetchval("SHOW track_commit_timestamp"),
        }
    finally:
        await conn.close()
    java = (await asyncio.to_thread(_run, "java", "-version")).stderr.splitlines()
    return {
        "nproc": os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "loadavg_at_start": _loadavg(),
        "python": sys.version.split()[0],
        "packages": {
            name: _pip_version(name)
            for name in ("aiohttp", "aiokafka", "asyncpg", "pydantic", "orjson", "uvloop")
        },
        "postgresql": pg,
        "kafka": {
            "version": _kafka_version(),
            "version_note": None if own_kafka else "of the local jars; the broker was given",
            "bootstrap": kafka_bootstrap,
            "java": java[0] if java else None,
        },
        "stack": {
            "postgresql": "the benchmark's own (.stack/bench)" if own_postgres else "given",
            "kafka": "the benchmark's own (.stack/bench)" if own_kafka else "given",
        },
        "git": _git(),
    }
