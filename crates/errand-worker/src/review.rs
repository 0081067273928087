//! The reviewer: after the checks, a separate model reads the task, the agent's plan and
//! summary, the diff and the check results, and returns a verdict through the
//! `submit_review` tool: `{"verdict": "approve" | "changes_needed", "summary": "…",
//! "findings": [{"file", "line", "severity": "error" | "warning" | "info", "message"}]}`.
//!
//! On `changes_needed` the findings go back to the coding agent as a user message in the same
//! conversation, in the same box; the agent works again, the checks run again, and the
//! reviewer looks again, up to the task's `max_review_rounds` times. The attempt is
//! `verifying` while the reviewer works. An answer that is not a valid review is sent back
//! to the reviewer once with what is wrong; a second invalid one leaves the attempt without a
//! verdict, with a note saying why. The verdicts are kept on the attempt
//! ([`errand_core::AttemptReview`]), as `review` events, and in the pull request body.
//!
//! The agent's turns in a round of fixes are checkpointed like the main run's, with where the
//! review is ([`crate::checkpoint::ReviewProgress`]): a run resumed from such a checkpoint
//! (the main path of `drive()`, continuing the round's conversation) then runs the checks and
//! the next review round, the earlier rounds kept. With secrets, the work in progress the
//! reviewer reads is committed with the values replaced (never written to the mirror), so the
//! reviewer's diff holds placeholders.

use crate::checkpoint::{CheckpointSink, ReviewProgress};
use crate::{RunError, Worker};
use errand_agent::{AgentConfig, AgentError, AgentRun, EventSink, RunState};
use errand_core::{
    AttemptReview, CheckResult, CheckSpec, DiffStats, EventKind, Finding, PlanStep, Review,
    Severity, Status, Task, Usage, Verdict,
};
use errand_model::{Message, ModelRequest, Provider, ProviderKind, ToolSpec};
use errand_store::{AttemptOutcome, ClaimedAttempt};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU8;
use tokio_util::sync::CancellationToken;

/// The tool the reviewer answers with.
pub const SUBMIT_REVIEW: &str = "submit_review";
/// The largest diff shown to the reviewer (head and tail kept).
const MAX_REVIEW_DIFF: usize = 256 * 1024;
/// Findings kept per review.
const MAX_FINDINGS: usize = 100;
/// Longest summary or finding message kept, in characters.
const MAX_TEXT: usize = 4000;

const REVIEW_SYSTEM: &str = "You are a senior engineer reviewing a change that an autonomous coding agent made to a \
git repository for a task. You see the task, the agent's plan and summary, the checks the platform ran \
itself (their exit codes are real), and the diff against the base. Decide whether the change fully and \
correctly does what the task asks, without regressions, without unrelated edits and in the style of the \
code around it. Approve a correct change even if you would have written it differently; ask for changes \
only for problems that matter, each as a finding with the file (relative to the repository root), the \
line in the new version when there is one, a severity (error: must be fixed; warning: should be fixed; \
info: a remark) and a concrete message the agent can act on. Answer only by calling the submit_review \
tool, once.";

/// What the reviewer rounds need from `drive()`.
pub(crate) struct ReviewCtx<'a> {
    pub c: &'a ClaimedAttempt,
    pub ws: &'a Path,
    /// The attempt's directory (scratch git directories go here).
    pub dir: &'a Path,
    pub mirror: &'a Path,
    /// The commit the workspace started from.
    pub start_commit: &'a str,
    pub seed_index: Option<&'a Path>,
    /// Untracked paths left out of the commit (setup's files).
    pub exclude: &'a [String],
    /// Keeps what the checks write apart from the agent's work (`checks::run_checks_apart`).
    pub work_index: Option<&'a errand_git::WorkspaceIndex>,
    pub sandbox_box: &'a dyn errand_sandbox::SandboxBox,
    pub sink: &'a CheckpointSink,
    pub cancel: &'a CancellationToken,
    pub lease: &'a AtomicU8,
    /// The coding agent's model, for the rounds that address findings.
    pub provider: &'a dyn Provider,
    pub agent_config: AgentConfig,
    pub check_specs: &'a [CheckSpec],
    pub plan: Vec<PlanStep>,
    /// The agent's conversation so far.
    pub messages: Vec<Message>,
    /// The attempt's status now (`running`, or `checking` after checks).
    pub status: Status,
    /// The run resumed from a checkpoint taken in a round of fixes: the review so far, and
    /// the round (the next review is the one after it).
    pub resumed: Option<ReviewProgress>,
}

