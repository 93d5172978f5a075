"""Entry point: `python -m worker serve|receiver|api|consumer|relay|migrate|...`."""

from __future__ import annotations

import argparse
import sys

from worker import loop
from worker.config import ConfigError, load_settings
from worker.logs import configure_logging
from worker.operator import add_parsers, build_operator_command, produce_one, sign_command
from worker.replay import cli as log_tools


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fanfare-reservations", description="Fanfare cart-reservation worker"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run every role in one process (migrates first)")
    sub.add_parser("receiver", help="Fanfare webhook receiver (HTTP)")
    sub.add_parser("api", help="storefront/checkout/operator HTTP API")
    sub.add_parser("consumer", help="apply inbound commands to PostgreSQL")
    sub.add_parser("relay", help="publish the outbox to the events topic")
    sub.add_parser("scheduler", help="publish expiry commands for holds past expires_at")
    rec = sub.add_parser("reconcile", help="report (and --repair) counter drift; exit 1 on drift")
    rec.add_argument("--repair", action="store_true", help="set drifted counters right")
    sub.add_parser("migrate", help="apply pending SQL migrations")
    add_parsers(sub)
    log_tools.add_parsers(sub)
    return parser


async def run_reconcile(dsn: str, repair: bool) -> int:
    import asyncpg

    from worker.reconcile import reconcile, render

    conn = await asyncpg.connect(dsn)
    try:
        drift = await reconcile(conn, repair)
    finally:
        await conn.close()
    print(render(drift, repaired=repair))
    return 1 if drift else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "sign":
        return sign_command(args)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)

    from worker.adapters.postgres import migrate
    from worker.runtime import ROLES, main_async

    async def do_migrate() -> None:
        await migrate(settings.database_url)

    if args.command == "migrate":
        loop.run(do_migrate(), settings.event_loop)
        return 0
    if args.command == "reconcile":
        return loop.run(run_reconcile(settings.database_url, args.repair), settings.event_loop)
    if args.command in log_tools.COMMANDS:
        return loop.run(log_tools.run(settings, args), settings.event_loop)
    if args.command in ("put-stock", "put-cart"):
        loop.run(produce_one(settings, build_operator_command(args)), settings.event_loop)
        return 0
    roles = ROLES if args.command == "serve" else (args.command,)
    prepare = do_migrate if args.command == "serve" else None
    loop.run(main_async(settings, roles, prepare), settings.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
