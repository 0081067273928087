//! The built-in agent: the loop that asks the model for a turn, runs the tools it calls inside
//! the attempt's box, and feeds the results back until the model finishes.
//!
//! The loop runs in the worker, outside the box. File tools act on the workspace directory
//! (paths are confined to it); `shell` runs inside the box. Every model turn, tool call,
//! command, output chunk and exit code is reported through an [`EventSink`].
//!
//! This crate must not talk to the database or HTTP: it only reports events to its sink.

pub mod patch;
pub mod tools;

use async_trait::async_trait;
use errand_core::{EventKind, Usage};
use errand_model::{Message, ModelRequest, Provider};
use errand_sandbox::SandboxBox;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("recording events failed: {0}")]
    Sink(String),
    #[error("{0}")]
    Model(#[from] errand_model::ModelError),
}

/// Where the agent reports what it does.
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn emit(&self, events: Vec<EventKind>) -> Result<(), AgentError>;
    /// Called after each model turn with the running totals.
    async fn usage(&self, _usage: Usage, _turns: u64) -> Result<(), AgentError> {
        Ok(())
    }
}

/// Limits and knobs of one run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub max_turns: u32,
    /// Tool output shown to the model is capped at this many bytes (head and tail kept).
    pub tool_output_cap: usize,
    pub default_command_timeout: Duration,
    pub max_command_timeout: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            max_turns: 100,
            tool_output_cap: 16 * 1024,
            default_command_timeout: Duration::from_secs(120),
            max_command_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// Why the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The model called `finish`.
    Finished,
    /// The model answered without calling a tool.
    NoToolCalls,
    MaxTurns,
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct AgentOutcome {
    pub summary: Option<String>,
    pub turns: u64,
    pub usage: Usage,
    pub end: EndReason,
    pub elapsed: Duration,
}

/// Everything one run needs.
pub struct AgentRun<'a> {
    pub prompt: &'a str,
    pub workspace: &'a Path,
    pub sandbox: &'a dyn SandboxBox,
    pub provider: &'a dyn Provider,
    pub sink: &'a dyn EventSink,
    pub cancel: CancellationToken,
    pub config: AgentConfig,
}

const SYSTEM_PROMPT: &str = "You are Errand, an autonomous coding agent working in the background on a fresh checkout of a \
git repository, on a branch of your own. Nobody is watching: do not ask questions, make reasonable \
decisions and state them in your summary.\n\n\
Work like a careful senior engineer: explore the code before changing it, make the smallest change \
that fully solves the task, follow the repository's conventions and its AGENTS.md, and run the \
relevant tests. Paths are relative to the repository root. Use `edit` or `apply_patch` for changes \
to existing files and `write_file` for new files. Do not commit, push or switch branches: Errand \
commits your work when you finish. When the task is complete, call `finish` with a short summary \
of what you changed and how you checked it.";

/// Reads the repository's root `AGENTS.md`, capped.
fn read_agents_md(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join("AGENTS.md")).ok()?;
    let (capped, _) = errand_core::text::cap_head_tail(&text, 32 * 1024);
    Some(capped)
}

/// The first user message: environment, AGENTS.md, then the task. Stable for the whole run.
pub fn initial_message(root: &Path, prompt: &str) -> String {
    let mut m = String::new();
    m.push_str(
        "<environment>\nworking directory: the repository root\nshell: bash\n</environment>\n\n",
    );
    if let Some(agents) = read_agents_md(root) {
        m.push_str("<agents_md path=\"AGENTS.md\">\n");
        m.push_str(&agents);
        m.push_str("\n</agents_md>\n\n");
    }
    m.push_str("<task>\n");
    m.push_str(prompt.trim());
    m.push_str("\n</task>");
    m
}

