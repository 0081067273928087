//! Delivery: pushing an attempt's `errand/…` branch to the environment's remote and opening
//! (or updating) its pull request. Used by the worker when an attempt ends and by the server
//! for `errand pr`. A failure is recorded in the [`Delivery`], never lost, and never undoes
//! the attempt's work.

use errand_core::{
    Attempt, AttemptReview, CheckResult, Delivery, DiffStats, PrMode, Superseded, Task,
};
use errand_git::forge::{CloseOutcome, ForgeClient, PrBody, PrRequest, pr_title};
use std::path::Path;

/// One attempt's result, to deliver.
pub struct DeliverInput<'a> {
    pub mirror: &'a Path,
    pub task: &'a Task,
    pub branch: &'a str,
    pub summary: Option<&'a str>,
    pub checks: &'a [CheckResult],
    pub diff: Option<&'a DiffStats>,
    pub cost_usd: f64,
    /// A link to the attempt's log in the server, for the pull request body.
    pub log_url: Option<String>,
    /// Whether to open a pull request after the push, and how.
    pub pr: PrMode,
    /// The reviewer's verdicts, for the pull request body.
    pub review: Option<&'a AttemptReview>,
    /// Best-of-N: how this attempt became the task's result (one line for the body).
    pub selection: Option<String>,
}

impl<'a> DeliverInput<'a> {
    /// The input for an ended attempt of `task` (its branch, summary, checks, diff, cost,
    /// review, and for best-of-N how it was chosen).
    pub fn for_attempt(
        mirror: &'a Path,
        task: &'a Task,
        attempt: &'a Attempt,
        log_url: Option<String>,
        pr: PrMode,
    ) -> DeliverInput<'a> {
        DeliverInput {
            mirror,
            task,
            branch: &attempt.branch,
            summary: attempt.summary.as_deref(),
            checks: &attempt.checks,
            diff: attempt.diff_stats.as_ref(),
            cost_usd: attempt.usage.cost_usd,
            log_url,
            pr,
            review: attempt.review.as_ref(),
            selection: selection_line(task, attempt),
        }
    }
}

/// `Best of 3: attempt 2 (openai:gpt-5), ranked 1 of 3.` or `…, picked by bob (ranked 2 of 3).`;
/// none for a task with one attempt.
pub fn selection_line(task: &Task, attempt: &Attempt) -> Option<String> {
    let n = task.attempts.len();
    if n < 2 {
        return None;
    }
    let ranked = task.attempts.iter().filter(|a| a.rank.is_some()).count();
    let rank = attempt
        .rank
        .map(|r| format!("ranked {r} of {ranked}"))
        .unwrap_or_else(|| "not ranked".into());
    let how = match &task.picked {
        Some(p) if p.attempt_id == attempt.id => format!("picked by {} ({rank})", p.by),
        _ => rank,
    };
    Some(format!(
        "Best of {n}: attempt {} (`{}`), {how}. Compare them with `errand compare {}`.",
        attempt.number, attempt.model, task.short_id
    ))
}

/// Pushes the branch (to the environment's `remote`, else the task's repo; credentials from
/// the forge's token variable through `GIT_ASKPASS`), then opens or updates the pull request.
pub async fn deliver(i: DeliverInput<'_>) -> Delivery {
    let snap = &i.task.environment;
    let remote = snap.remote.clone().unwrap_or_else(|| i.task.repo.clone());
    let mut d = Delivery {
        remote: errand_git::push::redact_url(&remote),
        ..Default::default()
    };
    let creds = match &snap.forge {
        Some(f) => match errand_git::Credentials::from_env(f.username(), &f.token_env) {
            Ok(c) => Some(c),
            Err(e) => {
                d.error = Some(format!("push skipped: {e}"));
                return d;
            }
        },
        None => None,
    };
    // The attempt's own branch only (checked again inside); a re-run may have rewritten it.
    let pushed =
        match errand_git::push_branch(i.mirror, &remote, i.branch, creds.as_ref(), true).await {
            Ok(p) => p,
            Err(e) => {
                d.error = Some(format!("push failed: {e}"));
                d.retryable = true;
                return d;
            }
        };
    d.pushed_commit = Some(pushed.commit.clone());
    d.push = Some(pushed.status.as_str().to_string());
    if !i.pr.enabled() {
        return d;
    }
    let Some(forge) = &snap.forge else {
        d.error = Some(
            "no pull request: the environment has no [environments.NAME.forge] (kind, api_url, token_env)"
                .into(),
        );
        return d;
    };
    let client = match ForgeClient::from_env(forge, &remote) {
        Ok(c) => c,
        Err(e) => {
            d.error = Some(format!("pull request: {e}"));
            d.retryable = e.retryable();
            return d;
        }
    };
    let body = PrBody {
        summary: i.summary,
        checks: i.checks,
        diff: i.diff,
        cost_usd: Some(i.cost_usd),
        log_url: i.log_url.as_deref(),
        review: i.review,
        selection: i.selection.as_deref(),
    }
    .render();
    let req = PrRequest {
        title: pr_title(&i.task.title),
        body,
        head: i.branch.to_string(),
        base: pushed
            .default_branch
            .clone()
            .unwrap_or_else(|| i.task.base_ref.clone()),
        draft: i.pr == PrMode::Draft,
    };
    match client.create_or_update_pr(&req).await {
        Ok(pr) => {
            d.pr_url = Some(pr.url);
            d.pr_number = Some(pr.number);
            d.pr_action = Some(
                match pr.action {
                    errand_git::forge::PrAction::Created => "created",
                    errand_git::forge::PrAction::Updated => "updated",
                }
                .into(),
            );
        }
        Err(e) => {
            d.error = Some(format!("pull request: {e}"));
            d.retryable = e.retryable();
        }
    }
    d
}

