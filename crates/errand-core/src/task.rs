//! Tasks (what the user asked for) and attempts (one agent working on one task).

use crate::{Status, Usage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The body of `POST /api/v1/tasks`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    pub prompt: String,
    /// A local path (absolute, as seen by the server) or a git URL. Optional when `env` names
    /// an environment that has a repo.
    #[serde(default)]
    pub repo: Option<String>,
    /// Branch, tag or commit. Defaults to the environment's base, else the repo's default branch.
    #[serde(default)]
    pub base: Option<String>,
    /// Environment name from the server's `errand.toml`.
    #[serde(default)]
    pub env: Option<String>,
    /// `provider:model`, for example `scripted:/path/to/turns.json`.
    #[serde(default)]
    pub model: Option<String>,
    /// cli, api, web, cron, github, slack, linear, pagerduty, webhook. Defaults to `api`.
    #[serde(default)]
    pub trigger: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
    /// Check commands the worker runs after the agent; overrides the environment's.
    #[serde(default)]
    pub checks: Option<Vec<crate::CheckSpec>>,
    /// Provider options (`reasoning_effort`, `temperature`, …), over the environment's.
    #[serde(default)]
    pub model_options: BTreeMap<String, serde_json::Value>,
    /// Limits over the environment's and the server's.
    #[serde(default)]
    pub budget: crate::Budget,
    /// `run` (default) or `plan`: explore read-only, propose a plan and wait for approval.
    #[serde(default)]
    pub mode: Option<String>,
    /// Several models, cycled across the attempts (instead of `model`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Attempts run in parallel, each on its own branch (best-of-N), 1..=8. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// A reviewer model, `provider:model`, over the environment's and the server's
    /// `review_model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_model: Option<String>,
    /// How many times the reviewer's findings go back to the agent (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_review_rounds: Option<u32>,
}

/// The environment as resolved when the task was created (with the task's own overrides);
/// stored with the task so that any worker can run it without the server's configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EnvironmentSnapshot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub checks: Vec<crate::CheckSpec>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_options: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub budget: crate::Budget,
    /// Context management of the built-in agent, from the server's `[agent]`.
    #[serde(default)]
    pub agent: crate::AgentSettings,
    /// Push the attempt's branch when it ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub push: bool,
    /// Open or update a pull request after the push.
    #[serde(default)]
    pub pr: crate::PrMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forge: Option<crate::ForgeConfig>,
    /// Where to push (default: the task's repo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockfiles: Option<Vec<String>>,
    #[serde(default)]
    pub network: crate::NetworkConfig,
    /// Names and where their values come from; never the values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, crate::SecretConfig>,
    /// Providers the model gateway serves to the box, resolved when the task was created
    /// (the names of their key variables, never the keys).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway: Vec<GatewayUpstream>,
}

/// One provider served to the box by the model gateway, as resolved from `[providers.NAME]`
/// (or a built-in provider) when the task was created. The worker reads the key from its own
/// environment by [`GatewayUpstream::api_key_env`]; the box reaches the provider at
/// `http://127.0.0.1:PORT/NAME/…` without it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GatewayUpstream {
    /// The provider's name, also the first segment of its route (`/openai/…`).
    pub name: String,
    pub kind: crate::ProviderKind,
    pub base_url: String,
    /// The variable that holds the key; `None` for providers that need none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Extra headers sent upstream with every request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Prices and limits per model from the provider's entry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, crate::ModelConfig>,
    /// Whether the built-in price table applies (the vendors' own providers).
    #[serde(default)]
    pub builtin_prices: bool,
}

/// What happened when the attempt's branch was pushed and its pull request opened.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Delivery {
    /// The remote, with any credentials removed.
    pub remote: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_commit: Option<String>,
    /// `created`, `updated`, `force_updated` or `up_to_date`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr_number: Option<u64>,
    /// `created` or `updated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr_action: Option<String>,
    /// Why pushing or opening the pull request failed (the work itself is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether trying again later can succeed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retryable: bool,
    /// Best-of-N: another attempt was picked as the task's result after this one was
    /// delivered, and what became of this attempt's pull request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded: Option<Superseded>,
}

