//! Long runs: an attempt checkpoints after every turn and resumes from its last checkpoint
//! after `kill -9` of the server; the stuck detector warns the agent, then stops it. Through
//! the real binary, real git, the real box and SQLite.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

/// The turn whose command is slow, so that the test can kill the server in the middle of it.
const SLOW_TURN: usize = 150;
const TURNS: usize = 300;

/// 300 turns, each appending its own line to `progress.txt`; turn 150 then sleeps, and turn
/// 300 also finishes.
fn long_script() -> Value {
    let turns: Vec<Value> = (1..=TURNS)
        .map(|i| {
            let mut command = format!("echo line-{i} >> progress.txt");
            if i == SLOW_TURN {
                command.push_str(" && echo slow-turn-started && sleep 2");
            }
            let mut calls = vec![json!({"name": "shell", "arguments": {"command": command}})];
            if i == TURNS {
                calls.push(json!({"name": "finish", "arguments": {"summary": "wrote 300 lines"}}));
            }
            json!({ "tool_calls": calls })
        })
        .collect();
    json!({ "turns": turns })
}

fn mirror_of(data: &std::path::Path) -> std::path::PathBuf {
    let mirrors = data.join("mirrors");
    std::fs::read_dir(&mirrors)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join("HEAD").exists())
        .unwrap_or_else(|| panic!("no mirror under {}", mirrors.display()))
}

