//! Checkpoints and resuming: after every agent turn the run saves what it would need to go on
//! (the workspace as a commit on the mirror's hidden ref `refs/errand/checkpoints/<attempt>`,
//! the conversation, the counters); a later run of the attempt, after the server or the worker
//! died, restores them and continues with the next turn.
//!
//! [`CheckpointSink`] is the agent's event sink for a run: it forwards events and usage to the
//! queue like any sink, and implements the agent's per-turn hooks (`snapshot`, then
//! `checkpoint`). [`prepare_resume`] turns a claimed checkpoint back into a workspace and an
//! [`errand_agent::Resume`].
//!
//! Secrets: with an environment that has secrets, the checkpoints' snapshots are scrubbed
//! ([`Checkpointer::with_scrub`]): a file holding a value is stored with the placeholder
//! instead, the workspace's own file left as it is, and a notice says so the first time. The
//! conversation and state are redacted on their way to the store (`redact::RedactingClient`).
//! A run resumed from such a checkpoint works on the placeholders; a notice names the files.

use crate::WorkerClient;
use errand_agent::{AgentError, EventSink, Resume, RunState};
use errand_core::redact::Redactor;
use errand_core::{AttemptReview, EventKind, PlanStep, Usage};
use errand_git::Checkpointer;
use errand_git::checkpoint::ScrubbedFile;
use errand_store::{Checkpoint, StoreError};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// What the worker keeps in [`Checkpoint::state`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerState {
    /// The agent's counters, plan and stuck detector.
    pub agent: RunState,
    /// Usage and turns of the attempt's earlier runs that this one adds to (a follow-up).
    #[serde(default)]
    pub base_usage: Usage,
    #[serde(default)]
    pub base_turns: u64,
    /// The files of the checkpoint that hold placeholders where the workspace held secret
    /// values (or an earlier version, when they could not be checked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scrubbed: Vec<ScrubbedFile>,
    /// Set when the checkpoint was taken while the agent addressed a reviewer's findings:
    /// `agent` is then that round's run and `base_*` the attempt's totals when it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewProgress>,
}

/// Where the review was when a checkpoint was taken during a round of fixes. A run resumed
/// from it continues the round's conversation, then runs the checks and the next review
/// round, with the earlier rounds kept and counted against `max_review_rounds`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReviewProgress {
    /// The round whose findings the agent is addressing.
    pub round: u32,
    /// The review so far, that round's verdict included.
    pub review: AttemptReview,
    /// The agent's summary and plan before the round (kept when the round sets none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PlanStep>,
}

/// `a - b`, field by field, never below zero.
fn minus(a: &Usage, b: &Usage) -> Usage {
    Usage {
        input_tokens: a.input_tokens.saturating_sub(b.input_tokens),
        cached_input_tokens: a.cached_input_tokens.saturating_sub(b.cached_input_tokens),
        cache_write_tokens: a.cache_write_tokens.saturating_sub(b.cache_write_tokens),
        output_tokens: a.output_tokens.saturating_sub(b.output_tokens),
        reasoning_tokens: a.reasoning_tokens.saturating_sub(b.reasoning_tokens),
        cost_usd: (a.cost_usd - b.cost_usd).max(0.0),
    }
}

/// How a claimed checkpoint is continued.
pub struct Resumed {
    pub resume: Resume,
    pub base_usage: Usage,
    pub base_turns: u64,
    /// The checkpoint commit, which the workspace now holds.
    pub commit: String,
    /// Files restored with placeholders instead of secret values.
    pub scrubbed: Vec<ScrubbedFile>,
    /// Set when the checkpoint is in a review round's fixes.
    pub review: Option<ReviewProgress>,
}

