//! Human-readable output: task tables, `show`, and the event log.

use errand_core::{
    Attempt, AttemptReview, CheckResult, DiffStats, Event, EventKind, OutputStream, Task,
    TestCounts, Verdict, format_ts,
};
use std::fmt::Write as _;
use std::io::Write as _;

pub fn short_sha(s: &str) -> &str {
    &s[..s.len().min(10)]
}

fn ago(ms: i64) -> String {
    let secs = ((errand_core::now_ms() - ms).max(0) / 1000) as u64;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

fn secs(ms: i64) -> String {
    format!("{:.1}s", ms.max(0) as f64 / 1000.0)
}

pub fn task_table(tasks: &[Task]) -> String {
    if tasks.is_empty() {
        return "no tasks yet; create one with: errand run \"describe the change\" --repo PATH\n"
            .into();
    }
    let mut out = format!(
        "{:<10} {:<18} {:<10} {:<12} {}\n",
        "ID", "STATUS", "CHANGES", "CREATED", "TITLE"
    );
    for t in tasks {
        let changes = t
            .result_attempt()
            .and_then(|a| a.diff_stats.as_ref())
            .map(|s| format!("+{} -{}", s.insertions, s.deletions))
            .unwrap_or_else(|| "-".into());
        let title: String = t.title.chars().take(60).collect();
        let _ = writeln!(
            out,
            "{:<10} {:<18} {:<10} {:<12} {}",
            t.short_id,
            t.status.as_str(),
            changes,
            ago(t.created_at_ms),
            title
        );
    }
    out
}

pub fn diffstat(s: &DiffStats) -> String {
    let mut out = String::new();
    for f in &s.files {
        match (f.insertions, f.deletions) {
            (Some(i), Some(d)) => {
                let _ = writeln!(out, " {} | +{i} -{d}", f.path);
            }
            _ => {
                let _ = writeln!(out, " {} | binary", f.path);
            }
        }
    }
    let _ = writeln!(
        out,
        " {} file{} changed, {} insertion{}(+), {} deletion{}(-)",
        s.files_changed,
        if s.files_changed == 1 { "" } else { "s" },
        s.insertions,
        if s.insertions == 1 { "" } else { "s" },
        s.deletions,
        if s.deletions == 1 { "" } else { "s" }
    );
    out
}

pub fn show(t: &Task) -> String {
    let mut o = String::new();
    let row = |o: &mut String, k: &str, v: &str| {
        let _ = writeln!(o, "{k:<10}{v}");
    };
    row(&mut o, "Task", &format!("{} ({})", t.short_id, t.id));
    row(&mut o, "Title", &t.title);
    let mut status = t.status.to_string();
    if let Some(e) = &t.error {
        status.push_str(&format!(" — {e}"));
    }
    row(&mut o, "Status", &status);
    row(&mut o, "Repo", &t.repo);
    row(
        &mut o,
        "Base",
        &format!("{} @ {}", t.base_ref, short_sha(&t.base_commit)),
    );
    if let Some(env) = &t.environment.name {
        row(&mut o, "Env", env);
    }
    let scripted = if t.model.starts_with("scripted:") {
        " (scripted playback, not a real model)"
    } else {
        ""
    };
    row(&mut o, "Model", &format!("{}{scripted}", t.model));
    row(
        &mut o,
        "Created",
        &format!(
            "{} ({}) by {} via {}",
            format_ts(t.created_at_ms),
            ago(t.created_at_ms),
            t.created_by,
            t.trigger
        ),
    );
    if let Some(r) = &t.review_model {
        row(
            &mut o,
            "Reviewer",
            &format!(
                "{r} (findings go back to the agent up to {} time{})",
                t.max_review_rounds,
                if t.max_review_rounds == 1 { "" } else { "s" }
            ),
        );
    }
    if t.attempts.len() > 1 {
        let total: f64 = t.attempts.iter().map(|a| a.usage.cost_usd).sum();
        row(&mut o, "Cost", &format!("{} (all attempts)", usd(total)));
        row(
            &mut o,
            "Attempts",
            &format!("{} (best of {})", t.attempts.len(), t.attempts.len()),
        );
        if let Some(r) = t.result_attempt() {
            row(&mut o, "Result", &result_line(t, r));
        }
    }
    let b = &t.environment.budget;
    let mut limits = Vec::new();
    if let Some(n) = b.max_turns {
        limits.push(format!("{n} turns"));
    }
    if let Some(n) = b.max_tokens {
        limits.push(format!("{n} tokens"));
    }
    if let Some(c) = b.max_cost_usd {
        limits.push(format!("${c:.2}"));
    }
    if let Some(s) = b.max_time_secs {
        limits.push(format!("{s}s"));
    }
    if !limits.is_empty() {
        row(&mut o, "Budget", &limits.join(", "));
    }
    o.push_str(&crate::plan_cmd::show_plan(t));
    let result = t.result_attempt().map(|a| a.id.clone());
    for a in &t.attempts {
        if t.attempts.len() > 1 {
            let _ = writeln!(
                o,
                "\nAttempt {} — {}{}{}",
                a.number,
                a.status,
                a.rank.map(|r| format!(" — rank {r}")).unwrap_or_default(),
                if result.as_deref() == Some(a.id.as_str()) {
                    " — the task's result"
                } else {
                    ""
                }
            );
            row(&mut o, "Model", &a.model);
        }
        row(&mut o, "Branch", &a.branch);
        if let Some(h) = &a.head_commit {
            row(&mut o, "Commit", short_sha(h));
        }
        let mut timing = String::new();
        if let Some(s) = a.started_at_ms {
            timing.push_str(&format!("queued {}", secs(s - t.created_at_ms)));
            match a.finished_at_ms {
                Some(f) => timing.push_str(&format!(", ran {}", secs(f - s))),
                None if a.status == errand_core::Status::AwaitingApproval => {
                    timing.push_str(", planned; waiting for approval")
                }
                None => timing.push_str(&format!(
                    ", running for {}",
                    secs(errand_core::now_ms() - s)
                )),
            }
        } else {
            timing.push_str("waiting for a worker");
        }
        row(&mut o, "Timing", &timing);
        let runs = if a.runs <= 1 {
            format!("{} (from {})", a.runs.max(0), a.resumed_from)
        } else if a.resumed_from == "followup" {
            format!(
                "{} — run {} is a follow-up on the branch head",
                a.runs, a.runs
            )
        } else if a.resumed_from == "plan" {
            let what = match t.approvals.last().map(|d| d.action) {
                Some(errand_core::PlanAction::Approve) => "implements the approved plan",
                _ => "revises the plan",
            };
            format!("{} — run {} {what}", a.runs, a.runs)
        } else {
            format!(
                "{} — run {} restarted from {}{}",
                a.runs,
                a.runs,
                a.resumed_from,
                a.restart_reason
                    .as_ref()
                    .map(|r| format!(" after: {r}"))
                    .unwrap_or_default()
            )
        };
        row(&mut o, "Runs", &runs);
        let setup = match (&a.setup, &t.environment.setup) {
            (Some(info), _) => info.summary(t.environment.maintenance.as_deref()),
            (None, Some(_)) => "not run yet".to_string(),
            (None, None) => "none".to_string(),
        };
        row(&mut o, "Setup", &setup);
        row(
            &mut o,
            "Usage",
            &format!(
                "{} turn{}, {} input ({} cached) / {} output tokens{}",
                a.turns,
                if a.turns == 1 { "" } else { "s" },
                a.usage.input_tokens,
                a.usage.cached_input_tokens,
                a.usage.output_tokens,
                if scripted.is_empty() || a.usage.total() > 0 {
                    ""
                } else {
                    " (scripted: no tokens)"
                }
            ),
        );
        row(&mut o, "Cost", &usd(a.usage.cost_usd));
        if let Some(d) = &a.delivery {
            row(&mut o, "Delivery", &d.summary());
        }
        match &a.diff_stats {
            Some(s) if s.files_changed > 0 => {
                row(
                    &mut o,
                    "Diff",
                    &format!(
                        "{} file(s), +{} -{}",
                        s.files_changed, s.insertions, s.deletions
                    ),
                );
                for f in &s.files {
                    let ch = match (f.insertions, f.deletions) {
                        (Some(i), Some(d)) => format!("+{i} -{d}"),
                        _ => "binary".into(),
                    };
                    let _ = writeln!(o, "{:<10}  {} {}", "", f.path, ch);
                }
            }
            Some(_) => row(&mut o, "Diff", "no changes"),
            None => row(&mut o, "Diff", "(not yet)"),
        }
        if a.checks.is_empty() {
            row(&mut o, "Checks", "none configured");
        } else {
            row(&mut o, "Checks", "");
            o.push_str(&checks_table(&a.checks));
        }
        if let Some(r) = &a.review {
            row(&mut o, "Review", &review_headline(r));
            o.push_str(&review_rounds(r));
        }
        if let Some(s) = &a.summary {
            row(&mut o, "Summary", s.trim());
        }
        if let Some(e) = &a.error {
            row(&mut o, "Error", e);
        }
        if let Some(w) = &a.active_worker {
            row(&mut o, "Worker", w);
        }
    }
    o
}

/// `attempt 2 (ranked first)` or `attempt 2 (picked by bob 3m ago; ranked 2)`.
fn result_line(t: &Task, r: &Attempt) -> String {
    let rank = r
        .rank
        .map(|n| format!("ranked {n}"))
        .unwrap_or_else(|| "not ranked yet".into());
    match &t.picked {
        Some(p) if p.attempt_id == r.id => format!(
            "attempt {} (picked by {} {}; {rank}) — errand compare {}",
            r.number,
            p.by,
            ago(p.at_ms),
            t.short_id
        ),
        _ => format!(
            "attempt {} ({rank}) — errand compare {}",
            r.number, t.short_id
        ),
    }
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Approve => "approve",
        Verdict::ChangesNeeded => "changes needed",
    }
}

