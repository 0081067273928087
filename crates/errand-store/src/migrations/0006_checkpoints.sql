-- Checkpoints: the latest state an attempt can resume from after its worker or the server
-- died (one row per attempt, replaced after every agent turn, deleted when the attempt ends).
-- `discarded_*` record the events of a dead run that came after the checkpoint and were
-- marked rolled back when the attempt went back to the queue.
CREATE TABLE checkpoints (
    attempt_id     TEXT PRIMARY KEY REFERENCES attempts (id),
    run            INTEGER NOT NULL,
    turn           INTEGER NOT NULL,
    commit_id      TEXT NOT NULL,
    conversation   TEXT NOT NULL,
    usage          TEXT NOT NULL,
    last_seq       INTEGER NOT NULL,
    state          TEXT NOT NULL DEFAULT 'null',
    created_at     INTEGER NOT NULL,
    discarded      INTEGER NOT NULL DEFAULT 0,
    discarded_from INTEGER,
    discarded_to   INTEGER
);
-- Events whose work was rolled back to a checkpoint (kept, marked).
ALTER TABLE events ADD COLUMN rolled_back INTEGER NOT NULL DEFAULT 0;
