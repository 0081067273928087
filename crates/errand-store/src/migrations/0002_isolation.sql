-- Whether the worker that ran the attempt isolated its commands; every event of an
-- unisolated run is marked.
ALTER TABLE attempts ADD COLUMN isolated INTEGER NOT NULL DEFAULT 1;
ALTER TABLE events ADD COLUMN unisolated INTEGER NOT NULL DEFAULT 0;