impl Worker {
    /// Runs the review rounds (see the module docs). `failure` is why the checks failed, if
    /// they did; returns why the attempt fails after the rounds (a check that still fails, or
    /// the agent stopping early in a round), if it does. The verdicts, usage, turns, summary,
    /// checks and conversation are updated in `outcome`.
    pub(crate) async fn review_rounds(
        &self,
        mut cx: ReviewCtx<'_>,
        mut failure: Option<String>,
        outcome: &mut AttemptOutcome,
    ) -> Result<Option<String>, RunError> {
        let task = &cx.c.task;
        let aid = cx.c.attempt.id.as_str();
        let Some(model) = task.review_model.clone() else {
            return Ok(failure);
        };
        let resumed = cx.resumed.take();
        let mut review = match &resumed {
            Some(p) => p.review.clone(),
            None => AttemptReview {
                model: model.clone(),
                ..Default::default()
            },
        };
        let reviewer = match errand_model::build(&model, cx.c.review_payload.as_ref()) {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("the reviewer {model} could not be loaded: {e}");
                self.emit(
                    aid,
                    vec![EventKind::Error {
                        message: msg.clone(),
                    }],
                )
                .await?;
                review.error = Some(msg);
                outcome.review = Some(review);
                return Ok(failure);
            }
        };
        let max_fix_rounds = task.max_review_rounds;
        let mut status = cx.status;
        let mut messages = std::mem::take(&mut cx.messages);
        let mut plan = std::mem::take(&mut cx.plan);
        let mut round = resumed.as_ref().map_or(0, |p| p.round);
        loop {
            round += 1;
            if cx.cancel.is_cancelled() {
                break;
            }
            self.client
                .transition(
                    aid,
                    &self.config.name,
                    status,
                    Status::Verifying,
                    Some(format!("review round {round} by {model}")),
                )
                .await?;
            let (diff, stats) = self.review_diff(&cx).await?;
            let prompt = review_prompt(&ReviewInput {
                task,
                plan: &plan,
                summary: outcome.summary.as_deref(),
                checks: &outcome.checks,
                diff: &diff,
                stats: &stats,
                earlier: &review.rounds,
            });
            let asked = self
                .ask_reviewer(aid, reviewer.as_ref(), prompt, cx.cancel)
                .await?;
            outcome.usage.add(&asked.usage);
            self.client
                .update_usage(aid, &self.config.name, outcome.usage, outcome.turns)
                .await?;
            let (verdict, summary, findings) = match asked.result {
                Ok(v) => v,
                Err(why) => {
                    if cx.cancel.is_cancelled() {
                        break;
                    }
                    let msg = format!("round {round}: {why}");
                    self.emit(
                        aid,
                        vec![EventKind::Error {
                            message: format!(
                                "the reviewer gave no verdict ({msg}); the attempt has no review verdict"
                            ),
                        }],
                    )
                    .await?;
                    review.verdict = None;
                    review.error = Some(msg);
                    break;
                }
            };
            let r = Review {
                round,
                verdict,
                summary,
                findings,
            };
            self.emit(
                aid,
                vec![EventKind::Review {
                    round,
                    verdict: r.verdict,
                    summary: r.summary.clone(),
                    findings: r.findings.clone(),
                }],
            )
            .await?;
            review.verdict = Some(r.verdict);
            review.error = None;
            review.rounds.push(r.clone());
            if r.verdict == Verdict::Approve {
                break;
            }
            if round > max_fix_rounds {
                if max_fix_rounds > 0 {
                    self.notice(
                        aid,
                        format!(
                            "the reviewer still asks for changes after {max_fix_rounds} round{} of fixes (max_review_rounds); the findings stay on the attempt",
                            if max_fix_rounds == 1 { "" } else { "s" }
                        ),
                    )
                    .await?;
                }
                break;
            }
            // The findings go back to the agent, in the same conversation and box.
            self.client
                .transition(
                    aid,
                    &self.config.name,
                    Status::Verifying,
                    Status::Running,
                    Some(format!(
                        "review round {round}: changes needed; {} sent back to the agent",
                        plural(r.findings.len(), "finding")
                    )),
                )
                .await?;
            status = Status::Running;
            let offset = RoundSink {
                inner: cx.sink,
                usage: outcome.usage,
                turns: outcome.turns,
                progress: ReviewProgress {
                    round,
                    review: review.clone(),
                    summary: outcome.summary.clone(),
                    plan: plan.clone(),
                },
            };
            let config = AgentConfig {
                raw_continuation: true,
                ..cx.agent_config.clone()
            };
            let text = findings_message(&r);
            let out = AgentRun {
                prompt: &text,
                workspace: cx.ws,
                sandbox: cx.sandbox_box,
                provider: cx.provider,
                sink: &offset,
                cancel: cx.cancel.clone(),
                config,
                history: messages.clone(),
                resume: None,
            }
            .run()
            .await?;
            outcome.usage.add(&out.usage);
            outcome.turns += out.turns;
            outcome.conversation = serde_json::to_value(&out.messages).ok();
            if out.summary.is_some() {
                outcome.summary = out.summary.clone();
            }
            messages = out.messages;
            if !out.plan.is_empty() {
                plan = out.plan;
            }
            if let Some(stop) = self
                .end_failure(
                    aid,
                    &out.end,
                    out.turns,
                    cx.lease,
                    " while addressing the review",
                )
                .await?
            {
                outcome.review = Some(review);
                return Ok(Some(stop));
            }
            if !cx.check_specs.is_empty() && !cx.cancel.is_cancelled() {
                self.client
                    .transition(
                        aid,
                        &self.config.name,
                        Status::Running,
                        Status::Checking,
                        Some(format!("checks after review round {round}")),
                    )
                    .await?;
                status = Status::Checking;
                let (results, check_failure) = self
                    .run_checks_apart(
                        aid,
                        cx.sandbox_box,
                        cx.sink,
                        cx.ws,
                        cx.check_specs,
                        cx.cancel,
                        cx.work_index,
                    )
                    .await?;
                outcome.checks = results;
                failure = check_failure;
            }
        }
        outcome.review = Some(review);
        Ok(failure)
    }

    /// The workspace's change against the task's base, as the reviewer sees it: committed
    /// through a fresh git directory (like the final commit, nothing in the workspace's own
    /// `.git` is trusted, and the same paths are left out) onto the attempt's branch, then
    /// diffed in the mirror. The checks' leftovers are gone by then (`run_checks_apart`). With
    /// secrets, the commit holds placeholders where the files hold values (the files are not
    /// changed: the agent may work on them again).
    async fn review_diff(&self, cx: &ReviewCtx<'_>) -> Result<(String, DiffStats), RunError> {
        let task = &cx.c.task;
        let fail = |what: &str, e: &dyn std::fmt::Display| RunError::Failed(format!("{what}: {e}"));
        let exclude = match cx.work_index {
            Some(wi) => wi.excluded(),
            None => cx.exclude.to_vec(),
        };
        let redactor = self.redaction.redactor(&cx.c.attempt.id);
        let message = format!("{}\n\n(work in progress, for review)", task.title);
        let message = redactor.redact_string(message);
        let trailers = [
            ("Errand-Task", task.id.as_str()),
            ("Errand-Attempt", cx.c.attempt.id.as_str()),
        ];
        let head = {
            let _guard = self.mirrors.lock(cx.mirror).await;
            if redactor.is_empty() {
                errand_git::commit_workspace_excluding(
                    cx.mirror,
                    cx.ws,
                    &cx.dir.join("review.git"),
                    cx.start_commit,
                    &cx.c.attempt.branch,
                    &message,
                    &trailers,
                    cx.seed_index,
                    &exclude,
                )
                .await
            } else {
                errand_git::checkpoint::commit_workspace_redacted(
                    cx.mirror,
                    cx.ws,
                    &cx.dir.join("review.git"),
                    cx.start_commit,
                    &cx.c.attempt.branch,
                    &message,
                    &trailers,
                    cx.seed_index,
                    &redactor,
                    &exclude,
                )
                .await
                .map(|(head, _)| head)
            }
            .map_err(|e| fail("committing the work for review", &e))?
        };
        let head = head
            .or_else(|| (cx.start_commit != task.base_commit).then(|| cx.start_commit.to_string()));
        match head {
            Some(head) => errand_git::diff(cx.mirror, &task.base_commit, &head)
                .await
                .map_err(|e| fail("computing the diff for review", &e)),
            None => Ok((String::new(), DiffStats::default())),
        }
    }

    /// Asks the reviewer for a verdict: retryable model errors are retried with backoff
    /// (`model_retry` events); an answer that is not a valid review goes back once with what
    /// is wrong.
    async fn ask_reviewer(
        &self,
        aid: &str,
        reviewer: &dyn Provider,
        prompt: String,
        cancel: &CancellationToken,
    ) -> Result<Asked, RunError> {
        let mut req = ModelRequest {
            system: REVIEW_SYSTEM.to_string(),
            tools: vec![submit_review_tool()],
            messages: vec![Message::User { text: prompt }],
            options: forced_tool_options(reviewer.settings().map(|s| s.kind)),
            cache_key: Some(format!("{aid}-review")),
            compaction: false,
        };
        let mut usage = Usage::default();
        let mut last = String::new();
        for attempt in 1..=2 {
            let resp = match self.call_reviewer(aid, reviewer, &req, cancel).await? {
                Ok(r) => r,
                Err(e) => {
                    return Ok(Asked {
                        usage,
                        result: Err(e),
                    });
                }
            };
            usage.add(&resp.usage);
            match parse_response(&resp) {
                Ok(v) => {
                    return Ok(Asked {
                        usage,
                        result: Ok(v),
                    });
                }
                Err(why) => {
                    last = why.clone();
                    if attempt == 2 {
                        break;
                    }
                    self.notice(
                        aid,
                        format!(
                            "the reviewer's answer is not a valid review ({why}); asking it once more"
                        ),
                    )
                    .await?;
                    let fix = format!(
                        "That is not a valid review: {why}. Call {SUBMIT_REVIEW} once with {{\"verdict\": \"approve\" | \"changes_needed\", \"summary\": string, \"findings\": [{{\"file\": string, \"line\": integer (optional), \"severity\": \"error\" | \"warning\" | \"info\", \"message\": string}}]}}."
                    );
                    req.messages.push(resp.to_message());
                    if resp.tool_calls.is_empty() {
                        req.messages.push(Message::User { text: fix });
                    } else {
                        for call in &resp.tool_calls {
                            req.messages.push(Message::Tool {
                                call_id: call.id.clone(),
                                name: call.name.clone(),
                                content: fix.clone(),
                                is_error: true,
                            });
                        }
                    }
                }
            }
        }
        Ok(Asked {
            usage,
            result: Err(format!(
                "its answer was not a valid review twice; the last problem: {last}"
            )),
        })
    }

    /// One reviewer request with retries. The outer error is the attempt's (its events could
    /// not be written); the inner one says why the reviewer gave no answer.
    async fn call_reviewer(
        &self,
        aid: &str,
        reviewer: &dyn Provider,
        req: &ModelRequest,
        cancel: &CancellationToken,
    ) -> Result<Result<errand_model::ModelResponse, String>, RunError> {
        let policy = reviewer.retry_policy();
        let mut retry = 0;
        loop {
            let result = tokio::select! {
                r = reviewer.complete(req) => r,
                _ = cancel.cancelled() => return Ok(Err("cancelled".into())),
            };
            let err = match result {
                Ok(r) => return Ok(Ok(r)),
                Err(e) => e,
            };
            retry += 1;
            let Some(delay) = policy.delay(retry, &err) else {
                return Ok(Err(if err.retryable() && retry > policy.max_retries {
                    format!(
                        "the reviewer {} failed: {err} (gave up after {} retries)",
                        reviewer.name(),
                        policy.max_retries
                    )
                } else {
                    format!("the reviewer {} failed: {err}", reviewer.name())
                }));
            };
            self.emit(
                aid,
                vec![policy.retry_event(reviewer.name(), retry, delay, &err)],
            )
            .await?;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => return Ok(Err("cancelled".into())),
            }
        }
    }
}