/// Restores a claimed checkpoint into the fresh workspace `ws` (checked out at `start`) and
/// builds the agent's [`Resume`]. `recorded` is the usage the attempt had recorded when it was
/// claimed: tokens spent after the checkpoint by the run that died (a model turn whose work
/// was rolled back) were paid for, so they count against the budgets too.
pub async fn prepare_resume(
    cp: &Checkpoint,
    ws: &Path,
    start: &str,
    recorded: &Usage,
) -> Result<Resumed, String> {
    let state: WorkerState = serde_json::from_value(cp.state.clone())
        .map_err(|e| format!("the checkpoint's state is unreadable: {e}"))?;
    let messages: Vec<errand_model::Message> = serde_json::from_value(cp.conversation.clone())
        .map_err(|e| format!("the checkpoint's conversation is unreadable: {e}"))?;
    if messages.is_empty() {
        return Err("the checkpoint's conversation is empty".into());
    }
    errand_git::restore_checkpoint(ws, start, &cp.commit)
        .await
        .map_err(|e| format!("restoring the workspace to {}: {e}", cp.commit))?;
    let mut agent = state.agent;
    if state.review.is_none() {
        agent.turns = cp.turn;
    }
    let spent = minus(recorded, &state.base_usage);
    agent.usage = if spent.total() > cp.usage.total() || spent.cost_usd > cp.usage.cost_usd {
        spent
    } else {
        cp.usage
    };
    Ok(Resumed {
        resume: Resume {
            messages,
            state: agent,
        },
        base_usage: state.base_usage,
        base_turns: state.base_turns,
        commit: cp.commit.clone(),
        scrubbed: state.scrubbed,
        review: state.review,
    })
}

/// How many paths a notice names before "and N more".
const NAMED_FILES: usize = 20;

fn name_files<'a>(paths: impl ExactSizeIterator<Item = &'a str>) -> String {
    let n = paths.len();
    let mut text = paths.take(NAMED_FILES).collect::<Vec<_>>().join(", ");
    if n > NAMED_FILES {
        text.push_str(&format!(" and {} more", n - NAMED_FILES));
    }
    text
}

