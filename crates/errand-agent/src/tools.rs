//! The agent's tools. Names and argument shapes are a stable contract:
//! `shell`, `read_file`, `write_file`, `edit`, `apply_patch`, `list_dir`, `search`,
//! `update_plan`, `finish`.

use crate::{AgentConfig, AgentError, EventSink, confine};
use errand_core::{EventKind, OutputStream, PlanStep};
use errand_model::{ToolCall, ToolSpec};
use errand_sandbox::{ExecRequest, SandboxBox, Stream};
use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub struct ToolContext<'a> {
    pub root: PathBuf,
    pub sandbox: &'a dyn SandboxBox,
    pub sink: &'a dyn EventSink,
    pub cancel: CancellationToken,
    pub config: &'a AgentConfig,
}

/// What a tool returns to the model.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    pub ok: bool,
    pub output: String,
    /// Set by `finish`: the summary, and the run ends.
    pub finish: Option<String>,
    /// Set by `update_plan`: the explanation and the new plan.
    pub plan: Option<(Option<String>, Vec<PlanStep>)>,
}

impl ToolOutput {
    fn ok(output: impl Into<String>) -> Self {
        ToolOutput {
            ok: true,
            output: output.into(),
            finish: None,
            plan: None,
        }
    }
    fn err(output: impl Into<String>) -> Self {
        ToolOutput {
            ok: false,
            output: output.into(),
            finish: None,
            plan: None,
        }
    }
}

/// The tools that change files in the workspace; a planning run neither offers nor runs them.
pub const WRITE_TOOLS: &[&str] = &["write_file", "edit", "apply_patch"];

/// The tools of a run: every tool, or for a planning run (plan mode) every tool but the
/// file-changing ones, with `finish` handing in the plan. Stable order and text.
pub fn specs_for(planning: bool) -> Vec<ToolSpec> {
    let mut all = specs();
    if planning {
        all.retain(|t| !WRITE_TOOLS.contains(&t.name.as_str()));
        for t in &mut all {
            if t.name == "finish" {
                t.description = "Hand in your plan for approval, after recording it with update_plan. Give a short summary of the plan, the reasons behind it, and any risks or open questions.".into();
            }
        }
    }
    all
}

