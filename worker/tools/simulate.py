"""`simulate`: a recorded drop decided again under other experience
settings, in scratch databases, compared with what happened.
Exit codes: 0 done, 2 refused or failed (reason on stderr)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

import orjson

from worker.config import Settings
from worker.domain.model import ExperienceSettings, MultiItemPolicy, Strategy
from worker.domain.outcome import Range
from worker.domain.scenario import RECORDED, Scenario, ScenarioError, parse, scenario
from worker.replay.source import LogError
from worker.simulate.compare import compare
from worker.simulate.runner import Plan, SimulationError
from worker.simulate.table import as_json, render
from worker.tools.arguments import iso_time

# The override flags, named as the overrides they set.
FLAGS = ("strategy", "window", "buffer", "pool_size", "backfill", "multi_item")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="decide a recorded drop again under other settings and compare outcomes",
        description="Decide the recorded commands again in scratch databases, once per "
        "scenario, and print the recorded outcome beside each simulated one. The override "
        "flags make one scenario; --scenario adds more; with neither, the recorded settings "
        "are decided again (a check that the simulation is faithful).",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "experience", nargs="?", metavar="EXPERIENCE_ID", help="the drop to simulate"
    )
    which.add_argument("--all", action="store_true", help="every experience in the log")
    p.add_argument(
        "--from", dest="since", type=iso_time, metavar="ISO", help="count from this time"
    )
    p.add_argument(
        "--to", dest="until", type=iso_time, metavar="ISO", help="decide and count up to this time"
    )
    p.add_argument("--strategy", choices=[s.value for s in Strategy])
    p.add_argument("--window", metavar="SECONDS", help="hold window (windowSeconds)")
    p.add_argument("--buffer", metavar="SECONDS", help="grace after the window (bufferSeconds)")
    p.add_argument("--pool-size", metavar="N", help="units the pool hands out per product")
    p.add_argument("--backfill", choices=["on", "off"], help="freed units to refused lines")
    p.add_argument("--multi-item", choices=[m.value for m in MultiItemPolicy])
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME=VALUE,...",
        help="one more scenario, e.g. 'strategy=pool,pool_size=500' (names as the flags, "
        "with _), or 'recorded'; repeatable",
    )
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    given = [(name, str(getattr(args, name))) for name in FLAGS if getattr(args, name) is not None]
    chosen = [scenario(given)] if given else []
    chosen += [parse(spec) for spec in args.scenario]
    return chosen or [RECORDED]


def plan(settings: Settings, args: argparse.Namespace) -> Plan:
    now = datetime.now(UTC)
    horizon = now if args.until is None else min(args.until, now)
    return Plan(
        experiences=None if args.all else frozenset([args.experience]),
        counted=Range(args.since, args.until),
        until=args.until,
        horizon=horizon,
        defaults=ExperienceSettings(
            window_seconds=settings.reservation_window_seconds,
            buffer_seconds=settings.reservation_buffer_seconds,
        ),
    )


async def command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        chosen = scenarios(args)
        comparison = await compare(settings, plan(settings, args), chosen)
    except (ScenarioError, SimulationError, LogError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps(as_json(comparison), option=orjson.OPT_INDENT_2).decode())
    else:
        for line in render(comparison):
            print(line)
    return 0