impl AgentRun<'_> {
    /// Runs the loop to its end.
    pub async fn run(self) -> Result<AgentOutcome, AgentError> {
        let start = Instant::now();
        let tools = tools::specs();
        let mut messages = vec![Message::User {
            text: initial_message(self.workspace, self.prompt),
        }];
        let mut usage = Usage::default();
        let mut turns: u64 = 0;
        let ctx = tools::ToolContext {
            root: self.workspace.to_path_buf(),
            sandbox: self.sandbox,
            sink: self.sink,
            cancel: self.cancel.clone(),
            config: &self.config,
        };
        loop {
            if self.cancel.is_cancelled() {
                return Ok(self.outcome(None, turns, usage, EndReason::Cancelled, start));
            }
            if turns >= self.config.max_turns as u64 {
                self.sink
                    .emit(vec![EventKind::Notice {
                        message: format!(
                            "stopping: reached the limit of {} model turns",
                            self.config.max_turns
                        ),
                    }])
                    .await?;
                return Ok(self.outcome(None, turns, usage, EndReason::MaxTurns, start));
            }
            let req = ModelRequest {
                system: SYSTEM_PROMPT.to_string(),
                tools: tools.clone(),
                messages: messages.clone(),
            };
            let resp = tokio::select! {
                r = self.provider.complete(&req) => r?,
                _ = self.cancel.cancelled() => {
                    return Ok(self.outcome(None, turns, usage, EndReason::Cancelled, start));
                }
            };
            turns += 1;
            usage.add(&resp.usage);
            self.sink
                .emit(vec![EventKind::ModelTurn {
                    model: self.provider.name().to_string(),
                    scripted: self.provider.scripted(),
                    turn: turns as u32,
                    text: resp.text.clone(),
                    reasoning: resp.reasoning.clone(),
                    usage: resp.usage,
                    stop_reason: resp.stop_reason.clone(),
                }])
                .await?;
            self.sink.usage(usage, turns).await?;
            messages.push(Message::Assistant {
                text: resp.text.clone(),
                tool_calls: resp.tool_calls.clone(),
            });
            if resp.tool_calls.is_empty() {
                return Ok(self.outcome(resp.text, turns, usage, EndReason::NoToolCalls, start));
            }
            let mut finished = None;
            for call in &resp.tool_calls {
                self.sink
                    .emit(vec![EventKind::ToolCall {
                        call_id: call.id.clone(),
                        name: call.name.clone(),
                        arguments: call.arguments.clone(),
                    }])
                    .await?;
                let result = tools::execute(&ctx, call).await?;
                let (shown, truncated) =
                    errand_core::text::cap_head_tail(&result.output, self.config.tool_output_cap);
                self.sink
                    .emit(vec![EventKind::ToolResult {
                        call_id: call.id.clone(),
                        name: call.name.clone(),
                        ok: result.ok,
                        output: shown.clone(),
                        truncated,
                    }])
                    .await?;
                messages.push(Message::Tool {
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    content: shown,
                    is_error: !result.ok,
                });
                if let Some(summary) = result.finish {
                    finished = Some(summary);
                }
                if self.cancel.is_cancelled() {
                    return Ok(self.outcome(None, turns, usage, EndReason::Cancelled, start));
                }
            }
            if let Some(summary) = finished {
                return Ok(self.outcome(Some(summary), turns, usage, EndReason::Finished, start));
            }
        }
    }

    fn outcome(
        &self,
        summary: Option<String>,
        turns: u64,
        usage: Usage,
        end: EndReason,
        start: Instant,
    ) -> AgentOutcome {
        AgentOutcome {
            summary,
            turns,
            usage,
            end,
            elapsed: start.elapsed(),
        }
    }
}

/// Resolves a model-given path inside `root`, refusing absolute paths outside it, `..`
/// escapes and symlinks that lead out.
pub fn confine(root: &Path, path: &str, write: bool) -> Result<PathBuf, String> {
    let p = Path::new(path.trim());
    if path.trim().is_empty() {
        return Err("path is empty".into());
    }
    let root_c = root.canonicalize().map_err(|e| format!("workspace: {e}"))?;
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        root_c.join(p)
    };
    // Normalise lexically, then check the deepest existing ancestor after resolving links.
    let mut norm = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                norm.pop();
            }
            std::path::Component::CurDir => {}
            other => norm.push(other),
        }
    }
    if !norm.starts_with(&root_c) {
        return Err(format!("path '{path}' is outside the repository"));
    }
    // `symlink_metadata`, not `exists`: a dangling link must be resolved (and fail), not
    // skipped, or writing through it would create its target wherever it points.
    let mut existing = norm.as_path();
    while existing.symlink_metadata().is_err() {
        match existing.parent() {
            Some(p) => existing = p,
            None => break,
        }
    }
    let real = existing.canonicalize().map_err(|e| {
        if existing.is_symlink() {
            format!("path '{path}' goes through a symbolic link whose target does not exist")
        } else {
            format!("{path}: {e}")
        }
    })?;
    if !real.starts_with(&root_c) {
        return Err(format!("path '{path}' leads outside the repository"));
    }
    if write
        && norm
            .strip_prefix(&root_c)
            .is_ok_and(|r| r.components().any(|c| c.as_os_str() == ".git"))
    {
        return Err(format!(
            "path '{path}' is inside .git, which the agent may not change"
        ));
    }
    Ok(norm)
}