/// `approve (anthropic:claude-opus-4-1, 2 rounds)` or `no verdict — why`.
pub fn review_headline(r: &AttemptReview) -> String {
    match (&r.error, r.verdict) {
        (Some(e), _) => format!("no verdict from {} — {e}", r.model),
        (None, Some(v)) => format!(
            "{} ({}, {} round{})",
            verdict_word(v),
            r.model,
            r.rounds.len(),
            if r.rounds.len() == 1 { "" } else { "s" }
        ),
        (None, None) => format!("not reviewed ({})", r.model),
    }
}

/// Each round's verdict, summary and findings, indented under the `Review` row.
fn review_rounds(r: &AttemptReview) -> String {
    let mut o = String::new();
    for round in &r.rounds {
        let _ = writeln!(
            o,
            "{:<10}  round {}: {} — {}",
            "",
            round.round,
            verdict_word(round.verdict),
            oneline(round.summary.trim(), 200)
        );
        for f in &round.findings {
            let _ = writeln!(
                o,
                "{:<10}    {} {}: {}",
                "",
                f.severity.as_str(),
                f.location(),
                oneline(f.message.trim(), 200)
            );
        }
    }
    o
}

/// One line per status change of an attempt, for `run --follow` of a best-of-N task.
pub fn attempt_line(a: &Attempt) -> String {
    let mut s = format!("attempt {} ({}): {}", a.number, a.model, a.status);
    if a.status.is_terminal() {
        let t = errand_core::bestof::CheckTally::of(a);
        if t.total > 0 {
            s.push_str(&format!(" — checks {}/{} passed", t.passed, t.total));
        }
        if let Some(d) = &a.diff_stats {
            s.push_str(&format!(", +{} -{}", d.insertions, d.deletions));
        }
        if let Some(v) = errand_core::bestof::verdict(a) {
            s.push_str(&format!(", review: {}", verdict_word(v)));
        }
        if let Some(e) = &a.error {
            s.push_str(&format!(" — {}", oneline(e, 160)));
        }
    }
    s
}

