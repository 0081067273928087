//! The attempt event log: one append-only, `seq`-numbered entry per thing that happened.

use crate::Status;
use serde::{Deserialize, Serialize};

/// One stored event of an attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// The attempt this event belongs to.
    pub attempt_id: String,
    /// 1, 2, 3, … within the attempt, with no gaps and no duplicates.
    pub seq: i64,
    /// Which run of the attempt wrote it (a run restarts after a lost lease).
    pub run: i64,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// Set on every event of a run whose commands ran without a sandbox (`--sandbox none`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unisolated: bool,
    /// Set on the events of a run that died after its last checkpoint: the work they describe
    /// (model turns, tool calls, file changes) was rolled back, and a later run redid it from
    /// the checkpoint. They stay in the log, in order, because what they describe happened
    /// (a command that ran may have had effects outside the workspace).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolled_back: bool,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Token usage of one model turn or a sum of turns, and what it cost.
///
/// `input_tokens` counts every input token, cached or not (`cached_input_tokens` and
/// `cache_write_tokens` are parts of it); `output_tokens` includes `reasoning_tokens`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub cached_input_tokens: u64,
    /// Input tokens written to the provider's prompt cache (Anthropic bills them apart).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// US dollars, from the model's price table; 0 when no price is known.
    #[serde(default)]
    pub cost_usd: f64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens += other.input_tokens;
        self.cached_input_tokens += other.cached_input_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.output_tokens += other.output_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.cost_usd += other.cost_usd;
    }
    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// One step of the agent's plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlanStep {
    pub step: String,
    /// `pending`, `in_progress` or `completed`.
    pub status: String,
}

