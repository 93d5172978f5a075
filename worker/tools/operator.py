"""Operator commands that need no running service: sign a webhook body, and
write stock or a cart through the command log (never into tables)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from worker.adapters import kafka
from worker.config import Settings
from worker.domain import ids
from worker.domain.commands import CommandBase, CommandSource, PutCart, SetStock, encode_command
from worker.domain.model import CartLine
from worker.fanfare.signature import sign


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sign", help="print curl -H options signing a webhook body file")
    p.add_argument("body", type=Path, help="file with the exact JSON body to send")
    p.add_argument("--secret", help="signing secret (default: first of FANFARE_WEBHOOK_SECRET)")
    p.add_argument("--timestamp", type=int, help="Unix seconds (default: now)")

    p = sub.add_parser("put-stock", help="set a stock row's on-hand level (via the log)")
    p.add_argument("--product", required=True)
    p.add_argument("--variant")
    p.add_argument("--on-hand", type=int, required=True)

    p = sub.add_parser("put-cart", help="replace a consumer's cart (via the log)")
    p.add_argument("--experience", required=True)
    p.add_argument("--consumer", required=True)
    p.add_argument(
        "--item",
        action="append",
        default=[],
        metavar="PRODUCT[:VARIANT]=QTY",
        help="a cart line; repeat for several",
    )


def sign_command(args: argparse.Namespace) -> int:
    secret = args.secret or os.environ.get("FANFARE_WEBHOOK_SECRET", "").split(",")[0].strip()
    if not secret:
        print("sign: give --secret or set FANFARE_WEBHOOK_SECRET", file=sys.stderr)
        return 2
    body = args.body.read_bytes()
    ts = str(args.timestamp or int(time.time()))
    # No spaces, so the output can be spliced into a curl command unquoted.
    print(f"-H X-Fanfare-Timestamp:{ts} -H X-Fanfare-Signature:{sign(secret, ts, body)}")
    return 0


def _parse_item(text: str) -> CartLine:
    target, _, qty = text.rpartition("=")
    product, _, variant = target.partition(":")
    return CartLine(product_id=product, variant_id=variant or None, quantity=int(qty))


def _operator_common() -> dict[str, object]:
    key = f"operator:{uuid.uuid4()}"
    at = datetime.now(UTC)
    return {
        "command_id": ids.command_id("api", key),
        "occurred_at": at,
        "received_at": at,
        "source": CommandSource(kind="api", source_id=key),
    }


def build_operator_command(args: argparse.Namespace) -> CommandBase:
    if args.command == "put-stock":
        return SetStock(
            **_operator_common(),
            product_id=args.product,
            variant_id=args.variant,
            on_hand=args.on_hand,
        )
    return PutCart(
        **_operator_common(),
        experience_id=args.experience,
        consumer_id=args.consumer,
        items=[_parse_item(item) for item in args.item],
    )


async def put_command(settings: Settings, args: argparse.Namespace) -> int:
    """`put-stock` and `put-cart`."""
    await produce_one(settings, build_operator_command(args))
    return 0


async def produce_one(settings: Settings, command: CommandBase) -> None:
    await kafka.ensure_topics(settings)
    producer = kafka.durable_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.commands_topic,
            encode_command(command),
            key=command.partition_key().encode("utf-8"),
        )
    finally:
        await producer.stop()
    print(f"produced {getattr(command, 'type', '')} {command.command_id}")
