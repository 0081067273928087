//! The built-in agent: the loop that asks the model for a turn, runs the tools it calls inside
//! the attempt's box, and feeds the results back until the model finishes.
//!
//! The loop runs in the worker, outside the box. File tools act on the workspace directory
//! (paths are confined to it); `shell` runs inside the box. Every model turn, tool call,
//! command, output chunk and exit code is reported through an [`EventSink`].
//!
//! This crate must not talk to the database or HTTP: it only reports events to its sink.

pub mod patch;
pub mod stuck;
pub mod tools;

use async_trait::async_trait;
use errand_core::{Budget, EventKind, PlanStep, Usage};
use errand_model::{Message, ModelRequest, Provider};
use errand_sandbox::SandboxBox;
use std::collections::BTreeMap;
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
    /// Notes to add to the result of the tool call that just ran (for example the egress
    /// proxy's denials during a command, so that the model knows why and does not retry).
    fn tool_notes(&self) -> Option<String> {
        None
    }
    /// Called at the end of each turn the run continues after (every tool result is in):
    /// whether the workspace's files changed during the turn, when the sink can tell (the
    /// worker's checkpoints can). `None` makes the stuck detector count edit tools instead.
    async fn snapshot(&self) -> Result<Option<bool>, AgentError> {
        Ok(None)
    }
    /// Called right after [`EventSink::snapshot`] and the stuck check, with everything the
    /// run would need to resume after this turn ([`AgentRun::resume`]).
    async fn checkpoint(&self, _messages: &[Message], _state: &RunState) -> Result<(), AgentError> {
        Ok(())
    }
}

/// What a run carries from one turn to the next besides its messages: saved with each
/// checkpoint, and given back through [`Resume`] to continue where it was.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunState {
    /// Model turns done.
    pub turns: u64,
    /// Tokens and cost so far (budgets count them).
    pub usage: Usage,
    /// Time spent in the loop so far (the time budget counts it).
    pub elapsed_ms: u64,
    #[serde(default)]
    pub plan: Vec<PlanStep>,
    /// Nested AGENTS.md files already shown.
    #[serde(default)]
    pub agents_seen: Vec<PathBuf>,
    #[serde(default)]
    pub stuck: stuck::StuckState,
    #[serde(default)]
    pub warned_unpriced: bool,
}

/// The conversation and counters to continue a run from (a checkpoint of a run that died).
#[derive(Debug, Clone)]
pub struct Resume {
    pub messages: Vec<Message>,
    pub state: RunState,
}

/// Limits and knobs of one run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Turn limit when the budget sets none.
    pub max_turns: u32,
    /// Turns, tokens, cost and wall time; reaching one stops the run cleanly.
    pub budget: Budget,
    /// Tool output shown to the model is capped at this many bytes (head and tail kept).
    pub tool_output_cap: usize,
    pub default_command_timeout: Duration,
    pub max_command_timeout: Duration,
    /// Compact when the estimated request reaches this fraction of the context window.
    pub compact_at: f64,
    /// Model turns kept verbatim through a compaction.
    pub keep_recent_turns: u32,
    /// The context window when the provider does not know its model's.
    pub default_context_window: u64,
    /// Provider options sent with every request.
    pub model_options: BTreeMap<String, serde_json::Value>,
    /// A stable key for provider-side prompt caching (the attempt id).
    pub cache_key: Option<String>,
    /// Plan mode: explore read-only and propose a plan. The planning system prompt is used,
    /// and the file-changing tools are neither offered nor run.
    pub planning: bool,
    /// The message that continues `history` (plan mode: the approval or the reviewer's
    /// comment), used as it is instead of wrapping the prompt as a follow-up.
    pub continuation: Option<String>,
    /// The plan to start from (an approved plan), kept through compactions.
    pub plan: Vec<PlanStep>,
    /// When continuing `history`, send the prompt as the next user message exactly as given
    /// (a reviewer's findings, say) instead of framing it as the user's follow-up.
    pub raw_continuation: bool,
    /// The stuck detector's thresholds (0 disables; see [`stuck`]).
    pub stuck_repeats: u32,
    pub stuck_turns: u32,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            max_turns: 100,
            budget: Budget::default(),
            tool_output_cap: 16 * 1024,
            default_command_timeout: Duration::from_secs(120),
            max_command_timeout: Duration::from_secs(30 * 60),
            compact_at: 0.8,
            keep_recent_turns: 4,
            default_context_window: 128_000,
            model_options: BTreeMap::new(),
            cache_key: None,
            planning: false,
            continuation: None,
            plan: Vec::new(),
            raw_continuation: false,
            stuck_repeats: 3,
            stuck_turns: 20,
        }
    }
}

