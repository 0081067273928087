-- Plan mode: every plan an attempt proposed (one row per revision, with the decision taken
-- on it), and every decision on a plan (approve, revise, reject) with who made it and when.
CREATE TABLE plan_revisions (
    attempt_id  TEXT NOT NULL REFERENCES attempts (id),
    task_id     TEXT NOT NULL REFERENCES tasks (id),
    number      INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    explanation TEXT,
    steps       TEXT NOT NULL,
    summary     TEXT,
    usage       TEXT NOT NULL DEFAULT '{}',
    turns       INTEGER NOT NULL DEFAULT 0,
    decision    TEXT,
    decided_by  TEXT,
    decided_at  INTEGER,
    comment     TEXT,
    PRIMARY KEY (attempt_id, number)
);

CREATE TABLE approvals (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id    TEXT NOT NULL REFERENCES tasks (id),
    attempt_id TEXT NOT NULL REFERENCES attempts (id),
    revision   INTEGER NOT NULL,
    action     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    comment    TEXT,
    at         INTEGER NOT NULL
);
CREATE INDEX approvals_attempt ON approvals (attempt_id, id);