/// After `errand pick` delivered `picked` (its delivery is `new`), closes the pull request of
/// `old`, the task's earlier result, with a comment that points at the new one:
/// "Superseded by #N (attempt 2 of task 1a2b3c4d, picked by alice)." and the new URL.
///
/// Only the pull request Errand opened for `old` (its delivery's `pr_url` and `pr_number`) is
/// touched, only when `old`'s branch differs from `picked`'s, and only once `new` has opened
/// its pull request; `old`'s branch is left in place. `None` when there is nothing to close;
/// otherwise the outcome, never an error: a failure is in [`Superseded::error`] with
/// `closed: false`.
pub async fn close_superseded(
    task: &Task,
    old: &Attempt,
    picked: &Attempt,
    new: &Delivery,
    picked_by: &str,
) -> Option<Superseded> {
    let od = old.delivery.as_ref()?;
    let (old_url, number) = (od.pr_url.as_deref()?, od.pr_number?);
    if old.id == picked.id || old.branch == picked.branch {
        return None;
    }
    let mut sup = Superseded {
        by_attempt: picked.number,
        by_pr_url: new.pr_url.clone(),
        picked_by: picked_by.to_string(),
        at_ms: errand_core::now_ms(),
        closed: false,
        outcome: "left_open".into(),
        comment_url: None,
        error: None,
    };
    let new_url = match (&new.pr_url, &new.error) {
        (Some(url), None) => url.clone(),
        (_, err) => {
            sup.error = Some(format!(
                "not closed: attempt {}'s pull request was not opened{}",
                picked.number,
                err.as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
            return Some(sup);
        }
    };
    let Some(forge) = &task.environment.forge else {
        sup.error = Some("not closed: the environment has no forge".into());
        return Some(sup);
    };
    let remote = task
        .environment
        .remote
        .clone()
        .unwrap_or_else(|| task.repo.clone());
    let client = match ForgeClient::from_env(forge, &remote) {
        Ok(c) => c,
        Err(e) => {
            sup.error = Some(format!("closing it failed: {e}"));
            return Some(sup);
        }
    };
    let new_ref = new
        .pr_number
        .map(|n| client.pr_ref(n))
        .unwrap_or_else(|| new_url.clone());
    let comment = format!(
        "Superseded by {new_ref} (attempt {} of task {}, picked by {picked_by}).\n\n{new_url}",
        picked.number, task.short_id
    );
    match client.close_pr(number, &old.branch, &comment).await {
        Ok(c) => {
            sup.outcome = match c.outcome {
                CloseOutcome::Closed => "closed",
                CloseOutcome::AlreadyClosed => "already_closed",
                CloseOutcome::Merged => "merged",
            }
            .into();
            sup.closed = c.outcome != CloseOutcome::Merged;
            sup.comment_url = c.comment_url;
            if let Some(e) = c.comment_error {
                sup.error = Some(format!("closed, but the comment failed: {e}"));
            }
            tracing::info!(
                task = %task.id,
                attempt = old.number,
                pr = old_url,
                outcome = %sup.outcome,
                "superseded pull request handled"
            );
        }
        Err(e) => {
            tracing::warn!(task = %task.id, attempt = old.number, pr = old_url, error = %e, "closing the superseded pull request failed");
            sup.error = Some(format!("closing it failed: {e}"));
        }
    }
    Some(sup)
}

/// The link to a task's log in the server, for pull request bodies.
pub fn log_url(public_url: &str, task_id: &str) -> String {
    format!(
        "{}/api/v1/tasks/{task_id}/events",
        public_url.trim_end_matches('/')
    )
}
