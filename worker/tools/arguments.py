"""Argument types the sub-commands share: times and log offsets, and the
choice of log entries a re-drive takes."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime


def iso_time(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text}") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def offset(text: str) -> str:
    parts = text.split(":")
    if len(parts) > 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected N or PARTITION:N, got {text}")
    return text


def entry_choice(parser: argparse.ArgumentParser, one: str, every: str) -> None:
    """`--offset P:N` (repeatable) or `--all`: which log entries to re-drive."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--offset", action="append", type=offset, metavar="P:N", help=one)
    which.add_argument("--all", action="store_true", help=every)
