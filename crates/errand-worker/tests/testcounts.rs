//! Test-count parsing against real runner output. The fixtures in `fixtures/checks/` were made
//! by running the runners on small projects (`fixtures/checks/regenerate.sh`; the versions are
//! in `fixtures/checks/versions.txt`); each test asserts the exact counts of its fixture.

use errand_core::TestCounts;
use errand_worker::testcounts::{BoundedOutput, parse_junit, parse_output, strip_ansi};

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/checks/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn counts(passed: u64, failed: u64, skipped: u64, source: &str) -> Option<TestCounts> {
    Some(TestCounts {
        passed,
        failed,
        skipped,
        source: source.into(),
    })
}

/// The fixture, which must carry colour codes (so that stripping them is part of the test).
fn coloured(name: &str) -> String {
    let text = fixture(name);
    assert!(text.contains('\u{1b}'), "{name} has no ANSI escapes");
    text
}

#[test]
fn cargo_test_sums_every_test_binary() {
    // Unit tests 3 passed, 1 failed, 1 ignored; integration tests 1/1/1; doc tests 1/1/0.
    assert_eq!(
        parse_output(&coloured("cargo.txt")),
        counts(5, 3, 2, "cargo")
    );
    // Unit 2, integration 1, doc tests 1.
    assert_eq!(
        parse_output(&coloured("cargo-pass.txt")),
        counts(4, 0, 0, "cargo")
    );
}

#[test]
fn nextest_summary() {
    // The failing tests' output holds libtest's own "test result:" lines; not counted twice.
    let text = coloured("nextest.txt");
    assert!(strip_ansi(&text).contains("test result:"));
    assert_eq!(parse_output(&text), counts(4, 2, 2, "nextest"));
    // 3 passed (1 flaky), 1 failed, 1 timed out, 1 skipped.
    assert_eq!(
        parse_output(&coloured("nextest-flaky.txt")),
        counts(3, 2, 1, "nextest")
    );
}

#[test]
fn nextest_variants() {
    let p = |s: &str| parse_output(s);
    assert_eq!(
        p("     Summary [   0.008s] 1 test run: 1 passed, 0 skipped\n"),
        counts(1, 0, 0, "nextest")
    );
    // A run cut short by a failure: the tests never started are not counted.
    assert_eq!(
        p(
            "     Summary [   0.310s] 3/6 tests run: 2 passed, 1 failed, 1 skipped\nwarning: 3/6 tests were not run due to test failure (run with --no-fail-fast to run all tests, or run with --max-fail)\n"
        ),
        counts(2, 1, 1, "nextest")
    );
    assert_eq!(
        p(
            "     Summary [   9.000s] 7 tests run: 4 passed (1 leaky, 2 flaky), 1 failed, 1 timed out, 1 exec failed, 0 skipped\n"
        ),
        counts(4, 3, 0, "nextest")
    );
}

#[test]
fn pytest_final_line() {
    // 2 failed, 4 passed, 1 skipped, 1 xfailed, 1 xpassed, 1 error: xpassed is a pass, the
    // error a failure, xfailed a skip.
    assert_eq!(
        parse_output(&coloured("pytest.txt")),
        counts(5, 3, 2, "pytest")
    );
    // -q: no "=" rule; deselected tests are not counted.
    assert_eq!(
        parse_output(&coloured("pytest-quiet.txt")),
        counts(2, 0, 1, "pytest")
    );
    assert_eq!(
        parse_output("============ no tests ran in 0.01s ============\n"),
        counts(0, 0, 0, "pytest")
    );
    assert_eq!(
        parse_output("===== 1 passed, 2 warnings in 62.15s (0:01:02) =====\n"),
        counts(1, 0, 0, "pytest")
    );
}

#[test]
fn go_test_verbose_and_json() {
    // calm: TestDouble passes. tally: TestAdd passes, TestAddFails fails, TestSkipped skips,
    // TestTable has subtests one and two (pass) and three (fails); TestTable itself is counted
    // through them.
    assert_eq!(parse_output(&fixture("go-v.txt")), counts(4, 2, 1, "go"));
    assert_eq!(parse_output(&fixture("go-json.txt")), counts(4, 2, 1, "go"));
    // Without -v only the failing tests are printed: no counts rather than wrong ones.
    assert_eq!(parse_output(&fixture("go.txt")), None);
}

#[test]
fn go_nested_subtests_and_packages() {
    let out = "\
=== RUN   TestA
=== RUN   TestA/b
=== RUN   TestA/b/c
=== RUN   TestA/b/d
--- PASS: TestA (0.00s)
    --- PASS: TestA/b (0.00s)
        --- PASS: TestA/b/c (0.00s)
        --- SKIP: TestA/b/d (0.00s)
PASS
ok  \texample.com/one\t0.002s
=== RUN   TestA
--- FAIL: TestA (0.01s)
FAIL
FAIL\texample.com/two\t0.003s
FAIL
";
    // TestA of package one is a parent; TestA of package two is a test of its own.
    assert_eq!(parse_output(out), counts(1, 1, 1, "go"));
}

#[test]
fn jest_and_vitest() {
    // 1 failed, 1 skipped, 1 todo, 4 passed, 7 total.
    assert_eq!(parse_output(&coloured("jest.txt")), counts(4, 1, 2, "jest"));
    // 1 failed | 4 passed | 1 skipped | 1 todo (7).
    assert_eq!(
        parse_output(&coloured("vitest.txt")),
        counts(4, 1, 2, "vitest")
    );
    assert_eq!(
        parse_output("Tests:       3 passed, 3 total\nSnapshots:   0 total\n"),
        counts(3, 0, 0, "jest")
    );
    assert_eq!(
        parse_output(" Test Files  2 passed (2)\n      Tests  5 passed (5)\n"),
        counts(5, 0, 0, "vitest")
    );
}

