"""Writing folded events into a target database: one transaction per batch,
one set-based statement per table, and the applied event ids recorded in
the same transaction (`replay_applied`), so a replay folds each event once
however often it runs or the log repeats an event.

Folding and writing are split so they can overlap: a `Planner` folds batch
N+1 (Python's work) while the writer's transaction for batch N runs in
PostgreSQL. Folding reads a little of what earlier batches wrote (which
events are applied, admissions' strategies, remembered endings); the planner
reads the committed part on a connection of its own and keeps what it
handed to the writer, but is not committed yet, in memory until it is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from uuid import UUID

from worker.adapters import rows as tables
from worker.adapters.rows import EndingRow
from worker.adapters.store import Conn
from worker.domain.events import Event
from worker.replay.fold import Known, Needs, fold, needs
from worker.replay.fold_changes import FoldChanges

# Event ids a planner remembers at most (about 70 bytes each).
REMEMBERED_IDS = 2_000_000


@dataclass(frozen=True)
class Planned:
    """A batch folded and ready to write."""

    changes: FoldChanges
    applied: list[tuple[UUID, int]]  # (event id, outbox seq) to record
    read: int
    first_seq: int
    last_seq: int

    @property
    def already(self) -> int:
        """In replay_applied already, or repeated in the log."""
        return self.read - len(self.applied)


@dataclass
class _Pending:
    """What a planned batch will write that later batches read back."""

    strategies: dict[str, str] = field(default_factory=dict)
    endings: list[EndingRow] = field(default_factory=list)


class Planner:
    """Folds batches in log order ahead of their writing. `reader` must not
    be the writer's connection: it sees only committed rows, and the batches
    planned but not committed yet are overlaid from memory."""

    def __init__(self, reader: Conn, *, fresh: bool = False) -> None:
        self.reader = reader
        self.pending: deque[tuple[Planned, _Pending]] = deque()
        # If the target had applied no event before this run (`fresh`), the
        # applied ones are exactly those this run planned: remembering their
        # ids spares PostgreSQL a lookup per event. Past REMEMBERED_IDS the
        # planner forgets them and asks again.
        self.planned_ids: set[int] | None = set() if fresh else None

    async def plan(self, batch: Sequence[tuple[int, Event]]) -> Planned:
        todo = await self._unapplied(batch)
        events = [e for _, e in todo]
        changes = fold(events, await self._known(needs(events))) if events else FoldChanges()
        planned = Planned(
            changes,
            [(e.event_id, seq) for seq, e in todo],
            len(batch),
            batch[0][0] if batch else 0,
            batch[-1][0] if batch else 0,
        )
        self.pending.append((planned, _pending(planned)))
        return planned

    def committed(self, planned: Planned) -> None:
        """`planned` is committed: the reader sees its rows from now on."""
        oldest, _ = self.pending.popleft()
        if oldest is not planned:
            raise RuntimeError("replay batches must be committed in the order planned")

    async def _unapplied(self, batch: Sequence[tuple[int, Event]]) -> list[tuple[int, Event]]:
        # Ids as ints: uuid.UUID hashes in Python, an int in C.
        if self.planned_ids is not None:
            if len(self.planned_ids) + len(batch) <= REMEMBERED_IDS:
                return _first_times(batch, self.planned_ids)
            self.planned_ids = None
        # Pending ids are taken before the query: a batch committing in
        # between is then either still pending here or visible to the query.
        seen = {i.int for planned, _ in self.pending for i, _ in planned.applied}
        ask = [e.event_id for _, e in batch if e.event_id.int not in seen]
        if ask:
            seen |= await self.committed_applied(ask)
        return _first_times(batch, seen)

    async def _known(self, wanted: Needs) -> Known:
        strategies: dict[str, str] = {}
        endings: dict[UUID, EndingRow] = {}
        for _, p in self.pending:  # before the query, as in `_unapplied`
            strategies.update((g, s) for g, s in p.strategies.items() if g in wanted.grant_digests)
            endings.update((x.command_id, x) for x in p.endings if _wanted_ending(x, wanted))
        known = await self.committed_known(
            Needs(
                wanted.grant_digests - strategies.keys(),
                wanted.ending_grant_digests,
                wanted.ending_pairs,
            )
        )
        known.strategies.update(strategies)
        # A batch that committed after the snapshot is in both: one row each.
        endings.update((x.command_id, x) for x in known.endings)
        known.endings = list(endings.values())
        return known

    async def committed_applied(self, ids: list[UUID]) -> set[int]:
        """Which of `ids` committed batches applied (as UUID.int)."""
        rows = await self.reader.fetch(
            "SELECT event_id FROM replay_applied WHERE event_id = ANY($1::uuid[])", ids
        )
        return {r["event_id"].int for r in rows}

    async def committed_known(self, wanted: Needs) -> Known:
        return await load_known(self.reader, wanted)


def _first_times(batch: Sequence[tuple[int, Event]], seen: set[int]) -> list[tuple[int, Event]]:
    """The events of `batch` whose id is not in `seen`, adding them to it:
    the relay may repeat an event in the log."""
    todo: list[tuple[int, Event]] = []
    for seq, event in batch:
        key = event.event_id.int
        if key not in seen:
            seen.add(key)
            todo.append((seq, event))
    return todo


def _pending(planned: Planned) -> _Pending:
    c = planned.changes
    return _Pending(
        {g: a.strategy for g, a in c.admissions.items()},
        list(c.endings),
    )


def _wanted_ending(x: EndingRow, wanted: Needs) -> bool:
    digest = x.grant_digest
    return (digest is not None and digest in wanted.ending_grant_digests) or (
        x.experience_id,
        x.consumer_id,
    ) in wanted.ending_pairs


async def write_planned(conn: Conn, planned: Planned) -> None:
    """Write a planned batch inside the caller's transaction."""
    if not planned.applied:
        return
    await write(conn, planned.changes)
    # Binary COPY: the ids are new (the planner dropped applied ones), and
    # COPY costs PostgreSQL and the client far less than INSERT ... unnest.
    await conn.copy_records_to_table(
        "replay_applied", records=planned.applied, columns=["event_id", "seq"]
    )


