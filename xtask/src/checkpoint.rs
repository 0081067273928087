//! Checkpoint cost per agent turn: what the worker adds to every turn so that a long attempt
//! can resume after a crash. A generated repository (the same generator as the copy-on-write
//! bench), a workspace made the way the worker makes it (a copy-on-write overlay over a cached
//! base checkout when the bench runs in its private namespace, else a checkout sharing the
//! mirror's objects), and a real SQLite store holding the attempt with its lease.
//!
//! Each simulated turn edits what an agent edits in a turn (appends to one or two existing
//! files, sometimes adds one; every fourth turn changes nothing, like a turn that only reads),
//! untimed. Then it times the worker's checkpoint steps exactly as `CheckpointSink` runs
//! them: `Checkpointer::snapshot` (in an overlay: `git ls-files` + `git update-index` on the
//! paths of the upper layer, else `git add --all`; then `git write-tree` into the mirror's
//! object store), `Checkpointer::commit` (`git commit-tree` + `git update-ref` of the hidden ref, only
//! when the tree changed), and `Store::checkpoint` (the conversation, usage and state in one
//! lease-fenced SQLite transaction). The conversation grows by about 3 KB per turn up to
//! 400 KB (what compaction keeps below a 128k-token window at `compact_at` 0.8), then stays
//! there.
//!
//! A third variant does the same with an environment that has secrets: the checkpointer
//! scrubs (`Checkpointer::with_scrub`), so each changed file is read, checked for the values
//! and hashed from a scrubbed copy (`git hash-object --stdin-paths`, `git update-index
//! --index-info`) instead of `git update-index` reading it.

use crate::stats::{Summary, fmt_int, fmt_ms};
use crate::workspace::Rng;
use anyhow::{Context, Result, bail};
use errand_core::{EventKind, NewAttempt, NewTask, Status, Usage, new_id};
use errand_store::{Checkpoint, ClaimRequest, SqliteStore, Store};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SETUP_TIMEOUT: Duration = Duration::from_secs(600);
/// The conversation stops growing here (compaction).
const MAX_CONVERSATION: usize = 400 * 1024;

pub struct Plan {
    pub sizes: Vec<usize>,
    pub turns: usize,
}

struct Turns {
    snapshot: Vec<Duration>,
    commit: Vec<Duration>,
    save: Vec<Duration>,
    total: Vec<Duration>,
}

/// One way of making the workspace, at one size.
struct Variant {
    how: &'static str,
    changed: Turns,
    unchanged: Turns,
    first: Duration,
    conversation_end: usize,
}

pub struct SizeResult {
    files: usize,
    variants: Vec<Variant>,
}

pub struct CheckpointResult {
    turns: usize,
    sizes: Vec<SizeResult>,
}

fn turns() -> Turns {
    Turns {
        snapshot: Vec::new(),
        commit: Vec::new(),
        save: Vec::new(),
        total: Vec::new(),
    }
}

struct Unmount(Option<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            errand_sandbox::cow::unmount(&m);
        }
    }
}

fn bench_task(repo: &Path, commit: &str) -> NewTask {
    let id = new_id();
    NewTask {
        attempts: vec![NewAttempt {
            id: new_id(),
            number: 1,
            branch: format!("errand/{}-checkpoint", errand_core::short_id(&id)),
            model: "scripted:/bench.json".into(),
            ..Default::default()
        }],
        id,
        prompt: "bench".into(),
        title: "bench".into(),
        repo: repo.display().to_string(),
        base_ref: "main".into(),
        base_commit: commit.to_string(),
        environment: Default::default(),
        model: "scripted:/bench.json".into(),
        model_payload: None,
        mode: "run".into(),
        trigger: "api".into(),
        created_by: "bench".into(),
        ..Default::default()
    }
}

/// A conversation of about `bytes` bytes, shaped like the agent's messages.
fn conversation(bytes: usize) -> serde_json::Value {
    let mut msgs = vec![serde_json::json!({"role": "user", "text": "<task>bench</task>"})];
    let mut size = 0;
    let mut i = 0;
    while size < bytes {
        let out = "x".repeat(2500);
        msgs.push(serde_json::json!({"role": "assistant", "tool_calls": [
            {"id": format!("call_{i}_1"), "name": "shell", "arguments": {"command": "cargo test -p crate"}}]}));
        msgs.push(
            serde_json::json!({"role": "tool", "call_id": format!("call_{i}_1"),
            "name": "shell", "content": out, "is_error": false}),
        );
        size += 2700;
        i += 1;
    }
    serde_json::Value::Array(msgs)
}

