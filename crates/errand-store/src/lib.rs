//! Errand's persistence: the [`Store`] trait (tasks, attempts, the event log and the attempt
//! queue with leases) and its SQLite back end. A PostgreSQL back end implements the same trait
//! and must pass the same tests.
//!
//! This crate owns durable state and the compare-and-set transitions of attempts. It must not
//! run git, sandboxes or models, and it must not know about HTTP.

mod notify;
mod sqlite;

pub use notify::Notifier;
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use errand_core::{
    Attempt, CheckResult, DiffStats, Event, EventKind, NewTask, Status, Task, Usage,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Ambiguous(String),
    /// A compare-and-set transition did not find the expected state.
    #[error("attempt {attempt} is {actual}, expected {expected}")]
    Conflict {
        attempt: String,
        expected: String,
        actual: Status,
    },
    /// The request does not fit the task's current state (409).
    #[error("{0}")]
    WrongState(String),
    /// The caller no longer holds the attempt's lease.
    #[error("attempt {0}: lease is no longer held by this worker")]
    LeaseLost(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Db(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Filters for [`Store::list_tasks`].
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub status: Option<Status>,
    /// Page size (1..=500).
    pub limit: usize,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    pub next_cursor: Option<String>,
}

/// A worker asking for work.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub worker: String,
    /// Sandbox back end name, recorded in the first event of the run.
    pub sandbox: String,
    pub isolated: bool,
    pub lease_ttl_ms: i64,
}

/// What a worker gets when it claims an attempt.
#[derive(Debug, Clone)]
pub struct ClaimedAttempt {
    pub task: Task,
    pub attempt: Attempt,
    pub model_payload: Option<serde_json::Value>,
    /// 1 for the first run, 2+ after a restart or a follow-up.
    pub run: i64,
    /// A follow-up prompt to run on the attempt's branch head, continuing its conversation.
    pub followup: Option<String>,
    /// The conversation the attempt's last run ended with (agent messages as JSON).
    pub conversation: Option<serde_json::Value>,
    /// The reviewer's provider payload, when the task has a reviewer.
    pub review_payload: Option<serde_json::Value>,
    /// The checkpoint this run resumes from (`resumed_from = "checkpoint"`): an earlier run
    /// of the attempt died after saving it.
    pub checkpoint: Option<Checkpoint>,
}

/// The state an attempt can resume from, saved by its worker after each agent turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Model turns done (the run resumes with turn `turn + 1`).
    pub turn: u64,
    /// The workspace at that point: a commit in the worker's mirror, on a hidden ref
    /// (`refs/errand/checkpoints/<attempt>`), never on a branch.
    pub commit: String,
    /// The agent's messages (JSON).
    pub conversation: serde_json::Value,
    /// Tokens and cost of the run so far.
    pub usage: Usage,
    /// The attempt's last event seq when the checkpoint was taken: later events of a run
    /// that dies describe work that is rolled back.
    pub last_seq: i64,
    /// Anything else the worker needs to resume (plan, counters); opaque to the store.
    pub state: serde_json::Value,
}

/// What a heartbeat learned about the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Still ours; lease extended.
    Held,
    /// The user cancelled it: stop and clean up (the lease is kept for the final events).
    Cancelled,
    /// Someone else owns it now, or it went back to the queue: stop without writing more.
    Lost,
}

/// The result of an attempt, written once when it ends.
#[derive(Debug, Clone, Default)]
pub struct AttemptOutcome {
    /// `Done` or `Failed` (ignored if the attempt was cancelled meanwhile).
    pub status: Option<Status>,
    pub head_commit: Option<String>,
    pub diff: Option<String>,
    pub diff_stats: Option<DiffStats>,
    pub usage: Usage,
    pub turns: u64,
    pub checks: Vec<CheckResult>,
    pub summary: Option<String>,
    pub error: Option<String>,
    /// The agent's conversation at the end, kept for follow-ups.
    pub conversation: Option<serde_json::Value>,
    /// The push and pull request, when the environment asked for them.
    pub delivery: Option<errand_core::Delivery>,
    /// The reviewer's verdicts, when the task has a reviewer.
    pub review: Option<errand_core::AttemptReview>,
}

/// The end of a planning run (plan mode): the plan the agent proposed and what the attempt
/// used so far.
#[derive(Debug, Clone, Default)]
pub struct PlanSubmission {
    pub explanation: Option<String>,
    pub steps: Vec<errand_core::PlanStep>,
    /// The agent's summary of the plan.
    pub summary: Option<String>,
    /// The conversation so far, continued when the plan is approved or revised.
    pub conversation: Option<serde_json::Value>,
    /// Usage and model turns of the attempt so far (every planning run included).
    pub usage: Usage,
    pub turns: u64,
}

/// A person's decision on the plan of a task waiting for approval.
#[derive(Debug, Clone)]
pub struct PlanDecision {
    pub action: errand_core::PlanAction,
    /// Who decided (recorded with the time).
    pub actor: String,
    /// Required to revise; optional to approve or reject.
    pub comment: Option<String>,
}

