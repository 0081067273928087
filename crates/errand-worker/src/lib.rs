//! The worker: claims attempts, prepares their workspace and box, runs the agent, runs the
//! environment's checks itself, commits the result onto the attempt's branch in the mirror,
//! and reports every step as events.
//!
//! The worker talks to the queue only through [`WorkerClient`]: in-process against a
//! [`Store`] for the embedded workers of `errand serve`; over HTTP for remote workers. It
//! must not reach into the database any other way.

pub mod agents_md;
mod bestof;
pub mod checkpoint;
pub mod checks;
mod client;
pub mod deliver;
mod egress;
pub mod gateway;
mod plan;
pub mod redact;
pub mod review;
pub mod setup;
pub mod setup_scrub;
pub mod testcounts;

pub use client::{LocalClient, WorkerClient};

use errand_agent::{AgentConfig, AgentError, AgentRun, EndReason};
use errand_core::{EventKind, Status, Usage};
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
    /// Cached setup snapshots, one directory per key (`setup`).
    pub setup_cache: PathBuf,
    /// How many setup snapshots to keep (the most recently made or used).
    pub setup_cache_keep: usize,
    /// Wall-time limit of the setup (or maintenance) command.
    pub setup_timeout: Duration,
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
            setup_cache: work_root.with_file_name("setup-cache"),
            setup_cache_keep: 8,
            setup_timeout: Duration::from_secs(30 * 60),
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
    /// Every call to the queue goes through `redaction`, which keeps secret values out.
    client: Arc<dyn WorkerClient>,
    redaction: Arc<redact::RedactingClient>,
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
        let redaction = Arc::new(redact::RedactingClient::new(client));
        Worker {
            config,
            client: redaction.clone(),
            redaction,
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
                        let e = self.redaction.redact(&aid, &e.to_string());
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
                    self.redaction.unregister(&aid);
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
        // From here on, everything sent for this attempt is redacted (until `run` lets go).
        self.redaction.register(
            &attempt_id,
            redact::attempt_redactor(&c.task.environment.secrets, redact::env_var),
        );
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
            gateway: None,
            outcome: AttemptOutcome::default(),
            plan: None,
            setup_in_use: None,
            proxies: Vec::new(),
        };
        let result = self.drive(&c, &dir, &cancel, &lease, &mut state).await;
        heartbeat.abort();
        wall.abort();
        if let Some(b) = state.sandbox_box.take()
            && let Err(e) = b.destroy().await
        {
            tracing::warn!(attempt = %attempt_id, error = %e, "destroying the box failed");
        }
        // The gateway stops with the box; what went through it counts toward the attempt.
        if let Some(g) = state.gateway.take() {
            let used = g.stop().await;
            state.outcome.usage.add(&used);
        }
        // The egress proxies stop with the boxes; their last decisions are still logged.
        for p in std::mem::take(&mut state.proxies) {
            p.stop().await;
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
                } else if let Some(p) = state.plan.take().filter(|_| other.is_ok()) {
                    // Plan mode: the attempt waits for approval, with no lease and no box.
                    plan::submit(self, &attempt_id, p).await;
                } else {
                    let keep = AttemptOutcome {
                        usage: outcome.usage,
                        turns: outcome.turns,
                        head_commit: outcome.head_commit.clone(),
                        ..Default::default()
                    };
                    match self.client.finish(&attempt_id, &worker, outcome).await {
                        Ok(s) => {
                            tracing::info!(attempt = %attempt_id, status = %s, "attempt ended");
                            self.deliver_result_if_last(&c.task).await;
                        }
                        Err(e) => {
                            // Record a minimal failure instead, or the attempt would be
                            // re-queued and fail the same way forever.
                            let e = self.redaction.redact(&attempt_id, &e.to_string());
                            tracing::warn!(attempt = %attempt_id, error = %e, "recording the outcome failed");
                            let minimal = AttemptOutcome {
                                status: Some(Status::Failed),
                                error: Some(format!("recording the outcome failed: {e}")),
                                ..keep
                            };
                            if let Err(e) = self.client.finish(&attempt_id, &worker, minimal).await
                            {
                                let e = self.redaction.redact(&attempt_id, &e.to_string());
                                tracing::warn!(attempt = %attempt_id, error = %e, "recording the failure failed");
                            }
                        }
                    }
                    checkpoint::forget(&self.mirrors, &c.task.repo, &attempt_id).await;
                }
            }
        }
        errand_sandbox::cow::unmount(&dir.join("repo"));
        // The overlay no longer uses the setup snapshot: it may be pruned now.
        drop(state.setup_in_use.take());
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "removing the workspace failed");
        }
    }

    /// Prepares the attempt's workspace at `ws`: an overlay over a cached base checkout when
    /// this process can mount one, otherwise a checkout sharing the mirror's objects.
    /// `setup_layer` (a cached setup snapshot's files) goes under the base checkout as another
    /// read-only layer. Returns how (for the log), the base's index, and whether
    /// `setup_layer` is in.
    async fn make_workspace(
        &self,
        mirror: &std::path::Path,
        dir: &std::path::Path,
        ws: &std::path::Path,
        branch: &str,
        commit: &str,
        setup_layer: Option<&std::path::Path>,
    ) -> Result<(String, Option<PathBuf>, bool), RunError> {
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
            // Tracked files win over the snapshot: the base checkout is the upper lower layer.
            let mut lowers = vec![base.as_path()];
            lowers.extend(setup_layer);
            match errand_sandbox::cow::mount_overlay_layers(
                &lowers,
                &upper,
                &dir.join("overlay-work"),
                ws,
            ) {
                Ok(()) => {
                    let how = if created {
                        "copy-on-write overlay (base checkout created)"
                    } else {
                        "copy-on-write overlay over the cached base checkout"
                    };
                    return Ok((
                        how.into(),
                        Some(base.join(".git/index")),
                        setup_layer.is_some(),
                    ));
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
        Ok(("checkout sharing the mirror's objects".into(), None, false))
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

    /// Why a run of the agent ended the attempt early (the model failed, a budget, the stuck
    /// detector, a cancel or the wall-time limit), if it did; `during` says what the run was
    /// for in the max_turns message (" while addressing the review").
    pub(crate) async fn end_failure(
        &self,
        aid: &str,
        end: &EndReason,
        turns: u64,
        lease: &AtomicU8,
        during: &str,
    ) -> Result<Option<String>, RunError> {
        Ok(match end {
            EndReason::Finished | EndReason::NoToolCalls => None,
            EndReason::MaxTurns => Some(format!(
                "stopped after {turns} model turns{during} (max_turns)"
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
        })
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
        // Plan mode: plan read-only, or implement the approved plan.
        let plan_run = plan::PlanRun::from_claim(c);
        let planning = plan_run.as_ref().is_some_and(|p| p.planning);

        // A follow-up continues from the attempt's branch head; a run starts from the base.
        let start_commit = match (&c.followup, &c.attempt.head_commit) {
            (Some(_), Some(head)) => head.clone(),
            _ => task.base_commit.clone(),
        };
        // Before anything runs: the secrets (from this worker's environment) and the network
        // of each phase.
        let secrets = setup::Secrets::resolve(&task.environment).map_err(RunError::Failed)?;
        let policy = &task.environment.network;
        let has_setup = (task.environment.setup.as_deref()).is_some_and(|s| !s.trim().is_empty());
        let setup_net = match has_setup {
            true => Some(
                self.phase_network(aid, "setup", policy.setup, policy, dir, state)
                    .await?,
            ),
            false => None,
        };
        let agent_net = self
            .phase_network(aid, "agent", policy.agent, policy, dir, state)
            .await?;

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
        // The setup phase's cache key and snapshot, if any: it becomes a layer of the workspace.
        let setup_plan = match setup::plan(&self.config.setup_cache, &mirror, &start_commit, task)
            .await
            .map_err(RunError::Failed)?
        {
            Some((plan, in_use)) => {
                state.setup_in_use = in_use;
                Some(plan)
            }
            None => None,
        };
        let ws = dir.join("repo");
        let t = Instant::now();
        let setup_layer = setup_plan
            .as_ref()
            .and_then(|p| p.snapshot.as_ref())
            .map(|s| s.files());
        let (how, seed_index, layered) = self
            .make_workspace(
                &mirror,
                dir,
                &ws,
                &c.attempt.branch,
                &start_commit,
                setup_layer.as_deref(),
            )
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
        // agent's own edits to it don't choose the checks); every run takes checkpoints, with
        // secret values replaced in what they store.
        let redactor = self.redaction.redactor(aid);
        let mut resume = checkpoint::setup(
            &self.mirrors,
            c,
            &mirror,
            dir,
            &ws,
            &start_commit,
            seed_index.as_deref(),
            &redactor,
        )
        .await;
        for n in std::mem::take(&mut resume.notices) {
            self.notice(aid, n).await?;
        }
        // What the checks write must stay out of the agent's work: the workspace is recorded
        // before they run and put back afterwards (`checks::run_checks_apart`), through an
        // index seeded now, before anything ran in the workspace.
        let work_index = if planning || check_specs.is_empty() {
            None
        } else {
            Some(
                errand_git::WorkspaceIndex::new(
                    &mirror,
                    &ws,
                    &dir.join("checks.git"),
                    &start_commit,
                    Some(&ws.join(".git").join("index")),
                )
                .await
                .map_err(|e| fail("preparing the checks' view of the workspace", &e))?,
            )
        };
        let resolved = redact::attempt_redactor(&task.environment.secrets, redact::env_var);
        for name in resolved.ignored() {
            tracing::warn!(attempt = %aid, secret = %name, "secret value too short to redact; not used");
            self.notice(
                aid,
                format!(
                    "secret {name}: its value is shorter than {} bytes, too short to redact reliably, so it is not given to the box; use a longer value",
                    errand_core::redact::MIN_SECRET_LEN
                ),
            )
            .await?;
        }
        // 1b. Setup phase, in a box of its own (see `setup`).
        let setup_out = match (&setup_plan, &setup_net) {
            (Some(plan), Some(net)) => {
                self.setup_phase(
                    setup::PhaseInput {
                        c,
                        dir,
                        ws: &ws,
                        mirror: &mirror,
                        commit: &start_commit,
                        seed_index: seed_index.as_deref(),
                        layered,
                        plan,
                        secrets: &secrets,
                        net,
                        cancel,
                        lease,
                    },
                    state,
                )
                .await?
            }
            _ => setup::SetupOutcome::default(),
        };
        if let Some(wi) = &work_index {
            wi.set_exclude(&setup_out.exclude)
                .await
                .map_err(|e| fail("preparing the checks' view of the workspace", &e))?;
        }
        // The model gateway, when the environment names providers for it: keys stay in this
        // process; the box gets base URLs and placeholder keys.
        if !task.environment.gateway.is_empty() {
            let g = gateway::AttemptGateway::start(
                &task.environment.gateway,
                dir,
                self.client.clone(),
                aid,
                &self.config.name,
            )
            .await
            .map_err(|e| fail("starting the model gateway", &e))?;
            self.notice(
                aid,
                format!(
                    "model gateway: {} at http://127.0.0.1:{}/NAME/… (keys stay outside the box)",
                    task.environment
                        .gateway
                        .iter()
                        .map(|u| format!("{} ({})", u.name, u.kind.as_str()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    gateway::GATEWAY_PORT
                ),
            )
            .await?;
            state.gateway = Some(g);
        }
        let mut box_env: Vec<(String, String)> = task
            .environment
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(g) = &state.gateway {
            // The environment's own values win over the gateway's.
            for (k, v) in &g.env {
                if !box_env.iter().any(|(n, _)| n == k) {
                    box_env.push((k.clone(), v.clone()));
                }
            }
        }
        let mut spec = BoxSpec {
            workspace: ws.clone(),
            scratch: dir.join("scratch"),
            ro_binds: vec![mirror.join("objects")],
            rootfs: task.environment.rootfs.as_ref().map(PathBuf::from),
            quota_dir: Some(dir.join("upper")).filter(|u| u.is_dir()),
            env: box_env,
            bridges: state
                .gateway
                .iter()
                .map(|g| {
                    let (port, socket) = g.bridge();
                    errand_sandbox::Bridge {
                        port,
                        socket,
                        handoff: false,
                    }
                })
                .collect(),
            workspace_readonly: planning,
            ..Default::default()
        };
        // The agent and the checks see only the secrets exposed to them.
        spec.env.extend(secrets.for_agent());
        agent_net.apply(&mut spec);
        if spec.net == Some(errand_sandbox::ns::NetMode::Off) && !spec.bridges.is_empty() {
            // Network off with the model gateway: the box gets its own loopback with the
            // gateway's bridge on it and nothing else (no egress proxy, no route out).
            spec.net = Some(errand_sandbox::ns::NetMode::Allowlist);
        }
        if let Some(carry) = &setup_out.carry {
            spec.ro_binds.push(carry.dir.clone());
        }
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
        let prepared =
            setup::prepare_box(sandbox_box.as_ref(), setup_out.carry.as_ref(), cancel).await;
        if let Some(p) = &plan_run {
            self.notice(aid, p.notice.clone()).await?;
        }
        state.sandbox_box = Some(sandbox_box);
        prepared.map_err(RunError::Failed)?;
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
                if planning {
                    Status::Planning
                } else {
                    Status::Running
                },
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
        // What the attempt used before this run: a resumed run's, a planning run's (an
        // approved plan is implemented by a new run), or a follow-up's.
        let (base_usage, base_turns) = match (&resume.resumed, &plan_run, &c.followup) {
            (Some(r), _, _) => (r.base_usage, r.base_turns),
            (None, Some(p), _) => (p.usage, p.turns),
            (None, None, Some(_)) => (c.attempt.usage, c.attempt.turns),
            (None, None, None) => (Usage::default(), 0),
        };
        let sink = checkpoint::CheckpointSink::new(
            self.client.clone(),
            aid,
            &self.config.name,
            resume.checkpointer,
            base_usage,
            base_turns,
        )
        .with_gateway(state.gateway.as_ref().map(|g| g.used.clone()))
        .with_denials(agent_net.proxy_feed.clone());
        let snap = &task.environment;
        let agent_config = AgentConfig {
            budget: snap.budget,
            compact_at: snap.agent.compact_at,
            keep_recent_turns: snap.agent.keep_recent_turns,
            stuck_repeats: snap.agent.stuck_repeats,
            stuck_turns: snap.agent.stuck_turns,
            model_options: snap.model_options.clone(),
            cache_key: Some(aid.to_string()),
            planning,
            continuation: plan_run.as_ref().and_then(|p| p.continuation.clone()),
            plan: plan_run
                .as_ref()
                .map(|p| p.plan.clone())
                .unwrap_or_default(),
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
        let (history, prompt) =
            plan::conversation(plan_run.as_ref(), history, prompt, &task.prompt);
        // A checkpoint of a review round's fixes: this run goes on with that round.
        let review_progress = resume.resumed.as_ref().and_then(|r| r.review.clone());
        let outcome = AgentRun {
            prompt: &prompt,
            workspace: &ws,
            sandbox: sandbox_box,
            provider: provider.as_ref(),
            sink: &sink,
            cancel: cancel.clone(),
            config: agent_config.clone(),
            history,
            resume: resume.resumed.map(|r| r.resume),
        }
        .run()
        .await?;
        state.outcome.usage = sink.total_usage(&outcome.usage);
        state.outcome.turns = sink.total_turns(outcome.turns);
        state.outcome.conversation = serde_json::to_value(&outcome.messages).ok();
        // Redacted now: the summary goes into the commit message and the pull request.
        state.outcome.summary = outcome
            .summary
            .as_deref()
            .or(review_progress.as_ref().and_then(|p| p.summary.as_deref()))
            .map(|s| redactor.redact(s).into_owned());
        let mut failure = self
            .end_failure(aid, &outcome.end, outcome.turns, lease, "")
            .await?;
        // Plan mode: a planning run ends here, with its plan waiting for approval.
        if let Some(p) = plan_run.as_ref().filter(|p| p.planning) {
            if let Some(note) =
                plan::end_planning(p, &outcome.plan, &outcome.messages, failure, state)
            {
                self.notice(aid, note).await?;
            }
            return Ok(());
        }

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
        let agent_ok = failure.is_none();
        let mut checked_from = Status::Running;
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
            checked_from = Status::Checking;
            let (results, check_failure) = self
                .run_checks_apart(
                    aid,
                    sandbox_box,
                    &sink,
                    &ws,
                    &check_specs,
                    cancel,
                    work_index.as_ref(),
                )
                .await?;
            state.outcome.checks = results;
            failure = failure.or(check_failure);
        }
        // 3b. Review (review.rs): a reviewer model reads the work; its findings go back to
        // the agent in the same conversation, then the checks and the review run again.
        if let Some(p) = &review_progress {
            // The rounds before the checkpoint stay on the attempt even if no review runs now.
            state.outcome.review = Some(p.review.clone());
        }
        if agent_ok && !cancel.is_cancelled() && task.review_model.is_some() {
            failure = self
                .review_rounds(
                    review::ReviewCtx {
                        c,
                        ws: &ws,
                        dir,
                        mirror: &mirror,
                        start_commit: &start_commit,
                        seed_index: seed_index.as_deref(),
                        exclude: &setup_out.exclude,
                        work_index: work_index.as_ref(),
                        sandbox_box,
                        sink: &sink,
                        cancel,
                        lease,
                        provider: provider.as_ref(),
                        agent_config: agent_config.clone(),
                        check_specs: &check_specs,
                        plan: match &review_progress {
                            Some(p) if outcome.plan.is_empty() => p.plan.clone(),
                            _ => outcome.plan.clone(),
                        },
                        messages: outcome.messages.clone(),
                        status: checked_from,
                        resumed: review_progress,
                    },
                    failure,
                    &mut state.outcome,
                )
                .await?;
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
            state
                .outcome
                .summary
                .as_deref()
                .unwrap_or("(the agent gave no summary)")
        );
        let message = redactor.redact_string(message);
        let trailers = [("Errand-Task", task.id.as_str()), ("Errand-Attempt", aid)];
        // Nothing from the workspace's own .git is trusted (the agent could write it): the
        // commit goes through a fresh git directory.
        let scrubbed = Arc::new(std::sync::Mutex::new(Vec::new()));
        // Setup's files, and whatever a check created that could not be removed.
        let exclude = match &work_index {
            Some(wi) => wi.excluded(),
            None => setup_out.exclude.clone(),
        };
        // With secrets, values in the agent's changes are replaced before anything is
        // committed.
        let scrub = if redactor.is_empty() {
            None
        } else {
            let (root, red, found) = (ws.clone(), redactor.clone(), scrubbed.clone());
            let scrub: errand_git::Scrub = Box::new(move |paths| {
                Box::pin(async move {
                    // A path that holds a value is not committed at all (as in the
                    // checkpoints); the others have their values replaced.
                    let (leave_out, paths) = redact::split_named(&red, paths);
                    let mut list = tokio::task::spawn_blocking(move || {
                        redact::scrub_files(&root, &red, &paths)
                    })
                    .await
                    .unwrap_or_default();
                    let rewrote = list.iter().any(|s| !s.secrets.is_empty());
                    let outcome = errand_git::ScrubOutcome {
                        rewrote,
                        leave_out: leave_out.iter().map(|(p, _)| p.clone()).collect(),
                    };
                    list.extend(leave_out.into_iter().map(|(p, secrets)| redact::Scrubbed {
                        path: p.display().to_string(),
                        secrets,
                        problem: Some(redact::NAME_HOLDS_A_VALUE.into()),
                    }));
                    if let Ok(mut f) = found.lock() {
                        *f = list;
                    }
                    outcome
                })
            });
            Some(scrub)
        };
        let head = {
            let _guard = self.mirrors.lock(&mirror).await;
            errand_git::commit_workspace_with(
                &mirror,
                &ws,
                &dir.join("commit.git"),
                &start_commit,
                &c.attempt.branch,
                &message,
                &trailers,
                seed_index.as_deref(),
                scrub,
                &exclude,
            )
            .await
            .map_err(|e| fail("committing the work", &e))?
        };
        let scrubbed = scrubbed.lock().map(|f| f.clone()).unwrap_or_default();
        for s in scrubbed {
            let message = match &s.problem {
                None => format!(
                    "secret {} found in {}: replaced with {} before the commit",
                    s.secrets.join(", "),
                    s.path,
                    s.secrets
                        .iter()
                        .map(|n| errand_core::redact::placeholder(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some(p) if s.secrets.is_empty() => format!("{}: {p}", s.path),
                Some(p) if p == redact::NAME_HOLDS_A_VALUE => format!(
                    "{} is left out of the commit: its path holds the value of secret {}",
                    redactor.redact(&s.path),
                    s.secrets.join(", ")
                ),
                Some(p) => format!(
                    "secret {} found in {} but it could not be replaced ({p})",
                    s.secrets.join(", "),
                    s.path
                ),
            };
            self.notice(aid, message).await?;
        }
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
        // 5. Push and pull request, when the environment asks for them. Of a best-of-N task
        // only the result is delivered, once all its attempts have ended (bestof.rs); a
        // follow-up continues the result and delivers it again.
        if task.environment.push
            && (task.attempts.len() <= 1 || c.followup.is_some())
            && !cancel.is_cancelled()
            && let Some(_head) = &state.outcome.head_commit
        {
            let redacted_task;
            let task_shown = if redactor.is_empty() {
                task
            } else {
                let mut t = task.clone();
                t.title = redactor.redact_string(t.title);
                t.prompt = redactor.redact_string(t.prompt);
                redacted_task = t;
                &redacted_task
            };
            let d = deliver::deliver(deliver::DeliverInput {
                mirror: &mirror,
                task: task_shown,
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
                review: state.outcome.review.as_ref(),
                selection: None,
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
    gateway: Option<gateway::AttemptGateway>,
    outcome: AttemptOutcome,
    /// Plan mode: the plan a planning run proposed, handed to the queue once the box is gone.
    plan: Option<errand_store::PlanSubmission>,
    /// Keeps the setup snapshot under this attempt's overlay from being pruned.
    setup_in_use: Option<setup::InUse>,
    /// The egress proxies of the attempt's phases (network mode `allowlist`).
    proxies: Vec<egress::PhaseProxy>,
}
