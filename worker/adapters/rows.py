"""Rows of the admission and reservation tables, and their set-based
inserts: shared by the batch engine's unit of work and by the replay sink,
which must write exactly the same rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from operator import attrgetter
from typing import Any
from uuid import UUID

import orjson

from worker.adapters.store import Conn
from worker.domain.model import ExperienceSettings

# A consumer in an experience: (experience_id, consumer_id).
Pair = tuple[str, str]


@dataclass
class AdmissionRow:
    grant_digest: str
    experience_id: str
    consumer_id: str
    admitted_at: datetime
    expires_at: datetime
    status: str
    strategy: str
    window_seconds: int
    buffer_seconds: int
    command_id: UUID
    ended_at: datetime | None = None
    end_reason: str | None = None
    order_id: str | None = None
    # Times its expiry was moved by the experience's extensionSeconds.
    extensions: int = 0


@dataclass
class EndingRow:
    command_id: UUID
    experience_id: str
    consumer_id: str
    grant_digest: str | None
    outcome: str
    reason: str
    ended_at: datetime
    order_id: str | None = None
    # A retry: the expiry it follows, and the window it was decided with.
    follows: datetime | None = None
    retry_window_seconds: int | None = None


@dataclass
class ReservationRow:
    id: UUID
    consumer_id: str
    experience_id: str
    grant_digest: str
    product_id: str
    variant_id: str
    quantity: int
    status: str
    created_at: datetime
    expires_at: datetime
    strategy: str
    window_seconds: int
    buffer_seconds: int
    converted_at: datetime | None = None
    order_id: str | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None


def columns(rows: Sequence[Any], names: str) -> list[list[Any]]:
    """Column arrays for `unnest`, one per attribute named."""
    return [[getattr(r, name) for r in rows] for name in names.split()]


def tuple_columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Column arrays for `unnest` from rows as tuples of equal length."""
    return [list(column) for column in zip(*rows, strict=True)]


def by_pair_or_grant_digest_sql(table: str) -> str:
    """The lookup of `table`'s rows (one of ours, never input) by consumer
    pair ($2, $3) or by grant digest ($1): a per-key lateral index probe each,
    UNION ALL (the caller drops the duplicates by key). `OFFSET 0` keeps each
    lateral subquery from being flattened into a join: on tables that grow
    during a drop faster than their statistics, the planner otherwise sorts
    or hashes the whole table on every batch (measured: 200 ms per batch of
    500 admissions at 15k rows, growing with the table), where one index
    probe per key stays flat."""
    return f"""SELECT t.* FROM unnest($2::text[], $3::text[]) AS k(e, c)
               CROSS JOIN LATERAL (SELECT * FROM {table}
                   WHERE experience_id = k.e AND consumer_id = k.c OFFSET 0) t
               UNION ALL
               SELECT t.* FROM unnest($1::text[]) AS g(grant_)
               CROSS JOIN LATERAL (SELECT * FROM {table}
                   WHERE admission_grant = g.grant_ OFFSET 0) t"""


async def by_pair_or_grant_digest(
    conn: Conn, table: str, grant_digests: Iterable[str], pairs: Iterable[Pair]
) -> list[Any]:
    """`table`'s rows for these grant digests or consumer pairs; a row found
    both ways comes twice."""
    digests, ordered = list(grant_digests), sorted(pairs)
    if not digests and not ordered:
        return []
    exps, cons = [p[0] for p in ordered], [p[1] for p in ordered]
    return list(await conn.fetch(by_pair_or_grant_digest_sql(table), digests, exps, cons))


def ending_rows(records: Iterable[Any]) -> list[EndingRow]:
    """Rows of admission_endings as read, each once (by command id)."""
    unique = {r["command_id"]: r for r in records}.values()
    return [
        EndingRow(
            r["command_id"],
            r["experience_id"],
            r["consumer_id"],
            r["admission_grant"],
            r["outcome"],
            r["reason"],
            r["ended_at"],
            r["order_id"],
            r["follows"],
            r["retry_window_seconds"],
        )
        for r in unique
    ]