/// What one review request gave: its usage, and the verdict or why there is none.
struct Asked {
    usage: Usage,
    result: Result<(Verdict, String, Vec<Finding>), String>,
}

/// The sink of a round of fixes: forwards the agent's events, reports the attempt's running
/// totals (its usage and turns before the round, plus the round's), and checkpoints each turn
/// with where the review is.
struct RoundSink<'a> {
    inner: &'a CheckpointSink,
    usage: Usage,
    turns: u64,
    progress: ReviewProgress,
}

#[async_trait::async_trait]
impl EventSink for RoundSink<'_> {
    async fn emit(&self, events: Vec<EventKind>) -> Result<(), AgentError> {
        self.inner.emit(events).await
    }
    async fn usage(&self, usage: Usage, turns: u64) -> Result<(), AgentError> {
        let mut total = self.usage;
        total.add(&usage);
        self.inner.report_totals(total, self.turns + turns).await
    }
    fn tool_notes(&self) -> Option<String> {
        self.inner.tool_notes()
    }
    async fn snapshot(&self) -> Result<Option<bool>, AgentError> {
        self.inner.snapshot().await
    }
    async fn checkpoint(&self, messages: &[Message], state: &RunState) -> Result<(), AgentError> {
        self.inner
            .checkpoint_round(messages, state, self.usage, self.turns, &self.progress)
            .await
    }
}

