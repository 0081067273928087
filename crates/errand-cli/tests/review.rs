//! The reviewer end to end through the real binary: after the checks a second model reads
//! the task, the plan, the diff and the check results and answers with `submit_review`; on
//! "changes needed" its findings go back to the coding agent in the same conversation, the
//! checks and the review run again, and the verdict lands in `show`, the log and the pull
//! request body. Reviewers here are a loopback fake of the Anthropic Messages API and scripted
//! playback; coding agents are scripted, or a fake of the OpenAI Responses API where the test
//! must see what the agent was sent.

mod common;

use common::*;
use errand_fakes::forge::{FakeForge, ForgeVendor};
use errand_fakes::git_http::GitHttpServer;
use errand_fakes::{FakeServer, FakeUsage, Reply, Turn, Vendor};
use serde_json::{Value, json};
use std::path::Path;

const TOKEN: &str = "ghp_reviewSecretToken0123456789";
const CRITIC_KEY: &str = "sk-critic-e2e-777";

fn review_call(v: Value) -> Reply {
    Reply::Turn(Turn {
        tool_calls: vec![("submit_review".into(), v)],
        usage: FakeUsage {
            input: 1000,
            output: 100,
            ..Default::default()
        },
        ..Default::default()
    })
}

/// Every string in a JSON value, joined (what a model was sent, escapes undone).
fn texts(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(texts).collect::<Vec<_>>().join("\n"),
        Value::Object(o) => o.values().map(texts).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

fn show_json(server: &Server, id: &str) -> Value {
    serde_json::from_str(&ok(server.cli(&["show", id, "--json"]))).unwrap()
}

fn only_task(server: &Server) -> String {
    let ls: Value = serde_json::from_str(&ok(server.cli(&["ls", "--json"]))).unwrap();
    assert_eq!(ls["tasks"].as_array().unwrap().len(), 1);
    ls["tasks"][0]["id"].as_str().unwrap().to_string()
}

fn status_path(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "status")
        .map(|e| {
            format!(
                "{}→{}",
                e["from"].as_str().unwrap(),
                e["to"].as_str().unwrap()
            )
        })
        .collect()
}

fn bare_remote(tmp: &Path, repo: &Path) -> std::path::PathBuf {
    let remotes = tmp.join("remotes");
    std::fs::create_dir_all(remotes.join("acme")).unwrap();
    let bare = remotes.join("acme/shop.git");
    let out = std::process::Command::new("git")
        .args(["clone", "--quiet", "--bare"])
        .arg(repo)
        .arg(&bare)
        .output()
        .unwrap();
    assert!(out.status.success());
    bare
}

