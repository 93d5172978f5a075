"""Row-by-row comparison of the fact tables of two databases (the live one
and a rebuild): both sides are streamed in key order and merged, so memory
stays flat however large the tables are.

Compared: the columns that are facts. Left out: bookkeeping that says when
a row was written rather than what happened (stock.updated_at), and the
tables that only serve delivery (inbox, consumer_positions, outbox,
reconcile_runs, replay_applied).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from worker.adapters import rows as tables
from worker.adapters.store import Conn


@dataclass(frozen=True)
class TableSpec:
    name: str
    key: tuple[str, ...]
    columns: tuple[str, ...]
    # SQL per column where the stored form is not directly comparable.
    expressions: tuple[tuple[str, str], ...] = ()
    experience_column: str | None = "experience_id"

    def select(self, experiences: bool) -> str:
        exprs = dict(self.expressions)
        cols = [f"{exprs.get(c, c)} AS {c}" for c in (*self.key, *self.columns)]
        # "C" collation orders text by code point, as Python compares str,
        # so the two ordered streams merge correctly.
        order = ", ".join(f'{k} COLLATE "C"' if k not in _UNCOLLATED_KEYS else k for k in self.key)
        where = f" WHERE {self.experience_column} = ANY($1::text[])" if experiences else ""
        return f"SELECT {', '.join(cols)} FROM {self.name}{where} ORDER BY {order}"


# Keys that are not text: ordered as they are (no collation).
_UNCOLLATED_KEYS = frozenset({"id", "command_id", "updated_at"})

FACT_TABLES: tuple[TableSpec, ...] = (
    TableSpec(
        "experiences",
        ("experience_id",),
        (*tables.EXPERIENCE_COLUMNS, "updated_at"),
    ),
    TableSpec("stock", ("product_id", "variant_id"), ("on_hand", "reserved", "sold"), (), None),
    TableSpec(
        "carts",
        ("experience_id", "consumer_id"),
        ("items", "updated_at"),
        (("items", "items::text"),),
    ),
    TableSpec(
        "cart_versions",
        ("experience_id", "consumer_id", "updated_at", "command_id"),
        ("items",),
        (("items", "items::text"),),
    ),
    TableSpec(
        "admissions",
        ("admission_grant",),
        tuple(c for c in tables.ADMISSION_COLUMNS if c != "admission_grant"),
    ),
    TableSpec(
        "admission_endings",
        ("command_id",),
        (
            "experience_id",
            "consumer_id",
            "admission_grant",
            "outcome",
            "reason",
            "ended_at",
            "order_id",
        ),
    ),
    TableSpec("experience_pools", ("experience_id", "product_id", "variant_id"), ("used",)),
    TableSpec("reservations", ("id",), tuple(c for c in tables.RESERVATION_COLUMNS if c != "id")),
)
TABLES_BY_NAME = {t.name: t for t in FACT_TABLES}


@dataclass(frozen=True)
class RowDiff:
    table: str
    key: tuple[Any, ...]
    key_names: tuple[str, ...]
    live: dict[str, Any] | None  # None: the row is missing on that side
    other: dict[str, Any] | None

    @property
    def changed(self) -> list[str]:
        if self.live is None or self.other is None:
            return []
        return [c for c in self.live if self.live[c] != self.other[c]]

    def key_text(self) -> str:
        return " ".join(f"{n}={v}" for n, v in zip(self.key_names, self.key, strict=True))

    def render(self, live: str = "live", other: str = "rebuilt") -> str:
        head = f"{self.table} {self.key_text()}"
        if self.other is None:
            return f"{head}: only in {live}: {_values(self.live)}"
        if self.live is None:
            return f"{head}: only in {other}: {_values(self.other)}"
        parts = [
            f"{c}: {live}={_show(self.live[c])} {other}={_show(self.other[c])}"
            for c in self.changed
        ]
        return f"{head}: " + "; ".join(parts)


def _show(value: Any) -> str:
    return "null" if value is None else str(value)


def _values(row: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={_show(v)}" for k, v in (row or {}).items())


@dataclass
class TableReport:
    table: str
    compared: int
    diffs: list[RowDiff]


async def _stream(
    conn: Conn, spec: TableSpec, experiences: Sequence[str] | None
) -> AsyncIterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    args: list[Any] = [list(experiences)] if experiences is not None else []
    width = len(spec.key)
    async for r in conn.cursor(spec.select(experiences is not None), *args, prefetch=2000):
        values = tuple(r)
        yield values[:width], dict(zip(spec.columns, values[width:], strict=True))


async def compare_table(
    live: Conn,
    other: Conn,
    spec: TableSpec,
    experiences: Sequence[str] | None = None,
) -> TableReport:
    """Call inside a transaction on each connection (cursors need one)."""
    if experiences is not None and spec.experience_column is None:
        experiences = None
    report = TableReport(spec.name, 0, [])
    a, b = _stream(live, spec, experiences), _stream(other, spec, experiences)
    x = await anext(a, None)
    y = await anext(b, None)
    while x is not None or y is not None:
        report.compared += 1
        if y is None or (x is not None and x[0] < y[0]):
            assert x is not None
            report.diffs.append(RowDiff(spec.name, x[0], spec.key, x[1], None))
            x = await anext(a, None)
        elif x is None or y[0] < x[0]:
            report.diffs.append(RowDiff(spec.name, y[0], spec.key, None, y[1]))
            y = await anext(b, None)
        else:
            if x[1] != y[1]:
                report.diffs.append(RowDiff(spec.name, x[0], spec.key, x[1], y[1]))
            x, y = await anext(a, None), await anext(b, None)
    return report


async def compare(
    live_dsn: str,
    other_dsn: str,
    tables: Sequence[TableSpec] = FACT_TABLES,
    experiences: Sequence[str] | None = None,
) -> list[TableReport]:
    live = await asyncpg.connect(live_dsn)
    other = await asyncpg.connect(other_dsn)
    try:
        reports = []
        # One snapshot per side for every table: a consistent picture of each.
        async with (
            live.transaction(isolation="repeatable_read", readonly=True),
            other.transaction(isolation="repeatable_read", readonly=True),
        ):
            for spec in tables:
                reports.append(await compare_table(live, other, spec, experiences))
        return reports
    finally:
        await live.close()
        await other.close()