/// The `submit_review` tool and its JSON Schema.
pub fn submit_review_tool() -> ToolSpec {
    ToolSpec {
        name: SUBMIT_REVIEW.into(),
        description: "Submit your review of the change. Call it exactly once.".into(),
        parameters: serde_json::json!({
            "type": "object",
            "properties": {
                "verdict": {
                    "type": "string",
                    "enum": ["approve", "changes_needed"],
                    "description": "approve when the change does what the task asks, correctly; changes_needed when something must change."
                },
                "summary": {
                    "type": "string",
                    "description": "Your assessment in a few sentences."
                },
                "findings": {
                    "type": "array",
                    "description": "What must or should change; empty when there is nothing.",
                    "items": {
                        "type": "object",
                        "properties": {
                            "file": {"type": "string", "description": "Path relative to the repository root."},
                            "line": {"type": "integer", "description": "Line in the new version of the file, when there is one."},
                            "severity": {"type": "string", "enum": ["error", "warning", "info"]},
                            "message": {"type": "string", "description": "What is wrong and what to do."}
                        },
                        "required": ["file", "severity", "message"]
                    }
                }
            },
            "required": ["verdict", "summary", "findings"]
        }),
    }
}

/// Options that make the provider call `submit_review` (each API's own tool choice), so the
/// answer is structured rather than prose.
pub fn forced_tool_options(kind: Option<ProviderKind>) -> BTreeMap<String, serde_json::Value> {
    let mut o = BTreeMap::new();
    let (key, value) = match kind {
        Some(ProviderKind::Anthropic) => (
            "tool_choice",
            serde_json::json!({"type": "tool", "name": SUBMIT_REVIEW}),
        ),
        Some(ProviderKind::OpenaiResponses) => (
            "tool_choice",
            serde_json::json!({"type": "function", "name": SUBMIT_REVIEW}),
        ),
        Some(ProviderKind::OpenaiChat) => (
            "tool_choice",
            serde_json::json!({"type": "function", "function": {"name": SUBMIT_REVIEW}}),
        ),
        Some(ProviderKind::Gemini) => (
            "toolConfig",
            serde_json::json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [SUBMIT_REVIEW]}}),
        ),
        None => return o,
    };
    o.insert(key.to_string(), value);
    o
}

