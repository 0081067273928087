CREATE TABLE tasks (
    id            TEXT PRIMARY KEY,
    title         TEXT NOT NULL,
    prompt        TEXT NOT NULL,
    repo          TEXT NOT NULL,
    base_ref      TEXT NOT NULL,
    base_commit   TEXT NOT NULL,
    environment   TEXT NOT NULL,
    model         TEXT NOT NULL,
    model_payload TEXT,
    mode          TEXT NOT NULL,
    trigger       TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    status        TEXT NOT NULL,
    error         TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX tasks_created ON tasks (created_at DESC, id DESC);
CREATE INDEX tasks_status_created ON tasks (status, created_at DESC, id DESC);

CREATE TABLE attempts (
    id               TEXT PRIMARY KEY,
    task_id          TEXT NOT NULL REFERENCES tasks (id),
    number           INTEGER NOT NULL,
    status           TEXT NOT NULL,
    branch           TEXT NOT NULL,
    model            TEXT NOT NULL,
    runs             INTEGER NOT NULL DEFAULT 0,
    resumed_from     TEXT NOT NULL DEFAULT 'start',
    restart_reason   TEXT,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    worker           TEXT,
    queued_at        INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    head_commit      TEXT,
    diff             TEXT,
    diff_stats       TEXT,
    usage            TEXT NOT NULL DEFAULT '{}',
    turns            INTEGER NOT NULL DEFAULT 0,
    checks           TEXT NOT NULL DEFAULT '[]',
    summary          TEXT,
    error            TEXT,
    last_seq         INTEGER NOT NULL DEFAULT 0,
    UNIQUE (task_id, number)
);
CREATE INDEX attempts_queue ON attempts (status, queued_at, id);

CREATE TABLE events (
    attempt_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    run        INTEGER NOT NULL,
    ts         INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL,
    PRIMARY KEY (attempt_id, seq)
) WITHOUT ROWID;
