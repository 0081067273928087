//! Plan mode over HTTP: a task's mode, and the decisions on a plan waiting for approval
//! (`POST /tasks/{id}/approve`, `/revise`, `/reject`).

use crate::AppState;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use errand_core::PlanAction;
use errand_store::PlanDecision;
use serde::Deserialize;
use std::sync::Arc;

/// The longest actor name and comment accepted.
const MAX_ACTOR: usize = 200;
const MAX_COMMENT: usize = 64 * 1024;

/// The mode of a new task: `run` (default) or `plan`.
pub fn validate_mode(s: &AppState, mode: Option<&str>) -> Result<String, ApiError> {
    match mode.map(str::trim) {
        None | Some("") | Some("run") => Ok("run".into()),
        Some("plan") => {
            if s.workers > 0 && s.sandbox_name == "none" {
                return Err(ApiError::bad_request(
                    "plan mode needs the box: the agent explores a read-only workspace, and --sandbox none cannot make it read-only; restart the server with --sandbox box",
                ));
            }
            Ok("plan".into())
        }
        Some("ask") => Err(ApiError::bad_request(
            "mode 'ask' is not supported yet; use run or plan",
        )),
        Some(other) => Err(ApiError::bad_request(format!(
            "unknown mode '{other}'; expected run or plan"
        ))),
    }
}

/// The body of approve, revise and reject; all fields optional except a revision's comment.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// Who decides; default `api`.
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    comment: Option<String>,
}

async fn decide(
    s: &AppState,
    id: &str,
    action: PlanAction,
    body: Bytes,
) -> Result<Response, ApiError> {
    // No body at all is fine (actor `api`, no comment).
    let body: DecisionBody = if body.iter().all(u8::is_ascii_whitespace) {
        DecisionBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "invalid request body: {e}; expected {{\"actor\": \"…\", \"comment\": \"…\"}}"
            ))
        })?
    };
    let actor = body
        .actor
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "api".into());
    if actor.chars().count() > MAX_ACTOR || actor.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "the actor must be a name of at most {MAX_ACTOR} characters without control characters"
        )));
    }
    let comment = body
        .comment
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    if comment.as_ref().is_some_and(|c| c.len() > MAX_COMMENT) {
        return Err(ApiError::bad_request(format!(
            "the comment is over {} KiB",
            MAX_COMMENT / 1024
        )));
    }
    if action == PlanAction::Revise && comment.is_none() {
        return Err(ApiError::bad_request(
            "a revision needs a comment that says what to change in the plan, for example {\"comment\": \"Keep the old tokens valid for a week\"}",
        ));
    }
    let task = s
        .store
        .decide_plan(
            id,
            &PlanDecision {
                action,
                actor,
                comment,
            },
        )
        .await?;
    Ok(crate::api::json_out(s, task))
}

type Body = Bytes;

/// Approves the plan: the attempt is queued again to implement it.
pub async fn approve(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    decide(&s, &id, PlanAction::Approve, body).await
}

/// Sends the plan back with a comment: the attempt is queued again to plan.
pub async fn revise(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    decide(&s, &id, PlanAction::Revise, body).await
}

/// Rejects the plan: the task ends, cancelled, with the reason.
pub async fn reject(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    decide(&s, &id, PlanAction::Reject, body).await
}
