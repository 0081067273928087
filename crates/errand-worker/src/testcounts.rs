//! Test counts from what a check printed, or from the JUnit XML it wrote. Pure functions: no
//! I/O (the worker reads the files and collects the output).
//!
//! [`parse_output`] strips ANSI escape sequences and recognises the plain output of:
//!
//! - **cargo test** (libtest): every `test result: ok. 3 passed; 1 failed; 2 ignored; …` line
//!   at the start of a line, summed over the run's test binaries (unit tests, each integration
//!   test, doc tests). Ignored tests count as skipped; filtered-out and measured ones are not
//!   counted.
//! - **cargo nextest**: the `Summary [ 1.2s] 6 tests run: 4 passed (1 flaky), 1 failed,
//!   1 timed out, 2 skipped` line. Flaky tests that passed on a retry count as passed; failed,
//!   timed out and exec-failed tests as failed; tests a cancelled run never started (the `N` of
//!   `3/N tests run`) are not counted. When a nextest summary is present, libtest lines (nextest
//!   shows them indented in a failing test's output) are not counted again.
//! - **pytest**: the final `== 2 failed, 4 passed, 1 skipped, 1 xfailed, 1 xpassed, 1 error in
//!   0.13s ==` line (with or without the `=` rule, as `-q` prints it). xpassed counts as passed,
//!   errors as failed, xfailed as skipped; deselected tests and warnings are not counted.
//! - **go test**: with `-v`, the `--- PASS:`/`--- FAIL:`/`--- SKIP:` lines (subtests too); with
//!   `-json`, the `pass`/`fail`/`skip` actions of tests. A test with subtests is counted through
//!   its subtests only (so a failing subtest is one failure, not two). Plain `go test` prints
//!   only failing tests and `ok`/`FAIL` per package, so it gives no counts: `None` unless the
//!   output has `=== RUN` lines (`-v`) or `-json` events. Use `-v`, `-json`, or a JUnit report
//!   for counts.
//! - **Jest**: `Tests:       1 failed, 1 skipped, 1 todo, 4 passed, 7 total` (todo counts as
//!   skipped).
//! - **Vitest**: `Tests  1 failed | 4 passed | 1 skipped | 1 todo (7)` (todo counts as skipped).
//!
//! When one check runs several runners (`cargo test && pytest`), their counts are added and the
//! sources joined with `+` (`cargo+pytest`).
//!
//! [`parse_junit`] reads JUnit XML (`<testsuites>`/`<testsuite>`/`<testcase>`): each
//! `<testcase>` is failed if it has a `<failure>` or `<error>` child, skipped if it has a
//! `<skipped>` child, passed otherwise (retries recorded as `<flakyFailure>`/`<rerunFailure>`
//! do not make a test fail). A report without `<testcase>` elements is read from the `tests`,
//! `failures`, `errors` and `skipped` attributes of its innermost suites (or of the root).

use errand_core::TestCounts;
use regex::Regex;
use std::sync::LazyLock;

/// Removes ANSI escape sequences: CSI (`ESC [ … final`, colours and cursor moves), OSC
/// (`ESC ] … BEL` or `ESC ] … ESC \`, hyperlinks and titles), character-set designations
/// (`ESC ( B`, which libtest's colours use) and other two-character escapes.
pub fn strip_ansi(text: &str) -> String {
    if !text.contains('\u{1b}') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                // Parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            Some('(' | ')' | '*' | '+' | '-' | '.' | '/' | '#' | '%') => {
                chars.next();
            }
            // Any other escape is two characters long; a lone ESC at the end is dropped.
            Some(_) | None => {}
        }
    }
    out
}

/// The lines of `text` as a terminal would leave them: split on `\n`, and of a line redrawn
/// with carriage returns only the last version.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').map(|l| {
        let l = l.trim_end_matches('\r');
        match l.rfind('\r') {
            Some(i) => &l[i + 1..],
            None => l,
        }
    })
}