/// The review in a model's answer: the arguments of its `submit_review` call, else a JSON
/// object in its text; validated.
pub fn parse_response(
    resp: &errand_model::ModelResponse,
) -> Result<(Verdict, String, Vec<Finding>), String> {
    if let Some(call) = resp.tool_calls.iter().find(|c| c.name == SUBMIT_REVIEW) {
        return parse_review(&call.arguments);
    }
    if let Some(other) = resp.tool_calls.first() {
        return Err(format!(
            "it called '{}' instead of {SUBMIT_REVIEW}",
            other.name
        ));
    }
    let text = resp.text.as_deref().unwrap_or("").trim();
    if let (Some(start), Some(end)) = (text.find('{'), text.rfind('}'))
        && start < end
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text[start..=end])
    {
        return parse_review(&v);
    }
    Err(format!(
        "it did not call {SUBMIT_REVIEW}{}",
        if text.is_empty() {
            " and wrote nothing".to_string()
        } else {
            " and its text holds no JSON review".to_string()
        }
    ))
}

/// Validates a review against the schema of [`submit_review_tool`]; the error names the
/// field and what is wrong with it.
pub fn parse_review(v: &serde_json::Value) -> Result<(Verdict, String, Vec<Finding>), String> {
    let Some(obj) = v.as_object() else {
        return Err("the review is not a JSON object".into());
    };
    if let Some(raw) = obj.get("_raw") {
        return Err(format!(
            "its arguments are not JSON: {}",
            errand_core::text::title_of(&raw.to_string(), 120)
        ));
    }
    let verdict = match obj.get("verdict").and_then(|x| x.as_str()) {
        Some("approve") => Verdict::Approve,
        Some("changes_needed") => Verdict::ChangesNeeded,
        Some(other) => {
            return Err(format!(
                "verdict must be \"approve\" or \"changes_needed\", not \"{}\"",
                errand_core::text::title_of(other, 40)
            ));
        }
        None => return Err("verdict is missing (\"approve\" or \"changes_needed\")".into()),
    };
    let summary = match obj.get("summary").and_then(|x| x.as_str()).map(str::trim) {
        Some(s) if !s.is_empty() => cap(s),
        _ => return Err("summary is missing or empty".into()),
    };
    let items = match obj.get("findings") {
        Some(serde_json::Value::Array(a)) => a.clone(),
        Some(serde_json::Value::Null) | None => {
            return Err("findings is missing (an array, empty when there is nothing)".into());
        }
        Some(_) => return Err("findings must be an array".into()),
    };
    let mut findings = Vec::new();
    for (i, f) in items.iter().enumerate().take(MAX_FINDINGS) {
        let n = i + 1;
        let Some(f) = f.as_object() else {
            return Err(format!("finding {n} is not an object"));
        };
        let file = match f.get("file").and_then(|x| x.as_str()).map(str::trim) {
            Some(s) if !s.is_empty() => s.trim_start_matches("./").to_string(),
            _ => return Err(format!("finding {n}: file is missing or empty")),
        };
        let line = match f.get("line") {
            None | Some(serde_json::Value::Null) => None,
            Some(x) => match x
                .as_u64()
                .or_else(|| x.as_str().and_then(|s| s.trim().parse().ok()))
            {
                Some(l) if l > 0 => Some(l),
                _ => return Err(format!("finding {n}: line must be a positive integer")),
            },
        };
        let severity = match f.get("severity").and_then(|x| x.as_str()) {
            Some("error") => Severity::Error,
            Some("warning") => Severity::Warning,
            Some("info") => Severity::Info,
            _ => {
                return Err(format!(
                    "finding {n}: severity must be \"error\", \"warning\" or \"info\""
                ));
            }
        };
        let message = match f.get("message").and_then(|x| x.as_str()).map(str::trim) {
            Some(s) if !s.is_empty() => cap(s),
            _ => return Err(format!("finding {n}: message is missing or empty")),
        };
        findings.push(Finding {
            file,
            line,
            severity,
            message,
        });
    }
    Ok((verdict, summary, findings))
}

