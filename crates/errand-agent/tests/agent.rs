//! The agent loop end to end: a scripted model, the real unisolated box on a temp workspace,
//! real files, and a sink that records every event.

use async_trait::async_trait;
use errand_agent::{AgentConfig, AgentError, AgentOutcome, AgentRun, EndReason, EventSink};
use errand_core::{EventKind, OutputStream};
use errand_model::scripted::{Script, ScriptedProvider};
use errand_model::{Message, ModelRequest, ModelResponse, Provider};
use errand_sandbox::unisolated::Unisolated;
use errand_sandbox::{BoxSpec, SandboxBackend, SandboxBox};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Collect {
    events: Mutex<Vec<EventKind>>,
}

#[async_trait]
impl EventSink for Collect {
    async fn emit(&self, events: Vec<EventKind>) -> Result<(), AgentError> {
        self.events.lock().unwrap().extend(events);
        Ok(())
    }
}

/// The scripted provider, recording every request it was sent.
struct Recording {
    inner: ScriptedProvider,
    requests: Mutex<Vec<ModelRequest>>,
}

#[async_trait]
impl Provider for Recording {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn scripted(&self) -> bool {
        self.inner.scripted()
    }
    async fn stream(
        &self,
        req: &ModelRequest,
        on_delta: &mut (dyn for<'d> FnMut(errand_model::Delta<'d>) + Send),
    ) -> errand_model::Result<ModelResponse> {
        self.requests.lock().unwrap().push(req.clone());
        self.inner.stream(req, on_delta).await
    }
}

/// A workspace directory inside its own temp dir, so that escapes land somewhere checkable
/// (`outside`), plus a scratch dir for the box.
struct Env {
    _tmp: tempfile::TempDir,
    ws: PathBuf,
    outside: PathBuf,
    scratch: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        let outside = tmp.path().join("outside");
        let scratch = tmp.path().join("scratch");
        for d in [&ws, &outside, &scratch] {
            std::fs::create_dir_all(d).unwrap();
        }
        Env {
            _tmp: tmp,
            ws,
            outside,
            scratch,
        }
    }

    fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let p = self.ws.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.ws.join(rel)).unwrap()
    }

    async fn sandbox(&self) -> Box<dyn SandboxBox> {
        Unisolated
            .create(BoxSpec {
                workspace: self.ws.clone(),
                scratch: self.scratch.clone(),
                ro_binds: vec![],
                rootfs: None,
                quota_dir: None,
                env: vec![],
                ..Default::default()
            })
            .await
            .unwrap()
    }

    async fn run(&self, turns: serde_json::Value) -> Run {
        self.run_with(turns, AgentConfig::default(), CancellationToken::new())
            .await
    }

    async fn run_with(
        &self,
        turns: serde_json::Value,
        config: AgentConfig,
        cancel: CancellationToken,
    ) -> Run {
        let script = Script::parse(&json!({ "turns": turns }).to_string()).unwrap();
        let provider = Recording {
            inner: ScriptedProvider::new("scripted:test", script),
            requests: Mutex::new(Vec::new()),
        };
        let sink = Collect::default();
        let sandbox = self.sandbox().await;
        let outcome = AgentRun {
            prompt: "  Do the task.  ",
            workspace: &self.ws,
            sandbox: sandbox.as_ref(),
            provider: &provider,
            sink: &sink,
            cancel,
            config,
            history: vec![],
            resume: None,
        }
        .run()
        .await
        .unwrap();
        sandbox.destroy().await.unwrap();
        Run {
            outcome,
            events: sink.events.into_inner().unwrap(),
            requests: provider.requests.into_inner().unwrap(),
        }
    }
}

struct Run {
    outcome: AgentOutcome,
    events: Vec<EventKind>,
    requests: Vec<ModelRequest>,
}

/// What one tool call returned.
#[derive(Debug)]
struct Res {
    ok: bool,
    output: String,
    truncated: bool,
}

impl Run {
    /// The events of one call: from its `ToolCall` to its `ToolResult`, both included.
    fn call_events(&self, call_id: &str) -> Vec<EventKind> {
        let start = self
            .events
            .iter()
            .position(|e| matches!(e, EventKind::ToolCall { call_id: c, .. } if c == call_id))
            .unwrap_or_else(|| panic!("no tool_call {call_id} in {:#?}", self.events));
        let len = self.events[start..]
            .iter()
            .position(|e| matches!(e, EventKind::ToolResult { call_id: c, .. } if c == call_id))
            .unwrap_or_else(|| panic!("no tool_result {call_id} in {:#?}", self.events));
        self.events[start..=start + len].to_vec()
    }

    fn result(&self, call_id: &str) -> Res {
        match self.call_events(call_id).pop() {
            Some(EventKind::ToolResult {
                ok,
                output,
                truncated,
                ..
            }) => Res {
                ok,
                output,
                truncated,
            },
            other => panic!("{other:?}"),
        }
    }

    /// A tool call that must have succeeded; its output.
    fn ok(&self, call_id: &str) -> String {
        let r = self.result(call_id);
        assert!(r.ok, "{call_id} failed: {}", r.output);
        r.output
    }

    /// A tool call that must have failed; its output.
    fn err(&self, call_id: &str) -> String {
        let r = self.result(call_id);
        assert!(!r.ok, "{call_id} should have failed: {}", r.output);
        r.output
    }

    /// `(path, change)` of the file changes one call reported.
    fn file_changes(&self, call_id: &str) -> Vec<(String, String)> {
        self.call_events(call_id)
            .into_iter()
            .filter_map(|e| match e {
                EventKind::FileChange { path, change } => Some((path, change)),
                _ => None,
            })
            .collect()
    }

    /// The output of one call's command as recorded in `Output` events, per stream.
    fn output_of(&self, call_id: &str, stream: OutputStream) -> String {
        self.call_events(call_id)
            .into_iter()
            .filter_map(|e| match e {
                EventKind::Output {
                    call_id: Some(c),
                    stream: s,
                    data,
                } if c == call_id && s == stream => Some(data),
                _ => None,
            })
            .collect()
    }

