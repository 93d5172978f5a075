"""`replay`: fold the events topic into a database, or with `--verify`
rebuild it into a scratch database and diff that against live.
Exit codes: 0 done (no differences), 1 differences found, 2 refused or failed."""

from __future__ import annotations

import argparse
import sys

from worker.config import Settings
from worker.replay.rebuild import ReplayError, Verification, replay_into, verify
from worker.replay.source import Start
from worker.tools.arguments import iso_time, offset


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="fold the events topic into a database; --verify diffs a rebuild against live",
    )
    p.add_argument("--target-database-url", help="database to fold into (created if missing)")
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--from-offset",
        action="append",
        type=offset,
        metavar="N|P:N",
        help="start every partition at offset N, or partition P at N (repeatable)",
    )
    start.add_argument(
        "--from-time", type=iso_time, metavar="ISO", help="start at this time in every partition"
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


async def command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if args.verify:
            return await _verify(settings, args)
        return await _replay_into(settings, args)
    except ReplayError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2


async def _verify(settings: Settings, args: argparse.Namespace) -> int:
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
    return _report(outcome)


def _report(outcome: Verification) -> int:
    for report in outcome.reports:
        for diff in report.diffs:
            print(diff.render())
    counted = ", ".join(f"{r.table} {r.compared}" for r in outcome.reports)
    if outcome.differences:
        by_table = ", ".join(f"{r.table} {len(r.diffs)}" for r in outcome.reports if r.diffs)
        print(f"{outcome.differences} row(s) differ ({by_table}); compared {counted}")
        return 1
    print(f"no differences; compared {counted}")
    return 0


async def _replay_into(settings: Settings, args: argparse.Namespace) -> int:
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
    print(result.summary())
    for warning in result.warnings:
        print(f"warning: {warning}")
    return 0
