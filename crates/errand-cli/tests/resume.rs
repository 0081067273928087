//! Long runs: an attempt checkpoints after every turn and resumes from its last checkpoint
//! after `kill -9` of the server, with an environment that has secrets too (the checkpoints
//! hold placeholders, never the values) and in a round of fixes a reviewer asked for (the round
//! goes on, the earlier review kept); the stuck detector warns the agent, then stops it.
//! Through the real binary, real git, the real box and SQLite.

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

/// The secret of the environment `sec`, exposed to the agent as `$DEPLOY_TOKEN`. `/`, `+`
/// and `:` make its URL encoding differ from it.
const TOKEN: &str = "ckpt/S3cret+Value:42-xyz";
const TOKEN_PH: &str = "[REDACTED:DEPLOY_TOKEN]";
const SECRET_TURNS: usize = 40;
const SECRET_SLOW_TURN: usize = 25;

/// Every form of the value that must not be stored.
fn token_forms() -> Vec<String> {
    vec![
        TOKEN.into(),
        // base64, as the agent writes it (and its core without padding).
        "Y2twdC9TM2NyZXQrVmFsdWU6NDIteHl6".into(),
        "ckpt%2FS3cret%2BValue%3A42-xyz".into(),
        "S3cret+Value".into(),
    ]
}

#[track_caller]
fn assert_no_token(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for f in token_forms() {
        assert!(!text.contains(&f), "{what} holds the secret value ({f:?})");
    }
}

/// No object of the mirror, reachable or not (the checkpoint ref's included), holds the value.
fn assert_mirror_has_no_token(mirror: &std::path::Path) {
    let out = std::process::Command::new("git")
        .current_dir(mirror)
        .args(["cat-file", "--batch-all-objects", "--batch", "--unordered"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.len() > 1000, "the mirror has objects");
    assert_no_token("an object of the mirror", &out.stdout);
}

/// No file under `dir` (the database and its journal included) holds the value, except under
/// `except`.
fn assert_files_have_no_token(dir: &std::path::Path, except: Option<&std::path::Path>) {
    let mut stack = vec![dir.to_path_buf()];
    let mut n = 0;
    while let Some(d) = stack.pop() {
        if except.is_some_and(|e| d == e) {
            continue;
        }
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                n += 1;
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                assert_no_token(&format!("stored file {}", e.path().display()), &bytes);
            }
        }
    }
    assert!(n > 0, "no files under {}", dir.display());
}

/// Writes the value into two files in its first turn (as is, and base64-encoded), prints it
/// in the second, then appends a line per turn; turn 25 sleeps so the test can kill the
/// server in it. The script never holds the value: it comes from `$DEPLOY_TOKEN` in the box.
fn secret_script() -> Value {
    let turns: Vec<Value> = (1..=SECRET_TURNS)
        .map(|i| {
            let mut command = match i {
                1 => "printf 'token=%s\\n' \"$DEPLOY_TOKEN\" > config.env && mkdir -p deep && printf '%s' \"$DEPLOY_TOKEN\" | base64 > deep/token.b64".to_string(),
                2 => "echo \"the token is $DEPLOY_TOKEN\"".to_string(),
                _ => format!("echo line-{i} >> progress.txt"),
            };
            if i == SECRET_SLOW_TURN {
                command.push_str(" && echo slow-turn-started && sleep 2");
            }
            if i == SECRET_SLOW_TURN + 1 {
                command.push_str(" && cat config.env");
            }
            let mut calls = vec![json!({"name": "shell", "arguments": {"command": command}})];
            if i == SECRET_TURNS {
                calls.push(json!({"name": "finish", "arguments": {"summary": "used the token"}}));
            }
            json!({ "tool_calls": calls })
        })
        .collect();
    json!({ "turns": turns })
}

