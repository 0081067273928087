//! Event append throughput, directly against `SqliteStore` (no HTTP, no worker).

use crate::stats::fmt_int;
use anyhow::Result;
use errand_core::{EventKind, NewAttempt, NewTask, OutputStream, new_id};
use errand_store::{SqliteStore, Store};
use std::time::{Duration, Instant};

pub struct AppendResult {
    pub batch: usize,
    pub events: usize,
    pub wall: Duration,
    pub db_bytes: u64,
}

impl AppendResult {
    pub fn per_sec(&self) -> f64 {
        self.events as f64 / self.wall.as_secs_f64()
    }
}

fn new_task() -> NewTask {
    let id = new_id();
    NewTask {
        attempts: vec![NewAttempt {
            id: new_id(),
            number: 1,
            branch: format!("errand/{}-bench-a1", errand_core::short_id(&id)),
            model: "scripted:/bench.json".into(),
            ..Default::default()
        }],
        id,
        prompt: "bench".into(),
        title: "bench".into(),
        repo: "/nonexistent/bench".into(),
        base_ref: "main".into(),
        base_commit: "0".repeat(40),
        environment: Default::default(),
        model: "scripted:/bench.json".into(),
        model_payload: None,
        mode: "run".into(),
        trigger: "api".into(),
        created_by: "bench".into(),
        ..Default::default()
    }
}

/// A line of build output, about 90 bytes, like the chunks a worker forwards.
fn output_event(i: usize) -> EventKind {
    EventKind::Output {
        call_id: Some("call_1".into()),
        stream: OutputStream::Stdout,
        data: format!(
            "   Compiling bench-crate-{:06} v0.1.0 (/work/bench/crates/bench-crate-{:06})\n",
            i, i
        ),
    }
}

/// Appends `events` output events in batches of `batch` to a fresh database.
pub async fn append(events: usize, batch: usize) -> Result<AppendResult> {
    let dir = tempfile::Builder::new()
        .prefix("errand-bench-store-")
        .tempdir()?;
    let path = dir.path().join("errand.db");
    let store = SqliteStore::open(&path)?;
    let task = store.create_task(new_task()).await?;
    let attempt = task.attempts[0].id.clone();
    let batches: Vec<Vec<EventKind>> = (0..events)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|c| c.iter().map(|&i| output_event(i)).collect())
        .collect();
    let start = Instant::now();
    let mut last = 0;
    for b in batches {
        last = store.append_events(&attempt, None, b).await?;
    }
    let wall = start.elapsed();
    anyhow::ensure!(
        last == events as i64,
        "expected last seq {events}, got {last}"
    );
    let db_bytes = ["errand.db", "errand.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.path().join(f)).ok())
        .map(|m| m.len())
        .sum();
    Ok(AppendResult {
        batch,
        events,
        wall,
        db_bytes,
    })
}

pub fn report(rs: &[AppendResult]) -> String {
    let mut s = String::from(
        "### 3. Event append throughput\n\n`SqliteStore::append_events` in a fresh database file \
         (WAL, `synchronous=FULL`: one fsync per call), `output` events of ~90 bytes of text, \
         one attempt, sequential calls.\n\n",
    );
    s += "| batch size | events | calls | total (s) | events/s | µs per call | target > 50,000 events/s |\n";
    s += "|---:|---:|---:|---:|---:|---:|---|\n";
    for r in rs {
        let calls = r.events.div_ceil(r.batch);
        let met = if r.per_sec() > 50_000.0 {
            "yes"
        } else {
            "**no**"
        };
        s += &format!(
            "| {} | {} | {} | {:.2} | {} | {} | {met} |\n",
            r.batch,
            fmt_int(r.events as f64),
            fmt_int(calls as f64),
            r.wall.as_secs_f64(),
            fmt_int(r.per_sec()),
            fmt_int(r.wall.as_secs_f64() * 1e6 / calls as f64),
        );
    }
    if let Some(big) = rs.iter().max_by_key(|r| r.events) {
        s += &format!(
            "\nDatabase + WAL after {} events: {:.1} MiB. The target applies to batched appends \
             (the worker batches output chunks); batch size 1 is for reference.\n",
            fmt_int(big.events as f64),
            big.db_bytes as f64 / (1024.0 * 1024.0)
        );
    }
    s
}