/// The tool definitions sent to the model (stable order and text, for prompt caching).
pub fn specs() -> Vec<ToolSpec> {
    let t = |name: &str, description: &str, parameters: serde_json::Value| ToolSpec {
        name: name.into(),
        description: description.into(),
        parameters,
    };
    vec![
        t(
            "shell",
            "Run a bash command in the repository (bash -c). Returns the exit code and the combined output (long output is cut in the middle).",
            json!({"type": "object", "properties": {
                "command": {"type": "string", "description": "The bash script to run."},
                "workdir": {"type": "string", "description": "Directory relative to the repository root (default: the root)."},
                "timeout_ms": {"type": "integer", "description": "Kill the command after this many milliseconds (default 120000)."}
            }, "required": ["command"], "additionalProperties": false}),
        ),
        t(
            "read_file",
            "Read a text file with numbered lines, optionally only lines start_line..end_line (1-based, inclusive).",
            json!({"type": "object", "properties": {
                "path": {"type": "string"},
                "start_line": {"type": "integer", "minimum": 1},
                "end_line": {"type": "integer", "minimum": 1}
            }, "required": ["path"], "additionalProperties": false}),
        ),
        t(
            "write_file",
            "Create or overwrite a file with the given content (parent directories are created).",
            json!({"type": "object", "properties": {
                "path": {"type": "string"},
                "content": {"type": "string"}
            }, "required": ["path", "content"], "additionalProperties": false}),
        ),
        t(
            "edit",
            "Replace the exact text `old` with `new` in a file. `old` must occur exactly once: include enough surrounding lines to make it unique.",
            json!({"type": "object", "properties": {
                "path": {"type": "string"},
                "old": {"type": "string"},
                "new": {"type": "string"}
            }, "required": ["path", "old", "new"], "additionalProperties": false}),
        ),
        t(
            "apply_patch",
            "Apply a patch in the '*** Begin Patch' format: '*** Add File: p' (lines prefixed with +), '*** Delete File: p', '*** Update File: p' (optional '*** Move to: q') with '@@' hunks of ' ' context, '-' removed and '+' added lines; end with '*** End Patch'. All-or-nothing.",
            json!({"type": "object", "properties": {
                "patch": {"type": "string"}
            }, "required": ["patch"], "additionalProperties": false}),
        ),
        t(
            "list_dir",
            "List a directory (directories end with '/').",
            json!({"type": "object", "properties": {
                "path": {"type": "string", "description": "Relative to the repository root (default: the root)."}
            }, "additionalProperties": false}),
        ),
        t(
            "search",
            "Search file contents with a regular expression (Rust regex syntax), skipping files ignored by .gitignore. Returns path:line: text.",
            json!({"type": "object", "properties": {
                "pattern": {"type": "string"},
                "path": {"type": "string", "description": "File or directory to search (default: the root)."}
            }, "required": ["pattern"], "additionalProperties": false}),
        ),
        t(
            "update_plan",
            "Record your plan for the task as short steps with their status, and update it as you go. At most one step is in_progress.",
            json!({"type": "object", "properties": {
                "explanation": {"type": "string"},
                "plan": {"type": "array", "items": {"type": "object", "properties": {
                    "step": {"type": "string"},
                    "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]}
                }, "required": ["step", "status"], "additionalProperties": false}}
            }, "required": ["plan"], "additionalProperties": false}),
        ),
        t(
            "finish",
            "End the task. Give a short summary of what you changed and how you verified it.",
            json!({"type": "object", "properties": {
                "summary": {"type": "string"}
            }, "required": ["summary"], "additionalProperties": false}),
        ),
    ]
}

fn args<T: for<'de> Deserialize<'de>>(call: &ToolCall) -> Result<T, ToolOutput> {
    serde_json::from_value(call.arguments.clone())
        .map_err(|e| ToolOutput::err(format!("invalid arguments for {}: {e}", call.name)))
}

/// Runs one tool call. Tool failures are returned as error outputs (the run goes on); only a
/// failure to record events is an error of the run.
pub async fn execute(ctx: &ToolContext<'_>, call: &ToolCall) -> Result<ToolOutput, AgentError> {
    if ctx.config.planning && WRITE_TOOLS.contains(&call.name.as_str()) {
        return Ok(ToolOutput::err(format!(
            "{} is not available while planning: the workspace is read-only in plan mode and nothing may change until the plan is approved. Record the change as a step of your plan with update_plan instead.",
            call.name
        )));
    }
    let out = match call.name.as_str() {
        "shell" => match args::<ShellArgs>(call) {
            Ok(a) => shell(ctx, call, a).await?,
            Err(e) => e,
        },
        "read_file" => args::<ReadArgs>(call)
            .map(|a| read_file(&ctx.root, a))
            .unwrap_or_else(|e| e),
        "write_file" => match args::<WriteArgs>(call) {
            Ok(a) => write_file(ctx, a).await?,
            Err(e) => e,
        },
        "edit" => match args::<EditArgs>(call) {
            Ok(a) => edit(ctx, a).await?,
            Err(e) => e,
        },
        "apply_patch" => match args::<PatchArgs>(call) {
            Ok(a) => apply_patch(ctx, a).await?,
            Err(e) => e,
        },
        "list_dir" => args::<ListArgs>(call)
            .map(|a| list_dir(&ctx.root, a))
            .unwrap_or_else(|e| e),
        "search" => match args::<SearchArgs>(call) {
            Ok(a) => {
                let root = ctx.root.clone();
                tokio::task::spawn_blocking(move || search(&root, a))
                    .await
                    .unwrap_or_else(|e| ToolOutput::err(format!("search failed: {e}")))
            }
            Err(e) => e,
        },
        "update_plan" => args::<PlanArgs>(call)
            .map(update_plan)
            .unwrap_or_else(|e| e),
        "finish" => match args::<FinishArgs>(call) {
            Ok(a) => ToolOutput {
                ok: true,
                output: "Task finished.".into(),
                finish: Some(a.summary),
                plan: None,
            },
            Err(e) => e,
        },
        other => ToolOutput::err(format!(
            "unknown tool '{other}'; available tools: shell, read_file, write_file, edit, apply_patch, list_dir, search, update_plan, finish"
        )),
    };
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShellArgs {
    command: String,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// Decodes a byte stream as UTF-8 across chunk boundaries (a character split between two
/// chunks is kept for the next one; invalid bytes become U+FFFD).
#[derive(Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    pub fn push(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let mut out = String::with_capacity(self.pending.len());
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        // Invalid bytes: replace them and go on.
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &after[n..];
                        }
                        // An incomplete sequence at the end: keep it for later.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let consumed = self.pending.len() - rest.len();
        self.pending.drain(..consumed);
        out
    }
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// A command run in the box with its output streamed to the sink as events.
pub struct StreamedCommand<'a> {
    pub sandbox: &'a dyn SandboxBox,
    pub sink: &'a dyn EventSink,
    pub call_id: Option<String>,
    pub command: String,
    pub workdir: Option<String>,
    pub timeout: Duration,
    pub cancel: CancellationToken,
}

