-- Extending a hold: how many times an admission's expiry was moved by the
-- experience's extensionSeconds (at most maxExtensions).
ALTER TABLE admissions
    ADD COLUMN extensions INTEGER NOT NULL DEFAULT 0 CHECK (extensions >= 0);