/// How a delivered result was replaced by `errand pick`: the attempt picked, and whether this
/// attempt's pull request was closed (its branch is left in place).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Superseded {
    /// The number of the attempt that is the result now.
    pub by_attempt: i64,
    /// That attempt's pull request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_pr_url: Option<String>,
    /// Who picked it.
    pub picked_by: String,
    pub at_ms: i64,
    /// Whether this attempt's pull request is closed now (closed by Errand, or found closed).
    pub closed: bool,
    /// `closed`, `already_closed`, `merged` or `left_open`.
    pub outcome: String,
    /// The closing comment, when one was posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment_url: Option<String>,
    /// Why the pull request was not closed, or why the comment was not posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Superseded {
    /// One line: `superseded by attempt 2 (picked by alice): pull request closed`.
    pub fn summary(&self) -> String {
        let what = match self.outcome.as_str() {
            "closed" => "pull request closed".to_string(),
            "already_closed" => "pull request was closed already".to_string(),
            "merged" => "pull request was merged already, left as it is".to_string(),
            _ => "pull request left open".to_string(),
        };
        let mut s = format!(
            "superseded by attempt {} (picked by {}): {what}",
            self.by_attempt, self.picked_by
        );
        if let Some(e) = &self.error {
            s.push_str(&format!(" ({e})"));
        }
        s
    }
}

impl Delivery {
    /// One line: what was pushed where, the pull request, and what failed.
    pub fn summary(&self) -> String {
        let mut s = match (&self.push, &self.pushed_commit) {
            (Some(how), Some(c)) => format!(
                "pushed {} to {} ({})",
                c.get(..12).unwrap_or(c),
                self.remote,
                how.replace('_', " ")
            ),
            _ => format!("not pushed to {}", self.remote),
        };
        if let (Some(url), Some(action)) = (&self.pr_url, &self.pr_action) {
            s.push_str(&format!("; pull request {action}: {url}"));
        }
        if let Some(e) = &self.error {
            s.push_str(&format!(
                "; {e}{}",
                if self.retryable {
                    " (retry with errand pr)"
                } else {
                    ""
                }
            ));
        }
        if let Some(sup) = &self.superseded {
            s.push_str("; ");
            s.push_str(&sup.summary());
        }
        s
    }
}

/// A validated, fully resolved task, ready to be stored.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    pub id: String,
    pub prompt: String,
    pub title: String,
    pub repo: String,
    pub base_ref: String,
    pub base_commit: String,
    pub environment: EnvironmentSnapshot,
    pub model: String,
    /// Provider-specific payload resolved at creation (the scripted turns, for instance).
    pub model_payload: Option<serde_json::Value>,
    pub mode: String,
    pub trigger: String,
    pub created_by: String,
    pub attempts: Vec<NewAttempt>,
    /// The reviewer, when the task has one.
    pub review: Option<NewReview>,
}

#[derive(Debug, Clone, Default)]
pub struct NewAttempt {
    pub id: String,
    pub number: i64,
    pub branch: String,
    pub model: String,
    /// The attempt's own resolved model payload, when its model is not the task's
    /// (best-of-N with several models); `None` uses the task's.
    pub model_payload: Option<serde_json::Value>,
}

/// A task's reviewer, resolved at creation like its model.
#[derive(Debug, Clone, Default)]
pub struct NewReview {
    /// `provider:model`.
    pub model: String,
    /// The provider payload resolved at creation (like [`NewTask::model_payload`]).
    pub payload: Option<serde_json::Value>,
    /// How many times findings go back to the agent.
    pub max_rounds: u32,
}

/// Lines added and removed in one file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileStat {
    pub path: String,
    /// `None` for binary files.
    pub insertions: Option<u64>,
    pub deletions: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiffStats {
    pub files_changed: u64,
    pub insertions: u64,
    pub deletions: u64,
    #[serde(default)]
    pub files: Vec<FileStat>,
}

/// A check the worker ran itself, with its real exit code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckResult {
    pub name: String,
    pub command: String,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    /// Exit code 0 and no failed tests reported.
    pub passed: bool,
    /// Test counts read from the check's JUnit XML or its output, when recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestCounts>,
}

/// How many tests a check ran, as its test runner reported them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TestCounts {
    pub passed: u64,
    /// Failures and errors.
    pub failed: u64,
    /// Skipped, ignored, todo and expected failures.
    pub skipped: u64,
    /// Where the counts come from: `cargo`, `nextest`, `pytest`, `go`, `jest`, `vitest` or
    /// `junit` (several joined with `+` when one check ran several runners).
    pub source: String,
}

