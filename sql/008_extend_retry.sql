-- Extending a hold: how many times an admission's expiry was moved by the
-- experience's extensionSeconds (at most maxExtensions).
ALTER TABLE admissions
    ADD COLUMN extensions INTEGER NOT NULL DEFAULT 0 CHECK (extensions >= 0);

-- Trying again after an expiry is kept with the endings (outcome 'active':
-- the admission holds again), with the time of the expiry it follows and the
-- retry window it was decided with, so facts that arrive later are weighed
-- against it by time.
ALTER TABLE admission_endings ADD COLUMN follows TIMESTAMPTZ,
    ADD COLUMN retry_window_seconds INTEGER;
ALTER TABLE admission_endings DROP CONSTRAINT admission_endings_outcome_check;
ALTER TABLE admission_endings ADD CONSTRAINT admission_endings_outcome_check
    CHECK (outcome IN ('released', 'expired', 'converted', 'active'));
ALTER TABLE admission_endings ADD CONSTRAINT admission_endings_retry_follows
    CHECK ((outcome = 'active') = (follows IS NOT NULL)
           AND (outcome = 'active') = (retry_window_seconds IS NOT NULL));
