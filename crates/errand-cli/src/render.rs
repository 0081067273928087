//! Human-readable output: task tables, `show`, and the event log.

use errand_core::{
    CheckResult, DiffStats, Event, EventKind, OutputStream, Task, TestCounts, format_ts,
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
    if t.attempts.len() > 1 {
        let total: f64 = t.attempts.iter().map(|a| a.usage.cost_usd).sum();
        row(&mut o, "Cost", &format!("{} (all attempts)", usd(total)));
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
    for a in &t.attempts {
        if t.attempts.len() > 1 {
            let _ = writeln!(o, "\nAttempt {} — {}", a.number, a.status);
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
}

/// Prints events one by one; keeps track of partial output lines.
pub struct Renderer {
    mode: LogMode,
    /// Whether the last printed output chunk ended mid-line.
    open_line: bool,
}

impl Renderer {
    pub fn new(mode: LogMode) -> Self {
        Renderer {
            mode,
            open_line: false,
        }
    }

    pub fn flush(&mut self) {
        if self.open_line {
            println!();
            self.open_line = false;
        }
        let _ = std::io::stdout().flush();
    }

    pub fn print(&mut self, e: &Event) {
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
            bytes_up,
            bytes_down,
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