fn cap(s: &str) -> String {
    if s.chars().count() <= MAX_TEXT {
        s.to_string()
    } else {
        s.chars().take(MAX_TEXT).collect::<String>() + "…"
    }
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// What the reviewer is shown.
pub struct ReviewInput<'a> {
    pub task: &'a Task,
    pub plan: &'a [PlanStep],
    pub summary: Option<&'a str>,
    pub checks: &'a [CheckResult],
    pub diff: &'a str,
    pub stats: &'a DiffStats,
    /// Earlier rounds of this attempt, so that the reviewer can see whether they were
    /// addressed.
    pub earlier: &'a [Review],
}

/// The reviewer's user message: the task, the plan, the agent's summary, the checks, the
/// earlier reviews and the diff.
pub fn review_prompt(i: &ReviewInput<'_>) -> String {
    let mut m = String::new();
    m.push_str("<task>\n");
    m.push_str(i.task.prompt.trim());
    m.push_str("\n</task>\n\n<plan>\n");
    if i.plan.is_empty() {
        m.push_str("(the agent kept no plan)\n");
    }
    for s in i.plan {
        m.push_str(&format!("- [{}] {}\n", s.status, s.step));
    }
    m.push_str("</plan>\n\n<agent_summary>\n");
    m.push_str(
        i.summary
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or("(the agent gave no summary)"),
    );
    m.push_str("\n</agent_summary>\n\n<checks>\n");
    if i.checks.is_empty() {
        m.push_str("(no checks were run)\n");
    }
    for c in i.checks {
        let tests = c
            .tests
            .as_ref()
            .map(|t| {
                format!(
                    "; tests: {} passed, {} failed, {} skipped",
                    t.passed, t.failed, t.skipped
                )
            })
            .unwrap_or_default();
        m.push_str(&format!(
            "- {} `{}`: {} (exit {}{tests})\n",
            c.name,
            c.command,
            if c.passed { "PASSED" } else { "FAILED" },
            c.exit_code
                .map(|x| x.to_string())
                .unwrap_or_else(|| "none: it did not complete".into())
        ));
    }
    m.push_str("</checks>\n\n");
    if !i.earlier.is_empty() {
        m.push_str("<earlier_reviews>\nYour earlier reviews of this attempt; the agent has worked on them since. Check that they are addressed.\n");
        for r in i.earlier {
            m.push_str(&format!(
                "Round {}: {} — {}\n",
                r.round,
                r.verdict,
                r.summary.trim()
            ));
            for f in &r.findings {
                m.push_str(&format!(
                    "- [{}] {}: {}\n",
                    f.severity.as_str(),
                    f.location(),
                    f.message
                ));
            }
        }
        m.push_str("</earlier_reviews>\n\n");
    }
    let (diff, cut) = errand_core::text::cap_head_tail(i.diff, MAX_REVIEW_DIFF);
    m.push_str(&format!(
        "<diff files_changed=\"{}\" insertions=\"{}\" deletions=\"{}\"{}>\n",
        i.stats.files_changed,
        i.stats.insertions,
        i.stats.deletions,
        if cut {
            " cut_in_the_middle=\"true\""
        } else {
            ""
        }
    ));
    if diff.is_empty() {
        m.push_str("(the agent changed nothing)\n");
    } else {
        m.push_str(&diff);
        if !diff.ends_with('\n') {
            m.push('\n');
        }
    }
    m.push_str("</diff>");
    m
}