/// The model's name cut to `max` characters, keeping its end (where scripted paths and model
/// names differ).
fn tail(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        s.to_string()
    } else {
        let keep: String = s.chars().skip(n - (max - 1)).collect();
        format!("…{keep}")
    }
}

fn attempt_secs(a: &Attempt) -> Option<i64> {
    match (a.started_at_ms, a.finished_at_ms) {
        (Some(s), Some(f)) => Some(f - s),
        (Some(s), None) if !a.status.is_terminal() => Some(errand_core::now_ms() - s),
        _ => None,
    }
}

/// `errand compare`: the attempts side by side; `*` marks the task's result.
pub fn compare(t: &Task) -> String {
    let result = t.result_attempt().map(|a| a.id.clone());
    let model_w = t
        .attempts
        .iter()
        .map(|a| a.model.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, 32);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "  {:>2}  {:<model_w$}  {:<10} {:>6} {:>11}  {:<14} {:>13} {:>5} {:>8} {:>7} {:>4}",
        "#",
        "MODEL",
        "STATUS",
        "CHECKS",
        "TESTS",
        "VERDICT",
        "DIFF",
        "FILES",
        "COST",
        "TIME",
        "RANK"
    );
    for a in &t.attempts {
        let tally = errand_core::bestof::CheckTally::of(a);
        let checks = if tally.total == 0 {
            "-".to_string()
        } else {
            format!("{}/{}", tally.passed, tally.total)
        };
        let tests = if tally.has_tests {
            format!(
                "{}/{}",
                tally.tests_passed,
                tally.tests_passed + tally.tests_failed + tally.tests_skipped
            )
        } else {
            "-".to_string()
        };
        let verdict = match &a.review {
            None => "-".to_string(),
            Some(r) if r.error.is_some() => "no verdict".to_string(),
            Some(r) => r
                .verdict
                .map(|v| verdict_word(v).to_string())
                .unwrap_or_else(|| "-".into()),
        };
        let (diff, files) = match &a.diff_stats {
            Some(d) => (
                format!("+{} -{}", d.insertions, d.deletions),
                d.files_changed.to_string(),
            ),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            o,
            "{} {:>2}  {:<model_w$}  {:<10} {:>6} {:>11}  {:<14} {:>13} {:>5} {:>8} {:>7} {:>4}",
            if result.as_deref() == Some(a.id.as_str()) {
                "*"
            } else {
                " "
            },
            a.number,
            tail(&a.model, model_w),
            a.status.as_str(),
            checks,
            tests,
            verdict,
            diff,
            files,
            usd(a.usage.cost_usd),
            attempt_secs(a).map(secs).unwrap_or_else(|| "-".into()),
            a.rank.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
        );
    }
    if let Some(r) = t.result_attempt() {
        let _ = writeln!(
            o,
            "* the task's result: {}",
            match &t.picked {
                Some(p) if p.attempt_id == r.id =>
                    format!("attempt {}, picked by {} {}", r.number, p.by, ago(p.at_ms)),
                _ if r.rank.is_some() => format!("attempt {}, ranked first", r.number),
                _ => format!("attempt {} (none has ended yet)", r.number),
            }
        );
    }
    o
}

