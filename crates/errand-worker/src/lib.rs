//! The worker: claims attempts, prepares their workspace and box, runs the agent, runs the
//! environment's checks itself, commits the result onto the attempt's branch in the mirror,
//! and reports every step as events.
//!
//! The worker talks to the queue only through [`WorkerClient`]: in-process against a
//! [`Store`] for the embedded workers of `errand serve`; over HTTP for remote workers. It
//! must not reach into the database any other way.

pub mod agents_md;
pub mod checkpoint;
pub mod checks;
mod client;
pub mod deliver;
pub mod testcounts;

pub use client::{LocalClient, WorkerClient};

use errand_agent::{AgentConfig, AgentError, AgentRun, EndReason, tools::StreamedCommand};
use errand_core::{CheckResult, EventKind, Status, Usage};
use errand_git::MirrorCache;
use errand_sandbox::{BoxSpec, SandboxBackend, SandboxBox};
use errand_store::{AttemptOutcome, ClaimRequest, ClaimedAttempt, LeaseState, StoreError};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Unique worker name (appears in events).
    pub name: String,
    /// Attempt workspaces are created under `<work_root>/<attempt>-r<run>`.
    pub work_root: PathBuf,
    /// Cached base checkouts (lower layers of copy-on-write workspaces).
    pub checkout_root: PathBuf,
    pub lease_ttl: Duration,
    pub heartbeat_every: Duration,
    /// How often to look for work when no wake-up arrives.
    pub poll_every: Duration,
    pub check_timeout: Duration,
    /// Wall-time limit of one attempt (agent and checks).
    pub attempt_timeout: Duration,
    pub agent: AgentConfig,
    /// How people reach the server, for links (pull request bodies).
    pub public_url: Option<String>,
}

impl WorkerConfig {
    pub fn new(name: impl Into<String>, work_root: impl Into<PathBuf>) -> Self {
        let work_root: PathBuf = work_root.into();
        WorkerConfig {
            name: name.into(),
            checkout_root: work_root.with_file_name("checkouts"),
            work_root,
            lease_ttl: Duration::from_secs(30),
            heartbeat_every: Duration::from_secs(5),
            poll_every: Duration::from_secs(1),
            check_timeout: Duration::from_secs(20 * 60),
            attempt_timeout: Duration::from_secs(2 * 3600),
            agent: AgentConfig::default(),
            public_url: None,
        }
    }
}

pub struct Worker {
    pub config: WorkerConfig,
    client: Arc<dyn WorkerClient>,
    mirrors: Arc<MirrorCache>,
    sandbox: Arc<dyn SandboxBackend>,
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    /// The lease is gone: another worker owns the attempt now. Write nothing more.
    #[error("lease lost")]
    LeaseLost,
    /// The user cancelled the attempt while the worker was moving it along.
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Failed(String),
}

impl From<StoreError> for RunError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LeaseLost(_) => RunError::LeaseLost,
            StoreError::Conflict {
                actual: Status::Cancelled,
                ..
            } => RunError::Cancelled,
            other => RunError::Failed(other.to_string()),
        }
    }
}

impl From<AgentError> for RunError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::Sink(m) if m.contains("lease") => RunError::LeaseLost,
            other => RunError::Failed(other.to_string()),
        }
    }
}

/// Largest diff text stored with an attempt.
const MAX_STORED_DIFF: usize = 8 << 20;

const LEASE_HELD: u8 = 0;
const LEASE_CANCELLED: u8 = 1;
const LEASE_LOST: u8 = 2;
/// The attempt ran past its wall-time limit (the lease is still held).
const LEASE_WALL_TIME: u8 = 3;

impl Worker {
    pub fn new(
        config: WorkerConfig,
        client: Arc<dyn WorkerClient>,
        mirrors: Arc<MirrorCache>,
        sandbox: Arc<dyn SandboxBackend>,
    ) -> Worker {
        Worker {
            config,
            client,
            mirrors,
            sandbox,
        }
    }

