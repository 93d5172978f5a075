"""Argument types the sub-commands share: times and log offsets."""

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