fn re(pattern: &str) -> Regex {
    // The patterns are constants checked by the tests; an invalid one is a bug caught there.
    Regex::new(pattern).unwrap_or_else(|e| panic!("invalid built-in pattern {pattern}: {e}"))
}

static CARGO: LazyLock<Regex> = LazyLock::new(|| re(r"^test result: \w+\. (.*)$"));
static COUNT_WORD: LazyLock<Regex> =
    LazyLock::new(|| re(r"(\d+) ([a-z]+(?: [a-z]+)?)\s*(?:[;,|(]|$)"));
static NEXTEST: LazyLock<Regex> =
    LazyLock::new(|| re(r"^\s*Summary \[[^\]]*\] +(\d+)(?:/(\d+))? tests? run: (.*)$"));
static PARENS: LazyLock<Regex> = LazyLock::new(|| re(r"\([^)]*\)"));
static PYTEST: LazyLock<Regex> = LazyLock::new(|| {
    re(r"^(\d+ [a-z]+(?:, \d+ [a-z]+)*|no tests ran) in \d+(?:\.\d+)?s(?: \([0-9:.]+\))?$")
});
static GO_RESULT: LazyLock<Regex> =
    LazyLock::new(|| re(r"^\s*--- (PASS|FAIL|SKIP): (\S+) \(\d+(?:\.\d+)?s\)"));
static GO_PACKAGE: LazyLock<Regex> = LazyLock::new(|| re(r"^(?:ok|FAIL|\?)\s+\S+\s"));
static JEST: LazyLock<Regex> = LazyLock::new(|| re(r"^Tests:\s+(.*\d+ total)\s*$"));
static VITEST: LazyLock<Regex> = LazyLock::new(|| re(r"^\s*Tests\s+(\d+ [a-z].*?)\s*\(\d+\)\s*$"));

/// Adds up one runner's counts.
#[derive(Default)]
struct Tally {
    found: bool,
    passed: u64,
    failed: u64,
    skipped: u64,
}

impl Tally {
    fn add(&mut self, passed: u64, failed: u64, skipped: u64) {
        self.found = true;
        self.passed += passed;
        self.failed += failed;
        self.skipped += skipped;
    }
}

/// `(count, word)` pairs of a summary such as `3 passed; 1 failed` or `1 failed | 4 passed`.
fn count_words(s: &str) -> impl Iterator<Item = (u64, &str)> {
    COUNT_WORD.captures_iter(s).filter_map(|c| {
        let n = c.get(1)?.as_str().parse().ok()?;
        Some((n, c.get(2)?.as_str()))
    })
}

/// Go test results of one package (or of the whole output when packages can't be told
/// apart), with the names of tests that have subtests left out.
#[derive(Default)]
struct GoPackage {
    results: Vec<(String, char)>,
}

impl GoPackage {
    fn count_into(&mut self, tally: &mut Tally) {
        if self.results.is_empty() {
            return;
        }
        let names: std::collections::HashSet<&str> =
            self.results.iter().map(|(n, _)| n.as_str()).collect();
        let parents: std::collections::HashSet<&str> = names
            .iter()
            .filter_map(|n| n.rsplit_once('/').map(|(p, _)| p))
            .flat_map(|p| {
                // Every ancestor of a subtest is a parent (`A/b/c` makes `A` and `A/b` parents).
                let mut out = vec![p];
                let mut rest = p;
                while let Some((q, _)) = rest.rsplit_once('/') {
                    out.push(q);
                    rest = q;
                }
                out
            })
            .collect();
        let (mut p, mut f, mut s) = (0, 0, 0);
        for (name, status) in &self.results {
            if parents.contains(name.as_str()) {
                continue;
            }
            match status {
                'P' => p += 1,
                'F' => f += 1,
                _ => s += 1,
            }
        }
        tally.add(p, f, s);
        self.results.clear();
    }
}