#[test]
fn changes_needed_goes_back_to_the_agent_and_the_fix_is_approved() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    bare_remote(tmp.path(), &repo);
    let git_server =
        GitHttpServer::start(&tmp.path().join("remotes"), Some(("x-access-token", TOKEN)));
    let forge = FakeForge::start(ForgeVendor::GitHub, "acme/shop", TOKEN);
    // The agent upper-cases only `two` at first; after the review it does `three` too.
    let agent = write_script(
        tmp.path(),
        "agent.json",
        json!({"turns": [
            {"tool_calls": [
                {"name": "update_plan", "arguments": {"plan": [{"step": "Upper-case two in src/lib.txt", "status": "completed"}]}},
                {"name": "edit", "arguments": {"path": "src/lib.txt", "old": "two\n", "new": "TWO\n"}}]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "Upper-cased two."}}]},
            {"tool_calls": [{"name": "edit", "arguments": {"path": "src/lib.txt", "old": "three\n", "new": "THREE\n"}}]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "Upper-cased two and three."}}]}
        ]}),
    );
    let critic = FakeServer::start(
        Vendor::Anthropic,
        vec![
            review_call(json!({
                "verdict": "changes_needed",
                "summary": "Only two is upper-cased; the task asks for three as well.",
                "findings": [{"file": "src/lib.txt", "line": 3, "severity": "error", "message": "three must be upper-cased too"}]
            })),
            review_call(json!({
                "verdict": "approve",
                "summary": "Both numbers are upper-cased now.",
                "findings": []
            })),
        ],
    );
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        format!(
            r#"
public_url = "http://errand.example.test"
[providers.critic]
kind = "anthropic"
base_url = "{}"
api_key_env = "CRITIC_KEY"
[providers.critic.models."judge-1"]
input = 3.0
output = 15.0
[environments.shop]
repo = "{}"
model = "scripted:{}"
checks = [{{ name = "tests", command = "grep -q TWO src/lib.txt" }}]
push = true
pr = "ready"
remote = "{}"
[environments.shop.forge]
kind = "github"
api_url = "{}"
token_env = "GH_TOKEN"
"#,
            critic.base_url,
            repo.display(),
            agent.display(),
            git_server.url("acme/shop.git"),
            forge.api_url
        ),
    )
    .unwrap();
    let server = Server::start_with_env(
        &data,
        &["--workers", "1"],
        &[("GH_TOKEN", TOKEN), ("CRITIC_KEY", CRITIC_KEY)],
    );

    let out = ok(server.cli(&[
        "run",
        "Upper-case two and three",
        "--env",
        "shop",
        "--review",
        "critic:judge-1",
        "--follow",
    ]));
    assert!(out.contains("reviewer critic:judge-1"), "{out}");
    assert!(
        out.contains(
            "review round 1: CHANGES NEEDED — Only two is upper-cased; the task asks for three as well."
        ),
        "{out}"
    );
    assert!(
        out.contains("• error src/lib.txt:3: three must be upper-cased too"),
        "{out}"
    );
    assert!(
        out.contains("review round 2: APPROVE — Both numbers are upper-cased now."),
        "{out}"
    );
    assert!(out.contains("pull request created"), "{out}");

    let id = only_task(&server);
    let t = show_json(&server, &id);
    assert_eq!(t["status"], "done");
    assert_eq!(t["review_model"], "critic:judge-1");
    assert_eq!(t["max_review_rounds"], 1);
    let a = &t["attempts"][0];
    let r = &a["review"];
    assert_eq!(r["model"], "critic:judge-1");
    assert_eq!(r["verdict"], "approve");
    assert_eq!(r["rounds"].as_array().unwrap().len(), 2);
    assert_eq!(r["rounds"][0]["verdict"], "changes_needed");
    assert_eq!(
        r["rounds"][0]["findings"],
        json!([{"file": "src/lib.txt", "line": 3, "severity": "error", "message": "three must be upper-cased too"}])
    );
    assert_eq!(r["rounds"][1]["verdict"], "approve");
    assert_eq!(a["summary"], "Upper-cased two and three.");
    assert_eq!(a["turns"], 4, "the agent's turns of both rounds");
    // Both reviews are paid for by the attempt: 2 × (1000 × $3 + 100 × $15) per million.
    let cost = a["usage"]["cost_usd"].as_f64().unwrap();
    assert!((cost - 0.009).abs() < 1e-9, "{cost}");
    assert_eq!(
        a["checks"].as_array().unwrap().len(),
        1,
        "the last round's checks"
    );

    // The final diff holds the fix the reviewer asked for.
    let diff = ok(server.cli(&["diff", &id]));
    assert!(diff.contains("+TWO") && diff.contains("+THREE"), "{diff}");

    let show = ok(server.cli(&["show", &id]));
    for needle in [
        "Reviewer  critic:judge-1 (findings go back to the agent up to 1 time)",
        "Review    approve (critic:judge-1, 2 rounds)",
        "round 1: changes needed — Only two is upper-cased",
        "error src/lib.txt:3: three must be upper-cased too",
        "round 2: approve — Both numbers are upper-cased now.",
    ] {
        assert!(show.contains(needle), "show lacks {needle:?}:\n{show}");
    }

    // The log: verifying while the reviewer works, back to running with the findings, the
    // checks again, the review again.
    let evs = events(&server, &id).await_blocking();
    assert_contiguous(&evs);
    let path = status_path(&evs);
    let expected = [
        "running→checking",
        "checking→verifying",
        "verifying→running",
        "running→checking",
        "checking→verifying",
        "verifying→done",
    ];
    let tail: Vec<&str> = path.iter().map(String::as_str).skip(2).collect();
    assert_eq!(tail, expected, "{path:?}");
    let reviews: Vec<&Value> = evs.iter().filter(|e| e["type"] == "review").collect();
    assert_eq!(reviews.len(), 2);
    assert_eq!(reviews[0]["round"], 1);
    assert_eq!(reviews[0]["findings"][0]["line"], 3);
    assert_eq!(
        evs.iter().filter(|e| e["type"] == "check_result").count(),
        2,
        "the checks ran again after the fix"
    );

    // What the reviewer was sent: the task, the plan, the checks, the diff; forced to answer
    // with submit_review; the second time, its earlier findings and the new diff.
    let reqs = critic.model_requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].header("x-api-key"), Some(CRITIC_KEY));
    assert_eq!(
        reqs[0].body["tool_choice"],
        json!({"type": "tool", "name": "submit_review"})
    );
    assert!(
        reqs[0].body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "submit_review"
                && t["input_schema"]["properties"]["verdict"]["enum"]
                    == json!(["approve", "changes_needed"])),
        "{}",
        reqs[0].body["tools"]
    );
    let first = texts(&reqs[0].body["messages"]);
    for needle in [
        "Upper-case two and three",
        "- [completed] Upper-case two in src/lib.txt",
        "Upper-cased two.",
        "tests `grep -q TWO src/lib.txt`: PASSED (exit 0)",
        "+TWO",
    ] {
        assert!(
            first.contains(needle),
            "round 1 request lacks {needle:?}:\n{first}"
        );
    }
    assert!(!first.contains("+THREE"), "{first}");
    let second = texts(&reqs[1].body["messages"]);
    for needle in [
        "+THREE",
        "<earlier_reviews>",
        "three must be upper-cased too",
        "Upper-cased two and three.",
    ] {
        assert!(
            second.contains(needle),
            "round 2 request lacks {needle:?}:\n{second}"
        );
    }

    // The pull request body has the verdict and the findings.
    let pulls = forge.pulls();
    assert_eq!(pulls.len(), 1);
    let body = &pulls[0].body;
    for needle in [
        "## Review",
        "✅ **Approved** by the reviewer `critic:judge-1` after 2 rounds.",
        "**Round 1: changes needed.** Only two is upper-cased; the task asks for three as well.",
        "- error `src/lib.txt:3`: three must be upper-cased too",
        "**Round 2: approved.** Both numbers are upper-cased now.",
    ] {
        assert!(body.contains(needle), "PR body lacks {needle:?}:\n{body}");
    }
    assert!(!ok(server.cli(&["logs", &id, "--json"])).contains(CRITIC_KEY));
}