#[test]
fn junit_reports() {
    // pytest: 10 test cases, 2 failures and 1 error, 1 skip and 1 xfail.
    assert_eq!(
        parse_junit(&fixture("junit-pytest.xml")),
        counts(5, 3, 2, "junit")
    );
    // Vitest: the root has no "skipped" attribute; the test cases tell (skip and todo).
    assert_eq!(
        parse_junit(&fixture("junit-vitest.xml")),
        counts(4, 1, 2, "junit")
    );
    // nextest leaves ignored tests out of its report.
    assert_eq!(
        parse_junit(&fixture("junit-nextest.xml")),
        counts(4, 2, 0, "junit")
    );
}

#[test]
fn junit_from_attributes_and_odd_reports() {
    // No test cases: the innermost suites' attributes, or the root's.
    let nested = r#"<?xml version="1.0"?>
<testsuites tests="99">
  <testsuite name="outer" tests="99">
    <testsuite name="a" tests="4" failures="1" errors="1" skipped="1"/>
    <testsuite name="b" tests="3" failures="0" errors="0" skipped="0"></testsuite>
  </testsuite>
</testsuites>"#;
    assert_eq!(parse_junit(nested), counts(4, 2, 1, "junit"));
    assert_eq!(
        parse_junit(r#"<testsuites tests="5" failures="1" errors="1" skipped="1"/>"#),
        counts(2, 2, 1, "junit")
    );
    // Retries that passed in the end are passes; a failure with reruns is one failure.
    let retries = r#"<testsuite><testcase name="a"><flakyFailure message="x"/><system-out>failure</system-out></testcase><testcase name="b"><failure/><rerunFailure/></testcase><testcase name="c"><skipped/></testcase><testcase name="d"><error>boom</error><skipped/></testcase></testsuite>"#;
    assert_eq!(parse_junit(retries), counts(1, 2, 1, "junit"));
    // Namespaced element names.
    assert_eq!(
        parse_junit(r#"<j:testsuite xmlns:j="urn:x"><j:testcase name="a"/></j:testsuite>"#),
        counts(1, 0, 0, "junit")
    );
    // Not JUnit, or not XML, or cut short.
    assert_eq!(parse_junit("<html><body>hi</body></html>"), None);
    assert_eq!(parse_junit("not xml at all"), None);
    assert_eq!(parse_junit(""), None);
    let cut = fixture("junit-pytest.xml");
    assert_eq!(parse_junit(&cut[..cut.len() / 2]), None);
}

#[test]
fn nothing_recognisable_is_none() {
    for text in [
        "",
        "hello world\n",
        "   Compiling foo v0.1.0\n    Finished `dev` profile\n",
        "All 12 checks passed, 0 failed\n",
        "tests passed in the previous run: 3 passed\n",
        "PASS\nok\n",
    ] {
        assert_eq!(parse_output(text), None, "{text:?}");
    }
}

#[test]
fn two_cargo_binaries_are_summed() {
    let out = "\
running 3 tests
test a ... ok
test b ... ok
test c ... FAILED

test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

     Running tests/it.rs (target/debug/deps/it-123)

running 5 tests
test result: ok. 4 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; finished in 0.01s
";
    assert_eq!(parse_output(out), counts(6, 1, 1, "cargo"));
    // Older libtest, without the timing.
    assert_eq!(
        parse_output(
            "test result: ok. 7 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n"
        ),
        counts(7, 0, 0, "cargo")
    );
}

#[test]
fn noise_around_and_between_summaries() {
    // The cargo fixture with unrelated lines, CRLF endings and a progress line redrawn with
    // carriage returns woven in: same counts.
    let mut noisy = String::new();
    for (i, line) in fixture("cargo.txt").lines().enumerate() {
        noisy.push_str(line);
        noisy.push_str("\r\n");
        if i % 3 == 0 {
            noisy.push_str("warning: 2 tests passed in a dream; nothing failed\r\n");
            noisy.push_str("progress 10%\rprogress 50%\rprogress 100%\n");
        }
    }
    assert_eq!(parse_output(&noisy), counts(5, 3, 2, "cargo"));
    // stdout then stderr, as the worker hands them over: the pytest summary is not the last
    // line.
    let text = format!(
        "{}\nsome stderr chatter\nDeprecationWarning: x\n",
        fixture("pytest.txt")
    );
    assert_eq!(parse_output(&text), counts(5, 3, 2, "pytest"));
}

#[test]
fn several_runners_in_one_check_add_up() {
    let text = format!("{}\n{}", fixture("cargo-pass.txt"), fixture("pytest.txt"));
    assert_eq!(parse_output(&text), counts(9, 3, 2, "cargo+pytest"));
}

#[test]
fn long_output_keeps_what_counts() {
    // 20 MB of test lines with a result line now and then: the bounded copy the worker keeps
    // still adds up to the same counts.
    let mut kept = BoundedOutput::new(4 << 20);
    let mut expected = 0;
    for i in 0..300_000 {
        kept.push(&format!(
            "test module::case_{i:06} ... ok (and some padding to make it long)\n"
        ));
        if i % 1000 == 999 {
            kept.push("test result: ok. 1000 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.10s\n\n");
            expected += 1000;
        }
    }
    assert!(kept.dropped() > 10 << 20);
    let text = kept.text();
    assert!(text.len() <= (4 << 20) + (4 << 20) / 8 + 1024);
    assert_eq!(parse_output(&text), counts(expected, 0, 0, "cargo"));
}