/// Why the run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum EndReason {
    /// The model called `finish`.
    Finished,
    /// The model answered without calling a tool.
    NoToolCalls,
    MaxTurns,
    /// A budget (tokens, cost, wall time) ran out; the text says which and by how much.
    Budget(String),
    /// The model failed with an error that retries could not fix.
    ModelFailed(String),
    /// The stuck detector stopped the run after warning the agent; the text says why.
    Stuck(String),
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct AgentOutcome {
    pub summary: Option<String>,
    pub turns: u64,
    pub usage: Usage,
    pub end: EndReason,
    pub elapsed: Duration,
    pub plan: Vec<PlanStep>,
    /// The conversation at the end, to continue with a follow-up.
    pub messages: Vec<Message>,
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
    /// The conversation of an earlier run to continue (a follow-up): `prompt` is then added
    /// as the next user message instead of starting a new conversation.
    pub history: Vec<Message>,
    /// Continue a run that died from its checkpoint: its messages and counters (turns, usage,
    /// time, plan) are taken as they were; `prompt` and `history` are not used.
    pub resume: Option<Resume>,
}

const SYSTEM_PROMPT: &str = "You are Errand, an autonomous coding agent working in the background on a fresh checkout of a \
git repository, on a branch of your own. Nobody is watching: do not ask questions, make reasonable \
decisions and state them in your summary.\n\n\
Work like a careful senior engineer: explore the code before changing it, make the smallest change \
that fully solves the task, follow the repository's conventions and its AGENTS.md files (a nested \
AGENTS.md applies to the files under its directory), and run the relevant tests. For work of several \
steps, keep a short plan with `update_plan`. Paths are relative to the repository root. Use `edit` or \
`apply_patch` for changes to existing files and `write_file` for new files. Do not commit, push or \
switch branches: Errand commits your work when you finish. When the task is complete, call `finish` \
with a short summary of what you changed and how you checked it.";

/// The system prompt of a planning run (plan mode).
pub const PLANNING_SYSTEM_PROMPT: &str = "You are Errand, an autonomous coding agent working in the background on a fresh checkout of a \
git repository, in PLAN MODE. Nobody is watching: do not ask questions, make reasonable assumptions \
and state them.\n\n\
Do not change anything yet. Your job now is to understand the task and propose a plan that a person \
will approve, revise or reject; you implement it only after it is approved. Explore the code like a \
careful senior engineer: read_file, list_dir, search, and shell for read-only commands (grep, git \
log, running the existing tests). The workspace is mounted read-only and the file-changing tools are \
not available. Follow the repository's AGENTS.md files. When you understand what to do, record the \
plan with `update_plan`: short, concrete steps, all `pending`, that name the files and functions to \
change and how the change will be verified. Then call `finish` with a short summary of the plan, the \
reasons behind it, and any risks or open questions. If the reviewer asks for changes, revise the plan \
with `update_plan` and call `finish` again.";

const COMPACT_PROMPT: &str = "Your context is nearly full, so the conversation so far will be replaced by your summary. \
Do not call any tool now. Write a summary that lets you continue the task without the earlier turns: \
what the task needs, what you found (files, functions, causes), what you changed so far (paths and \
what), what you ran and its results, what remains to do, and anything you must not forget. Be \
specific and brief.";

/// The largest AGENTS.md shown, per file.
const AGENTS_MD_CAP: usize = 32 * 1024;
/// The largest tool output kept in a `tool_result` event.
const EVENT_OUTPUT_CAP: usize = 1 << 20;