/// `errand compare --json`.
pub fn compare_json(t: &Task) -> serde_json::Value {
    let result = t.result_attempt().map(|a| a.id.clone());
    let attempts: Vec<serde_json::Value> = t
        .attempts
        .iter()
        .map(|a| {
            let tally = errand_core::bestof::CheckTally::of(a);
            serde_json::json!({
                "attempt": a.number,
                "id": a.id,
                "model": a.model,
                "status": a.status,
                "branch": a.branch,
                "checks": {"passed": tally.passed, "total": tally.total},
                "tests": tally.has_tests.then(|| serde_json::json!({
                    "passed": tally.tests_passed,
                    "failed": tally.tests_failed,
                    "skipped": tally.tests_skipped,
                })),
                "verdict": errand_core::bestof::verdict(a),
                "review_error": a.review.as_ref().and_then(|r| r.error.clone()),
                "findings": a.review.as_ref().and_then(|r| r.last()).map(|r| r.findings.len()),
                "diff": a.diff_stats.as_ref().map(|d| serde_json::json!({
                    "insertions": d.insertions,
                    "deletions": d.deletions,
                    "files": d.files_changed,
                })),
                "cost_usd": a.usage.cost_usd,
                "duration_ms": attempt_secs(a),
                "rank": a.rank,
                "selected": result.as_deref() == Some(a.id.as_str()),
            })
        })
        .collect();
    serde_json::json!({
        "task": t.id,
        "selected_attempt": t.result_attempt().map(|a| a.number),
        "picked": t.picked,
        "attempts": attempts,
    })
}