/// The user message that sends a review's findings back to the coding agent.
pub fn findings_message(r: &Review) -> String {
    let mut m = format!(
        "<review round=\"{}\">\nA reviewer read your change (the diff against the base, and the checks' results) and asks for changes.\n\n{}\n",
        r.round,
        r.summary.trim()
    );
    if !r.findings.is_empty() {
        m.push_str("\nFindings:\n");
        for (i, f) in r.findings.iter().enumerate() {
            m.push_str(&format!(
                "{}. [{}] {}: {}\n",
                i + 1,
                f.severity.as_str(),
                f.location(),
                f.message.trim()
            ));
        }
    }
    m.push_str("\nAddress every finding (or say in your summary why one does not apply), run the relevant tests, then call `finish` with a summary of the whole change.\n</review>");
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_valid_review_parses() {
        let (v, s, f) = parse_review(&json!({
            "verdict": "changes_needed",
            "summary": " Half done. ",
            "findings": [
                {"file": "./src/a.rs", "line": 12, "severity": "error", "message": "off by one"},
                {"file": "README.md", "severity": "info", "message": "typo"},
                {"file": "b.rs", "line": "7", "severity": "warning", "message": "w"}
            ]
        }))
        .unwrap();
        assert_eq!(v, Verdict::ChangesNeeded);
        assert_eq!(s, "Half done.");
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].file, "src/a.rs");
        assert_eq!(f[0].line, Some(12));
        assert_eq!(f[0].location(), "src/a.rs:12");
        assert_eq!(f[1].line, None);
        assert_eq!(f[2].line, Some(7));
        let (v, _, f) =
            parse_review(&json!({"verdict": "approve", "summary": "ok", "findings": []})).unwrap();
        assert_eq!((v, f.len()), (Verdict::Approve, 0));
    }

    #[test]
    fn malformed_reviews_say_what_is_wrong() {
        for (v, needle) in [
            (json!("approve"), "not a JSON object"),
            (
                json!({"summary": "x", "findings": []}),
                "verdict is missing",
            ),
            (
                json!({"verdict": "maybe", "summary": "x", "findings": []}),
                "not \"maybe\"",
            ),
            (
                json!({"verdict": "approve", "summary": " ", "findings": []}),
                "summary is missing or empty",
            ),
            (
                json!({"verdict": "approve", "summary": "x"}),
                "findings is missing",
            ),
            (
                json!({"verdict": "approve", "summary": "x", "findings": {}}),
                "findings must be an array",
            ),
            (
                json!({"verdict": "approve", "summary": "x", "findings": [{"file": "a", "severity": "fatal", "message": "m"}]}),
                "finding 1: severity",
            ),
            (
                json!({"verdict": "approve", "summary": "x", "findings": [{"file": "a", "line": 0, "severity": "info", "message": "m"}]}),
                "finding 1: line must be a positive integer",
            ),
            (
                json!({"verdict": "approve", "summary": "x", "findings": [{"severity": "info", "message": "m"}]}),
                "finding 1: file is missing",
            ),
            (json!({"_raw": "{\"verdict\":"}), "not JSON"),
        ] {
            let e = parse_review(&v).unwrap_err();
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn answers_without_the_tool_call() {
        let text = |t: &str| errand_model::ModelResponse {
            text: Some(t.into()),
            ..Default::default()
        };
        let (v, _, _) = parse_response(&text(
            "Here you go: {\"verdict\": \"approve\", \"summary\": \"fine\", \"findings\": []}",
        ))
        .unwrap();
        assert_eq!(v, Verdict::Approve);
        assert!(
            parse_response(&text("Looks good to me."))
                .unwrap_err()
                .contains("did not call submit_review")
        );
        let other = errand_model::ModelResponse {
            tool_calls: vec![errand_model::ToolCall {
                id: "1".into(),
                name: "shell".into(),
                arguments: json!({}),
            }],
            ..Default::default()
        };
        assert!(
            parse_response(&other)
                .unwrap_err()
                .contains("called 'shell' instead")
        );
    }

    #[test]
    fn forced_tool_choice_per_api() {
        assert_eq!(
            forced_tool_options(Some(ProviderKind::Anthropic))["tool_choice"],
            json!({"type": "tool", "name": "submit_review"})
        );
        assert_eq!(
            forced_tool_options(Some(ProviderKind::OpenaiChat))["tool_choice"]["function"]["name"],
            "submit_review"
        );
        assert_eq!(
            forced_tool_options(Some(ProviderKind::Gemini))["toolConfig"]["functionCallingConfig"]
                ["mode"],
            "ANY"
        );
        assert!(forced_tool_options(None).is_empty());
    }

    #[test]
    fn findings_go_back_as_one_message() {
        let m = findings_message(&Review {
            round: 1,
            verdict: Verdict::ChangesNeeded,
            summary: "Half done.".into(),
            findings: vec![Finding {
                file: "src/lib.txt".into(),
                line: Some(3),
                severity: Severity::Error,
                message: "three is still lower-case".into(),
            }],
        });
        assert!(m.starts_with("<review round=\"1\">"), "{m}");
        assert!(m.contains("Half done."), "{m}");
        assert!(
            m.contains("1. [error] src/lib.txt:3: three is still lower-case"),
            "{m}"
        );
        assert!(m.ends_with("</review>"));
    }
}