#[derive(serde::Deserialize)]
struct GoEvent {
    #[serde(rename = "Action")]
    action: String,
    #[serde(rename = "Package", default)]
    package: String,
    #[serde(rename = "Test", default)]
    test: Option<String>,
}

/// Test counts from a check's output (stdout and stderr, in any order), or `None` when no
/// runner's summary is recognised. See the module documentation for what each runner gives.
pub fn parse_output(text: &str) -> Option<TestCounts> {
    let text = strip_ansi(text);
    let mut cargo = Tally::default();
    let mut nextest = Tally::default();
    let mut pytest = Tally::default();
    let mut go = Tally::default();
    let mut jest = Tally::default();
    let mut vitest = Tally::default();
    let mut go_verbose = false;
    let mut go_package = GoPackage::default();
    let mut go_json: std::collections::BTreeMap<String, GoPackage> = Default::default();

    for line in lines(&text) {
        if let Some(c) = CARGO.captures(line) {
            let (mut p, mut f, mut s) = (0, 0, 0);
            for (n, word) in count_words(c.get(1).map_or("", |m| m.as_str())) {
                match word {
                    "passed" => p += n,
                    "failed" => f += n,
                    "ignored" => s += n,
                    _ => {}
                }
            }
            cargo.add(p, f, s);
            continue;
        }
        if let Some(c) = NEXTEST.captures(line) {
            let rest = c.get(3).map_or("", |m| m.as_str());
            let rest = PARENS.replace_all(rest, "");
            let (mut p, mut f, mut s) = (0, 0, 0);
            for part in rest.split(',') {
                let part = part.trim();
                let Some((n, word)) = part.split_once(' ') else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match word.trim() {
                    "passed" => p += n,
                    "skipped" => s += n,
                    w if w == "failed" || w == "timed out" || w.ends_with(" failed") => f += n,
                    _ => {}
                }
            }
            nextest.add(p, f, s);
            continue;
        }
        let bare = line.trim().trim_matches('=').trim();
        if bare.contains(" in ")
            && let Some(c) = PYTEST.captures(bare)
        {
            let (mut p, mut f, mut s, mut known) = (0, 0, 0, false);
            for (n, word) in count_words(c.get(1).map_or("", |m| m.as_str())) {
                known |= [
                    "passed",
                    "failed",
                    "skipped",
                    "xfailed",
                    "xpassed",
                    "error",
                    "errors",
                    "deselected",
                    "warning",
                    "warnings",
                    "rerun",
                ]
                .contains(&word);
                match word {
                    "passed" | "xpassed" => p += n,
                    "failed" | "error" | "errors" => f += n,
                    "skipped" | "xfailed" => s += n,
                    _ => {}
                }
            }
            if known || bare.starts_with("no tests ran") {
                pytest.add(p, f, s);
            }
            continue;
        }
        if line.starts_with("=== RUN") {
            go_verbose = true;
            continue;
        }
        if let Some(c) = GO_RESULT.captures(line) {
            let status = c.get(1).map_or("", |m| m.as_str());
            let name = c.get(2).map_or("", |m| m.as_str());
            go_package
                .results
                .push((name.to_string(), status.chars().next().unwrap_or('S')));
            continue;
        }
        if GO_PACKAGE.is_match(line) || line == "FAIL" || line == "PASS" {
            // Package boundaries keep `TestX` of one package from being taken as the parent
            // of `TestX/sub` of another.
            if go_verbose {
                go_package.count_into(&mut go);
            }
            go_package.results.clear();
            continue;
        }
        if line.starts_with('{')
            && line.contains("\"Action\"")
            && let Ok(ev) = serde_json::from_str::<GoEvent>(line)
            && let Some(test) = ev.test
        {
            let status = match ev.action.as_str() {
                "pass" => 'P',
                "fail" => 'F',
                "skip" => 'S',
                _ => continue,
            };
            go_json
                .entry(ev.package)
                .or_default()
                .results
                .push((test, status));
            continue;
        }
        if let Some(c) = JEST.captures(line) {
            let (mut p, mut f, mut s) = (0, 0, 0);
            for (n, word) in count_words(c.get(1).map_or("", |m| m.as_str())) {
                match word {
                    "passed" => p += n,
                    "failed" => f += n,
                    "skipped" | "todo" => s += n,
                    _ => {}
                }
            }
            jest.add(p, f, s);
            continue;
        }
        if let Some(c) = VITEST.captures(line) {
            let (mut p, mut f, mut s) = (0, 0, 0);
            for (n, word) in count_words(c.get(1).map_or("", |m| m.as_str())) {
                match word {
                    "passed" => p += n,
                    "failed" => f += n,
                    "skipped" | "todo" => s += n,
                    _ => {}
                }
            }
            vitest.add(p, f, s);
            continue;
        }
    }
    if go_verbose {
        go_package.count_into(&mut go);
    }
    for (_, mut pkg) in go_json {
        pkg.count_into(&mut go);
    }
    if nextest.found {
        // nextest shows libtest's own summary inside a failing test's output.
        cargo = Tally::default();
    }
    combine([
        ("cargo", cargo),
        ("nextest", nextest),
        ("pytest", pytest),
        ("go", go),
        ("jest", jest),
        ("vitest", vitest),
    ])
}

