//! A worker that vanishes in the middle of an attempt (its connection to the queue drops, so
//! it stops heartbeating and can write nothing more): the lease expires, the attempt goes back
//! to the queue, and another worker resumes it from the last checkpoint, with its turn count,
//! usage and budgets carried over. Real SQLite, real git, the unisolated box, the scripted
//! model.

use async_trait::async_trait;
use errand_core::{
    Budget, EnvironmentSnapshot, EventKind, NewAttempt, NewTask, Status, Usage, new_id, now_ms,
    short_id,
};
use errand_git::MirrorCache;
use errand_sandbox::SandboxBackend;
use errand_store::{
    AttemptOutcome, Checkpoint, ClaimRequest, ClaimedAttempt, LeaseState, SqliteStore, Store,
    StoreError,
};
use errand_worker::{LocalClient, Worker, WorkerClient, WorkerConfig};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The turn during which the first worker vanishes (after its events reach the queue, before
/// its checkpoint).
const VANISH_TURN: u64 = 9;
const MAX_TURNS: u32 = 20;

/// A client that works until the result of turn 9's call has been appended, then fails every
/// call, like a worker whose network went away.
struct Vanishing {
    inner: LocalClient,
    gone: AtomicBool,
}

impl Vanishing {
    fn check(&self) -> errand_store::Result<()> {
        if self.gone.load(Ordering::SeqCst) {
            Err(StoreError::Db("connection to the server lost".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl WorkerClient for Vanishing {
    async fn claim(&self, req: &ClaimRequest) -> errand_store::Result<Option<ClaimedAttempt>> {
        self.check()?;
        self.inner.claim(req).await
    }
    async fn wait_for_work(&self) {
        self.inner.wait_for_work().await
    }
    async fn heartbeat(
        &self,
        attempt: &str,
        worker: &str,
        ttl_ms: i64,
    ) -> errand_store::Result<LeaseState> {
        self.check()?;
        self.inner.heartbeat(attempt, worker, ttl_ms).await
    }
    async fn transition(
        &self,
        attempt: &str,
        worker: &str,
        from: Status,
        to: Status,
        reason: Option<String>,
    ) -> errand_store::Result<()> {
        self.check()?;
        self.inner
            .transition(attempt, worker, from, to, reason)
            .await
    }
    async fn append_events(
        &self,
        attempt: &str,
        worker: &str,
        events: Vec<EventKind>,
    ) -> errand_store::Result<i64> {
        self.check()?;
        let last = matches!(
            events.last(),
            Some(EventKind::ToolResult { call_id, .. }) if call_id == &format!("call_{VANISH_TURN}_1")
        );
        let r = self.inner.append_events(attempt, worker, events).await;
        if last {
            self.gone.store(true, Ordering::SeqCst);
        }
        r
    }
    async fn update_usage(
        &self,
        attempt: &str,
        worker: &str,
        usage: Usage,
        turns: u64,
    ) -> errand_store::Result<()> {
        self.check()?;
        self.inner.update_usage(attempt, worker, usage, turns).await
    }
    async fn finish(
        &self,
        attempt: &str,
        worker: &str,
        outcome: AttemptOutcome,
    ) -> errand_store::Result<Status> {
        self.check()?;
        self.inner.finish(attempt, worker, outcome).await
    }
    async fn submit_plan(
        &self,
        attempt: &str,
        worker: &str,
        plan: errand_store::PlanSubmission,
    ) -> errand_store::Result<Status> {
        self.check()?;
        self.inner.submit_plan(attempt, worker, plan).await
    }
    async fn claim_result_delivery(
        &self,
        task: &str,
    ) -> errand_store::Result<Option<errand_core::Task>> {
        self.check()?;
        self.inner.claim_result_delivery(task).await
    }
    async fn record_delivery(
        &self,
        attempt: &str,
        delivery: &errand_core::Delivery,
    ) -> errand_store::Result<()> {
        self.check()?;
        self.inner.record_delivery(attempt, delivery).await
    }
    async fn record_setup(
        &self,
        attempt: &str,
        worker: &str,
        setup: &errand_core::SetupInfo,
    ) -> errand_store::Result<()> {
        self.check()?;
        self.inner.record_setup(attempt, worker, setup).await
    }
    async fn checkpoint(
        &self,
        attempt: &str,
        worker: &str,
        checkpoint: Checkpoint,
    ) -> errand_store::Result<()> {
        self.check()?;
        self.inner.checkpoint(attempt, worker, checkpoint).await
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// 30 turns, each appending its line to `progress.txt` and costing 100 + 10 tokens.
fn script() -> Value {
    let turns: Vec<Value> = (1..=30)
        .map(|i| {
            json!({
                "tool_calls": [{"name": "shell", "arguments": {"command": format!("echo line-{i} >> progress.txt")}}],
                "usage": {"input_tokens": 100, "output_tokens": 10}
            })
        })
        .collect();
    json!({ "turns": turns })
}

fn worker(
    name: &str,
    root: &Path,
    mirrors: &Arc<MirrorCache>,
    client: Arc<dyn WorkerClient>,
) -> Arc<Worker> {
    let mut wc = WorkerConfig::new(name, root.join(format!("work-{name}")));
    wc.lease_ttl = Duration::from_millis(800);
    wc.heartbeat_every = Duration::from_millis(100);
    wc.poll_every = Duration::from_millis(50);
    let sandbox: Arc<dyn SandboxBackend> = Arc::new(errand_sandbox::unisolated::Unisolated);
    Arc::new(Worker::new(wc, client, mirrors.clone(), sandbox))
}

async fn wait<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vanished_worker_is_resumed_from_its_checkpoint_with_its_counters_and_budgets() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let repo = root.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(repo.join("README.md"), "# sample\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "first"]);
    let base = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();

    let store = Arc::new(SqliteStore::open(&root.join("errand.db")).unwrap());
    let id = new_id();
    let aid = new_id();
    let branch = format!("errand/{}-resume", short_id(&id));
    store
        .create_task(NewTask {
            id: id.clone(),
            prompt: "append lines".into(),
            title: "append lines".into(),
            repo: repo.display().to_string(),
            base_ref: "main".into(),
            base_commit: base.clone(),
            environment: EnvironmentSnapshot {
                budget: Budget {
                    max_turns: Some(MAX_TURNS),
                    ..Default::default()
                },
                ..Default::default()
            },
            model: "scripted:resume-test".into(),
            model_payload: Some(script()),
            mode: "run".into(),
            trigger: "api".into(),
            created_by: "test".into(),
            attempts: vec![NewAttempt {
                id: aid.clone(),
                number: 1,
                branch: branch.clone(),
                model: "scripted:resume-test".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();

    let mirrors = Arc::new(MirrorCache::new(root.join("mirrors")));
    let vanishing = Arc::new(Vanishing {
        inner: LocalClient::new(store.clone()),
        gone: AtomicBool::new(false),
    });
    let w1 = worker("w1", root, &mirrors, vanishing.clone());
    let stop1 = CancellationToken::new();
    let run1 = tokio::spawn(w1.run(stop1.clone()));
    wait(
        "the first worker to vanish",
        Duration::from_secs(30),
        || async { vanishing.gone.load(Ordering::SeqCst).then_some(()) },
    )
    .await;
    let cp = store
        .get_checkpoint(&aid)
        .await
        .unwrap()
        .expect("a checkpoint");
    assert_eq!(cp.turn, VANISH_TURN - 1);

    // Its lease runs out; the reaper puts the attempt back in the queue.
    wait("the lease to expire", Duration::from_secs(10), || async {
        let ids = store.requeue_expired(now_ms()).await.unwrap();
        ids.contains(&aid).then_some(())
    })
    .await;
    stop1.cancel();
    tokio::time::timeout(Duration::from_secs(30), run1)
        .await
        .expect("the vanished worker stops")
        .unwrap();

    let w2 = worker(
        "w2",
        root,
        &mirrors,
        Arc::new(LocalClient::new(store.clone())),
    );
    let stop2 = CancellationToken::new();
    let run2 = tokio::spawn(w2.run(stop2.clone()));
    let a = wait("the attempt to end", Duration::from_secs(40), || async {
        let a = store.get_attempt(&aid).await.unwrap();
        (a.status.is_terminal() && a.active_worker.is_none()).then_some(a)
    })
    .await;
    stop2.cancel();
    tokio::time::timeout(Duration::from_secs(30), run2)
        .await
        .expect("the worker stops")
        .unwrap();

    // The turn budget counted the turns before the crash: 20 in all, not 8 + 20.
    assert_eq!(a.status, Status::Failed);
    assert_eq!(
        a.error.as_deref(),
        Some("stopped after 20 model turns (max_turns)")
    );
    assert_eq!(a.turns, u64::from(MAX_TURNS));
    assert_eq!(a.runs, 2);
    assert_eq!(a.resumed_from, "checkpoint");
    // Usage: 20 turns, plus the rolled-back turn 9 of the first worker, which was paid for.
    assert_eq!(a.usage.input_tokens, 2100, "{:?}", a.usage);
    assert_eq!(a.usage.output_tokens, 210, "{:?}", a.usage);

    // The work: lines 1–20 once each, in order, committed on the branch.
    let mirror = mirrors.mirror_path(&repo.display().to_string());
    let expected: String = (1..=20).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(
        git(&mirror, &["show", &format!("{branch}:progress.txt")]),
        expected
    );

    let events = {
        let mut out: Vec<errand_core::Event> = Vec::new();
        loop {
            let after = out.last().map(|e| e.seq).unwrap_or(0);
            let page = store.list_events(&aid, after, 500).await.unwrap();
            if page.is_empty() {
                break out;
            }
            out.extend(page);
        }
    };
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as i64 + 1);
    }
    let live_turns: Vec<u32> = events
        .iter()
        .filter(|e| !e.rolled_back)
        .filter_map(|e| match &e.kind {
            EventKind::ModelTurn { turn, .. } => Some(*turn),
            _ => None,
        })
        .collect();
    assert_eq!(live_turns, (1..=MAX_TURNS).collect::<Vec<_>>());
    let rolled_turns: Vec<(u32, i64)> = events
        .iter()
        .filter(|e| e.rolled_back)
        .filter_map(|e| match &e.kind {
            EventKind::ModelTurn { turn, .. } => Some((*turn, e.run)),
            _ => None,
        })
        .collect();
    assert_eq!(rolled_turns, vec![(VANISH_TURN as u32, 1)]);
    let resumed = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Claimed {
                resumed_from, turn, ..
            } if e.run == 2 => Some((resumed_from.clone(), *turn)),
            _ => None,
        })
        .unwrap();
    assert_eq!(resumed, ("checkpoint".to_string(), Some(VANISH_TURN - 1)));
    assert!(events.iter().any(|e| matches!(
        &e.kind,
        EventKind::Status { to: Status::Queued, reason: Some(r), .. } if r.contains("lease expired")
    )));
    // The checkpoint and its ref are gone once the attempt ended.
    assert_eq!(store.get_checkpoint(&aid).await.unwrap(), None);
    assert!(
        git(&mirror, &["for-each-ref", "refs/errand"])
            .trim()
            .is_empty()
    );
}
