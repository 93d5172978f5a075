"""The command line: every sub-command's parser, the settings the commands
run with, and the dispatch of the operator tools (`worker.runtime` runs
the roles)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from worker.adapters import postgres
from worker.config import ConfigError, Settings, load_settings
from worker.logs import configure_logging
from worker.tools import dlq, operator, quarantine, reconcile, replay, reprocess, simulate

Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]

ROLES_HELP = {
    "serve": "run every role in one process (migrates first)",
    "receiver": "Fanfare webhook receiver (HTTP)",
    "api": "storefront/checkout/operator HTTP API",
    "consumer": "apply inbound commands to PostgreSQL",
    "relay": "publish the outbox to the events topic",
    "scheduler": "publish expiry commands for holds past expires_at",
}


async def migrate(settings: Settings, args: argparse.Namespace) -> int:
    await postgres.migrate(settings.database_url)
    return 0


# Sub-commands that need no settings, and those that run with them.
OFFLINE: dict[str, Callable[[argparse.Namespace], int]] = {"sign": operator.sign_command}
COMMANDS: dict[str, Command] = {
    "migrate": migrate,
    "reconcile": reconcile.command,
    "put-stock": operator.put_command,
    "put-cart": operator.put_command,
    "replay": replay.command,
    "reprocess": reprocess.command,
    "simulate": simulate.command,
    "dlq": dlq.command,
    "quarantine": quarantine.command,
}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fanfare-reservations", description="Fanfare cart-reservation worker"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for role, text in ROLES_HELP.items():
        sub.add_parser(role, help=text)
    reconcile.add_parser(sub)
    sub.add_parser("migrate", help="apply pending SQL migrations")
    operator.add_parsers(sub)
    replay.add_parser(sub)
    reprocess.add_parser(sub)
    simulate.add_parser(sub)
    dlq.add_parser(sub)
    quarantine.add_parser(sub)
    return parser


def configured_settings() -> Settings | None:
    """The settings from the environment, with logging configured by them;
    None, after saying why on stderr, when they are not valid."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None
    configure_logging(settings.log_level, settings.log_format)
    return settings