fn combine<const N: usize>(tallies: [(&str, Tally); N]) -> Option<TestCounts> {
    let mut out: Option<TestCounts> = None;
    for (source, t) in tallies {
        if !t.found {
            continue;
        }
        let c = out.get_or_insert_with(TestCounts::default);
        c.passed += t.passed;
        c.failed += t.failed;
        c.skipped += t.skipped;
        if !c.source.is_empty() {
            c.source.push('+');
        }
        c.source.push_str(source);
    }
    out
}

/// Whether a line of output may matter to [`parse_output`]; used to keep such lines from the
/// middle of an output too long to keep whole. Errs on the side of keeping.
pub fn may_hold_counts(line: &str) -> bool {
    [
        "test result",
        "tests run",
        "test run",
        "passed",
        "failed",
        "Tests",
        "--- PASS",
        "--- FAIL",
        "--- SKIP",
        "=== RUN",
        "\"Action\":\"pass\"",
        "\"Action\":\"fail\"",
        "\"Action\":\"skip\"",
        "no tests ran",
    ]
    .iter()
    .any(|k| line.contains(k))
}

/// One output stream kept for [`parse_output`] in bounded memory: all of it while it fits in
/// `max` bytes; past that, the first quarter, then only the lines that
/// [`may_hold_counts`] (up to another quarter), and the last half. Runners print their
/// summaries last, and the per-binary or per-package lines that are summed survive in the
/// middle.
pub struct BoundedOutput {
    max: usize,
    head: String,
    middle: String,
    tail: String,
    cut: bool,
    dropped: u64,
}

impl BoundedOutput {
    pub fn new(max: usize) -> Self {
        BoundedOutput {
            max: max.max(64),
            head: String::new(),
            middle: String::new(),
            tail: String::new(),
            cut: false,
            dropped: 0,
        }
    }

    pub fn push(&mut self, text: &str) {
        if !self.cut {
            if self.head.len() + text.len() <= self.max {
                self.head.push_str(text);
                return;
            }
            // Too long to keep whole: keep a quarter as the head, the rest goes through the
            // tail.
            self.cut = true;
            let all = std::mem::take(&mut self.head) + text;
            let mut end = self.max / 4;
            while !all.is_char_boundary(end) {
                end -= 1;
            }
            // End the head at a line break when there is one in its second half.
            if let Some(nl) = all[..end].rfind('\n')
                && nl >= end / 2
            {
                end = nl + 1;
            }
            self.head = all[..end].to_string();
            self.tail = all[end..].to_string();
        } else {
            self.tail.push_str(text);
        }
        self.trim_tail();
    }