    fn command_finished(&self, call_id: &str) -> (Option<i32>, Option<String>) {
        self.call_events(call_id)
            .into_iter()
            .find_map(|e| match e {
                EventKind::CommandFinished {
                    exit_code,
                    killed_by,
                    ..
                } => Some((exit_code, killed_by)),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no command_finished for {call_id}"))
    }

    fn assert_finished(&self, summary: &str) {
        assert_eq!(self.outcome.end, EndReason::Finished, "{:#?}", self.events);
        assert_eq!(self.outcome.summary.as_deref(), Some(summary));
    }
}

fn call(name: &str, arguments: serde_json::Value) -> serde_json::Value {
    json!({"name": name, "arguments": arguments})
}

fn turn(calls: Vec<serde_json::Value>) -> serde_json::Value {
    json!({"tool_calls": calls})
}

fn finish_turn() -> serde_json::Value {
    turn(vec![call("finish", json!({"summary": "done"}))])
}

fn shell(command: &str) -> serde_json::Value {
    call("shell", json!({ "command": command }))
}

// ---------------------------------------------------------------------------
// shell
// ---------------------------------------------------------------------------

#[tokio::test]
async fn shell_reports_exit_code_and_both_streams() {
    let env = Env::new();
    let run = env
        .run(json!([
            turn(vec![
                shell("echo out-line; echo err-line >&2; exit 3"),
                shell("echo fine"),
            ]),
            finish_turn(),
        ]))
        .await;
    run.assert_finished("done");
    assert_eq!(run.outcome.turns, 2);

    let failed = run.err("call_1_1");
    assert!(failed.starts_with("Exit code: 3\n"), "{failed}");
    assert!(failed.contains("out-line\n"), "{failed}");
    assert!(failed.contains("err-line\n"), "{failed}");
    assert_eq!(
        run.output_of("call_1_1", OutputStream::Stdout),
        "out-line\n"
    );
    assert_eq!(
        run.output_of("call_1_1", OutputStream::Stderr),
        "err-line\n"
    );
    assert_eq!(run.command_finished("call_1_1"), (Some(3), None));

    let events = run.call_events("call_1_1");
    assert!(
        matches!(&events[1], EventKind::CommandStarted { call_id: Some(c), command, workdir }
            if c == "call_1_1" && command.starts_with("echo out-line") && workdir == "."),
        "{events:#?}"
    );

    let fine = run.ok("call_1_2");
    assert!(fine.starts_with("Exit code: 0\n"), "{fine}");
    assert!(fine.ends_with("Output:\nfine\n"), "{fine}");
    assert_eq!(run.command_finished("call_1_2"), (Some(0), None));
}

#[tokio::test]
async fn shell_workdir_subdir_ok_and_escape_refused() {
    let env = Env::new();
    env.write("sub/inner/file.txt", "x");
    let ws = env.ws.canonicalize().unwrap();
    let run = env
        .run(json!([
            turn(vec![
                call("shell", json!({"command": "pwd; ls", "workdir": "sub"})),
                call("shell", json!({"command": "pwd", "workdir": ".."})),
                call("shell", json!({"command": "pwd", "workdir": "nope"})),
            ]),
            turn(vec![shell("echo still-running")]),
            finish_turn(),
        ]))
        .await;
    run.assert_finished("done");
    assert_eq!(run.outcome.turns, 3);

    let sub = run.ok("call_1_1");
    assert!(
        sub.contains(&format!("{}\ninner\n", ws.join("sub").display())),
        "{sub}"
    );

    let up = run.err("call_1_2");
    assert!(up.contains("could not run the command"), "{up}");
    assert!(up.contains("outside the workspace"), "{up}");
    // The refusal is logged as an error, not as a finished command.
    let events = run.call_events("call_1_2");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EventKind::Error { message } if message.contains("outside the workspace"))),
        "{events:#?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, EventKind::CommandFinished { .. }))
    );

    let missing = run.err("call_1_3");
    assert!(missing.contains("does not exist"), "{missing}");

    assert!(run.ok("call_2_1").contains("still-running"));
}

#[tokio::test]
async fn shell_timeout_kills_the_command() {
    let env = Env::new();
    let started = Instant::now();
    let run = env
        .run(json!([
            turn(vec![call(
                "shell",
                json!({"command": "echo before; sleep 20; echo never", "timeout_ms": 300})
            )]),
            finish_turn(),
        ]))
        .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    run.assert_finished("done");
    let out = run.err("call_1_1");
    assert!(out.contains("timeout of 300 ms"), "{out}");
    assert!(out.contains("before"), "{out}");
    assert!(!out.contains("never"), "{out}");
    let (code, killed_by) = run.command_finished("call_1_1");
    assert_eq!(killed_by.as_deref(), Some("timeout"));
    assert_eq!(code, None);
}

#[tokio::test]
async fn shell_timeout_is_capped_by_the_config() {
    let env = Env::new();
    let config = AgentConfig {
        max_command_timeout: Duration::from_millis(200),
        ..AgentConfig::default()
    };
    let run = env
        .run_with(
            json!([
                turn(vec![call(
                    "shell",
                    json!({"command": "sleep 20", "timeout_ms": 600000})
                )]),
                finish_turn(),
            ]),
            config,
            CancellationToken::new(),
        )
        .await;
    let out = run.err("call_1_1");
    assert!(out.contains("timeout of 200 ms"), "{out}");
}

#[tokio::test]
async fn shell_empty_output_says_printed_nothing() {
    let env = Env::new();
    let run = env
        .run(json!([
            turn(vec![shell("true"), shell("   ")]),
            finish_turn()
        ]))
        .await;
    let out = run.ok("call_1_1");
    assert!(out.starts_with("Exit code: 0\n"), "{out}");
    assert!(out.contains("printed nothing"), "{out}");
    assert!(
        !run.call_events("call_1_1")
            .iter()
            .any(|e| matches!(e, EventKind::Output { .. }))
    );
    assert_eq!(run.err("call_1_2"), "command is empty");
}

#[tokio::test]
async fn shell_long_output_is_capped_for_the_model_but_complete_in_events() {
    let env = Env::new();
    // 200 KB of numbered lines between two markers.
    let cmd = "echo HEAD-MARK; for i in $(seq 1 20000); do printf 'line %09d\\n' $i; done; echo TAIL-MARK";
    let run = env
        .run(json!([turn(vec![shell(cmd)]), finish_turn()]))
        .await;
    let mut expected = String::from("HEAD-MARK\n");
    for i in 1..=20000 {
        expected.push_str(&format!("line {i:09}\n"));
    }
    expected.push_str("TAIL-MARK\n");
    assert!(expected.len() > 200_000);

    // Every byte is in the Output events, in order.
    let streamed = run.output_of("call_1_1", OutputStream::Stdout);
    assert_eq!(streamed.len(), expected.len());
    assert!(streamed == expected, "streamed output differs");

    // The ToolResult event keeps the whole text; the model sees head and tail only.
    let r = run.result("call_1_1");
    assert!(r.ok);
    assert!(r.truncated);
    assert!(r.output.contains("line 000010000"));
    assert!(r.output.ends_with("line 000020000\nTAIL-MARK\n"));
    let last = run.requests.last().unwrap();
    let shown = last
        .messages
        .iter()
        .find_map(|m| match m {
            Message::Tool {
                call_id, content, ..
            } if call_id == "call_1_1" => Some(content),
            _ => None,
        })
        .unwrap();
    let cap = AgentConfig::default().tool_output_cap;
    assert!(shown.len() < cap + 200, "{}", shown.len());
    assert!(shown.starts_with("Exit code: 0\n"), "{}", &shown[..100]);
    assert!(shown.contains("HEAD-MARK\nline 000000001\n"));
    assert!(shown.ends_with("line 000020000\nTAIL-MARK\n"));
    assert!(shown.contains("bytes omitted"));
    assert!(!shown.contains("line 000010000"));
    assert_eq!(
        shown,
        &errand_core::text::cap_head_tail(&r.output, cap).0,
        "the model got the event's text, capped"
    );
}

#[tokio::test]
async fn shell_multibyte_utf8_split_across_chunks_is_intact() {
    let env = Env::new();
    // é = c3 a9, € = e2 82 ac, 🦀 = f0 9f a6 80; each is split across separate writes with a
    // pause in between, so that they arrive in different chunks.
    let cmd = r"printf 'caf\xc3'; sleep 0.2; printf '\xa9 \xe2'; sleep 0.2; printf '\x82'; sleep 0.2; printf '\xac \xf0\x9f'; sleep 0.2; printf '\xa6\x80\n'; printf '\xe2\x82' >&2; sleep 0.2; printf '\xac\n' >&2";
    let run = env
        .run(json!([turn(vec![shell(cmd)]), finish_turn()]))
        .await;
    let stdout = run.output_of("call_1_1", OutputStream::Stdout);
    let stderr = run.output_of("call_1_1", OutputStream::Stderr);
    assert_eq!(stdout, "café € 🦀\n");
    assert_eq!(stderr, "€\n");
    // It did arrive in pieces: more than one output event for stdout.
    let stdout_events = run
        .call_events("call_1_1")
        .iter()
        .filter(|e| {
            matches!(
                e,
                EventKind::Output {
                    stream: OutputStream::Stdout,
                    ..
                }
            )
        })
        .count();
    assert!(stdout_events > 1, "{stdout_events}");
    let out = run.ok("call_1_1");
    assert!(!out.contains('\u{FFFD}'), "{out}");
    assert!(out.contains("café € 🦀\n"), "{out}");
}