impl TestCounts {
    pub fn total(&self) -> u64 {
        self.passed + self.failed + self.skipped
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    pub id: String,
    pub task_id: String,
    pub number: i64,
    pub status: Status,
    pub branch: String,
    pub model: String,
    /// How many times a worker started this attempt (2+ after a restart).
    pub runs: i64,
    /// `start`, `checkpoint`, `followup`, or `plan` (plan mode: a run that continues the
    /// planning conversation after an approval or a revision request): where the latest run
    /// began.
    pub resumed_from: String,
    /// Why the attempt was last put back in the queue, if it was.
    pub restart_reason: Option<String>,
    pub worker: Option<String>,
    /// The worker holding the lease right now, if any.
    pub active_worker: Option<String>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub head_commit: Option<String>,
    pub diff_stats: Option<DiffStats>,
    pub usage: Usage,
    pub turns: u64,
    pub checks: Vec<CheckResult>,
    pub summary: Option<String>,
    pub error: Option<String>,
    /// Last event seq written.
    pub last_seq: i64,
    /// The push and pull request, when the environment asks for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// What the reviewer said, when the task has a reviewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<AttemptReview>,
    /// Place among the task's ended attempts (1 = best); none until the attempt ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    /// What the setup phase of the latest run did (absent when the environment has no setup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<SetupInfo>,
}

/// The setup phase of one run: whether a cached snapshot was used, and what it cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SetupInfo {
    /// `hit` (a cached snapshot was restored and setup skipped), `miss` (setup ran and its
    /// snapshot was saved) or `off` (setup ran and nothing was cached).
    pub cache: String,
    /// The first 12 hex digits of the snapshot key.
    pub key: String,
    /// Wall time of the phase: setup and saving the snapshot, or restoring it and maintenance.
    pub duration_ms: u64,
    /// Whether `maintenance` ran (only on a hit).
    #[serde(default)]
    pub maintenance_ran: bool,
    /// Size of the snapshot (files left by setup, and `$HOME`).
    #[serde(default)]
    pub bytes: u64,
    /// Setup (or maintenance) failed; the attempt's error says how.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
}

impl SetupInfo {
    /// One line for `errand show`; `maintenance` is the environment's maintenance command.
    pub fn summary(&self, maintenance: Option<&str>) -> String {
        let secs = format!("{:.1} s", self.duration_ms as f64 / 1000.0);
        let size = crate::text::human_bytes(self.bytes);
        match (self.cache.as_str(), maintenance) {
            ("hit", Some(m)) if self.maintenance_ran => format!(
                "cache hit (key {}), maintenance `{m}` {} in {secs}",
                self.key,
                if self.failed { "failed" } else { "ran" }
            ),
            ("hit", _) => format!("cache hit (key {}), restored in {secs} ({size})", self.key),
            _ if self.failed => format!("failed after {secs} (key {})", self.key),
            ("miss", _) => format!("ran in {secs}, snapshot saved ({size}, key {})", self.key),
            _ => format!("ran in {secs}, not cached (key {})", self.key),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    pub id: String,
    pub short_id: String,
    pub title: String,
    pub prompt: String,
    pub repo: String,
    pub base_ref: String,
    pub base_commit: String,
    pub environment: EnvironmentSnapshot,
    pub model: String,
    pub mode: String,
    pub trigger: String,
    pub created_by: String,
    pub status: Status,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub attempts: Vec<Attempt>,
    /// Plan mode: the latest plan the result attempt proposed.
    #[serde(default)]
    pub plan: Option<crate::PlanRevision>,
    /// Plan mode: every plan proposed, oldest first, each with the decision taken on it.
    #[serde(default)]
    pub plan_revisions: Vec<crate::PlanRevision>,
    /// Plan mode: every decision on a plan (approve, revise, reject), oldest first.
    #[serde(default)]
    pub approvals: Vec<crate::Approval>,
    /// The reviewer model, when the task has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_model: Option<String>,
    /// How many times the reviewer's findings go back to the agent.
    #[serde(default)]
    pub max_review_rounds: u32,
    /// The attempt a user picked as the result (`errand pick`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picked: Option<Pick>,
    /// The number of the attempt that is the task's result (see [`Task::result_attempt`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_attempt: Option<i64>,
}

impl Task {
    /// The attempt that is the task's result: the one a user picked, else the best-ranked
    /// attempt that has ended (see [`crate::bestof`]), else the first.
    pub fn result_attempt(&self) -> Option<&Attempt> {
        if let Some(p) = &self.picked
            && let Some(a) = self.attempts.iter().find(|a| a.id == p.attempt_id)
        {
            return Some(a);
        }
        crate::bestof::best(&self.attempts).or_else(|| self.attempts.first())
    }

    /// Sets each attempt's [`Attempt::rank`] and the task's [`Task::selected_attempt`].
    pub fn rank_attempts(&mut self) {
        let order = crate::bestof::rank_order(&self.attempts);
        for a in &mut self.attempts {
            a.rank = None;
        }
        for (place, i) in order.into_iter().enumerate() {
            self.attempts[i].rank = Some(place as u32 + 1);
        }
        self.selected_attempt = self.result_attempt().map(|a| a.number);
    }
}

/// Who made an attempt the task's result, and when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pick {
    /// The attempt's number.
    pub attempt: i64,
    pub attempt_id: String,
    pub by: String,
    pub at_ms: i64,
}

/// A reviewer's verdict.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    ChangesNeeded,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::ChangesNeeded => "changes_needed",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How serious a review finding is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One thing the reviewer found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Finding {
    /// A path relative to the repository root.
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    pub severity: Severity,
    pub message: String,
}