def _field(column: str) -> str:
    """The row types' attribute for a column: the grant digest is stored as
    `admission_grant`."""
    return "grant_digest" if column == "admission_grant" else column


def _in_field_order(row_type: type, columns: list[str]) -> list[str]:
    """`columns` in the order of `row_type`'s fields, so that a row is built
    from a record positionally (it is, per row loaded, on the hot path)."""
    by_field = {_field(c): c for c in columns}
    return [by_field[f.name] for f in fields(row_type)]


# Each table's columns in COPY order (the records' order), and in the order
# of its row type's fields (a record read into a row).
ADMISSION_COLUMNS = [
    "admission_grant",
    "experience_id",
    "consumer_id",
    "admitted_at",
    "expires_at",
    "status",
    "strategy",
    "window_seconds",
    "buffer_seconds",
    "command_id",
    "ended_at",
    "end_reason",
    "order_id",
    "extensions",
]
_ADMISSION_VALUES = attrgetter(*map(_field, ADMISSION_COLUMNS))
ADMISSION_COLUMNS_BY_FIELD = _in_field_order(AdmissionRow, ADMISSION_COLUMNS)

RESERVATION_COLUMNS = [
    "id",
    "consumer_id",
    "experience_id",
    "admission_grant",
    "product_id",
    "variant_id",
    "quantity",
    "status",
    "created_at",
    "expires_at",
    "converted_at",
    "order_id",
    "ended_at",
    "end_reason",
    "strategy",
    "window_seconds",
    "buffer_seconds",
]
_RESERVATION_VALUES = attrgetter(*map(_field, RESERVATION_COLUMNS))
RESERVATION_COLUMNS_BY_FIELD = _in_field_order(ReservationRow, RESERVATION_COLUMNS)


def admission_records(rows: Iterable[AdmissionRow]) -> list[tuple[Any, ...]]:
    """The rows' values in ADMISSION_COLUMNS order, taken now."""
    return list(map(_ADMISSION_VALUES, rows))


async def copy_admissions(conn: Conn, records: list[tuple[Any, ...]]) -> None:
    """New rows only (no conflict handling): binary COPY, which costs both
    sides about half of an `INSERT ... SELECT FROM unnest` of the same rows."""
    if records:
        await conn.copy_records_to_table("admissions", records=records, columns=ADMISSION_COLUMNS)


async def insert_admissions(conn: Conn, rows: Sequence[AdmissionRow]) -> None:
    await copy_admissions(conn, admission_records(rows))


async def insert_endings(conn: Conn, rows: Sequence[EndingRow]) -> None:
    if not rows:
        return
    await conn.execute(
        """INSERT INTO admission_endings (command_id, experience_id, consumer_id,
               admission_grant, outcome, reason, ended_at, order_id, follows,
               retry_window_seconds)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                $6::text[], $7::timestamptz[], $8::text[], $9::timestamptz[],
                                $10::int[])
           ON CONFLICT DO NOTHING""",
        *columns(
            rows,
            "command_id experience_id consumer_id grant_digest outcome reason ended_at order_id"
            " follows retry_window_seconds",
        ),
    )


async def insert_cart_versions(
    conn: Conn, versions: Sequence[tuple[str, str, datetime, UUID, str]]
) -> None:
    """(experience_id, consumer_id, updated_at, command_id, items JSON) each."""
    if not versions:
        return
    await conn.execute(
        """INSERT INTO cart_versions (experience_id, consumer_id, updated_at, command_id, items)
           SELECT e, c, u, i, t::jsonb
           FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::uuid[], $5::text[])
                AS v(e, c, u, i, t)
           ON CONFLICT DO NOTHING""",
        *tuple_columns(versions),
    )


def reservation_records(rows: Iterable[ReservationRow]) -> list[tuple[Any, ...]]:
    """The rows' values in RESERVATION_COLUMNS order, taken now."""
    return list(map(_RESERVATION_VALUES, rows))