async def load_known(conn: Conn, wanted: Needs) -> Known:
    known = Known()
    if wanted.grant_digests:
        rows = await conn.fetch(
            "SELECT admission_grant, strategy FROM admissions"
            " WHERE admission_grant = ANY($1::text[])",
            list(wanted.grant_digests),
        )
        known.strategies = {r["admission_grant"]: r["strategy"] for r in rows}
    if wanted.ending_grant_digests or wanted.ending_pairs:
        rows = await tables.by_pair_or_grant_digest(
            conn, "admission_endings", wanted.ending_grant_digests, wanted.ending_pairs
        )
        known.endings = tables.ending_rows(rows)
    return known


async def write(conn: Conn, c: FoldChanges) -> None:
    """Parents before children (foreign keys); rows in key order so two
    writers would lock in the same order."""
    await _experiences(conn, c)
    await _stock(conn, c)
    await _carts(conn, c)
    await tables.insert_cart_versions(conn, c.cart_versions)
    await _admissions(conn, c)
    await _endings(conn, c)
    await _reservations(conn, c)
    await _pools(conn, c)


async def _experiences(conn: Conn, c: FoldChanges) -> None:
    ids = sorted(c.experiences)
    rows = [c.experiences[i] for i in ids]
    await tables.upsert_experiences(
        conn,
        ids,
        [tables.experience_values(r.settings) for r in rows],
        [r.updated_at for r in rows],
    )


