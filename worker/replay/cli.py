"""Operator sub-commands over the logs: `replay`, `reprocess`, `dlq list|replay`.
Exit codes: 0 done (no differences), 1 differences found, 2 refused or failed."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from worker.config import Settings

COMMANDS = ("replay", "reprocess", "dlq")


def _iso_time(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text}") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _offset(text: str) -> str:
    parts = text.split(":")
    if len(parts) > 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected N or PARTITION:N, got {text}")
    return text


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="fold the events topic into a database; --verify diffs a rebuild against live",
    )
    p.add_argument("--target-database-url", help="database to fold into (created if missing)")
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--from-offset",
        action="append",
        type=_offset,
        metavar="N|P:N",
        help="start every partition at offset N, or partition P at N (repeatable)",
    )
    start.add_argument(
        "--from-time", type=_iso_time, metavar="ISO", help="start at this time in every partition"
    )
    p.add_argument(
        "--batch-events",
        type=int,
        # Each transaction costs a dozen round trips whatever its size; on a
        # busy machine their latency, not the work, bounded 10,000.
        default=25_000,
        metavar="N",
        help="events folded per transaction (default 25000)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="rebuild from the beginning into a scratch database and diff it against live; "
        "exit 1 on any difference",
    )

    p = sub.add_parser(
        "reprocess",
        help="decide the command log again into a scratch database and diff outcomes with live",
    )
    p.add_argument(
        "--experience",
        action="append",
        default=[],
        metavar="ID",
        help="only these experiences' commands (and every stock level); repeatable",
    )

    p = sub.add_parser("dlq", help="parked commands: list, or re-inject after a fix")
    dlq = p.add_subparsers(dest="dlq_command", required=True)
    dlq.add_parser("list", help="every parked command with its origin and reason")
    r = dlq.add_parser("replay", help="re-inject parked commands into the commands topic")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--offset",
        action="append",
        type=_offset,
        metavar="P:N",
        help="a parked command by its DLQ coordinates from `dlq list` (N alone if unambiguous)",
    )
    which.add_argument("--all", action="store_true", help="every parked command")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.command == "replay":
        return await _replay(settings, args)
    if args.command == "reprocess":
        return await _reprocess(settings, args)
    return await _dlq(settings, args)


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from worker.replay.rebuild import ReplayError, replay_into, verify
    from worker.replay.source import Start

    try:
        if args.verify:
            if args.from_offset or args.from_time or args.target_database_url:
                print(
                    "replay --verify always rebuilds the whole log into a scratch database; "
                    "it takes no --from-* or --target-database-url",
                    file=sys.stderr,
                )
                return 2
            outcome = await verify(settings, batch_events=max(1, args.batch_events))
            print(outcome.replay.summary().replace("replay:", "rebuild:", 1))
            if outcome.unpublished:
                print(
                    f"warning: {outcome.unpublished} committed event(s) not yet published; "
                    "rows they change will differ until the relay catches up"
                )
            for report in outcome.reports:
                for diff in report.diffs:
                    print(diff.render())
            counted = ", ".join(f"{r.table} {r.compared}" for r in outcome.reports)
            if outcome.differences:
                by_table = ", ".join(
                    f"{r.table} {len(r.diffs)}" for r in outcome.reports if r.diffs
                )
                print(f"{outcome.differences} row(s) differ ({by_table}); compared {counted}")
                return 1
            print(f"no differences; compared {counted}")
            return 0
        if not args.target_database_url:
            print(
                "replay needs --target-database-url (it never folds into the live database)",
                file=sys.stderr,
            )
            return 2
        start = Start.parse(args.from_offset, args.from_time)
        result = await replay_into(
            settings, args.target_database_url, start, batch_events=max(1, args.batch_events)
        )
    except ReplayError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    for warning in result.warnings:
        print(f"warning: {warning}")
    return 0


async def _reprocess(settings: Settings, args: argparse.Namespace) -> int:
    from worker.replay.source import LogError
    from worker.reprocess import render, reprocess

    try:
        result = await reprocess(settings, args.experience or None)
    except LogError as exc:
        print(f"reprocess: {exc}", file=sys.stderr)
        return 2
    for line in render(result):
        print(line)
    return 1 if result.differences else 0


async def _dlq(settings: Settings, args: argparse.Namespace) -> int:
    from worker import dlq
    from worker.replay.source import LogError

    try:
        if args.dlq_command == "list":
            return await dlq.list_parked(settings)
        return await dlq.replay_parked(settings, args.offset or [], args.all)
    except LogError as exc:
        print(f"dlq: {exc}", file=sys.stderr)
        return 2
