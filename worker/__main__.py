"""Entry point: `python -m worker serve|receiver|api|consumer|relay|migrate|...`."""

from __future__ import annotations

import sys

from worker import loop
from worker.tools import cli


def main(argv: list[str] | None = None) -> int:
    args = cli.parser().parse_args(argv)
    if args.command in cli.OFFLINE:
        return cli.OFFLINE[args.command](args)
    settings = cli.configured_settings()
    if settings is None:
        return 2
    if args.command in cli.COMMANDS:
        return loop.run(cli.COMMANDS[args.command](settings, args), settings.event_loop)
    from worker.runtime import ROLES, main_async

    serve = args.command == "serve"

    async def prepare() -> None:
        await cli.migrate(settings, args)

    roles = ROLES if serve else (args.command,)
    loop.run(main_async(settings, roles, prepare if serve else None), settings.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