    /// Claims and runs attempts until `shutdown` fires.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tracing::info!(worker = %self.config.name, sandbox = self.sandbox.name(), "worker started");
        let claim = ClaimRequest {
            worker: self.config.name.clone(),
            sandbox: self.sandbox.description(),
            isolated: self.sandbox.isolated(),
            lease_ttl_ms: self.config.lease_ttl.as_millis() as i64,
        };
        while !shutdown.is_cancelled() {
            match self.client.claim(&claim).await {
                Ok(Some(c)) => {
                    // Run the attempt in its own task so that a panic fails that attempt
                    // instead of silently killing this worker.
                    let (aid, this, token) = (c.attempt.id.clone(), self.clone(), shutdown.clone());
                    let joined =
                        tokio::spawn(async move { this.run_attempt(c, &token).await }).await;
                    if let Err(e) = joined {
                        tracing::error!(attempt = %aid, error = %e, "attempt crashed the worker task");
                        let outcome = AttemptOutcome {
                            status: Some(Status::Failed),
                            error: Some(format!("internal error in the worker: {e}")),
                            ..Default::default()
                        };
                        let _ = self
                            .client
                            .append_events(
                                &aid,
                                &self.config.name,
                                vec![EventKind::Error {
                                    message: format!("internal error in the worker: {e}"),
                                }],
                            )
                            .await;
                        let _ = self.client.finish(&aid, &self.config.name, outcome).await;
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        _ = self.client.wait_for_work() => {}
                        _ = tokio::time::sleep(self.config.poll_every) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(worker = %self.config.name, error = %e, "claiming work failed");
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.poll_every) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
        tracing::info!(worker = %self.config.name, "worker stopped");
    }

    async fn run_attempt(&self, c: ClaimedAttempt, shutdown: &CancellationToken) {
        let attempt_id = c.attempt.id.clone();
        let worker = self.config.name.clone();
        tracing::info!(attempt = %attempt_id, task = %c.task.id, run = c.run, "attempt claimed");
        let cancel = shutdown.child_token();
        let lease = Arc::new(AtomicU8::new(LEASE_HELD));
        let wall = {
            let (cancel, lease, limit) =
                (cancel.clone(), lease.clone(), self.config.attempt_timeout);
            tokio::spawn(async move {
                tokio::time::sleep(limit).await;
                let _ = lease.compare_exchange(
                    LEASE_HELD,
                    LEASE_WALL_TIME,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                cancel.cancel();
            })
        };
        let heartbeat = {
            let client = self.client.clone();
            let (aid, w) = (attempt_id.clone(), worker.clone());
            let (every, ttl) = (self.config.heartbeat_every, self.config.lease_ttl);
            let (cancel, lease) = (cancel.clone(), lease.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = client.cancel_hint(&aid) => {}
                    }
                    match client.heartbeat(&aid, &w, ttl.as_millis() as i64).await {
                        Ok(LeaseState::Held) => {}
                        Ok(LeaseState::Cancelled) => {
                            // Keep heartbeating while the box is torn down and the work saved.
                            lease.store(LEASE_CANCELLED, Ordering::SeqCst);
                            cancel.cancel();
                        }
                        Ok(LeaseState::Lost) => {
                            lease.store(LEASE_LOST, Ordering::SeqCst);
                            cancel.cancel();
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(attempt = %aid, error = %e, "heartbeat failed; retrying")
                        }
                    }
                }
            })
        };
        let dir = self
            .config
            .work_root
            .join(format!("{attempt_id}-r{}", c.run));
        let mut state = RunState {
            sandbox_box: None,
            outcome: AttemptOutcome::default(),
        };
        let result = self.drive(&c, &dir, &cancel, &lease, &mut state).await;
        heartbeat.abort();
        wall.abort();
        if let Some(b) = state.sandbox_box.take()
            && let Err(e) = b.destroy().await
        {
            tracing::warn!(attempt = %attempt_id, error = %e, "destroying the box failed");
        }
        let lost = lease.load(Ordering::SeqCst) == LEASE_LOST;
        match result {
            Err(RunError::LeaseLost) => {
                tracing::warn!(attempt = %attempt_id, "lease lost; abandoning this run");
            }
            _ if lost => {
                tracing::warn!(attempt = %attempt_id, "lease lost; abandoning this run");
            }
            other => {
                let mut outcome = std::mem::take(&mut state.outcome);
                if let Err(RunError::Failed(msg)) = &other {
                    outcome.status = Some(Status::Failed);
                    outcome.error = Some(msg.clone());
                    let _ = self
                        .client
                        .append_events(
                            &attempt_id,
                            &worker,
                            vec![EventKind::Error {
                                message: msg.clone(),
                            }],
                        )
                        .await;
                }
                if shutdown.is_cancelled() && lease.load(Ordering::SeqCst) != LEASE_CANCELLED {
                    // The server is stopping: leave the attempt to be re-queued on restart.
                    tracing::info!(attempt = %attempt_id, "shutting down; attempt will be re-queued");
                } else {
                    let keep = AttemptOutcome {
                        usage: outcome.usage,
                        turns: outcome.turns,
                        head_commit: outcome.head_commit.clone(),
                        ..Default::default()
                    };
                    match self.client.finish(&attempt_id, &worker, outcome).await {
                        Ok(s) => {
                            tracing::info!(attempt = %attempt_id, status = %s, "attempt ended")
                        }
                        Err(e) => {
                            // Record a minimal failure instead, or the attempt would be
                            // re-queued and fail the same way forever.
                            tracing::warn!(attempt = %attempt_id, error = %e, "recording the outcome failed");
                            let minimal = AttemptOutcome {
                                status: Some(Status::Failed),
                                error: Some(format!("recording the outcome failed: {e}")),
                                ..keep
                            };
                            if let Err(e) = self.client.finish(&attempt_id, &worker, minimal).await
                            {
                                tracing::warn!(attempt = %attempt_id, error = %e, "recording the failure failed");
                            }
                        }
                    }
                    checkpoint::forget(&self.mirrors, &c.task.repo, &attempt_id).await;
                }
            }
        }
        errand_sandbox::cow::unmount(&dir.join("repo"));
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "removing the workspace failed");
        }
    }

    /// Prepares the attempt's workspace at `ws`: an overlay over a cached base checkout when
    /// this process can mount one, otherwise a checkout sharing the mirror's objects.
    /// Returns how, for the log.
    async fn make_workspace(
        &self,
        mirror: &std::path::Path,
        dir: &std::path::Path,
        ws: &std::path::Path,
        branch: &str,
        commit: &str,
    ) -> Result<(String, Option<PathBuf>), RunError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| RunError::Failed(format!("{what}: {e}"));
        if errand_sandbox::cow::in_private_namespace() {
            let name = mirror
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let base = self.config.checkout_root.join(name).join(commit);
            let created = {
                let _guard = self.mirrors.lock(&base).await;
                errand_git::prepare_base(mirror, commit, &base)
                    .await
                    .map_err(|e| fail("preparing the base checkout", &e))?
            };
            let upper = dir.join("upper");
            errand_git::write_attempt_head(&upper, branch, commit)
                .map_err(|e| fail("writing the branch", &e))?;
            match errand_sandbox::cow::mount_overlay(&base, &upper, &dir.join("overlay-work"), ws) {
                Ok(()) => {
                    let how = if created {
                        "copy-on-write overlay (base checkout created)"
                    } else {
                        "copy-on-write overlay over the cached base checkout"
                    };
                    return Ok((how.into(), Some(base.join(".git/index"))));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "overlay mount failed; falling back to a checkout");
                    let _ = tokio::fs::remove_dir_all(&upper).await;
                }
            }
        }
        errand_git::create_workspace(mirror, ws, branch, commit)
            .await
            .map_err(|e| fail("creating the workspace", &e))?;
        Ok(("checkout sharing the mirror's objects".into(), None))
    }

    async fn emit(&self, attempt: &str, events: Vec<EventKind>) -> Result<(), RunError> {
        self.client
            .append_events(attempt, &self.config.name, events)
            .await?;
        Ok(())
    }

    async fn notice(&self, attempt: &str, message: String) -> Result<(), RunError> {
        self.emit(attempt, vec![EventKind::Notice { message }])
            .await
    }

    async fn drive(
        &self,
        c: &ClaimedAttempt,
        dir: &std::path::Path,
        cancel: &CancellationToken,
        lease: &AtomicU8,
        state: &mut RunState,
    ) -> Result<(), RunError> {
        let aid = c.attempt.id.as_str();
        let task = &c.task;
        let fail = |what: &str, e: &dyn std::fmt::Display| RunError::Failed(format!("{what}: {e}"));

        // A follow-up continues from the attempt's branch head; a run starts from the base.
        let start_commit = match (&c.followup, &c.attempt.head_commit) {
            (Some(_), Some(head)) => head.clone(),
            _ => task.base_commit.clone(),
        };

        // 1. Mirror and workspace.
        let t = Instant::now();
        let mirror = self
            .mirrors
            .sync(&task.repo)
            .await
            .map_err(|e| fail("fetching the repository", &e))?;
        self.mirrors
            .ensure_commit(&mirror, &task.repo, &start_commit)
            .await
            .map_err(|e| fail("finding the base commit", &e))?;
        let fetched = t.elapsed();
        let ws = dir.join("repo");
        let t = Instant::now();
        let (how, seed_index) = self
            .make_workspace(&mirror, dir, &ws, &c.attempt.branch, &start_commit)
            .await?;
        self.notice(
            aid,
            format!(
                "workspace ready: {} at {} ({}) on branch {} — fetch {} ms, {how} {} ms",
                task.repo,
                if c.followup.is_some() {
                    "the branch head"
                } else {
                    task.base_ref.as_str()
                },
                errand_core::text::title_of(&start_commit, 12).trim_end_matches('…'),
                c.attempt.branch,
                fetched.as_millis(),
                t.elapsed().as_millis()
            ),
        )
        .await?;
        // Without configured checks, the commands named in AGENTS.md are the checks. They are
        // read now, before the agent runs, so that an agent can't rewrite its own checks.
        let (check_specs, checks_from_agents_md) = if task.environment.checks.is_empty() {
            let root = ws.clone();
            let text = tokio::task::spawn_blocking(move || checks::read_agents_md(&root))
                .await
                .unwrap_or(None);
            let found = text
                .as_deref()
                .map(agents_md::checks_from_agents_md)
                .unwrap_or_default();
            (found, text.is_some())
        } else {
            (task.environment.checks.clone(), false)
        };
        // A run after a crash resumes from its checkpoint (after AGENTS.md was read, so the
        // agent's own edits to it don't choose the checks); every run takes checkpoints.
        let resume = checkpoint::setup(
            &self.mirrors,
            c,
            &mirror,
            dir,
            &ws,
            &start_commit,
            seed_index.as_deref(),
        )
        .await;
        for n in resume.notices {
            self.notice(aid, n).await?;
        }
        let spec = BoxSpec {
            workspace: ws.clone(),
            scratch: dir.join("scratch"),
            ro_binds: vec![mirror.join("objects")],
            rootfs: task.environment.rootfs.as_ref().map(PathBuf::from),
            quota_dir: Some(dir.join("upper")).filter(|u| u.is_dir()),
            env: task
                .environment
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let sandbox_box = self
            .sandbox
            .create(spec)
            .await
            .map_err(|e| fail("creating the box", &e))?;
        if let Some(ns) = sandbox_box.as_ns() {
            // What this box actually enforces, as the box itself reported it (Landlock is best
            // effort by kernel ABI, cgroups depend on delegation).
            self.notice(aid, ns.enforced.summary()).await?;
        }
        state.sandbox_box = Some(sandbox_box);
        let sandbox_box: &dyn SandboxBox = state
            .sandbox_box
            .as_deref()
            .ok_or(RunError::Failed("box missing".into()))?;

        // 2. Agent.
        self.client
            .transition(
                aid,
                &self.config.name,
                Status::Preparing,
                Status::Running,
                None,
            )
            .await?;
        let provider = errand_model::build(&c.attempt.model, c.model_payload.as_ref())
            .map_err(|e| fail("loading the model", &e))?;
        if provider.scripted() {
            self.notice(
                aid,
                format!(
                    "model: {} — SCRIPTED playback, not a real model",
                    provider.name()
                ),
            )
            .await?;
        }
        // A follow-up adds to what the attempt used before.
        let (base_usage, base_turns) = match (&resume.resumed, &c.followup) {
            (Some(r), _) => (r.base_usage, r.base_turns),
            (None, Some(_)) => (c.attempt.usage, c.attempt.turns),
            (None, None) => (Usage::default(), 0),
        };
        let sink = checkpoint::CheckpointSink::new(
            self.client.clone(),
            aid,
            &self.config.name,
            resume.checkpointer,
            base_usage,
            base_turns,
        );
        let snap = &task.environment;
        let agent_config = AgentConfig {
            budget: snap.budget,
            compact_at: snap.agent.compact_at,
            keep_recent_turns: snap.agent.keep_recent_turns,
            stuck_repeats: snap.agent.stuck_repeats,
            stuck_turns: snap.agent.stuck_turns,
            model_options: snap.model_options.clone(),
            cache_key: Some(aid.to_string()),
            ..self.config.agent.clone()
        };
        let history: Vec<errand_model::Message> = match (&c.followup, &c.conversation) {
            (Some(_), Some(v)) => serde_json::from_value(v.clone()).unwrap_or_default(),
            _ => Vec::new(),
        };
        let prompt = match &c.followup {
            Some(f) if history.is_empty() => format!("{}\n\nFollow-up: {f}", task.prompt),
            Some(f) => f.clone(),
            None => task.prompt.clone(),
        };
        let outcome = AgentRun {
            prompt: &prompt,
            workspace: &ws,
            sandbox: sandbox_box,
            provider: provider.as_ref(),
            sink: &sink,
            cancel: cancel.clone(),
            config: agent_config,
            history,
            resume: resume.resumed.map(|r| r.resume),
        }
        .run()
        .await?;
        state.outcome.usage = sink.total_usage(&outcome.usage);
        state.outcome.turns = sink.total_turns(outcome.turns);
        state.outcome.conversation = serde_json::to_value(&outcome.messages).ok();
        state.outcome.summary = outcome.summary.clone();
        let mut failure: Option<String> = match outcome.end {
            EndReason::Finished | EndReason::NoToolCalls => None,
            EndReason::MaxTurns => Some(format!(
                "stopped after {} model turns (max_turns)",
                outcome.turns
            )),
            EndReason::Budget(why) => Some(format!("stopped: {why}")),
            EndReason::Stuck(why) => Some(format!("stuck: {why}")),
            EndReason::ModelFailed(msg) => {
                self.emit(
                    aid,
                    vec![EventKind::Error {
                        message: format!("the model failed: {msg}"),
                    }],
                )
                .await?;
                Some(format!("the model failed: {msg}"))
            }
            EndReason::Cancelled if lease.load(Ordering::SeqCst) == LEASE_WALL_TIME => {
                let msg = format!(
                    "stopped: the attempt ran past its wall-time limit of {}s",
                    self.config.attempt_timeout.as_secs()
                );
                self.notice(aid, msg.clone()).await?;
                Some(msg)
            }
            EndReason::Cancelled => Some("cancelled".into()),
        };

        // 3. Checks, run by the worker itself.
        let cancelled = cancel.is_cancelled();
        if !cancelled && checks_from_agents_md {
            let message = if check_specs.is_empty() {
                "no checks configured, and AGENTS.md names no test or check command".to_string()
            } else {
                format!(
                    "no checks configured; running the {} named in AGENTS.md: {}",
                    if check_specs.len() == 1 {
                        "command"
                    } else {
                        "commands"
                    },
                    check_specs
                        .iter()
                        .map(|c| format!("`{}`", c.command))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            self.notice(aid, message).await?;
        }
        if !cancelled && !check_specs.is_empty() {
            self.client
                .transition(
                    aid,
                    &self.config.name,
                    Status::Running,
                    Status::Checking,
                    None,
                )
                .await?;
            for check in &check_specs {
                let call_id = Some(format!("check:{}", check.name));
                let capture = checks::CaptureSink::new(&sink, call_id.clone(), checks::OUTPUT_KEEP);
                // Only JUnit files written from now on belong to this run of the check.
                let started = std::time::SystemTime::now();
                let r = StreamedCommand {
                    sandbox: sandbox_box,
                    sink: &capture,
                    call_id,
                    command: check.command.clone(),
                    workdir: None,
                    timeout: self.config.check_timeout,
                    cancel: cancel.child_token(),
                }
                .run()
                .await?;
                let (exit_code, duration_ms) = match &r.result {
                    Ok(res) => (res.exit_code, res.duration.as_millis() as u64),
                    Err(_) => (None, 0),
                };
                let mut tests = None;
                if let Some(pattern) = &check.junit {
                    let (root, pattern) = (ws.clone(), pattern.clone());
                    let read = tokio::task::spawn_blocking(move || {
                        checks::read_junit(&root, &pattern, started)
                    })
                    .await
                    .unwrap_or_default();
                    if !read.problems.is_empty() {
                        self.notice(
                            aid,
                            format!(
                                "check '{}': JUnit {}{}",
                                check.name,
                                read.problems_text(),
                                if read.counts.is_some() {
                                    ""
                                } else {
                                    "; test counts come from the output instead"
                                }
                            ),
                        )
                        .await?;
                    }
                    tests = read.counts;
                }
                if tests.is_none() {
                    tests = testcounts::parse_output(&capture.text());
                }
                let failed_tests = tests.as_ref().map_or(0, |t| t.failed);
                // A check passes on exit code 0 *and* no failed tests. The exit code alone can
                // hide failures: it is the last command's in a pipeline or a list
                // (`cargo test | tee log`, `pytest; echo done`, `make -k`, `|| true`), so when
                // the runner itself reports failed tests the check fails even with exit 0. A
                // non-zero exit fails the check whatever the counts say.
                let passed = exit_code == Some(0) && failed_tests == 0;
                self.emit(
                    aid,
                    vec![EventKind::CheckResult {
                        name: check.name.clone(),
                        command: check.command.clone(),
                        exit_code,
                        duration_ms,
                        passed,
                        tests: tests.clone(),
                    }],
                )
                .await?;
                if !passed && failure.is_none() {
                    let counts = tests
                        .as_ref()
                        .map(|t| format!("; {} of {} tests failed", t.failed, t.total()))
                        .unwrap_or_default();
                    failure = Some(match exit_code {
                        Some(0) => format!(
                            "check '{}' reported {failed_tests} failed test{} (exit 0)",
                            check.name,
                            if failed_tests == 1 { "" } else { "s" }
                        ),
                        Some(code) => {
                            format!("check '{}' failed (exit {code}{counts})", check.name)
                        }
                        None => format!("check '{}' did not complete", check.name),
                    });
                }
                state.outcome.checks.push(CheckResult {
                    name: check.name.clone(),
                    command: check.command.clone(),
                    exit_code,
                    duration_ms,
                    passed,
                    tests,
                });
                if cancel.is_cancelled() {
                    break;
                }
            }
        }
        if let Some(b) = state.sandbox_box.take() {
            b.destroy()
                .await
                .map_err(|e| fail("destroying the box", &e))?;
        }

        // 4. Commit onto the attempt branch, import it into the mirror, and diff.
        let message = format!(
            "{}\n\n{}",
            task.title,
            outcome
                .summary
                .as_deref()
                .unwrap_or("(the agent gave no summary)")
        );
        let trailers = [("Errand-Task", task.id.as_str()), ("Errand-Attempt", aid)];
        // Nothing from the workspace's own .git is trusted (the agent could write it): the
        // commit goes through a fresh git directory.
        let head = {
            let _guard = self.mirrors.lock(&mirror).await;
            errand_git::commit_workspace(
                &mirror,
                &ws,
                &dir.join("commit.git"),
                &start_commit,
                &c.attempt.branch,
                &message,
                &trailers,
                seed_index.as_deref(),
            )
            .await
            .map_err(|e| fail("committing the work", &e))?
        };
        // A follow-up that changed nothing keeps the branch head it started from.
        let head =
            head.or_else(|| (start_commit != task.base_commit).then(|| start_commit.clone()));
        match head {
            Some(head) => {
                let (diff, stats) = errand_git::diff(&mirror, &task.base_commit, &head)
                    .await
                    .map_err(|e| fail("computing the diff", &e))?;
                self.emit(
                    aid,
                    vec![EventKind::Committed {
                        branch: c.attempt.branch.clone(),
                        commit: head.clone(),
                        files_changed: stats.files_changed,
                        insertions: stats.insertions,
                        deletions: stats.deletions,
                    }],
                )
                .await?;
                state.outcome.head_commit = Some(head);
                // The full diff stays in git (the branch); the stored copy is capped.
                let (diff, cut) = errand_core::text::cap_head_tail(&diff, MAX_STORED_DIFF);
                if cut {
                    self.notice(
                        aid,
                        format!(
                            "the diff is larger than {} MiB; the stored copy is cut in the middle (the branch has all of it)",
                            MAX_STORED_DIFF >> 20
                        ),
                    )
                    .await?;
                }
                state.outcome.diff = Some(diff);
                state.outcome.diff_stats = Some(stats);
            }
            None => {
                self.notice(aid, "the agent made no changes; nothing to commit".into())
                    .await?;
                state.outcome.diff = Some(String::new());
                state.outcome.diff_stats = Some(Default::default());
            }
        }
        // 5. Push and pull request, when the environment asks for them.
        if task.environment.push
            && !cancel.is_cancelled()
            && let Some(_head) = &state.outcome.head_commit
        {
            let d = deliver::deliver(deliver::DeliverInput {
                mirror: &mirror,
                task,
                branch: &c.attempt.branch,
                summary: state.outcome.summary.as_deref(),
                checks: &state.outcome.checks,
                diff: state.outcome.diff_stats.as_ref(),
                cost_usd: state.outcome.usage.cost_usd,
                log_url: self.config.public_url.as_ref().map(|u| {
                    format!(
                        "{}/api/v1/tasks/{}/events",
                        u.trim_end_matches('/'),
                        task.id
                    )
                }),
                pr: task.environment.pr,
            })
            .await;
            self.notice(aid, d.summary()).await?;
            state.outcome.delivery = Some(d);
        }
        state.outcome.status = Some(if failure.is_some() {
            Status::Failed
        } else {
            Status::Done
        });
        state.outcome.error = failure;
        Ok(())
    }
}

struct RunState {
    sandbox_box: Option<Box<dyn SandboxBox>>,
    outcome: AttemptOutcome,
}
