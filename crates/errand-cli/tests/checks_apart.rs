//! What the checks write stays out of the agent's work, end to end through the real binary
//! (real server, real git, real boxes, the scripted model): the checks see the agent's files,
//! but the reports, build output and edits they leave are put back once they are done, so the
//! branch, the diff, the reviewer's diff and the next round of the agent hold the agent's work
//! only; a notice lists what was taken out.

mod common;

use common::*;
use errand_fakes::{FakeServer, FakeUsage, Reply, Turn, Vendor};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Proves the check saw the agent's file, then leaves a JUnit report, a build directory, an
/// ignored log and a line appended to a tracked file.
const CHECK: &str = "test -f src/fix.txt && printf '<testsuite tests=\"2\"><testcase name=\"a\"/><testcase name=\"b\"/></testsuite>' > junit.xml && echo x >> README.md && mkdir -p build-out && echo o > build-out/a.o && echo ran > check.log";

fn mirror_of(data: &Path) -> PathBuf {
    let mirrors: Vec<_> = std::fs::read_dir(data.join("mirrors"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(mirrors.len(), 1);
    mirrors[0].clone()
}

fn only_task(server: &Server) -> Value {
    let ls: Value = serde_json::from_str(&ok(server.cli(&["ls", "--json"]))).unwrap();
    assert_eq!(ls["tasks"].as_array().unwrap().len(), 1);
    let id = ls["tasks"][0]["id"].as_str().unwrap();
    serde_json::from_str(&ok(server.cli(&["show", id, "--json"]))).unwrap()
}

fn notices(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .filter(|e| e["type"] == "notice")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The repository: `make_repo` plus a `.gitignore` for logs.
fn repo_with_ignore(dir: &Path) -> PathBuf {
    let repo = make_repo(dir);
    std::fs::write(repo.join(".gitignore"), "*.log\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "ignore logs"]);
    repo
}

/// `A\tpath` lines of the branch's last commit, sorted.
fn committed(mirror: &Path, branch: &str) -> Vec<String> {
    let mut lines: Vec<String> = git(mirror, &["show", "--name-status", "--format=", branch])
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_checks_leave_is_not_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_with_ignore(tmp.path());
    let script = write_script(
        tmp.path(),
        "agent.json",
        json!({"turns": [
            {"tool_calls": [{"name": "write_file", "arguments": {"path": "src/fix.txt", "content": "the fix\n"}}]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "Added the fix."}}]}
        ]}),
    );
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        format!(
            "[environments.shop]\nrepo = \"{}\"\nmodel = \"scripted:{}\"\n\n[[environments.shop.checks]]\nname = \"tests\"\ncommand = {}\njunit = \"junit.xml\"\n",
            repo.display(),
            script.display(),
            serde_json::to_string(CHECK).unwrap()
        ),
    )
    .unwrap();
    let server = Server::start(&data, &["--workers", "1"]);
    let out = ok(server.cli(&["run", "Fix it", "--env", "shop", "--follow"]));
    assert!(
        out.contains("checks created or changed 3 files that are not part of the commit"),
        "{out}"
    );

    let t = only_task(&server);
    let id = t["id"].as_str().unwrap();
    assert_eq!(t["status"], "done", "{t:#}");
    let a = &t["attempts"][0];
    // The check passed, so it found the agent's file; its report was read before it went.
    assert_eq!(a["checks"][0]["passed"], true, "{a:#}");
    assert_eq!(
        a["checks"][0]["tests"],
        json!({"passed": 2, "failed": 0, "skipped": 0, "source": "junit"})
    );
    assert_eq!(a["diff_stats"]["files_changed"], 1, "{a:#}");

    let evs = events(&server, id).await;
    assert_contiguous(&evs);
    let left: Vec<String> = notices(&evs)
        .into_iter()
        .filter(|n| n.contains("not part of the commit"))
        .collect();
    assert_eq!(
        left,
        [
            "checks created or changed 3 files that are not part of the commit: README.md (changed), build-out/a.o, junit.xml; the workspace has the agent's version again"
        ],
    );

    // The branch holds the agent's file and nothing the check wrote.
    let mirror = mirror_of(&data);
    let branch = a["branch"].as_str().unwrap();
    assert_eq!(committed(&mirror, branch), ["A\tsrc/fix.txt"]);
    assert_eq!(
        git(&mirror, &["show", &format!("{branch}:README.md")]),
        "# sample\n"
    );
    assert_eq!(
        git(&mirror, &["show", &format!("{branch}:src/fix.txt")]),
        "the fix\n"
    );
    let diff = ok(server.cli(&["diff", id]));
    assert!(diff.contains("+++ b/src/fix.txt"), "{diff}");
    for absent in ["junit.xml", "build-out", "README.md", "check.log"] {
        assert!(!diff.contains(absent), "{absent} in the diff:\n{diff}");
    }
}

fn review_call(v: Value) -> Reply {
    Reply::Turn(Turn {
        tool_calls: vec![("submit_review".into(), v)],
        usage: FakeUsage {
            input: 100,
            output: 10,
            ..Default::default()
        },
        ..Default::default()
    })
}