// ---------------------------------------------------------------------------
// read_file
// ---------------------------------------------------------------------------

#[tokio::test]
async fn read_file_ranges_and_errors() {
    let env = Env::new();
    let twelve: String = (1..=12).map(|i| format!("l{i}\n")).collect();
    env.write("src/twelve.txt", &twelve);
    env.write("small.txt", "one\ntwo\nthree\nfour\n");
    env.write("bin.dat", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR");
    env.write("empty.txt", "");
    env.write("dir/x.txt", "x");
    let run = env
        .run(json!([
            turn(vec![
                call("read_file", json!({"path": "small.txt"})),
                call(
                    "read_file",
                    json!({"path": "small.txt", "start_line": 2, "end_line": 3})
                ),
                call(
                    "read_file",
                    json!({"path": "src/twelve.txt", "start_line": 9, "end_line": 10})
                ),
                call(
                    "read_file",
                    json!({"path": "small.txt", "start_line": 3, "end_line": 99})
                ),
                call("read_file", json!({"path": "small.txt", "start_line": 10})),
                call("read_file", json!({"path": "dir"})),
                call("read_file", json!({"path": "bin.dat"})),
                call("read_file", json!({"path": "missing.txt"})),
                call("read_file", json!({"path": "empty.txt"})),
                call(
                    "read_file",
                    json!({"path": "small.txt", "start_line": 3, "end_line": 2})
                ),
                call("read_file", json!({"path": "../outside/secret"})),
            ]),
            finish_turn(),
        ]))
        .await;
    run.assert_finished("done");
    assert_eq!(run.ok("call_1_1"), "1\tone\n2\ttwo\n3\tthree\n4\tfour\n");
    assert_eq!(run.ok("call_1_2"), "2\ttwo\n3\tthree\n");
    // Line numbers are right-aligned to the widest shown.
    assert_eq!(run.ok("call_1_3"), " 9\tl9\n10\tl10\n");
    // end_line past the end is clamped.
    assert_eq!(run.ok("call_1_4"), "3\tthree\n4\tfour\n");
    assert_eq!(
        run.err("call_1_5"),
        "small.txt has 4 lines; start_line 10 is past the end"
    );
    assert_eq!(run.err("call_1_6"), "dir is a directory; use list_dir");
    assert_eq!(run.err("call_1_7"), "bin.dat is a binary file (16 bytes)");
    assert_eq!(run.err("call_1_8"), "missing.txt: no such file");
    assert_eq!(run.ok("call_1_9"), "empty.txt is empty (0 bytes)");
    assert_eq!(run.err("call_1_10"), "end_line 2 is before start_line 3");
    assert!(run.err("call_1_11").contains("outside the repository"));
}

// ---------------------------------------------------------------------------
// write_file
// ---------------------------------------------------------------------------

#[tokio::test]
async fn write_file_creates_parents_and_reports_changes() {
    let env = Env::new();
    let run = env
        .run(json!([
            turn(vec![
                call(
                    "write_file",
                    json!({"path": "deep/nested/new.txt", "content": "hello\n"})
                ),
                call(
                    "write_file",
                    json!({"path": "deep/nested/new.txt", "content": "héllo again\n"})
                ),
                call(
                    "write_file",
                    json!({"path": "./deep/../top.txt", "content": ""})
                ),
                call("write_file", json!({"path": "deep", "content": "x"})),
            ]),
            finish_turn(),
        ]))
        .await;
    run.assert_finished("done");
    assert_eq!(run.ok("call_1_1"), "Created deep/nested/new.txt (6 bytes)");
    assert_eq!(
        run.file_changes("call_1_1"),
        vec![("deep/nested/new.txt".into(), "added".into())]
    );
    assert_eq!(
        run.ok("call_1_2"),
        "Overwrote deep/nested/new.txt (13 bytes)"
    );
    assert_eq!(
        run.file_changes("call_1_2"),
        vec![("deep/nested/new.txt".into(), "modified".into())]
    );
    assert_eq!(env.read("deep/nested/new.txt"), "héllo again\n");
    run.ok("call_1_3");
    assert_eq!(
        run.file_changes("call_1_3"),
        vec![("top.txt".into(), "added".into())]
    );
    assert_eq!(env.read("top.txt"), "");
    assert_eq!(run.err("call_1_4"), "deep is a directory");
    assert!(run.file_changes("call_1_4").is_empty());
}

#[tokio::test]
async fn write_file_refuses_escapes_and_git_dir() {
    let env = Env::new();
    std::fs::write(env.outside.join("target.txt"), "original").unwrap();
    std::os::unix::fs::symlink(&env.outside, env.ws.join("out-dir")).unwrap();
    std::os::unix::fs::symlink(env.outside.join("target.txt"), env.ws.join("out-file")).unwrap();
    // A link to a file outside that does not exist yet: writing through it would create it.
    std::os::unix::fs::symlink(env.outside.join("created.txt"), env.ws.join("dangling")).unwrap();
    std::fs::create_dir_all(env.ws.join(".git")).unwrap();
    std::fs::write(env.ws.join(".git/config"), "[core]\n").unwrap();
    let abs_outside = env.outside.join("abs.txt").display().to_string();
    let run = env
        .run(json!([
            turn(vec![
                call(
                    "write_file",
                    json!({"path": "../outside/escape.txt", "content": "x"})
                ),
                call("write_file", json!({"path": "/etc/passwd", "content": "x"})),
                call("write_file", json!({"path": abs_outside, "content": "x"})),
                call(
                    "write_file",
                    json!({"path": "out-dir/evil.txt", "content": "x"})
                ),
                call("write_file", json!({"path": "out-file", "content": "x"})),
                call("write_file", json!({"path": "dangling", "content": "x"})),
                call("write_file", json!({"path": ".git/config", "content": "x"})),
                call(
                    "write_file",
                    json!({"path": ".git/hooks/pre-commit", "content": "x"})
                ),
                call(
                    "write_file",
                    json!({"path": "sub/.git/HEAD", "content": "x"})
                ),
                call(
                    "write_file",
                    json!({"path": "a/../../outside/b.txt", "content": "x"})
                ),
                call("write_file", json!({"path": "  ", "content": "x"})),
            ]),
            finish_turn(),
        ]))
        .await;
    run.assert_finished("done");
    for id in ["call_1_1", "call_1_2", "call_1_3", "call_1_10"] {
        let e = run.err(id);
        assert!(e.contains("is outside the repository"), "{id}: {e}");
    }
    for id in ["call_1_4", "call_1_5"] {
        let e = run.err(id);
        assert!(e.contains("leads outside the repository"), "{id}: {e}");
    }
    let e = run.err("call_1_6");
    assert!(
        e.contains("symbolic link whose target does not exist"),
        "{e}"
    );
    for id in ["call_1_7", "call_1_8", "call_1_9"] {
        let e = run.err(id);
        assert!(e.contains("inside .git"), "{id}: {e}");
    }
    assert_eq!(run.err("call_1_11"), "path is empty");

    // Nothing was written anywhere.
    let mut outside: Vec<String> = std::fs::read_dir(&env.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    outside.sort();
    assert_eq!(outside, vec!["target.txt"]);
    assert_eq!(
        std::fs::read_to_string(env.outside.join("target.txt")).unwrap(),
        "original"
    );
    assert_eq!(env.read(".git/config"), "[core]\n");
    assert!(!env.ws.join(".git/hooks").exists());
    assert!(!env.ws.join("sub").exists());
    assert!(
        !run.events
            .iter()
            .any(|e| matches!(e, EventKind::FileChange { .. }))
    );
}

#[test]
fn confine_resolves_inside_and_refuses_outside() {
    let env = Env::new();
    let ws = env.ws.canonicalize().unwrap();
    env.write("a/b.txt", "x");
    std::os::unix::fs::symlink("a", env.ws.join("link-in")).unwrap();
    std::os::unix::fs::symlink(&env.outside, env.ws.join("link-out")).unwrap();
    let confine = errand_agent::confine;
    assert_eq!(
        confine(&env.ws, "a/b.txt", true).unwrap(),
        ws.join("a/b.txt")
    );
    assert_eq!(
        confine(&env.ws, "./a/./new.txt", true).unwrap(),
        ws.join("a/new.txt")
    );
    assert_eq!(confine(&env.ws, ".", false).unwrap(), ws);
    assert_eq!(
        confine(&env.ws, &ws.join("a").display().to_string(), false).unwrap(),
        ws.join("a")
    );
    // A link that stays inside is fine.
    assert_eq!(
        confine(&env.ws, "link-in/b.txt", true).unwrap(),
        ws.join("link-in/b.txt")
    );
    assert!(confine(&env.ws, "link-out", false).is_err());
    assert!(confine(&env.ws, "link-out/new/deeper.txt", true).is_err());
    assert!(confine(&env.ws, "..", false).is_err());
    // Dangling links are refused, for reading and writing, wherever they point.
    std::os::unix::fs::symlink(env.outside.join("nope"), env.ws.join("dangling-out")).unwrap();
    std::os::unix::fs::symlink("missing-in", env.ws.join("dangling-in")).unwrap();
    for p in ["dangling-out", "dangling-out/x", "dangling-in"] {
        for write in [false, true] {
            let e = confine(&env.ws, p, write).unwrap_err();
            assert!(e.contains("symbolic link"), "{p}: {e}");
        }
    }
    // Reading .git is allowed, writing is not.
    assert!(confine(&env.ws, ".git/config", false).is_ok());
    assert!(confine(&env.ws, ".git/config", true).is_err());
    // A file merely named like .git is not the .git directory.
    assert!(confine(&env.ws, ".gitignore", true).is_ok());
}

// ---------------------------------------------------------------------------
// edit
// ---------------------------------------------------------------------------

#[tokio::test]
async fn edit_replaces_exactly_once_or_fails_without_changing_the_file() {
    let env = Env::new();
    let original = "alpha\nbeta\nalpha\n";
    env.write("e.txt", original);
    env.write("f.txt", original);
    let run = env
        .run(json!([
            turn(vec![
                call(
                    "edit",
                    json!({"path": "e.txt", "old": "alpha", "new": "ALPHA"})
                ),
                call(
                    "edit",
                    json!({"path": "e.txt", "old": "gamma", "new": "GAMMA"})
                ),
                call("edit", json!({"path": "e.txt", "old": "", "new": "x"})),
                call("edit", json!({"path": "nope.txt", "old": "a", "new": "b"})),
                call(
                    "edit",
                    json!({"path": "f.txt", "old": "beta\nalpha", "new": "BETA\nalpha"})
                ),
            ]),
            finish_turn(),
        ]))
        .await;
    run.assert_finished("done");
    let twice = run.err("call_1_1");
    assert!(twice.contains("occurs 2 times in e.txt"), "{twice}");
    let none = run.err("call_1_2");
    assert!(none.contains("was not found in e.txt"), "{none}");
    assert!(run.err("call_1_3").contains("`old` is empty"));
    assert!(run.err("call_1_4").contains("nope.txt: no such file"));
    assert!(!env.ws.join("nope.txt").exists());
    assert_eq!(env.read("e.txt"), original);
    for id in ["call_1_1", "call_1_2", "call_1_3", "call_1_4"] {
        assert!(run.file_changes(id).is_empty(), "{id}");
    }

    assert_eq!(run.ok("call_1_5"), "Edited f.txt: replaced 1 occurrence");
    assert_eq!(env.read("f.txt"), "alpha\nBETA\nalpha\n");
    assert_eq!(
        run.file_changes("call_1_5"),
        vec![("f.txt".into(), "modified".into())]
    );
}

// ---------------------------------------------------------------------------
// apply_patch
// ---------------------------------------------------------------------------

#[tokio::test]
async fn apply_patch_adds_updates_and_deletes() {
    let env = Env::new();
    env.write("upd.txt", "one\ntwo\nthree\n");
    env.write("del.txt", "bye\n");
    env.write("mv.txt", "moving\n");
    let patch = "*** Begin Patch\n\
                 *** Add File: new/dir/added.txt\n\
                 +first\n\
                 +second\n\
                 *** Update File: upd.txt\n\
                 @@\n \
                 one\n\
                 -two\n\
                 +TWO\n \
                 three\n\
                 *** Delete File: del.txt\n\
                 *** Update File: mv.txt\n\
                 *** Move to: moved/mv.txt\n\
                 *** End Patch\n";
    let run = env
        .run(json!([
            turn(vec![call("apply_patch", json!({ "patch": patch }))]),
            finish_turn(),
        ]))
        .await;
    run.assert_finished("done");
    let out = run.ok("call_1_1");
    assert!(out.starts_with("Patch applied:\n"), "{out}");
    assert!(out.contains("A new/dir/added.txt"), "{out}");
    assert!(out.contains("M upd.txt"), "{out}");
    assert!(out.contains("D del.txt"), "{out}");
    assert!(out.contains("R mv.txt => moved/mv.txt"), "{out}");
    let changes = run.file_changes("call_1_1");
    for expected in [
        ("new/dir/added.txt", "added"),
        ("upd.txt", "modified"),
        ("del.txt", "deleted"),
        ("mv.txt => moved/mv.txt", "renamed"),
    ] {
        assert!(
            changes.contains(&(expected.0.to_string(), expected.1.to_string())),
            "{expected:?} not in {changes:?}"
        );
    }
    assert_eq!(env.read("new/dir/added.txt"), "first\nsecond\n");
    assert_eq!(env.read("upd.txt"), "one\nTWO\nthree\n");
    assert!(!env.ws.join("del.txt").exists());
    assert!(!env.ws.join("mv.txt").exists());
    assert_eq!(env.read("moved/mv.txt"), "moving\n");
}

#[tokio::test]
async fn apply_patch_with_a_failing_hunk_changes_nothing() {
    let env = Env::new();
    env.write("upd.txt", "one\ntwo\nthree\n");
    env.write("del.txt", "bye\n");
    let patch = "*** Begin Patch\n\
                 *** Add File: added.txt\n\
                 +new\n\
                 *** Delete File: del.txt\n\
                 *** Update File: upd.txt\n\
                 @@\n \
                 one\n\
                 -not-there\n\
                 +x\n\
                 *** End Patch\n";
    let run = env
        .run(json!([
            turn(vec![
                call("apply_patch", json!({ "patch": patch })),
                call("apply_patch", json!({ "patch": "*** Begin Patch\n*** Add File: ../outside/x\n+x\n*** End Patch\n" })),
                call("apply_patch", json!({ "patch": "no patch here" })),
            ]),
            finish_turn(),
        ]))
        .await;
    run.assert_finished("done");
    let out = run.err("call_1_1");
    assert!(
        out.starts_with("patch not applied (nothing changed): "),
        "{out}"
    );
    assert!(out.contains("upd.txt"), "{out}");
    assert!(!env.ws.join("added.txt").exists());
    assert_eq!(env.read("upd.txt"), "one\ntwo\nthree\n");
    assert_eq!(env.read("del.txt"), "bye\n");
    assert!(run.file_changes("call_1_1").is_empty());

    let out = run.err("call_1_2");
    assert!(out.contains("escapes the workspace"), "{out}");
    assert!(!env.outside.join("x").exists());
    assert!(run.err("call_1_3").starts_with("patch not applied"));
}

// ---------------------------------------------------------------------------
// list_dir and search
// ---------------------------------------------------------------------------

#[tokio::test]
async fn list_dir_is_sorted_marks_dirs_and_hides_git() {
    let env = Env::new();
    env.write("b.txt", "");
    env.write("a.txt", "");
    env.write("Zed.md", "");
    env.write(".hidden", "");
    env.write("c/inner.txt", "");
    env.write(".git/HEAD", "ref: refs/heads/main\n");
    std::fs::create_dir_all(env.ws.join("empty")).unwrap();
    let run = env
        .run(json!([
            turn(vec![
                call("list_dir", json!({})),
                call("list_dir", json!({"path": "c"})),
                call("list_dir", json!({"path": "empty"})),
                call("list_dir", json!({"path": "missing"})),
                call("list_dir", json!({"path": "../outside"})),
            ]),
            finish_turn(),
        ]))
        .await;
    run.assert_finished("done");
    assert_eq!(
        run.ok("call_1_1"),
        ".hidden\nZed.md\na.txt\nb.txt\nc/\nempty/"
    );
    assert_eq!(run.ok("call_1_2"), "inner.txt");
    assert_eq!(run.ok("call_1_3"), "empty is empty");
    assert_eq!(run.err("call_1_4"), "missing: no such directory");
    assert!(run.err("call_1_5").contains("outside the repository"));
}

#[tokio::test]
async fn search_matches_lines_and_respects_gitignore() {
    let env = Env::new();
    env.write(".gitignore", "*.log\nbuild/\n");
    env.write("src/a.rs", "fn main() {\n    let x = 1;\n}\n");
    env.write("src/b.rs", "// helper\nfn helper() {}\n");
    env.write("debug.log", "fn in_log() {}\n");
    env.write("build/out.rs", "fn built() {}\n");
    env.write(".git/config", "fn in_git() {}\n");
    env.write("blob.bin", b"fn in_binary()\x00\n");
    let run = env
        .run(json!([
            turn(vec![
                call("search", json!({"pattern": r"fn \w+\("})),
                call("search", json!({"pattern": "fn", "path": "src/b.rs"})),
                call("search", json!({"pattern": "nothing-matches-this"})),
                call("search", json!({"pattern": "fn ("})),
                call("search", json!({"pattern": "x", "path": "missing"})),
            ]),
            finish_turn(),
        ]))
        .await;
    run.assert_finished("done");
    let out = run.ok("call_1_1");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec!["src/a.rs:1: fn main() {", "src/b.rs:2: fn helper() {}"]
    );
    assert_eq!(run.ok("call_1_2"), "src/b.rs:2: fn helper() {}");
    assert_eq!(
        run.ok("call_1_3"),
        "No matches for /nothing-matches-this/ in ."
    );
    assert!(run.err("call_1_4").starts_with("invalid regex"));
    assert_eq!(run.err("call_1_5"), "missing: no such file or directory");
}

// ---------------------------------------------------------------------------
// The loop
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unknown_tools_and_bad_arguments_are_tool_errors() {
    let env = Env::new();
    let run = env
        .run(json!([
            turn(vec![
                call("frobnicate", json!({})),
                call("read_file", json!({"pth": "x"})),
                call("shell", json!({})),
                call("write_file", json!({"path": "x.txt", "content": 5})),
                call("finish", json!({})),
            ]),
            turn(vec![call(
                "write_file",
                json!({"path": "ok.txt", "content": "ok"})
            )]),
            turn(vec![call("finish", json!({"summary": "recovered"}))]),
        ]))
        .await;
    run.assert_finished("recovered");
    assert_eq!(run.outcome.turns, 3);
    let unknown = run.err("call_1_1");
    assert!(
        unknown.starts_with("unknown tool 'frobnicate'"),
        "{unknown}"
    );
    assert!(unknown.contains("apply_patch"), "{unknown}");
    let bad = run.err("call_1_2");
    assert!(bad.starts_with("invalid arguments for read_file"), "{bad}");
    assert!(bad.contains("pth"), "{bad}");
    assert!(
        run.err("call_1_3")
            .starts_with("invalid arguments for shell")
    );
    assert!(
        run.err("call_1_4")
            .starts_with("invalid arguments for write_file")
    );
    // A `finish` with bad arguments does not end the run.
    assert!(
        run.err("call_1_5")
            .starts_with("invalid arguments for finish")
    );
    assert!(!env.ws.join("x.txt").exists());
    assert_eq!(env.read("ok.txt"), "ok");

    // The model was told about each error.
    let second = &run.requests[1];
    let errors: Vec<(&str, bool)> = second
        .messages
        .iter()
        .filter_map(|m| match m {
            Message::Tool {
                call_id, is_error, ..
            } => Some((call_id.as_str(), *is_error)),
            _ => None,
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            ("call_1_1", true),
            ("call_1_2", true),
            ("call_1_3", true),
            ("call_1_4", true),
            ("call_1_5", true)
        ]
    );
    // System prompt and tools are the same on every turn.
    assert_eq!(run.requests.len(), 3);
    for r in &run.requests[1..] {
        assert_eq!(r.system, run.requests[0].system);
        assert_eq!(r.tools, run.requests[0].tools);
    }
}

#[tokio::test]
async fn finish_ends_the_run_with_its_summary() {
    let env = Env::new();
    let run = env
        .run(json!([
            {"text": "All good.", "tool_calls": [call("finish", json!({"summary": "Changed nothing; checked it."}))]},
            turn(vec![shell("touch should-not-run")]),
        ]))
        .await;
    run.assert_finished("Changed nothing; checked it.");
    assert_eq!(run.outcome.turns, 1);
    assert_eq!(run.ok("call_1_1"), "Task finished.");
    assert!(!env.ws.join("should-not-run").exists());
    assert!(matches!(
        &run.events[0],
        EventKind::ModelTurn { model, scripted: true, turn: 1, text: Some(t), .. }
            if model == "scripted:test" && t == "All good."
    ));
    // Events: model turn, tool call, tool result. Nothing after.
    assert_eq!(run.events.len(), 3, "{:#?}", run.events);
}

#[tokio::test]
async fn a_turn_without_tool_calls_ends_the_run() {
    let env = Env::new();
    let run = env
        .run(json!([
            turn(vec![shell("true")]),
            {"text": "I am done here."},
            finish_turn(),
        ]))
        .await;
    assert_eq!(run.outcome.end, EndReason::NoToolCalls);
    assert_eq!(run.outcome.summary.as_deref(), Some("I am done here."));
    assert_eq!(run.outcome.turns, 2);

    // Past the end of the script, the scripted model stops calling tools too.
    let run = env.run(json!([turn(vec![shell("true")])])).await;
    assert_eq!(run.outcome.end, EndReason::NoToolCalls);
    assert_eq!(run.outcome.turns, 2);
    assert!(
        run.outcome
            .summary
            .as_deref()
            .unwrap()
            .contains("the script has only 1 turns")
    );
}

#[tokio::test]
async fn max_turns_stops_the_run_with_a_notice() {
    let env = Env::new();
    let config = AgentConfig {
        max_turns: 2,
        ..AgentConfig::default()
    };
    let run = env
        .run_with(
            json!([
                turn(vec![shell("echo 1 >> turns.txt")]),
                turn(vec![shell("echo 2 >> turns.txt")]),
                turn(vec![shell("echo 3 >> turns.txt")]),
                finish_turn(),
            ]),
            config,
            CancellationToken::new(),
        )
        .await;
    assert_eq!(run.outcome.end, EndReason::MaxTurns);
    assert_eq!(run.outcome.turns, 2);
    assert_eq!(run.outcome.summary, None);
    assert_eq!(env.read("turns.txt"), "1\n2\n");
    assert_eq!(run.requests.len(), 2);
    match run.events.last() {
        Some(EventKind::Notice { message }) => {
            assert_eq!(message, "stopping: reached the limit of 2 model turns")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn cancelling_kills_the_running_command_and_ends_the_run() {
    let env = Env::new();
    let cancel = CancellationToken::new();
    let canceller = {
        let cancel = cancel.clone();
        let marker = env.ws.join("started");
        tokio::spawn(async move {
            // Wait until the command really runs, then cancel.
            let t = Instant::now();
            while !marker.exists() && t.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
        })
    };
    let started = Instant::now();
    let run = env
        .run_with(
            json!([
                turn(vec![
                    shell("touch started; sleep 30; touch never"),
                    shell("touch second")
                ]),
                finish_turn(),
            ]),
            AgentConfig::default(),
            cancel,
        )
        .await;
    canceller.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(run.outcome.end, EndReason::Cancelled);
    assert_eq!(run.outcome.summary, None);
    assert_eq!(run.outcome.turns, 1);
    let (_, killed_by) = run.command_finished("call_1_1");
    assert_eq!(killed_by.as_deref(), Some("cancelled"));
    let r = run.result("call_1_1");
    assert!(!r.ok);
    assert!(
        r.output.contains("Command killed: cancelled."),
        "{}",
        r.output
    );
    // Nothing ran after the cancellation.
    assert!(!env.ws.join("never").exists());
    assert!(!env.ws.join("second").exists());
    assert_eq!(run.requests.len(), 1);
}

#[tokio::test]
async fn a_cancelled_run_does_not_ask_the_model() {
    let env = Env::new();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let run = env
        .run_with(json!([finish_turn()]), AgentConfig::default(), cancel)
        .await;
    assert_eq!(run.outcome.end, EndReason::Cancelled);
    assert_eq!(run.outcome.turns, 0);
    assert!(run.requests.is_empty());
    assert!(run.events.is_empty());
}

// ---------------------------------------------------------------------------
// The first message
// ---------------------------------------------------------------------------

#[tokio::test]
async fn agents_md_is_in_the_first_user_message() {
    let env = Env::new();
    let without = errand_agent::initial_message(&env.ws, "  Fix the bug.\n");
    assert!(!without.contains("agents_md"), "{without}");
    assert!(
        without.ends_with("<task>\nFix the bug.\n</task>"),
        "{without}"
    );

    env.write("AGENTS.md", "Run `make test` before finishing.\n");
    env.write("sub/AGENTS.md", "nested: not read\n");
    let m = errand_agent::initial_message(&env.ws, "Fix the bug.");
    assert!(m.starts_with("<environment>\n"), "{m}");
    let agents = m
        .find("<agents_md path=\"AGENTS.md\">\nRun `make test` before finishing.\n\n</agents_md>")
        .unwrap_or_else(|| panic!("{m}"));
    let task = m.find("<task>\nFix the bug.\n</task>").unwrap();
    assert!(agents < task);
    assert!(!m.contains("nested: not read"));

    // The run sends exactly that as its first message, on every turn.
    let run = env
        .run(json!([turn(vec![shell("true")]), finish_turn()]))
        .await;
    let expected = errand_agent::initial_message(&env.ws, "  Do the task.  ");
    assert!(expected.contains("Run `make test`"));
    for req in &run.requests {
        assert_eq!(
            req.messages[0],
            Message::User {
                text: expected.clone()
            }
        );
    }
}

#[tokio::test]
async fn a_huge_agents_md_is_capped() {
    let env = Env::new();
    let big = format!("START\n{}\nEND\n", "x".repeat(100_000));
    env.write("AGENTS.md", &big);
    let m = errand_agent::initial_message(&env.ws, "task");
    assert!(m.len() < 40 * 1024, "{}", m.len());
    assert!(m.contains("START"));
    assert!(m.contains("END"));
    assert!(m.contains("omitted"));
}

#[tokio::test]
async fn apply_patch_may_not_write_into_git_dir() {
    let env = Env::new();
    env.write(".git/config", "[core]\n");
    env.write("sub/.git/HEAD", "x\n");
    let run = env
        .run(json!([
            turn(vec![
                call("apply_patch", json!({ "patch": "*** Begin Patch\n*** Add File: .git/hooks/pre-commit\n+#!/bin/sh\n*** End Patch\n" })),
                call("apply_patch", json!({ "patch": "*** Begin Patch\n*** Update File: .git/config\n@@\n [core]\n+\tfsmonitor = touch /tmp/pwned\n*** End Patch\n" })),
                call("apply_patch", json!({ "patch": "*** Begin Patch\n*** Delete File: sub/.git/HEAD\n*** End Patch\n" })),
                call("apply_patch", json!({ "patch": "*** Begin Patch\n*** Add File: ok.txt\n+x\n*** End Patch\n" })),
                call("apply_patch", json!({ "patch": "*** Begin Patch\n*** Update File: ok.txt\n*** Move to: .git/ok.txt\n*** End Patch\n" })),
            ]),
            finish_turn(),
        ]))
        .await;
    run.assert_finished("done");
    for id in ["call_1_1", "call_1_2", "call_1_3", "call_1_5"] {
        let e = run.err(id);
        assert!(e.contains(".git"), "{id}: {e}");
        assert!(run.file_changes(id).is_empty(), "{id}");
    }
    run.ok("call_1_4");
    assert!(!env.ws.join(".git/hooks").exists());
    assert_eq!(env.read(".git/config"), "[core]\n");
    assert_eq!(env.read("sub/.git/HEAD"), "x\n");
    assert_eq!(env.read("ok.txt"), "x\n");
    assert!(!env.ws.join(".git/ok.txt").exists());
}

// ---------------------------------------------------------------------------
// Context: nested AGENTS.md, plan, prefix stability, compaction
// ---------------------------------------------------------------------------

fn with_usage(mut t: serde_json::Value, input: u64, output: u64, cost: f64) -> serde_json::Value {
    t["usage"] = json!({"input_tokens": input, "output_tokens": output, "cost_usd": cost});
    t
}

#[tokio::test]
async fn nested_agents_md_comes_with_the_first_result_that_touches_its_directory() {
    let env = Env::new();
    env.write("AGENTS.md", "ROOT RULES");
    env.write("svc/AGENTS.md", "SVC RULES: use tabs");
    env.write("svc/api/AGENTS.md", "API RULES: no panics");
    env.write("svc/api/h.py", "x = 1\n");
    env.write("other/o.py", "y = 2\n");
    let run = env
        .run(json!([
            turn(vec![call("read_file", json!({"path": "svc/api/h.py"}))]),
            turn(vec![
                call("read_file", json!({"path": "svc/api/h.py"})),
                call("read_file", json!({"path": "other/o.py"})),
            ]),
            finish_turn()
        ]))
        .await;
    let first = run.ok("call_1_1");
    assert!(first.starts_with("1\tx = 1"), "{first}");
    assert!(
        first.contains("<agents_md path=\"svc/AGENTS.md\">"),
        "{first}"
    );
    assert!(first.contains("SVC RULES: use tabs"));
    assert!(first.contains("API RULES: no panics"));
    assert!(
        !first.contains("ROOT RULES"),
        "the root one is in the first message"
    );
    assert!(
        first.find("SVC RULES") < first.find("API RULES"),
        "outer first"
    );
    // Shown once only.
    assert!(!run.ok("call_2_1").contains("RULES"));
    assert!(!run.ok("call_2_2").contains("RULES"));
    let initial = match &run.requests[0].messages[0] {
        Message::User { text } => text.clone(),
        m => panic!("{m:?}"),
    };
    assert!(initial.contains("ROOT RULES"));
}

#[tokio::test]
async fn update_plan_records_steps_and_refuses_bad_ones() {
    let env = Env::new();
    let run = env
        .run(json!([
            turn(vec![call(
                "update_plan",
                json!({"explanation": "two steps", "plan": [
                    {"step": "Find the bug", "status": "in_progress"},
                    {"step": "Fix it", "status": "pending"}
                ]})
            )]),
            turn(vec![call(
                "update_plan",
                json!({"plan": [{"step": "x", "status": "doing"}]})
            )]),
            finish_turn()
        ]))
        .await;
    assert_eq!(run.ok("call_1_1"), "Plan updated (0 of 2 steps completed).");
    assert!(run.err("call_2_1").contains("status 'doing'"));
    let plans: Vec<_> = run
        .events
        .iter()
        .filter_map(|e| match e {
            EventKind::PlanUpdated { steps, .. } => Some(steps.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(plans.len(), 1);
    assert_eq!(run.outcome.plan.len(), 2);
    assert_eq!(run.outcome.plan[0].step, "Find the bug");
}

/// Each request repeats the previous one and appends to it.
fn assert_extends(prev: &ModelRequest, next: &ModelRequest) {
    assert_eq!(prev.system, next.system);
    assert_eq!(prev.tools, next.tools);
    assert_eq!(prev.options, next.options);
    assert_eq!(prev.cache_key, next.cache_key);
    assert!(next.messages.len() > prev.messages.len());
    assert_eq!(prev.messages[..], next.messages[..prev.messages.len()]);
}

#[tokio::test]
async fn requests_only_grow_from_turn_to_turn() {
    let env = Env::new();
    env.write("a.txt", "hello\n");
    let config = AgentConfig {
        cache_key: Some("attempt-1".into()),
        model_options: [("temperature".to_string(), json!(0))].into(),
        ..AgentConfig::default()
    };
    let run = env
        .run_with(
            json!([
                turn(vec![
                    call("read_file", json!({"path": "a.txt"})),
                    shell("echo hi")
                ]),
                turn(vec![call(
                    "edit",
                    json!({"path": "a.txt", "old": "hello", "new": "bye"})
                )]),
                turn(vec![shell("cat a.txt")]),
                finish_turn()
            ]),
            config,
            CancellationToken::new(),
        )
        .await;
    assert_eq!(run.requests.len(), 4);
    assert_eq!(run.requests[0].cache_key.as_deref(), Some("attempt-1"));
    for w in run.requests.windows(2) {
        assert_extends(&w[0], &w[1]);
    }
}

#[tokio::test]
async fn compaction_keeps_the_task_the_plan_and_the_recent_turns() {
    let env = Env::new();
    // Turn n reports n×200 input tokens and prints 1 KB; with a 1,000-token window compacting
    // at 0.8, the request after turn 3 (600 + ~250 for the new output) is compacted first.
    let mut turns = vec![with_usage(
        turn(vec![call(
            "update_plan",
            json!({"plan": [{"step": "Look around", "status": "in_progress"}]}),
        )]),
        200,
        10,
        0.0,
    )];
    for n in 2..=5 {
        let cmd = format!("echo turn{n}; head -c 1000 /dev/zero | tr '\\0' x");
        turns.push(with_usage(turn(vec![shell(&cmd)]), n * 200, 10, 0.0));
    }
    turns.push(finish_turn());
    let config = AgentConfig {
        default_context_window: 1000,
        compact_at: 0.8,
        keep_recent_turns: 1,
        ..AgentConfig::default()
    };
    let run = env
        .run_with(json!(turns), config, CancellationToken::new())
        .await;
    assert_eq!(run.outcome.end, EndReason::Finished);
    assert_eq!(
        run.outcome.turns, 6,
        "compaction does not use up a scripted turn"
    );
    let compactions: Vec<_> = run
        .events
        .iter()
        .filter_map(|e| match e {
            EventKind::Compacted {
                removed_messages,
                kept_messages,
                tokens_before,
                tokens_after,
                summary,
            } => Some((
                *removed_messages,
                *kept_messages,
                *tokens_before,
                *tokens_after,
                summary.clone(),
            )),
            _ => None,
        })
        .collect();
    assert!(!compactions.is_empty(), "{:#?}", run.events);
    let (removed, kept, before, after, summary) = &compactions[0];
    assert!(*before >= 800, "{before}");
    assert!(after < before, "{after} < {before}");
    assert_eq!(*kept, 2, "the last turn and its result");
    assert_eq!(*removed, 4, "turns 1 and 2 with their results");
    assert_eq!(
        summary,
        "[SCRIPTED summary] 3 earlier tool calls: update_plan, shell, shell"
    );
    // The compaction request asked for a summary of the whole conversation.
    let creq = run.requests.iter().find(|r| r.compaction).unwrap();
    assert!(
        matches!(creq.messages.last(), Some(Message::User { text }) if text.contains("summary"))
    );
    assert_eq!(creq.messages.len(), 1 + 6 + 1);
    // The next turn's request: the first message unchanged, the summary with the plan, then
    // the last turn verbatim.
    let turns_only: Vec<&ModelRequest> = run.requests.iter().filter(|r| !r.compaction).collect();
    let after_req = turns_only[3];
    assert_eq!(after_req.messages[0], turns_only[0].messages[0]);
    match &after_req.messages[1] {
        Message::User { text } => {
            assert!(text.contains("[SCRIPTED summary]"));
            assert!(
                text.contains("<current_plan>\n- [in_progress] Look around"),
                "{text}"
            );
        }
        m => panic!("{m:?}"),
    }
    assert_eq!(after_req.messages.len(), 4);
    assert_eq!(
        after_req.messages[2..],
        creq.messages[5..7],
        "turn 3 kept as it was"
    );
    // Outside compactions, requests keep growing.
    let mut checked = 0;
    for w in turns_only.windows(2) {
        if w[0].messages.len() > 1
            && w[1].messages.len() > w[0].messages.len()
            && w[1].messages[1] == w[0].messages[1]
        {
            assert_extends(w[0], w[1]);
            checked += 1;
        }
    }
    assert!(checked >= 1, "{checked}");
}

// ---------------------------------------------------------------------------
// Budgets
// ---------------------------------------------------------------------------

#[tokio::test]
async fn token_budget_stops_the_run_cleanly() {
    let env = Env::new();
    let config = AgentConfig {
        budget: errand_core::Budget {
            max_tokens: Some(1000),
            ..Default::default()
        },
        ..AgentConfig::default()
    };
    let run = env
        .run_with(
            json!([
                with_usage(turn(vec![shell("echo 1 > one.txt")]), 500, 100, 0.0),
                with_usage(turn(vec![shell("echo 2 > two.txt")]), 500, 100, 0.0),
                turn(vec![shell("echo 3 > three.txt")]),
            ]),
            config,
            CancellationToken::new(),
        )
        .await;
    match &run.outcome.end {
        EndReason::Budget(why) => {
            assert_eq!(why, "the token budget of 1000 ran out (1200 tokens used)")
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(run.outcome.turns, 2);
    assert_eq!(env.read("two.txt"), "2\n", "the work so far stays");
    assert!(!env.ws.join("three.txt").exists());
    assert!(
        run.events.iter().any(
            |e| matches!(e, EventKind::Notice { message } if message.contains("token budget"))
        )
    );
}

#[tokio::test]
async fn cost_budget_stops_the_run_and_cost_is_in_the_events() {
    let env = Env::new();
    let config = AgentConfig {
        budget: errand_core::Budget {
            max_cost_usd: Some(1.0),
            ..Default::default()
        },
        ..AgentConfig::default()
    };
    let run = env
        .run_with(
            json!([
                with_usage(turn(vec![shell("true")]), 10, 10, 0.625),
                with_usage(turn(vec![shell("true")]), 10, 10, 0.5),
                turn(vec![shell("true")]),
            ]),
            config,
            CancellationToken::new(),
        )
        .await;
    match &run.outcome.end {
        EndReason::Budget(why) => {
            assert_eq!(why, "the cost budget of $1.00 ran out ($1.1250 spent)")
        }
        e => panic!("{e:?}"),
    }
    assert!((run.outcome.usage.cost_usd - 1.125).abs() < 1e-9);
    let totals: Vec<f64> = run
        .events
        .iter()
        .filter_map(|e| match e {
            EventKind::ModelTurn { total_cost_usd, .. } => Some(*total_cost_usd),
            _ => None,
        })
        .collect();
    assert_eq!(totals, vec![0.625, 1.125]);
}

#[tokio::test]
async fn time_budget_stops_a_running_command_and_the_run() {
    let env = Env::new();
    let config = AgentConfig {
        budget: errand_core::Budget {
            max_time_secs: Some(1),
            ..Default::default()
        },
        ..AgentConfig::default()
    };
    let started = Instant::now();
    let run = env
        .run_with(
            json!([
                turn(vec![shell("echo started > s.txt; sleep 30")]),
                finish_turn()
            ]),
            config,
            CancellationToken::new(),
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    match &run.outcome.end {
        EndReason::Budget(why) => assert_eq!(why, "the time budget of 1s ran out"),
        e => panic!("{e:?}"),
    }
    assert_eq!(env.read("s.txt"), "started\n");
}

// ---------------------------------------------------------------------------
// Retries and cancellation of model requests
// ---------------------------------------------------------------------------

/// Fails its first `failures` requests with `error`, then plays the script.
struct Flaky {
    inner: ScriptedProvider,
    failures: Mutex<u32>,
    error: fn() -> errand_model::ModelError,
}

#[async_trait]
impl Provider for Flaky {
    fn name(&self) -> &str {
        "flaky:model"
    }
    fn retry_policy(&self) -> errand_model::retry::RetryPolicy {
        errand_model::retry::RetryPolicy {
            max_retries: 3,
            base: Duration::from_millis(5),
            cap: Duration::from_millis(20),
            ..Default::default()
        }
    }
    async fn stream(
        &self,
        req: &ModelRequest,
        on_delta: &mut (dyn for<'d> FnMut(errand_model::Delta<'d>) + Send),
    ) -> errand_model::Result<ModelResponse> {
        {
            let mut f = self.failures.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                return Err((self.error)());
            }
        }
        self.inner.stream(req, on_delta).await
    }
}

async fn run_flaky(
    env: &Env,
    failures: u32,
    error: fn() -> errand_model::ModelError,
) -> (AgentOutcome, Vec<EventKind>) {
    let script = Script::parse(&json!({"turns": [finish_turn()]}).to_string()).unwrap();
    let provider = Flaky {
        inner: ScriptedProvider::new("scripted:x", script),
        failures: Mutex::new(failures),
        error,
    };
    let sink = Collect::default();
    let sandbox = env.sandbox().await;
    let outcome = AgentRun {
        prompt: "x",
        workspace: &env.ws,
        sandbox: sandbox.as_ref(),
        provider: &provider,
        sink: &sink,
        cancel: CancellationToken::new(),
        config: AgentConfig::default(),
        history: vec![],
        resume: None,
    }
    .run()
    .await
    .unwrap();
    sandbox.destroy().await.unwrap();
    (outcome, sink.events.into_inner().unwrap())
}

#[tokio::test]
async fn retryable_model_errors_are_retried_with_an_event_each() {
    let env = Env::new();
    let (outcome, events) = run_flaky(&env, 2, || {
        errand_model::ModelError::api("flaky", errand_model::ErrorKind::Overloaded, "busy")
    })
    .await;
    assert_eq!(outcome.end, EndReason::Finished);
    let retries: Vec<(u32, String)> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::ModelRetry { retry, kind, .. } => Some((*retry, kind.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        retries,
        vec![(1, "overloaded".to_string()), (2, "overloaded".to_string())]
    );

    // Out of retries: the run ends with the error, after three retries.
    let (outcome, events) = run_flaky(&env, 10, || {
        errand_model::ModelError::api("flaky", errand_model::ErrorKind::Server, "boom")
    })
    .await;
    match outcome.end {
        EndReason::ModelFailed(m) => assert!(m.contains("gave up after 3 retries"), "{m}"),
        e => panic!("{e:?}"),
    }
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, EventKind::ModelRetry { .. }))
            .count(),
        3
    );
}

#[tokio::test]
async fn non_retryable_model_errors_end_the_run_at_once() {
    let env = Env::new();
    let (outcome, events) = run_flaky(&env, 1, || {
        errand_model::ModelError::api("flaky", errand_model::ErrorKind::Auth, "bad key")
    })
    .await;
    match outcome.end {
        EndReason::ModelFailed(m) => assert!(m.contains("authentication failed"), "{m}"),
        e => panic!("{e:?}"),
    }
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, EventKind::ModelRetry { .. }))
    );
}

/// Never answers.
struct Silent;

#[async_trait]
impl Provider for Silent {
    fn name(&self) -> &str {
        "silent:model"
    }
    async fn stream(
        &self,
        _req: &ModelRequest,
        _on_delta: &mut (dyn for<'d> FnMut(errand_model::Delta<'d>) + Send),
    ) -> errand_model::Result<ModelResponse> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(ModelResponse::default())
    }
}

#[tokio::test]
async fn cancellation_stops_a_model_request_in_flight() {
    let env = Env::new();
    let sink = Collect::default();
    let sandbox = env.sandbox().await;
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c2.cancel();
    });
    let started = Instant::now();
    let outcome = AgentRun {
        prompt: "x",
        workspace: &env.ws,
        sandbox: sandbox.as_ref(),
        provider: &Silent,
        sink: &sink,
        cancel,
        config: AgentConfig::default(),
        history: vec![],
        resume: None,
    }
    .run()
    .await
    .unwrap();
    sandbox.destroy().await.unwrap();
    assert_eq!(outcome.end, EndReason::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_agents_md_link_out_of_the_workspace_is_not_read() {
    let env = Env::new();
    std::fs::write(env.outside.join("secret.txt"), "HOST SECRET").unwrap();
    std::os::unix::fs::symlink(env.outside.join("secret.txt"), env.ws.join("AGENTS.md")).unwrap();
    std::fs::create_dir_all(env.ws.join("sub")).unwrap();
    std::os::unix::fs::symlink(env.outside.join("secret.txt"), env.ws.join("sub/AGENTS.md"))
        .unwrap();
    env.write("sub/x.txt", "x\n");
    let run = env
        .run(json!([
            turn(vec![call("read_file", json!({"path": "sub/x.txt"}))]),
            finish_turn()
        ]))
        .await;
    let all = format!("{:?}", run.requests);
    assert!(
        !all.contains("HOST SECRET"),
        "a host file reached the model"
    );
}