/// How a streamed command ended: the result (or why it could not start) and its output as
/// one string in arrival order.
pub struct Streamed {
    pub result: Result<errand_sandbox::ExecResult, errand_sandbox::SandboxError>,
    pub output: String,
}

impl StreamedCommand<'_> {
    /// Emits `command_started`, `output` chunks as they come and `command_finished`.
    pub async fn run(self) -> Result<Streamed, AgentError> {
        self.sink
            .emit(vec![EventKind::CommandStarted {
                call_id: self.call_id.clone(),
                command: self.command.clone(),
                workdir: self.workdir.clone().unwrap_or_else(|| ".".into()),
            }])
            .await?;
        let (tx, mut rx) = mpsc::channel(256);
        let req = ExecRequest {
            command: self.command.clone(),
            workdir: self.workdir.clone(),
            timeout: self.timeout,
            cancel: self.cancel.clone(),
        };
        let exec = self.sandbox.exec(req, tx);
        tokio::pin!(exec);
        let mut combined = String::new();
        let mut carry_out = Utf8Carry::default();
        let mut carry_err = Utf8Carry::default();
        let mut sink_err = None;
        let call_id = self.call_id.clone();
        let mut record = |chunks: Vec<(Stream, Vec<u8>)>, combined: &mut String| {
            let mut events = Vec::new();
            for (stream, data) in chunks {
                let (carry, s) = match stream {
                    Stream::Stdout => (&mut carry_out, OutputStream::Stdout),
                    Stream::Stderr => (&mut carry_err, OutputStream::Stderr),
                };
                let text = carry.push(&data);
                if !text.is_empty() {
                    combined.push_str(&text);
                    events.push(EventKind::Output {
                        call_id: call_id.clone(),
                        stream: s,
                        data: text,
                    });
                }
            }
            events
        };
        let mut channel_open = true;
        let result = loop {
            tokio::select! {
                biased;
                chunk = rx.recv(), if channel_open => {
                    let Some(first) = chunk else {
                        channel_open = false;
                        continue;
                    };
                    let mut batch = vec![(first.stream, first.data)];
                    while let Ok(more) = rx.try_recv() {
                        batch.push((more.stream, more.data));
                    }
                    let events = record(batch, &mut combined);
                    if !events.is_empty()
                        && sink_err.is_none()
                        && let Err(e) = self.sink.emit(events).await
                    {
                        sink_err = Some(e);
                    }
                }
                r = &mut exec => break r,
            }
        };
        // Whatever is still coming after the command ended: read until the pipes close, or
        // until they go quiet (a background process may hold them open).
        let mut batch = Vec::new();
        while let Ok(Some(more)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await
        {
            batch.push((more.stream, more.data));
            if batch.len() >= 64 {
                let events = record(std::mem::take(&mut batch), &mut combined);
                if !events.is_empty() {
                    self.sink.emit(events).await?;
                }
            }
        }
        let mut events = record(batch, &mut combined);
        for (carry, s) in [
            (&mut carry_out, OutputStream::Stdout),
            (&mut carry_err, OutputStream::Stderr),
        ] {
            let rest = carry.finish();
            if !rest.is_empty() {
                combined.push_str(&rest);
                events.push(EventKind::Output {
                    call_id: self.call_id.clone(),
                    stream: s,
                    data: rest,
                });
            }
        }
        if let Some(e) = sink_err {
            return Err(e);
        }
        events.push(match &result {
            Ok(res) => EventKind::CommandFinished {
                call_id: self.call_id.clone(),
                exit_code: res.exit_code,
                signal: res.signal,
                duration_ms: res.duration.as_millis() as u64,
                killed_by: res.killed_by.clone(),
            },
            Err(e) => EventKind::Error {
                message: format!("could not run the command: {e}"),
            },
        });
        self.sink.emit(events).await?;
        Ok(Streamed {
            result,
            output: combined,
        })
    }
}

