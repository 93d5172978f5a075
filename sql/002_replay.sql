-- Events already folded into this database by `python -m worker replay`:
-- written in the same transaction as the rows they changed, so folding the
-- log again (or a log that repeats an event) changes nothing. Empty in a
-- live database, whose rows come from the consumers.
CREATE TABLE replay_applied (
    event_id   UUID PRIMARY KEY,
    seq        BIGINT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