/// Tasks, attempts, events and the queue. Every method is one transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts the task and its queued attempts. Durable once it returns.
    async fn create_task(&self, task: NewTask) -> Result<Task>;
    /// By full id or unique prefix.
    async fn get_task(&self, id_or_prefix: &str) -> Result<Task>;
    async fn list_tasks(&self, query: &TaskQuery) -> Result<TaskPage>;
    /// Cancels every attempt that has not ended. Idempotent.
    async fn cancel_task(&self, id: &str, reason: &str) -> Result<Task>;
    /// Queues a follow-up on the task's result attempt, which must have ended done or failed:
    /// the attempt goes back to the queue with the prompt, and its next run continues its
    /// branch and conversation. Appends a notice naming who asked.
    async fn followup(&self, id: &str, prompt: &str, by: &str) -> Result<Task>;
    /// Plan mode: approves (the attempt is queued again to implement the plan, its
    /// conversation kept), revises (queued again to plan, with the comment) or rejects (the
    /// attempt is cancelled with the reason) the plan of a task in `awaiting_approval`.
    /// Records the decision with its actor and time and appends an `approval` event. A task in
    /// any other state, or not in plan mode, is a [`StoreError::WrongState`]; a revision
    /// without a comment is [`StoreError::Invalid`].
    async fn decide_plan(&self, id_or_prefix: &str, decision: &PlanDecision) -> Result<Task>;
    /// Records a push and pull request made after the attempt ended (`errand pr`).
    async fn set_delivery(&self, attempt_id: &str, delivery: &errand_core::Delivery) -> Result<()>;
    /// Makes an ended attempt (with a commit) the task's result, recording who picked it and
    /// when, and appends a notice to it. `attempt_id` must be one of the task's attempts.
    async fn pick_attempt(&self, task_id: &str, attempt_id: &str, by: &str) -> Result<Task>;
    /// Best-of-N delivery: when every attempt of the task has ended, none was cancelled, at
    /// least one is done and nobody claimed the delivery before, marks the task's result
    /// attempt as delivered and returns the task (its result attempt is the one to deliver).
    /// Otherwise `None`. Of concurrent callers, exactly one gets the task.
    async fn claim_result_delivery(&self, task_id: &str) -> Result<Option<Task>>;
    /// Records what the setup phase of the attempt's current run did (cache hit or miss, key,
    /// duration, size), replacing an earlier run's. Only for the lease holder.
    async fn set_setup(
        &self,
        attempt_id: &str,
        worker: &str,
        setup: &errand_core::SetupInfo,
    ) -> Result<()>;

    /// Takes the oldest queued attempt: queued → preparing, with a lease. Appends the run's
    /// `claimed` event (first of the run) and the status event in the same transaction.
    async fn claim_attempt(&self, claim: &ClaimRequest) -> Result<Option<ClaimedAttempt>>;
    /// Extends the lease.
    async fn heartbeat(&self, attempt_id: &str, worker: &str, ttl_ms: i64) -> Result<LeaseState>;
    /// Compare-and-set `from → to`, only for the lease holder. Appends a status event.
    async fn transition(
        &self,
        attempt_id: &str,
        worker: &str,
        from: Status,
        to: Status,
        reason: Option<String>,
    ) -> Result<()>;
    /// Updates the running token usage and turn count shown by `show`.
    async fn update_usage(
        &self,
        attempt_id: &str,
        worker: &str,
        usage: Usage,
        turns: u64,
    ) -> Result<()>;
    /// Records the outcome, moves an active attempt to its final status, releases the lease.
    async fn finish_attempt(
        &self,
        attempt_id: &str,
        worker: &str,
        outcome: AttemptOutcome,
    ) -> Result<Status>;

    /// Ends a planning run: `planning → awaiting_approval`, the plan stored as the attempt's
    /// next revision (with a `plan_proposed` event), the conversation and usage kept, and the
    /// lease released (nobody holds an attempt while it waits). An attempt cancelled
    /// meanwhile stays cancelled and its lease is released. Returns the attempt's status.
    async fn submit_plan(
        &self,
        attempt_id: &str,
        worker: &str,
        plan: PlanSubmission,
    ) -> Result<Status>;

    /// Appends events in order and returns the seq of the last one. With `lease_owner`, the
    /// append only happens while that worker holds the lease (fencing).
    async fn append_events(
        &self,
        attempt_id: &str,
        lease_owner: Option<&str>,
        events: Vec<EventKind>,
    ) -> Result<i64>;
    /// Events with `seq > after_seq`, in order.
    async fn list_events(
        &self,
        attempt_id: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<Event>>;
    async fn get_diff(&self, attempt_id: &str) -> Result<Option<String>>;
    async fn get_attempt(&self, attempt_id: &str) -> Result<Attempt>;

    /// Saves the attempt's checkpoint, replacing the previous one. Only the lease holder of an
    /// active attempt may, and only moving forward: `turn` must be above the one saved by the
    /// same run (a run that started over replaces an earlier run's), and `last_seq` at most the
    /// attempt's (compare-and-set; `WrongState` otherwise).
    async fn checkpoint(
        &self,
        attempt_id: &str,
        worker: &str,
        checkpoint: &Checkpoint,
    ) -> Result<()>;
    /// The attempt's saved checkpoint, if it has one (it is dropped when the attempt ends).
    async fn get_checkpoint(&self, attempt_id: &str) -> Result<Option<Checkpoint>>;

    /// Puts attempts whose lease expired back in the queue. Returns their ids. An attempt
    /// with a checkpoint will resume from it: the events its dead run wrote after the
    /// checkpoint (all but `claimed` and `status`) are marked `rolled_back` in the same
    /// transaction.
    async fn requeue_expired(&self, now_ms: i64) -> Result<Vec<String>>;
    /// Puts every active attempt back in the queue (their workers are known dead, for example
    /// the embedded workers of a server that restarted). Returns their ids. Checkpoints as
    /// in [`Store::requeue_expired`].
    async fn requeue_orphans(&self, reason: &str) -> Result<Vec<String>>;

    fn notifier(&self) -> &Notifier;
}