/// Runs a future to completion from a sync test.
trait Blocking: std::future::Future + Sized {
    fn await_blocking(self) -> Self::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(self)
    }
}
impl<F: std::future::Future> Blocking for F {}

/// The findings reach the coding agent as a user message that continues its conversation (a
/// fake of the OpenAI Responses API records what the agent was sent), and a reviewer answer
/// that is not a valid review is sent back once with what is wrong.
#[test]
fn findings_continue_the_agents_conversation_and_a_bad_review_is_retried_once() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let call = |name: &str, args: Value| Reply::Turn(Turn::call(name, args));
    let coder = FakeServer::start(
        Vendor::OpenAiResponses,
        vec![
            call(
                "edit",
                json!({"path": "src/lib.txt", "old": "two\n", "new": "TWO\n"}),
            ),
            call("finish", json!({"summary": "two done"})),
            call(
                "edit",
                json!({"path": "src/lib.txt", "old": "three\n", "new": "THREE\n"}),
            ),
            call("finish", json!({"summary": "two and three done"})),
        ],
    );
    let reviewer = write_script(
        tmp.path(),
        "review.json",
        json!({"turns": [
            {"tool_calls": [{"name": "submit_review", "arguments": {"verdict": "maybe", "summary": "hmm", "findings": []}}]},
            {"tool_calls": [{"name": "submit_review", "arguments": {
                "verdict": "changes_needed", "summary": "three is missing",
                "findings": [{"file": "src/lib.txt", "line": 3, "severity": "warning", "message": "upper-case three as well"}]}}]},
            {"tool_calls": [{"name": "submit_review", "arguments": {"verdict": "approve", "summary": "good", "findings": []}}]}
        ]}),
    );
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        format!(
            "[providers.coder]\nkind = \"openai-responses\"\nbase_url = \"{}\"\napi_key_env = \"CODER_KEY\"\n",
            coder.base_url
        ),
    )
    .unwrap();
    let server = Server::start_with_env(&data, &["--workers", "1"], &[("CODER_KEY", "sk-coder")]);
    let out = ok(server.cli(&[
        "run",
        "Upper-case two and three",
        "--repo",
        repo.to_str().unwrap(),
        "--model",
        "coder:m-1",
        "--review",
        &format!("scripted:{}", reviewer.display()),
        "--max-review-rounds",
        "2",
        "--check",
        "tests=grep -q TWO src/lib.txt",
        "--follow",
    ]));
    assert!(
        out.contains("the reviewer's answer is not a valid review (verdict must be \"approve\" or \"changes_needed\", not \"maybe\"); asking it once more"),
        "{out}"
    );
    assert!(
        out.contains("review round 1: CHANGES NEEDED — three is missing"),
        "{out}"
    );
    assert!(out.contains("review round 2: APPROVE — good"), "{out}");
    let id = only_task(&server);
    let t = show_json(&server, &id);
    assert_eq!(t["max_review_rounds"], 2);
    assert_eq!(t["attempts"][0]["review"]["verdict"], "approve");
    assert!(ok(server.cli(&["diff", &id])).contains("+THREE"));

    // The third request (the first of the round of fixes) is the second one's conversation,
    // plus the finish call and its result, plus the findings as a user message.
    let reqs = coder.model_requests();
    assert_eq!(reqs.len(), 4);
    let input = |i: usize| reqs[i].body["input"].as_array().unwrap().clone();
    let (second, third) = (input(1), input(2));
    assert!(third.len() > second.len() + 2, "{third:?}");
    assert_eq!(
        third[..second.len()],
        second[..],
        "the same conversation goes on"
    );
    let last = third.last().unwrap();
    assert_eq!(last["role"], "user", "{last}");
    let text = last["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.starts_with("<review round=\"1\">"), "{last}");
    assert!(text.contains("three is missing"), "{text}");
    assert!(
        text.contains("1. [warning] src/lib.txt:3: upper-case three as well"),
        "{text}"
    );
    assert!(!text.contains("<followup>"), "{text}");
    assert_eq!(
        reqs[2].body["instructions"], reqs[0].body["instructions"],
        "the same system prompt"
    );
}

