//! Plan mode in the SQLite back end: plan revisions, decisions on them, and the transitions
//! `planning → awaiting_approval → queued | cancelled`.

use super::{
    append_in, attempt_task_id, from_json, json, load_task, refresh_task_status, resolve_task_id,
};
use crate::{PlanDecision, PlanSubmission, Result, StoreError};
use errand_core::{
    Approval, EventKind as K, PlanAction, PlanRevision, Status, Task, now_ms, text::title_of,
};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

/// Fills the plan fields of a plan-mode task from its result attempt's rows.
pub(super) fn load_into(conn: &Connection, task: &mut Task) -> Result<()> {
    if task.mode != "plan" {
        return Ok(());
    }
    let Some(aid) = task.result_attempt().map(|a| a.id.clone()) else {
        return Ok(());
    };
    let mut stmt = conn.prepare_cached(
        "SELECT number, created_at, explanation, steps, summary, usage, turns, decision,
                decided_by, decided_at, comment
         FROM plan_revisions WHERE attempt_id = ?1 ORDER BY number",
    )?;
    let revisions = stmt
        .query_map([&aid], |r| {
            Ok(PlanRevision {
                number: r.get(0)?,
                created_at_ms: r.get(1)?,
                explanation: r.get(2)?,
                steps: from_json(&r.get::<_, String>(3)?, "plan steps")?,
                summary: r.get(4)?,
                usage: from_json(&r.get::<_, String>(5)?, "plan usage")?,
                turns: r.get::<_, i64>(6)? as u64,
                decision: r.get(7)?,
                decided_by: r.get(8)?,
                decided_at_ms: r.get(9)?,
                comment: r.get(10)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT action, actor, comment, at, revision FROM approvals
         WHERE attempt_id = ?1 ORDER BY id",
    )?;
    let approvals = stmt
        .query_map([&aid], |r| {
            let action: String = r.get(0)?;
            Ok(Approval {
                action: action
                    .parse()
                    .map_err(|e: errand_core::plan::UnknownPlanAction| {
                        rusqlite::Error::FromSqlConversionFailure(
                            0,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })?,
                actor: r.get(1)?,
                comment: r.get(2)?,
                at_ms: r.get(3)?,
                revision: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    task.plan = revisions.last().cloned();
    task.plan_revisions = revisions;
    task.approvals = approvals;
    Ok(())
}

/// Where a claimed run of a plan-mode attempt starts: after an approval it implements the
/// plan, after a revision request it plans again. `None` for a first planning run (and for
/// every attempt of a run-mode task).
pub(super) fn claim_note(
    tx: &Transaction<'_>,
    attempt_id: &str,
    run: i64,
    restart_reason: Option<&str>,
) -> Result<Option<(&'static str, String)>> {
    let last: Option<(String, String, Option<String>, i64)> = tx
        .query_row(
            "SELECT action, actor, comment, revision FROM approvals WHERE attempt_id = ?1
             ORDER BY id DESC LIMIT 1",
            [attempt_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((action, actor, comment, revision)) = last else {
        return Ok(None);
    };
    let again = restart_reason
        .map(|r| format!(" (again, after: {r})"))
        .unwrap_or_default();
    let note = match action.as_str() {
        "approve" => {
            format!("run {run} implements plan revision {revision}, approved by {actor}{again}")
        }
        "revise" => format!(
            "run {run} revises plan revision {revision} as {actor} asked: {}{again}",
            title_of(comment.as_deref().unwrap_or_default(), 200)
        ),
        _ => return Ok(None),
    };
    Ok(Some(("plan", note)))
}

pub(super) fn submit(
    tx: &Transaction<'_>,
    aid: &str,
    worker: &str,
    plan: &PlanSubmission,
) -> Result<Status> {
    let (task_id, actual, owner) = attempt_task_id(tx, aid)?;
    if owner.as_deref() != Some(worker) {
        return Err(StoreError::LeaseLost(aid.to_string()));
    }
    let conversation = plan.conversation.as_ref().map(json).transpose()?;
    let usage = json(&plan.usage)?;
    match actual {
        Status::Planning => {
            if plan.steps.is_empty() {
                return Err(StoreError::Invalid(
                    "a plan needs at least one step".to_string(),
                ));
            }
            let number: i64 = tx.query_row(
                "SELECT COALESCE(MAX(number), 0) + 1 FROM plan_revisions WHERE attempt_id = ?1",
                [aid],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO plan_revisions (attempt_id, task_id, number, created_at, explanation,
                     steps, summary, usage, turns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    aid,
                    task_id,
                    number,
                    now_ms(),
                    plan.explanation,
                    json(&plan.steps)?,
                    plan.summary,
                    usage,
                    plan.turns as i64
                ],
            )?;
            let changed = tx.execute(
                "UPDATE attempts SET status = 'awaiting_approval', lease_owner = NULL,
                     lease_expires_at = NULL, conversation = COALESCE(?3, conversation),
                     usage = ?4, turns = ?5
                 WHERE id = ?1 AND status = 'planning' AND lease_owner = ?2",
                params![aid, worker, conversation, usage, plan.turns as i64],
            )?;
            if changed != 1 {
                return Err(StoreError::Conflict {
                    attempt: aid.to_string(),
                    expected: Status::Planning.to_string(),
                    actual,
                });
            }
            append_in(
                tx,
                aid,
                None,
                &[
                    K::PlanProposed {
                        revision: number,
                        explanation: plan.explanation.clone(),
                        steps: plan.steps.clone(),
                        summary: plan.summary.clone(),
                    },
                    K::Status {
                        from: Status::Planning,
                        to: Status::AwaitingApproval,
                        reason: Some(format!("plan revision {number} waits for approval")),
                    },
                ],
            )?;
            refresh_task_status(tx, &task_id)?;
            Ok(Status::AwaitingApproval)
        }
        Status::Cancelled => {
            // Cancelled while it planned: keep what it used, and let go.
            tx.execute(
                "UPDATE attempts SET lease_owner = NULL, lease_expires_at = NULL,
                     conversation = COALESCE(?2, conversation), usage = ?3, turns = ?4,
                     finished_at = COALESCE(finished_at, ?5)
                 WHERE id = ?1",
                params![aid, conversation, usage, plan.turns as i64, now_ms()],
            )?;
            Ok(Status::Cancelled)
        }
        other => Err(StoreError::Conflict {
            attempt: aid.to_string(),
            expected: Status::Planning.to_string(),
            actual: other,
        }),
    }
}

/// Why an action on a plan does not fit the attempt's state, as a hint after the state.
fn not_waiting_hint(s: Status) -> &'static str {
    match s {
        Status::Queued | Status::Preparing | Status::Planning => {
            " (the agent is still working on the plan; wait for it)"
        }
        Status::Running | Status::Checking | Status::Verifying => {
            " (its plan was already approved)"
        }
        Status::Done | Status::Failed | Status::Cancelled => " (it has ended)",
        Status::AwaitingApproval => "",
    }
}

/// Records a decision and moves the attempt on. Returns the task, the attempt id and whether
/// the attempt went back to the queue.
pub(super) fn decide(
    tx: &Transaction<'_>,
    id: &str,
    d: &PlanDecision,
) -> Result<(Task, String, bool)> {
    let actor = d.actor.trim();
    if actor.is_empty() {
        return Err(StoreError::Invalid(
            "the actor is empty; say who decides".into(),
        ));
    }
    let comment = d
        .comment
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    let full = resolve_task_id(tx, id)?;
    let task = load_task(tx, &full)?;
    let verb = d.action.as_str();
    if task.mode != "plan" {
        return Err(StoreError::WrongState(format!(
            "task {} was not created in plan mode (its mode is {}); there is no plan to {verb} (create one with errand run --plan)",
            task.short_id, task.mode
        )));
    }
    let Some(a) = task.result_attempt().cloned() else {
        return Err(StoreError::Invalid(format!(
            "task {} has no attempt",
            task.short_id
        )));
    };
    if a.status != Status::AwaitingApproval {
        return Err(StoreError::WrongState(format!(
            "task {} is {}, not awaiting approval{}",
            task.short_id,
            a.status,
            not_waiting_hint(a.status)
        )));
    }
    if d.action == PlanAction::Revise && comment.is_none() {
        return Err(StoreError::Invalid(
            "a revision needs a comment that says what to change in the plan".into(),
        ));
    }
    let revision =
        task.plan.as_ref().map(|p| p.number).ok_or_else(|| {
            StoreError::Db(format!("task {} waits without a plan", task.short_id))
        })?;
    let now = now_ms();
    tx.execute(
        "INSERT INTO approvals (task_id, attempt_id, revision, action, actor, comment, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![full, a.id, revision, verb, actor, comment, now],
    )?;
    tx.execute(
        "UPDATE plan_revisions SET decision = ?3, decided_by = ?4, decided_at = ?5, comment = ?6
         WHERE attempt_id = ?1 AND number = ?2",
        params![a.id, revision, d.action.past(), actor, now, comment],
    )?;
    let (to, reason, changed) = match d.action {
        PlanAction::Approve | PlanAction::Revise => {
            let reason = if d.action == PlanAction::Approve {
                format!("plan revision {revision} approved by {actor}")
            } else {
                format!("{actor} asked for a new plan")
            };
            let changed = tx.execute(
                "UPDATE attempts SET status = 'queued', queued_at = ?2, restart_reason = NULL,
                     error = NULL
                 WHERE id = ?1 AND status = 'awaiting_approval' AND lease_owner IS NULL",
                params![a.id, now],
            )?;
            (Status::Queued, reason, changed)
        }
        PlanAction::Reject => {
            let reason = match &comment {
                Some(c) => format!("plan rejected by {actor}: {c}"),
                None => format!("plan rejected by {actor}"),
            };
            let changed = tx.execute(
                "UPDATE attempts SET status = 'cancelled', finished_at = ?2, error = ?3
                 WHERE id = ?1 AND status = 'awaiting_approval' AND lease_owner IS NULL",
                params![a.id, now, reason],
            )?;
            (Status::Cancelled, reason, changed)
        }
    };
    if changed != 1 {
        return Err(StoreError::WrongState(format!(
            "task {} changed meanwhile; look at it again with errand show {}",
            task.short_id, task.short_id
        )));
    }
    append_in(
        tx,
        &a.id,
        None,
        &[
            K::Approval {
                action: d.action,
                actor: actor.to_string(),
                comment,
                revision,
            },
            K::Status {
                from: Status::AwaitingApproval,
                to,
                reason: Some(reason),
            },
        ],
    )?;
    refresh_task_status(tx, &full)?;
    Ok((load_task(tx, &full)?, a.id, to == Status::Queued))
}
