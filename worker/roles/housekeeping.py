"""Housekeeping: deletes what retention lets go (worker.adapters.retention),
a small batch per table at a time, run by the leading scheduler so one
replica prunes at once. A round takes one batch from each table; while any
table gave a full batch there is more, and the next round follows at the
scheduler's next tick; otherwise the next round is an interval away."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from worker import metrics
from worker.adapters import retention
from worker.config import Settings
from worker.logs import get_logger

log = get_logger("worker.housekeeping")

BATCH_ROWS = 1000
INTERVAL = timedelta(minutes=5)


class Housekeeping:
    def __init__(self, settings: Settings, batch: int = BATCH_ROWS) -> None:
        self.settings = settings
        self.batch = batch
        self.next_round: datetime | None = None
        # Rows deleted per table since this process started.
        self.removed: dict[str, int] = dict.fromkeys(retention.TABLES, 0)

    async def run_due(self, pool: asyncpg.Pool, now: datetime) -> None:
        """A round if one is due; the scheduler calls this every tick."""
        if self.next_round is not None and now < self.next_round:
            return
        try:
            more = await self.round(pool, now)
        except asyncpg.PostgresError as exc:
            # Expiries must not wait on it: tried again a round later.
            log.warning("retention_failed", error=type(exc).__name__, detail=str(exc)[:200])
            more = False
        self.next_round = None if more else now + INTERVAL

    async def round(self, pool: asyncpg.Pool, now: datetime) -> bool:
        """One batch from each table; whether any table has more."""
        until = retention.cutoffs(self.settings, now)
        removed, more = await retention.prune_round(pool, until, self.batch)
        for table, n in removed.items():
            self.removed[table] += n
            metrics.RETENTION_ROWS_DELETED.labels(table).inc(n)
        if removed:
            log.info(
                "retention_pruned", removed=removed, more=more, history_cutoff=str(until["history"])
            )
        return more

    async def drain(self, pool: asyncpg.Pool, now: datetime) -> None:
        """Rounds until nothing is left to prune as of `now`."""
        while await self.round(pool, now):
            pass