/// A reviewer that never answers with a valid review leaves the attempt without a verdict,
/// with a note saying why; the attempt's own result stands.
#[test]
fn a_reviewer_that_gives_no_valid_review_twice_leaves_no_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let agent = write_script(
        tmp.path(),
        "agent.json",
        json!({"turns": [
            {"tool_calls": [{"name": "edit", "arguments": {"path": "src/lib.txt", "old": "two\n", "new": "TWO\n"}}]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "done"}}]}
        ]}),
    );
    let reviewer = write_script(
        tmp.path(),
        "review.json",
        json!({"turns": [
            {"text": "Looks good to me!"},
            {"tool_calls": [{"name": "submit_review", "arguments": {"verdict": "approve", "summary": "fine"}}]},
            {"tool_calls": [{"name": "submit_review", "arguments": {"verdict": "approve", "summary": "never asked", "findings": []}}]}
        ]}),
    );
    let server = Server::start(&tmp.path().join("data"), &["--workers", "1"]);
    let out = ok(server.cli(&[
        "run",
        "Upper-case two",
        "--repo",
        repo.to_str().unwrap(),
        "--model",
        &format!("scripted:{}", agent.display()),
        "--review",
        &format!("scripted:{}", reviewer.display()),
        "--check",
        "tests=grep -q TWO src/lib.txt",
        "--follow",
    ]));
    assert!(
        out.contains(
            "not a valid review (it did not call submit_review and its text holds no JSON review); asking it once more"
        ),
        "{out}"
    );
    assert!(out.contains("the reviewer gave no verdict"), "{out}");
    assert!(out.contains("findings is missing"), "{out}");
    let id = only_task(&server);
    let t = show_json(&server, &id);
    assert_eq!(
        t["status"], "done",
        "the checks passed; no verdict does not fail it"
    );
    let r = &t["attempts"][0]["review"];
    assert!(r["verdict"].is_null(), "{r}");
    assert_eq!(r["rounds"].as_array().map(Vec::len), Some(0));
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("not a valid review twice"),
        "{r}"
    );
    let show = ok(server.cli(&["show", &id]));
    assert!(
        show.contains("Review    no verdict from scripted:"),
        "{show}"
    );
    let table = ok(server.cli(&["compare", &id]));
    assert!(table.contains("no verdict"), "{table}");
    let evs = events(&server, &id).await_blocking();
    assert!(!evs.iter().any(|e| e["type"] == "review"));
    assert!(
        evs.iter()
            .any(|e| e["type"] == "status" && e["to"] == "verifying")
    );
}