async def copy_reservations(conn: Conn, records: list[tuple[Any, ...]]) -> None:
    """New rows only, by binary COPY as for admissions."""
    if records:
        await conn.copy_records_to_table(
            "reservations", records=records, columns=RESERVATION_COLUMNS
        )


async def insert_reservations(conn: Conn, rows: Sequence[ReservationRow]) -> None:
    await copy_reservations(conn, reservation_records(rows))


async def update_reservation_ends(conn: Conn, ends: Sequence[tuple[Any, ...]]) -> None:
    """Holds that ended, converted or were extended: (id, status,
    converted_at, order_id, ended_at, end_reason, expires_at) each; an
    expires_at of None leaves the row's."""
    if not ends:
        return
    await conn.execute(
        """UPDATE reservations r SET status = v.status, converted_at = v.converted_at,
               order_id = v.order_id, ended_at = v.ended_at, end_reason = v.end_reason,
               expires_at = COALESCE(v.expires_at, r.expires_at)
           FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[],
                       $5::timestamptz[], $6::text[], $7::timestamptz[])
                AS v(id, status, converted_at, order_id, ended_at, end_reason, expires_at)
           WHERE r.id = v.id""",
        *tuple_columns(ends),
    )


# The experiences table's setting columns, named as the settings model's
# fields, with their SQL types: the one list the load, the flush, the API's
# read, the replay sink and the diff take their columns from.
EXPERIENCE_SETTINGS: tuple[tuple[str, str], ...] = (
    ("strategy", "text"),
    ("window_seconds", "int"),
    ("buffer_seconds", "int"),
    ("pool_size", "int"),
    ("multi_item_policy", "text"),
    ("extension_seconds", "int"),
    ("max_extensions", "int"),
    ("retry_window_seconds", "int"),
    ("on_complete", "text"),
    ("pools", "jsonb"),
    ("backfill", "bool"),
)
EXPERIENCE_COLUMNS = tuple(name for name, _ in EXPERIENCE_SETTINGS)
# jsonb is read as text: the settings model parses it.
SELECT_EXPERIENCE_SETTINGS = ", ".join(
    f"{name}::text AS {name}" if kind == "jsonb" else name for name, kind in EXPERIENCE_SETTINGS
)


def experience_values(settings: ExperienceSettings) -> tuple[Any, ...]:
    """The settings as the experiences table's column values, in order."""
    data = settings.model_dump(mode="json", by_alias=False)
    return tuple(
        orjson.dumps(data[name]).decode() if kind == "jsonb" else data[name]
        for name, kind in EXPERIENCE_SETTINGS
    )


def experience_settings(record: Any) -> ExperienceSettings:
    """The settings from an experiences record read with SELECT_EXPERIENCE_SETTINGS."""
    return ExperienceSettings.model_validate(
        {
            name: orjson.loads(record[name]) if kind == "jsonb" else record[name]
            for name, kind in EXPERIENCE_SETTINGS
        }
    )


async def upsert_experiences(
    conn: Conn, ids: list[str], values: Sequence[tuple[Any, ...]], updated_at: list[Any]
) -> None:
    """Experience settings (experience_values of each), in key order."""
    if not ids:
        return
    names = ", ".join(EXPERIENCE_COLUMNS)
    arrays = ", ".join(f"${n}::{kind}[]" for n, (_, kind) in enumerate(EXPERIENCE_SETTINGS, 2))
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in EXPERIENCE_COLUMNS)
    last = len(EXPERIENCE_SETTINGS) + 2
    await conn.execute(
        f"""INSERT INTO experiences (experience_id, {names}, updated_at)
           SELECT * FROM unnest($1::text[], {arrays}, ${last}::timestamptz[])
           ON CONFLICT (experience_id) DO UPDATE SET {updates}, updated_at = EXCLUDED.updated_at""",
        ids,
        *(tuple_columns(values) if values else [[] for _ in EXPERIENCE_SETTINGS]),
        updated_at,
    )
