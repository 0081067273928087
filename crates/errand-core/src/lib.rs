//! Errand's domain model: ids, task and attempt statuses and their state machine, the event
//! log's entry kinds, the task request, and the `errand.toml` configuration model.
//!
//! This crate owns vocabulary only. It must not do I/O (no files, no network, no processes,
//! no database): every other crate depends on it, and it stays cheap to build and to test.

pub mod bestof;
pub mod config;
pub mod event;
pub mod id;
pub mod plan;
pub mod redact;
pub mod status;
pub mod task;
pub mod text;

pub use config::{
    AgentSettings, Budget, CheckSpec, Config, ConfigError, EnvironmentConfig, ForgeConfig,
    ForgeKind, ModelConfig, NetworkConfig, NetworkMode, PrMode, ProviderConfig, ProviderKind,
    SecretConfig, is_env_var_name,
};
pub use event::{Event, EventKind, OutputStream, PlanStep, Usage};
pub use id::{new_id, short_id};
pub use plan::{Approval, PlanAction, PlanRevision};
pub use redact::{Redactor, StreamRedactor};
pub use status::Status;
pub use task::GatewayUpstream;
pub use task::{
    Attempt, AttemptReview, CheckResult, Delivery, DiffStats, EnvironmentSnapshot, FileStat,
    Finding, NewAttempt, NewReview, NewTask, Pick, Review, SetupInfo, Severity, Superseded, Task,
    TaskRequest, TestCounts, Verdict,
};

/// Milliseconds since the Unix epoch, the timestamp unit used across Errand.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Formats a millisecond timestamp as RFC 3339 (UTC, millisecond precision).
pub fn format_ts(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}