/// What happened. Serialized with a `type` tag, flattened into [`Event`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A worker took the attempt. Always the first event of a run; it states how commands are
    /// isolated, so that an unisolated run is visible in the very first line of its log.
    Claimed {
        worker: String,
        sandbox: String,
        isolated: bool,
        /// `start`, `checkpoint` or `followup`.
        resumed_from: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        /// With `checkpoint`: the model turn the run resumes after.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        turn: Option<u64>,
        /// With `checkpoint`: how many events of the dead run, written after the checkpoint,
        /// were marked `rolled_back` (their work was discarded with the workspace).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rolled_back_events: Option<u64>,
    },
    Status {
        from: Status,
        to: Status,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A progress or informational line from the worker.
    Notice {
        message: String,
    },
    ModelTurn {
        model: String,
        scripted: bool,
        turn: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reasoning: Option<String>,
        usage: Usage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stop_reason: Option<String>,
        /// The attempt's running cost after this turn, in US dollars.
        #[serde(default)]
        total_cost_usd: f64,
    },
    /// A model request failed with a retryable error; the agent waits and tries again.
    ModelRetry {
        model: String,
        /// 1 for the first retry.
        retry: u32,
        max_retries: u32,
        delay_ms: u64,
        /// The error class (`rate_limited`, `overloaded`, `server`, `stream_cut`, …).
        kind: String,
        error: String,
    },
    /// Old turns were replaced by a summary to stay inside the context window.
    Compacted {
        /// Messages replaced by the summary.
        removed_messages: u32,
        /// Messages kept verbatim after it.
        kept_messages: u32,
        /// Estimated request size before and after, in tokens.
        tokens_before: u64,
        tokens_after: u64,
        summary: String,
    },
    /// The agent's plan (`update_plan`).
    PlanUpdated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        explanation: Option<String>,
        steps: Vec<PlanStep>,
    },
    ToolCall {
        call_id: String,
        name: String,
        arguments: serde_json::Value,
    },
    ToolResult {
        call_id: String,
        name: String,
        ok: bool,
        /// The tool's whole output (up to 1 MiB); the model was shown it capped, head and tail
        /// kept, when `truncated`.
        output: String,
        #[serde(default)]
        truncated: bool,
    },
    CommandStarted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<String>,
        command: String,
        workdir: String,
    },
    Output {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<String>,
        stream: OutputStream,
        data: String,
    },
    CommandFinished {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        duration_ms: u64,
        /// The limit that killed the command, if one did (for example `timeout`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        killed_by: Option<String>,
    },
    FileChange {
        path: String,
        change: String,
    },
    CheckResult {
        name: String,
        command: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        duration_ms: u64,
        passed: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tests: Option<crate::TestCounts>,
    },
    /// The workspace was committed onto the attempt's branch.
    Committed {
        branch: String,
        commit: String,
        files_changed: u64,
        insertions: u64,
        deletions: u64,
    },
    /// A decision of the egress proxy: one request or tunnel, allowed or denied.
    Net {
        /// `setup`, `agent` or `check`.
        phase: String,
        allowed: bool,
        host: String,
        port: u16,
        /// `CONNECT` for a tunnel, else the HTTP method.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        method: Option<String>,
        /// The address the proxy connected to (it resolves names itself).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        addr: Option<String>,
        /// Why it was denied (or which rule allowed it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default)]
        bytes_up: u64,
        #[serde(default)]
        bytes_down: u64,
        #[serde(default)]
        duration_ms: u64,
    },
    /// Plan mode: the planning run ended with this plan, which now waits for approval.
    PlanProposed {
        /// 1 for the first plan of the attempt, 2 after one revision, …
        revision: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        explanation: Option<String>,
        steps: Vec<PlanStep>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        summary: Option<String>,
    },
    /// Plan mode: a person approved, revised (with a comment) or rejected the plan.
    Approval {
        action: crate::PlanAction,
        actor: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
        /// The plan revision decided on.
        #[serde(default)]
        revision: i64,
    },
    /// The reviewer's verdict on the attempt's work, one per review round.
    Review {
        round: u32,
        verdict: crate::Verdict,
        summary: String,
        #[serde(default)]
        findings: Vec<crate::Finding>,
    },
    /// The stuck detector saw the agent repeat a failing call or make no progress: first it
    /// `warned` the agent (a note in the tool result), then it `stopped` the attempt.
    Stuck {
        reason: String,
        /// `warned` or `stopped`.
        action: String,
    },
    Error {
        message: String,
    },
    /// One request a program in the box made through the model gateway, metered outside the
    /// box: which provider, the model the response named, what it used and cost.
    GatewayRequest {
        /// The provider's name (its route in the box: `/NAME/…`).
        upstream: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// The request path under the route (`/v1/responses`), without the query.
        path: String,
        /// The HTTP status returned to the box (502 when the provider was unreachable).
        status: u16,
        usage: Usage,
        #[serde(default)]
        cost_usd: f64,
        duration_ms: u64,
        /// What went wrong, for a request that did not complete.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl EventKind {
    /// The `type` tag, as stored in the `kind` column.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::Claimed { .. } => "claimed",
            EventKind::Status { .. } => "status",
            EventKind::Notice { .. } => "notice",
            EventKind::ModelTurn { .. } => "model_turn",
            EventKind::ModelRetry { .. } => "model_retry",
            EventKind::Compacted { .. } => "compacted",
            EventKind::PlanUpdated { .. } => "plan_updated",
            EventKind::ToolCall { .. } => "tool_call",
            EventKind::ToolResult { .. } => "tool_result",
            EventKind::CommandStarted { .. } => "command_started",
            EventKind::Output { .. } => "output",
            EventKind::CommandFinished { .. } => "command_finished",
            EventKind::FileChange { .. } => "file_change",
            EventKind::CheckResult { .. } => "check_result",
            EventKind::Committed { .. } => "committed",
            EventKind::Net { .. } => "net",
            EventKind::PlanProposed { .. } => "plan_proposed",
            EventKind::Approval { .. } => "approval",
            EventKind::Review { .. } => "review",
            EventKind::Stuck { .. } => "stuck",
            EventKind::Error { .. } => "error",
            EventKind::GatewayRequest { .. } => "gateway_request",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_is_flat_and_tagged() {
        let e = Event {
            attempt_id: "a".into(),
            seq: 3,
            run: 1,
            ts_ms: 5,
            unisolated: false,
            rolled_back: false,
            kind: EventKind::Status {
                from: Status::Queued,
                to: Status::Preparing,
                reason: None,
            },
        };
        let v = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(v["type"], "status");
        assert_eq!(v["to"], "preparing");
        assert_eq!(v["seq"], 3);
        let back: Event = serde_json::from_value(v).unwrap_or_else(|_| panic!("roundtrip"));
        assert_eq!(back, e);
        assert_eq!(e.kind.type_name(), "status");
    }

    #[test]
    fn review_event_json() {
        let k = EventKind::Review {
            round: 2,
            verdict: crate::Verdict::ChangesNeeded,
            summary: "one problem".into(),
            findings: vec![crate::Finding {
                file: "src/a.rs".into(),
                line: Some(3),
                severity: crate::Severity::Error,
                message: "off by one".into(),
            }],
        };
        let v = serde_json::to_value(&k).unwrap_or_default();
        assert_eq!(v["type"], "review");
        assert_eq!(v["verdict"], "changes_needed");
        assert_eq!(v["findings"][0]["severity"], "error");
        assert_eq!(v["findings"][0]["line"], 3);
        assert_eq!(k.type_name(), "review");
        let back: EventKind = serde_json::from_value(v).unwrap_or_else(|_| panic!("roundtrip"));
        assert_eq!(back, k);
    }

    #[test]
    fn rolled_back_marks_do_not_collide_with_event_fields() {
        let e = Event {
            attempt_id: "a".into(),
            seq: 9,
            run: 2,
            ts_ms: 5,
            unisolated: false,
            rolled_back: true,
            kind: EventKind::Claimed {
                worker: "w".into(),
                sandbox: "box".into(),
                isolated: true,
                resumed_from: "checkpoint".into(),
                note: None,
                turn: Some(149),
                rolled_back_events: Some(4),
            },
        };
        let v = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(v["rolled_back"], true);
        assert_eq!(v["rolled_back_events"], 4);
        assert_eq!(v["turn"], 149);
        let back: Event = serde_json::from_value(v).unwrap_or_else(|_| panic!("roundtrip"));
        assert_eq!(back, e);
        // Events stored before these fields existed still read.
        let old = serde_json::json!({"attempt_id": "a", "seq": 1, "run": 1, "ts_ms": 1,
            "type": "claimed", "worker": "w", "sandbox": "box", "isolated": true,
            "resumed_from": "start"});
        let old: Event = serde_json::from_value(old).unwrap_or_else(|_| panic!("old event"));
        assert!(!old.rolled_back);
    }
}
