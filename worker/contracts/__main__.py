"""`python -m worker.contracts [--check] [--dir DIR]`: write the Kafka
contracts into schemas/, or list the stale ones (exit 1)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from worker.contracts.files import REGENERATE, SCHEMAS_DIR, stale_files, write


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.contracts",
        description="Generate the Kafka message JSON Schemas and AsyncAPI document.",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 listing stale files"
    )
    parser.add_argument(
        "--dir", type=Path, default=SCHEMAS_DIR, help=f"output folder (default {SCHEMAS_DIR})"
    )
    args = parser.parse_args(argv)
    directory: Path = args.dir
    if args.check:
        stale = stale_files(directory)
        if stale:
            print(f"stale contract files in {directory}:", file=sys.stderr)
            for line in stale:
                print(f"  {line}", file=sys.stderr)
            print(REGENERATE, file=sys.stderr)
            return 1
        print(f"contracts up to date in {directory}")
        return 0
    changed = write(directory)
    for relative in changed:
        print(f"updated {directory / relative}")
    print(f"contracts in {directory}: {len(changed)} file(s) changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