async def _stock(conn: Conn, c: FoldChanges) -> None:
    if not c.stock:
        return
    keys = sorted(c.stock)
    created = [k for k in keys if c.stock[k].on_hand is not None]
    if created:
        # Rows appear with their first stock.set, as in the engine.
        await conn.execute(
            """INSERT INTO stock (product_id, variant_id, on_hand)
               SELECT p, v, 0 FROM unnest($1::text[], $2::text[]) AS t(p, v)
               ON CONFLICT DO NOTHING""",
            [k[0] for k in created],
            [k[1] for k in created],
        )
    rows = [c.stock[k] for k in keys]
    await conn.execute(
        """UPDATE stock s SET on_hand = COALESCE(v.on_hand, s.on_hand),
               reserved = s.reserved + v.reserved, sold = s.sold + v.sold,
               updated_at = COALESCE(v.set_at, s.updated_at)
           FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::int[],
                       $6::timestamptz[]) AS v(p, vr, on_hand, reserved, sold, set_at)
           WHERE s.product_id = v.p AND s.variant_id = v.vr""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        *tables.columns(rows, "on_hand reserved sold set_at"),
    )


async def _carts(conn: Conn, c: FoldChanges) -> None:
    if not c.carts:
        return
    keys = sorted(c.carts)
    rows = [c.carts[k] for k in keys]
    await conn.execute(
        """INSERT INTO carts (experience_id, consumer_id, items, updated_at)
           SELECT e, k, i::jsonb, u
           FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS t(e, k, i, u)
           ON CONFLICT (experience_id, consumer_id)
           DO UPDATE SET items = EXCLUDED.items, updated_at = EXCLUDED.updated_at""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        *tables.columns(rows, "items_json updated_at"),
    )


async def _admissions(conn: Conn, c: FoldChanges) -> None:
    if c.admissions:
        await tables.insert_admissions(conn, [c.admissions[g] for g in sorted(c.admissions)])
    if c.admission_closes:
        digests = sorted(c.admission_closes)
        closes = [c.admission_closes[g] for g in digests]
        # Only an active admission ends, exactly as the engine closes it; a
        # revision changes one that had ended.
        await conn.execute(
            """UPDATE admissions a SET status = v.status, ended_at = v.ended_at,
                   end_reason = v.end_reason, order_id = v.order_id
               FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
                           $6::bool[])
                    AS v(grant_, status, ended_at, end_reason, order_id, revision)
               WHERE a.admission_grant = v.grant_ AND (a.status = 'active' OR v.revision)""",
            digests,
            *tables.columns(closes, "status ended_at end_reason order_id revision"),
        )
    if c.admission_terms:
        digests = sorted(c.admission_terms)
        await conn.execute(
            """UPDATE admissions a SET expires_at = v.expires_at,
                   extensions = COALESCE(v.extensions, a.extensions)
               FROM unnest($1::text[], $2::timestamptz[], $3::int[])
                    AS v(grant_, expires_at, extensions)
               WHERE a.admission_grant = v.grant_""",
            digests,
            *tables.tuple_columns([c.admission_terms[g] for g in digests]),
        )


async def _endings(conn: Conn, c: FoldChanges) -> None:
    await tables.insert_endings(conn, c.endings)


async def _reservations(conn: Conn, c: FoldChanges) -> None:
    if c.reservations:
        await tables.insert_reservations(conn, [c.reservations[i] for i in sorted(c.reservations)])
    if c.reservation_expiries:
        ids = sorted(c.reservation_expiries)
        await conn.execute(
            """UPDATE reservations r SET expires_at = v.expires_at
               FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, expires_at)
               WHERE r.id = v.id""",
            ids,
            [c.reservation_expiries[i] for i in ids],
        )
    ends = [
        (i, e.status, e.converted_at, e.order_id, e.ended_at, e.end_reason, None)
        for i, e in sorted(c.reservation_ends.items())
    ]
    await tables.update_reservation_ends(conn, ends)


async def _pools(conn: Conn, c: FoldChanges) -> None:
    if not c.pools:
        return
    keys = sorted(c.pools)
    columns = [[k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]]
    # Rows first, then the deltas: an upsert checks CHECK (used >= 0) on the
    # row it proposes, so a negative delta for an existing row would fail.
    await conn.execute(
        """INSERT INTO experience_pools (experience_id, product_id, variant_id, used)
           SELECT e, p, v, 0 FROM unnest($1::text[], $2::text[], $3::text[]) AS k(e, p, v)
           ON CONFLICT DO NOTHING""",
        *columns,
    )
    await conn.execute(
        """UPDATE experience_pools t SET used = t.used + d.delta
           FROM unnest($1::text[], $2::text[], $3::text[], $4::int[]) AS d(e, p, v, delta)
           WHERE t.experience_id = d.e AND t.product_id = d.p AND t.variant_id = d.v""",
        *columns,
        [c.pools[k] for k in keys],
    )
