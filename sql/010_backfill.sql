-- Backfill: units freed later go to the refused lines of the experience's
-- still-active admissions, in admission order (README, "Backfill").
-- Experiences configured before keep what they had: no backfill.
ALTER TABLE experiences ADD COLUMN backfill BOOLEAN NOT NULL DEFAULT false;
-- The line: an experience's active admissions in admission order, which
-- backfill reads from its head, a bounded prefix per batch.
CREATE INDEX admissions_in_line ON admissions (experience_id, admitted_at, admission_grant)
    WHERE status = 'active';