#[test]
fn review_and_best_of_n_options_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let script = write_script(
        tmp.path(),
        "s.json",
        json!({"turns": [{"tool_calls": [{"name": "finish", "arguments": {"summary": "x"}}]}]}),
    );
    let model = format!("scripted:{}", script.display());
    let repo_s = repo.display().to_string();
    let server = Server::start(&tmp.path().join("data"), &["--workers", "0"]);
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "x", "--repo", &repo_s, "--model", &model];
        args.extend_from_slice(extra);
        server.cli(&args)
    };
    fails_with(
        run(&["--max-review-rounds", "2"]),
        &["needs a reviewer", "--review MODEL"],
    );
    fails_with(
        run(&["--attempts", "9"]),
        &["--attempts 9", "between 1 and 8"],
    );
    fails_with(run(&["--attempts", "0"]), &["between 1 and 8"]);
    fails_with(
        run(&["--review", "nosuch:model"]),
        &["review model", "nosuch"],
    );
    fails_with(
        run(&["--review", &model, "--max-review-rounds", "6"]),
        &["max_review_rounds is 6", "limit is 5"],
    );
    fails_with(
        run(&["--model", &model, "--attempts", "1"]),
        &["2 models for 1 attempt", "--attempts 2"],
    );
    fails_with(
        run(&["--review", "scripted:/nonexistent/review.json"]),
        &["review model", "/nonexistent/review.json"],
    );
    // Nothing was stored.
    let ls: Value = serde_json::from_str(&ok(server.cli(&["ls", "--json"]))).unwrap();
    assert_eq!(ls["tasks"].as_array().unwrap().len(), 0);
    // Good options: three attempts, two models cycled, a reviewer with no fix rounds.
    let out = ok(run(&[
        "--model",
        &model,
        "--attempts",
        "3",
        "--review",
        &model,
        "--max-review-rounds",
        "0",
        "--json",
    ]));
    let t: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(t["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(t["max_review_rounds"], 0);
    assert_eq!(t["review_model"], model.as_str());
    assert!(
        t["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["status"] == "queued")
    );
}
