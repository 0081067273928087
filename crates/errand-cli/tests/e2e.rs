//! End to end through the real binary: serve, run, follow, ls, show, logs, diff, cancel,
//! crash-restart and SSE resume, on real git repos.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

fn fix_script() -> serde_json::Value {
    json!({"turns": [
        {"text": "Looking around.", "tool_calls": [
            {"name": "list_dir", "arguments": {}},
            {"name": "search", "arguments": {"pattern": "thr+ee"}}]},
        {"text": "Editing.", "tool_calls": [
            {"name": "edit", "arguments": {"path": "src/lib.txt", "old": "two\n", "new": "TWO\n"}},
            {"name": "write_file", "arguments": {"path": "src/new.txt", "content": "hello\n"}},
            {"name": "apply_patch", "arguments": {"patch": "*** Begin Patch\n*** Update File: README.md\n@@\n-# sample\n+# sample repo\n*** End Patch\n"}},
            {"name": "edit", "arguments": {"path": "src/lib.txt", "old": "missing", "new": "x"}},
            {"name": "no_such_tool", "arguments": {}}]},
        {"tool_calls": [
            {"name": "shell", "arguments": {"command": "cat src/new.txt; echo to-stderr >&2; true"}},
            {"name": "shell", "arguments": {"command": "true"}},
            {"name": "read_file", "arguments": {"path": "src/lib.txt", "start_line": 2, "end_line": 3}}]},
        {"tool_calls": [{"name": "finish", "arguments": {"summary": "Upper-cased two, added new.txt."}}]}
    ]})
}