async fn shell(
    ctx: &ToolContext<'_>,
    call: &ToolCall,
    a: ShellArgs,
) -> Result<ToolOutput, AgentError> {
    if a.command.trim().is_empty() {
        return Ok(ToolOutput::err("command is empty"));
    }
    let timeout = a
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(ctx.config.default_command_timeout)
        .min(ctx.config.max_command_timeout);
    let streamed = StreamedCommand {
        sandbox: ctx.sandbox,
        sink: ctx.sink,
        call_id: Some(call.id.clone()),
        command: a.command,
        workdir: a.workdir,
        timeout,
        cancel: ctx.cancel.child_token(),
    }
    .run()
    .await?;
    let res = match streamed.result {
        Ok(r) => r,
        Err(e) => return Ok(ToolOutput::err(format!("could not run the command: {e}"))),
    };
    let mut text = match (&res.killed_by, res.exit_code, res.signal) {
        (Some(k), _, _) if k == "timeout" => format!(
            "Command killed: it ran past its timeout of {} ms (pass a larger timeout_ms, or run long jobs in the background).\n",
            timeout.as_millis()
        ),
        (Some(k), _, _) => format!("Command killed: {k}.\n"),
        (None, Some(code), _) => format!("Exit code: {code}\n"),
        (None, None, Some(sig)) => format!("Command killed by signal {sig}.\n"),
        _ => "Command ended without an exit code.\n".to_string(),
    };
    text.push_str(&format!("Wall time: {:.2}s\n", res.duration.as_secs_f64()));
    if streamed.output.is_empty() {
        text.push_str("Output: (none: the command printed nothing)");
    } else {
        text.push_str("Output:\n");
        text.push_str(&streamed.output);
    }
    Ok(ToolOutput {
        ok: res.success(),
        output: text,
        finish: None,
        plan: None,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadArgs {
    path: String,
    #[serde(default)]
    start_line: Option<usize>,
    #[serde(default)]
    end_line: Option<usize>,
}

const MAX_READ_LINES: usize = 2000;
const MAX_LINE_CHARS: usize = 2000;

fn read_file(root: &Path, a: ReadArgs) -> ToolOutput {
    let path = match confine(root, &a.path, false) {
        Ok(p) => p,
        Err(e) => return ToolOutput::err(e),
    };
    if path.is_dir() {
        return ToolOutput::err(format!("{} is a directory; use list_dir", a.path));
    }
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return ToolOutput::err(format!("{}: no such file", a.path));
        }
        Err(e) => return ToolOutput::err(format!("{}: {e}", a.path)),
    };
    if bytes.iter().take(8192).any(|b| *b == 0) {
        return ToolOutput::err(format!(
            "{} is a binary file ({} bytes)",
            a.path,
            bytes.len()
        ));
    }
    let text = String::from_utf8_lossy(&bytes);
    if text.is_empty() {
        return ToolOutput::ok(format!("{} is empty (0 bytes)", a.path));
    }
    let lines: Vec<&str> = text.lines().collect();
    let start = a.start_line.unwrap_or(1).max(1);
    if start > lines.len() {
        return ToolOutput::err(format!(
            "{} has {} lines; start_line {start} is past the end",
            a.path,
            lines.len()
        ));
    }
    let mut end = a.end_line.unwrap_or(lines.len()).min(lines.len());
    if end < start {
        return ToolOutput::err(format!("end_line {end} is before start_line {start}"));
    }
    let mut note = String::new();
    if end - start + 1 > MAX_READ_LINES {
        end = start + MAX_READ_LINES - 1;
        note = format!(
            "\n[showing lines {start}-{end} of {}; pass start_line to read more]",
            lines.len()
        );
    }
    let width = end.to_string().len();
    let mut out = String::new();
    for (i, line) in lines[start - 1..end].iter().enumerate() {
        let shown: String = if line.chars().count() > MAX_LINE_CHARS {
            line.chars().take(MAX_LINE_CHARS).collect::<String>() + " [line cut]"
        } else {
            (*line).to_string()
        };
        out.push_str(&format!("{:>width$}\t{shown}\n", start + i));
    }
    out.push_str(&note);
    ToolOutput::ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteArgs {
    path: String,
    content: String,
}

async fn write_file(ctx: &ToolContext<'_>, a: WriteArgs) -> Result<ToolOutput, AgentError> {
    let path = match confine(&ctx.root, &a.path, true) {
        Ok(p) => p,
        Err(e) => return Ok(ToolOutput::err(e)),
    };
    if path.is_dir() {
        return Ok(ToolOutput::err(format!("{} is a directory", a.path)));
    }
    let existed = path.exists();
    if let Some(parent) = path.parent()
        && let Err(e) = std::fs::create_dir_all(parent)
    {
        return Ok(ToolOutput::err(format!(
            "creating {}: {e}",
            parent.display()
        )));
    }
    if let Err(e) = std::fs::write(&path, a.content.as_bytes()) {
        return Ok(ToolOutput::err(format!("writing {}: {e}", a.path)));
    }
    ctx.sink
        .emit(vec![EventKind::FileChange {
            path: rel(&ctx.root, &path),
            change: if existed { "modified" } else { "added" }.into(),
        }])
        .await?;
    Ok(ToolOutput::ok(format!(
        "{} {} ({} bytes)",
        if existed { "Overwrote" } else { "Created" },
        a.path,
        a.content.len()
    )))
}

fn rel(root: &Path, path: &Path) -> String {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditArgs {
    path: String,
    old: String,
    new: String,
}

async fn edit(ctx: &ToolContext<'_>, a: EditArgs) -> Result<ToolOutput, AgentError> {
    let path = match confine(&ctx.root, &a.path, true) {
        Ok(p) => p,
        Err(e) => return Ok(ToolOutput::err(e)),
    };
    if a.old.is_empty() {
        return Ok(ToolOutput::err(
            "`old` is empty; to create a file use write_file",
        ));
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ToolOutput::err(format!(
                "{}: no such file (use write_file to create it)",
                a.path
            )));
        }
        Err(e) => return Ok(ToolOutput::err(format!("{}: {e}", a.path))),
    };
    let count = text.matches(&a.old).count();
    if count == 0 {
        return Ok(ToolOutput::err(format!(
            "`old` was not found in {}; read the file again and copy the text exactly (whitespace included)",
            a.path
        )));
    }
    if count > 1 {
        return Ok(ToolOutput::err(format!(
            "`old` occurs {count} times in {}; include more surrounding lines so that it occurs exactly once",
            a.path
        )));
    }
    let updated = text.replacen(&a.old, &a.new, 1);
    if let Err(e) = std::fs::write(&path, updated) {
        return Ok(ToolOutput::err(format!("writing {}: {e}", a.path)));
    }
    ctx.sink
        .emit(vec![EventKind::FileChange {
            path: rel(&ctx.root, &path),
            change: "modified".into(),
        }])
        .await?;
    Ok(ToolOutput::ok(format!(
        "Edited {}: replaced 1 occurrence",
        a.path
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchArgs {
    patch: String,
}

async fn apply_patch(ctx: &ToolContext<'_>, a: PatchArgs) -> Result<ToolOutput, AgentError> {
    let root = ctx.root.clone();
    let res = tokio::task::spawn_blocking(move || crate::patch::apply_patch(&root, &a.patch)).await;
    let summary = match res {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Ok(ToolOutput::err(format!(
                "patch not applied (nothing changed): {e}"
            )));
        }
        Err(e) => return Ok(ToolOutput::err(format!("patch failed: {e}"))),
    };
    let mut events = Vec::new();
    let mut lines = Vec::new();
    for p in &summary.added {
        events.push(EventKind::FileChange {
            path: p.clone(),
            change: "added".into(),
        });
        lines.push(format!("A {p}"));
    }
    for p in &summary.modified {
        events.push(EventKind::FileChange {
            path: p.clone(),
            change: "modified".into(),
        });
        lines.push(format!("M {p}"));
    }
    for p in &summary.deleted {
        events.push(EventKind::FileChange {
            path: p.clone(),
            change: "deleted".into(),
        });
        lines.push(format!("D {p}"));
    }
    for (from, to) in &summary.moved {
        events.push(EventKind::FileChange {
            path: format!("{from} => {to}"),
            change: "renamed".into(),
        });
        lines.push(format!("R {from} => {to}"));
    }
    if !events.is_empty() {
        ctx.sink.emit(events).await?;
    }
    Ok(ToolOutput::ok(format!(
        "Patch applied:\n{}",
        lines.join("\n")
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    #[serde(default)]
    path: Option<String>,
}

const MAX_LIST: usize = 1000;

fn list_dir(root: &Path, a: ListArgs) -> ToolOutput {
    let shown = a.path.clone().unwrap_or_else(|| ".".into());
    let path = match confine(root, &shown, false) {
        Ok(p) => p,
        Err(e) => return ToolOutput::err(e),
    };
    let rd = match std::fs::read_dir(&path) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return ToolOutput::err(format!("{shown}: no such directory"));
        }
        Err(e) => return ToolOutput::err(format!("{shown}: {e}")),
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != ".git")
        .map(|e| {
            let mut n = e.file_name().to_string_lossy().into_owned();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                n.push('/');
            }
            n
        })
        .collect();
    names.sort();
    if names.is_empty() {
        return ToolOutput::ok(format!("{shown} is empty"));
    }
    let total = names.len();
    names.truncate(MAX_LIST);
    let mut out = names.join("\n");
    if total > MAX_LIST {
        out.push_str(&format!("\n[{} more entries not shown]", total - MAX_LIST));
    }
    ToolOutput::ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchArgs {
    pattern: String,
    #[serde(default)]
    path: Option<String>,
}

const MAX_MATCHES: usize = 200;

fn search(root: &Path, a: SearchArgs) -> ToolOutput {
    let re = match regex::Regex::new(&a.pattern) {
        Ok(r) => r,
        Err(e) => return ToolOutput::err(format!("invalid regex: {e}")),
    };
    let shown = a.path.clone().unwrap_or_else(|| ".".into());
    let start = match confine(root, &shown, false) {
        Ok(p) => p,
        Err(e) => return ToolOutput::err(e),
    };
    if !start.exists() {
        return ToolOutput::err(format!("{shown}: no such file or directory"));
    }
    let root_c = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let walker = ignore::WalkBuilder::new(&start)
        .hidden(false)
        .git_ignore(true)
        .require_git(false)
        .filter_entry(|e| e.file_name() != ".git")
        .build();
    let mut matches = Vec::new();
    let mut more = false;
    'files: for entry in walker.filter_map(|e| e.ok()) {
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        if bytes.iter().take(8192).any(|b| *b == 0) {
            continue;
        }
        let text = String::from_utf8_lossy(&bytes);
        let relp = entry
            .path()
            .strip_prefix(&root_c)
            .unwrap_or(entry.path())
            .display()
            .to_string();
        for (i, line) in text.lines().enumerate() {
            if re.is_match(line) {
                if matches.len() >= MAX_MATCHES {
                    more = true;
                    break 'files;
                }
                let l: String = line.chars().take(300).collect();
                matches.push(format!("{relp}:{}: {l}", i + 1));
            }
        }
    }
    if matches.is_empty() {
        return ToolOutput::ok(format!("No matches for /{}/ in {shown}", a.pattern));
    }
    let mut out = matches.join("\n");
    if more {
        out.push_str(&format!(
            "\n[stopped after {MAX_MATCHES} matches; narrow the pattern or the path]"
        ));
    }
    ToolOutput::ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FinishArgs {
    summary: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` through one carry, then finishes it.
    fn decode(chunks: &[&[u8]]) -> (Vec<String>, String) {
        let mut c = Utf8Carry::default();
        let parts: Vec<String> = chunks.iter().map(|d| c.push(d)).collect();
        let rest = c.finish();
        (parts, rest)
    }

    #[test]
    fn utf8_carry_joins_characters_split_at_every_position() {
        let text = "aé€🦀z";
        let bytes = text.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let (parts, rest) = decode(&[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                assert_eq!(rest, "", "split at {i},{j}");
                assert_eq!(parts.concat(), text, "split at {i},{j}");
                // No part ever holds half a character.
                for p in &parts {
                    assert!(!p.contains('\u{FFFD}'), "split at {i},{j}: {parts:?}");
                }
            }
        }
    }

    #[test]
    fn utf8_carry_one_byte_at_a_time() {
        let text = "ünïcödé ✓ 🦀\n";
        let mut c = Utf8Carry::default();
        let mut out = String::new();
        for b in text.as_bytes() {
            out.push_str(&c.push(&[*b]));
        }
        assert_eq!(out, text);
        assert_eq!(c.finish(), "");
    }

    #[test]
    fn utf8_carry_holds_an_incomplete_tail_until_the_next_chunk() {
        let mut c = Utf8Carry::default();
        assert_eq!(c.push(b"ab\xe2\x82"), "ab");
        assert_eq!(c.push(b""), "");
        assert_eq!(c.push(b"\xac!"), "€!");
        assert_eq!(c.finish(), "");
    }

    #[test]
    fn utf8_carry_replaces_invalid_bytes() {
        // Invalid in the middle.
        let (parts, rest) = decode(&[b"a\xffb"]);
        assert_eq!(parts, vec!["a\u{FFFD}b"]);
        assert_eq!(rest, "");
        // A lone continuation byte.
        let (parts, _) = decode(&[b"\x80x"]);
        assert_eq!(parts, vec!["\u{FFFD}x"]);
        // The output ends with an incomplete character: finish flushes it as U+FFFD.
        let (parts, rest) = decode(&[b"ok\xf0\x9f"]);
        assert_eq!(parts, vec!["ok"]);
        assert_eq!(rest, "\u{FFFD}");
        // A started character interrupted by an ASCII byte.
        let (parts, rest) = decode(&[b"\xe2\x82", b"A"]);
        assert_eq!(parts.concat() + &rest, "\u{FFFD}A");
    }

    #[test]
    fn utf8_carry_keeps_a_split_character_after_an_invalid_byte() {
        // An invalid byte earlier in the same chunk must not spoil the character that is
        // split across this chunk and the next.
        let (parts, rest) = decode(&[b"\xff \xe2\x82", b"\xac"]);
        assert_eq!(parts.concat() + &rest, "\u{FFFD} €");
        let (parts, rest) = decode(&[b"x\xc3\x28 \xf0\x9f", b"\xa6\x80"]);
        assert_eq!(parts.concat() + &rest, "x\u{FFFD}( 🦀");
    }

    #[test]
    fn touched_paths_come_from_arguments_and_patches() {
        let call = |name: &str, arguments: serde_json::Value| ToolCall {
            id: "c".into(),
            name: name.into(),
            arguments,
        };
        assert_eq!(
            touched_paths(&call("shell", json!({"command": "ls", "workdir": "svc"}))),
            ["svc"]
        );
        let patch = "*** Begin Patch\n*** Add File: a/new.txt\n+hi\n*** Update File: b/old.rs\n*** Move to: c/new.rs\n@@\n-x\n+y\n*** End Patch";
        assert_eq!(
            touched_paths(&call("apply_patch", json!({ "patch": patch }))),
            ["a/new.txt", "b/old.rs", "c/new.rs"]
        );
    }

    #[test]
    fn tool_specs_are_the_stable_contract() {
        let specs = specs();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "shell",
                "read_file",
                "write_file",
                "edit",
                "apply_patch",
                "list_dir",
                "search",
                "update_plan",
                "finish"
            ]
        );
        for s in &specs {
            assert_eq!(s.parameters["type"], "object", "{}", s.name);
            assert_eq!(s.parameters["additionalProperties"], false, "{}", s.name);
            assert!(!s.description.is_empty(), "{}", s.name);
        }
        let required = |name: &str| -> Vec<String> {
            let s = specs.iter().find(|s| s.name == name).unwrap();
            serde_json::from_value(s.parameters["required"].clone()).unwrap_or_default()
        };
        assert_eq!(required("shell"), ["command"]);
        assert_eq!(required("edit"), ["path", "old", "new"]);
        assert_eq!(required("finish"), ["summary"]);
        assert!(required("list_dir").is_empty());
        // Byte-identical between calls (prompt caching depends on it).
        assert_eq!(specs, super::specs());
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanArgs {
    #[serde(default)]
    explanation: Option<String>,
    plan: Vec<PlanStep>,
}

fn update_plan(a: PlanArgs) -> ToolOutput {
    if a.plan.is_empty() {
        return ToolOutput::err("the plan has no steps; give at least one {\"step\", \"status\"}");
    }
    for s in &a.plan {
        if !matches!(s.status.as_str(), "pending" | "in_progress" | "completed") {
            return ToolOutput::err(format!(
                "step '{}' has status '{}'; use pending, in_progress or completed",
                s.step, s.status
            ));
        }
    }
    if a.plan.iter().filter(|s| s.status == "in_progress").count() > 1 {
        return ToolOutput::err("more than one step is in_progress; keep at most one");
    }
    let done = a.plan.iter().filter(|s| s.status == "completed").count();
    ToolOutput {
        ok: true,
        output: format!("Plan updated ({done} of {} steps completed).", a.plan.len()),
        finish: None,
        plan: Some((a.explanation, a.plan)),
    }
}

/// The paths a tool call reads or writes (for nested AGENTS.md): `path` and `workdir`
/// arguments, and the files named in a patch.
pub fn touched_paths(call: &ToolCall) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["path", "workdir"] {
        if let Some(p) = call.arguments.get(key).and_then(|v| v.as_str()) {
            out.push(p.to_string());
        }
    }
    if call.name == "apply_patch"
        && let Some(patch) = call.arguments.get("patch").and_then(|v| v.as_str())
        && let Ok(ops) = crate::patch::parse_patch(patch)
    {
        for op in ops {
            out.push(op.path().to_string());
            if let crate::patch::FileOp::Update {
                move_to: Some(to), ..
            } = op
            {
                out.push(to);
            }
        }
    }
    out
}
