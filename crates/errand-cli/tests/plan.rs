//! Plan mode end to end: `errand run --plan`, a read-only planning run in the real box, the
//! task waiting in `awaiting_approval` with no worker and no box, and `approve` / `revise` /
//! `reject` through the CLI and the API.

mod common;

use common::*;
use errand_fakes::{FakeServer, Reply, Turn, Vendor};
use serde_json::{Value, json};
use std::time::Duration;

fn show_json(server: &Server, id: &str) -> Value {
    serde_json::from_str(&ok(server.cli(&["show", id, "--json"]))).unwrap()
}

async fn post(server: &Server, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = http().post(server.api(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn tool_result<'a>(ev: &'a [Value], call_id: &str) -> &'a Value {
    ev.iter()
        .find(|e| e["type"] == "tool_result" && e["call_id"] == call_id)
        .unwrap_or_else(|| panic!("no tool_result {call_id} in {ev:#?}"))
}

fn the_mirror(data: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(data.join("mirrors"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join("HEAD").exists())
        .expect("a mirror")
}

/// `run --plan`: the agent explores in the box, proposes a plan and stops; the task waits
/// with no lease and no box. `approve` continues the same conversation in run mode, and the
/// run goes on as usual: edit, checks, commit.
#[test]
fn a_plan_waits_for_approval_then_is_implemented() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let marker = format!("{}.{}", 400 + std::process::id() % 500, 31);
    // Turns 1–3 plan; 4–5 implement. The implementing run reaches turn 4 only if it carries
    // the three planning turns (a fresh conversation would replay turn 1).
    let script = write_script(
        tmp.path(),
        "s.json",
        json!({"turns": [
            {"tool_calls": [
                {"name": "read_file", "arguments": {"path": "src/lib.txt"}},
                {"name": "shell", "arguments": {"command": format!("sleep {marker} >/dev/null 2>&1 & echo $! > /tmp/bg.pid; echo started")}}
            ]},
            {"tool_calls": [
                {"name": "shell", "arguments": {"command": "kill -0 $(cat /tmp/bg.pid) && echo alive"}},
                {"name": "update_plan", "arguments": {"explanation": "two is lower-case", "plan": [
                    {"step": "Upper-case two in src/lib.txt", "status": "pending"},
                    {"step": "Check it with grep", "status": "pending"}]}}
            ]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "Plan: upper-case two, then check"}}]},
            {"tool_calls": [
                {"name": "edit", "arguments": {"path": "src/lib.txt", "old": "two", "new": "TWO"}},
                {"name": "update_plan", "arguments": {"plan": [
                    {"step": "Upper-case two in src/lib.txt", "status": "completed"},
                    {"step": "Check it with grep", "status": "in_progress"}]}}
            ]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "upper-cased two"}}]}
        ]}),
    );
    let data = tmp.path().join("data");
    let server = Server::start(&data, &["--workers", "1"]);
    let out = ok(server.cli(&[
        "run",
        "Upper-case two",
        "--repo",
        repo.to_str().unwrap(),
        "--model",
        &format!("scripted:{}", script.display()),
        "--check",
        "t=grep -q TWO src/lib.txt",
        "--plan",
        "--follow",
    ]));
    // The stream ends once the plan waits; `show` follows it.
    assert!(
        out.contains("plan mode: the agent proposes a plan first"),
        "{out}"
    );
    assert!(out.contains("status preparing → planning"), "{out}");
    assert!(
        out.contains("plan revision 1 proposed (2 steps), waiting for approval"),
        "{out}"
    );
    assert!(out.contains("Status    awaiting_approval"), "{out}");
    let ls: Value = serde_json::from_str(&ok(server.cli(&["ls", "--json"]))).unwrap();
    let id = ls["tasks"][0]["id"].as_str().unwrap().to_string();
    let short = ls["tasks"][0]["short_id"].as_str().unwrap().to_string();

    // `show`: the plan as numbered steps, the revisions and how to decide.
    let shown = ok(server.cli(&["show", &short]));
    for needle in [
        format!(
            "Mode      plan — waiting for approval: errand approve {short} | errand revise {short} \"…\" | errand reject {short}"
        ),
        "Plan      revision 1 of 1, proposed ".to_string(),
        "            1. [pending] Upper-case two in src/lib.txt\n            2. [pending] Check it with grep\n".to_string(),
        "          Why: two is lower-case\n".to_string(),
        "          Summary: Plan: upper-case two, then check\n".to_string(),
        "Revisions 1\n".to_string(),
        "— 2 steps — waiting for approval".to_string(),
        "Approvals none yet".to_string(),
        "Diff      (not yet)".to_string(),
        ", planned; waiting for approval\n".to_string(),
    ] {
        assert!(shown.contains(&needle), "{needle:?} not in:\n{shown}");
    }
    let t = show_json(&server, &id);
    assert_eq!(t["status"], "awaiting_approval");
    assert_eq!(t["mode"], "plan");
    assert_eq!(t["plan"]["number"], 1);
    assert_eq!(
        t["plan"]["steps"],
        json!([
            {"step": "Upper-case two in src/lib.txt", "status": "pending"},
            {"step": "Check it with grep", "status": "pending"}
        ])
    );
    assert_eq!(t["plan_revisions"].as_array().unwrap().len(), 1);
    assert_eq!(t["approvals"], json!([]));
    let a = &t["attempts"][0];
    assert_eq!(a["status"], "awaiting_approval");
    assert!(a["active_worker"].is_null(), "no lease while waiting: {a}");
    assert!(
        a["head_commit"].is_null(),
        "nothing committed while planning"
    );
    assert_eq!(a["turns"], 3);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let ev = rt.block_on(events(&server, &id));
    assert_contiguous(&ev);
    // The background process really ran in the box; the box is gone, and it with it.
    assert!(
        tool_result(&ev, "call_2_1")["output"]
            .as_str()
            .unwrap()
            .contains("alive"),
        "{ev:#?}"
    );
    rt.block_on(wait_for(
        "the box's processes to be gone",
        Duration::from_secs(10),
        || async {
            processes_with(&format!("sleep {marker}"))
                .is_empty()
                .then_some(())
        },
    ));
    // Nothing happens while it waits: no worker picks it up.
    std::thread::sleep(Duration::from_millis(1500));
    let again = show_json(&server, &id);
    assert_eq!(again["status"], "awaiting_approval");
    assert_eq!(again["attempts"][0]["last_seq"], a["last_seq"]);

    // Approve, as alice, and follow it to the end.
    let before = errand_core::now_ms();
    let out = server.cli(&["approve", &short, "--as", "alice", "--follow"]);
    let after = errand_core::now_ms();
    let out = ok(out);
    assert!(
        out.contains(&format!(
            "approved plan revision 1 of task {short} (Upper-case two) as alice; the agent implements it now"
        )),
        "{out}"
    );
    assert!(out.contains("plan revision 1 approved by alice"), "{out}");
    assert!(
        out.contains("run 2 implements plan revision 1, approved by alice"),
        "{out}"
    );
    assert!(out.contains("status preparing → running"), "{out}");
    assert!(out.contains("check t: PASSED"), "{out}");
    assert!(out.contains("Status    done"), "{out}");
    assert!(
        out.contains("Runs      2 — run 2 implements the approved plan"),
        "{out}"
    );

    let t = show_json(&server, &id);
    assert_eq!(t["status"], "done");
    let a = &t["attempts"][0];
    assert_eq!(a["summary"], "upper-cased two");
    assert_eq!(a["turns"], 5, "planning and implementing turns add up");
    assert_eq!(a["resumed_from"], "plan");
    let approvals = t["approvals"].as_array().unwrap();
    assert_eq!(approvals.len(), 1);
    assert_eq!(approvals[0]["action"], "approve");
    assert_eq!(approvals[0]["actor"], "alice");
    assert_eq!(approvals[0]["revision"], 1);
    let at = approvals[0]["at_ms"].as_i64().unwrap();
    assert!(
        at >= before && at <= after,
        "{at} not in [{before}, {after}]"
    );
    assert_eq!(t["plan_revisions"][0]["decision"], "approved");
    assert_eq!(t["plan_revisions"][0]["decided_by"], "alice");
    let shown = ok(server.cli(&["show", &short]));
    assert!(
        shown.contains("Mode      plan — plan revision 1 approved by alice at "),
        "{shown}"
    );
    assert!(
        shown.contains("Approvals 1\n            approved by alice at "),
        "{shown}"
    );

    // The change is committed on the attempt's branch.
    let diff = ok(server.cli(&["diff", &id]));
    assert!(diff.contains("-two") && diff.contains("+TWO"), "{diff}");
    let mirror = the_mirror(&data);
    let head = a["head_commit"].as_str().unwrap();
    let msg = git(&mirror, &["log", "-1", "--format=%B", head]);
    assert!(msg.contains(&format!("Errand-Task: {id}")), "{msg}");

    // One log across both runs; the implementing run started at script turn 4.
    let ev = rt.block_on(events(&server, &id));
    assert_contiguous(&ev);
    let turns: Vec<i64> = ev
        .iter()
        .filter(|e| e["type"] == "model_turn")
        .map(|e| e["turn"].as_i64().unwrap())
        .collect();
    assert_eq!(turns, vec![1, 2, 3, 1, 2]);
    assert!(
        tool_result(&ev, "call_4_1")["ok"].as_bool().unwrap(),
        "{ev:#?}"
    );
    assert!(
        ev.iter()
            .any(|e| e["type"] == "approval" && e["action"] == "approve" && e["actor"] == "alice")
    );
    // The user's checkout was never touched.
    assert!(!git(&repo, &["branch", "--list"]).contains("errand/"));
}