/// Reads an `AGENTS.md` inside `root`, capped. A link leading out of the workspace (or to
/// anything but a regular file) is not read: the repository must not be able to send host
/// files to the model.
fn read_agents_md(root: &Path, path: &Path) -> Option<String> {
    use std::io::Read;
    let root = root.canonicalize().ok()?;
    let real = path.canonicalize().ok()?;
    if !real.starts_with(&root) || !real.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    std::fs::File::open(&real)
        .ok()?
        .take(4 * AGENTS_MD_CAP as u64)
        .read_to_end(&mut bytes)
        .ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let (capped, _) = errand_core::text::cap_head_tail(&text, AGENTS_MD_CAP);
    Some(capped)
}

/// The first user message: environment, AGENTS.md, then the task. Stable for the whole run.
pub fn initial_message(root: &Path, prompt: &str) -> String {
    let mut m = String::new();
    m.push_str(
        "<environment>\nworking directory: the repository root\nshell: bash\n</environment>\n\n",
    );
    if let Some(agents) = read_agents_md(root, &root.join("AGENTS.md")) {
        m.push_str("<agents_md path=\"AGENTS.md\">\n");
        m.push_str(&agents);
        m.push_str("\n</agents_md>\n\n");
    }
    m.push_str("<task>\n");
    m.push_str(prompt.trim());
    m.push_str("\n</task>");
    m
}

/// Nested `AGENTS.md` files on the way from the root to `paths` (the root's own is in the
/// first message), not shown before; each is returned once, as a block to append to a tool
/// result.
pub fn nested_agents_md(
    root: &Path,
    paths: &[String],
    seen: &mut std::collections::HashSet<PathBuf>,
) -> String {
    let mut out = String::new();
    let Ok(root_c) = root.canonicalize() else {
        return out;
    };
    for p in paths {
        let Ok(full) = confine(root, p, false) else {
            continue;
        };
        let Ok(rel) = full.strip_prefix(&root_c) else {
            continue;
        };
        // The directories between the root and the path (the path itself when it is one).
        let mut dir = PathBuf::new();
        let comps: Vec<_> = rel.components().collect();
        let dir_count = if full.is_dir() {
            comps.len()
        } else {
            comps.len().saturating_sub(1)
        };
        for c in comps.iter().take(dir_count) {
            dir.push(c);
            let rel_md = dir.join("AGENTS.md");
            if seen.contains(&rel_md) {
                continue;
            }
            seen.insert(rel_md.clone());
            let md = root_c.join(&rel_md);
            if let Some(text) = read_agents_md(&root_c, &md) {
                out.push_str(&format!(
                    "\n\n<agents_md path=\"{}\">\nThese instructions apply to files under {}/.\n{}\n</agents_md>",
                    rel_md.display(),
                    dir.display(),
                    text
                ));
            }
        }
    }
    out
}

/// A rough token count for text sent to a model (about four bytes a token).
pub fn estimate_tokens(bytes: usize) -> u64 {
    bytes.div_ceil(4) as u64
}

fn message_bytes(m: &Message) -> usize {
    match m {
        Message::User { text } => text.len(),
        Message::Assistant {
            text,
            tool_calls,
            native,
        } => {
            text.as_deref().map_or(0, str::len)
                + tool_calls
                    .iter()
                    .map(|c| c.name.len() + c.arguments.to_string().len())
                    .sum::<usize>()
                + native.as_ref().map_or(0, |n| n.value.to_string().len() / 2)
        }
        Message::Tool { content, .. } => content.len(),
    }
}

fn plan_text(plan: &[PlanStep]) -> String {
    plan.iter()
        .map(|s| format!("- [{}] {}", s.status, s.step))
        .collect::<Vec<_>>()
        .join("\n")
}

/// State of a run between turns.
struct Loop {
    req: ModelRequest,
    usage: Usage,
    turns: u64,
    plan: Vec<PlanStep>,
    /// Input tokens the provider reported for the last request, and `conv_bytes` then.
    last_input: Option<(u64, usize)>,
    /// Bytes of the system prompt and tools, measured once.
    fixed_bytes: usize,
    /// Bytes of the conversation, kept up to date as messages are added.
    conv_bytes: usize,
    agents_seen: std::collections::HashSet<PathBuf>,
    warned_unpriced: bool,
    stuck: stuck::StuckState,
    /// Loop time of the runs this one resumes.
    elapsed_before: Duration,
}

impl Loop {
    fn push(&mut self, m: Message) {
        self.conv_bytes += message_bytes(&m);
        self.req.messages.push(m);
    }

