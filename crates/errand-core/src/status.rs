//! Attempt and task statuses, and the transitions allowed between them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The status of an attempt, and (derived from its attempts) of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Preparing,
    Planning,
    AwaitingApproval,
    Running,
    Checking,
    Verifying,
    Done,
    Failed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::Queued,
        Status::Preparing,
        Status::Planning,
        Status::AwaitingApproval,
        Status::Running,
        Status::Checking,
        Status::Verifying,
        Status::Done,
        Status::Failed,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Preparing => "preparing",
            Status::Planning => "planning",
            Status::AwaitingApproval => "awaiting_approval",
            Status::Running => "running",
            Status::Checking => "checking",
            Status::Verifying => "verifying",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Done, failed or cancelled: nothing more will happen.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Done | Status::Failed | Status::Cancelled)
    }

    /// A worker holds this attempt (it has a lease).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Status::Preparing
                | Status::Planning
                | Status::Running
                | Status::Checking
                | Status::Verifying
        )
    }

    /// Whether the state machine allows `self → to`.
    pub fn can_transition_to(self, to: Status) -> bool {
        use Status::*;
        if self == to || self.is_terminal() {
            return false;
        }
        match (self, to) {
            (_, Cancelled) => true,
            (_, Failed) => true,
            // A lost lease puts an active attempt back in the queue; an approved plan too.
            (s, Queued) => s.is_active() || s == AwaitingApproval,
            (Queued, Preparing) => true,
            (Preparing, Planning | Running) => true,
            (Planning, AwaitingApproval) => true,
            (AwaitingApproval, Running) => true,
            // Verifying: a reviewer model reads the work (directly when there are no checks).
            (Running, Checking | Verifying | Done) => true,
            (Checking, Verifying | Done | Running) => true,
            (Verifying, Done | Running) => true,
            _ => false,
        }
    }

    /// A task's status from its attempts' statuses: the furthest-along live attempt wins;
    /// once all are terminal, done if any is done, else cancelled if any was, else failed.
    pub fn derive_task_status(attempts: &[Status]) -> Status {
        if attempts.is_empty() {
            return Status::Queued;
        }
        if attempts.iter().all(|s| s.is_terminal()) {
            if attempts.contains(&Status::Done) {
                return Status::Done;
            }
            if attempts.contains(&Status::Cancelled) {
                return Status::Cancelled;
            }
            return Status::Failed;
        }
        let rank = |s: &Status| Status::ALL.iter().position(|x| x == s).unwrap_or(0);
        attempts
            .iter()
            .filter(|s| !s.is_terminal())
            .max_by_key(|s| rank(s))
            .copied()
            .unwrap_or(Status::Queued)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown status '{0}'; expected one of: queued, preparing, planning, awaiting_approval, running, checking, verifying, done, failed, cancelled"
)]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .iter()
            .find(|x| x.as_str() == s)
            .copied()
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        assert!(Status::Queued.can_transition_to(Status::Preparing));
        assert!(Status::Running.can_transition_to(Status::Queued));
        assert!(!Status::Queued.can_transition_to(Status::Queued));
        assert!(!Status::Done.can_transition_to(Status::Running));
        assert!(!Status::Queued.can_transition_to(Status::Done));
        assert!(Status::Queued.can_transition_to(Status::Cancelled));
        // A review round: checks (or the agent) → verifying → back to the agent.
        assert!(Status::Checking.can_transition_to(Status::Verifying));
        assert!(Status::Running.can_transition_to(Status::Verifying));
        assert!(Status::Verifying.can_transition_to(Status::Running));
        assert!(!Status::Verifying.can_transition_to(Status::Checking));
    }

    #[test]
    fn parse_roundtrip() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().ok(), Some(s));
        }
        assert!("nope".parse::<Status>().is_err());
    }

    #[test]
    fn derive() {
        use Status::*;
        assert_eq!(Status::derive_task_status(&[Queued, Running]), Running);
        assert_eq!(Status::derive_task_status(&[Failed, Done]), Done);
        assert_eq!(Status::derive_task_status(&[Failed, Cancelled]), Cancelled);
        assert_eq!(Status::derive_task_status(&[Failed, Running]), Running);
    }
}
