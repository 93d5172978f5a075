"""Retention: the statements that delete rows no decision needs any more,
each one small batch at a time (README, Operations, "Retention").

Every statement takes its cutoff as a parameter (the caller's clock), and
deletes at most `limit` rows, oldest first, so a backlog drains in short
transactions that never hold many locks. What may go, and why nothing a
decision still needs goes with it:

- inbox: applied command ids older than the inbox retention, which covers
  every way a command can come again (config.py checks it at start);
- outbox: published events (at or below the relay's position) as old;
- reservations: released and expired holds ended before the history
  cutoff, and holds sold before it, whose quantities are added to
  sales_retired (what `sold` and a pool's `used` sum with the sold holds);
- admissions: ended before the history cutoff, with no active or sold hold
  left; each leaves a grant tombstone;
- admission_endings: remembered endings, completions and retries (granted
  or kept pending) before the cutoff;
- cart_versions: versions before the cutoff but the last one of each
  consumer at or before it (the cart as it stood then);
- grant_tombstones: a history plus an inbox retention after the admission
  ended;
- reconcile_runs: runs before the history cutoff.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from worker.adapters.store import Conn
from worker.config import Settings

PRUNE_INBOX = """DELETE FROM inbox WHERE command_id IN (
    SELECT command_id FROM inbox WHERE applied_at < $1 ORDER BY applied_at LIMIT $2)"""

PRUNE_OUTBOX = """DELETE FROM outbox WHERE seq IN (
    SELECT seq FROM outbox
    WHERE created_at < $1 AND seq <= (SELECT published_seq FROM outbox_position)
    ORDER BY seq LIMIT $2)"""

PRUNE_RESERVATIONS = """DELETE FROM reservations WHERE id IN (
    SELECT id FROM reservations
    WHERE status IN ('released', 'expired') AND ended_at < $1
    ORDER BY ended_at LIMIT $2 FOR UPDATE SKIP LOCKED)"""

# A sold hold's quantity stays counted in sales_retired (stock.sold and a
# pool's used are sums over both).
PRUNE_SOLD = """WITH gone AS (
    SELECT id FROM reservations
    WHERE status = 'converted' AND converted_at < $1
    ORDER BY converted_at LIMIT $2 FOR UPDATE SKIP LOCKED
), summed AS (
    INSERT INTO sales_retired (experience_id, product_id, variant_id, quantity)
    SELECT r.experience_id, r.product_id, r.variant_id, sum(r.quantity)
    FROM reservations r JOIN gone USING (id) GROUP BY 1, 2, 3
    ON CONFLICT (experience_id, product_id, variant_id)
    DO UPDATE SET quantity = sales_retired.quantity + EXCLUDED.quantity
)
DELETE FROM reservations r USING gone g WHERE r.id = g.id"""

# Locked first (FOR UPDATE re-checks the conditions on the newest row
# version), then the leftover holds, the tombstone and the row in one
# statement; the foreign key is checked at its end.
PRUNE_ADMISSIONS = """WITH gone AS (
    SELECT a.admission_grant, a.ended_at FROM admissions a
    WHERE a.status <> 'active' AND a.ended_at < $1
      AND NOT EXISTS (SELECT 1 FROM reservations r WHERE r.admission_grant = a.admission_grant
                      AND r.status IN ('active', 'converted'))
    ORDER BY a.ended_at LIMIT $2 FOR UPDATE SKIP LOCKED
), holds AS (
    DELETE FROM reservations r USING gone g WHERE r.admission_grant = g.admission_grant
), tombstones AS (
    INSERT INTO grant_tombstones (admission_grant, ended_on)
    SELECT admission_grant, (ended_at AT TIME ZONE 'UTC')::date FROM gone
    ON CONFLICT DO NOTHING
)
DELETE FROM admissions a USING gone g WHERE a.admission_grant = g.admission_grant"""

PRUNE_ENDINGS = """DELETE FROM admission_endings WHERE command_id IN (
    SELECT command_id FROM admission_endings WHERE ended_at < $1
    ORDER BY ended_at LIMIT $2)"""

PRUNE_CART_VERSIONS = """DELETE FROM cart_versions v USING (
    SELECT c.experience_id, c.consumer_id, c.updated_at, c.command_id FROM cart_versions c
    WHERE c.updated_at < $1 AND EXISTS (
        SELECT 1 FROM cart_versions n
        WHERE n.experience_id = c.experience_id AND n.consumer_id = c.consumer_id
          AND n.updated_at > c.updated_at AND n.updated_at < $1)
    ORDER BY c.updated_at LIMIT $2) old
    WHERE (v.experience_id, v.consumer_id, v.updated_at, v.command_id)
        = (old.experience_id, old.consumer_id, old.updated_at, old.command_id)"""

PRUNE_TOMBSTONES = """DELETE FROM grant_tombstones WHERE admission_grant IN (
    SELECT admission_grant FROM grant_tombstones
    WHERE ended_on < ($1 AT TIME ZONE 'UTC')::date ORDER BY ended_on LIMIT $2)"""

PRUNE_RECONCILE_RUNS = """DELETE FROM reconcile_runs WHERE id IN (
    SELECT id FROM reconcile_runs WHERE ran_at < $1 ORDER BY id LIMIT $2)"""


# Table, statement, and which cutoff it takes: "inbox" (the inbox retention),
# "history", or "tombstone" (history plus inbox retention). Holds go before
# admissions, whose own deletion needs them gone or ended.
STATEMENTS: tuple[tuple[str, str, str], ...] = (
    ("inbox", PRUNE_INBOX, "inbox"),
    ("outbox", PRUNE_OUTBOX, "inbox"),
    ("reservations", PRUNE_RESERVATIONS, "history"),
    ("reservations", PRUNE_SOLD, "history"),
    ("admissions", PRUNE_ADMISSIONS, "history"),
    ("admission_endings", PRUNE_ENDINGS, "history"),
    ("cart_versions", PRUNE_CART_VERSIONS, "history"),
    ("grant_tombstones", PRUNE_TOMBSTONES, "tombstone"),
    ("reconcile_runs", PRUNE_RECONCILE_RUNS, "history"),
)
TABLES = tuple(dict.fromkeys(table for table, _, _ in STATEMENTS))


def cutoffs(settings: Settings, now: datetime) -> dict[str, datetime]:
    """Each statement's cutoff as of `now`."""
    inbox = timedelta(hours=settings.inbox_retention_hours)
    history = timedelta(days=settings.history_retention_days)
    return {
        "inbox": now - inbox,
        "history": now - history,
        # A grant comes back at most an inbox retention after its first
        # delivery (config.py), long before its admission row goes: the
        # tombstone covers that span again after the row is gone.
        "tombstone": now - history - inbox,
    }


async def prune(conn: Conn, statement: str, cutoff: datetime, limit: int) -> int:
    """Run one pruning statement; the number of rows it deleted."""
    status = await conn.execute(statement, cutoff, limit)
    return int(status.rsplit(" ", 1)[-1])


async def prune_round(
    pool: asyncpg.Pool, until: dict[str, datetime], limit: int
) -> tuple[dict[str, int], bool]:
    """One batch from each table, each in its own transaction: the rows
    deleted per table, and whether any table has more."""
    removed: dict[str, int] = {}
    more = False
    for table, statement, cutoff in STATEMENTS:
        async with pool.acquire() as conn:
            n = await prune(conn, statement, until[cutoff], limit)
        if n:
            removed[table] = removed.get(table, 0) + n
        more = more or n >= limit
    return removed, more


async def drain(pool: asyncpg.Pool, until: dict[str, datetime], limit: int) -> dict[str, int]:
    """Rounds until nothing is left to prune before the cutoffs."""
    total: dict[str, int] = {}
    more = True
    while more:
        removed, more = await prune_round(pool, until, limit)
        for table, n in removed.items():
            total[table] = total.get(table, 0) + n
    return total
