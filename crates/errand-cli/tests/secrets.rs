//! Secrets are never printed: a real server with the box and a scripted agent that prints,
//! splits, encodes, fails on and commits an environment's secret values. Every path the value
//! could leave by (events, the SSE stream, `errand logs`, the task JSON, the diff, the patch,
//! the branch commit, the mirror's objects, the database, the server's log) is checked for the
//! value and for the placeholder where the value would have been.

mod common;

use common::*;
use errand_fakes::{ErrorKind, FakeServer, Reply, Turn, Vendor};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Exposed to the agent: in the box's environment as `$DEPLOY_TOKEN`. The `/`, `+` and `:`
/// make its URL encoding differ from the value.
const TOKEN: &str = "s3cr3t/T0ken+abc:XYZ-42";
/// Not exposed: only the worker knows it (the scripted "model" knows it too, as a model that
/// saw it somewhere would).
const HIDDEN: &str = "hidden-K3y-0987654321";
const TOKEN_PH: &str = "[REDACTED:DEPLOY_TOKEN]";
const HIDDEN_PH: &str = "[REDACTED:HIDDEN_KEY]";

/// `errand serve` with the secrets in its environment, logging at debug level to a file.
fn start_server(data: &Path, log: &Path, env: &[(&str, &str)]) -> Server {
    let log_file = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--data-dir",
    ])
    .arg(data)
    .env_remove("ERRAND_SERVER")
    .env("ERRAND_LOG", "debug")
    .env("E2E_DEPLOY_TOKEN", TOKEN)
    .env("E2E_HIDDEN_KEY", HIDDEN);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .expect("spawn errand serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read listen line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    Server {
        child,
        url,
        data_dir: data.to_path_buf(),
    }
}

fn base64(v: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in v.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// Every form of the two values that must never appear.
fn forbidden() -> Vec<String> {
    vec![
        TOKEN.into(),
        HIDDEN.into(),
        base64(TOKEN.as_bytes()),
        "s3cr3t%2FT0ken%2Babc%3AXYZ-42".into(),
        // Halves of the split value.
        TOKEN[..9].into(),
        TOKEN[9..].into(),
    ]
}

#[track_caller]
fn assert_clean(what: &str, text: &str) {
    for f in forbidden() {
        assert!(
            !text.contains(&f),
            "{what} contains a secret value ({f:?}):\n{text}"
        );
    }
}

fn write_config(data: &Path, repo: &Path, extra: &str) {
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        format!(
            r#"{extra}
[environments.sec]
repo = "{}"
checks = [{{ name = "leaky", command = "printf 'check says %s\n' \"$DEPLOY_TOKEN\" >&2; exit 1" }}]
[environments.sec.secrets]
DEPLOY_TOKEN = {{ from_env = "E2E_DEPLOY_TOKEN", expose_to_agent = true }}
HIDDEN_KEY = {{ from_env = "E2E_HIDDEN_KEY" }}
"#,
            repo.display()
        ),
    )
    .unwrap();
}

/// The scripted agent: prints the exposed value whole, split across two chunks, encoded and
/// in a failing command, and writes it into files. The script itself never holds the value
/// (it is stored with the task): everything comes from `$DEPLOY_TOKEN` in the box.
fn leaky_script() -> Value {
    let split = "printf 'first:'; printf '%s' \"$DEPLOY_TOKEN\" | head -c 9; sleep 0.8; printf '%s' \"$DEPLOY_TOKEN\" | tail -c +10; printf ':second\\n'";
    json!({"turns": [
        {"text": "Using the token.", "tool_calls": [
            {"name": "shell", "arguments": {"command": "echo \"whole: $DEPLOY_TOKEN\""}},
            {"name": "shell", "arguments": {"command": split}},
            {"name": "shell", "arguments": {"command": "printf '%s' \"$DEPLOY_TOKEN\" | base64; python3 -c 'import os, urllib.parse; print(urllib.parse.quote(os.environ[\"DEPLOY_TOKEN\"], safe=\"\"))'"}},
            {"name": "shell", "arguments": {"command": "echo \"failing: $DEPLOY_TOKEN\" >&2; exit 3"}},
            {"name": "shell", "arguments": {"command": "mkdir -p config && printf 'token=%s\\n' \"$DEPLOY_TOKEN\" > config/token.txt && printf 'from shell %s\\n' \"$DEPLOY_TOKEN\" > from_shell.txt"}}
        ]},
        {"tool_calls": [{"name": "finish", "arguments": {"summary": "Wrote the token files."}}]}
    ]})
}