/// The planning box mounts the workspace read-only and the file tools are off; a rejected
/// plan ends the task with the reason and the actor; decisions in the wrong state get 409.
#[tokio::test(flavor = "multi_thread")]
async fn planning_is_read_only_and_reject_ends_the_task() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let script = write_script(
        tmp.path(),
        "s.json",
        json!({"turns": [
            {"tool_calls": [
                {"name": "shell", "arguments": {"command": "echo x > file"}},
                {"name": "shell", "arguments": {"command": "echo y >> src/lib.txt"}},
                {"name": "write_file", "arguments": {"path": "file2", "content": "x"}}
            ]},
            {"tool_calls": [
                {"name": "shell", "arguments": {"command": "sleep 1; test -e file || echo absent; cat src/lib.txt; echo t > /tmp/t && echo tmp-writable"}},
                {"name": "update_plan", "arguments": {"plan": [{"step": "Drop the lib", "status": "pending"}]}}
            ]},
            {"text": "That is the plan."}
        ]}),
    );
    let server = Server::start(&tmp.path().join("data"), &["--workers", "1"]);
    let (code, body) = post(
        &server,
        "/tasks",
        Some(json!({
            "prompt": "Remove the lib",
            "repo": repo.to_str().unwrap(),
            "model": format!("scripted:{}", script.display()),
            "mode": "plan",
        })),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["mode"], "plan");
    let id = body["id"].as_str().unwrap().to_string();
    let short = body["short_id"].as_str().unwrap().to_string();
    // Too early: the agent is still planning.
    let (code, body) = post(&server, &format!("/tasks/{id}/approve"), None).await;
    assert_eq!(code, 409, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!("task {short} is ")) && msg.contains(", not awaiting approval"),
        "{msg}"
    );
    let t = wait_status(
        &server,
        &id,
        &["awaiting_approval", "failed"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(t["status"], "awaiting_approval", "{t:#}");
    // A turn without tool calls ends the planning run too; its text is the summary.
    assert_eq!(t["plan"]["summary"], "That is the plan.");

    let ev = events(&server, &id).await;
    for call in ["call_1_1", "call_1_2"] {
        let r = tool_result(&ev, call);
        assert_eq!(r["ok"], false, "{r}");
        assert!(
            r["output"]
                .as_str()
                .unwrap()
                .contains("Read-only file system"),
            "{r}"
        );
    }
    let r = tool_result(&ev, "call_1_3");
    assert_eq!(r["ok"], false);
    assert!(
        r["output"]
            .as_str()
            .unwrap()
            .starts_with("write_file is not available while planning: the workspace is read-only"),
        "{r}"
    );
    let r = tool_result(&ev, "call_2_1");
    let out = r["output"].as_str().unwrap();
    assert!(
        out.contains("absent\none\ntwo\nthree\nfour\ntmp-writable"),
        "the workspace is unchanged and /tmp is writable: {out}"
    );
    assert!(!ev.iter().any(|e| e["type"] == "file_change"), "{ev:#?}");
    assert!(ev.iter().any(|e| {
        e["type"] == "notice"
            && e["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("plan mode: this run explores read-only")
    }));

    // Wrong requests: a revision needs a comment; an unknown field is refused.
    let (code, body) = post(
        &server,
        &format!("/tasks/{id}/revise"),
        Some(json!({"actor": "bob"})),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a revision needs a comment"),
        "{body}"
    );
    let (code, _) = post(
        &server,
        &format!("/tasks/{id}/approve"),
        Some(json!({"who": "bob"})),
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(
        get_json(&server.api(&format!("/tasks/{id}"))).await["status"],
        "awaiting_approval"
    );

    // Reject, through the API.
    let before = errand_core::now_ms();
    let (code, t) = post(
        &server,
        &format!("/tasks/{short}/reject"),
        Some(json!({"actor": "carol", "comment": "too risky"})),
    )
    .await;
    assert_eq!(code, 200, "{t}");
    assert_eq!(t["status"], "cancelled");
    assert_eq!(t["error"], "plan rejected by carol: too risky");
    assert_eq!(
        t["attempts"][0]["error"],
        "plan rejected by carol: too risky"
    );
    assert_eq!(t["approvals"][0]["action"], "reject");
    assert_eq!(t["approvals"][0]["actor"], "carol");
    assert_eq!(t["approvals"][0]["comment"], "too risky");
    assert!(t["approvals"][0]["at_ms"].as_i64().unwrap() >= before);
    assert_eq!(t["plan_revisions"][0]["decision"], "rejected");
    let ev = events(&server, &id).await;
    assert_contiguous(&ev);
    assert!(ev.iter().any(|e| e["type"] == "approval"
        && e["action"] == "reject"
        && e["actor"] == "carol"
        && e["comment"] == "too risky"));
    let shown = ok(server.cli(&["show", &short]));
    assert!(
        shown.contains("Status    cancelled — plan rejected by carol: too risky"),
        "{shown}"
    );
    assert!(
        shown.contains("Mode      plan — plan rejected by carol at "),
        "{shown}"
    );

    // Every decision on an ended task is a 409 naming its state, from the API and the CLI.
    for action in ["approve", "reject"] {
        let (code, body) = post(&server, &format!("/tasks/{id}/{action}"), None).await;
        assert_eq!(code, 409, "{body}");
        assert_eq!(
            body["error"]["message"],
            format!("task {short} is cancelled, not awaiting approval (it has ended)")
        );
    }
    fails_with(
        server.cli(&["approve", &short]),
        &[&format!(
            "task {short} is cancelled, not awaiting approval (it has ended)"
        )],
    );
    fails_with(
        server.cli(&["revise", &short, " "]),
        &["the comment is empty"],
    );

    // A run-mode task has no plan to approve; an unknown mode is refused.
    let quick = write_script(
        tmp.path(),
        "q.json",
        json!({"turns": [{"tool_calls": [{"name": "finish", "arguments": {"summary": "ok"}}]}]}),
    );
    let (code, run) = post(
        &server,
        "/tasks",
        Some(json!({"prompt": "p", "repo": repo.to_str().unwrap(), "model": format!("scripted:{}", quick.display())})),
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(run["mode"], "run");
    let rid = run["id"].as_str().unwrap();
    let (code, body) = post(&server, &format!("/tasks/{rid}/approve"), None).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("was not created in plan mode"),
        "{body}"
    );
    let (code, body) = post(
        &server,
        "/tasks",
        Some(json!({"prompt": "p", "repo": repo.to_str().unwrap(), "mode": "later"})),
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(
        body["error"]["message"],
        "unknown mode 'later'; expected run or plan"
    );
    let (code, _) = post(&server, "/tasks/zzzzzzzz/approve", None).await;
    assert_eq!(code, 404);
}

const KEY: &str = "sk-plan-test-1234";

fn write_config(data: &std::path::Path, base_url: &str) {
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        format!(
            "[providers.fake]\nkind = \"openai-chat\"\nbase_url = \"{base_url}\"\napi_key_env = \"FAKE_MODEL_KEY\"\n"
        ),
    )
    .unwrap();
}

fn messages(r: &errand_fakes::Recorded) -> Vec<Value> {
    r.body["messages"].as_array().cloned().unwrap_or_default()
}

fn tool_names(r: &errand_fakes::Recorded) -> Vec<String> {
    r.body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn last_user(r: &errand_fakes::Recorded) -> String {
    messages(r)
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// What the model is sent: the planning prompt and tools while planning; the reviewer's
/// comment after `revise`; the whole planning conversation, the approval and the plan after
/// `approve`. Two revisions are kept with their decisions.
#[tokio::test(flavor = "multi_thread")]
async fn revise_and_approve_reach_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let step1 = json!({"step": "Swap auth to the RBAC module", "status": "pending"});
    let step2 = json!({"step": "Keep old tokens valid for a week", "status": "pending"});
    let fake = FakeServer::start(
        Vendor::OpenAiChat,
        vec![
            Reply::Turn(Turn::call("update_plan", json!({"plan": [step1]}))),
            Reply::Turn(Turn::call("finish", json!({"summary": "one step"}))),
            Reply::Turn(Turn::call("update_plan", json!({"plan": [step1, step2]}))),
            Reply::Turn(Turn::call("finish", json!({"summary": "two steps"}))),
            Reply::Turn(Turn::call(
                "edit",
                json!({"path": "src/lib.txt", "old": "two", "new": "TWO"}),
            )),
            Reply::Turn(Turn::call("finish", json!({"summary": "done"}))),
        ],
    );
    let data = tmp.path().join("data");
    write_config(&data, &fake.base_url);
    let server = Server::start_with_env(&data, &["--workers", "1"], &[("FAKE_MODEL_KEY", KEY)]);
    let repo_s = repo.to_str().unwrap().to_string();
    let s2 = server.cli(&[
        "run",
        "Migrate auth to the new RBAC module",
        "--repo",
        &repo_s,
        "--model",
        "fake:m-1",
        "--plan",
        "--json",
    ]);
    let t: Value = serde_json::from_str(&ok(s2)).unwrap();
    let id = t["id"].as_str().unwrap().to_string();
    wait_status(
        &server,
        &id,
        &["awaiting_approval"],
        Duration::from_secs(60),
    )
    .await;

    // Revise, as bob, through the CLI.
    let out = ok(server.cli(&[
        "revise",
        &id,
        "Keep the old tokens valid for a week",
        "--as",
        "bob",
        "--follow",
    ]));
    assert!(
        out.contains("bob asked for a new plan") && out.contains("Status    awaiting_approval"),
        "{out}"
    );
    let t = show_json(&server, &id);
    let revs = t["plan_revisions"].as_array().unwrap();
    assert_eq!(revs.len(), 2, "{t:#}");
    assert_eq!(revs[0]["number"], 1);
    assert_eq!(revs[0]["steps"], json!([step1]));
    assert_eq!(revs[0]["decision"], "revised");
    assert_eq!(revs[0]["decided_by"], "bob");
    assert_eq!(revs[0]["comment"], "Keep the old tokens valid for a week");
    assert_eq!(revs[1]["number"], 2);
    assert_eq!(revs[1]["steps"], json!([step1, step2]));
    assert!(revs[1]["decision"].is_null());
    assert_eq!(t["plan"], revs[1]);
    let shown = ok(server.cli(&["show", &id]));
    assert!(shown.contains("Revisions 2\n"), "{shown}");
    assert!(
        shown.contains(" — 1 step — revised by bob at ")
            && shown.contains(": Keep the old tokens valid for a week\n"),
        "{shown}"
    );

    // Approve, as alice, through the API.
    let (code, t) = post(
        &server,
        &format!("/tasks/{id}/approve"),
        Some(json!({"actor": "alice", "comment": "ship it"})),
    )
    .await;
    assert_eq!(code, 200, "{t}");
    assert_eq!(t["status"], "queued");
    // Approving twice is a conflict.
    let (code, body) = post(&server, &format!("/tasks/{id}/approve"), None).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(", not awaiting approval"),
        "{body}"
    );
    let t = wait_status(&server, &id, &["done", "failed"], Duration::from_secs(60)).await;
    assert_eq!(t["status"], "done", "{t:#}");
    let approvals: Vec<(String, String)> = t["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap().to_string(),
                a["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        approvals,
        vec![
            ("revise".to_string(), "bob".to_string()),
            ("approve".to_string(), "alice".to_string())
        ]
    );
    assert!(
        t["approvals"][0]["at_ms"].as_i64().unwrap()
            <= t["approvals"][1]["at_ms"].as_i64().unwrap()
    );
    assert!(ok(server.cli(&["diff", &id])).contains("+TWO"));

    // What the model saw.
    let reqs = fake.model_requests();
    assert_eq!(reqs.len(), 6, "{reqs:#?}");
    assert_eq!(fake.remaining(), 0);
    let planning_tools = [
        "shell",
        "read_file",
        "list_dir",
        "search",
        "update_plan",
        "finish",
    ];
    for r in &reqs[..4] {
        assert_eq!(tool_names(r), planning_tools);
        let m = messages(r);
        assert_eq!(m[0]["role"], "system");
        assert!(m[0]["content"].as_str().unwrap().contains("PLAN MODE"));
    }
    assert!(last_user(&reqs[0]).contains("Migrate auth to the new RBAC module"));
    // The revision run: the first run's conversation, then bob's comment.
    let m2 = messages(&reqs[2]);
    assert!(
        reqs[2].raw.contains("Swap auth to the RBAC module"),
        "the first plan is in the conversation"
    );
    assert_eq!(
        m2.iter().filter(|m| m["role"] == "assistant").count(),
        2,
        "{m2:#?}"
    );
    let revise = last_user(&reqs[2]);
    assert!(
        revise.contains(
            "bob asked for changes to your plan (revision 1):\nKeep the old tokens valid for a week"
        ),
        "{revise}"
    );
    // The implementing run: every planning turn, then the approval with the plan.
    let m4 = messages(&reqs[4]);
    assert_eq!(
        m4.iter().filter(|m| m["role"] == "assistant").count(),
        4,
        "{m4:#?}"
    );
    assert!(m4.iter().any(|m| {
        m["role"] == "user"
            && m["content"]
                .as_str()
                .unwrap_or_default()
                .contains("Keep the old tokens valid for a week")
    }));
    let approved = last_user(&reqs[4]);
    assert!(
        approved.contains("The plan was approved by alice; implement it.")
            && approved.contains("Comment from alice: ship it")
            && approved.contains(
                "(revision 2):\n1. [pending] Swap auth to the RBAC module\n2. [pending] Keep old tokens valid for a week"
            ),
        "{approved}"
    );
    assert!(!m4[0]["content"].as_str().unwrap().contains("PLAN MODE"));
    let tools = tool_names(&reqs[4]);
    for t in ["write_file", "edit", "apply_patch"] {
        assert!(tools.iter().any(|n| n == t), "{tools:?}");
    }
    // The conversation only grows: after the system prompt, the implementing run starts with
    // the revision run's messages.
    assert_eq!(m4[1..m2.len()], m2[1..]);
}

/// `--sandbox none` cannot make the workspace read-only, so it takes no plan-mode task.
#[test]
fn plan_mode_needs_the_box() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let script = write_script(
        tmp.path(),
        "s.json",
        json!({"turns": [{"text": "never run"}]}),
    );
    let server = Server::start(&tmp.path().join("data"), &["--sandbox", "none"]);
    fails_with(
        server.cli(&[
            "run",
            "Plan it",
            "--repo",
            repo.to_str().unwrap(),
            "--model",
            &format!("scripted:{}", script.display()),
            "--plan",
        ]),
        &["plan mode needs the box", "--sandbox box"],
    );
    let ls: Value = serde_json::from_str(&ok(server.cli(&["ls", "--json"]))).unwrap();
    assert_eq!(ls["tasks"], json!([]), "nothing was stored");
}
