//! The SQLite back end: one file in WAL mode, one writer connection and a few readers.

mod plan;

use crate::{
    AttemptOutcome, Checkpoint, ClaimRequest, ClaimedAttempt, LeaseState, Notifier, PlanDecision,
    PlanSubmission, Result, Store, StoreError, TaskPage, TaskQuery,
};
use async_trait::async_trait;
use errand_core::{
    Attempt, Delivery, Event, EventKind, EventKind as K, NewTask, SetupInfo, Status, Task, Usage,
    now_ms, short_id,
};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_isolation.sql"),
    include_str!("migrations/0003_followup.sql"),
    include_str!("migrations/0004_setup.sql"),
    include_str!("migrations/0005_plan.sql"),
    include_str!("migrations/0006_checkpoints.sql"),
    include_str!("migrations/0007_bestof.sql"),
];
const READERS: usize = 3;

struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    notifier: Notifier,
    path: PathBuf,
}

/// SQLite-backed [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit (an accepted task, an appended event) survives power loss, not only a
    // crash of the process. fsync on this class of disk costs ~0.1 ms.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

fn lock(m: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    // A panic while holding the lock leaves the connection usable (SQLite rolls back the open
    // transaction when the Transaction guard drops), so a poisoned lock is safe to reuse.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let mut writer = open_conn(path)?;
        migrate(&mut writer)?;
        let mut readers = Vec::new();
        for _ in 0..READERS {
            let r = open_conn(path)?;
            r.pragma_update(None, "query_only", "ON")?;
            readers.push(Mutex::new(r));
        }
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
                notifier: Notifier::default(),
                path: path.to_path_buf(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = lock(&inner.writer);
            let mut tx =
                conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let out = f(&mut tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Db(format!("store task failed: {e}")))?
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let i = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            let conn = lock(&inner.readers[i]);
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Db(format!("store task failed: {e}")))?
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version as usize > MIGRATIONS.len() {
        return Err(StoreError::Db(format!(
            "database schema version {version} is newer than this errand build understands ({}); upgrade errand",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied database migration");
    }
    Ok(())
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Db(format!("encoding json: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("{what}: {e}").into(),
        )
    })
}

fn parse_status(s: &str) -> rusqlite::Result<Status> {
    s.parse::<Status>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

const TASK_COLS: &str = "id, title, prompt, repo, base_ref, base_commit, environment, model, mode, trigger, created_by, status, error, created_at, updated_at, review_model, max_review_rounds, picked_attempt, picked_by, picked_at";

fn task_from_row(r: &Row<'_>) -> rusqlite::Result<Task> {
    let id: String = r.get(0)?;
    Ok(Task {
        short_id: short_id(&id).to_string(),
        id,
        title: r.get(1)?,
        prompt: r.get(2)?,
        repo: r.get(3)?,
        base_ref: r.get(4)?,
        base_commit: r.get(5)?,
        environment: from_json(&r.get::<_, String>(6)?, "environment")?,
        model: r.get(7)?,
        mode: r.get(8)?,
        trigger: r.get(9)?,
        created_by: r.get(10)?,
        status: parse_status(&r.get::<_, String>(11)?)?,
        error: r.get(12)?,
        created_at_ms: r.get(13)?,
        updated_at_ms: r.get(14)?,
        attempts: Vec::new(),
        plan: None,
        plan_revisions: Vec::new(),
        approvals: Vec::new(),
        review_model: r.get(15)?,
        max_review_rounds: r.get::<_, i64>(16)?.clamp(0, u32::MAX as i64) as u32,
        // The attempt's number is filled in with the attempts (`complete_task`).
        picked: match r.get::<_, Option<String>>(17)? {
            Some(attempt_id) => Some(errand_core::Pick {
                attempt: 0,
                attempt_id,
                by: r.get::<_, Option<String>>(18)?.unwrap_or_default(),
                at_ms: r.get::<_, Option<i64>>(19)?.unwrap_or_default(),
            }),
            None => None,
        },
        selected_attempt: None,
    })
}

/// Fills in what depends on the attempts: the picked attempt's number, ranks, the result.
fn complete_task(task: &mut Task) {
    if let Some(p) = &mut task.picked {
        p.attempt = task
            .attempts
            .iter()
            .find(|a| a.id == p.attempt_id)
            .map(|a| a.number)
            .unwrap_or_default();
    }
    task.rank_attempts();
}

const ATTEMPT_COLS: &str = "id, task_id, number, status, branch, model, runs, resumed_from, restart_reason, worker, started_at, finished_at, head_commit, diff_stats, usage, turns, checks, summary, error, last_seq, lease_owner, delivery, review, setup";

fn attempt_from_row(r: &Row<'_>) -> rusqlite::Result<Attempt> {
    let diff_stats: Option<String> = r.get(13)?;
    Ok(Attempt {
        id: r.get(0)?,
        task_id: r.get(1)?,
        number: r.get(2)?,
        status: parse_status(&r.get::<_, String>(3)?)?,
        branch: r.get(4)?,
        model: r.get(5)?,
        runs: r.get(6)?,
        resumed_from: r.get(7)?,
        restart_reason: r.get(8)?,
        worker: r.get(9)?,
        started_at_ms: r.get(10)?,
        finished_at_ms: r.get(11)?,
        head_commit: r.get(12)?,
        diff_stats: match diff_stats {
            Some(s) => Some(from_json(&s, "diff_stats")?),
            None => None,
        },
        usage: from_json(&r.get::<_, String>(14)?, "usage")?,
        turns: r.get::<_, i64>(15)? as u64,
        checks: from_json(&r.get::<_, String>(16)?, "checks")?,
        summary: r.get(17)?,
        error: r.get(18)?,
        last_seq: r.get(19)?,
        active_worker: r.get(20)?,
        delivery: match r.get::<_, Option<String>>(21)? {
            Some(d) => serde_json::from_str(&d).ok(),
            None => None,
        },
        review: match r.get::<_, Option<String>>(22)? {
            Some(d) => Some(from_json(&d, "review")?),
            None => None,
        },
        rank: None,
        setup: match r.get::<_, Option<String>>(23)? {
            Some(d) => serde_json::from_str(&d).ok(),
            None => None,
        },
    })
}

fn load_attempts(conn: &Connection, task_id: &str) -> Result<Vec<Attempt>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ATTEMPT_COLS} FROM attempts WHERE task_id = ?1 ORDER BY number"
    ))?;
    let rows = stmt.query_map([task_id], attempt_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn load_task(conn: &Connection, id: &str) -> Result<Task> {
    let mut task = conn
        .query_row(
            &format!("SELECT {TASK_COLS} FROM tasks WHERE id = ?1"),
            [id],
            task_from_row,
        )
        .optional()?
        .ok_or_else(|| not_found_task(id))?;
    task.attempts = load_attempts(conn, &task.id)?;
    complete_task(&mut task);
    plan::load_into(conn, &mut task)?;
    Ok(task)
}

fn not_found_task(id: &str) -> StoreError {
    StoreError::NotFound(format!(
        "no task with id '{id}'; run `errand ls` to see task ids"
    ))
}

fn resolve_task_id(conn: &Connection, id_or_prefix: &str) -> Result<String> {
    if !errand_core::id::looks_like_id_prefix(id_or_prefix) {
        return Err(not_found_task(id_or_prefix));
    }
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM tasks WHERE id >= ?1 AND id < ?1 || '~' ORDER BY id LIMIT 2",
    )?;
    let ids: Vec<String> = stmt
        .query_map([id_or_prefix], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    match ids.len() {
        0 => Err(not_found_task(id_or_prefix)),
        1 => Ok(ids.into_iter().next().unwrap_or_default()),
        _ => Err(StoreError::Ambiguous(format!(
            "task id prefix '{id_or_prefix}' matches several tasks; type more characters"
        ))),
    }
}

/// Appends events inside `tx`, fenced by the lease owner when given. Returns the last seq.
fn append_in(
    tx: &Transaction<'_>,
    attempt_id: &str,
    lease_owner: Option<&str>,
    events: &[EventKind],
) -> Result<i64> {
    let n = events.len() as i64;
    let row: Option<(i64, i64, bool)> = tx
        .query_row(
            "UPDATE attempts SET last_seq = last_seq + ?2
             WHERE id = ?1 AND (?3 IS NULL OR lease_owner = ?3)
             RETURNING last_seq, runs, isolated",
            params![attempt_id, n, lease_owner],
            |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? == 0)),
        )
        .optional()?;
    let Some((last, run, unisolated)) = row else {
        let exists: bool = tx
            .query_row("SELECT 1 FROM attempts WHERE id = ?1", [attempt_id], |_| {
                Ok(true)
            })
            .optional()?
            .unwrap_or(false);
        return Err(if exists {
            StoreError::LeaseLost(attempt_id.to_string())
        } else {
            StoreError::NotFound(format!("no attempt with id '{attempt_id}'"))
        });
    };
    let ts = now_ms();
    let mut stmt = tx.prepare_cached(
        "INSERT INTO events (attempt_id, seq, run, ts, kind, data, unisolated) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let first = last - n + 1;
    for (i, ev) in events.iter().enumerate() {
        stmt.execute(params![
            attempt_id,
            first + i as i64,
            run,
            ts,
            ev.type_name(),
            json(ev)?,
            unisolated
        ])?;
    }
    Ok(last)
}

