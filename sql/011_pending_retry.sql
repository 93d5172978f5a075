-- A retry refused NOT_EXPIRED is kept too, pending (outcome 'active', no
-- `follows` yet): an expiry from before it that arrives later may make it
-- count. Every retry keeps its window; only a retry follows an expiry.
ALTER TABLE admission_endings DROP CONSTRAINT admission_endings_retry_follows;
ALTER TABLE admission_endings ADD CONSTRAINT admission_endings_retry_follows
    CHECK ((outcome = 'active') = (retry_window_seconds IS NOT NULL)
           AND (follows IS NULL OR outcome = 'active'));