/// The call id of the `shell` call whose command contains `needle`.
fn call_id(events: &[Value], needle: &str) -> String {
    events
        .iter()
        .find(|e| {
            e["type"] == "tool_call"
                && (e["arguments"]["command"]
                    .as_str()
                    .is_some_and(|c| c.contains(needle))
                    || e["arguments"]["workdir"]
                        .as_str()
                        .is_some_and(|c| c.contains(needle)))
        })
        .and_then(|e| e["call_id"].as_str())
        .unwrap_or_else(|| panic!("no tool call with {needle:?}"))
        .to_string()
}

fn outputs<'a>(events: &'a [Value], call: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == "output" && e["call_id"] == call)
        .collect()
}

fn joined(events: &[&Value]) -> String {
    events.iter().map(|e| e["data"].as_str().unwrap()).collect()
}

fn tool_result<'a>(events: &'a [Value], call: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == "tool_result" && e["call_id"] == call)
        .unwrap_or_else(|| panic!("no tool_result for {call}"))
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

async fn sse_text(s: &Server, task: &str) -> String {
    let resp = http()
        .get(s.api(&format!("/tasks/{task}/events/stream")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    // The attempt has ended, so the stream replays everything, says `end` and closes.
    tokio::time::timeout(Duration::from_secs(20), resp.text())
        .await
        .expect("the SSE stream of an ended attempt closes")
        .unwrap()
}

async fn get_text(url: &str) -> String {
    let r = http().get(url).send().await.unwrap();
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.text().await.unwrap()
}

fn mirror_of(data: &Path) -> PathBuf {
    std::fs::read_dir(data.join("mirrors"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
}

/// No object in the mirror holds a value.
fn assert_mirror_clean(mirror: &Path) {
    let objects = Command::new("git")
        .current_dir(mirror)
        .args(["cat-file", "--batch-all-objects", "--batch"])
        .output()
        .unwrap();
    assert!(objects.status.success());
    assert_clean(
        "the mirror's objects",
        &String::from_utf8_lossy(&objects.stdout),
    );
}

/// Nothing stored holds a value (the database and its journal, every file of the data
/// directory), and the server's log, at debug level, never printed one.
fn assert_storage_and_log_clean(server: Server, data: &Path, log: &Path) {
    drop(server);
    for f in files_under(data) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert_clean(
            &format!("stored file {}", f.display()),
            &String::from_utf8_lossy(&bytes),
        );
    }
    let log_text = std::fs::read_to_string(log).unwrap();
    assert!(
        log_text.contains("DEBUG"),
        "the server logged nothing at debug level:\n{log_text}"
    );
    assert_clean("the server's log", &log_text);
}

async fn run_task(server: &Server, prompt: &str, model: &str) -> (String, Value) {
    let out = ok(server.cli(&["run", prompt, "--env", "sec", "--model", model, "--json"]));
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let task = wait_status(server, &id, &["done", "failed"], Duration::from_secs(120)).await;
    (id, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exposed_secret_printed_by_the_agent_is_redacted_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let data = tmp.path().join("data");
    write_config(&data, &repo, "");
    let script = write_script(tmp.path(), "leak.json", leaky_script());
    let log = tmp.path().join("serve.log");
    let server = start_server(&data, &log, &[]);
    let model = format!("scripted:{}", script.display());
    let (id, task) = run_task(&server, "Use the deploy token", &model).await;

    // The task JSON: the check that printed the value failed the attempt.
    let task_text = task.to_string();
    assert_clean("GET /tasks/{id}", &task_text);
    let a = &task["attempts"][0];
    assert_eq!(
        task["status"], "failed",
        "the leaky check fails: {task_text}"
    );
    assert!(
        a["error"]
            .as_str()
            .unwrap()
            .contains("check 'leaky' failed"),
        "{task_text}"
    );
    assert_clean("GET /tasks", &get_text(&server.api("/tasks")).await);

    // Events, through the API.
    let events = events(&server, &id).await;
    let all = serde_json::to_string(&events).unwrap();
    assert_clean("GET /tasks/{id}/events", &all);

    // (a) printed whole, and (c) in its tool_result.
    let whole = call_id(&events, "whole:");
    assert_eq!(
        joined(&outputs(&events, &whole)),
        format!("whole: {TOKEN_PH}\n")
    );
    let r = tool_result(&events, &whole);
    assert!(
        r["output"]
            .as_str()
            .unwrap()
            .contains(&format!("whole: {TOKEN_PH}")),
        "{r}"
    );

    // (b) split across two chunks 0.8 s apart: the first event was recorded before the rest
    // of the value was printed, and the value is still caught.
    let split = call_id(&events, "first:");
    let parts = outputs(&events, &split);
    assert!(parts.len() >= 2, "expected two output chunks: {parts:?}");
    assert_eq!(parts[0]["data"], "first:", "{parts:?}");
    let gap = parts[1]["ts_ms"].as_i64().unwrap() - parts[0]["ts_ms"].as_i64().unwrap();
    assert!(gap >= 500, "the chunks came {gap} ms apart: {parts:?}");
    assert_eq!(joined(&parts), format!("first:{TOKEN_PH}:second\n"));

    // Encoded: base64, then URL-encoded.
    let enc = call_id(&events, "base64");
    assert_eq!(
        joined(&outputs(&events, &enc)),
        format!("{TOKEN_PH}\n{TOKEN_PH}\n")
    );

    // (d) a failing command: its stderr and the error result the model got.
    let failing = call_id(&events, "failing:");
    let parts = outputs(&events, &failing);
    assert_eq!(parts[0]["stream"], "stderr");
    assert_eq!(joined(&parts), format!("failing: {TOKEN_PH}\n"));
    let r = tool_result(&events, &failing);
    assert_eq!(r["ok"], false);
    assert!(
        r["output"]
            .as_str()
            .unwrap()
            .contains(&format!("failing: {TOKEN_PH}")),
        "{r}"
    );

    // The check's output.
    let check = outputs(&events, "check:leaky");
    assert_eq!(joined(&check), format!("check says {TOKEN_PH}\n"));

    // The files were scrubbed before the commit, and a notice says which secret, where.
    let notices: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "notice")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    for file in ["config/token.txt", "from_shell.txt"] {
        assert!(
            notices
                .iter()
                .any(|n| n.contains("secret DEPLOY_TOKEN found in")
                    && n.contains(file)
                    && n.contains("before the commit")),
            "no notice for {file}: {notices:#?}"
        );
    }

    // The diff and the patch carry the placeholders.
    let diff = get_text(&server.api(&format!("/tasks/{id}/diff"))).await;
    assert_clean("GET /diff", &diff);
    for line in [
        format!("+token={TOKEN_PH}"),
        format!("+from shell {TOKEN_PH}"),
    ] {
        assert!(diff.contains(&line), "diff lacks {line:?}:\n{diff}");
    }
    assert_clean(
        "GET /diff?format=json",
        &get_text(&server.api(&format!("/tasks/{id}/diff?format=json"))).await,
    );
    let patch = get_text(&server.api(&format!("/tasks/{id}/patch"))).await;
    assert_clean("GET /patch", &patch);
    assert!(patch.contains(&format!("+token={TOKEN_PH}")), "{patch}");

    // The branch commit.
    let mirror = mirror_of(&data);
    let branch = a["branch"].as_str().unwrap();
    assert_eq!(
        git(&mirror, &["show", &format!("{branch}:config/token.txt")]),
        format!("token={TOKEN_PH}\n")
    );
    assert_clean(
        "the branch's history",
        &git(&mirror, &["log", "-p", branch]),
    );
    assert_mirror_clean(&mirror);

    // `errand logs`, plain and JSON, and `errand show`.
    let short = &id[..8];
    let logs = ok(server.cli(&["logs", short]));
    assert_clean("errand logs", &logs);
    assert!(logs.contains(&format!("whole: {TOKEN_PH}")), "{logs}");
    let jlogs = ok(server.cli(&["logs", short, "--json"]));
    assert_clean("errand logs --json", &jlogs);
    assert!(
        jlogs.contains(&format!("first:{TOKEN_PH}")) || jlogs.contains(TOKEN_PH),
        "{jlogs}"
    );
    assert_clean(
        "errand show --json",
        &ok(server.cli(&["show", short, "--json"])),
    );

    // The live stream.
    let sse = sse_text(&server, &id).await;
    assert_clean("the SSE stream", &sse);
    assert!(sse.contains("event: end"), "{sse}");
    assert!(sse.contains(&format!("whole: {TOKEN_PH}")), "{sse}");

    assert_storage_and_log_clean(server, &data, &log);
}

/// A model that knows the values (both, the unexposed one too) says them in its text, sends
/// them as tool arguments, makes a command fail with one in its error, commits one, puts one
/// in its summary; then a model API error echoes one. All redacted, the attempt's `error`
/// included.
#[tokio::test(flavor = "multi_thread")]
async fn values_from_the_model_and_errors_are_redacted() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let fake = FakeServer::start(
        Vendor::OpenAiChat,
        vec![
            Reply::Turn(Turn {
                text: Some(format!("I was told the hidden key is {HIDDEN}.")),
                tool_calls: vec![
                    (
                        "write_file".into(),
                        json!({"path": "config/hidden.txt", "content": format!("hidden={HIDDEN}\n")}),
                    ),
                    (
                        "shell".into(),
                        json!({"command": "true", "workdir": format!("missing-{TOKEN}")}),
                    ),
                ],
                ..Default::default()
            }),
            Reply::Turn(Turn::call(
                "finish",
                json!({"summary": format!("Done; the token was {TOKEN}.")}),
            )),
            Reply::error(
                400,
                ErrorKind::InvalidRequest,
                &format!("the request contained a credential ({HIDDEN}) and was refused"),
            ),
        ],
    );
    let data = tmp.path().join("data");
    write_config(
        &data,
        &repo,
        &format!(
            "[providers.fake]\nkind = \"openai-chat\"\nbase_url = \"{}\"\napi_key_env = \"FAKE_MODEL_KEY\"\n[providers.fake.models.\"m-1\"]\ninput = 1.0\noutput = 1.0\n",
            fake.base_url
        ),
    );
    let log = tmp.path().join("serve.log");
    let server = start_server(&data, &log, &[("FAKE_MODEL_KEY", "sk-fake-0000")]);

    let (id, task) = run_task(&server, "Use the keys", "fake:m-1").await;
    let text = task.to_string();
    assert_clean("GET /tasks/{id}", &text);
    let a = &task["attempts"][0];
    assert_eq!(a["summary"], format!("Done; the token was {TOKEN_PH}."));
    let events = events(&server, &id).await;
    assert_clean("events", &serde_json::to_string(&events).unwrap());
    let turn = events.iter().find(|e| e["type"] == "model_turn").unwrap();
    assert_eq!(
        turn["text"],
        format!("I was told the hidden key is {HIDDEN_PH}.")
    );
    let write = events
        .iter()
        .find(|e| e["type"] == "tool_call" && e["name"] == "write_file")
        .unwrap();
    assert_eq!(
        write["arguments"]["content"],
        format!("hidden={HIDDEN_PH}\n")
    );
    // A command that could not run: its error names the (redacted) workdir.
    let err = events
        .iter()
        .find(|e| e["type"] == "error" && e["message"].as_str().unwrap().contains("missing-"))
        .unwrap_or_else(|| panic!("no error event for the bad workdir: {events:#?}"));
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains(&format!("missing-{TOKEN_PH}")),
        "{err}"
    );
    let result = events
        .iter()
        .find(|e| e["type"] == "tool_result" && e["name"] == "shell")
        .unwrap();
    assert_eq!(result["ok"], false);
    assert!(
        result["output"]
            .as_str()
            .unwrap()
            .contains(&format!("missing-{TOKEN_PH}")),
        "{result}"
    );
    // The unexposed value, committed by the model: scrubbed, with a notice.
    assert!(
        events.iter().any(|e| e["type"] == "notice"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("secret HIDDEN_KEY found in config/hidden.txt")),
        "{events:#?}"
    );
    let diff = get_text(&server.api(&format!("/tasks/{id}/diff"))).await;
    assert!(diff.contains(&format!("+hidden={HIDDEN_PH}")), "{diff}");
    assert_clean("GET /diff", &diff);
    let patch = get_text(&server.api(&format!("/tasks/{id}/patch"))).await;
    assert!(patch.contains(&format!("+hidden={HIDDEN_PH}")), "{patch}");
    let mirror = mirror_of(&data);
    let branch = a["branch"].as_str().unwrap();
    let msg = git(&mirror, &["log", "-1", "--format=%B", branch]);
    assert!(
        msg.contains(&format!("Done; the token was {TOKEN_PH}.")),
        "{msg}"
    );
    assert_eq!(
        git(&mirror, &["show", &format!("{branch}:config/hidden.txt")]),
        format!("hidden={HIDDEN_PH}\n")
    );

    // The model API's error echoes a value: the error event and the attempt's `error`.
    let (id, task) = run_task(&server, "Try again", "fake:m-1").await;
    let text = task.to_string();
    assert_clean("GET /tasks/{id}", &text);
    assert_eq!(task["status"], "failed");
    let error = task["attempts"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("the model failed") && error.contains(&format!("credential ({HIDDEN_PH})")),
        "{text}"
    );
    let events = common::events(&server, &id).await;
    assert_clean("events", &serde_json::to_string(&events).unwrap());
    assert!(
        events.iter().any(|e| e["type"] == "error"
            && e["message"]
                .as_str()
                .unwrap()
                .contains(&format!("credential ({HIDDEN_PH})"))),
        "{events:#?}"
    );
    assert_eq!(fake.remaining(), 0, "every reply was served");
    assert_mirror_clean(&mirror);
    assert_storage_and_log_clean(server, &data, &log);
}
