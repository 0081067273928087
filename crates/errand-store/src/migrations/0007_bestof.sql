-- Reviewer and best-of-N. A task's reviewer is resolved at creation like its model (the
-- payload is what a worker needs to call it). An attempt whose model differs from the task's
-- has its own payload. The reviewer's verdicts are kept per attempt (JSON). A user's pick makes
-- an attempt the task's result; delivered_attempt marks that the result of a best-of-N task
-- was handed to delivery once all its attempts ended (claimed by exactly one worker).
ALTER TABLE tasks ADD COLUMN review_model TEXT;
ALTER TABLE tasks ADD COLUMN review_payload TEXT;
ALTER TABLE tasks ADD COLUMN max_review_rounds INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN picked_attempt TEXT;
ALTER TABLE tasks ADD COLUMN picked_by TEXT;
ALTER TABLE tasks ADD COLUMN picked_at INTEGER;
ALTER TABLE tasks ADD COLUMN delivered_attempt TEXT;
ALTER TABLE attempts ADD COLUMN model_payload TEXT;
ALTER TABLE attempts ADD COLUMN review TEXT;
