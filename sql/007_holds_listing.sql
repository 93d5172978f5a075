-- Operators list holds newest first within an experience (GET /v1/holds),
-- a keyset page at a time: (created_at, id) in index order, so a page reads
-- about as many rows as it shows instead of sorting the experience's holds.
CREATE INDEX reservations_listing ON reservations (experience_id, created_at, id);
