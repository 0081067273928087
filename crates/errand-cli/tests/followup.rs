//! `errand followup`: the same attempt continues its branch and its conversation.

mod common;

use common::*;
use serde_json::json;

fn show(server: &Server, id: &str) -> serde_json::Value {
    serde_json::from_str(&ok(server.cli(&["show", id, "--json"]))).unwrap()
}

#[test]
fn a_followup_continues_the_branch_and_the_conversation() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    // Turns 1–2 are the first run; turns 3–4 can only be reached if the follow-up run carries
    // the first run's two assistant turns (a fresh conversation would replay turn 1).
    let script = write_script(
        tmp.path(),
        "s.json",
        json!({"turns": [
            {"tool_calls": [{"name": "edit", "arguments": {"path": "src/lib.txt", "old": "two", "new": "TWO"}}]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "upper-cased two"}}]},
            {"tool_calls": [{"name": "edit", "arguments": {"path": "src/lib.txt", "old": "three", "new": "THREE"}}]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "upper-cased three too"}}]}
        ]}),
    );
    let server = Server::start(&tmp.path().join("data"), &["--workers", "1"]);
    let model = format!("scripted:{}", script.display());
    let out = ok(server.cli(&[
        "run",
        "Upper-case two",
        "--repo",
        repo.to_str().unwrap(),
        "--model",
        &model,
        "--check",
        "t=grep -q TWO src/lib.txt",
        "--follow",
    ]));
    assert!(out.contains("Status    done"), "{out}");
    let ls: serde_json::Value = serde_json::from_str(&ok(server.cli(&["ls", "--json"]))).unwrap();
    let id = ls["tasks"][0]["id"].as_str().unwrap().to_string();
    let first = show(&server, &id);
    let head1 = first["attempts"][0]["head_commit"]
        .as_str()
        .unwrap()
        .to_string();

    let out = ok(server.cli(&["followup", &id, "Also upper-case three", "--follow"]));
    assert!(out.contains("follow-up from"), "{out}");
    assert!(out.contains("Status    done"), "{out}");
    assert!(out.contains("upper-cased three too"), "{out}");
    assert!(
        out.contains("Runs      2 — run 2 is a follow-up on the branch head"),
        "{out}"
    );

    let t = show(&server, &id);
    let a = &t["attempts"][0];
    assert_eq!(
        t["attempts"].as_array().unwrap().len(),
        1,
        "the same attempt"
    );
    assert_eq!(a["runs"], 2);
    assert_eq!(a["resumed_from"], "followup");
    assert_eq!(a["turns"], 4, "turns add up");
    assert_eq!(a["summary"], "upper-cased three too");
    let head2 = a["head_commit"].as_str().unwrap().to_string();
    assert_ne!(head1, head2);

    // The branch: the follow-up's commit sits on top of the first one, and the diff against
    // the base has both changes.
    let branch = a["branch"].as_str().unwrap();
    let mirrors = tmp.path().join("data").join("mirrors");
    let mirror = std::fs::read_dir(&mirrors)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join("HEAD").exists())
        .unwrap_or_else(|| panic!("no mirror under {}", mirrors.display()));
    let parent = git(&mirror, &["rev-parse", &format!("{head2}^")]);
    assert_eq!(parent.trim(), head1);
    assert_eq!(git(&mirror, &["rev-parse", branch]).trim(), head2);
    let diff = ok(server.cli(&["diff", &id]));
    assert!(diff.contains("+TWO") && diff.contains("+THREE"), "{diff}");

    // One log, seqs without gaps across both runs.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ev = rt.block_on(events(&server, &id));
    assert_contiguous(&ev);
    let claimed: Vec<&str> = ev
        .iter()
        .filter(|e| e["type"] == "claimed")
        .map(|e| e["resumed_from"].as_str().unwrap())
        .collect();
    assert_eq!(claimed, vec!["start", "followup"]);

    // The user's repo was never touched.
    assert!(!git(&repo, &["branch", "--list"]).contains("errand/"));
}

#[test]
fn followups_are_refused_while_running_cancelled_or_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let script = write_script(
        tmp.path(),
        "slow.json",
        json!({"turns": [{"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 30"}}]}]}),
    );
    let server = Server::start(&tmp.path().join("data"), &["--workers", "1"]);
    let out = ok(server.cli(&[
        "run",
        "slow",
        "--repo",
        repo.to_str().unwrap(),
        "--model",
        &format!("scripted:{}", script.display()),
        "--json",
    ]));
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = t["id"].as_str().unwrap().to_string();
    fails_with(
        server.cli(&["followup", &id, "more"]),
        &["needs it done or failed"],
    );
    fails_with(
        server.cli(&["followup", &id, "  "]),
        &["the follow-up is empty"],
    );
    ok(server.cli(&["cancel", &id]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(wait_status(
        &server,
        &id,
        &["cancelled"],
        std::time::Duration::from_secs(30),
    ));
    fails_with(
        server.cli(&["followup", &id, "more"]),
        &["start a new task"],
    );
    fails_with(server.cli(&["followup", "zzzzzzzz", "more"]), &["zzzzzzzz"]);
}