    /// Moves whole lines from the front of the tail into the middle (or drops them) until the
    /// tail is back to half of `max`. Runs only once the tail is an eighth over, so that the
    /// work stays linear.
    fn trim_tail(&mut self) {
        let keep = self.max / 2;
        if self.tail.len() <= keep + self.max / 8 {
            return;
        }
        let mut cut = self.tail.len() - keep;
        while !self.tail.is_char_boundary(cut) {
            cut += 1;
        }
        // Cut after a line break, so that the tail starts with a whole line.
        if let Some(nl) = self.tail[cut..].find('\n') {
            cut += nl + 1;
        }
        let gone: String = self.tail.drain(..cut).collect();
        for line in gone.split_inclusive('\n') {
            if self.middle.len() + line.len() <= self.max / 4 && may_hold_counts(line) {
                self.middle.push_str(line);
                if !line.ends_with('\n') {
                    self.middle.push('\n');
                }
            } else {
                self.dropped += line.len() as u64;
            }
        }
    }

    /// Bytes left out so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The kept text: head, kept middle lines, tail.
    pub fn text(&self) -> String {
        let mut out =
            String::with_capacity(self.head.len() + self.middle.len() + self.tail.len() + 2);
        out.push_str(&self.head);
        if self.cut {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&self.middle);
            out.push_str(&self.tail);
        }
        out
    }
}