/// The notice of a run resumed from a checkpoint with scrubbed files: which files hold
/// placeholders (and which are at an earlier version). `None` when there are none.
pub fn restored_notice(files: &[ScrubbedFile]) -> Option<String> {
    let scrubbed: Vec<&ScrubbedFile> = files.iter().filter(|f| f.problem.is_none()).collect();
    let older: Vec<&ScrubbedFile> = files.iter().filter(|f| f.problem.is_some()).collect();
    let plural = |n: usize| if n == 1 { "file" } else { "files" };
    let mut parts = Vec::new();
    if !scrubbed.is_empty() {
        let mut names: Vec<&str> = scrubbed
            .iter()
            .flat_map(|f| f.secrets.iter())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names.dedup();
        parts.push(format!(
            "restored from checkpoint; secret values in {} {} were replaced with placeholders ({}): {}",
            scrubbed.len(),
            plural(scrubbed.len()),
            names
                .iter()
                .map(|n| errand_core::redact::placeholder(n))
                .collect::<Vec<_>>()
                .join(", "),
            name_files(scrubbed.iter().map(|f| f.path.as_str()))
        ));
    }
    if !older.is_empty() {
        parts.push(format!(
            "{} {} could not be checked for secret values and {} restored at an earlier version: {}",
            older.len(),
            plural(older.len()),
            if older.len() == 1 { "was" } else { "were" },
            name_files(older.iter().map(|f| f.path.as_str()))
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The notice when a checkpoint first stores `f` differently from the workspace.
fn scrubbed_file_notice(turn: u64, f: &ScrubbedFile) -> String {
    match &f.problem {
        None => format!(
            "checkpoint after turn {turn}: secret {} found in {}; the checkpoint stores {} instead (the file in the workspace is unchanged)",
            f.secrets.join(", "),
            f.path,
            f.secrets
                .iter()
                .map(|n| errand_core::redact::placeholder(n))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(why) => format!(
            "checkpoint after turn {turn}: {} is not in the checkpoint as it is now ({why}); the checkpoint keeps its earlier version",
            f.path
        ),
    }
}

/// The agent's sink for one run: events and usage to the queue, checkpoints after each turn.
pub struct CheckpointSink {
    client: Arc<dyn WorkerClient>,
    attempt: String,
    worker: String,
    checkpointer: Option<tokio::sync::Mutex<Checkpointer>>,
    /// The seq of the last event this run appended.
    last_seq: AtomicI64,
    base_usage: Usage,
    base_turns: u64,
    /// Set once checkpoints failed (said once, then the run goes on without them).
    broken: AtomicBool,
    /// What the box used through the model gateway so far, added to the running totals.
    gateway_used: Option<Arc<std::sync::Mutex<Usage>>>,
    /// The egress proxy's denials not yet shown to the agent (network mode `allowlist`).
    denials: Option<crate::egress::DenialFeed>,
    /// The scrubbed files already announced.
    announced: std::sync::Mutex<Vec<ScrubbedFile>>,
}

impl CheckpointSink {
    /// `checkpointer` is `None` when checkpoints could not be set up (the run still works,
    /// it just cannot be resumed). `base_*`: what the attempt's earlier runs used, added to
    /// the usage shown while this run goes on.
    pub fn new(
        client: Arc<dyn WorkerClient>,
        attempt: &str,
        worker: &str,
        checkpointer: Option<Checkpointer>,
        base_usage: Usage,
        base_turns: u64,
    ) -> CheckpointSink {
        CheckpointSink {
            client,
            attempt: attempt.to_string(),
            worker: worker.to_string(),
            checkpointer: checkpointer.map(tokio::sync::Mutex::new),
            last_seq: AtomicI64::new(0),
            base_usage,
            base_turns,
            broken: AtomicBool::new(false),
            gateway_used: None,
            denials: None,
            announced: Default::default(),
        }
    }

    /// Adds the model gateway's usage to the running totals the agent reports.
    pub fn with_gateway(mut self, used: Option<Arc<std::sync::Mutex<Usage>>>) -> Self {
        self.gateway_used = used;
        self
    }

    /// Appends the egress proxy's denials to the tool result they happened during.
    pub fn with_denials(mut self, denials: Option<crate::egress::DenialFeed>) -> Self {
        self.denials = denials;
        self
    }

    /// The run's usage plus the earlier runs'.
    pub fn total_usage(&self, run: &Usage) -> Usage {
        let mut u = self.base_usage;
        u.add(run);
        u
    }

    pub fn total_turns(&self, run: u64) -> u64 {
        self.base_turns + run
    }

    /// Saves a checkpoint: the workspace as a commit on the hidden ref, and the
    /// conversation and counters in the store. `turn` orders the checkpoints of a run;
    /// `base_*` are what the run's `state` adds to (the attempt's totals before it);
    /// `review` is set during a review round.
    async fn save(
        &self,
        messages: &[errand_model::Message],
        state: &RunState,
        turn: u64,
        base_usage: Usage,
        base_turns: u64,
        review: Option<&ReviewProgress>,
    ) -> Result<(), AgentError> {
        let Some(cp) = &self.checkpointer else {
            return Ok(());
        };
        if self.broken.load(Ordering::SeqCst) {
            return Ok(());
        }
        let message = format!(
            "errand checkpoint after turn {turn}\n\nErrand-Attempt: {}\n",
            self.attempt
        );
        let (commit, scrubbed) = {
            let mut cp = cp.lock().await;
            match cp.commit(&message).await {
                Ok(c) => (c, cp.scrubbed()),
                Err(e) => return self.broke(format!("committing the workspace: {e}")).await,
            }
        };
        let news: Vec<String> = {
            let mut seen = self.announced.lock().unwrap_or_else(|e| e.into_inner());
            scrubbed
                .iter()
                .filter(|f| {
                    let new = !seen.contains(f);
                    if new {
                        seen.push((*f).clone());
                    }
                    new
                })
                .map(|f| scrubbed_file_notice(turn, f))
                .collect()
        };
        if !news.is_empty() {
            self.emit(
                news.into_iter()
                    .map(|message| EventKind::Notice { message })
                    .collect(),
            )
            .await?;
        }
        let conversation = match serde_json::to_value(messages) {
            Ok(v) => v,
            Err(e) => return self.broke(format!("encoding the conversation: {e}")).await,
        };
        let worker_state = WorkerState {
            agent: state.clone(),
            base_usage,
            base_turns,
            scrubbed,
            review: review.cloned(),
        };
        let saved = Checkpoint {
            turn,
            commit,
            conversation,
            usage: state.usage,
            last_seq: self.last_seq.load(Ordering::SeqCst),
            state: serde_json::to_value(&worker_state).unwrap_or_default(),
        };
        match self
            .client
            .checkpoint(&self.attempt, &self.worker, saved)
            .await
        {
            Ok(()) => Ok(()),
            // Someone else owns the attempt now: stop like any fenced write.
            Err(e @ StoreError::LeaseLost(_)) => Err(sink_err(e)),
            // Cancelled meanwhile: the run is ending anyway.
            Err(StoreError::WrongState(m)) => {
                tracing::debug!(attempt = %self.attempt, "checkpoint refused: {m}");
                Ok(())
            }
            Err(e) => self.broke(format!("saving the checkpoint: {e}")).await,
        }
    }

    /// Reports the attempt's running totals as they are (a review round's, which already
    /// hold what the earlier runs used), with the model gateway's usage added.
    pub async fn report_totals(&self, total: Usage, turns: u64) -> Result<(), AgentError> {
        let mut total = total;
        if let Some(g) = &self.gateway_used {
            total.add(&g.lock().unwrap_or_else(|e| e.into_inner()));
        }
        self.client
            .update_usage(&self.attempt, &self.worker, total, turns)
            .await
            .map_err(sink_err)
    }

    /// Checkpoints a turn of a review round's fixes: `state` is the round's own run,
    /// `totals_*` the attempt's usage and turns when the round started, `progress` where the
    /// review is. A run resumed from it goes on with the round (see [`ReviewProgress`]).
    pub async fn checkpoint_round(
        &self,
        messages: &[errand_model::Message],
        state: &RunState,
        totals_usage: Usage,
        totals_turns: u64,
        progress: &ReviewProgress,
    ) -> Result<(), AgentError> {
        // The turns of this run so far: its checkpoints' turns only grow.
        let turn = totals_turns.saturating_sub(self.base_turns) + state.turns;
        self.save(
            messages,
            state,
            turn,
            totals_usage,
            totals_turns,
            Some(progress),
        )
        .await
    }

    /// Says once that checkpoints stopped working; the run goes on without them.
    async fn broke(&self, what: String) -> Result<(), AgentError> {
        tracing::warn!(attempt = %self.attempt, error = %what, "checkpoint failed");
        if !self.broken.swap(true, Ordering::SeqCst) {
            self.emit(vec![EventKind::Notice {
                message: format!(
                    "checkpoints stopped working ({what}); the attempt goes on, but if it is interrupted now it restarts from its last checkpoint, or from the start"
                ),
            }])
            .await?;
        }
        Ok(())
    }
}

fn sink_err(e: StoreError) -> AgentError {
    AgentError::Sink(e.to_string())
}

#[async_trait::async_trait]
impl EventSink for CheckpointSink {
    async fn emit(&self, events: Vec<EventKind>) -> Result<(), AgentError> {
        let seq = self
            .client
            .append_events(&self.attempt, &self.worker, events)
            .await
            .map_err(sink_err)?;
        self.last_seq.fetch_max(seq, Ordering::SeqCst);
        Ok(())
    }

    async fn usage(&self, usage: Usage, turns: u64) -> Result<(), AgentError> {
        self.report_totals(self.total_usage(&usage), self.total_turns(turns))
            .await
    }

    fn tool_notes(&self) -> Option<String> {
        self.denials.as_ref().and_then(|d| d.take_note())
    }

    async fn snapshot(&self) -> Result<Option<bool>, AgentError> {
        let Some(cp) = &self.checkpointer else {
            return Ok(None);
        };
        if self.broken.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let result = cp.lock().await.snapshot().await;
        match result {
            Ok(s) => Ok(Some(s.changed)),
            Err(e) => {
                self.broke(format!("recording the workspace: {e}")).await?;
                Ok(None)
            }
        }
    }

    async fn checkpoint(
        &self,
        messages: &[errand_model::Message],
        state: &RunState,
    ) -> Result<(), AgentError> {
        self.save(
            messages,
            state,
            state.turns,
            self.base_usage,
            self.base_turns,
            None,
        )
        .await
    }
}

/// What a run starts with: the checkpoint it resumes from (workspace already restored), its
/// checkpointer, and lines for the log.
pub struct RunSetup {
    pub resumed: Option<Resumed>,
    pub checkpointer: Option<Checkpointer>,
    pub notices: Vec<String>,
}

/// Resumes the claimed checkpoint, if any, into the fresh workspace `ws` (at `start`), and
/// prepares this run's checkpoints. Runs before the box exists, so the workspace's index it
/// seeds from is still the one Errand wrote. `base_index` is the base checkout's index when
/// `ws` is a copy-on-write overlay over it (its upper layer is `dir/upper`): snapshots then
/// look only at what the upper layer holds. Nothing here fails the run: a checkpoint that
/// can't be used means starting over (said in the log), and checkpoints that can't be set up
/// mean a run that can't be resumed. With a `redactor` that holds values (the environment
/// has secrets), the checkpoints are scrubbed of them.
#[allow(clippy::too_many_arguments)]
pub async fn setup(
    mirrors: &errand_git::MirrorCache,
    c: &errand_store::ClaimedAttempt,
    mirror: &Path,
    dir: &Path,
    ws: &Path,
    start: &str,
    base_index: Option<&Path>,
    redactor: &Redactor,
) -> RunSetup {
    let aid = c.attempt.id.as_str();
    let mut notices = Vec::new();
    let mut resumed = None;
    if let Some(cp) = &c.checkpoint {
        let t = std::time::Instant::now();
        let found = mirrors
            .ensure_commit(mirror, &c.task.repo, &cp.commit)
            .await
            .map_err(|e| format!("its commit is not in this worker's mirror: {e}"));
        let r = match found {
            Ok(()) => prepare_resume(cp, ws, start, &c.attempt.usage).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(r) => {
                notices.push(format!(
                    "resuming from the checkpoint after turn {}: workspace restored to {} in {} ms, {} messages, {} tokens and ${:.4} used so far",
                    cp.turn,
                    errand_core::text::title_of(&cp.commit, 12).trim_end_matches('…'),
                    t.elapsed().as_millis(),
                    r.resume.messages.len(),
                    r.resume.state.usage.total(),
                    r.resume.state.usage.cost_usd
                ));
                notices.extend(restored_notice(&r.scrubbed));
                if let Some(p) = &r.review {
                    notices.push(format!(
                        "the checkpoint is in review round {}'s fixes: the agent goes on with the reviewer's findings, then the checks and the review run again ({} earlier round{} kept)",
                        p.round,
                        p.review.rounds.len(),
                        if p.review.rounds.len() == 1 { "" } else { "s" }
                    ));
                }
                resumed = Some(r);
            }
            Err(e) => {
                tracing::warn!(attempt = %aid, error = %e, "cannot resume from the checkpoint");
                notices.push(format!(
                    "cannot resume from the checkpoint after turn {} ({e}); starting over",
                    cp.turn
                ));
                // A half-restored workspace must not be worked on: back to `start`.
                if let Err(e) = errand_git::restore_checkpoint(ws, &cp.commit, start).await {
                    tracing::debug!(error = %e, "resetting the workspace");
                }
            }
        }
    }
    let head = resumed.as_ref().map_or(start, |r| r.commit.as_str());
    let checkpointer = match Checkpointer::new(
        mirror,
        ws,
        &dir.join("checkpoint.git"),
        aid,
        head,
        Some(&ws.join(".git").join("index")),
    )
    .await
    {
        Ok(cp) => {
            let upper = dir.join("upper");
            let earlier = resumed
                .as_ref()
                .map(|r| r.scrubbed.clone())
                .unwrap_or_default();
            let cp = cp.with_scrub(redactor.clone(), earlier);
            // base_index is `<base>/.git/index`.
            match base_index.and_then(|i| i.parent()?.parent()) {
                Some(lower) if upper.is_dir() => Some(cp.with_overlay(&upper, lower)),
                _ => Some(cp),
            }
        }
        Err(e) => {
            tracing::warn!(attempt = %aid, error = %e, "checkpoints unavailable");
            notices.push(format!(
                "checkpoints are unavailable ({e}); if this run is interrupted it starts over"
            ));
            None
        }
    };
    RunSetup {
        resumed,
        checkpointer,
        notices,
    }
}

/// Drops an ended attempt's checkpoint ref from the mirror (its work is on its branch; the
/// store dropped the checkpoint itself when the attempt ended).
pub async fn forget(mirrors: &errand_git::MirrorCache, repo: &str, attempt_id: &str) {
    let mirror = mirrors.mirror_path(repo);
    if !mirror.join("HEAD").exists() {
        return;
    }
    if let Err(e) = errand_git::delete_checkpoint_ref(&mirror, attempt_id).await {
        tracing::warn!(attempt = %attempt_id, error = %e, "deleting the checkpoint ref failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, secrets: &[&str], problem: Option<&str>) -> ScrubbedFile {
        ScrubbedFile {
            path: path.into(),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            problem: problem.map(str::to_string),
        }
    }

    #[test]
    fn the_resume_notice_names_the_scrubbed_files() {
        assert_eq!(restored_notice(&[]), None);
        let n = restored_notice(&[
            file("a.txt", &["TOKEN"], None),
            file("b/c.env", &["KEY", "TOKEN"], None),
        ])
        .unwrap();
        assert_eq!(
            n,
            "restored from checkpoint; secret values in 2 files were replaced with placeholders ([REDACTED:KEY], [REDACTED:TOKEN]): a.txt, b/c.env"
        );
        let n = restored_notice(&[
            file("one.txt", &["TOKEN"], None),
            file("huge.bin", &[], Some("too large")),
        ])
        .unwrap();
        assert!(
            n.starts_with("restored from checkpoint; secret values in 1 file were replaced")
                && n.ends_with(
                    "; 1 file could not be checked for secret values and was restored at an earlier version: huge.bin"
                ),
            "{n}"
        );
        let many: Vec<ScrubbedFile> = (0..25)
            .map(|i| file(&format!("f{i:02}"), &["T"], None))
            .collect();
        let n = restored_notice(&many).unwrap();
        assert!(
            n.contains("in 25 files") && n.ends_with("f19 and 5 more"),
            "{n}"
        );
    }

    #[test]
    fn a_state_saved_before_scrubbing_and_review_progress_still_reads() {
        let old = serde_json::json!({"agent": {"turns": 3, "usage": Usage::default(), "elapsed_ms": 10}, "base_turns": 1});
        let s: WorkerState = serde_json::from_value(old).unwrap();
        assert!(s.scrubbed.is_empty() && s.review.is_none());
        assert_eq!((s.agent.turns, s.base_turns), (3, 1));
        // Nothing new is written when there is nothing to say.
        let v = serde_json::to_value(&s).unwrap();
        assert!(
            v.get("scrubbed").is_none() && v.get("review").is_none(),
            "{v}"
        );
        let s = WorkerState {
            scrubbed: vec![file("a.txt", &["TOKEN"], None)],
            review: Some(ReviewProgress {
                round: 2,
                ..Default::default()
            }),
            ..s
        };
        let back: WorkerState = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back.scrubbed, s.scrubbed);
        assert_eq!(back.review, s.review);
    }
}