/// Recomputes a task's status from its attempts.
fn refresh_task_status(tx: &Transaction<'_>, task_id: &str) -> Result<()> {
    let mut stmt = tx.prepare_cached("SELECT status, error FROM attempts WHERE task_id = ?1")?;
    let rows: Vec<(String, Option<String>)> = stmt
        .query_map([task_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut statuses = Vec::new();
    for (s, _) in &rows {
        statuses.push(parse_status(s)?);
    }
    let status = Status::derive_task_status(&statuses);
    // Why a task ended: a failure's error, or the reason a cancelled attempt kept (a rejected
    // plan), from the attempts that ended that way.
    let error = if matches!(status, Status::Failed | Status::Cancelled) {
        rows.into_iter()
            .zip(&statuses)
            .filter(|(_, s)| **s == status)
            .filter_map(|((_, e), _)| e)
            .next_back()
    } else {
        None
    };
    tx.execute(
        "UPDATE tasks SET status = ?2, error = ?3, updated_at = ?4 WHERE id = ?1",
        params![task_id, status.as_str(), error, now_ms()],
    )?;
    Ok(())
}

fn attempt_task_id(
    tx: &Transaction<'_>,
    attempt_id: &str,
) -> Result<(String, Status, Option<String>)> {
    tx.query_row(
        "SELECT task_id, status, lease_owner FROM attempts WHERE id = ?1",
        [attempt_id],
        |r| Ok((r.get(0)?, parse_status(&r.get::<_, String>(1)?)?, r.get(2)?)),
    )
    .optional()?
    .ok_or_else(|| StoreError::NotFound(format!("no attempt with id '{attempt_id}'")))
}

fn requeue_where(
    tx: &Transaction<'_>,
    ids: Vec<(String, String, Status, Option<String>)>,
    reason: &dyn Fn(&Status, &Option<String>) -> String,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (id, task_id, status, worker) in ids {
        let why = reason(&status, &worker);
        let changed = tx.execute(
            "UPDATE attempts SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,
                 restart_reason = ?3, queued_at = ?4
             WHERE id = ?1 AND status = ?2",
            params![id, status.as_str(), why, now_ms()],
        )?;
        if changed == 1 {
            let reason = match roll_back_to_checkpoint(tx, &id)? {
                Some(note) => format!("{why}; {note}"),
                None => why,
            };
            append_in(
                tx,
                &id,
                None,
                &[K::Status {
                    from: status,
                    to: Status::Queued,
                    reason: Some(reason),
                }],
            )?;
            refresh_task_status(tx, &task_id)?;
            out.push(id);
        }
    }
    Ok(out)
}

/// When the attempt has a checkpoint, marks the events its dead run wrote after it (all but
/// `claimed` and `status`) as rolled back, records how many on the checkpoint for the next
/// run's `claimed` event, and says so. Runs in the requeue transaction, while nobody holds
/// the lease, so no event can slip in between.
fn roll_back_to_checkpoint(tx: &Transaction<'_>, attempt_id: &str) -> Result<Option<String>> {
    let cp: Option<(i64, i64)> = tx
        .query_row(
            "SELECT turn, last_seq FROM checkpoints WHERE attempt_id = ?1",
            [attempt_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((turn, last_seq)) = cp else {
        return Ok(None);
    };
    const WORK: &str =
        "attempt_id = ?1 AND seq > ?2 AND rolled_back = 0 AND kind NOT IN ('claimed', 'status')";
    let (n, first, last): (i64, Option<i64>, Option<i64>) = tx.query_row(
        &format!("SELECT COUNT(*), MIN(seq), MAX(seq) FROM events WHERE {WORK}"),
        params![attempt_id, last_seq],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    if n > 0 {
        tx.execute(
            &format!("UPDATE events SET rolled_back = 1 WHERE {WORK}"),
            params![attempt_id, last_seq],
        )?;
    }
    tx.execute(
        "UPDATE checkpoints SET discarded = ?2, discarded_from = ?3, discarded_to = ?4
         WHERE attempt_id = ?1",
        params![attempt_id, n, first, last],
    )?;
    Ok(Some(match (first, last) {
        (Some(a), Some(b)) if n > 0 => format!(
            "resuming from the checkpoint after turn {turn}; {n} later event{} (#{a}–#{b}) rolled back",
            if n == 1 { "" } else { "s" }
        ),
        _ => {
            format!("resuming from the checkpoint after turn {turn}; nothing after it to roll back")
        }
    }))
}

fn checkpoint_from_row(r: &Row<'_>) -> rusqlite::Result<Checkpoint> {
    Ok(Checkpoint {
        turn: r.get::<_, i64>(0)? as u64,
        commit: r.get(1)?,
        conversation: from_json(&r.get::<_, String>(2)?, "checkpoint conversation")?,
        usage: from_json(&r.get::<_, String>(3)?, "checkpoint usage")?,
        last_seq: r.get(4)?,
        state: from_json(&r.get::<_, String>(5)?, "checkpoint state")?,
    })
}

const CHECKPOINT_COLS: &str = "turn, commit_id, conversation, usage, last_seq, state";

const ACTIVE_SQL: &str = "('preparing','planning','running','checking','verifying')";

/// Takes attempts back from dead workers: active attempts go back to the queue (with `reason`),
/// and ended attempts are released, so that their streams can end. With `expired_before`, only
/// leases that expired before then; without, every lease (all workers are known dead).
fn reclaim(
    tx: &Transaction<'_>,
    expired_before: Option<i64>,
    reason: &dyn Fn(&Status, &Option<String>) -> String,
) -> Result<Vec<String>> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT id, task_id, status, lease_owner FROM attempts
         WHERE status IN {ACTIVE_SQL} AND (?1 IS NULL OR lease_expires_at < ?1)"
    ))?;
    let rows: Vec<(String, String, Status, Option<String>)> = stmt
        .query_map([expired_before], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                parse_status(&r.get::<_, String>(2)?)?,
                r.get(3)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    drop(stmt);
    tx.execute(
        &format!(
            "UPDATE attempts SET lease_owner = NULL, lease_expires_at = NULL
             WHERE lease_owner IS NOT NULL AND status NOT IN {ACTIVE_SQL}
               AND (?1 IS NULL OR lease_expires_at < ?1)"
        ),
        [expired_before],
    )?;
    requeue_where(tx, rows, reason)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_task(&self, task: NewTask) -> Result<Task> {
        if task.attempts.is_empty() {
            return Err(StoreError::Invalid(
                "a task needs at least one attempt".into(),
            ));
        }
        let id = task.id.clone();
        let out = self
            .write(move |tx| {
                let now = now_ms();
                tx.execute(
                    "INSERT INTO tasks (id, title, prompt, repo, base_ref, base_commit, environment, model, model_payload, mode, trigger, created_by, status, created_at, updated_at, review_model, review_payload, max_review_rounds)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'queued', ?13, ?13, ?14, ?15, ?16)",
                    params![
                        task.id,
                        task.title,
                        task.prompt,
                        task.repo,
                        task.base_ref,
                        task.base_commit,
                        json(&task.environment)?,
                        task.model,
                        task.model_payload.as_ref().map(json).transpose()?,
                        task.mode,
                        task.trigger,
                        task.created_by,
                        now,
                        task.review.as_ref().map(|r| r.model.clone()),
                        task.review
                            .as_ref()
                            .and_then(|r| r.payload.as_ref())
                            .map(json)
                            .transpose()?,
                        task.review.as_ref().map_or(0, |r| r.max_rounds as i64)
                    ],
                )?;
                for a in &task.attempts {
                    tx.execute(
                        "INSERT INTO attempts (id, task_id, number, status, branch, model, queued_at, model_payload)
                         VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7)",
                        params![
                            a.id,
                            task.id,
                            a.number,
                            a.branch,
                            a.model,
                            now,
                            a.model_payload.as_ref().map(json).transpose()?
                        ],
                    )?;
                }
                load_task(tx, &task.id)
            })
            .await?;
        tracing::debug!(task = %id, "task created");
        self.inner.notifier.work_queued();
        Ok(out)
    }

    async fn get_task(&self, id_or_prefix: &str) -> Result<Task> {
        let id = id_or_prefix.to_string();
        self.read(move |c| {
            let full = resolve_task_id(c, &id)?;
            load_task(c, &full)
        })
        .await
    }

    async fn list_tasks(&self, query: &TaskQuery) -> Result<TaskPage> {
        let limit = query.limit.clamp(1, 500);
        let status = query.status.map(|s| s.as_str().to_string());
        // Cursor: "<created_at>:<id>" of the last task of the previous page (newest first).
        let cursor = match &query.cursor {
            None => None,
            Some(c) => {
                let (ts, id) = c
                    .split_once(':')
                    .ok_or_else(|| StoreError::Invalid(format!("malformed cursor '{c}'")))?;
                let ts: i64 = ts
                    .parse()
                    .map_err(|_| StoreError::Invalid(format!("malformed cursor '{c}'")))?;
                Some((ts, id.to_string()))
            }
        };
        self.read(move |c| {
            let (cts, cid) = cursor.unwrap_or((i64::MAX, String::new()));
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {TASK_COLS} FROM tasks
                 WHERE (?1 IS NULL OR status = ?1)
                   AND (created_at < ?2 OR (created_at = ?2 AND id < ?3))
                 ORDER BY created_at DESC, id DESC LIMIT ?4"
            ))?;
            let cid = if cid.is_empty() { "~".to_string() } else { cid };
            let mut tasks: Vec<Task> = stmt
                .query_map(params![status, cts, cid, (limit + 1) as i64], task_from_row)?
                .collect::<rusqlite::Result<_>>()?;
            let next_cursor = if tasks.len() > limit {
                tasks.truncate(limit);
                tasks
                    .last()
                    .map(|t| format!("{}:{}", t.created_at_ms, t.id))
            } else {
                None
            };
            for t in &mut tasks {
                t.attempts = load_attempts(c, &t.id)?;
                complete_task(t);
                plan::load_into(c, t)?;
            }
            Ok(TaskPage { tasks, next_cursor })
        })
        .await
    }

    async fn cancel_task(&self, id: &str, reason: &str) -> Result<Task> {
        let id = id.to_string();
        let reason = reason.to_string();
        let (task, touched) = self
            .write(move |tx| {
                let full = resolve_task_id(tx, &id)?;
                let attempts = load_attempts(tx, &full)?;
                let mut touched = Vec::new();
                for a in attempts.iter().filter(|a| !a.status.is_terminal()) {
                    let changed = tx.execute(
                        "UPDATE attempts SET status = 'cancelled', finished_at = ?3,
                             error = NULL
                         WHERE id = ?1 AND status = ?2",
                        params![a.id, a.status.as_str(), now_ms()],
                    )?;
                    if changed == 1 {
                        if a.status == Status::Queued {
                            // No worker holds it: nothing will resume from its checkpoint.
                            tx.execute("DELETE FROM checkpoints WHERE attempt_id = ?1", [&a.id])?;
                        }
                        append_in(
                            tx,
                            &a.id,
                            None,
                            &[K::Status {
                                from: a.status,
                                to: Status::Cancelled,
                                reason: Some(reason.clone()),
                            }],
                        )?;
                        touched.push(a.id.clone());
                    }
                }
                refresh_task_status(tx, &full)?;
                Ok((load_task(tx, &full)?, touched))
            })
            .await?;
        for a in touched {
            self.inner.notifier.events_appended(&a);
            self.inner.notifier.attempt_cancelled(&a);
        }
        Ok(task)
    }

    async fn decide_plan(&self, id: &str, decision: &PlanDecision) -> Result<Task> {
        let (id, decision) = (id.to_string(), decision.clone());
        let (task, aid, queued) = self
            .write(move |tx| plan::decide(tx, &id, &decision))
            .await?;
        self.inner.notifier.events_appended(&aid);
        if queued {
            self.inner.notifier.work_queued();
        }
        Ok(task)
    }

    async fn submit_plan(
        &self,
        attempt_id: &str,
        worker: &str,
        plan: PlanSubmission,
    ) -> Result<Status> {
        let (aid, worker) = (attempt_id.to_string(), worker.to_string());
        let status = self
            .write(move |tx| {
                let status = plan::submit(tx, &aid, &worker, &plan)?;
                // The planning run is over: the next run (implementing or revising the plan)
                // starts from the plan, not from a checkpoint of the planning run.
                tx.execute("DELETE FROM checkpoints WHERE attempt_id = ?1", [&aid])?;
                Ok(status)
            })
            .await?;
        self.inner.notifier.events_appended(attempt_id);
        Ok(status)
    }

    async fn set_delivery(&self, attempt_id: &str, delivery: &Delivery) -> Result<()> {
        let (aid, d) = (attempt_id.to_string(), json(delivery)?);
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE attempts SET delivery = ?2 WHERE id = ?1",
                params![aid, d],
            )?;
            if n != 1 {
                return Err(StoreError::NotFound(format!("no attempt {aid}")));
            }
            Ok(())
        })
        .await
    }

    async fn pick_attempt(&self, task_id: &str, attempt_id: &str, by: &str) -> Result<Task> {
        let (tid, aid, by) = (task_id.to_string(), attempt_id.to_string(), by.to_string());
        let task = self
            .write(move |tx| {
                let full = resolve_task_id(tx, &tid)?;
                let task = load_task(tx, &full)?;
                let Some(a) = task.attempts.iter().find(|a| a.id == aid).cloned() else {
                    return Err(StoreError::NotFound(format!(
                        "task {} has no attempt '{aid}'",
                        task.short_id
                    )));
                };
                if !a.status.is_terminal() {
                    return Err(StoreError::WrongState(format!(
                        "attempt {} of task {} is {}; pick it once it has ended",
                        a.number, task.short_id, a.status
                    )));
                }
                if a.head_commit.is_none() {
                    return Err(StoreError::WrongState(format!(
                        "attempt {} of task {} ended {} without a commit; there is nothing to pick",
                        a.number, task.short_id, a.status
                    )));
                }
                let before = task.result_attempt().map(|r| r.number);
                tx.execute(
                    "UPDATE tasks SET picked_attempt = ?2, picked_by = ?3, picked_at = ?4, updated_at = ?4 WHERE id = ?1",
                    params![full, a.id, by, now_ms()],
                )?;
                let message = match before {
                    Some(n) if n != a.number => format!(
                        "picked by {by} as the task's result (instead of attempt {n})"
                    ),
                    _ => format!("picked by {by} as the task's result"),
                };
                append_in(tx, &a.id, None, &[K::Notice { message }])?;
                load_task(tx, &full)
            })
            .await?;
        if let Some(a) = task.result_attempt() {
            self.inner.notifier.events_appended(&a.id);
        }
        Ok(task)
    }

    async fn claim_result_delivery(&self, task_id: &str) -> Result<Option<Task>> {
        let tid = task_id.to_string();
        self.write(move |tx| {
            let full = resolve_task_id(tx, &tid)?;
            let task = load_task(tx, &full)?;
            let ended = task.attempts.iter().all(|a| a.status.is_terminal());
            let cancelled = task
                .attempts
                .iter()
                .any(|a| a.status == Status::Cancelled);
            let done = task.attempts.iter().any(|a| a.status == Status::Done);
            if !ended || cancelled || !done {
                return Ok(None);
            }
            let Some(result) = task.result_attempt().map(|a| a.id.clone()) else {
                return Ok(None);
            };
            let changed = tx.execute(
                "UPDATE tasks SET delivered_attempt = ?2 WHERE id = ?1 AND delivered_attempt IS NULL",
                params![full, result],
            )?;
            Ok((changed == 1).then_some(task))
        })
        .await
    }

    async fn set_setup(&self, attempt_id: &str, worker: &str, setup: &SetupInfo) -> Result<()> {
        let (aid, worker, s) = (attempt_id.to_string(), worker.to_string(), json(setup)?);
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE attempts SET setup = ?2 WHERE id = ?1 AND lease_owner = ?3",
                params![aid, s, worker],
            )?;
            if n != 1 {
                attempt_task_id(tx, &aid)?;
                return Err(StoreError::LeaseLost(aid));
            }
            Ok(())
        })
        .await?;
        self.inner.notifier.events_appended(attempt_id);
        Ok(())
    }

    async fn followup(&self, id: &str, prompt: &str, by: &str) -> Result<Task> {
        let (id, prompt, by) = (id.to_string(), prompt.to_string(), by.to_string());
        let (task, aid) = self
            .write(move |tx| {
                let full = resolve_task_id(tx, &id)?;
                let task = load_task(tx, &full)?;
                let Some(a) = task.result_attempt().cloned() else {
                    return Err(StoreError::Invalid(format!(
                        "task {} has no attempt to follow up",
                        task.short_id
                    )));
                };
                if !matches!(a.status, Status::Done | Status::Failed) {
                    return Err(StoreError::WrongState(format!(
                        "task {} is {}; a follow-up needs it done or failed{}",
                        task.short_id,
                        a.status,
                        if a.status == Status::Cancelled {
                            " (start a new task instead)"
                        } else {
                            " (wait for it to finish, or cancel it)"
                        }
                    )));
                }
                if a.head_commit.is_none() {
                    return Err(StoreError::WrongState(format!(
                        "attempt {} of task {} has no commit to continue from",
                        a.number, task.short_id
                    )));
                }
                let changed = tx.execute(
                    "UPDATE attempts SET status = 'queued', pending_followup = ?3, queued_at = ?4,
                         finished_at = NULL, error = NULL, restart_reason = NULL
                     WHERE id = ?1 AND status = ?2 AND lease_owner IS NULL",
                    params![a.id, a.status.as_str(), prompt, now_ms()],
                )?;
                if changed != 1 {
                    return Err(StoreError::WrongState(format!(
                        "task {} changed meanwhile; try again",
                        task.short_id
                    )));
                }
                // Best-of-N: the attempt followed up stays the task's result while it runs
                // again (unranked), as if picked by whoever asked.
                if task.attempts.len() > 1 && task.picked.is_none() {
                    tx.execute(
                        "UPDATE tasks SET picked_attempt = ?2, picked_by = ?3, picked_at = ?4 WHERE id = ?1",
                        params![task.id, a.id, by, now_ms()],
                    )?;
                }
                append_in(
                    tx,
                    &a.id,
                    None,
                    &[
                        K::Notice {
                            message: format!("follow-up from {by}: {prompt}"),
                        },
                        K::Status {
                            from: a.status,
                            to: Status::Queued,
                            reason: Some("follow-up".into()),
                        },
                    ],
                )?;
                refresh_task_status(tx, &full)?;
                Ok((load_task(tx, &full)?, a.id))
            })
            .await?;
        self.inner.notifier.events_appended(&aid);
        self.inner.notifier.work_queued();
        Ok(task)
    }

    async fn claim_attempt(&self, claim: &ClaimRequest) -> Result<Option<ClaimedAttempt>> {
        let claim = claim.clone();
        let out = self
            .write(move |tx| {
                type Row = (
                    String,
                    String,
                    i64,
                    Option<String>,
                    Option<String>,
                    Option<String>,
                );
                let row: Option<Row> = tx
                    .query_row(
                        "SELECT a.id, a.task_id, a.runs, a.restart_reason, a.pending_followup,
                                a.conversation FROM attempts a
                         WHERE a.status = 'queued' ORDER BY a.queued_at, a.id LIMIT 1",
                        [],
                        |r| {
                            Ok((
                                r.get(0)?,
                                r.get(1)?,
                                r.get(2)?,
                                r.get(3)?,
                                r.get(4)?,
                                r.get(5)?,
                            ))
                        },
                    )
                    .optional()?;
                let Some((attempt_id, task_id, runs, restart_reason, followup, conversation)) = row
                else {
                    return Ok(None);
                };
                let now = now_ms();
                let run = runs + 1;
                let plan_note = match &followup {
                    None => plan::claim_note(tx, &attempt_id, run, restart_reason.as_deref())?,
                    Some(_) => None,
                };
                type CpRow = (Checkpoint, Option<i64>, Option<i64>, Option<i64>);
                let checkpoint: Option<CpRow> = tx
                    .query_row(
                        &format!(
                            "SELECT {CHECKPOINT_COLS}, discarded, discarded_from, discarded_to
                             FROM checkpoints WHERE attempt_id = ?1"
                        ),
                        [&attempt_id],
                        |r| Ok((checkpoint_from_row(r)?, r.get(6)?, r.get(7)?, r.get(8)?)),
                    )
                    .optional()?;
                let resumed_from = if checkpoint.is_some() {
                    "checkpoint"
                } else if followup.is_some() {
                    "followup"
                } else if let Some((from, _)) = &plan_note {
                    from
                } else {
                    "start"
                };
                let changed = tx.execute(
                    "UPDATE attempts SET status = 'preparing', runs = ?2, lease_owner = ?3,
                         lease_expires_at = ?4, worker = ?3, resumed_from = ?7, isolated = ?6,
                         started_at = COALESCE(started_at, ?5)
                     WHERE id = ?1 AND status = 'queued'",
                    params![
                        attempt_id,
                        run,
                        claim.worker,
                        now.saturating_add(claim.lease_ttl_ms),
                        now,
                        claim.isolated,
                        resumed_from
                    ],
                )?;
                if changed != 1 {
                    return Ok(None);
                }
                let note = if let Some((cp, discarded, first, last)) = &checkpoint {
                    let n = discarded.unwrap_or(0);
                    Some(format!(
                        "run {run} resumes from the checkpoint after turn {}{}; {}",
                        cp.turn,
                        restart_reason
                            .as_ref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default(),
                        match (first, last) {
                            (Some(a), Some(b)) if n > 0 => format!(
                                "the {n} event{} of the previous run after it (#{a}–#{b}) are marked rolled back: their work was discarded and is done again",
                                if n == 1 { "" } else { "s" }
                            ),
                            _ => "no work after it was lost".to_string(),
                        }
                    ))
                } else if let Some(f) = &followup {
                    Some(format!(
                        "run {run} is a follow-up on the branch head: {}",
                        errand_core::text::title_of(f, 200)
                    ))
                } else if let Some((_, note)) = plan_note {
                    Some(note)
                } else if run > 1 {
                    Some(format!(
                        "run {run} starts over from the beginning{}",
                        restart_reason
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    ))
                } else {
                    None
                };
                append_in(
                    tx,
                    &attempt_id,
                    Some(&claim.worker),
                    &[
                        K::Claimed {
                            worker: claim.worker.clone(),
                            sandbox: claim.sandbox.clone(),
                            isolated: claim.isolated,
                            resumed_from: resumed_from.into(),
                            note,
                            turn: checkpoint.as_ref().map(|c| c.0.turn),
                            rolled_back_events: checkpoint
                                .as_ref()
                                .map(|c| c.1.unwrap_or(0).max(0) as u64),
                        },
                        K::Status {
                            from: Status::Queued,
                            to: Status::Preparing,
                            reason: None,
                        },
                    ],
                )?;
                refresh_task_status(tx, &task_id)?;
                let task = load_task(tx, &task_id)?;
                let (payload, review_payload): (Option<String>, Option<String>) = tx.query_row(
                    "SELECT COALESCE(a.model_payload, t.model_payload), t.review_payload
                     FROM attempts a JOIN tasks t ON t.id = a.task_id WHERE a.id = ?1",
                    [&attempt_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                let review_payload = match review_payload {
                    Some(p) => Some(
                        serde_json::from_str(&p)
                            .map_err(|e| StoreError::Db(format!("review payload: {e}")))?,
                    ),
                    None => None,
                };
                let model_payload = match payload {
                    Some(p) => Some(
                        serde_json::from_str(&p)
                            .map_err(|e| StoreError::Db(format!("model payload: {e}")))?,
                    ),
                    None => None,
                };
                let attempt = task
                    .attempts
                    .iter()
                    .find(|a| a.id == attempt_id)
                    .cloned()
                    .ok_or_else(|| StoreError::Db("claimed attempt vanished".into()))?;
                let conversation = match conversation {
                    Some(c) => Some(
                        serde_json::from_str(&c)
                            .map_err(|e| StoreError::Db(format!("conversation: {e}")))?,
                    ),
                    None => None,
                };
                Ok(Some(ClaimedAttempt {
                    task,
                    attempt,
                    model_payload,
                    run,
                    followup,
                    conversation,
                    review_payload,
                    checkpoint: checkpoint.map(|c| c.0),
                }))
            })
            .await?;
        if let Some(c) = &out {
            self.inner.notifier.events_appended(&c.attempt.id);
        }
        Ok(out)
    }

    async fn heartbeat(&self, attempt_id: &str, worker: &str, ttl_ms: i64) -> Result<LeaseState> {
        let (attempt_id, worker) = (attempt_id.to_string(), worker.to_string());
        self.write(move |tx| {
            let (_, status, owner) = attempt_task_id(tx, &attempt_id)?;
            if owner.as_deref() != Some(worker.as_str()) {
                return Ok(LeaseState::Lost);
            }
            if status == Status::Cancelled {
                // The holder is still tearing down: keep its lease alive for its last events.
                tx.execute(
                    "UPDATE attempts SET lease_expires_at = ?2 WHERE id = ?1",
                    params![attempt_id, now_ms().saturating_add(ttl_ms)],
                )?;
                return Ok(LeaseState::Cancelled);
            }
            if !status.is_active() {
                return Ok(LeaseState::Lost);
            }
            tx.execute(
                "UPDATE attempts SET lease_expires_at = ?2 WHERE id = ?1",
                params![attempt_id, now_ms().saturating_add(ttl_ms)],
            )?;
            Ok(LeaseState::Held)
        })
        .await
    }

    async fn transition(
        &self,
        attempt_id: &str,
        worker: &str,
        from: Status,
        to: Status,
        reason: Option<String>,
    ) -> Result<()> {
        if !from.can_transition_to(to) {
            return Err(StoreError::Invalid(format!(
                "transition {from} → {to} is not allowed"
            )));
        }
        let (aid, worker) = (attempt_id.to_string(), worker.to_string());
        self.write(move |tx| {
            let (task_id, actual, owner) = attempt_task_id(tx, &aid)?;
            if owner.as_deref() != Some(worker.as_str()) {
                return Err(StoreError::LeaseLost(aid.clone()));
            }
            let changed = tx.execute(
                "UPDATE attempts SET status = ?3 WHERE id = ?1 AND status = ?2 AND lease_owner = ?4",
                params![aid, from.as_str(), to.as_str(), worker],
            )?;
            if changed != 1 {
                return Err(StoreError::Conflict {
                    attempt: aid.clone(),
                    expected: from.to_string(),
                    actual,
                });
            }
            append_in(tx, &aid, Some(&worker), &[K::Status { from, to, reason }])?;
            refresh_task_status(tx, &task_id)?;
            Ok(())
        })
        .await?;
        self.inner.notifier.events_appended(attempt_id);
        Ok(())
    }

    async fn update_usage(
        &self,
        attempt_id: &str,
        worker: &str,
        usage: Usage,
        turns: u64,
    ) -> Result<()> {
        let (aid, worker) = (attempt_id.to_string(), worker.to_string());
        self.write(move |tx| {
            tx.execute(
                "UPDATE attempts SET usage = ?2, turns = ?3 WHERE id = ?1 AND lease_owner = ?4",
                params![aid, json(&usage)?, turns as i64, worker],
            )?;
            Ok(())
        })
        .await
    }

    async fn finish_attempt(
        &self,
        attempt_id: &str,
        worker: &str,
        outcome: AttemptOutcome,
    ) -> Result<Status> {
        // A non-final outcome would leave an active attempt without a lease, which no sweep
        // ever puts back in the queue.
        if let Some(s) = outcome.status
            && !s.is_terminal()
        {
            return Err(StoreError::Invalid(format!(
                "an attempt cannot finish as {s}; expected done or failed"
            )));
        }
        let (aid, worker) = (attempt_id.to_string(), worker.to_string());
        let status = self
            .write(move |tx| {
                let (task_id, actual, owner) = attempt_task_id(tx, &aid)?;
                if owner.as_deref() != Some(worker.as_str()) {
                    return Err(StoreError::LeaseLost(aid.clone()));
                }
                let target = outcome.status.unwrap_or(Status::Failed);
                let final_status = if actual.is_active() { target } else { actual };
                tx.execute(
                    "UPDATE attempts SET status = ?2, head_commit = ?3, diff = ?4, diff_stats = ?5,
                         usage = ?6, turns = ?7, checks = ?8, summary = ?9, error = ?10,
                         finished_at = COALESCE(finished_at, ?11), lease_owner = NULL,
                         lease_expires_at = NULL, conversation = COALESCE(?12, conversation),
                         pending_followup = NULL, delivery = COALESCE(?13, delivery),
                         review = COALESCE(?14, review)
                     WHERE id = ?1",
                    params![
                        aid,
                        final_status.as_str(),
                        outcome.head_commit,
                        outcome.diff,
                        outcome.diff_stats.as_ref().map(json).transpose()?,
                        json(&outcome.usage)?,
                        outcome.turns as i64,
                        json(&outcome.checks)?,
                        outcome.summary,
                        if final_status == Status::Failed {
                            outcome.error.clone()
                        } else {
                            None
                        },
                        now_ms(),
                        outcome.conversation.as_ref().map(json).transpose()?,
                        outcome.delivery.as_ref().map(json).transpose()?,
                        outcome.review.as_ref().map(json).transpose()?
                    ],
                )?;
                // The work is on the branch now; nothing resumes from the checkpoint.
                tx.execute("DELETE FROM checkpoints WHERE attempt_id = ?1", [&aid])?;
                if final_status != actual {
                    append_in(
                        tx,
                        &aid,
                        None,
                        &[K::Status {
                            from: actual,
                            to: final_status,
                            reason: outcome.error.clone(),
                        }],
                    )?;
                }
                refresh_task_status(tx, &task_id)?;
                Ok(final_status)
            })
            .await?;
        self.inner.notifier.events_appended(attempt_id);
        Ok(status)
    }

    async fn append_events(
        &self,
        attempt_id: &str,
        lease_owner: Option<&str>,
        events: Vec<EventKind>,
    ) -> Result<i64> {
        if events.is_empty() {
            return self.get_attempt(attempt_id).await.map(|a| a.last_seq);
        }
        let (aid, owner) = (attempt_id.to_string(), lease_owner.map(str::to_string));
        let last = self
            .write(move |tx| append_in(tx, &aid, owner.as_deref(), &events))
            .await?;
        self.inner.notifier.events_appended(attempt_id);
        Ok(last)
    }

    async fn list_events(
        &self,
        attempt_id: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let aid = attempt_id.to_string();
        let limit = limit.clamp(1, 10_000) as i64;
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, run, ts, data, unisolated, rolled_back FROM events WHERE attempt_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![aid, after_seq, limit], |r| {
                Ok(Event {
                    attempt_id: aid.clone(),
                    seq: r.get(0)?,
                    run: r.get(1)?,
                    ts_ms: r.get(2)?,
                    kind: from_json(&r.get::<_, String>(3)?, "event")?,
                    unisolated: r.get::<_, i64>(4)? != 0,
                    rolled_back: r.get::<_, i64>(5)? != 0,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn get_diff(&self, attempt_id: &str) -> Result<Option<String>> {
        let aid = attempt_id.to_string();
        self.read(move |c| {
            c.query_row("SELECT diff FROM attempts WHERE id = ?1", [&aid], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("no attempt with id '{aid}'")))
        })
        .await
    }

    async fn get_attempt(&self, attempt_id: &str) -> Result<Attempt> {
        let aid = attempt_id.to_string();
        self.read(move |c| {
            let task_id: String = c
                .query_row("SELECT task_id FROM attempts WHERE id = ?1", [&aid], |r| {
                    r.get(0)
                })
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("no attempt with id '{aid}'")))?;
            // Loaded with its siblings: its rank depends on them.
            let task = load_task(c, &task_id)?;
            task.attempts
                .into_iter()
                .find(|a| a.id == aid)
                .ok_or_else(|| StoreError::NotFound(format!("no attempt with id '{aid}'")))
        })
        .await
    }

    async fn checkpoint(
        &self,
        attempt_id: &str,
        worker: &str,
        checkpoint: &Checkpoint,
    ) -> Result<()> {
        let (aid, worker) = (attempt_id.to_string(), worker.to_string());
        let cp = checkpoint.clone();
        let conversation = json(&cp.conversation)?;
        let (usage, state) = (json(&cp.usage)?, json(&cp.state)?);
        self.write(move |tx| {
            let row: Option<(String, Option<String>, i64, i64)> = tx
                .query_row(
                    "SELECT status, lease_owner, last_seq, runs FROM attempts WHERE id = ?1",
                    [&aid],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((status, owner, last_seq, run)) = row else {
                return Err(StoreError::NotFound(format!("no attempt with id '{aid}'")));
            };
            if owner.as_deref() != Some(worker.as_str()) {
                return Err(StoreError::LeaseLost(aid.clone()));
            }
            let status = parse_status(&status)?;
            if !status.is_active() {
                return Err(StoreError::WrongState(format!(
                    "attempt {aid} is {status}; only an active attempt takes checkpoints"
                )));
            }
            if cp.last_seq > last_seq || cp.last_seq < 0 {
                return Err(StoreError::Invalid(format!(
                    "checkpoint last_seq {} is outside the attempt's events (last seq {last_seq})",
                    cp.last_seq
                )));
            }
            if cp.commit.trim().is_empty() {
                return Err(StoreError::Invalid("checkpoint without a commit".into()));
            }
            let saved: Option<(i64, i64)> = tx
                .query_row(
                    "SELECT turn, run FROM checkpoints WHERE attempt_id = ?1",
                    [&aid],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            // A run that started over (it could not use the saved checkpoint) replaces an
            // earlier run's checkpoint whatever its turn.
            if let Some((t, saved_run)) = saved
                && saved_run == run
                && t as u64 >= cp.turn
            {
                return Err(StoreError::WrongState(format!(
                    "attempt {aid} already has a checkpoint after turn {t}; a new one must come after a later turn, not {}",
                    cp.turn
                )));
            }
            tx.execute(
                "INSERT INTO checkpoints (attempt_id, run, turn, commit_id, conversation, usage,
                     last_seq, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (attempt_id) DO UPDATE SET run = excluded.run,
                     turn = excluded.turn, commit_id = excluded.commit_id,
                     conversation = excluded.conversation, usage = excluded.usage,
                     last_seq = excluded.last_seq, state = excluded.state,
                     created_at = excluded.created_at, discarded = 0, discarded_from = NULL,
                     discarded_to = NULL",
                params![
                    aid,
                    run,
                    cp.turn as i64,
                    cp.commit,
                    conversation,
                    usage,
                    cp.last_seq,
                    state,
                    now_ms()
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_checkpoint(&self, attempt_id: &str) -> Result<Option<Checkpoint>> {
        let aid = attempt_id.to_string();
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {CHECKPOINT_COLS} FROM checkpoints WHERE attempt_id = ?1"),
                [&aid],
                checkpoint_from_row,
            )
            .optional()?)
        })
        .await
    }

    async fn requeue_expired(&self, now: i64) -> Result<Vec<String>> {
        let ids = self
            .write(move |tx| {
                reclaim(tx, Some(now), &|s, w| {
                    format!(
                        "lease expired while {s}: worker {} stopped heartbeating",
                        w.as_deref().unwrap_or("?")
                    )
                })
            })
            .await?;
        self.after_requeue(&ids);
        Ok(ids)
    }

    async fn requeue_orphans(&self, reason: &str) -> Result<Vec<String>> {
        let reason = reason.to_string();
        let ids = self
            .write(move |tx| {
                reclaim(tx, None, &|s, _| {
                    format!("{reason} while the attempt was {s}")
                })
            })
            .await?;
        self.after_requeue(&ids);
        Ok(ids)
    }

    fn notifier(&self) -> &Notifier {
        &self.inner.notifier
    }
}

impl SqliteStore {
    fn after_requeue(&self, ids: &[String]) {
        for id in ids {
            tracing::warn!(attempt = %id, "attempt put back in the queue");
            self.inner.notifier.events_appended(id);
        }
        if !ids.is_empty() {
            self.inner.notifier.work_queued();
        }
    }
}
