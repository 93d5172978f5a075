"""`--worker-rev REV`: run the service from a commit instead of the work tree.

The commit's `worker/` and `sql/` are extracted (`git archive`, which reads
the repository and changes nothing in it) into .stack/bench/worker-<sha>/,
git-ignored; service processes then start there, so `python -m worker`
imports that commit's package, and each stage's database is migrated with
that commit's migrations. Useful when the work tree is mid-edit, and to
measure two commits with the same harness."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

from bench.procs import REPO

SNAPSHOTS = REPO / ".stack" / "bench"


def _git(*args: str) -> bytes:
    exe = shutil.which("git") or "git"
    done = subprocess.run(  # noqa: S603
        [exe, *args], cwd=REPO, capture_output=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout


def snapshot(rev: str) -> tuple[Path, str]:
    """The snapshot folder for `rev` (made if missing) and its full sha."""
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}").decode().strip()
    target = SNAPSHOTS / f"worker-{sha[:12]}"
    if not (target / ".complete").exists():
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        blob = _git("archive", "--format=tar", sha, "worker", "sql")
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(target, filter="data")
        (target / ".complete").write_text(sha + "\n")
    return target, sha
