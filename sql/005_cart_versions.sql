-- Every cart a consumer put, by its time: a completion sells the cart as it
-- stood when the admission stopped holding, which a completion, an ending or
-- an admission that arrives late may need long after the cart changed again.
CREATE TABLE cart_versions (
    experience_id TEXT        NOT NULL,
    consumer_id   TEXT        NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    command_id    UUID        NOT NULL,
    items         JSONB       NOT NULL,
    PRIMARY KEY (experience_id, consumer_id, updated_at, command_id)
);
-- Carts put before this table existed: their command is not known here.
INSERT INTO cart_versions (experience_id, consumer_id, updated_at, command_id, items)
SELECT experience_id, consumer_id, updated_at, '00000000-0000-0000-0000-000000000000', items
FROM carts;