/// Test counts from a JUnit XML report, or `None` when the text is not well-formed XML or has
/// no `testsuites`, `testsuite` or `testcase` element.
pub fn parse_junit(xml: &str) -> Option<TestCounts> {
    use quick_xml::events::{BytesStart, Event};

    #[derive(Default, Clone, Copy)]
    struct Attrs {
        tests: u64,
        failures: u64,
        errors: u64,
        skipped: u64,
    }
    fn attrs(e: &BytesStart<'_>) -> Attrs {
        let mut a = Attrs::default();
        for attr in e.attributes().flatten() {
            let Ok(v) = attr.normalized_value(quick_xml::XmlVersion::Implicit1_0) else {
                continue;
            };
            let v = v.trim();
            let n = v
                .parse::<u64>()
                .ok()
                .or_else(|| {
                    v.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite() && *f >= 0.0)
                        .map(|f| f as u64)
                })
                .unwrap_or(0);
            match attr.key.local_name().as_ref() {
                b"tests" => a.tests = n,
                b"failures" => a.failures = n,
                b"errors" => a.errors = n,
                b"skipped" | b"skips" => a.skipped = n,
                _ => {}
            }
        }
        a
    }

    let mut reader = quick_xml::Reader::from_str(xml);
    let (mut passed, mut failed, mut skipped, mut cases) = (0u64, 0u64, 0u64, 0u64);
    let mut depth = 0usize;
    // Depth of the open <testcase> and what it turned out to be so far.
    let mut case: Option<(usize, char)> = None;
    // Open suites: their attributes and whether they contain another suite.
    let mut suites: Vec<(Attrs, bool)> = Vec::new();
    let mut leaf_sum: Option<Attrs> = None;
    let mut root: Option<Attrs> = None;
    let mut seen = false;
    let add_leaf = |sum: &mut Option<Attrs>, a: Attrs| {
        let s = sum.get_or_insert_with(Attrs::default);
        s.tests += a.tests;
        s.failures += a.failures;
        s.errors += a.errors;
        s.skipped += a.skipped;
    };
    loop {
        let ev = reader.read_event().ok()?;
        let (e, empty) = match &ev {
            Event::Start(e) => (Some(e), false),
            Event::Empty(e) => (Some(e), true),
            Event::End(e) => {
                depth = depth.saturating_sub(1);
                match e.local_name().as_ref() {
                    b"testcase" => {
                        if let Some((d, state)) = case
                            && d == depth
                        {
                            cases += 1;
                            match state {
                                'F' => failed += 1,
                                'S' => skipped += 1,
                                _ => passed += 1,
                            }
                            case = None;
                        }
                    }
                    b"testsuite" => {
                        if let Some((a, nested)) = suites.pop()
                            && !nested
                        {
                            add_leaf(&mut leaf_sum, a);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let Some(e) = e else { continue };
        let name = e.local_name();
        match name.as_ref() {
            b"testsuites" => {
                seen = true;
                if root.is_none() {
                    root = Some(attrs(e));
                }
            }
            b"testsuite" => {
                seen = true;
                if let Some(parent) = suites.last_mut() {
                    parent.1 = true;
                }
                if root.is_none() {
                    root = Some(attrs(e));
                }
                if empty {
                    add_leaf(&mut leaf_sum, attrs(e));
                } else {
                    suites.push((attrs(e), false));
                }
            }
            b"testcase" => {
                seen = true;
                if empty {
                    cases += 1;
                    passed += 1;
                } else if case.is_none() {
                    case = Some((depth, 'P'));
                }
            }
            b"failure" | b"error" => {
                if let Some((d, state)) = &mut case
                    && *d + 1 == depth
                {
                    *state = 'F';
                }
            }
            b"skipped" => {
                if let Some((d, state)) = &mut case
                    && *d + 1 == depth
                    && *state != 'F'
                {
                    *state = 'S';
                }
            }
            _ => {}
        }
        if !empty {
            depth += 1;
        }
    }
    if !seen {
        return None;
    }
    let counts = |passed, failed, skipped| TestCounts {
        passed,
        failed,
        skipped,
        source: "junit".into(),
    };
    if cases > 0 {
        return Some(counts(passed, failed, skipped));
    }
    let a = leaf_sum.or(root).unwrap_or_default();
    let failed = a.failures + a.errors;
    Some(counts(
        a.tests.saturating_sub(failed + a.skipped),
        failed,
        a.skipped,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_compile() {
        for r in [
            &*CARGO,
            &*COUNT_WORD,
            &*NEXTEST,
            &*PARENS,
            &*PYTEST,
            &*GO_RESULT,
            &*GO_PACKAGE,
            &*JEST,
            &*VITEST,
        ] {
            assert!(!r.as_str().is_empty());
        }
    }

    #[test]
    fn strips_escapes() {
        assert_eq!(strip_ansi("\u{1b}[31mFAILED\u{1b}(B\u{1b}[m."), "FAILED.");
        assert_eq!(
            strip_ansi("\u{1b}]8;;file:///x\u{1b}\\link\u{1b}]8;;\u{1b}\\ ok"),
            "link ok"
        );
        assert_eq!(strip_ansi("a\u{1b}]0;title\u{7}b"), "ab");
        assert_eq!(strip_ansi("plain"), "plain");
        assert_eq!(strip_ansi("end\u{1b}"), "end");
    }

    #[test]
    fn carriage_returns_keep_the_last_redraw() {
        let c = parse_output("Tests: 1 passed, 1 total\r\n");
        assert_eq!(c.map(|c| c.passed), Some(1));
        let c = parse_output("running…\rtest result: ok. 2 passed; 0 failed; 0 ignored\n");
        assert_eq!(c.map(|c| c.passed), Some(2));
    }

    #[test]
    fn bounded_output_keeps_head_tail_and_count_lines() {
        let mut b = BoundedOutput::new(4096);
        b.push("first line\n");
        for i in 0..2000 {
            b.push(&format!("noise {i}\n"));
            if i % 100 == 0 {
                b.push("test result: ok. 1 passed; 0 failed; 0 ignored\n");
            }
        }
        b.push("last line\n");
        let t = b.text();
        assert!(t.len() <= 4096 + 4096 / 8 + 64, "{}", t.len());
        assert!(t.starts_with("first line\n"));
        assert!(t.ends_with("last line\n"));
        assert!(b.dropped() > 0);
        assert_eq!(parse_output(&t).map(|c| c.passed), Some(20));
        let mut small = BoundedOutput::new(4096);
        small.push("a\n");
        small.push("b");
        assert_eq!(small.text(), "a\nb");
    }
}
