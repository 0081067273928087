//! The title and Markdown body of an attempt's pull request. Pure functions: no I/O.

use errand_core::{AttemptReview, CheckResult, DiffStats, Verdict};

/// Longest title kept, in characters (GitHub allows 256, GitLab 255; a draft prefix is added).
const MAX_TITLE: usize = 200;
/// Longest agent summary kept, in characters.
const MAX_SUMMARY: usize = 20_000;
/// Files listed in the changes table; the rest are counted.
const MAX_FILES: usize = 50;
/// Longest body, in characters (GitHub's limit is 65,536).
const MAX_BODY: usize = 60_000;

/// A pull request title from a task's title: its first non-empty line, whitespace collapsed,
/// at most 200 characters; `Errand changes` when there is nothing.
pub fn pr_title(task_title: &str) -> String {
    let line = task_title
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return "Errand changes".to_string();
    }
    truncate(&line, MAX_TITLE)
}

/// What goes in a pull request's body.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrBody<'a> {
    /// The agent's summary of its work (Markdown, kept as written).
    pub summary: Option<&'a str>,
    /// The checks the worker ran, in order.
    pub checks: &'a [CheckResult],
    pub diff: Option<&'a DiffStats>,
    /// What the attempt cost, in US dollars.
    pub cost_usd: Option<f64>,
    /// The attempt's log in the Errand server.
    pub log_url: Option<&'a str>,
    /// What the reviewer model said, round by round.
    pub review: Option<&'a AttemptReview>,
    /// Best-of-N: which attempt this is and how it became the result (one line).
    pub selection: Option<&'a str>,
}

impl PrBody<'_> {
    /// The Markdown body: summary, checks table, changes, cost and the log link.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("## Summary\n\n");
        match self.summary.map(str::trim).filter(|s| !s.is_empty()) {
            Some(s) => {
                out.push_str(&truncate(s, MAX_SUMMARY));
                out.push('\n');
            }
            None => out.push_str("_The agent left no summary._\n"),
        }
        if let Some(sel) = self.selection.map(str::trim).filter(|s| !s.is_empty()) {
            out.push_str(&format!("\n{}\n", truncate(sel, 1000)));
        }

        out.push_str("\n## Checks\n\n");
        if self.checks.is_empty() {
            out.push_str("_No checks were run._\n");
        } else {
            let failed = self.checks.iter().filter(|c| !c.passed).count();
            out.push_str(&checks_table(self.checks));
            out.push('\n');
            if failed == 0 {
                out.push_str(&format!(
                    "All {} passed (run by Errand, not reported by the agent).\n",
                    plural(self.checks.len(), "check")
                ));
            } else {
                out.push_str(&format!(
                    "**{failed} of {} failed** (run by Errand, not reported by the agent).\n",
                    plural(self.checks.len(), "check")
                ));
            }
        }

        if let Some(r) = self.review {
            out.push_str(&review_section(r));
        }

        if let Some(d) = self.diff {
            out.push_str("\n## Changes\n\n");
            out.push_str(&format!(
                "{} changed, +{} −{}\n",
                plural(d.files_changed as usize, "file"),
                d.insertions,
                d.deletions
            ));
            if !d.files.is_empty() {
                out.push_str("\n| File | Added | Removed |\n| --- | ---: | ---: |\n");
                for f in d.files.iter().take(MAX_FILES) {
                    let (a, r) = match (f.insertions, f.deletions) {
                        (Some(a), Some(r)) => (a.to_string(), r.to_string()),
                        _ => ("binary".to_string(), String::new()),
                    };
                    out.push_str(&format!("| {} | {a} | {r} |\n", code(&f.path)));
                }
                if d.files.len() > MAX_FILES {
                    let more = d.files.len() - MAX_FILES;
                    out.push_str(&format!(
                        "\n…and {more} more {}.\n",
                        if more == 1 { "file" } else { "files" }
                    ));
                }
            }
        }

        let mut footer = Vec::new();
        if let Some(c) = self.cost_usd.filter(|c| c.is_finite() && *c >= 0.0) {
            footer.push(format!("Cost: {}", format_usd(c)));
        }
        if let Some(u) = self.log_url.map(str::trim).filter(|u| !u.is_empty()) {
            footer.push(format!(
                "[Attempt log]({})",
                u.replace(' ', "%20").replace(')', "%29")
            ));
        }
        out.push_str("\n---\n");
        if !footer.is_empty() {
            out.push_str(&footer.join(" · "));
            out.push_str("\n\n");
        }
        out.push_str("<sub>Opened by Errand.</sub>\n");
        truncate(&out, MAX_BODY)
    }
}

