//! Plan mode in the worker. A plan-mode attempt runs first as a **planning run**: the box
//! mounts the workspace read-only, the agent gets the planning prompt and no file-changing
//! tools, and the run ends with the plan it recorded with `update_plan`. The worker then
//! hands the plan to the queue (`submit_plan`), which parks the attempt in
//! `awaiting_approval` with its conversation and releases the lease; the box is destroyed
//! like at the end of any run. A person's decision queues the attempt again: after a
//! revision request it plans again with the comment added to its conversation; after an
//! approval it runs in run mode, continuing the conversation with the approval and the plan,
//! and then goes on like any run (checks, commit, delivery).

use crate::Worker;
use errand_core::plan::{approved_message, revise_message};
use errand_core::{PlanAction, PlanRevision, PlanStep, Status, Usage};
use errand_model::Message;
use errand_store::{AttemptOutcome, ClaimedAttempt, PlanSubmission};

/// How this run of a plan-mode attempt works.
pub(crate) struct PlanRun {
    /// Explore read-only and propose a plan; otherwise implement the approved plan.
    pub planning: bool,
    /// The conversation so far (empty for the first planning run).
    pub history: Vec<Message>,
    /// The decision that continues the conversation: the reviewer's comment, or the approval
    /// with the plan.
    pub continuation: Option<String>,
    /// The approved plan, when implementing.
    pub plan: Vec<PlanStep>,
    /// What the attempt used before this run (every planning run so far).
    pub usage: Usage,
    pub turns: u64,
    /// The latest plan; a revision that leaves it as it is proposes it again.
    pub previous: Option<PlanRevision>,
    /// What this run does, for the log.
    pub notice: String,
}

impl PlanRun {
    /// `None` for a run-mode task, and for a follow-up of a finished plan-mode task.
    pub fn from_claim(c: &ClaimedAttempt) -> Option<PlanRun> {
        if c.task.mode != "plan" || c.followup.is_some() {
            return None;
        }
        let previous = c.task.plan.clone();
        let (usage, turns) = previous
            .as_ref()
            .map(|p| (p.usage, p.turns))
            .unwrap_or_default();
        let history: Vec<Message> = c
            .conversation
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let decision = c.task.approvals.last();
        let (planning, continuation, plan, notice) = match (decision, &previous) {
            (Some(a), Some(p)) if a.action == PlanAction::Approve => (
                false,
                Some(approved_message(&a.actor, a.comment.as_deref(), p)),
                p.steps.clone(),
                format!(
                    "plan mode: plan revision {} was approved by {}; this run implements it with the workspace writable",
                    p.number, a.actor
                ),
            ),
            (Some(a), Some(p)) if a.action == PlanAction::Revise => (
                true,
                Some(revise_message(
                    &a.actor,
                    a.comment.as_deref().unwrap_or_default(),
                    p.number,
                )),
                Vec::new(),
                format!(
                    "plan mode: revising plan revision {} as {} asked; the workspace is mounted read-only and write_file, edit and apply_patch are off",
                    p.number, a.actor
                ),
            ),
            _ => (
                true,
                None,
                Vec::new(),
                "plan mode: this run explores read-only and proposes a plan; the workspace is mounted read-only and write_file, edit and apply_patch are off".to_string(),
            ),
        };
        // A first planning run starts a new conversation.
        let history = if continuation.is_some() {
            history
        } else {
            Vec::new()
        };
        Some(PlanRun {
            planning,
            history,
            continuation,
            plan,
            usage,
            turns,
            previous,
            notice,
        })
    }
}

/// The conversation and prompt of the run: the plan's when the task is in plan mode, else
/// the ones given.
pub(crate) fn conversation(
    plan: Option<&PlanRun>,
    history: Vec<Message>,
    prompt: String,
    task_prompt: &str,
) -> (Vec<Message>, String) {
    let Some(p) = plan else {
        return (history, prompt);
    };
    match (&p.continuation, p.history.is_empty()) {
        // The conversation could not be kept: start over, with the decision in the prompt.
        (Some(c), true) => (Vec::new(), format!("{task_prompt}\n\n{c}")),
        _ => (p.history.clone(), task_prompt.to_string()),
    }
}

/// Ends a planning run: the plan goes to the queue once the box is gone (see
/// [`submit`]); a planning run that failed, was stopped, or recorded no plan fails the
/// attempt. Returns a line for the log when the plan was proposed again unchanged.
pub(crate) fn end_planning(
    p: &PlanRun,
    proposed: &[PlanStep],
    messages: &[Message],
    failure: Option<String>,
    state: &mut crate::RunState,
) -> Option<String> {
    if let Some(f) = failure {
        state.outcome.status = Some(Status::Failed);
        state.outcome.error = Some(format!("planning ended without a plan: {f}"));
        return None;
    }
    let (steps, explanation, kept) = if !proposed.is_empty() {
        (proposed.to_vec(), plan_explanation(messages), None)
    } else if let Some(prev) = &p.previous {
        (
            prev.steps.clone(),
            prev.explanation.clone(),
            Some(format!(
                "the agent did not change the plan; revision {} is proposed again",
                prev.number
            )),
        )
    } else {
        state.outcome.status = Some(Status::Failed);
        state.outcome.error = Some(
            "planning ended without a plan: the agent never recorded one with update_plan".into(),
        );
        return None;
    };
    state.plan = Some(PlanSubmission {
        explanation,
        steps,
        summary: state.outcome.summary.clone(),
        conversation: state.outcome.conversation.clone(),
        usage: state.outcome.usage,
        turns: state.outcome.turns,
    });
    kept
}

/// The explanation the agent gave with its last `update_plan`, if any.
fn plan_explanation(messages: &[Message]) -> Option<String> {
    messages.iter().rev().find_map(|m| match m {
        Message::Assistant { tool_calls, .. } => tool_calls
            .iter()
            .rev()
            .find(|c| c.name == "update_plan")
            .and_then(|c| c.arguments.get("explanation"))
            .and_then(|e| e.as_str())
            .map(str::to_string),
        _ => None,
    })
}

/// Hands the plan to the queue: the attempt waits for approval without a lease. If that
/// fails, the attempt fails with the reason instead (so that it does not stay claimed).
pub(crate) async fn submit(w: &Worker, attempt: &str, plan: PlanSubmission) {
    let worker = w.config.name.as_str();
    let (usage, turns, conversation) = (plan.usage, plan.turns, plan.conversation.clone());
    match w.client.submit_plan(attempt, worker, plan).await {
        Ok(s) => tracing::info!(attempt = %attempt, status = %s, "planning run ended"),
        Err(errand_store::StoreError::LeaseLost(_)) => {
            tracing::warn!(attempt = %attempt, "lease lost before the plan was recorded")
        }
        Err(e) => {
            tracing::warn!(attempt = %attempt, error = %e, "recording the plan failed");
            let outcome = AttemptOutcome {
                status: Some(Status::Failed),
                error: Some(format!("recording the plan failed: {e}")),
                usage,
                turns,
                conversation,
                ..Default::default()
            };
            if let Err(e) = w.client.finish(attempt, worker, outcome).await {
                tracing::warn!(attempt = %attempt, error = %e, "recording the failure failed");
            }
        }
    }
}
