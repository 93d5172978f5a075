-- admission_endings keeps every ending and completion that may still change
-- hands: each one without a grant (it belongs to the consumer's latest
-- admission admitted at or before its time, which may arrive later), and
-- each with a grant whose admission has not arrived yet. Completions are
-- kept too, with their order.
ALTER TABLE admission_endings ADD COLUMN order_id TEXT;
ALTER TABLE admission_endings DROP CONSTRAINT admission_endings_outcome_check;
ALTER TABLE admission_endings ADD CONSTRAINT admission_endings_outcome_check
    CHECK (outcome IN ('released', 'expired', 'converted'));
ALTER TABLE admission_endings ADD CONSTRAINT admission_endings_completion_has_order
    CHECK ((outcome = 'converted') = (order_id IS NOT NULL));