async fn one_size(root: &Path, files: usize, turns_n: usize, overlay: bool) -> Result<SizeResult> {
    let dir = root.join(format!("n{files}"));
    let repo = dir.join("repo");
    let t = Instant::now();
    crate::cow::generate(&repo, files)?;
    eprintln!(
        "bench:   {} files: generated in {:.1} s",
        fmt_int(files as f64),
        t.elapsed().as_secs_f64()
    );
    let commit = crate::git_sync(&repo, &["rev-parse", "HEAD"])?
        .trim()
        .to_string();
    let mirrors = errand_git::MirrorCache::new(dir.join("mirrors"));
    let mirror = tokio::time::timeout(SETUP_TIMEOUT, mirrors.sync(&repo.to_string_lossy()))
        .await
        .context("syncing the mirror timed out")??;
    let mut variants = Vec::new();
    // As `errand serve` makes workspaces, then as a worker without the private namespace does;
    // then the first of them with secrets.
    if overlay {
        variants.push(one_variant(&dir, &repo, &mirror, &commit, turns_n, true, false).await?);
    }
    variants.push(one_variant(&dir, &repo, &mirror, &commit, turns_n, false, false).await?);
    variants.push(one_variant(&dir, &repo, &mirror, &commit, turns_n, overlay, true).await?);
    Ok(SizeResult { files, variants })
}

async fn one_variant(
    dir: &Path,
    repo: &Path,
    mirror: &Path,
    commit: &str,
    turns_n: usize,
    overlay: bool,
    secrets: bool,
) -> Result<Variant> {
    let (mirror, commit) = (mirror.to_path_buf(), commit.to_string());
    // The workspace, as the worker makes it.
    let attempt_dir = dir.join(match (overlay, secrets) {
        (true, false) => "attempt-cow",
        (false, false) => "attempt-checkout",
        (true, true) => "attempt-cow-secrets",
        (false, true) => "attempt-checkout-secrets",
    });
    let ws = attempt_dir.join("repo");
    let branch = "errand/bench-checkpoint";
    let mut mounted = Unmount(None);
    let how = if overlay {
        let base = dir.join("checkouts").join(&commit);
        errand_git::prepare_base(&mirror, &commit, &base).await?;
        let upper = attempt_dir.join("upper");
        errand_git::write_attempt_head(&upper, branch, &commit)?;
        errand_sandbox::cow::mount_overlay(&base, &upper, &attempt_dir.join("overlay-work"), &ws)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        mounted.0 = Some(ws.clone());
        if secrets {
            "copy-on-write overlay, with secrets (scrubbed)"
        } else {
            "copy-on-write overlay"
        }
    } else {
        errand_git::create_workspace(&mirror, &ws, branch, &commit).await?;
        if secrets {
            "checkout sharing the mirror's objects, with secrets (scrubbed)"
        } else {
            "checkout sharing the mirror's objects"
        }
    };

    // The store, with the attempt claimed and running.
    let store = SqliteStore::open(&attempt_dir.with_extension("db"))?;
    store.create_task(bench_task(repo, &commit)).await?;
    let claimed = store
        .claim_attempt(&ClaimRequest {
            worker: "bench".into(),
            sandbox: "none".into(),
            isolated: false,
            lease_ttl_ms: 3_600_000,
        })
        .await?
        .context("claiming the bench attempt")?;
    let aid = claimed.attempt.id.clone();
    store
        .transition(&aid, "bench", Status::Preparing, Status::Running, None)
        .await?;

    let t = Instant::now();
    let mut cp = errand_git::Checkpointer::new(
        &mirror,
        &ws,
        &attempt_dir.join("checkpoint.git"),
        &aid,
        &commit,
        Some(&ws.join(".git/index")),
    )
    .await?;
    if overlay {
        // As the worker does: only what the upper layer holds is looked at.
        let base = dir.join("checkouts").join(&commit);
        cp = cp.with_overlay(&attempt_dir.join("upper"), &base);
    }
    if secrets {
        // Values the files don't hold: the cost of looking, not of replacing.
        let redactor = errand_core::redact::Redactor::new([
            ("BENCH_TOKEN", "bench-Secret-Value-0123456789"),
            ("BENCH_KEY", "another/secret+value:42"),
        ]);
        cp = cp.with_scrub(redactor, Vec::new());
    }
    let setup = t.elapsed();

    // Existing files to edit: every 50th generated one.
    let existing: Vec<String> = crate::git_sync(&ws, &["ls-files"])?
        .lines()
        .filter(|l| l.ends_with(".rs"))
        .step_by(50)
        .map(str::to_string)
        .collect();
    if existing.is_empty() {
        bail!("the generated repository has no files to edit");
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut changed, mut unchanged) = (turns(), turns());
    let mut first = Duration::ZERO;
    let mut conv_bytes = 0;
    for turn in 1..=turns_n {
        // The agent's work in this turn (not timed).
        let edits = turn % 4 != 0;
        if edits {
            for _ in 0..1 + rng.next() % 2 {
                let f = &existing[(rng.next() % existing.len() as u64) as usize];
                use std::io::Write;
                let mut h = std::fs::OpenOptions::new().append(true).open(ws.join(f))?;
                writeln!(h, "// turn {turn}")?;
            }
            if rng.next().is_multiple_of(5) {
                std::fs::write(ws.join(format!("src/new_{turn}.rs")), "fn added() {}\n")?;
            }
        }
        conv_bytes = (conv_bytes + 3000).min(MAX_CONVERSATION);
        let conv = conversation(conv_bytes);
        let last_seq = store
            .append_events(
                &aid,
                Some("bench"),
                vec![EventKind::Notice {
                    message: format!("turn {turn}"),
                }],
            )
            .await?;

        let t0 = Instant::now();
        let snap = cp.snapshot().await?;
        let t1 = Instant::now();
        let commit_id = cp
            .commit(&format!("errand checkpoint after turn {turn}"))
            .await?;
        let t2 = Instant::now();
        store
            .checkpoint(
                &aid,
                "bench",
                &Checkpoint {
                    turn: turn as u64,
                    commit: commit_id,
                    conversation: conv,
                    usage: Usage {
                        input_tokens: 1000 * turn as u64,
                        output_tokens: 100 * turn as u64,
                        ..Default::default()
                    },
                    last_seq,
                    state: serde_json::json!({"agent": {"turns": turn, "plan": []}}),
                },
            )
            .await?;
        let t3 = Instant::now();
        if snap.changed != edits {
            bail!(
                "turn {turn}: the snapshot says changed={}, expected {edits}",
                snap.changed
            );
        }
        if turn == 1 {
            first = t3 - t0;
            continue;
        }
        let into = if edits { &mut changed } else { &mut unchanged };
        into.snapshot.push(t1 - t0);
        into.commit.push(t2 - t1);
        into.save.push(t3 - t2);
        into.total.push(t3 - t0);
    }
    // The last checkpoint holds the last turn's files: the same tree as adding every file.
    let head = crate::git_sync(
        &mirror,
        &["rev-parse", &format!("refs/errand/checkpoints/{aid}")],
    )?;
    if head.trim() != cp.head() {
        bail!("the hidden ref is not at the last checkpoint");
    }
    let mut check = errand_git::Checkpointer::new(
        &mirror,
        &ws,
        &attempt_dir.join("verify.git"),
        "verify",
        &commit,
        None,
    )
    .await?;
    let all = check.snapshot().await?.tree;
    let last = crate::git_sync(&mirror, &["rev-parse", &format!("{}^{{tree}}", cp.head())])?;
    if all != last.trim() {
        bail!(
            "the last checkpoint's tree {} is not the workspace's {all}",
            last.trim()
        );
    }
    eprintln!(
        "bench:   {how}: {turns_n} checkpoints (set-up {:.0} ms)",
        setup.as_secs_f64() * 1e3
    );
    drop(mounted);
    Ok(Variant {
        how,
        changed,
        unchanged,
        first,
        conversation_end: conv_bytes,
    })
}