impl Finding {
    /// `src/lib.rs:12` (or just the file).
    pub fn location(&self) -> String {
        match self.line {
            Some(l) => format!("{}:{l}", self.file),
            None => self.file.clone(),
        }
    }
}

/// One review round's verdict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Review {
    /// 1 for the first review of the attempt's work.
    pub round: u32,
    pub verdict: Verdict,
    pub summary: String,
    #[serde(default)]
    pub findings: Vec<Finding>,
}

/// Everything the reviewer said about an attempt.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttemptReview {
    /// The reviewer model.
    pub model: String,
    /// The verdict on the attempt's final work; none when the last review gave no valid
    /// verdict (see `error`) or none was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Every round, in order.
    #[serde(default)]
    pub rounds: Vec<Review>,
    /// Why the last review gave no verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AttemptReview {
    /// The last round, if any.
    pub fn last(&self) -> Option<&Review> {
        self.rounds.last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_summary_says_what_the_phase_did() {
        let mut s = SetupInfo {
            cache: "hit".into(),
            key: "1a2b3c4d5e6f".into(),
            duration_ms: 800,
            maintenance_ran: true,
            bytes: 34 << 20,
            failed: false,
        };
        assert_eq!(
            s.summary(Some("npm ci")),
            "cache hit (key 1a2b3c4d5e6f), maintenance `npm ci` ran in 0.8 s"
        );
        s.maintenance_ran = false;
        assert_eq!(
            s.summary(None),
            "cache hit (key 1a2b3c4d5e6f), restored in 0.8 s (34 MiB)"
        );
        s.cache = "miss".into();
        s.duration_ms = 12_340;
        assert_eq!(
            s.summary(None),
            "ran in 12.3 s, snapshot saved (34 MiB, key 1a2b3c4d5e6f)"
        );
        s.cache = "off".into();
        assert_eq!(
            s.summary(None),
            "ran in 12.3 s, not cached (key 1a2b3c4d5e6f)"
        );
        s.failed = true;
        assert_eq!(s.summary(None), "failed after 12.3 s (key 1a2b3c4d5e6f)");
    }

    #[test]
    fn delivery_summary_says_what_happened() {
        let d = Delivery {
            remote: "https://git.example.com/acme/shop.git".into(),
            pushed_commit: Some("0123456789abcdef0123".into()),
            push: Some("force_updated".into()),
            pr_url: Some("https://git.example.com/acme/shop/pull/3".into()),
            pr_action: Some("updated".into()),
            ..Default::default()
        };
        assert_eq!(
            d.summary(),
            "pushed 0123456789ab to https://git.example.com/acme/shop.git (force updated); pull request updated: https://git.example.com/acme/shop/pull/3"
        );
        let failed = Delivery {
            remote: "r".into(),
            error: Some("push failed: rejected".into()),
            retryable: true,
            ..Default::default()
        };
        assert_eq!(
            failed.summary(),
            "not pushed to r; push failed: rejected (retry with errand pr)"
        );
        let mut replaced = Delivery {
            superseded: Some(Superseded {
                by_attempt: 2,
                by_pr_url: Some("https://git.example.com/acme/shop/pull/4".into()),
                picked_by: "alice".into(),
                at_ms: 1,
                closed: true,
                outcome: "closed".into(),
                comment_url: None,
                error: None,
            }),
            ..d
        };
        assert!(
            replaced.summary().ends_with(
                "pull request updated: https://git.example.com/acme/shop/pull/3; superseded by attempt 2 (picked by alice): pull request closed"
            ),
            "{}",
            replaced.summary()
        );
        if let Some(sup) = &mut replaced.superseded {
            sup.closed = false;
            sup.outcome = "left_open".into();
            sup.error = Some("closing it failed: github: permission denied".into());
        }
        assert!(
            replaced.summary().ends_with(
                "superseded by attempt 2 (picked by alice): pull request left open (closing it failed: github: permission denied)"
            ),
            "{}",
            replaced.summary()
        );
    }
}
