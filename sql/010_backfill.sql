-- Backfill: units freed later go to the refused lines of the experience's
-- still-active admissions, in admission order (README, "Backfill").
-- Experiences configured before keep what they had: no backfill.
ALTER TABLE experiences ADD COLUMN backfill BOOLEAN NOT NULL DEFAULT false;
