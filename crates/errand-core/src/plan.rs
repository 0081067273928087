//! Plan mode: the plans an attempt proposes while it explores read-only, and the decisions
//! people make on them (approve, revise with a comment, reject).

use crate::{PlanStep, Usage};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A task's mode: `run` works on the task at once; `plan` explores read-only, proposes a plan
/// and waits for approval before it changes anything.
pub const MODES: &[&str] = &["run", "plan"];

/// What a person decided on a proposed plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanAction {
    /// Implement the plan: the attempt runs again in run mode, its conversation kept.
    Approve,
    /// Plan again with the comment: the attempt goes back to planning.
    Revise,
    /// Stop: the task ends, cancelled, with the reason.
    Reject,
}

impl PlanAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanAction::Approve => "approve",
            PlanAction::Revise => "revise",
            PlanAction::Reject => "reject",
        }
    }

    /// `approved`, `revised`, `rejected`: the decision as a revision records it.
    pub fn past(self) -> &'static str {
        match self {
            PlanAction::Approve => "approved",
            PlanAction::Revise => "revised",
            PlanAction::Reject => "rejected",
        }
    }
}

impl fmt::Display for PlanAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown plan action '{0}'; expected approve, revise or reject")]
pub struct UnknownPlanAction(pub String);

impl FromStr for PlanAction {
    type Err = UnknownPlanAction;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "approve" => Ok(PlanAction::Approve),
            "revise" => Ok(PlanAction::Revise),
            "reject" => Ok(PlanAction::Reject),
            other => Err(UnknownPlanAction(other.to_string())),
        }
    }
}

/// One plan an attempt proposed, numbered from 1, with the decision taken on it once there
/// is one (the comment of a `revised` decision is what the next revision answers).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PlanRevision {
    pub number: i64,
    pub created_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
    pub steps: Vec<PlanStep>,
    /// The agent's summary of the plan (its `finish` summary or last text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Usage and model turns of the attempt when the plan was proposed (all planning so far).
    #[serde(default)]
    pub usage: Usage,
    #[serde(default)]
    pub turns: u64,
    /// `approved`, `revised` or `rejected`; none while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A decision on a plan: who, when, what, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Approval {
    pub action: PlanAction,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub at_ms: i64,
    /// The plan revision it decided on.
    pub revision: i64,
}

/// Numbered steps with their statuses, one per line: `1. [pending] Add the adapter`.
pub fn numbered_steps(steps: &[PlanStep]) -> String {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{}. [{}] {}", i + 1, s.status, s.step.trim()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The message that continues an approved plan's conversation: the agent implements it.
pub fn approved_message(actor: &str, comment: Option<&str>, plan: &PlanRevision) -> String {
    let mut m = format!("<plan_approved>\nThe plan was approved by {actor}; implement it.");
    if let Some(c) = comment.map(str::trim).filter(|c| !c.is_empty()) {
        m.push_str(&format!("\nComment from {actor}: {c}"));
    }
    m.push_str(&format!(
        "\n\nThe approved plan (revision {}):\n{}",
        plan.number,
        numbered_steps(&plan.steps)
    ));
    m.push_str(
        "\n\nThe workspace is writable now and every tool is available. Keep the plan up to date \
         with update_plan as you work, run the relevant tests, and call finish with a summary \
         when the task is complete.\n</plan_approved>",
    );
    m
}

/// The message that sends a plan back for a new revision with the reviewer's comment.
pub fn revise_message(actor: &str, comment: &str, revision: i64) -> String {
    format!(
        "<plan_review>\n{actor} asked for changes to your plan (revision {revision}):\n{}\n\n\
         Revise the plan: explore more if you need to (the workspace is still read-only), record \
         the new plan with update_plan, then call finish with a short summary of what changed.\n\
         </plan_review>",
        comment.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_and_print() {
        for a in [PlanAction::Approve, PlanAction::Revise, PlanAction::Reject] {
            assert_eq!(a.as_str().parse::<PlanAction>().ok(), Some(a));
            assert_eq!(
                serde_json::to_value(a).unwrap_or_default(),
                serde_json::json!(a.as_str())
            );
        }
        assert!(
            "accept"
                .parse::<PlanAction>()
                .unwrap_err()
                .to_string()
                .contains("approve, revise or reject")
        );
    }

    #[test]
    fn approved_message_carries_the_plan() {
        let plan = PlanRevision {
            number: 2,
            steps: vec![
                PlanStep {
                    step: "Add the adapter".into(),
                    status: "pending".into(),
                },
                PlanStep {
                    step: "Test it".into(),
                    status: "pending".into(),
                },
            ],
            ..Default::default()
        };
        let m = approved_message("ann", Some("go"), &plan);
        assert!(
            m.contains("The plan was approved by ann; implement it."),
            "{m}"
        );
        assert!(m.contains("Comment from ann: go"), "{m}");
        assert!(
            m.contains("(revision 2):\n1. [pending] Add the adapter\n2. [pending] Test it"),
            "{m}"
        );
        let r = revise_message("bob", " keep tokens ", 1);
        assert!(
            r.contains("bob asked for changes to your plan (revision 1):\nkeep tokens\n"),
            "{r}"
        );
    }
}