/// Longest review summary or finding kept, in characters.
const MAX_REVIEW_TEXT: usize = 2_000;
/// Findings listed per round; the rest are counted.
const MAX_FINDINGS: usize = 30;

fn verdict_text(v: Verdict) -> &'static str {
    match v {
        Verdict::Approve => "approved",
        Verdict::ChangesNeeded => "changes needed",
    }
}

/// `## Review`: the final verdict, then each round's summary and findings.
fn review_section(r: &AttemptReview) -> String {
    let mut out = String::from("\n## Review\n\n");
    let rounds = r.rounds.len();
    match (&r.error, r.verdict) {
        (Some(e), _) => out.push_str(&format!(
            "**No verdict**: the reviewer `{}` gave no valid review ({}).\n",
            r.model,
            cell(&truncate(e, MAX_REVIEW_TEXT))
        )),
        (None, Some(v)) => out.push_str(&format!(
            "{} {} by the reviewer `{}` after {}.\n",
            if v == Verdict::Approve {
                "✅"
            } else {
                "⚠️"
            },
            match v {
                Verdict::Approve => "**Approved**",
                Verdict::ChangesNeeded => "**Changes needed**",
            },
            r.model,
            plural(rounds, "round")
        )),
        (None, None) => out.push_str(&format!("_Not reviewed by `{}`._\n", r.model)),
    }
    for round in &r.rounds {
        out.push_str(&format!(
            "\n**Round {}: {}.** {}\n",
            round.round,
            verdict_text(round.verdict),
            truncate(
                &round
                    .summary
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
                MAX_REVIEW_TEXT
            )
        ));
        if !round.findings.is_empty() {
            out.push('\n');
        }
        for f in round.findings.iter().take(MAX_FINDINGS) {
            out.push_str(&format!(
                "- {} {}: {}\n",
                f.severity.as_str(),
                code(&f.location()),
                truncate(
                    &f.message.split_whitespace().collect::<Vec<_>>().join(" "),
                    MAX_REVIEW_TEXT
                )
            ));
        }
        if round.findings.len() > MAX_FINDINGS {
            out.push_str(&format!(
                "- …and {} more\n",
                round.findings.len() - MAX_FINDINGS
            ));
        }
    }
    out
}

/// The checks table's column headers; [`check_cells`] gives one row's cells in this order.
/// To add a column (test counts, say), add its header here and its cell there.
pub const CHECK_COLUMNS: &[(&str, Align)] = &[
    ("Check", Align::Left),
    ("Command", Align::Left),
    ("Exit", Align::Right),
    ("Duration", Align::Right),
    ("Tests (passed / failed / skipped)", Align::Right),
    ("Result", Align::Left),
];

/// A column's alignment in a Markdown table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// One check's cells, already escaped for a Markdown table, in [`CHECK_COLUMNS`] order.
pub fn check_cells(c: &CheckResult) -> Vec<String> {
    vec![
        cell(&c.name),
        code(&c.command),
        c.exit_code
            .map_or_else(|| "—".to_string(), |e| e.to_string()),
        format_duration(c.duration_ms),
        c.tests.as_ref().map_or_else(
            || "—".to_string(),
            |t| {
                format!(
                    "{} / {} / {} ({})",
                    t.passed,
                    t.failed,
                    t.skipped,
                    cell(&t.source)
                )
            },
        ),
        if c.passed {
            "✅ passed".to_string()
        } else {
            "❌ failed".to_string()
        },
    ]
}

