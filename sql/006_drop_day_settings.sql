-- Drop-day settings of an experience: extending holds, trying again after
-- expiry, what a checkout completion converts, and pool sizes per product.
-- Every column has the default the settings model has. Experiences
-- configured before get those defaults: extending, retrying and per-product
-- pools off, and a checkout completion converting the ordered quantities.
ALTER TABLE experiences
    ADD COLUMN extension_seconds    INTEGER NOT NULL DEFAULT 0 CHECK (extension_seconds >= 0),
    ADD COLUMN max_extensions       INTEGER NOT NULL DEFAULT 0 CHECK (max_extensions >= 0),
    ADD COLUMN retry_window_seconds INTEGER NOT NULL DEFAULT 0 CHECK (retry_window_seconds >= 0),
    ADD COLUMN on_complete          TEXT    NOT NULL DEFAULT 'convert_ordered'
        CHECK (on_complete IN ('convert_ordered', 'convert_all')),
    ADD COLUMN pools                JSONB   NOT NULL DEFAULT '[]';