    fn state(&self, start: Instant) -> RunState {
        let mut agents_seen: Vec<PathBuf> = self.agents_seen.iter().cloned().collect();
        agents_seen.sort();
        RunState {
            turns: self.turns,
            usage: self.usage,
            elapsed_ms: (self.elapsed_before + start.elapsed()).as_millis() as u64,
            plan: self.plan.clone(),
            agents_seen,
            stuck: self.stuck.clone(),
            warned_unpriced: self.warned_unpriced,
        }
    }

    /// Appends `note` to the last tool result the model will see.
    fn note_last_result(&mut self, note: &str) {
        if let Some(Message::Tool { content, .. }) = self.req.messages.last_mut() {
            content.push_str(note);
            self.conv_bytes += note.len();
        }
    }
}

enum ModelCall {
    Done(Box<errand_model::ModelResponse>),
    Cancelled,
    Failed(String),
}

impl AgentRun<'_> {
    /// Runs the loop to its end.
    pub async fn run(mut self) -> Result<AgentOutcome, AgentError> {
        let start = Instant::now();
        let resume = self.resume.take();
        let elapsed_before = resume
            .as_ref()
            .map(|r| Duration::from_millis(r.state.elapsed_ms))
            .unwrap_or_default();
        let budget = self.config.budget;
        let stuck_cfg = stuck::StuckConfig {
            repeats: self.config.stuck_repeats,
            turns: self.config.stuck_turns,
        };
        let max_turns = budget.max_turns.unwrap_or(self.config.max_turns) as u64;
        // The wall-time budget cancels what is running (a model request, a command) through a
        // child token, so that the run still ends cleanly and its work gets committed.
        let run_cancel = self.cancel.child_token();
        let time_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _timer = budget.max_time_secs.map(|secs| {
            let (tok, flag) = (run_cancel.clone(), time_up.clone());
            // A resumed run has used part of the time already.
            let left = Duration::from_secs(secs).saturating_sub(elapsed_before);
            AbortOnDrop(tokio::spawn(async move {
                tokio::time::sleep(left).await;
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                tok.cancel();
            }))
        });
        let mut st = Loop {
            req: ModelRequest {
                system: if self.config.planning {
                    PLANNING_SYSTEM_PROMPT
                } else {
                    SYSTEM_PROMPT
                }
                .to_string(),
                tools: tools::specs_for(self.config.planning),
                messages: if let Some(r) = &resume {
                    r.messages.clone()
                } else if self.history.is_empty() {
                    vec![Message::User {
                        text: initial_message(self.workspace, self.prompt),
                    }]
                } else {
                    let mut m = self.history.clone();
                    m.push(Message::User {
                        text: match &self.config.continuation {
                            Some(text) => text.clone(),
                            None if self.config.raw_continuation => self.prompt.to_string(),
                            None => format!(
                                "<followup>\nThe user asks for more on the same task. Your earlier work is committed on this branch.\n{}\n</followup>",
                                self.prompt.trim()
                            ),
                        },
                    });
                    m
                },
                options: self.config.model_options.clone(),
                cache_key: self.config.cache_key.clone(),
                compaction: false,
            },
            usage: Usage::default(),
            turns: 0,
            plan: self.config.plan.clone(),
            last_input: None,
            fixed_bytes: 0,
            conv_bytes: 0,
            agents_seen: Default::default(),
            warned_unpriced: false,
            stuck: Default::default(),
            elapsed_before,
        };
        if let Some(r) = resume {
            let s = r.state;
            st.turns = s.turns;
            st.usage = s.usage;
            st.plan = s.plan;
            st.agents_seen = s.agents_seen.into_iter().collect();
            st.stuck = s.stuck;
            st.warned_unpriced = s.warned_unpriced;
        }
        st.fixed_bytes = st.req.system.len()
            + st.req
                .tools
                .iter()
                .map(|t| t.name.len() + t.description.len() + t.parameters.to_string().len())
                .sum::<usize>();
        st.conv_bytes = st.req.messages.iter().map(message_bytes).sum();
        let ctx = tools::ToolContext {
            root: self.workspace.to_path_buf(),
            sandbox: self.sandbox,
            sink: self.sink,
            cancel: run_cancel.clone(),
            config: &self.config,
        };
        let end = |st: &Loop, summary: Option<String>, end: EndReason| AgentOutcome {
            summary,
            turns: st.turns,
            usage: st.usage,
            end,
            elapsed: st.elapsed_before + start.elapsed(),
            plan: st.plan.clone(),
            messages: st.req.messages.clone(),
        };
        let time_budget = |st: &Loop| {
            let secs = budget.max_time_secs.unwrap_or_default();
            end(
                st,
                None,
                EndReason::Budget(format!(
                    "the time budget of {} ran out",
                    humanize_secs(secs)
                )),
            )
        };
        loop {
            if self.cancel.is_cancelled() {
                return Ok(end(&st, None, EndReason::Cancelled));
            }
            if time_up.load(std::sync::atomic::Ordering::SeqCst) {
                return self.stop(time_budget(&st)).await;
            }
            if st.turns >= max_turns {
                self.sink
                    .emit(vec![EventKind::Notice {
                        message: format!("stopping: reached the limit of {max_turns} model turns"),
                    }])
                    .await?;
                return Ok(end(&st, None, EndReason::MaxTurns));
            }
            if let Some(max) = budget.max_tokens
                && st.usage.total() >= max
            {
                let why = format!(
                    "the token budget of {max} ran out ({} tokens used)",
                    st.usage.total()
                );
                return self.stop(end(&st, None, EndReason::Budget(why))).await;
            }
            if let Some(max) = budget.max_cost_usd
                && st.usage.cost_usd >= max
            {
                let why = format!(
                    "the cost budget of ${max:.2} ran out (${:.4} spent)",
                    st.usage.cost_usd
                );
                return self.stop(end(&st, None, EndReason::Budget(why))).await;
            }
            self.maybe_compact(&mut st, &run_cancel).await?;

            let resp = match self.call_model(&st.req, &run_cancel).await? {
                ModelCall::Done(r) => *r,
                ModelCall::Cancelled if time_up.load(std::sync::atomic::Ordering::SeqCst) => {
                    return self.stop(time_budget(&st)).await;
                }
                ModelCall::Cancelled => return Ok(end(&st, None, EndReason::Cancelled)),
                ModelCall::Failed(msg) => {
                    return Ok(end(&st, None, EndReason::ModelFailed(msg)));
                }
            };
            st.turns += 1;
            st.usage.add(&resp.usage);
            st.last_input = Some((resp.usage.input_tokens, st.conv_bytes));
            let mut events = Vec::new();
            if !st.warned_unpriced
                && resp.usage.total() > 0
                && resp.usage.cost_usd == 0.0
                && !self.provider.scripted()
            {
                st.warned_unpriced = true;
                let (p, m) = errand_model::split_model_name(self.provider.name())
                    .unwrap_or(("PROVIDER", "MODEL"));
                events.push(EventKind::Notice {
                    message: format!(
                        "no price is known for {}: its cost is counted as $0; set prices under [providers.{p}.models.\"{m}\"] (input, output, cached_input: dollars per million tokens) in errand.toml",
                        self.provider.name()
                    ),
                });
            }
            events.push(EventKind::ModelTurn {
                model: self.provider.name().to_string(),
                scripted: self.provider.scripted(),
                turn: st.turns as u32,
                text: resp.text.clone(),
                reasoning: resp.reasoning.clone(),
                usage: resp.usage,
                stop_reason: resp.stop_reason.clone(),
                total_cost_usd: st.usage.cost_usd,
            });
            self.sink.emit(events).await?;
            self.sink.usage(st.usage, st.turns).await?;
            st.push(resp.to_message());
            if resp.tool_calls.is_empty() {
                return Ok(end(&st, resp.text, EndReason::NoToolCalls));
            }
            let mut finished = None;
            let mut edited = false;
            for call in &resp.tool_calls {
                self.sink
                    .emit(vec![EventKind::ToolCall {
                        call_id: call.id.clone(),
                        name: call.name.clone(),
                        arguments: call.arguments.clone(),
                    }])
                    .await?;
                let result = tools::execute(&ctx, call).await?;
                let mut output = result.output;
                if result.ok {
                    output.push_str(&nested_agents_md(
                        self.workspace,
                        &tools::touched_paths(call),
                        &mut st.agents_seen,
                    ));
                }
                if let Some(note) = self.sink.tool_notes() {
                    if !output.is_empty() && !output.ends_with('\n') {
                        output.push('\n');
                    }
                    output.push_str(&note);
                }
                edited |= stuck::StuckState::edits(call, result.ok);
                let plan_steps = result.plan.as_ref().map(|(_, steps)| steps.as_slice());
                let warning = st.stuck.after_call(&stuck_cfg, call, result.ok, plan_steps);
                let mut events = Vec::new();
                if let Some(stuck::Verdict::Warn { reason, note }) = warning {
                    output.push_str(&note);
                    events.push(EventKind::Stuck {
                        reason,
                        action: "warned".into(),
                    });
                }
                let (shown, truncated) =
                    errand_core::text::cap_head_tail(&output, self.config.tool_output_cap);
                if let Some((explanation, steps)) = result.plan {
                    st.plan = steps.clone();
                    events.push(EventKind::PlanUpdated { explanation, steps });
                }
                events.push(EventKind::ToolResult {
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    ok: result.ok,
                    output: if truncated {
                        errand_core::text::cap_head_tail(&output, EVENT_OUTPUT_CAP).0
                    } else {
                        output
                    },
                    truncated,
                });
                self.sink.emit(events).await?;
                st.push(Message::Tool {
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    content: shown,
                    is_error: !result.ok,
                });
                if let Some(summary) = result.finish {
                    finished = Some(summary);
                }
                if run_cancel.is_cancelled() {
                    // Every call needs a result; the ones not run say why.
                    break;
                }
            }
            if let Some(summary) = finished {
                return Ok(end(&st, Some(summary), EndReason::Finished));
            }
            if run_cancel.is_cancelled() {
                if time_up.load(std::sync::atomic::Ordering::SeqCst) {
                    return self.stop(time_budget(&st)).await;
                }
                return Ok(end(&st, None, EndReason::Cancelled));
            }
            // The turn is done and the run goes on: check for a stuck agent, then checkpoint.
            let changed = self.sink.snapshot().await?;
            match st.stuck.end_turn(
                &stuck_cfg,
                changed.unwrap_or(false),
                edited && changed.is_none(),
            ) {
                Some(stuck::Verdict::Warn { reason, note }) => {
                    st.note_last_result(&note);
                    self.sink
                        .emit(vec![EventKind::Stuck {
                            reason,
                            action: "warned".into(),
                        }])
                        .await?;
                }
                Some(stuck::Verdict::Stop { reason }) => {
                    self.sink
                        .emit(vec![
                            EventKind::Stuck {
                                reason: reason.clone(),
                                action: "stopped".into(),
                            },
                            EventKind::Notice {
                                message: format!(
                                    "stopping: the agent is stuck ({reason}); the work so far is kept"
                                ),
                            },
                        ])
                        .await?;
                    return Ok(end(&st, None, EndReason::Stuck(reason)));
                }
                None => {}
            }
            self.sink
                .checkpoint(&st.req.messages, &st.state(start))
                .await?;
        }
    }

    /// Records why a budget stopped the run.
    async fn stop(&self, outcome: AgentOutcome) -> Result<AgentOutcome, AgentError> {
        if let EndReason::Budget(why) = &outcome.end {
            self.sink
                .emit(vec![EventKind::Notice {
                    message: format!("stopping: {why}; the work so far is kept"),
                }])
                .await?;
        }
        Ok(outcome)
    }

    /// One model request with retries: each retryable failure is an event, then a wait with
    /// backoff (the provider's `Retry-After` when it gave one). Cancellation stops the request
    /// and the wait.
    async fn call_model(
        &self,
        req: &ModelRequest,
        cancel: &CancellationToken,
    ) -> Result<ModelCall, AgentError> {
        let policy = self.provider.retry_policy();
        let mut retry = 0;
        loop {
            let mut ignore = |_: errand_model::Delta<'_>| {};
            let result = tokio::select! {
                r = self.provider.stream(req, &mut ignore) => r,
                _ = cancel.cancelled() => return Ok(ModelCall::Cancelled),
            };
            let err = match result {
                Ok(r) => return Ok(ModelCall::Done(Box::new(r))),
                Err(e) => e,
            };
            retry += 1;
            let Some(delay) = policy.delay(retry, &err) else {
                let msg = if err.retryable() && retry > policy.max_retries {
                    format!("{err} (gave up after {} retries)", policy.max_retries)
                } else {
                    err.to_string()
                };
                return Ok(ModelCall::Failed(msg));
            };
            self.sink
                .emit(vec![policy.retry_event(
                    self.provider.name(),
                    retry,
                    delay,
                    &err,
                )])
                .await?;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => return Ok(ModelCall::Cancelled),
            }
        }
    }

    /// Estimated size of the next request, in tokens: what the provider counted for the last
    /// one plus an estimate for the messages added since, else an estimate of everything.
    fn estimate(&self, st: &Loop) -> u64 {
        match st.last_input {
            Some((input, at)) if input > 0 && at <= st.conv_bytes => {
                input + estimate_tokens(st.conv_bytes - at)
            }
            _ => estimate_tokens(st.fixed_bytes + st.conv_bytes),
        }
    }

    /// Replaces old turns by a model-written summary once the request nears the context
    /// window, keeping the first message (environment, AGENTS.md, task), the plan and the
    /// last turns verbatim.
    async fn maybe_compact(
        &self,
        st: &mut Loop,
        cancel: &CancellationToken,
    ) -> Result<(), AgentError> {
        let window = self
            .provider
            .context_window()
            .unwrap_or(self.config.default_context_window);
        let threshold = (window as f64 * self.config.compact_at) as u64;
        let before = self.estimate(st);
        if before < threshold {
            return Ok(());
        }
        // Keep the last `keep_recent_turns` assistant turns with their tool results.
        let msgs = &st.req.messages;
        let mut kept_turns = 0;
        let mut cut = msgs.len();
        for (i, m) in msgs.iter().enumerate().rev() {
            if matches!(m, Message::Assistant { .. }) {
                kept_turns += 1;
                cut = i;
                if kept_turns >= self.config.keep_recent_turns.max(1) {
                    break;
                }
            }
        }
        if cut <= 2 {
            // Nothing old enough to summarise.
            return Ok(());
        }
        let mut creq = st.req.clone();
        creq.compaction = true;
        creq.messages.push(Message::User {
            text: COMPACT_PROMPT.to_string(),
        });
        let summary = match self.call_model(&creq, cancel).await? {
            ModelCall::Done(r) => {
                st.usage.add(&r.usage);
                r.text.unwrap_or_default()
            }
            ModelCall::Cancelled => return Ok(()),
            ModelCall::Failed(msg) => {
                self.sink
                    .emit(vec![EventKind::Notice {
                        message: format!(
                            "compaction failed ({msg}); keeping the conversation as it is"
                        ),
                    }])
                    .await?;
                return Ok(());
            }
        };
        let summary = if summary.trim().is_empty() {
            "(the model gave no summary)".to_string()
        } else {
            summary.trim().to_string()
        };
        let mut text = format!(
            "<summary_of_earlier_turns>\nThe earlier turns of this task were replaced by this summary to save context.\n{summary}\n</summary_of_earlier_turns>"
        );
        if !st.plan.is_empty() {
            text.push_str(&format!(
                "\n\n<current_plan>\n{}\n</current_plan>",
                plan_text(&st.plan)
            ));
        }
        let removed = cut - 1;
        let mut messages = Vec::with_capacity(msgs.len() - cut + 2);
        messages.push(msgs[0].clone());
        messages.push(Message::User { text });
        messages.extend_from_slice(&msgs[cut..]);
        let kept = messages.len() - 2;
        // Scale the estimate by the bytes kept (system prompt and tools included), so that it
        // stays in the provider's units.
        let new_bytes: usize = messages.iter().map(message_bytes).sum();
        let ratio =
            (st.fixed_bytes + new_bytes) as f64 / (st.fixed_bytes + st.conv_bytes).max(1) as f64;
        let after = (before as f64 * ratio).ceil() as u64;
        st.req.messages = messages;
        st.conv_bytes = new_bytes;
        st.last_input = Some((after, st.conv_bytes));
        self.sink
            .emit(vec![EventKind::Compacted {
                removed_messages: removed as u32,
                kept_messages: kept as u32,
                tokens_before: before,
                tokens_after: after,
                summary,
            }])
            .await?;
        Ok(())
    }
}

fn humanize_secs(secs: u64) -> String {
    match secs {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
