"""Backfill's metrics as the consumer counts a batch: the units held for
refused lines (experience label bounded as every hold counter's), and one
freed-to-held observation per backfilled hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from tests import builders as b
from tests.helpers import unique
from worker.adapters.unit_of_work import UnitOfWork
from worker.adapters.uow_rows import StockRow
from worker.domain.model import ExperienceSettings
from worker.engine import apply_command
from worker.engine.base import Applied
from worker.metrics import ExperienceLabels
from worker.roles.consumer import _record_metrics

DEFAULTS = ExperienceSettings()


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"fanfare_reservations_{name}", labels) or 0.0


def test_a_backfilled_hold_counts_its_units_and_its_wait() -> None:
    exp, product = unique("bfm"), unique("p")
    now = datetime.now(UTC)
    uow = UnitOfWork()
    uow.stock[(product, "")] = StockRow(0)
    results = []
    for command in [
        b.configure(exp, backfill=True),
        b.stock(product, 2),
        b.cart(exp, "A", b.line(product, 2), at=now - timedelta(seconds=30)),
        b.admit(exp, "A", unique("gA"), now - timedelta(seconds=20)),
        b.cart(exp, "B", b.line(product, 2), at=now - timedelta(seconds=15)),
        b.admit(exp, "B", unique("gB"), now - timedelta(seconds=10)),
        b.end(exp, "A", None, at=now - timedelta(seconds=5)),
    ]:
        applied: Applied = apply_command(uow, command, DEFAULTS)
        results.append((command, applied))
    units = _sample("units_backfilled_total", experience="all")
    waits = _sample("backfill_seconds_count")
    waited = _sample("backfill_seconds_sum")
    _record_metrics(results, [], ExperienceLabels(0))
    assert _sample("units_backfilled_total", experience="all") - units == 2
    assert _sample("backfill_seconds_count") - waits == 1
    # From the leave's occurredAt, 5 s before the batch, to its commit.
    assert _sample("backfill_seconds_sum") - waited >= 5
