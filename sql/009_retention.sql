-- Retention. The relay publishes by position: the last outbox sequence it
-- published, one row, moved once per published batch instead of an UPDATE
-- per event. Everything at or below it is on the events topic; published
-- rows are pruned by age.
CREATE TABLE outbox_position (
    singleton    BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    published_seq BIGINT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Rows published before: the position is the last sequence below the
-- first row not yet published.
INSERT INTO outbox_position (published_seq)
SELECT COALESCE(
    (SELECT min(seq) - 1 FROM outbox WHERE published_at IS NULL),
    (SELECT max(seq) FROM outbox),
    0);
DROP INDEX outbox_unpublished;
ALTER TABLE outbox DROP COLUMN published_at;
CREATE INDEX outbox_created ON outbox (created_at);
CREATE INDEX inbox_applied ON inbox (applied_at);

-- A grant whose admission row was pruned is still refused: its digest and
-- the day its admission ended, kept until HISTORY_RETENTION_DAYS plus
-- INBOX_RETENTION_HOURS after that day.
CREATE TABLE grant_tombstones (
    admission_grant TEXT PRIMARY KEY,  -- SHA-256 hex of the grant
    ended_on        DATE NOT NULL
);
CREATE INDEX grant_tombstones_ended ON grant_tombstones (ended_on);

-- The housekeeping scans: ended history by age.
CREATE INDEX admissions_ended ON admissions (ended_at) WHERE status <> 'active';
CREATE INDEX admission_endings_ended ON admission_endings (ended_at);
CREATE INDEX cart_versions_updated ON cart_versions (updated_at);

-- Sold holds pruned from reservations, summed per experience and product:
-- stock.sold = Σ converted + Σ retired of the product, and a pool's used =
-- Σ active and converted + Σ retired of its experience and product.
CREATE TABLE sales_retired (
    experience_id TEXT   NOT NULL,
    product_id    TEXT   NOT NULL,
    variant_id    TEXT   NOT NULL,
    quantity      BIGINT NOT NULL CHECK (quantity >= 0),
    PRIMARY KEY (experience_id, product_id, variant_id)
);
CREATE INDEX reservations_ended ON reservations (ended_at) WHERE status IN ('released', 'expired');
CREATE INDEX reservations_sold ON reservations (converted_at) WHERE status = 'converted';