/// Every string in a JSON value, joined.
fn texts(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(texts).collect::<Vec<_>>().join("\n"),
        Value::Object(o) => o.values().map(texts).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

/// With a reviewer, the checks run twice: neither the reviewer's diff, nor the agent's second
/// round, nor the final commit has anything of either run.
#[tokio::test(flavor = "multi_thread")]
async fn review_rounds_see_and_commit_the_agents_work_only() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_with_ignore(tmp.path());
    let agent = write_script(
        tmp.path(),
        "agent.json",
        json!({"turns": [
            {"tool_calls": [{"name": "write_file", "arguments": {"path": "src/fix.txt", "content": "first try\n"}}]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "First try."}}]},
            {"tool_calls": [
                {"name": "shell", "arguments": {"command": "if test -e junit.xml || test -e build-out || grep -q x README.md; then echo LEFTOVERS-SEEN; else echo WORKSPACE-CLEAN; fi"}},
                {"name": "write_file", "arguments": {"path": "src/fix.txt", "content": "second try\n"}},
                {"name": "write_file", "arguments": {"path": "src/more.txt", "content": "more\n"}}]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "Second try."}}]}
        ]}),
    );
    let critic = FakeServer::start(
        Vendor::Anthropic,
        vec![
            review_call(json!({
                "verdict": "changes_needed",
                "summary": "Try again.",
                "findings": [{"file": "src/fix.txt", "line": 1, "severity": "error", "message": "not yet"}]
            })),
            review_call(json!({"verdict": "approve", "summary": "Good.", "findings": []})),
        ],
    );
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        format!(
            r#"
[providers.critic]
kind = "anthropic"
base_url = "{}"
api_key_env = "CRITIC_KEY"
[environments.shop]
repo = "{}"
model = "scripted:{}"
checks = [{{ name = "tests", command = {}, junit = "junit.xml" }}]
"#,
            critic.base_url,
            repo.display(),
            agent.display(),
            serde_json::to_string(CHECK).unwrap()
        ),
    )
    .unwrap();
    let server = Server::start_with_env(&data, &["--workers", "1"], &[("CRITIC_KEY", "sk-critic")]);
    let out = ok(server.cli(&[
        "run",
        "Fix it",
        "--env",
        "shop",
        "--review",
        "critic:judge-1",
        "--follow",
    ]));
    assert!(out.contains("review round 2: APPROVE"), "{out}");

    let t = only_task(&server);
    let id = t["id"].as_str().unwrap();
    assert_eq!(t["status"], "done", "{t:#}");
    let a = &t["attempts"][0];
    assert_eq!(a["review"]["verdict"], "approve");
    assert_eq!(a["checks"][0]["passed"], true, "{a:#}");

    let evs = events(&server, id).await;
    assert_contiguous(&evs);
    assert_eq!(
        evs.iter().filter(|e| e["type"] == "check_result").count(),
        2
    );
    let left: Vec<String> = notices(&evs)
        .into_iter()
        .filter(|n| n.contains("not part of the commit"))
        .collect();
    assert_eq!(left.len(), 2, "one notice per run of the checks: {left:#?}");
    // The agent's second round started from its own work, without the first run's leftovers.
    let output: String = evs
        .iter()
        .filter(|e| e["type"] == "output")
        .map(|e| e["data"].as_str().unwrap_or_default())
        .collect();
    assert!(
        output.contains("WORKSPACE-CLEAN") && !output.contains("LEFTOVERS-SEEN"),
        "{output}"
    );

    // The reviewer saw the agent's change only, both times.
    let reqs = critic.model_requests();
    assert_eq!(reqs.len(), 2);
    let first = texts(&reqs[0].body["messages"]);
    let second = texts(&reqs[1].body["messages"]);
    assert!(first.contains("+first try"), "{first}");
    assert!(
        second.contains("+second try") && second.contains("+more"),
        "{second}"
    );
    for (round, text) in [(1, &first), (2, &second)] {
        // The check's command is in the prompt too: look at the diff.
        let diff = text
            .split_once("<diff")
            .and_then(|(_, d)| d.split_once("</diff>"))
            .map(|(d, _)| d)
            .unwrap_or_else(|| panic!("no diff in round {round}'s review:\n{text}"));
        assert!(diff.contains("files_changed=\"") && diff.contains("b/src/fix.txt"));
        for absent in ["junit.xml", "build-out", "README.md", "check.log"] {
            assert!(
                !diff.contains(absent),
                "round {round}'s review shows {absent}:\n{diff}"
            );
        }
    }

    // The commit is the agent's final work.
    let mirror = mirror_of(&data);
    let branch = a["branch"].as_str().unwrap();
    assert_eq!(
        committed(&mirror, branch),
        ["A\tsrc/fix.txt", "A\tsrc/more.txt"]
    );
    assert_eq!(
        git(&mirror, &["show", &format!("{branch}:src/fix.txt")]),
        "second try\n"
    );
    assert_eq!(
        git(&mirror, &["show", &format!("{branch}:README.md")]),
        "# sample\n"
    );
}

