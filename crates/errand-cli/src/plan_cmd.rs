//! Plan mode in the CLI: `errand approve | revise | reject`, and the plan in `errand show`.

use crate::client::Client;
use crate::render::{self, LogMode};
use anyhow::{Result, bail};
use clap::Args;
use errand_core::plan::numbered_steps;
use errand_core::{PlanAction, Status, Task, format_ts};
use std::fmt::Write as _;
use std::process::ExitCode;

/// Who decides and how to print the result.
#[derive(Args)]
pub struct DecideOpts {
    /// Who decides, recorded with the time (default: $USER).
    #[arg(long = "as", value_name = "NAME")]
    actor: Option<String>,
    /// Print the task as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ApproveArgs {
    task: String,
    /// A note passed to the agent with the approval.
    comment: Option<String>,
    /// Stream the log until the task ends.
    #[arg(short, long)]
    follow: bool,
    #[command(flatten)]
    opts: DecideOpts,
}

#[derive(Args)]
pub struct ReviseArgs {
    task: String,
    /// What to change in the plan; the agent plans again with it.
    comment: String,
    /// Stream the log until the new plan waits for approval.
    #[arg(short, long)]
    follow: bool,
    #[command(flatten)]
    opts: DecideOpts,
}

#[derive(Args)]
pub struct RejectArgs {
    task: String,
    /// Why (part of the reason the task ends with).
    comment: Option<String>,
    #[command(flatten)]
    opts: DecideOpts,
}

pub async fn approve(client: &Client, a: ApproveArgs) -> Result<ExitCode> {
    decide(
        client,
        &a.task,
        PlanAction::Approve,
        a.comment,
        a.opts,
        a.follow,
    )
    .await
}

pub async fn revise(client: &Client, a: ReviseArgs) -> Result<ExitCode> {
    if a.comment.trim().is_empty() {
        bail!(
            "the comment is empty; say what to change in the plan, for example: errand revise {} \"Keep the old tokens valid for a week\"",
            a.task
        );
    }
    decide(
        client,
        &a.task,
        PlanAction::Revise,
        Some(a.comment),
        a.opts,
        a.follow,
    )
    .await
}

pub async fn reject(client: &Client, a: RejectArgs) -> Result<ExitCode> {
    decide(
        client,
        &a.task,
        PlanAction::Reject,
        a.comment,
        a.opts,
        false,
    )
    .await
}

async fn decide(
    client: &Client,
    task: &str,
    action: PlanAction,
    comment: Option<String>,
    opts: DecideOpts,
    follow: bool,
) -> Result<ExitCode> {
    let actor = opts
        .actor
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(crate::whoami);
    let last_seq = if follow {
        client
            .task(task)
            .await?
            .result_attempt()
            .map(|a| a.last_seq)
            .unwrap_or_default()
    } else {
        0
    };
    let t = client
        .decide(task, action, &actor, comment.as_deref())
        .await?;
    if opts.json && !follow {
        println!("{}", serde_json::to_string_pretty(&t)?);
        return Ok(ExitCode::SUCCESS);
    }
    let revision = t.plan.as_ref().map(|p| p.number).unwrap_or_default();
    if !opts.json {
        match action {
            PlanAction::Approve => println!(
                "approved plan revision {revision} of task {} ({}) as {actor}; the agent implements it now",
                t.short_id, t.title
            ),
            PlanAction::Revise => println!(
                "sent plan revision {revision} of task {} ({}) back as {actor}; the agent plans again with your comment",
                t.short_id, t.title
            ),
            PlanAction::Reject => println!(
                "rejected the plan of task {} ({}) as {actor}; the task is {}",
                t.short_id, t.title, t.status
            ),
        }
    }
    if action == PlanAction::Reject {
        return Ok(ExitCode::SUCCESS);
    }
    if !follow {
        println!("follow it with: errand logs -f {}", t.short_id);
        return Ok(ExitCode::SUCCESS);
    }
    let mode = if opts.json {
        LogMode::Json
    } else {
        LogMode::Human
    };
    client.follow(&t.id, None, last_seq, mode).await?;
    let end = client.task(&t.id).await?;
    if !opts.json {
        println!();
        print!("{}", render::show(&end));
    }
    Ok(if end_ok(&end) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Whether a followed task stopped where it should: done, or (plan mode) with a plan waiting.
pub fn end_ok(t: &Task) -> bool {
    t.status == Status::Done || (t.mode == "plan" && t.status == Status::AwaitingApproval)
}

/// The plan-mode lines of `errand show`: the mode and what it waits for, the current plan as
/// numbered steps, the revision history and the decisions.
pub fn show_plan(t: &Task) -> String {
    let mut o = String::new();
    if t.mode != "plan" {
        return o;
    }
    let row = |o: &mut String, k: &str, v: &str| {
        let _ = writeln!(o, "{k:<10}{v}");
    };
    let last = t.approvals.last();
    let state = match (t.status, last) {
        (Status::AwaitingApproval, _) => format!(
            "waiting for approval: errand approve {id} | errand revise {id} \"…\" | errand reject {id}",
            id = t.short_id
        ),
        (_, Some(a)) if a.action == PlanAction::Approve => format!(
            "plan revision {} approved by {} at {}",
            a.revision,
            a.actor,
            format_ts(a.at_ms)
        ),
        (_, Some(a)) if a.action == PlanAction::Reject => {
            format!("plan rejected by {} at {}", a.actor, format_ts(a.at_ms))
        }
        (s, _) if s.is_terminal() => "ended before a plan was approved".into(),
        _ => "the agent is planning (read-only)".into(),
    };
    row(&mut o, "Mode", &format!("plan — {state}"));
    let Some(p) = &t.plan else {
        row(&mut o, "Plan", "(none yet)");
        return o;
    };
    row(
        &mut o,
        "Plan",
        &format!(
            "revision {} of {}, proposed {}",
            p.number,
            t.plan_revisions.len(),
            format_ts(p.created_at_ms)
        ),
    );
    for line in numbered_steps(&p.steps).lines() {
        let _ = writeln!(o, "{:<10}  {line}", "");
    }
    if let Some(e) = p.explanation.as_deref().filter(|e| !e.trim().is_empty()) {
        let _ = writeln!(o, "{:<10}Why: {}", "", e.trim());
    }
    if let Some(s) = p.summary.as_deref().filter(|s| !s.trim().is_empty()) {
        let _ = writeln!(o, "{:<10}Summary: {}", "", s.trim());
    }
    row(&mut o, "Revisions", &t.plan_revisions.len().to_string());
    for r in &t.plan_revisions {
        let decided = match (&r.decision, &r.decided_by, r.decided_at_ms) {
            (Some(d), Some(by), Some(at)) => format!(
                "{d} by {by} at {}{}",
                format_ts(at),
                r.comment
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default()
            ),
            _ => "waiting for approval".into(),
        };
        let _ = writeln!(
            o,
            "{:<10}  {}. {} — {} step{} — {decided}",
            "",
            r.number,
            format_ts(r.created_at_ms),
            r.steps.len(),
            if r.steps.len() == 1 { "" } else { "s" }
        );
    }
    if t.approvals.is_empty() {
        row(&mut o, "Approvals", "none yet");
    } else {
        row(&mut o, "Approvals", &t.approvals.len().to_string());
        for a in &t.approvals {
            let _ = writeln!(
                o,
                "{:<10}  {} by {} at {} (revision {}){}",
                "",
                a.action.past(),
                a.actor,
                format_ts(a.at_ms),
                a.revision,
                a.comment
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default()
            );
        }
    }
    o
}