#[tokio::test(flavor = "multi_thread")]
async fn run_follow_show_logs_diff_on_a_real_repo() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let before = repo_fingerprint(&repo);
    let script = write_script(tmp.path(), "fix.json", fix_script());
    let server = Server::start(&tmp.path().join("data"), &[]);

    // `run` from inside the repo: --repo defaults to the current directory, the script path
    // is relative to it.
    let rel_script = format!("scripted:{}", pathdiff(&script, &repo));
    let out = ok(server.cli_in(
        &repo,
        &[
            "run",
            "Upper-case two",
            "--model",
            &rel_script,
            "--check",
            "tests=grep -q TWO src/lib.txt",
            "--follow",
        ],
    ));
    assert!(out.contains("created task"), "{out}");
    assert!(
        out.contains("[SCRIPTED]"),
        "the log must label the scripted model:\n{out}"
    );
    assert!(
        out.contains("sandbox: box"),
        "the first event must say how commands are isolated:
{out}"
    );
    assert!(!out.contains("UNISOLATED"), "{out}");
    assert!(out.contains("to-stderr"), "{out}");
    assert!(out.contains("check tests: PASSED"), "{out}");

    let ls: serde_json::Value = serde_json::from_str(&ok(server.cli(&["ls", "--json"]))).unwrap();
    let tasks = ls["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1);
    let id = tasks[0]["id"].as_str().unwrap().to_string();
    let short = &id[..8];

    let show: serde_json::Value =
        serde_json::from_str(&ok(server.cli(&["show", short, "--json"]))).unwrap();
    assert_eq!(show["status"], "done");
    assert_eq!(show["trigger"], "cli");
    assert_eq!(show["base_ref"], "main");
    let a = &show["attempts"][0];
    let branch = a["branch"].as_str().unwrap();
    assert!(
        branch.starts_with(&format!("errand/{short}-upper-case-two")),
        "{branch}"
    );
    assert_eq!(a["diff_stats"]["files_changed"], 3);
    assert_eq!(a["checks"][0]["passed"], true);
    assert_eq!(a["checks"][0]["exit_code"], 0);
    assert_eq!(a["turns"], 4);
    assert_eq!(a["runs"], 1);
    assert_eq!(a["summary"], "Upper-cased two, added new.txt.");
    assert!(a["active_worker"].is_null());

    let text = ok(server.cli(&["show", short]));
    for needle in [
        "Status    done",
        "Branch    errand/",
        "✓ tests",
        "3 file(s), +3 -2",
        "4 turns",
    ] {
        assert!(text.contains(needle), "show lacks {needle:?}:\n{text}");
    }
    let ls_text = ok(server.cli(&["ls"]));
    assert!(
        ls_text.contains(short) && ls_text.contains("done"),
        "{ls_text}"
    );

    let logs = ok(server.cli(&["logs", short]));
    for needle in [
        "$ cat src/new.txt",
        "exit 0 in",
        "tool edit",
        "`old` was not found",
        "unknown tool 'no_such_tool'",
        "file added: src/new.txt",
        "committed ",
        "status checking → done",
    ] {
        assert!(logs.contains(needle), "logs lack {needle:?}:\n{logs}");
    }
    let jlogs = ok(server.cli(&["logs", short, "--json"]));
    let evs: Vec<serde_json::Value> = jlogs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_contiguous(&evs);
    assert_eq!(evs[0]["type"], "claimed");
    assert_eq!(evs[0]["isolated"], true);
    assert!(
        evs.iter().all(|e| e.get("unisolated").is_none()),
        "boxed runs carry no unisolated mark"
    );
    let empty = evs.iter().find(|e| {
        e["type"] == "tool_result" && e["output"].as_str().unwrap().contains("printed nothing")
    });
    assert!(empty.is_some(), "empty output must be said explicitly");

    let diff = ok(server.cli(&["diff", short]));
    assert!(diff.contains("-two\n+TWO"), "{diff}");
    assert!(diff.contains("+++ b/src/new.txt"), "{diff}");
    assert!(diff.contains("+# sample repo"), "{diff}");
    let stat = ok(server.cli(&["diff", short, "--stat"]));
    assert!(stat.contains("3 files changed"), "{stat}");

    // The result lives on the branch in the mirror, with trailers; the user's repo is untouched.
    assert_eq!(
        repo_fingerprint(&repo),
        before,
        "the user's repo must not change"
    );
    let mirrors: Vec<_> = std::fs::read_dir(tmp.path().join("data/mirrors"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(mirrors.len(), 1);
    let mirror = mirrors[0].path();
    let msg = git(&mirror, &["log", "-1", "--format=%B", branch]);
    assert!(msg.contains(&format!("Errand-Task: {id}")), "{msg}");
    assert!(
        msg.contains(&format!("Errand-Attempt: {}", a["id"].as_str().unwrap())),
        "{msg}"
    );
    let files = git(&mirror, &["show", &format!("{branch}:src/lib.txt")]);
    assert_eq!(files, "one\nTWO\nthree\nfour\n");
    // The workspace is cleaned up after the attempt (the worker removes it right after the
    // attempt's last state change, so allow it a moment on a busy machine).
    let mut work = Vec::new();
    for _ in 0..100 {
        work = std::fs::read_dir(tmp.path().join("data/work"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        if work.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(work.is_empty(), "workspaces left behind: {work:?}");
}

fn pathdiff(target: &std::path::Path, base: &std::path::Path) -> String {
    // Both live in the same temp dir: ../name
    let name = target.file_name().unwrap().to_string_lossy();
    assert_eq!(target.parent(), base.parent());
    format!("../{name}")
}

#[tokio::test(flavor = "multi_thread")]
async fn run_json_base_tag_and_commit_and_url_repos() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let script = write_script(
        tmp.path(),
        "s.json",
        json!({"turns": [{"tool_calls": [
        {"name": "shell", "arguments": {"command": "cat src/lib.txt"}},
        {"name": "finish", "arguments": {"summary": "looked"}}]}]}),
    );
    let server = Server::start(&tmp.path().join("data"), &[]);
    let model = format!("scripted:{}", script.display());
    let repo_s = repo.display().to_string();
    let first = git(&repo, &["rev-parse", "v1"]).trim().to_string();

    let out = ok(server.cli(&[
        "run", "look", "--repo", &repo_s, "--model", &model, "--base", "v1", "--json",
    ]));
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(t["base_ref"], "v1");
    assert_eq!(t["base_commit"], first.as_str());
    let id = t["id"].as_str().unwrap().to_string();
    let out = ok(server.cli(&[
        "run",
        "look",
        "--repo",
        &repo_s,
        "--model",
        &model,
        "--base",
        &first[..10],
        "--json",
    ]));
    let by_sha: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(by_sha["base_commit"], first.as_str());
    let url = format!("file://{}", repo.display());
    let out = ok(server.cli(&["run", "look", "--repo", &url, "--model", &model, "--json"]));
    let by_url: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(by_url["repo"], url.as_str());
    assert_eq!(by_url["base_ref"], "main");

    for tid in [
        &id,
        by_sha["id"].as_str().unwrap(),
        by_url["id"].as_str().unwrap(),
    ] {
        wait_status(&server, tid, &["done"], Duration::from_secs(60)).await;
    }
    // The tag-based attempt saw the first version of the file.
    let evs = events(&server, &id).await;
    let out: String = evs
        .iter()
        .filter(|e| e["type"] == "output")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(out, "one\ntwo\nthree\n");
    let evs = events(&server, by_url["id"].as_str().unwrap()).await;
    let out: String = evs
        .iter()
        .filter(|e| e["type"] == "output")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(out, "one\ntwo\nthree\nfour\n");
    let d = ok(server.cli(&["diff", &id]));
    assert_eq!(d, "", "no changes → empty diff");
    let show = ok(server.cli(&["show", &id]));
    assert!(show.contains("no changes"), "{show}");
}

#[tokio::test(flavor = "multi_thread")]
async fn environments_from_errand_toml() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let script = write_script(
        tmp.path(),
        "s.json",
        json!({"turns": [{"tool_calls": [
        {"name": "shell", "arguments": {"command": "echo \"greeting=$GREETING\""}},
        {"name": "finish", "arguments": {"summary": "ok"}}]}]}),
    );
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        format!(
            "[environments.shop]\nrepo = \"{}\"\nbase = \"v1\"\nmodel = \"scripted:{}\"\nchecks = [{{ name = \"lint\", command = \"test -f README.md\" }}, {{ name = \"fails\", command = \"exit 3\" }}]\n[environments.shop.env]\nGREETING = \"hi\"\n",
            repo.display(),
            script.display()
        ),
    )
    .unwrap();
    let server = Server::start(&data, &[]);
    let out = server.cli(&["run", "check env", "--env", "shop", "--follow"]);
    assert!(!out.status.success(), "a failing check must fail the task");
    let text = stdout(&out);
    assert!(text.contains("greeting=hi"), "{text}");
    assert!(text.contains("check lint: PASSED"), "{text}");
    assert!(text.contains("check fails: FAILED (exit 3"), "{text}");
    let ls: serde_json::Value =
        serde_json::from_str(&ok(server.cli(&["ls", "--json", "--status", "failed"]))).unwrap();
    let t = &ls["tasks"][0];
    assert_eq!(t["environment"]["name"], "shop");
    assert_eq!(t["base_ref"], "v1");
    assert!(
        t["error"]
            .as_str()
            .unwrap()
            .contains("check 'fails' failed (exit 3)"),
        "{t}"
    );
    fails_with(
        server.cli(&["run", "x", "--env", "nope"]),
        &["unknown environment 'nope'", "shop"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn checks_report_test_counts_from_junit_output_and_agents_md() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    // AGENTS.md names the check used when none is configured; a JUnit report from some
    // earlier run is committed and must not be taken for the check's.
    std::fs::create_dir_all(repo.join("scripts")).unwrap();
    std::fs::create_dir_all(repo.join("reports")).unwrap();
    std::fs::write(
        repo.join("AGENTS.md"),
        "# Sample\n\n## Testing\n\n```sh\n./scripts/test.sh\n```\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("scripts/test.sh"),
        "#!/bin/sh\necho '\u{1b}[32m============ 2 passed, 1 skipped in 0.01s ============\u{1b}[0m'\n",
    )
    .unwrap();
    std::fs::set_permissions(
        repo.join("scripts/test.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        repo.join("reports/old.xml"),
        "<testsuite><testcase name='stale'/></testsuite>",
    )
    .unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "tests"]);
    // The agent rewrites AGENTS.md; the checks still come from the version it started with.
    let script = write_script(
        tmp.path(),
        "s.json",
        json!({"turns": [{"tool_calls": [
            {"name": "write_file", "arguments": {"path": "AGENTS.md", "content": "## Testing\n\n`make test-nothing`\n"}},
            {"name": "shell", "arguments": {"command": "sleep 0.3"}},
            {"name": "finish", "arguments": {"summary": "ok"}}]}]}),
    );
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        format!(
            r#"[environments.counts]
repo = "{}"
model = "scripted:{}"

[[environments.counts.checks]]
name = "junit"
command = "mkdir -p reports/new && printf \"<testsuite><testcase name='a'/><testcase name='b'><skipped/></testcase></testsuite>\" > reports/new/junit.xml && echo 'test result: ok. 99 passed; 0 failed; 0 ignored'"
junit = "reports/**/*.xml"

[[environments.counts.checks]]
name = "hidden"
command = "printf 'test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n'; true"
"#,
            repo.display(),
            script.display()
        ),
    )
    .unwrap();
    let server = Server::start(&data, &[]);

    let out = server.cli(&["run", "counts", "--env", "counts", "--follow"]);
    assert!(
        !out.status.success(),
        "failed tests behind exit 0 must fail the task"
    );
    let text = stdout(&out);
    assert!(
        text.contains(
            "check junit: PASSED (exit 0, " // then the duration
        ) && text.contains("— tests: 1 passed, 0 failed, 1 skipped (junit)"),
        "{text}"
    );
    assert!(
        text.contains("reports/old.xml was not written by this run of the check"),
        "{text}"
    );
    assert!(
        text.contains("check hidden: FAILED (exit 0, ")
            && text.contains("— tests: 3 passed, 1 failed, 0 skipped (cargo)"),
        "{text}"
    );
    let ls: serde_json::Value =
        serde_json::from_str(&ok(server.cli(&["ls", "--json", "--status", "failed"]))).unwrap();
    let t = &ls["tasks"][0];
    assert!(
        t["error"]
            .as_str()
            .unwrap()
            .contains("check 'hidden' reported 1 failed test (exit 0)"),
        "{t}"
    );
    let short = t["short_id"].as_str().unwrap().to_string();
    let show: serde_json::Value =
        serde_json::from_str(&ok(server.cli(&["show", &short, "--json"]))).unwrap();
    let checks = &show["attempts"][0]["checks"];
    assert_eq!(
        checks[0]["tests"],
        json!({"passed": 1, "failed": 0, "skipped": 1, "source": "junit"})
    );
    assert_eq!(checks[1]["passed"], false);
    assert_eq!(checks[1]["exit_code"], 0);
    let table = ok(server.cli(&["show", &short]));
    for needle in [
        "PASSED FAILED SKIPPED",
        "✓ junit",
        "junit   mkdir",
        "✗ hidden",
        "cargo",
    ] {
        assert!(table.contains(needle), "show lacks {needle:?}:\n{table}");
    }

    // No checks configured: the ones AGENTS.md names, as it was before the agent ran.
    let rel = format!("scripted:{}", script.display());
    let out = ok(server.cli(&[
        "run",
        "agents",
        "--repo",
        repo.to_str().unwrap(),
        "--model",
        &rel,
        "--follow",
    ]));
    assert!(
        out.contains(
            "no checks configured; running the command named in AGENTS.md: `./scripts/test.sh`"
        ),
        "{out}"
    );
    assert!(
        out.contains("check ./scripts/test.sh: PASSED (exit 0, ")
            && out.contains("— tests: 2 passed, 0 failed, 1 skipped (pytest)"),
        "{out}"
    );
    assert!(!out.contains("$ make test-nothing"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_kills_the_running_command() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let marker = format!("{}.{}", 400 + std::process::id() % 500, 17);
    let script = write_script(
        tmp.path(),
        "s.json",
        json!({"turns": [{"tool_calls": [
        {"name": "shell", "arguments": {"command": format!("sleep {marker} & sleep {marker}; echo never")}}]}]}),
    );
    let server = Server::start(&tmp.path().join("data"), &[]);
    let out = ok(server.cli(&[
        "run",
        "sleep",
        "--repo",
        &repo.display().to_string(),
        "--model",
        &format!("scripted:{}", script.display()),
        "--json",
    ]));
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("the sleep to start", Duration::from_secs(30), || async {
        (!processes_with(&format!("sleep {marker}")).is_empty()).then_some(())
    })
    .await;
    let out = ok(server.cli(&["cancel", &id]));
    assert!(out.contains("cancelled task"), "{out}");
    let t = wait_status(&server, &id, &["cancelled"], Duration::from_secs(5)).await;
    assert_eq!(t["attempts"][0]["status"], "cancelled");
    wait_for("the processes to die", Duration::from_secs(10), || async {
        processes_with(&format!("sleep {marker}"))
            .is_empty()
            .then_some(())
    })
    .await;
    // The worker lets go and the log records the kill.
    wait_for(
        "the worker to release the attempt",
        Duration::from_secs(10),
        || async {
            let t = get_json(&server.api(&format!("/tasks/{id}"))).await;
            t["attempts"][0]["active_worker"].is_null().then_some(())
        },
    )
    .await;
    let evs = events(&server, &id).await;
    assert_contiguous(&evs);
    assert!(
        evs.iter()
            .any(|e| e["type"] == "command_finished" && e["killed_by"] == "cancelled"),
        "{evs:?}"
    );
    assert!(
        evs.iter()
            .any(|e| e["type"] == "status" && e["to"] == "cancelled")
    );
    // Cancelling again is fine; a finished task can't be cancelled.
    ok(server.cli(&["cancel", &id]));
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_attempt_then_restart_resumes_from_the_checkpoint_without_losing_events() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let data = tmp.path().join("data");
    let script = write_script(
        tmp.path(),
        "s.json",
        json!({"turns": [
        {"tool_calls": [{"name": "write_file", "arguments": {"path": "progress.txt", "content": "started\n"}}]},
        {"tool_calls": [{"name": "shell", "arguments": {"command": "echo before; sleep 2; echo after"}}]},
        {"tool_calls": [{"name": "finish", "arguments": {"summary": "survived a restart"}}]}]}),
    );
    let server = Server::start(&data, &["--lease-ttl", "3s"]);
    let out = ok(server.cli(&[
        "run",
        "slow",
        "--repo",
        &repo.display().to_string(),
        "--model",
        &format!("scripted:{}", script.display()),
        "--json",
    ]));
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let seen = wait_for(
        "the slow command to start",
        Duration::from_secs(30),
        || async {
            let evs = events(&server, &id).await;
            evs.iter()
                .any(|e| {
                    e["type"] == "output" && e["data"].as_str().unwrap_or("").contains("before")
                })
                .then_some(evs)
        },
    )
    .await;
    server.kill9();

    let server = Server::start(&data, &["--lease-ttl", "3s"]);
    let t = wait_status(&server, &id, &["done", "failed"], Duration::from_secs(60)).await;
    assert_eq!(t["status"], "done", "{t}");
    let a = &t["attempts"][0];
    assert_eq!(a["runs"], 2);
    // Turn 1 was checkpointed before the crash: run 2 goes on from there.
    assert_eq!(a["resumed_from"], "checkpoint");
    assert_eq!(a["turns"], 3);
    assert!(
        a["restart_reason"]
            .as_str()
            .unwrap()
            .contains("server restarted"),
        "{a}"
    );

    let evs = events(&server, &id).await;
    assert_contiguous(&evs);
    // Every event recorded before the crash is still there, in place: those after the
    // checkpoint (turn 2's model turn, call and output) are marked rolled back.
    for (old, new) in seen.iter().zip(evs.iter()) {
        assert_eq!(old["seq"], new["seq"]);
        assert_eq!(old["type"], new["type"]);
        assert_eq!(old["data"], new["data"]);
    }
    let rolled: Vec<&serde_json::Value> = evs.iter().filter(|e| e["rolled_back"] == true).collect();
    assert!(
        rolled
            .iter()
            .any(|e| e["type"] == "model_turn" && e["turn"] == 2),
        "{rolled:#?}"
    );
    let runs: Vec<i64> = evs.iter().map(|e| e["run"].as_i64().unwrap()).collect();
    assert!(
        runs.windows(2).all(|w| w[0] <= w[1]),
        "runs must not interleave: {runs:?}"
    );
    let claimed: Vec<&serde_json::Value> = evs.iter().filter(|e| e["type"] == "claimed").collect();
    assert_eq!(claimed.len(), 2);
    assert_eq!(claimed[1]["resumed_from"], "checkpoint");
    assert_eq!(claimed[1]["turn"], 1);
    assert!(evs.iter().any(|e| {
        e["type"] == "status"
            && e["to"] == "queued"
            && e["reason"]
                .as_str()
                .unwrap_or("")
                .contains("server restarted")
    }));
    // Run 2 did not repeat turn 1 (its write), ran turn 2 again and finished.
    let live_writes = evs
        .iter()
        .filter(|e| e["type"] == "tool_call" && e["name"] == "write_file")
        .count();
    assert_eq!(live_writes, 1);
    let afters = evs
        .iter()
        .filter(|e| {
            e["run"] == 2
                && e["type"] == "output"
                && e["data"].as_str().unwrap_or("").contains("after")
        })
        .count();
    assert_eq!(afters, 1);
    let show = ok(server.cli(&["show", &id]));
    assert!(show.contains("restarted from checkpoint"), "{show}");
    let diff = ok(server.cli(&["diff", &id]));
    assert!(diff.contains("+started"), "{diff}");
}

#[tokio::test(flavor = "multi_thread")]
async fn accepted_task_survives_kill_9_and_sse_resumes_from_last_event_id() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let data = tmp.path().join("data");
    let script = write_script(
        tmp.path(),
        "s.json",
        json!({"turns": [{"tool_calls": [
        {"name": "shell", "arguments": {"command": "for i in 1 2 3; do echo line$i; done"}},
        {"name": "finish", "arguments": {"summary": "ok"}}]}]}),
    );
    let server = Server::start(&data, &["--workers", "0"]);
    let resp = http()
        .post(server.api("/tasks"))
        .json(&json!({"prompt": "durable", "repo": repo.display().to_string(), "model": format!("scripted:{}", script.display())}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    server.kill9();

    let server = Server::start(&data, &[]);
    let t = wait_status(&server, &id, &["done"], Duration::from_secs(60)).await;
    assert_eq!(t["prompt"], "durable");
    let all = events(&server, &id).await;
    assert!(all.len() > 6);

    // SSE from Last-Event-ID 5: ids 6.. in order, then an `end` event.
    let resp = http()
        .get(server.api(&format!("/tasks/{id}/events/stream")))
        .header("accept", "text/event-stream")
        .header("last-event-id", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = resp.text().await.unwrap();
    let ids: Vec<i64> = body
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|s| s.parse().unwrap())
        .collect();
    let expected: Vec<i64> = (6..=all.len() as i64).collect();
    assert_eq!(ids, expected);
    assert!(body.contains("event: end"), "{body}");
    // The same through Accept negotiation on the JSON endpoint, with ?after=.
    let resp = http()
        .get(server.api(&format!("/tasks/{id}/events?after={}", all.len() - 1)))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let body = resp.text().await.unwrap();
    assert_eq!(
        body.lines().filter(|l| l.starts_with("id: ")).count(),
        1,
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_runs_the_whole_pipeline_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["demo", "--data-dir"])
        .arg(tmp.path().join("home"))
        .env_remove("ERRAND_SERVER")
        .env("ERRAND_LOG", "warn")
        .output()
        .unwrap();
    let text = ok(out);
    for needle in [
        "SCRIPTED",
        "sandbox: box",
        "FAILED (failures=2)",
        "-    end = start + per_page - 1",
        "+    end = start + per_page",
        "check tests: PASSED",
        "Demo complete.",
    ] {
        assert!(
            text.contains(needle),
            "demo output lacks {needle:?}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_none_marks_every_event_unisolated() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let script = write_script(
        tmp.path(),
        "s.json",
        json!({"turns": [{"tool_calls": [
        {"name": "shell", "arguments": {"command": "echo \"$ERRAND_SANDBOX\""}},
        {"name": "finish", "arguments": {"summary": "ok"}}]}]}),
    );
    let server = Server::start(&tmp.path().join("data"), &["--sandbox", "none"]);
    let out = ok(server.cli(&[
        "run",
        "x",
        "--repo",
        &repo.display().to_string(),
        "--model",
        &format!("scripted:{}", script.display()),
        "--follow",
    ]));
    assert!(out.contains("sandbox: none — UNISOLATED"), "{out}");
    let event_lines: Vec<&str> = out.lines().filter(|l| l.contains(" #")).collect();
    assert!(!event_lines.is_empty());
    assert!(
        event_lines.iter().all(|l| l.contains("[UNISOLATED]")),
        "{out}"
    );
    let id = serde_json::from_str::<serde_json::Value>(&ok(server.cli(&["ls", "--json"]))).unwrap()
        ["tasks"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let evs = events(&server, &id).await;
    assert!(evs.len() > 5);
    assert!(evs.iter().all(|e| e["unisolated"] == true), "{evs:?}");
    assert_eq!(evs[0]["isolated"], false);
    assert!(
        evs.iter()
            .any(|e| e["type"] == "output" && e["data"] == "none\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn attempts_run_boxed_and_git_works_inside() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let marker = tmp.path().join("host-secret.txt");
    std::fs::write(&marker, "secret").unwrap();
    let script = write_script(
        tmp.path(),
        "s.json",
        json!({"turns": [{"tool_calls": [
        {"name": "shell", "arguments": {"command": format!("git log --oneline | wc -l; git status --short; pwd; cat {} || echo no-host-file; echo \"$ERRAND_SANDBOX\"", marker.display())}},
        {"name": "finish", "arguments": {"summary": "ok"}}]}]}),
    );
    let server = Server::start(&tmp.path().join("data"), &[]);
    let out = ok(server.cli(&[
        "run",
        "x",
        "--repo",
        &repo.display().to_string(),
        "--model",
        &format!("scripted:{}", script.display()),
        "--json",
    ]));
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_status(&server, &id, &["done"], std::time::Duration::from_secs(60)).await;
    let evs = events(&server, &id).await;
    // stdout and stderr are separate pipes: their relative order is not fixed.
    let stream = |name: &str| -> String {
        evs.iter()
            .filter(|e| e["type"] == "output" && e["stream"] == name)
            .map(|e| e["data"].as_str().unwrap())
            .collect()
    };
    let (out, err) = (stream("stdout"), stream("stderr"));
    assert_eq!(
        out, "2\n/workspace\nno-host-file\nbox\n",
        "git sees the history through the mirror's objects; the host file is not there"
    );
    assert!(err.contains("No such file or directory"), "{err}");
    let enforced = evs
        .iter()
        .find(|e| {
            e["type"] == "notice"
                && e["message"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("sandbox: box — namespaces")
        })
        .unwrap_or_else(|| panic!("no enforcement notice: {evs:?}"));
    let msg = enforced["message"].as_str().unwrap();
    assert!(
        msg.contains("landlock") && msg.contains("seccomp enforced") && msg.contains("net"),
        "{msg}"
    );
}

/// Whatever the agent does to the workspace's `.git` (hooks, fsmonitor, its own commits, another
/// branch, a `gitdir:` redirect), the worker's commit runs nothing of it on the host and keeps
/// the work.
#[tokio::test(flavor = "multi_thread")]
async fn the_workspace_git_dir_is_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let before = repo_fingerprint(&repo);
    let pwned = tmp.path().join("pwned-hook");
    let pwned2 = tmp.path().join("pwned-fsmonitor");
    let plant = format!(
        "mkdir -p .git/hooks && printf '#!/bin/sh\\ntouch {h}\\n' > .git/hooks/post-index-change && chmod +x .git/hooks/post-index-change && \
         cp .git/hooks/post-index-change .git/hooks/pre-commit && git config core.fsmonitor 'touch {f}; true' && \
         git checkout -q -b elsewhere && echo agent-commit > committed.txt && git add -A && git -c user.name=a -c user.email=a@b commit -qm mine && \
         echo uncommitted > loose.txt",
        h = pwned.display(),
        f = pwned2.display()
    );
    let script = write_script(
        tmp.path(),
        "s.json",
        json!({"turns": [{"tool_calls": [
        {"name": "shell", "arguments": {"command": plant}},
        {"name": "finish", "arguments": {"summary": "tampered"}}]}]}),
    );
    let server = Server::start(&tmp.path().join("data"), &[]);
    let out = ok(server.cli(&[
        "run",
        "x",
        "--repo",
        &repo.display().to_string(),
        "--model",
        &format!("scripted:{}", script.display()),
        "--json",
    ]));
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = wait_status(
        &server,
        &id,
        &["done", "failed"],
        std::time::Duration::from_secs(60),
    )
    .await;
    assert_eq!(t["status"], "done", "{t}");
    assert!(
        !pwned.exists() && !pwned2.exists(),
        "a hook planted by the agent ran on the host"
    );
    let diff = ok(server.cli(&["diff", &id]));
    assert!(
        diff.contains("+++ b/committed.txt") && diff.contains("+++ b/loose.txt"),
        "{diff}"
    );
    assert!(!diff.contains(".git/"), "{diff}");
    assert_eq!(repo_fingerprint(&repo), before);
}