/// A string no other test's processes carry.
fn tag() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}{n:09}", std::process::id())
}

/// A check that starts a daemon (out of its process group, `setsid`) and exits at once: the
/// daemon is stopped as the check ends, so it neither writes into the workspace after it is
/// put back nor runs on into the next check; a notice says so. What the agent left running
/// is stopped before the checks, while between the agent's own tool calls it keeps running.
#[tokio::test(flavor = "multi_thread")]
async fn processes_a_check_leaves_behind_are_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_with_ignore(tmp.path());
    let t = tag();
    let (agent_sleep, check_sleep) = (format!("301.{t}"), format!("300.{t}"));
    // Lists the box's processes; the pattern's brackets keep it from matching its own line.
    let list = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\" 2>/dev/null; echo; done";
    let agent = write_script(
        tmp.path(),
        "agent.json",
        json!({"turns": [
            {"tool_calls": [
                {"name": "write_file", "arguments": {"path": "src/fix.txt", "content": "the fix\n"}},
                {"name": "shell", "arguments": {"command": format!("setsid sleep {agent_sleep} >/dev/null 2>&1 & echo server started")}}]},
            {"tool_calls": [{"name": "shell", "arguments": {"command": format!("echo AGENT-SERVER-UP:$({list} | grep -c '^sleep 301[.]{t}')")}}]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "Added the fix."}}]}
        ]}),
    );
    let daemon = format!(
        "sh -c 'setsid sh -c \"sleep 1; echo late > late.txt; sleep {check_sleep}\" >/dev/null 2>&1 & exit 0'"
    );
    let probe = format!(
        "sleep 2; ps=$({list}); echo \"$ps\"; if echo \"$ps\" | grep -q 'sleep 30[01][.]{t}'; then echo SURVIV\"\"OR; exit 1; fi; echo QUI\"\"ET"
    );
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        format!(
            "[environments.shop]\nrepo = \"{}\"\nmodel = \"scripted:{}\"\nchecks = [{{ name = \"bg\", command = {} }}, {{ name = \"probe\", command = {} }}]\n",
            repo.display(),
            agent.display(),
            serde_json::to_string(&daemon).unwrap(),
            serde_json::to_string(&probe).unwrap(),
        ),
    )
    .unwrap();
    let server = Server::start(&data, &["--workers", "1"]);
    let out = ok(server.cli(&["run", "Fix it", "--env", "shop", "--follow"]));
    assert!(out.contains("check \"bg\" left "), "{out}");

    let task = only_task(&server);
    let id = task["id"].as_str().unwrap();
    assert_eq!(task["status"], "done", "{task:#}");
    let a = &task["attempts"][0];
    let checks = a["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2, "{a:#}");
    assert!(checks.iter().all(|c| c["passed"] == true), "{a:#}");

    let evs = events(&server, id).await;
    assert_contiguous(&evs);
    let output: String = evs
        .iter()
        .filter(|e| e["type"] == "output")
        .map(|e| e["data"].as_str().unwrap_or_default())
        .collect();
    // The agent's server was still up for its next tool call.
    assert!(output.contains("AGENT-SERVER-UP:1"), "{output}");
    // The probe saw the box's processes (itself at least), and neither the agent's server nor
    // the check's daemon among them. (The quotes keep the words out of the listed command
    // lines.)
    assert!(
        output.contains("QUIET") && !output.contains("SURVIVOR"),
        "{output}"
    );
    assert!(output.contains("bash -c sleep 2;"), "{output}");

    let notes = notices(&evs);
    let stopped: Vec<&String> = notes.iter().filter(|n| n.contains(" left ")).collect();
    assert_eq!(stopped.len(), 2, "{notes:#?}");
    assert_eq!(
        stopped[0],
        "the agent left 1 process running (sleep); it was stopped before the checks"
    );
    // The daemon: its shell and `sleep 1` (or `setsid` itself, had the check ended first).
    let bg = stopped[1];
    assert!(
        bg.starts_with("check \"bg\" left ") && bg.ends_with("stopped"),
        "{bg}"
    );
    assert!(
        !notes.iter().any(|n| n.contains("check \"probe\"")),
        "{notes:#?}"
    );

    // The late file never reached the branch or the diff.
    let mirror = mirror_of(&data);
    let branch = a["branch"].as_str().unwrap();
    assert_eq!(committed(&mirror, branch), ["A\tsrc/fix.txt"]);
    let diff = ok(server.cli(&["diff", id]));
    assert!(
        diff.contains("+++ b/src/fix.txt") && !diff.contains("late.txt"),
        "{diff}"
    );
    // Nothing of the box is left on the host either.
    for needle in [&agent_sleep, &check_sleep] {
        wait_for(
            "the box's sleeps to go",
            std::time::Duration::from_secs(5),
            || async { processes_with(needle).is_empty().then_some(()) },
        )
        .await;
    }
}