pub async fn run(plan: &Plan, overlay: bool, trash: &mut crate::Trash) -> Result<CheckpointResult> {
    let root = tempfile::Builder::new()
        .prefix("errand-bench-checkpoint-")
        .tempdir()?;
    let mut sizes = Vec::new();
    for &files in &plan.sizes {
        sizes.push(one_size(root.path(), files, plan.turns, overlay).await?);
    }
    trash.keep(root);
    Ok(CheckpointResult {
        turns: plan.turns,
        sizes,
    })
}

fn row(label: &str, samples: &[Duration]) -> String {
    let s = Summary::new(samples);
    format!(
        "| {label} | {} | {} | {} | {} |\n",
        samples.len(),
        fmt_ms(s.median()),
        fmt_ms(s.pct(99.0)),
        fmt_ms(s.max())
    )
}

pub fn report(r: &CheckpointResult) -> String {
    let mut s = format!(
        "### 9. Checkpoint cost per turn\n\n{} turns of a simulated attempt per repository size. \
         Each turn appends a line to one or two existing files and sometimes adds a file; every \
         fourth turn changes nothing. Timed: the worker's checkpoint after the turn \
         (`Checkpointer::snapshot`, `Checkpointer::commit`, `Store::checkpoint` with a \
         conversation growing by 3 KB a turn up to 400 KB). The first checkpoint of a run is \
         shown apart. Times in ms.\n\n",
        r.turns
    );
    for z in &r.sizes {
        for v in &z.variants {
            s += &format!(
                "**{} files, {}** (first checkpoint {} ms; conversation at the end {} KB)\n\n\
                 | step | turns | p50 | p99 | max |\n|---|---:|---:|---:|---:|\n",
                fmt_int(z.files as f64),
                v.how,
                fmt_ms(v.first.as_secs_f64() * 1e3),
                v.conversation_end / 1024
            );
            s += &row(
                "snapshot (index update, `write-tree`), files changed",
                &v.changed.snapshot,
            );
            s += &row(
                "commit (`commit-tree`, `update-ref`), files changed",
                &v.changed.commit,
            );
            s += &row("save (SQLite), files changed", &v.changed.save);
            s += &row("**whole checkpoint, files changed**", &v.changed.total);
            s += &row("snapshot, nothing changed", &v.unchanged.snapshot);
            s += &row("**whole checkpoint, nothing changed**", &v.unchanged.total);
            let sum: f64 = v
                .changed
                .total
                .iter()
                .chain(v.unchanged.total.iter())
                .map(|d| d.as_secs_f64())
                .sum::<f64>()
                + v.first.as_secs_f64();
            s += &format!("\nAll {} checkpoints together: {:.1} s.\n\n", r.turns, sum);
        }
    }
    s
}