/// The checks of an attempt: name, exit code, duration, test counts and where they come
/// from, and the command.
pub fn checks_table(checks: &[CheckResult]) -> String {
    let name_w = checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(4, 24);
    let source_w = checks
        .iter()
        .filter_map(|c| c.tests.as_ref().map(|t| t.source.chars().count()))
        .max()
        .unwrap_or(0)
        .max(6);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "    {:<name_w$} {:>4} {:>7} {:>6} {:>6} {:>7}  {:<source_w$}  COMMAND",
        "NAME", "EXIT", "TIME", "PASSED", "FAILED", "SKIPPED", "TESTS"
    );
    for c in checks {
        let name: String = c.name.chars().take(name_w).collect();
        let (p, f, s, source) = match &c.tests {
            Some(t) => (
                t.passed.to_string(),
                t.failed.to_string(),
                t.skipped.to_string(),
                t.source.as_str(),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-"),
        };
        let _ = writeln!(
            o,
            "  {} {name:<name_w$} {:>4} {:>7} {p:>6} {f:>6} {s:>7}  {source:<source_w$}  {}",
            if c.passed { "✓" } else { "✗" },
            c.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            secs(c.duration_ms as i64),
            oneline(&c.command, 100)
        );
    }
    o
}

/// `5 passed, 1 failed, 2 skipped (cargo)`.
pub fn test_counts(t: &TestCounts) -> String {
    format!(
        "{} passed, {} failed, {} skipped ({})",
        t.passed, t.failed, t.skipped, t.source
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMode {
    Human,
    Json,
    /// Only the egress proxy's decisions (`errand logs --net`), one line each, and a total.
    NetHuman,
    /// Only the egress proxy's decisions, as JSON lines.
    NetJson,
}

/// Totals of the network decisions printed so far.
#[derive(Default)]
struct NetTotals {
    allowed: u64,
    denied: u64,
    up: u64,
    down: u64,
}

/// Prints events one by one; keeps track of partial output lines.
pub struct Renderer {
    mode: LogMode,
    /// Whether the last printed output chunk ended mid-line.
    open_line: bool,
    net: NetTotals,
}

impl Renderer {
    pub fn new(mode: LogMode) -> Self {
        Renderer {
            mode,
            open_line: false,
            net: NetTotals::default(),
        }
    }

    pub fn flush(&mut self) {
        if self.open_line {
            println!();
            self.open_line = false;
        }
        if self.mode == LogMode::NetHuman {
            let n = &self.net;
            if n.allowed + n.denied == 0 {
                println!("no network requests");
            } else {
                println!(
                    "{} requests: {} allowed, {} denied; {} up, {} down",
                    n.allowed + n.denied,
                    n.allowed,
                    n.denied,
                    bytes(n.up),
                    bytes(n.down)
                );
            }
            self.net = NetTotals::default();
        }
        let _ = std::io::stdout().flush();
    }

    pub fn print(&mut self, e: &Event) {
        if matches!(self.mode, LogMode::NetHuman | LogMode::NetJson) {
            let EventKind::Net {
                allowed,
                bytes_up,
                bytes_down,
                ..
            } = &e.kind
            else {
                return;
            };
            if self.mode == LogMode::NetJson {
                if let Ok(s) = serde_json::to_string(e) {
                    println!("{s}");
                }
                return;
            }
            if *allowed {
                self.net.allowed += 1;
            } else {
                self.net.denied += 1;
            }
            self.net.up += bytes_up;
            self.net.down += bytes_down;
            println!("{}", describe(&e.kind));
            return;
        }
        if self.mode == LogMode::Json {
            if let Ok(s) = serde_json::to_string(e) {
                println!("{s}");
            }
            return;
        }
        if let EventKind::Output { stream, data, .. } = &e.kind {
            let mut out = String::new();
            for piece in data.split_inclusive('\n') {
                if !self.open_line {
                    out.push_str(match (stream, e.rolled_back) {
                        (OutputStream::Stdout, false) => "      │ ",
                        (OutputStream::Stderr, false) => "      ┃ ",
                        // Output of work that was rolled back to a checkpoint.
                        (OutputStream::Stdout, true) => "    ↶ │ ",
                        (OutputStream::Stderr, true) => "    ↶ ┃ ",
                    });
                }
                out.push_str(piece);
                self.open_line = !piece.ends_with('\n');
            }
            print!("{out}");
            let _ = std::io::stdout().flush();
            return;
        }
        if self.open_line {
            println!();
            self.open_line = false;
        }
        let ts = format_ts(e.ts_ms);
        let clock = ts.get(11..23).unwrap_or(&ts);
        let mark = match (e.unisolated, e.rolled_back) {
            (true, true) => "[UNISOLATED] [rolled back] ",
            (true, false) => "[UNISOLATED] ",
            (false, true) => "[rolled back] ",
            (false, false) => "",
        };
        println!(
            "{clock} {:>4} {mark}{}",
            format!("#{}", e.seq),
            describe(&e.kind)
        );
        let _ = std::io::stdout().flush();
    }
}

fn oneline(s: &str, max: usize) -> String {
    let flat = s.replace('\n', " ⏎ ");
    if flat.chars().count() > max {
        flat.chars().take(max).collect::<String>() + "…"
    } else {
        flat
    }
}

pub fn describe(k: &EventKind) -> String {
    match k {
        EventKind::Claimed {
            worker,
            sandbox,
            resumed_from,
            note,
            ..
        } => format!(
            "claimed by {worker} (from {resumed_from}){} · {sandbox}",
            note.as_ref().map(|n| format!(" — {n}")).unwrap_or_default()
        ),
        EventKind::Status { from, to, reason } => format!(
            "status {from} → {to}{}",
            reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
        EventKind::Notice { message } => format!("· {message}"),
        EventKind::ModelTurn {
            model,
            scripted,
            turn,
            text,
            usage,
            total_cost_usd,
            ..
        } => format!(
            "model {model}{} turn {turn}{}{}",
            if *scripted { " [SCRIPTED]" } else { "" },
            if usage.total() > 0 {
                format!(
                    " ({} in, {} cached / {} out tokens; {} so far)",
                    usage.input_tokens,
                    usage.cached_input_tokens,
                    usage.output_tokens,
                    usd(*total_cost_usd)
                )
            } else {
                String::new()
            },
            text.as_ref()
                .map(|t| format!(": {}", oneline(t, 200)))
                .unwrap_or_default()
        ),
        EventKind::ToolCall {
            name, arguments, ..
        } => {
            format!("tool {name} {}", oneline(&arguments.to_string(), 200))
        }
        EventKind::ToolResult {
            name,
            ok,
            output,
            truncated,
            ..
        } => format!(
            "  ↳ {name} {}{}: {}",
            if *ok { "ok" } else { "error" },
            if *truncated { " (cut)" } else { "" },
            oneline(output, 160)
        ),
        EventKind::CommandStarted {
            command, workdir, ..
        } => {
            if workdir == "." {
                format!("$ {}", oneline(command, 300))
            } else {
                format!("$ (in {workdir}) {}", oneline(command, 300))
            }
        }
        EventKind::Output { data, .. } => oneline(data, 200),
        EventKind::CommandFinished {
            exit_code,
            signal,
            duration_ms,
            killed_by,
            ..
        } => {
            let how = match (killed_by, exit_code, signal) {
                (Some(k), _, _) => format!("killed ({k})"),
                (None, Some(c), _) => format!("exit {c}"),
                (None, None, Some(s)) => format!("signal {s}"),
                _ => "ended".into(),
            };
            format!("  ↳ {how} in {:.2}s", *duration_ms as f64 / 1000.0)
        }
        EventKind::FileChange { path, change } => format!("file {change}: {path}"),
        EventKind::Net {
            phase,
            allowed,
            host,
            port,
            method,
            addr,
            reason,
            bytes_up,
            bytes_down,
            duration_ms,
        } => format!(
            "net [{phase}] {} {}{host}:{port}{}{} — {} up / {} down in {:.2}s",
            if *allowed { "ALLOWED" } else { "DENIED" },
            method.as_ref().map(|m| format!("{m} ")).unwrap_or_default(),
            addr.as_ref().map(|a| format!(" ({a})")).unwrap_or_default(),
            reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
            bytes(*bytes_up),
            bytes(*bytes_down),
            *duration_ms as f64 / 1000.0
        ),
        EventKind::CheckResult {
            name,
            exit_code,
            duration_ms,
            passed,
            tests,
            ..
        } => format!(
            "check {name}: {} (exit {}, {:.2}s){}",
            if *passed { "PASSED" } else { "FAILED" },
            exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            *duration_ms as f64 / 1000.0,
            tests
                .as_ref()
                .map(|t| format!(" — tests: {}", test_counts(t)))
                .unwrap_or_default()
        ),
        EventKind::Committed {
            branch,
            commit,
            files_changed,
            insertions,
            deletions,
        } => format!(
            "committed {} on {branch}: {files_changed} file(s), +{insertions} -{deletions}",
            short_sha(commit)
        ),
        EventKind::Stuck { reason, action } => match action.as_str() {
            "stopped" => format!("STUCK, stopped: {reason}"),
            _ => format!("stuck? warned the agent: {reason}"),
        },
        EventKind::Error { message } => format!("ERROR {message}"),
        EventKind::GatewayRequest {
            upstream,
            model,
            path,
            status,
            usage,
            cost_usd,
            duration_ms,
            error,
        } => format!(
            "gateway {upstream}{} {path} → {status} ({} in, {} cached / {} out tokens, {}) in {:.2}s{}",
            model.as_ref().map(|m| format!(" {m}")).unwrap_or_default(),
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.output_tokens,
            usd(*cost_usd),
            *duration_ms as f64 / 1000.0,
            error
                .as_ref()
                .map(|e| format!(": {}", oneline(e, 200)))
                .unwrap_or_default()
        ),
        EventKind::Review {
            round,
            verdict,
            summary,
            findings,
        } => {
            let mut s = format!(
                "review round {round}: {} — {}",
                match verdict {
                    Verdict::Approve => "APPROVE",
                    Verdict::ChangesNeeded => "CHANGES NEEDED",
                },
                oneline(summary.trim(), 200)
            );
            for f in findings {
                s.push_str(&format!(
                    "\n                • {} {}: {}",
                    f.severity.as_str(),
                    f.location(),
                    oneline(f.message.trim(), 200)
                ));
            }
            s
        }
        EventKind::ModelRetry {
            model,
            retry,
            max_retries,
            delay_ms,
            error,
            ..
        } => format!(
            "· model {model} failed, retry {retry}/{max_retries} in {:.1}s: {}",
            *delay_ms as f64 / 1000.0,
            oneline(error, 200)
        ),
        EventKind::Compacted {
            removed_messages,
            kept_messages,
            tokens_before,
            tokens_after,
            ..
        } => format!(
            "· context compacted: {removed_messages} messages summarised, {kept_messages} kept; ~{tokens_before} → ~{tokens_after} tokens"
        ),
        EventKind::PlanProposed {
            revision, steps, ..
        } => {
            let mut s = format!(
                "plan revision {revision} proposed ({} step{}), waiting for approval:",
                steps.len(),
                if steps.len() == 1 { "" } else { "s" }
            );
            for (i, st) in steps.iter().enumerate() {
                s.push_str(&format!(" {}. {}", i + 1, oneline(&st.step, 60)));
            }
            s
        }
        EventKind::Approval {
            action,
            actor,
            comment,
            revision,
        } => format!(
            "plan revision {revision} {} by {actor}{}",
            action.past(),
            comment
                .as_ref()
                .map(|c| format!(": {}", oneline(c, 200)))
                .unwrap_or_default()
        ),
        EventKind::PlanUpdated { steps, .. } => {
            let mut s = String::from("plan:");
            for st in steps {
                let mark = match st.status.as_str() {
                    "completed" => "✓",
                    "in_progress" => "→",
                    _ => "·",
                };
                s.push_str(&format!(" {mark} {}", oneline(&st.step, 60)));
            }
            s
        }
    }
}

/// Dollars, with more digits for small amounts.
pub fn usd(v: f64) -> String {
    if v == 0.0 {
        "$0.00".into()
    } else if v < 0.01 {
        format!("${v:.4}")
    } else {
        format!("${v:.2}")
    }
}

/// `errand models`: providers, where keys come from, models with prices.
pub fn models(v: &serde_json::Value) -> String {
    let mut o = String::new();
    let providers = v["providers"].as_array().cloned().unwrap_or_default();
    for p in &providers {
        let key = match p["api_key_env"].as_str() {
            None => "no key needed".to_string(),
            Some(var) if p["key_set"].as_bool() == Some(true) => format!("key from ${var}"),
            Some(var) => format!("key: ${var} is not set"),
        };
        let _ = writeln!(
            o,
            "{:<12} {:<17} {}  ({}; {})",
            p["name"].as_str().unwrap_or_default(),
            p["kind"].as_str().unwrap_or_default(),
            p["base_url"].as_str().unwrap_or_default(),
            key,
            p["source"].as_str().unwrap_or_default()
        );
        for m in p["models"].as_array().cloned().unwrap_or_default() {
            let price = match (m["input"].as_f64(), m["output"].as_f64()) {
                (Some(i), Some(out)) => {
                    let cached = m["cached_input"]
                        .as_f64()
                        .map(|c| format!(", cached ${c}"))
                        .unwrap_or_default();
                    format!("${i} in{cached}, ${out} out per 1M tokens")
                }
                _ => "no price set".into(),
            };
            let window = m["context_window"]
                .as_u64()
                .map(|w| format!(", {}k context", w / 1000))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "  {}:{}  {price}{window}",
                p["name"].as_str().unwrap_or_default(),
                m["model"].as_str().unwrap_or_default()
            );
        }
    }
    match v["default_model"].as_str() {
        Some(m) => {
            let _ = writeln!(o, "\ndefault model: {m}");
        }
        None => {
            let _ = writeln!(
                o,
                "\nno default model: set default_model in errand.toml, or ANTHROPIC_API_KEY, OPENAI_API_KEY or GEMINI_API_KEY in the server's environment"
            );
        }
    }
    o
}

/// `errand models check`.
pub fn model_checks(results: &[serde_json::Value]) -> String {
    let mut o = String::new();
    if results.is_empty() {
        let _ = writeln!(
            o,
            "nothing to check: no provider has its key set (name one: errand models check PROVIDER)"
        );
    }
    for r in results {
        let model = r["model"].as_str().unwrap_or_default();
        let _ = writeln!(
            o,
            "{} {}{}  {}ms  {}",
            if r["ok"].as_bool() == Some(true) {
                "✓"
            } else {
                "✗"
            },
            r["provider"].as_str().unwrap_or_default(),
            if model.is_empty() {
                String::new()
            } else {
                format!(":{model}")
            },
            r["latency_ms"].as_u64().unwrap_or_default(),
            r["detail"].as_str().unwrap_or_default()
        );
    }
    o
}

/// A byte count for people: `512 B`, `3.4 KiB`, `12.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, exit: Option<i32>, tests: Option<TestCounts>) -> CheckResult {
        CheckResult {
            name: name.into(),
            command: format!("run {name}"),
            exit_code: exit,
            duration_ms: 1234,
            passed: exit == Some(0) && tests.as_ref().is_none_or(|t| t.failed == 0),
            tests,
        }
    }

    #[test]
    fn checks_table_has_counts_and_sources() {
        let t = checks_table(&[
            check(
                "tests",
                Some(0),
                Some(TestCounts {
                    passed: 41,
                    failed: 0,
                    skipped: 2,
                    source: "nextest".into(),
                }),
            ),
            check(
                "pytest",
                Some(0),
                Some(TestCounts {
                    passed: 3,
                    failed: 1,
                    skipped: 0,
                    source: "junit".into(),
                }),
            ),
            check("lint", None, None),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        for (line, needles) in lines.iter().zip([
            &[
                "NAME", "EXIT", "TIME", "PASSED", "FAILED", "SKIPPED", "TESTS", "COMMAND",
            ][..],
            &[
                "✓ tests",
                " 0 ",
                "1.2s",
                " 41 ",
                " 2 ",
                "nextest",
                "run tests",
            ][..],
            &["✗ pytest", " 3 ", " 1 ", "junit", "run pytest"][..],
            &["✗ lint", " - ", "run lint"][..],
        ]) {
            for n in needles {
                assert!(line.contains(n), "{n:?} not in {line:?}\n{t}");
            }
        }
        // Columns line up: every row has its command at the same place.
        let at = |l: &str, n: &str| l.chars().count() - l[l.find(n).unwrap_or(0)..].chars().count();
        assert_eq!(at(lines[0], "COMMAND"), at(lines[1], "run tests"));
        assert_eq!(at(lines[1], "run tests"), at(lines[3], "run lint"));
    }

    #[test]
    fn check_result_log_line_has_the_counts() {
        let e = EventKind::CheckResult {
            name: "tests".into(),
            command: "cargo test".into(),
            exit_code: Some(0),
            duration_ms: 1500,
            passed: false,
            tests: Some(TestCounts {
                passed: 5,
                failed: 1,
                skipped: 2,
                source: "cargo".into(),
            }),
        };
        assert_eq!(
            describe(&e),
            "check tests: FAILED (exit 0, 1.50s) — tests: 5 passed, 1 failed, 2 skipped (cargo)"
        );
    }
}