fn progress_lines(upto: usize) -> String {
    (3..=upto).map(|i| format!("line-{i}\n")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_an_attempt_with_secrets_resumes_from_a_checkpoint_without_them() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        format!(
            "[environments.sec]\nrepo = \"{}\"\n[environments.sec.secrets]\nDEPLOY_TOKEN = {{ from_env = \"E2E_CKPT_TOKEN\", expose_to_agent = true }}\n",
            repo.display()
        ),
    )
    .unwrap();
    let script = write_script(tmp.path(), "secret.json", secret_script());
    let env = [("E2E_CKPT_TOKEN", TOKEN)];
    let server = Server::start_with_env(&data, &["--workers", "1"], &env);
    let out = ok(server.cli(&[
        "run",
        "use the deploy token",
        "--env",
        "sec",
        "--model",
        &format!("scripted:{}", script.display()),
        "--max-turns",
        "100",
        "--json",
    ]));
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let seen = wait_for(
        "turn 25's command to start",
        Duration::from_secs(60),
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

    // Checkpoints were taken (the environment has secrets): the last one, after turn 24,
    // holds the placeholder where the workspace holds the value.
    let mirror = mirror_of(&data);
    let hidden = format!("refs/errand/checkpoints/{aid}");
    let show = |what: &str| git(&mirror, &["show", &format!("{hidden}:{what}")]);
    assert_eq!(show("config.env"), format!("token={TOKEN_PH}\n"));
    assert_eq!(show("deep/token.b64"), format!("{TOKEN_PH}\n"));
    assert_eq!(show("progress.txt"), progress_lines(SECRET_SLOW_TURN - 1));
    // The workspace itself kept the value while the agent worked.
    let work = data.join("work");
    let upper = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("upper/config.env"))
        .find(|p| p.exists())
        .expect("the dead run's workspace");
    assert_eq!(
        std::fs::read_to_string(&upper).unwrap(),
        format!("token={TOKEN}\n")
    );
    // Nothing stored holds the value: no object of the mirror, and no file of the data
    // directory but the dead run's workspace (the database holds the checkpoint's
    // conversation, in which turn 2 printed it).
    assert_mirror_has_no_token(&mirror);
    assert_files_have_no_token(&data, Some(&work));

    let server = Server::start_with_env(&data, &["--workers", "1"], &env);
    let t = wait_status(&server, &id, &["done", "failed"], Duration::from_secs(90)).await;
    assert_eq!(t["status"], "done", "{t:#}");
    let a = &t["attempts"][0];
    assert_eq!(a["runs"], 2);
    assert_eq!(a["resumed_from"], "checkpoint");
    assert_eq!(a["turns"], SECRET_TURNS);

    let evs = events(&server, &id).await;
    assert_contiguous(&evs);
    // Resumed from the checkpoint after turn 24, not from the start: run 2 played only the
    // turns after it, and turn 25 of run 1 was rolled back.
    let claimed: Vec<&Value> = evs.iter().filter(|e| e["type"] == "claimed").collect();
    assert_eq!(claimed.len(), 2);
    assert_eq!(claimed[1]["turn"], (SECRET_SLOW_TURN - 1) as u64);
    let live_turns: Vec<(u64, u64)> = evs
        .iter()
        .filter(|e| e["type"] == "model_turn" && e["rolled_back"] != true)
        .map(|e| (e["turn"].as_u64().unwrap(), e["run"].as_u64().unwrap()))
        .collect();
    assert_eq!(live_turns.len(), SECRET_TURNS);
    for (turn, run) in &live_turns {
        assert_eq!(
            *run,
            if *turn < SECRET_SLOW_TURN as u64 {
                1
            } else {
                2
            }
        );
    }
    assert!(
        evs.iter()
            .any(|e| e["rolled_back"] == true && e["type"] == "model_turn"),
        "turn 25 of run 1 is rolled back"
    );
    let notices: Vec<(u64, &str)> = evs
        .iter()
        .filter(|e| e["type"] == "notice")
        .map(|e| (e["run"].as_u64().unwrap(), e["message"].as_str().unwrap()))
        .collect();
    // Run 1 said that its checkpoint stores placeholders; run 2 that it restored them.
    assert!(
        notices.iter().any(|(run, n)| *run == 1
            && n.starts_with("checkpoint after turn 1: secret DEPLOY_TOKEN found in config.env")),
        "{notices:#?}"
    );
    let restored: Vec<&str> = notices
        .iter()
        .filter(|(run, n)| *run == 2 && n.starts_with("restored from checkpoint"))
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(restored.len(), 1, "{notices:#?}");
    assert!(
        restored[0].contains("secret values in 2 files were replaced with placeholders")
            && restored[0].contains("config.env, deep/token.b64"),
        "{}",
        restored[0]
    );
    assert!(
        !notices
            .iter()
            .any(|(_, n)| n.contains("checkpoints are off")),
        "{notices:#?}"
    );
    // After the restore the agent sees the placeholder in the file.
    let cat = evs
        .iter()
        .filter(|e| e["type"] == "output" && e["run"] == 2)
        .map(|e| e["data"].as_str().unwrap())
        .collect::<String>();
    assert!(cat.contains(&format!("token={TOKEN_PH}")), "{cat}");

    // The result: every line once, and the placeholders.
    let branch = a["branch"].as_str().unwrap();
    assert_eq!(
        git(&mirror, &["show", &format!("{branch}:progress.txt")]),
        progress_lines(SECRET_TURNS)
    );
    assert_eq!(
        git(&mirror, &["show", &format!("{branch}:config.env")]),
        format!("token={TOKEN_PH}\n")
    );
    let refs = git(
        &mirror,
        &["for-each-ref", "--format=%(refname)", "refs/errand"],
    );
    assert!(refs.trim().is_empty(), "{refs}");
    assert_no_token(
        "the events",
        serde_json::to_string(&evs).unwrap().as_bytes(),
    );
    assert_mirror_has_no_token(&mirror);
    drop(server);
    assert_files_have_no_token(&data, None);
}