/// The checks as a Markdown table.
pub fn checks_table(checks: &[CheckResult]) -> String {
    let mut out = String::from("|");
    for (h, _) in CHECK_COLUMNS {
        out.push_str(&format!(" {h} |"));
    }
    out.push_str("\n|");
    for (_, a) in CHECK_COLUMNS {
        out.push_str(match a {
            Align::Left => " --- |",
            Align::Right => " ---: |",
        });
    }
    out.push('\n');
    for c in checks {
        out.push('|');
        for v in check_cells(c) {
            out.push_str(&format!(" {v} |"));
        }
        out.push('\n');
    }
    out
}

/// `850 ms`, `12.3 s`, `2 min 5 s`, `1 h 2 min`.
pub fn format_duration(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{} h {} min", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// `$1.23`, or four decimals under a dollar (`$0.0123`).
fn format_usd(c: f64) -> String {
    if c >= 1.0 {
        format!("${c:.2}")
    } else {
        format!("${c:.4}")
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Text safe inside a table cell: one line, pipes escaped.
fn cell(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// A code span inside a table cell, fenced with more backticks than the text holds.
fn code(s: &str) -> String {
    let text = cell(s);
    if text.is_empty() {
        return String::new();
    }
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    if longest > 0 {
        format!("{fence} {text} {fence}")
    } else {
        format!("{fence}{text}{fence}")
    }
}

/// At most `max` characters, with `…` when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use errand_core::FileStat;

    fn check(name: &str, command: &str, exit: Option<i32>, ms: u64) -> CheckResult {
        CheckResult {
            name: name.into(),
            command: command.into(),
            exit_code: exit,
            duration_ms: ms,
            passed: exit == Some(0),
            tests: None,
        }
    }

    #[test]
    fn titles() {
        assert_eq!(pr_title("  Fix the   cart\nmore text"), "Fix the cart");
        assert_eq!(pr_title("\n\n"), "Errand changes");
        let long = "x".repeat(500);
        let t = pr_title(&long);
        assert_eq!(t.chars().count(), 200);
        assert!(t.ends_with('…'));
    }

    #[test]
    fn full_body() {
        let mut with_counts = check("tests", "cargo test", Some(0), 12_345);
        with_counts.tests = Some(errand_core::TestCounts {
            passed: 41,
            failed: 0,
            skipped: 2,
            source: "cargo".into(),
        });
        let checks = [
            with_counts,
            check("lint", "cargo clippy | tee out", Some(101), 850),
            check("slow", "sleep 999", None, 125_000),
        ];
        let diff = DiffStats {
            files_changed: 2,
            insertions: 10,
            deletions: 3,
            files: vec![
                FileStat {
                    path: "src/cart.rs".into(),
                    insertions: Some(10),
                    deletions: Some(3),
                },
                FileStat {
                    path: "logo.png".into(),
                    insertions: None,
                    deletions: None,
                },
            ],
        };
        let body = PrBody {
            summary: Some("Handled the empty cart.\n\n- added a test"),
            checks: &checks,
            diff: Some(&diff),
            cost_usd: Some(0.01234),
            log_url: Some("http://errand.local:8080/tasks/abc/attempts/1/log"),
            ..Default::default()
        }
        .render();
        let expected = "\
## Summary

Handled the empty cart.

- added a test

## Checks

| Check | Command | Exit | Duration | Tests (passed / failed / skipped) | Result |
| --- | --- | ---: | ---: | ---: | --- |
| tests | `cargo test` | 0 | 12.3 s | 41 / 0 / 2 (cargo) | ✅ passed |
| lint | `cargo clippy \\| tee out` | 101 | 850 ms | — | ❌ failed |
| slow | `sleep 999` | — | 2 min 5 s | — | ❌ failed |

**2 of 3 checks failed** (run by Errand, not reported by the agent).

## Changes

2 files changed, +10 −3

| File | Added | Removed |
| --- | ---: | ---: |
| `src/cart.rs` | 10 | 3 |
| `logo.png` | binary |  |

---
Cost: $0.0123 · [Attempt log](http://errand.local:8080/tasks/abc/attempts/1/log)

<sub>Opened by Errand.</sub>
";
        assert_eq!(body, expected);
    }

    #[test]
    fn review_and_selection() {
        use errand_core::{Finding, Review, Severity};
        let review = AttemptReview {
            model: "anthropic:claude-opus-4-1".into(),
            verdict: Some(Verdict::Approve),
            rounds: vec![
                Review {
                    round: 1,
                    verdict: Verdict::ChangesNeeded,
                    summary: "Only half\nof it.".into(),
                    findings: vec![Finding {
                        file: "src/lib.txt".into(),
                        line: Some(3),
                        severity: Severity::Error,
                        message: "three is still lower-case".into(),
                    }],
                },
                Review {
                    round: 2,
                    verdict: Verdict::Approve,
                    summary: "Looks right.".into(),
                    findings: vec![],
                },
            ],
            error: None,
        };
        let body = PrBody {
            summary: Some("Did it."),
            review: Some(&review),
            selection: Some("Best of 3: attempt 2, picked by bob (ranked 2)."),
            ..Default::default()
        }
        .render();
        let expected_part = "\
## Review

✅ **Approved** by the reviewer `anthropic:claude-opus-4-1` after 2 rounds.

**Round 1: changes needed.** Only half of it.

- error `src/lib.txt:3`: three is still lower-case

**Round 2: approved.** Looks right.
";
        assert!(body.contains(expected_part), "{body}");
        assert!(
            body.contains("Did it.\n\nBest of 3: attempt 2, picked by bob (ranked 2).\n"),
            "{body}"
        );
        let failed = AttemptReview {
            model: "m".into(),
            error: Some("no submit_review call".into()),
            ..Default::default()
        };
        let body = PrBody {
            review: Some(&failed),
            ..Default::default()
        }
        .render();
        assert!(
            body.contains(
                "**No verdict**: the reviewer `m` gave no valid review (no submit_review call)."
            ),
            "{body}"
        );
    }

    #[test]
    fn minimal_body() {
        let body = PrBody::default().render();
        assert!(body.contains("_The agent left no summary._"));
        assert!(body.contains("_No checks were run._"));
        assert!(!body.contains("## Changes"));
        assert!(!body.contains("Cost:"));
        assert!(body.ends_with("<sub>Opened by Errand.</sub>\n"));
    }

    #[test]
    fn all_passed_and_costly() {
        let checks = [check("t", "make test", Some(0), 5)];
        let body = PrBody {
            checks: &checks,
            cost_usd: Some(2.5),
            ..Default::default()
        }
        .render();
        assert!(body.contains("All 1 check passed"), "{body}");
        assert!(body.contains("Cost: $2.50"), "{body}");
    }

    #[test]
    fn cells_are_escaped() {
        assert_eq!(code("echo `a` b"), "`` echo `a` b ``");
        assert_eq!(cell("a |\nb"), "a \\| b");
        assert_eq!(
            check_cells(&check("n", "c", Some(0), 1)).len(),
            CHECK_COLUMNS.len()
        );
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(0), "0 ms");
        assert_eq!(format_duration(1_000), "1.0 s");
        assert_eq!(format_duration(61_500), "1 min 1 s");
        assert_eq!(format_duration(3_720_000), "1 h 2 min");
    }

    #[test]
    fn long_parts_are_capped() {
        let many: Vec<FileStat> = (0..60)
            .map(|i| FileStat {
                path: format!("f{i}"),
                insertions: Some(1),
                deletions: Some(0),
            })
            .collect();
        let diff = DiffStats {
            files_changed: 60,
            insertions: 60,
            deletions: 0,
            files: many,
        };
        let summary = "y".repeat(100_000);
        let body = PrBody {
            summary: Some(&summary),
            diff: Some(&diff),
            ..Default::default()
        }
        .render();
        assert!(body.contains("…and 10 more files."));
        assert!(!body.contains("`f50`"));
        assert!(body.chars().count() <= MAX_BODY);
    }
}
