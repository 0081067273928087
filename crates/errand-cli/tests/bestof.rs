//! Best-of-N end to end through the real binary: several attempts of one task run in
//! parallel on different workers, each in its own workspace and on its own branch; they are
//! ranked when they end; the top one is the task's result until `errand pick` switches it;
//! `errand compare` shows them side by side; cancelling the task cancels every attempt; with
//! push on, only the result is delivered, and a pick delivers the picked one.

mod common;

use common::*;
use errand_fakes::forge::{FakeForge, Fault, ForgeVendor};
use errand_fakes::git_http::GitHttpServer;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// Attempt 1: the smallest fix. Each script first sleeps so that the attempts overlap.
fn small_fix() -> Value {
    json!({"turns": [
        {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 3"}}]},
        {"tool_calls": [{"name": "edit", "arguments": {"path": "src/lib.txt", "old": "two\n", "new": "TWO\n"}}]},
        {"tool_calls": [{"name": "finish", "arguments": {"summary": "a: upper-cased two"}}]}
    ]})
}

/// Attempt 2: the same fix and a notes file (a bigger diff).
fn bigger_fix() -> Value {
    json!({"turns": [
        {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 3"}}]},
        {"tool_calls": [
            {"name": "edit", "arguments": {"path": "src/lib.txt", "old": "two\n", "new": "TWO\n"}},
            {"name": "write_file", "arguments": {"path": "notes/b.txt", "content": "b1\nb2\nb3\n"}}]},
        {"tool_calls": [{"name": "finish", "arguments": {"summary": "b: upper-cased two, with notes"}}]}
    ]})
}

/// Attempt 3: the wrong change; the check fails.
fn wrong_fix() -> Value {
    json!({"turns": [
        {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 3"}}]},
        {"tool_calls": [{"name": "edit", "arguments": {"path": "src/lib.txt", "old": "one\n", "new": "ONE\n"}}]},
        {"tool_calls": [{"name": "finish", "arguments": {"summary": "c: upper-cased one"}}]}
    ]})
}

fn scripted(dir: &Path, name: &str, script: Value) -> String {
    format!("scripted:{}", write_script(dir, name, script).display())
}

fn show_json(server: &Server, id: &str) -> Value {
    serde_json::from_str(&ok(server.cli(&["show", id, "--json"]))).unwrap()
}

fn attempt(t: &Value, n: i64) -> Value {
    t["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["number"] == n)
        .cloned()
        .unwrap_or_else(|| panic!("no attempt {n} in {t}"))
}

fn mirror_of(data: &Path) -> std::path::PathBuf {
    let mirrors: Vec<_> = std::fs::read_dir(data.join("mirrors"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(mirrors.len(), 1);
    mirrors[0].path()
}

#[tokio::test(flavor = "multi_thread")]
async fn best_of_three_runs_in_parallel_ranks_compares_and_picks() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let (a, b, c) = (
        scripted(tmp.path(), "a.json", small_fix()),
        scripted(tmp.path(), "b.json", bigger_fix()),
        scripted(tmp.path(), "c.json", wrong_fix()),
    );
    let data = tmp.path().join("data");
    let server = Server::start(&data, &["--workers", "3"]);

    let out = ok(server.cli(&[
        "run",
        "Upper-case two",
        "--repo",
        repo.to_str().unwrap(),
        "--attempts",
        "3",
        "--model",
        &a,
        "--model",
        &b,
        "--model",
        &c,
        "--check",
        "tests=grep -q TWO src/lib.txt",
        "--follow",
    ]));
    assert!(out.contains("3 attempts"), "{out}");
    for n in 1..=3 {
        assert!(out.contains(&format!("attempt {n} (")), "{out}");
    }
    assert!(out.contains("check 'tests' failed (exit 1)"), "{out}");
    assert!(
        out.contains("RANK"),
        "the compare table ends the follow:\n{out}"
    );

    let ls: Value = serde_json::from_str(&ok(server.cli(&["ls", "--json"]))).unwrap();
    let id = ls["tasks"][0]["id"].as_str().unwrap().to_string();
    let short = id[..8].to_string();
    let t = show_json(&server, &short);
    assert_eq!(
        t["status"], "done",
        "done: every attempt ended, one at least done"
    );
    assert_eq!(t["attempts"].as_array().unwrap().len(), 3);
    let (a1, a2, a3) = (attempt(&t, 1), attempt(&t, 2), attempt(&t, 3));
    // The models are cycled over the attempts; each has its own branch.
    assert_eq!(a1["model"], a.as_str());
    assert_eq!(a2["model"], b.as_str());
    assert_eq!(a3["model"], c.as_str());
    let base_branch = format!("errand/{short}-upper-case-two");
    assert_eq!(a1["branch"], base_branch.as_str());
    assert_eq!(a2["branch"], format!("{base_branch}-2").as_str());
    assert_eq!(a3["branch"], format!("{base_branch}-3").as_str());
    assert_eq!(
        (
            a1["status"].as_str(),
            a2["status"].as_str(),
            a3["status"].as_str()
        ),
        (Some("done"), Some("done"), Some("failed"))
    );
    // Ranked: the smallest passing diff first, the failing attempt last.
    assert_eq!(
        (
            a1["rank"].as_i64(),
            a2["rank"].as_i64(),
            a3["rank"].as_i64()
        ),
        (Some(1), Some(2), Some(3))
    );
    assert_eq!(t["selected_attempt"], 1);
    assert!(t["picked"].is_null());

    // They ran at the same time, on three different workers.
    let workers: std::collections::BTreeSet<&str> = [&a1, &a2, &a3]
        .iter()
        .map(|x| x["worker"].as_str().unwrap())
        .collect();
    assert_eq!(workers.len(), 3, "{workers:?}");
    let latest_start = [&a1, &a2, &a3]
        .iter()
        .map(|x| x["started_at_ms"].as_i64().unwrap())
        .max()
        .unwrap();
    let earliest_end = [&a1, &a2, &a3]
        .iter()
        .map(|x| x["finished_at_ms"].as_i64().unwrap())
        .min()
        .unwrap();
    assert!(
        latest_start < earliest_end,
        "every attempt started before any ended: the three ran in parallel"
    );

    // Each branch has its own change only.
    let mirror = mirror_of(&data);
    let base = t["base_commit"].as_str().unwrap();
    let changed = |branch: &str| {
        git(&mirror, &["diff", "--name-only", base, branch])
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let file = |branch: &str, path: &str| git(&mirror, &["show", &format!("{branch}:{path}")]);
    assert_eq!(changed(&base_branch), vec!["src/lib.txt"]);
    assert_eq!(file(&base_branch, "src/lib.txt"), "one\nTWO\nthree\nfour\n");
    let b2 = format!("{base_branch}-2");
    assert_eq!(changed(&b2), vec!["notes/b.txt", "src/lib.txt"]);
    assert_eq!(file(&b2, "src/lib.txt"), "one\nTWO\nthree\nfour\n");
    let b3 = format!("{base_branch}-3");
    assert_eq!(changed(&b3), vec!["src/lib.txt"]);
    assert_eq!(file(&b3, "src/lib.txt"), "ONE\ntwo\nthree\nfour\n");
    for (branch, attempt_id) in [
        (&base_branch, &a1["id"]),
        (&b2, &a2["id"]),
        (&b3, &a3["id"]),
    ] {
        let msg = git(&mirror, &["log", "-1", "--format=%B", branch]);
        assert!(
            msg.contains(&format!("Errand-Attempt: {}", attempt_id.as_str().unwrap())),
            "{msg}"
        );
    }

    // The task's result is the top attempt: diff shows attempt 1.
    let diff = ok(server.cli(&["diff", &short]));
    assert!(diff.contains("+TWO"), "{diff}");
    assert!(!diff.contains("notes/b.txt"), "{diff}");
    assert!(ok(server.cli(&["diff", &short, "--attempt", "3"])).contains("+ONE"));

    // compare: a table with every attempt; the result marked.
    let table = ok(server.cli(&["compare", &short]));
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows[0].contains("MODEL") && rows[0].contains("VERDICT") && rows[0].contains("RANK"),
        "{table}"
    );
    let row = |n: usize| rows[n];
    assert!(row(1).starts_with("*  1"), "{table}");
    assert!(
        row(2).starts_with("   2") && row(3).starts_with("   3"),
        "{table}"
    );
    for (n, needles) in [
        (1, vec!["a.json", "done", "1/1", "+1 -1", "$0.00", " 1"]),
        (2, vec!["b.json", "done", "1/1", "+4 -1", " 2"]),
        (3, vec!["c.json", "failed", "0/1", "+1 -1", " 3"]),
    ] {
        for needle in needles {
            assert!(
                row(n).contains(needle),
                "row {n} lacks {needle:?}:\n{table}"
            );
        }
        assert!(
            row(n).trim_end().ends_with(&n.to_string()),
            "rank column:\n{table}"
        );
    }
    assert!(
        table.contains("the task's result: attempt 1, ranked first"),
        "{table}"
    );
    let cj: Value = serde_json::from_str(&ok(server.cli(&["compare", &short, "--json"]))).unwrap();
    assert_eq!(cj["selected_attempt"], 1);
    let rows = cj["attempts"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["checks"], json!({"passed": 1, "total": 1}));
    assert_eq!(rows[2]["checks"], json!({"passed": 0, "total": 1}));
    assert_eq!(
        rows[1]["diff"],
        json!({"insertions": 4, "deletions": 1, "files": 2})
    );
    assert_eq!(
        rows.iter()
            .map(|r| r["rank"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(
        rows.iter()
            .map(|r| r["selected"].as_bool().unwrap())
            .collect::<Vec<_>>(),
        vec![true, false, false]
    );
    assert!(
        rows.iter()
            .all(|r| r["duration_ms"].as_i64().unwrap() >= 3000)
    );

    // Pick attempt 2: it becomes the result; diff follows it.
    let out = ok(server.cli(&["pick", &short, "2"]));
    assert!(out.contains("attempt 2 is the result of task"), "{out}");
    assert!(out.contains("(was attempt 1)"), "{out}");
    let diff = ok(server.cli(&["diff", &short]));
    assert!(diff.contains("+++ b/notes/b.txt"), "{diff}");
    let t = show_json(&server, &short);
    assert_eq!(t["selected_attempt"], 2);
    assert_eq!(t["picked"]["attempt"], 2);
    assert_eq!(t["picked"]["attempt_id"], a2["id"]);
    assert!(!t["picked"]["by"].as_str().unwrap().is_empty());
    assert!(t["picked"]["at_ms"].as_i64().unwrap() > 0);
    assert_eq!(attempt(&t, 1)["rank"], 1, "a pick does not rerank");
    let table = ok(server.cli(&["compare", &short]));
    assert!(table.lines().nth(2).unwrap().starts_with("*  2"), "{table}");
    assert!(
        table.contains("the task's result: attempt 2, picked by"),
        "{table}"
    );
    let show = ok(server.cli(&["show", &short]));
    assert!(
        show.contains("Attempt 2 — done — rank 2 — the task's result"),
        "{show}"
    );
    assert!(show.contains("Result    attempt 2 (picked by"), "{show}");
    // By id prefix too; bad picks say what is wrong.
    let a1_id = a1["id"].as_str().unwrap();
    ok(server.cli(&["pick", &short, &a1_id[..10]]));
    assert!(ok(server.cli(&["diff", &short])).contains("+TWO"));
    fails_with(server.cli(&["pick", &short, "7"]), &["has no attempt 7"]);
    fails_with(
        server.cli(&["pick", &short, "zzzz"]),
        &["has no attempt 'zzzz'"],
    );
    // The pick is in the picked attempt's log.
    let logs = ok(server.cli(&["logs", &short, "--attempt", "2"]));
    assert!(logs.contains("picked by"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_best_of_three_task_cancels_every_attempt() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let marker = format!("{}.{}", 300 + std::process::id() % 500, 23);
    let script = scripted(
        tmp.path(),
        "slow.json",
        json!({"turns": [{"tool_calls": [
            {"name": "shell", "arguments": {"command": format!("sleep {marker}; echo never")}}]}]}),
    );
    let server = Server::start(&tmp.path().join("data"), &["--workers", "3"]);
    let out = ok(server.cli(&[
        "run",
        "sleep in three",
        "--repo",
        repo.to_str().unwrap(),
        "--model",
        &script,
        "--attempts",
        "3",
        "--json",
    ]));
    let t: Value = serde_json::from_str(&out).unwrap();
    let id = t["id"].as_str().unwrap().to_string();
    assert_eq!(t["attempts"].as_array().unwrap().len(), 3);
    wait_for(
        "the three sleeps to start",
        Duration::from_secs(60),
        || async { (processes_with(&format!("sleep {marker}")).len() >= 3).then_some(()) },
    )
    .await;
    let out = ok(server.cli(&["cancel", &id]));
    assert!(out.contains("cancelled task"), "{out}");
    let t = wait_status(&server, &id, &["cancelled"], Duration::from_secs(10)).await;
    for a in t["attempts"].as_array().unwrap() {
        assert_eq!(a["status"], "cancelled", "{a}");
    }
    wait_for("the processes to die", Duration::from_secs(15), || async {
        processes_with(&format!("sleep {marker}"))
            .is_empty()
            .then_some(())
    })
    .await;
    wait_for(
        "the workers to release the attempts",
        Duration::from_secs(15),
        || async {
            let t = get_json(&server.api(&format!("/tasks/{id}"))).await;
            t["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a["active_worker"].is_null())
                .then_some(())
        },
    )
    .await;
    for n in 1..=3 {
        let v = get_json(&server.api(&format!("/tasks/{id}/events?attempt={n}&limit=10000"))).await;
        let evs = v["events"].as_array().unwrap();
        assert_contiguous(evs);
        assert!(
            evs.iter()
                .any(|e| e["type"] == "command_finished" && e["killed_by"] == "cancelled"),
            "attempt {n}: {evs:?}"
        );
        assert!(
            evs.iter()
                .any(|e| e["type"] == "status" && e["to"] == "cancelled")
        );
    }
    // Nothing is delivered or ranked first on its own: all were cancelled.
    let t = get_json(&server.api(&format!("/tasks/{id}"))).await;
    assert!(
        t["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["delivery"].is_null())
    );
}

/// A best-of-2 task with push and draft pull requests on, ended and delivered: attempt 1 (the
/// smaller fix) is the result, pushed over real git HTTP, its pull request opened on a fake
/// forge of `vendor`.
struct Delivered {
    _tmp: tempfile::TempDir,
    repo: std::path::PathBuf,
    bare: std::path::PathBuf,
    _git: GitHttpServer,
    forge: FakeForge,
    server: Server,
    id: String,
    short: String,
    br1: String,
    br2: String,
}

fn remote_branches(bare: &Path) -> String {
    git(
        bare,
        &[
            "for-each-ref",
            "--format=%(refname:short)",
            "refs/heads/errand",
        ],
    )
}

fn best_of_two_delivered(vendor: ForgeVendor, token: &str) -> Delivered {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let remotes = tmp.path().join("remotes");
    std::fs::create_dir_all(remotes.join("acme")).unwrap();
    let bare = remotes.join("acme/shop.git");
    let out = std::process::Command::new("git")
        .args(["clone", "--quiet", "--bare"])
        .arg(&repo)
        .arg(&bare)
        .output()
        .unwrap();
    assert!(out.status.success());
    let user = match vendor {
        ForgeVendor::GitHub => "x-access-token",
        ForgeVendor::GitLab => "oauth2",
        ForgeVendor::Gitea => "errand",
    };
    let git_server = GitHttpServer::start(&remotes, Some((user, token)));
    let forge = FakeForge::start(vendor, "acme/shop", token);
    let (a, b) = (
        scripted(tmp.path(), "a.json", small_fix()),
        scripted(tmp.path(), "b.json", bigger_fix()),
    );
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        format!(
            r#"
public_url = "http://errand.example.test"
[environments.shop]
repo = "{}"
checks = [{{ name = "upper", command = "grep -q TWO src/lib.txt" }}]
push = true
pr = "draft"
remote = "{}"
[environments.shop.forge]
kind = "{}"
api_url = "{}"
token_env = "FORGE_TOKEN"
"#,
            repo.display(),
            git_server.url("acme/shop.git"),
            vendor.kind(),
            forge.api_url
        ),
    )
    .unwrap();
    let server = Server::start_with_env(&data, &["--workers", "2"], &[("FORGE_TOKEN", token)]);
    let out = ok(server.cli(&[
        "run",
        "Upper-case two",
        "--env",
        "shop",
        "--model",
        &a,
        "--model",
        &b,
        "--follow",
    ]));
    assert!(out.contains("Delivery  pushed"), "{out}");
    let ls: Value = serde_json::from_str(&ok(server.cli(&["ls", "--json"]))).unwrap();
    let id = ls["tasks"][0]["id"].as_str().unwrap().to_string();
    let t = show_json(&server, &id);
    let (a1, a2) = (attempt(&t, 1), attempt(&t, 2));
    Delivered {
        short: t["short_id"].as_str().unwrap().to_string(),
        br1: a1["branch"].as_str().unwrap().to_string(),
        br2: a2["branch"].as_str().unwrap().to_string(),
        _tmp: tmp,
        repo,
        bare,
        _git: git_server,
        forge,
        server,
        id,
    }
}

/// The requests the fake forge got after the first `skip`, as `METHOD PATH`, with their bodies.
fn forge_requests(forge: &FakeForge, skip: usize) -> Vec<(String, Value)> {
    forge
        .requests()
        .into_iter()
        .skip(skip)
        .map(|r| (format!("{} {}", r.method, r.path), r.body))
        .collect()
}

#[test]
fn only_the_result_is_delivered_and_a_pick_delivers_the_picked_attempt_and_closes_the_old_pr() {
    const TOKEN: &str = "ghp_bestofSecretToken0123456789";
    let d = best_of_two_delivered(ForgeVendor::GitHub, TOKEN);
    let (server, forge, bare, id) = (&d.server, &d.forge, &d.bare, &d.id);
    let (br1, br2) = (&d.br1, &d.br2);
    let t = show_json(server, id);
    let (a1, a2) = (attempt(&t, 1), attempt(&t, 2));
    assert_eq!(t["selected_attempt"], 1);
    // Only the result went out: its branch and one pull request.
    assert_eq!(a1["delivery"]["push"], "created", "{a1}");
    assert!(a2["delivery"].is_null(), "{a2}");
    let branches = remote_branches(bare);
    assert!(
        branches.contains(br1.as_str()) && !branches.contains(br2.as_str()),
        "{branches}"
    );
    let pulls = forge.pulls();
    assert_eq!(pulls.len(), 1);
    assert_eq!(&pulls[0].head, br1);
    assert!(pulls[0].draft);
    assert!(
        pulls[0].body.contains("Best of 2: attempt 1") && pulls[0].body.contains("ranked 1 of 2"),
        "{}",
        pulls[0].body
    );
    let pr1 = "https://github.example/acme/shop/pull/1";
    let pr2 = "https://github.example/acme/shop/pull/2";
    assert_eq!(a1["delivery"]["pr_url"], pr1);

    // Picking attempt 2 pushes its branch, opens its pull request, and closes attempt 1's
    // with a comment that points at the new one.
    let seen = forge.requests().len();
    let out = ok(server.cli(&["pick", id, "2"]));
    assert!(out.contains("attempt 2 is the result"), "{out}");
    assert!(out.contains("pull request created"), "{out}");
    assert!(
        out.contains(&format!("closed the superseded pull request {pr1}")),
        "{out}"
    );
    let branches = remote_branches(bare);
    assert!(branches.contains(br2.as_str()), "{branches}");
    assert!(
        branches.contains(br1.as_str()),
        "the superseded branch stays: {branches}"
    );
    let t = show_json(server, id);
    let by = t["picked"]["by"].as_str().unwrap().to_string();
    let a2 = attempt(&t, 2);
    assert_eq!(a2["delivery"]["push"], "created", "{a2}");
    assert_eq!(a2["delivery"]["pr_url"], pr2, "{a2}");
    assert_eq!(
        git(bare, &["rev-parse", &format!("refs/heads/{br2}")]).trim(),
        a2["head_commit"].as_str().unwrap()
    );
    let comment = format!(
        "Superseded by #2 (attempt 2 of task {}, picked by {by}).\n\n{pr2}",
        d.short
    );
    let reqs = forge_requests(forge, seen);
    let names: Vec<&str> = reqs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "POST /repos/acme/shop/pulls",
            "GET /repos/acme/shop/pulls/1",
            "PATCH /repos/acme/shop/pulls/1",
            "POST /repos/acme/shop/issues/1/comments",
        ],
        "opened the new one first, then closed the old one"
    );
    assert_eq!(reqs[0].1["head"], br2.as_str());
    assert_eq!(reqs[2].1, json!({"state": "closed"}));
    assert_eq!(reqs[3].1, json!({"body": comment}));
    let pulls = forge.pulls();
    assert_eq!(pulls.len(), 2);
    assert!(!pulls[0].open && &pulls[0].head == br1, "{pulls:?}");
    let new_pr = pulls.iter().find(|p| &p.head == br2).unwrap();
    assert!(new_pr.open);
    assert!(
        new_pr.body.contains("Best of 2: attempt 2") && new_pr.body.contains("picked by"),
        "{}",
        new_pr.body
    );
    assert_eq!(forge.comments().len(), 1);
    // Recorded on the superseded attempt, for show and its log.
    let a1 = attempt(&t, 1);
    let sup = &a1["delivery"]["superseded"];
    assert_eq!(sup["closed"], true, "{a1}");
    assert_eq!(sup["outcome"], "closed");
    assert_eq!(sup["by_attempt"], 2);
    assert_eq!(sup["by_pr_url"], pr2);
    assert_eq!(sup["picked_by"], by.as_str());
    assert_eq!(
        sup["comment_url"],
        "https://github.example/acme/shop/pull/1#issuecomment-5001"
    );
    assert!(sup["error"].is_null());
    assert_eq!(a1["delivery"]["pr_url"], pr1, "the old URL stays on record");
    let show = ok(server.cli(&["show", id]));
    assert!(
        show.contains(&format!(
            "superseded by attempt 2 (picked by {by}): pull request closed"
        )),
        "{show}"
    );
    let logs = ok(server.cli(&["logs", id, "--attempt", "1"]));
    assert!(
        logs.contains(&format!("closed the pull request {pr1}")),
        "{logs}"
    );
    assert_eq!(
        git(bare, &["rev-parse", "refs/heads/main"]).trim(),
        git(&d.repo, &["rev-parse", "main"]).trim(),
        "main untouched"
    );

    // Picking it again changes nothing more.
    let seen = forge.requests().len();
    let out = ok(server.cli(&["pick", id, "2"]));
    assert!(!out.contains("pull request"), "{out}");
    assert_eq!(forge.requests().len(), seen);

    // Picking attempt 1 back: a new pull request for it, and attempt 2's is closed; --json
    // passes the outcome through.
    let v: Value = serde_json::from_str(&ok(server.cli(&["pick", id, "1", "--json"]))).unwrap();
    let pr3 = "https://github.example/acme/shop/pull/3";
    assert_eq!(v["delivery"]["pr_url"], pr3, "{v}");
    assert_eq!(v["superseded_pr"], pr2, "{v}");
    assert_eq!(v["superseded_attempt"], 2);
    assert_eq!(v["superseded_closed"], true);
    assert_eq!(v["superseded_outcome"], "closed");
    assert_eq!(
        v["superseded_comment_url"],
        "https://github.example/acme/shop/pull/2#issuecomment-5002"
    );
    assert!(v["superseded_close_error"].is_null(), "{v}");
    let pulls = forge.pulls();
    assert_eq!(pulls.len(), 3);
    assert!(!pulls[1].open && pulls[2].open && &pulls[2].head == br1);
    let c = forge.comments();
    assert_eq!(c[1].number, 2);
    assert!(
        c[1].body
            .starts_with(&format!("Superseded by #3 (attempt 1 of task {}", d.short)),
        "{}",
        c[1].body
    );
    // Attempt 1 is the result again: its record no longer says it was superseded.
    let t = show_json(server, id);
    assert!(attempt(&t, 1)["delivery"]["superseded"].is_null());
    assert_eq!(attempt(&t, 2)["delivery"]["superseded"]["by_attempt"], 1);
    assert!(!ok(server.cli(&["show", id, "--json"])).contains(TOKEN));
}

#[test]
fn a_pick_stands_when_the_old_merge_request_cannot_be_closed_and_a_later_pick_retries() {
    const TOKEN: &str = "glpat-bestofSecretToken0123456789";
    let d = best_of_two_delivered(ForgeVendor::GitLab, TOKEN);
    let (server, forge, id) = (&d.server, &d.forge, &d.id);
    let mr1 = "https://gitlab.example/acme/shop/-/merge_requests/1";
    let mr2 = "https://gitlab.example/acme/shop/-/merge_requests/2";
    assert_eq!(
        attempt(&show_json(server, id), 1)["delivery"]["pr_url"],
        mr1
    );

    // 1. The new merge request cannot be opened: the old one is not touched.
    forge.inject(Fault::new(ForgeVendor::GitLab, 500, "500 Internal Server Error").on("POST"));
    let seen = forge.requests().len();
    let o = server.cli(&["pick", id, "2"]);
    let out = stdout(&o);
    assert!(!o.status.success(), "the delivery failed: {out}");
    assert!(out.contains("attempt 2 is the result"), "{out}");
    assert!(
        out.contains(&format!(
            "the superseded pull request {mr1} stays open: not closed: attempt 2's pull request was not opened"
        )),
        "{out}"
    );
    let names: Vec<String> = forge_requests(forge, seen)
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(names, ["POST /projects/acme%2Fshop/merge_requests"]);
    assert!(forge.pulls()[0].open);

    // 2. Picked again: delivered now, but the token may open merge requests and not close
    //    them. The pick and the new delivery stand; the failure is reported.
    forge.inject(Fault::new(ForgeVendor::GitLab, 403, "403 Forbidden").on("PUT"));
    let seen = forge.requests().len();
    let out = ok(server.cli(&["pick", id, "2"]));
    assert!(
        out.contains(&format!("pull request created: {mr2}")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "the superseded pull request {mr1} stays open: closing it failed:"
        )),
        "{out}"
    );
    assert!(out.contains("may not close merge requests"), "{out}");
    assert!(out.contains("HTTP 403"), "{out}");
    assert!(
        out.contains("FORGE_TOKEN"),
        "names the token variable: {out}"
    );
    assert!(!out.contains(TOKEN));
    let reqs = forge_requests(forge, seen);
    let names: Vec<&str> = reqs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "POST /projects/acme%2Fshop/merge_requests",
            "GET /projects/acme%2Fshop/merge_requests/1",
            "PUT /projects/acme%2Fshop/merge_requests/1",
        ],
        "no note after the refused close"
    );
    assert_eq!(reqs[0].1["source_branch"], d.br2.as_str());
    assert_eq!(reqs[2].1, json!({"state_event": "close"}));
    let pulls = forge.pulls();
    assert_eq!(pulls.len(), 2);
    assert!(pulls[0].open && pulls[1].open, "{pulls:?}");
    assert!(forge.comments().is_empty());
    let t = show_json(server, id);
    assert_eq!(t["selected_attempt"], 2);
    assert_eq!(t["picked"]["attempt"], 2);
    let a2 = attempt(&t, 2);
    assert_eq!(a2["delivery"]["pr_url"], mr2);
    assert!(a2["delivery"]["error"].is_null(), "{a2}");
    let sup = &attempt(&t, 1)["delivery"]["superseded"];
    assert_eq!(sup["closed"], false, "{sup}");
    assert_eq!(sup["outcome"], "left_open");
    assert!(sup["error"].as_str().unwrap().contains("HTTP 403"), "{sup}");
    let show = ok(server.cli(&["show", id]));
    assert!(
        show.contains("superseded by attempt 2")
            && show.contains("pull request left open (closing it failed:"),
        "{show}"
    );
    let logs = ok(server.cli(&["logs", id, "--attempt", "1"]));
    assert!(
        logs.contains(&format!("the pull request {mr1} stays open")),
        "{logs}"
    );

    // 3. Picking the same attempt again retries the close (the token was fixed); nothing is
    //    delivered again.
    let seen = forge.requests().len();
    let v: Value = serde_json::from_str(&ok(server.cli(&["pick", id, "2", "--json"]))).unwrap();
    assert!(v["delivery"].is_null(), "{v}");
    assert_eq!(v["superseded_pr"], mr1, "{v}");
    assert_eq!(v["superseded_attempt"], 1);
    assert_eq!(v["superseded_closed"], true);
    assert_eq!(v["superseded_outcome"], "closed");
    assert!(v["superseded_close_error"].is_null(), "{v}");
    let reqs = forge_requests(forge, seen);
    let names: Vec<&str> = reqs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "GET /projects/acme%2Fshop/merge_requests/1",
            "PUT /projects/acme%2Fshop/merge_requests/1",
            "POST /projects/acme%2Fshop/merge_requests/1/notes",
        ]
    );
    let by = show_json(server, id)["picked"]["by"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        reqs[2].1,
        json!({"body": format!(
            "Superseded by !2 (attempt 2 of task {}, picked by {by}).\n\n{mr2}",
            d.short
        )})
    );
    assert!(!forge.pulls()[0].open && forge.pulls()[1].open);
    let t = show_json(server, id);
    assert_eq!(attempt(&t, 1)["delivery"]["superseded"]["closed"], true);
    // Nothing left to retry.
    let seen = forge.requests().len();
    let out = ok(server.cli(&["pick", id, "2"]));
    assert!(!out.contains("superseded"), "{out}");
    assert_eq!(forge.requests().len(), seen);
    let branches = remote_branches(&d.bare);
    assert!(
        branches.contains(d.br1.as_str()) && branches.contains(d.br2.as_str()),
        "{branches}"
    );
}