/// The turns of the reviewer's round of fixes: 3 to 14, the slow one is 9.
const FIX_FIRST: usize = 3;
const FIX_LAST: usize = 14;
const FIX_SLOW: usize = 9;

/// Writes the secret into a file and finishes; after the review's findings, appends a line
/// per turn (turn 9 sleeps, so the test can kill the server in it) and finishes again.
fn review_script() -> Value {
    let mut turns = vec![
        json!({"tool_calls": [{"name": "shell", "arguments": {"command": "printf 'token=%s\\n' \"$DEPLOY_TOKEN\" > config.env"}}]}),
        json!({"tool_calls": [{"name": "finish", "arguments": {"summary": "first pass"}}]}),
    ];
    for i in FIX_FIRST..=FIX_LAST {
        let mut command = format!("echo fix-{i} >> fixes.txt");
        if i == FIX_SLOW {
            command.push_str(" && echo slow-fix-started && sleep 2");
        }
        let mut calls = vec![json!({"name": "shell", "arguments": {"command": command}})];
        if i == FIX_LAST {
            calls.push(json!({"name": "finish", "arguments": {"summary": "fixed as asked"}}));
        }
        turns.push(json!({ "tool_calls": calls }));
    }
    json!({ "turns": turns })
}

fn review_reply(verdict: &str, summary: &str, findings: Value) -> errand_fakes::Reply {
    errand_fakes::Reply::Turn(errand_fakes::Turn {
        tool_calls: vec![(
            "submit_review".into(),
            json!({"verdict": verdict, "summary": summary, "findings": findings}),
        )],
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_in_a_review_round_resumes_the_round_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let critic = errand_fakes::FakeServer::start(
        errand_fakes::Vendor::Anthropic,
        vec![
            review_reply(
                "changes_needed",
                "Write the fixes.",
                json!([{"file": "fixes.txt", "severity": "error", "message": "add the fixes"}]),
            ),
            review_reply("approve", "All fixed.", json!([])),
        ],
    );
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        format!(
            "[providers.critic]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key_env = \"CRITIC_KEY\"\n[environments.sec]\nrepo = \"{}\"\n[environments.sec.secrets]\nDEPLOY_TOKEN = {{ from_env = \"E2E_CKPT_TOKEN\", expose_to_agent = true }}\n",
            critic.base_url,
            repo.display()
        ),
    )
    .unwrap();
    let script = write_script(tmp.path(), "review.json", review_script());
    let env = [("E2E_CKPT_TOKEN", TOKEN), ("CRITIC_KEY", "sk-critic-1")];
    let server = Server::start_with_env(&data, &["--workers", "1"], &env);
    let out = ok(server.cli(&[
        "run",
        "write the fixes",
        "--env",
        "sec",
        "--model",
        &format!("scripted:{}", script.display()),
        "--review",
        "critic:judge-1",
        "--json",
    ]));
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let seen = wait_for(
        "the slow turn of the round of fixes",
        Duration::from_secs(60),
        || async {
            let evs = events(&server, &id).await;
            evs.iter()
                .any(|e| {
                    e["type"] == "output"
                        && e["data"]
                            .as_str()
                            .unwrap_or("")
                            .contains("slow-fix-started")
                })
                .then_some(evs)
        },
    )
    .await;
    let aid = seen[0]["attempt_id"].as_str().unwrap().to_string();
    server.kill9();
    assert_eq!(critic.model_requests().len(), 1, "review round 1 happened");

    // The round's turns were checkpointed: the last checkpoint has its fixes up to turn 8.
    let mirror = mirror_of(&data);
    let hidden = format!("refs/errand/checkpoints/{aid}");
    let fixes =
        |upto: usize| -> String { (FIX_FIRST..=upto).map(|i| format!("fix-{i}\n")).collect() };
    assert_eq!(
        git(&mirror, &["show", &format!("{hidden}:fixes.txt")]),
        fixes(FIX_SLOW - 1)
    );
    assert_eq!(
        git(&mirror, &["show", &format!("{hidden}:config.env")]),
        format!("token={TOKEN_PH}\n")
    );
    assert_mirror_has_no_token(&mirror);

    let server = Server::start_with_env(&data, &["--workers", "1"], &env);
    let t = wait_status(&server, &id, &["done", "failed"], Duration::from_secs(90)).await;
    assert_eq!(t["status"], "done", "{t:#}");
    let a = &t["attempts"][0];
    assert_eq!(a["runs"], 2);
    assert_eq!(a["resumed_from"], "checkpoint");
    assert_eq!(
        a["turns"], FIX_LAST,
        "2 turns, then 12 in the round of fixes"
    );
    assert_eq!(a["summary"], "fixed as asked");
    // The review kept its first round: round 2 is the one after the fixes, and the reviewer
    // was asked exactly twice.
    let r = &a["review"];
    assert_eq!(r["verdict"], "approve", "{r:#}");
    let rounds: Vec<(u64, &str)> = r["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["round"].as_u64().unwrap(), x["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(rounds, vec![(1, "changes_needed"), (2, "approve")]);
    assert_eq!(critic.remaining(), 0);
    let asked = critic.model_requests();
    assert_eq!(asked.len(), 2);
    // What the reviewer read: the diff with the placeholder, never the value.
    for req in &asked {
        assert_no_token("a request to the reviewer", req.body.to_string().as_bytes());
    }
    assert!(
        asked[0]
            .body
            .to_string()
            .contains("+token=[REDACTED:DEPLOY_TOKEN]"),
        "{}",
        asked[0].body
    );
    assert!(
        asked[1].body.to_string().contains("+fix-14"),
        "{}",
        asked[1].body
    );

    let evs = events(&server, &id).await;
    assert_contiguous(&evs);
    let claimed: Vec<&Value> = evs.iter().filter(|e| e["type"] == "claimed").collect();
    assert_eq!(claimed.len(), 2);
    assert_eq!(claimed[1]["turn"], (FIX_SLOW - 1) as u64, "{}", claimed[1]);
    // Not started over: the first pass and turns 3–8 are run 1's, only turn 9 of run 1 was
    // rolled back, and the review of round 1 stands.
    let live: Vec<&Value> = evs.iter().filter(|e| e["rolled_back"] != true).collect();
    let turns_by_run = |run: u64| {
        live.iter()
            .filter(|e| e["type"] == "model_turn" && e["run"] == run)
            .count()
    };
    assert_eq!(turns_by_run(1), FIX_SLOW - 1);
    assert_eq!(turns_by_run(2), FIX_LAST - FIX_SLOW + 1);
    let rolled: Vec<&Value> = evs
        .iter()
        .filter(|e| e["rolled_back"] == true && e["type"] == "model_turn")
        .collect();
    assert_eq!(rolled.len(), 1, "{rolled:#?}");
    let reviews: Vec<(u64, u64)> = live
        .iter()
        .filter(|e| e["type"] == "review")
        .map(|e| (e["run"].as_u64().unwrap(), e["round"].as_u64().unwrap()))
        .collect();
    assert_eq!(reviews, vec![(1, 1), (2, 2)]);
    assert!(
        evs.iter().any(|e| e["type"] == "notice"
            && e["run"] == 2
            && e["message"]
                .as_str()
                .unwrap()
                .starts_with("the checkpoint is in review round 1's fixes")),
        "{evs:#?}"
    );

    let branch = a["branch"].as_str().unwrap();
    assert_eq!(
        git(&mirror, &["show", &format!("{branch}:fixes.txt")]),
        fixes(FIX_LAST)
    );
    assert_mirror_has_no_token(&mirror);
    drop(server);
    assert_files_have_no_token(&data, None);
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