fn expected_lines(n: usize) -> String {
    (1..=n).map(|i| format!("line-{i}\n")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_in_the_middle_of_a_300_turn_attempt_resumes_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let data = tmp.path().join("data");
    let script = write_script(tmp.path(), "long.json", long_script());
    let server = Server::start(&data, &["--workers", "1"]);
    let out = ok(server.cli(&[
        "run",
        "append 300 lines",
        "--repo",
        &repo.display().to_string(),
        "--model",
        &format!("scripted:{}", script.display()),
        "--max-turns",
        "300",
        "--json",
    ]));
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Kill the server while turn 150's command runs: turn 149 is checkpointed, and turn 150
    // has already appended its line to the workspace.
    let seen = wait_for(
        "turn 150's command to start",
        Duration::from_secs(50),
        || async {
            let evs = events(&server, &id).await;
            evs.iter()
                .any(|e| {
                    e["type"] == "output"
                        && e["data"]
                            .as_str()
                            .unwrap_or("")
                            .contains("slow-turn-started")
                })
                .then_some(evs)
        },
    )
    .await;
    let aid = seen[0]["attempt_id"].as_str().unwrap().to_string();
    server.kill9();

    // The checkpoint is a commit on a hidden ref of the mirror, not a branch: the workspace
    // after turn 149.
    let mirror = mirror_of(&data);
    let hidden = format!("refs/errand/checkpoints/{aid}");
    let at_checkpoint = git(&mirror, &["show", &format!("{hidden}:progress.txt")]);
    assert_eq!(at_checkpoint, expected_lines(SLOW_TURN - 1));
    let branches = git(
        &mirror,
        &["for-each-ref", "--format=%(refname)", "refs/heads"],
    );
    assert!(!branches.contains("checkpoint"), "{branches}");

    let server = Server::start(&data, &["--workers", "1"]);
    let t = wait_status(&server, &id, &["done", "failed"], Duration::from_secs(60)).await;
    assert_eq!(t["status"], "done", "{t:#}");
    let a = &t["attempts"][0];
    assert_eq!(a["runs"], 2);
    assert_eq!(a["resumed_from"], "checkpoint");
    assert_eq!(a["turns"], TURNS);
    assert_eq!(a["summary"], "wrote 300 lines");

    // The result: every line exactly once, in order. Turn 150's first append (made before
    // the crash, after the checkpoint) was rolled back with the workspace.
    let branch = a["branch"].as_str().unwrap();
    assert_eq!(
        git(&mirror, &["show", &format!("{branch}:progress.txt")]),
        expected_lines(TURNS)
    );
    let diff = ok(server.cli(&["diff", &id]));
    assert!(diff.contains("+line-300"), "{diff}");
    // The hidden ref goes once the work is on the branch.
    let refs = git(
        &mirror,
        &["for-each-ref", "--format=%(refname)", "refs/errand"],
    );
    assert!(refs.trim().is_empty(), "{refs}");

    let evs = events(&server, &id).await;
    assert_contiguous(&evs);
    // Every event recorded before the crash is still there, in place; those after the
    // checkpoint are now marked rolled back.
    for (old, new) in seen.iter().zip(evs.iter()) {
        assert_eq!(old["seq"], new["seq"]);
        assert_eq!(old["type"], new["type"]);
        assert_eq!(old["data"], new["data"]);
    }
    let claimed: Vec<&Value> = evs.iter().filter(|e| e["type"] == "claimed").collect();
    assert_eq!(claimed.len(), 2);
    assert_eq!(claimed[1]["resumed_from"], "checkpoint");
    assert_eq!(claimed[1]["turn"], (SLOW_TURN - 1) as u64);
    let rolled: Vec<&Value> = evs.iter().filter(|e| e["rolled_back"] == true).collect();
    assert_eq!(
        claimed[1]["rolled_back_events"].as_u64().unwrap(),
        rolled.len() as u64
    );
    assert!(
        claimed[1]["note"]
            .as_str()
            .unwrap()
            .contains("resumes from the checkpoint after turn 149"),
        "{}",
        claimed[1]
    );
    // What was rolled back is exactly turn 150 of run 1: its model turn, call and output.
    assert!(rolled.iter().all(|e| e["run"] == 1), "{rolled:#?}");
    let rolled_turns: Vec<&Value> = rolled
        .iter()
        .filter(|e| e["type"] == "model_turn")
        .map(|e| &e["turn"])
        .collect();
    assert_eq!(rolled_turns, vec![&json!(SLOW_TURN)]);
    assert!(rolled.iter().any(|e| e["type"] == "tool_call"));
    assert!(rolled.iter().any(|e| {
        e["type"] == "output" && e["data"].as_str().unwrap().contains("slow-turn-started")
    }));
    let first_rolled = rolled[0]["seq"].as_i64().unwrap();
    assert!(
        evs.iter()
            .filter(|e| e["seq"].as_i64().unwrap() > first_rolled && e["run"] == 1)
            .all(|e| e["rolled_back"] == true || e["type"] == "status"),
        "everything run 1 wrote after the checkpoint is rolled back"
    );

    // The log without the rolled-back work: turns 1..=300 exactly once each, in order, and
    // no tool call twice.
    let live: Vec<&Value> = evs.iter().filter(|e| e["rolled_back"] != true).collect();
    let turns: Vec<u64> = live
        .iter()
        .filter(|e| e["type"] == "model_turn")
        .map(|e| e["turn"].as_u64().unwrap())
        .collect();
    assert_eq!(turns, (1..=TURNS as u64).collect::<Vec<_>>());
    let call_ids: Vec<&str> = live
        .iter()
        .filter(|e| e["type"] == "tool_call")
        .map(|e| e["call_id"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = call_ids.iter().copied().collect();
    assert_eq!(call_ids.len(), TURNS + 1, "300 shell calls and finish");
    assert_eq!(unique.len(), call_ids.len(), "a tool call ran twice");
    // Turns before the checkpoint come from run 1, the rest from run 2.
    for e in live.iter().filter(|e| e["type"] == "model_turn") {
        let turn = e["turn"].as_u64().unwrap();
        let run = if turn < SLOW_TURN as u64 { 1 } else { 2 };
        assert_eq!(e["run"], run, "{e}");
    }

    let show = ok(server.cli(&["show", &id]));
    assert!(show.contains("restarted from checkpoint"), "{show}");
    let logs = ok(server.cli(&["logs", &id]));
    assert!(logs.contains("[rolled back]"), "{logs}");
}

/// Runs a task on `server` and waits for it to end.
async fn run_to_end(server: &Server, repo: &std::path::Path, script: &std::path::Path) -> Value {
    let out = ok(server.cli(&[
        "run",
        "get stuck",
        "--repo",
        &repo.display().to_string(),
        "--model",
        &format!("scripted:{}", script.display()),
        "--json",
    ]));
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_status(server, &id, &["done", "failed"], Duration::from_secs(50)).await
}

fn stuck_events(evs: &[Value]) -> Vec<(String, String)> {
    evs.iter()
        .filter(|e| e["type"] == "stuck")
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stuck_detector_warns_then_stops_and_keeps_the_work() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        "[agent]\nstuck_repeats = 3\nstuck_turns = 4\n",
    )
    .unwrap();
    let server = Server::start(&data, &["--workers", "2"]);

    // 1. The same failing command again and again (after some real work).
    let failing = json!({"name": "shell", "arguments": {"command": "test -e missing.txt"}});
    let mut turns = vec![json!({"tool_calls": [
        {"name": "write_file", "arguments": {"path": "notes.txt", "content": "started\n"}}]})];
    for _ in 0..10 {
        turns.push(json!({ "tool_calls": [failing.clone()] }));
    }
    let repeat = write_script(tmp.path(), "repeat.json", json!({ "turns": turns }));
    // 2. No progress: a different failing command every turn (never the same call twice).
    let turns: Vec<Value> = (0..12)
        .map(|i| json!({"tool_calls": [{"name": "shell", "arguments": {"command": format!("test -e missing-{i}.txt")}}]}))
        .collect();
    let idle = write_script(tmp.path(), "idle.json", json!({ "turns": turns }));

    let (t1, t2) = tokio::join!(
        run_to_end(&server, &repo, &repeat),
        run_to_end(&server, &repo, &idle)
    );

    // Repeats: warned on the 3rd failure, stopped on the 4th.
    assert_eq!(t1["status"], "failed", "{t1:#}");
    let a = &t1["attempts"][0];
    let error = a["error"].as_str().unwrap();
    assert!(
        error.starts_with("stuck: the same call failed 4 times"),
        "{error}"
    );
    assert_eq!(a["turns"], 5, "turn 1 wrote a file, turns 2–5 failed");
    let evs = events(&server, t1["id"].as_str().unwrap()).await;
    let stuck = stuck_events(&evs);
    assert_eq!(stuck.len(), 2, "{stuck:?}");
    assert_eq!(stuck[0].0, "warned");
    assert!(stuck[0].1.contains("failed 3 times"), "{}", stuck[0].1);
    assert!(stuck[0].1.contains("test -e missing.txt"), "{}", stuck[0].1);
    assert_eq!(stuck[1].0, "stopped");
    // The agent was told: the note is in the result of the third failing call.
    let results: Vec<&Value> = evs.iter().filter(|e| e["type"] == "tool_result").collect();
    assert!(
        results[3]["output"]
            .as_str()
            .unwrap()
            .contains("Making it again will stop the attempt"),
        "{:#}",
        results[3]
    );
    // The work done before is committed, like a budget stop.
    assert!(evs.iter().any(|e| e["type"] == "committed"));
    let diff = ok(server.cli(&["diff", t1["id"].as_str().unwrap()]));
    assert!(diff.contains("+started"), "{diff}");

    // No progress: warned after 4 idle turns, stopped after the 5th.
    assert_eq!(t2["status"], "failed", "{t2:#}");
    let a = &t2["attempts"][0];
    let error = a["error"].as_str().unwrap();
    assert!(
        error.starts_with("stuck: no progress in 5 model turns"),
        "{error}"
    );
    assert_eq!(a["turns"], 5);
    let evs = events(&server, t2["id"].as_str().unwrap()).await;
    let stuck = stuck_events(&evs);
    assert_eq!(
        stuck.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        vec!["warned", "stopped"]
    );
    assert!(stuck[0].1.contains("no progress in 4"), "{}", stuck[0].1);
    let logs = ok(server.cli(&["logs", t2["id"].as_str().unwrap()]));
    assert!(logs.contains("STUCK, stopped: no progress in 5"), "{logs}");
}
