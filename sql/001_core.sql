-- Core reservation state. Written only by the consumers, one transaction per
-- batch; the CHECK constraints are the last line against oversell, behind
-- the conditional updates that take holds.

CREATE TABLE stock (
    product_id  TEXT    NOT NULL,
    -- '' when the product has no variants, so the pair can be the key.
    variant_id  TEXT    NOT NULL DEFAULT '',
    on_hand     INTEGER NOT NULL DEFAULT 0,
    reserved    INTEGER NOT NULL DEFAULT 0,
    sold        INTEGER NOT NULL DEFAULT 0,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (product_id, variant_id),
    CONSTRAINT stock_on_hand_nonneg CHECK (on_hand >= 0),
    CONSTRAINT stock_reserved_nonneg CHECK (reserved >= 0),
    CONSTRAINT stock_sold_nonneg CHECK (sold >= 0),
    CONSTRAINT stock_no_oversell CHECK (reserved + sold <= on_hand)
);

CREATE TABLE experiences (
    experience_id     TEXT PRIMARY KEY,
    strategy          TEXT    NOT NULL CHECK (strategy IN ('soft', 'hard', 'pool')),
    window_seconds    INTEGER NOT NULL CHECK (window_seconds > 0),
    buffer_seconds    INTEGER NOT NULL CHECK (buffer_seconds >= 0),
    pool_size         INTEGER CHECK (pool_size >= 0),
    multi_item_policy TEXT    NOT NULL CHECK (multi_item_policy IN ('partial', 'all_or_nothing')),
    updated_at        TIMESTAMPTZ NOT NULL
);

CREATE TABLE carts (
    experience_id TEXT  NOT NULL,
    consumer_id   TEXT  NOT NULL,
    items         JSONB NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (experience_id, consumer_id)
);

-- One row per admission grant, forever: the grant dedupes for good.
CREATE TABLE admissions (
    admission_grant TEXT PRIMARY KEY,  -- SHA-256 hex of the grant, never the grant
    experience_id   TEXT NOT NULL,
    consumer_id     TEXT NOT NULL,
    admitted_at     TIMESTAMPTZ NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    status          TEXT NOT NULL
                    CHECK (status IN ('active', 'converted', 'released', 'expired', 'superseded')),
    strategy        TEXT NOT NULL,
    window_seconds  INTEGER NOT NULL,
    buffer_seconds  INTEGER NOT NULL,
    command_id      UUID NOT NULL,
    ended_at        TIMESTAMPTZ,
    end_reason      TEXT,
    order_id        TEXT
);
CREATE INDEX admissions_consumer ON admissions (experience_id, consumer_id, admitted_at DESC);
-- The scheduler's scan: active admissions by due time.
CREATE INDEX admissions_due ON admissions (expires_at) WHERE status = 'active';

-- Endings that arrived before their admission (Fanfare does not promise
-- order): the late admission is recorded as ended and takes no holds. Keyed
-- by grant when the event named one, else by consumer and time.
CREATE TABLE admission_endings (
    command_id      UUID PRIMARY KEY,
    experience_id   TEXT NOT NULL,
    consumer_id     TEXT NOT NULL,
    admission_grant TEXT,
    outcome         TEXT NOT NULL CHECK (outcome IN ('released', 'expired')),
    reason          TEXT NOT NULL,
    ended_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX admission_endings_grant ON admission_endings (admission_grant);
CREATE INDEX admission_endings_consumer ON admission_endings (experience_id, consumer_id);

-- Units of each product held or sold through a pooled experience; the
-- conditional update against the pool size is what caps it.
CREATE TABLE experience_pools (
    experience_id TEXT    NOT NULL,
    product_id    TEXT    NOT NULL,
    variant_id    TEXT    NOT NULL DEFAULT '',
    used          INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (experience_id, product_id, variant_id)
);

-- The guide's table, same column names; admission_grant holds the digest.
CREATE TABLE reservations (
    id              UUID PRIMARY KEY,
    consumer_id     TEXT NOT NULL,
    experience_id   TEXT NOT NULL,
    admission_grant TEXT NOT NULL REFERENCES admissions (admission_grant),
    product_id      TEXT NOT NULL,
    variant_id      TEXT NOT NULL DEFAULT '',
    quantity        INTEGER NOT NULL CHECK (quantity > 0),
    status          TEXT NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'converted', 'released', 'expired')),
    created_at      TIMESTAMPTZ NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    converted_at    TIMESTAMPTZ,
    order_id        TEXT,
    ended_at        TIMESTAMPTZ,
    end_reason      TEXT,
    strategy        TEXT NOT NULL,
    window_seconds  INTEGER NOT NULL,
    buffer_seconds  INTEGER NOT NULL,
    FOREIGN KEY (product_id, variant_id) REFERENCES stock (product_id, variant_id)
);
CREATE INDEX idx_reservations_expires ON reservations (expires_at) WHERE status = 'active';
CREATE INDEX idx_reservations_consumer ON reservations (consumer_id, status);
-- The batch engine reads a consumer's holds per experience.
CREATE INDEX idx_reservations_pair ON reservations (experience_id, consumer_id);
CREATE INDEX idx_reservations_grant ON reservations (admission_grant);
CREATE INDEX idx_reservations_stock_active ON reservations (product_id, variant_id)
    WHERE status IN ('active', 'converted');

-- Applied command ids (the inbox). Kept far longer than Fanfare retries
-- (about 45 h); pruning, if ever, must keep at least 72 h.
CREATE TABLE inbox (
    command_id   UUID PRIMARY KEY,
    command_type TEXT NOT NULL,
    outcome      JSONB NOT NULL,
    topic        TEXT NOT NULL,
    partition    INTEGER NOT NULL,
    "offset"     BIGINT NOT NULL,
    applied_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Consumed positions, written in the same transaction as the state they
-- produced; Kafka's committed offsets are only a hint.
CREATE TABLE consumer_positions (
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset BIGINT  NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- Events waiting for the relay; rows stay after publishing (published_at)
-- until pruned, so the log can be compared with the state.
CREATE TABLE outbox (
    seq          BIGSERIAL PRIMARY KEY,
    event_id     UUID NOT NULL UNIQUE,
    event_type   TEXT NOT NULL,
    partition_key TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;

-- Results of `reconcile`, newest last; the latest is exposed as metrics.
CREATE TABLE reconcile_runs (
    id         BIGSERIAL PRIMARY KEY,
    ran_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    drift_rows INTEGER NOT NULL,
    repaired   BOOLEAN NOT NULL,
    details    JSONB NOT NULL
);
