//! Agent-loop benchmarks (`--only agent`): what the loop itself costs per turn with a scripted
//! model and real tools, how much of each request every real adapter shares with the one
//! before it (the prefix a provider's prompt cache can reuse), and the bytes sent per turn
//! before and after compaction. No network and no LLM: the adapters talk to the fake vendor
//! APIs of `errand-fakes` on loopback, and commands run in the unisolated box.

use crate::stats::{Summary, fmt_int, fmt_ms};
use anyhow::{Context, Result, anyhow, ensure};
use async_trait::async_trait;
use errand_agent::tools::{ToolContext, execute};
use errand_agent::{AgentConfig, AgentError, AgentOutcome, AgentRun, EndReason, EventSink};
use errand_core::{EventKind, ModelConfig};
use errand_fakes::{FakeServer, Recorded, Reply, Responder, Turn, Vendor};
use errand_model::registry::{ResolvedProvider, build_resolved};
use errand_model::scripted::{Script, ScriptedProvider};
use errand_model::{Provider, ProviderKind, ToolCall};
use errand_sandbox::unisolated::Unisolated;
use errand_sandbox::{BoxSpec, SandboxBackend, SandboxBox};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The context window (tokens) of the compaction runs.
const COMPACT_WINDOW: u64 = 40_000;
/// A window no run comes near: no compaction.
const HUGE_WINDOW: u64 = 100_000_000;
/// How the agent's compaction prompt starts (`COMPACT_PROMPT` in errand-agent).
const COMPACT_MARK: &str = "Your context is nearly full";
/// Generated source files in each workspace.
const FILES: usize = 20;
/// Files that `write_file` overwrites.
const NOTES: usize = 4;
const PROMPT: &str = "Read the modules under src/ and tests/, find every helper that mixes its \
    input with a constant, and write notes about them under notes/.";
const VENDORS: [Vendor; 4] = [
    Vendor::OpenAiResponses,
    Vendor::OpenAiChat,
    Vendor::Anthropic,
    Vendor::Gemini,
];

/// What to run.
pub struct Plan {
    /// Turns per scripted loop run (the last one calls `finish`).
    pub loop_turns: usize,
    /// Scripted loop runs, each on a fresh workspace.
    pub loop_runs: usize,
    /// Tool-call turns per adapter run (a `finish` turn follows).
    pub adapter_turns: usize,
}

/// Collects every event in memory.
#[derive(Default)]
struct Collect {
    events: Mutex<Vec<EventKind>>,
}

#[async_trait]
impl EventSink for Collect {
    async fn emit(&self, events: Vec<EventKind>) -> Result<(), AgentError> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(events);
        Ok(())
    }
}

impl Collect {
    fn take(&self) -> Vec<EventKind> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A generated repository-like workspace and a scratch directory for the box.
struct Workspace {
    root: PathBuf,
    scratch: PathBuf,
    /// The generated source files, relative to `root`.
    files: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Workspace {
    /// 20 Rust-like files of 2.5–4 KB in four directories, and the notes `write_file`
    /// overwrites (created up front, so that every write is an overwrite in both timings).
    fn create() -> Result<Workspace> {
        let dir = tempfile::Builder::new()
            .prefix("errand-bench-agent-")
            .tempdir()
            .context("creating a temporary directory")?;
        let base = dir
            .path()
            .canonicalize()
            .context("resolving the temporary directory")?;
        let root = base.join("ws");
        let scratch = base.join("scratch");
        let mut files = Vec::new();
        for i in 0..FILES {
            let sub = ["src", "src/net", "src/store", "tests"][i % 4];
            let rel = format!("{sub}/module_{i:02}.rs");
            write(&root.join(&rel), &source(i, 2560 + i * 80))?;
            files.push(rel);
        }
        for k in 0..NOTES {
            write(&root.join(format!("notes/out_{k}.md")), &note(k))?;
        }
        write(
            &root.join("README.md"),
            "# bench\n\nA generated workspace for the agent-loop bench.\n",
        )?;
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        Ok(Workspace {
            root,
            scratch,
            files,
            _dir: dir,
        })
    }

    async fn sandbox(&self) -> Result<Box<dyn SandboxBox>> {
        Unisolated
            .create(BoxSpec {
                workspace: self.root.clone(),
                scratch: self.scratch.clone(),
                ro_binds: vec![],
                rootfs: None,
                quota_dir: None,
                env: vec![],
                ..Default::default()
            })
            .await
            .context("creating the unisolated box")
    }
}

fn write(path: &std::path::Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// About `bytes` bytes of Rust: documented helper functions.
fn source(i: usize, bytes: usize) -> String {
    let mut s =
        format!("//! Module {i}: helpers of table {i}.\n\nuse std::collections::HashMap;\n\n");
    let mut j = 0;
    while s.len() < bytes {
        s += &format!(
            "/// Helper {i}.{j}: mixes `x` with the {j}th constant of table {i}.\n\
             pub fn helper_{i}_{j}(x: u64) -> u64 {{\n    x.wrapping_mul({}) ^ {j}\n}}\n\n",
            1_000_003 + 7919 * (i * 31 + j) as u64
        );
        j += 1;
    }
    s
}

/// A ~400-byte note for `write_file`.
fn note(k: usize) -> String {
    let mut s = format!("# Notes {k}\n\n");
    for j in 0..6 {
        s += &format!("- helper_{k}_{j} mixes its input with a constant; it has no test yet.\n");
    }
    s
}

/// A scripted turn's single tool call: the call mix of the loop bench. Every call is
/// idempotent, so the same list can be run again on the same workspace.
fn loop_call(i: usize, files: &[String]) -> (String, Value) {
    let f = &files[(i * 7) % files.len()];
    let (name, args) = match i % 10 {
        0..=2 => ("read_file", json!({"path": f})),
        3 | 4 => (
            "read_file",
            json!({"path": f, "start_line": 5 + i % 7, "end_line": 25 + i % 11}),
        ),
        5 => {
            let dir = ["src", "src/net", "."][i % 3];
            ("list_dir", json!({ "path": dir }))
        }
        6 | 7 => (
            "search",
            json!({"pattern": format!(r"fn helper_{}_\d+", i % FILES), "path": "src"}),
        ),
        _ => (
            "write_file",
            json!({"path": format!("notes/out_{}.md", i % NOTES), "content": note(i)}),
        ),
    };
    (name.to_string(), args)
}

/// The tool calls of an adapter run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Mostly whole files (2.9–4.4 KB of numbered lines), some ranges, searches, listings
    /// and shell commands.
    Mixed,
    /// Whole files only: every tool result is ~4 KB.
    Files,
}

/// Turn `i`'s tool call in an adapter run.
fn adapter_call(i: usize, files: &[String], mix: Mix) -> (String, Value) {
    let f = &files[(i * 3) % files.len()];
    if mix == Mix::Files {
        return ("read_file".to_string(), json!({"path": f}));
    }
    let (name, args) = match i % 10 {
        0..=5 => ("read_file", json!({"path": f})),
        6 => (
            "read_file",
            json!({"path": f, "start_line": 1 + i % 9, "end_line": 40 + i % 13}),
        ),
        7 => (
            "search",
            json!({"pattern": format!(r"helper_{}_1\d", i % FILES)}),
        ),
        8 => {
            let dir = ["src", "src/net", "tests"][i % 3];
            ("list_dir", json!({ "path": dir }))
        }
        _ => ("shell", json!({"command": "wc -l src/*.rs tests/*.rs"})),
    };
    (name.to_string(), args)
}

fn finish_args() -> Value {
    json!({"summary": "Wrote notes about the helpers of every module under notes/."})
}

/// One scripted run of the loop, then the same calls through `tools::execute` alone.
pub struct LoopRun {
    pub turns: usize,
    pub t_loop: Duration,
    pub t_tools: Duration,
    pub loop_events: usize,
    pub tool_events: usize,
}

impl LoopRun {
    /// (T_loop − T_tools) / turns, in ms.
    pub fn overhead_ms(&self) -> f64 {
        (self.t_loop.as_secs_f64() - self.t_tools.as_secs_f64()) * 1e3 / self.turns as f64
    }
}

fn config(max_turns: usize) -> AgentConfig {
    AgentConfig {
        max_turns: max_turns.max(2000) as u32,
        default_context_window: HUGE_WINDOW,
        cache_key: Some("bench-attempt".into()),
        // The scripts repeat the same calls on purpose; the stuck detector would stop them.
        stuck_repeats: 0,
        stuck_turns: 0,
        ..Default::default()
    }
}

/// Fails unless the run called `finish` after `turns` turns and every tool call succeeded.
fn check_outcome(what: &str, o: &AgentOutcome, turns: usize, events: &[EventKind]) -> Result<()> {
    ensure!(
        o.end == EndReason::Finished && o.turns == turns as u64,
        "{what}: expected {turns} turns ending in finish, got {} turns ending {:?}",
        o.turns,
        o.end
    );
    let failed: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::ToolResult {
                ok: false, output, ..
            } => Some(output.as_str()),
            _ => None,
        })
        .collect();
    ensure!(
        failed.is_empty(),
        "{what}: {} tool calls failed, the first: {}",
        failed.len(),
        failed[0]
    );
    Ok(())
}

async fn loop_once(turns: usize) -> Result<LoopRun> {
    let ws = Workspace::create()?;
    let mut calls: Vec<(String, Value)> = (0..turns - 1).map(|i| loop_call(i, &ws.files)).collect();
    calls.push(("finish".to_string(), finish_args()));
    let script = json!({"turns": calls
        .iter()
        .map(|(name, args)| json!({"tool_calls": [{"name": name, "arguments": args}]}))
        .collect::<Vec<_>>()});
    let script =
        Script::parse(&script.to_string()).map_err(|e| anyhow!("the bench's script: {e}"))?;
    let provider = ScriptedProvider::new("scripted:bench", script);
    let sandbox = ws.sandbox().await?;
    let r = loop_timed(&ws, &*sandbox, &provider, &calls).await;
    sandbox.destroy().await.context("destroying the box")?;
    r
}

async fn loop_timed(
    ws: &Workspace,
    sandbox: &dyn SandboxBox,
    provider: &ScriptedProvider,
    calls: &[(String, Value)],
) -> Result<LoopRun> {
    let turns = calls.len();
    let config = config(turns + 10);
    // The tools alone run once before and once after the loop, and T_tools is their mean, so
    // that neither side gets all the warm caches.
    let (t_before, _) = tools_timed(ws, sandbox, &config, calls).await?;
    let sink = Collect::default();
    let run = AgentRun {
        prompt: PROMPT,
        workspace: &ws.root,
        sandbox,
        provider,
        sink: &sink,
        cancel: CancellationToken::new(),
        config: config.clone(),
        history: vec![],
        resume: None,
    };
    let start = Instant::now();
    let outcome = run.run().await.context("the scripted agent run")?;
    let t_loop = start.elapsed();
    let loop_events = sink.take();
    check_outcome("scripted loop", &outcome, turns, &loop_events)?;
    let (t_after, tool_events) = tools_timed(ws, sandbox, &config, calls).await?;
    let t_tools = (t_before + t_after) / 2;
    Ok(LoopRun {
        turns,
        t_loop,
        t_tools,
        loop_events: loop_events.len(),
        tool_events,
    })
}

/// The same calls, with the ids the scripted provider gives them, through the tools alone:
/// the time and the number of events.
async fn tools_timed(
    ws: &Workspace,
    sandbox: &dyn SandboxBox,
    config: &errand_agent::AgentConfig,
    calls: &[(String, Value)],
) -> Result<(Duration, usize)> {
    let sink = Collect::default();
    let ctx = ToolContext {
        root: ws.root.clone(),
        sandbox,
        sink: &sink,
        cancel: CancellationToken::new(),
        config,
    };
    let tool_calls: Vec<ToolCall> = calls
        .iter()
        .enumerate()
        .map(|(i, (name, args))| ToolCall {
            id: format!("call_{}_1", i + 1),
            name: name.clone(),
            arguments: args.clone(),
        })
        .collect();
    let mut failed = 0;
    let start = Instant::now();
    for c in &tool_calls {
        if !execute(&ctx, c).await.context("running a tool")?.ok {
            failed += 1;
        }
    }
    let t = start.elapsed();
    ensure!(failed == 0, "{failed} direct tool calls failed");
    Ok((t, sink.take().len()))
}

/// One model request as the fake received it.
pub struct Request {
    pub bytes: usize,
    /// Bytes at the start shared with the previous request (0 for the first).
    pub shared: usize,
    /// The previous request's length (0 for the first).
    pub prev_bytes: usize,
    /// `shared`, with both bodies rewritten in prompt order (see [`prompt_order`]).
    pub shared_prompt_order: usize,
    pub compaction: bool,
}

/// Which bodies a prefix is measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The bytes the adapter sent.
    AsSent,
    /// The same bodies with their top-level keys in prompt order ([`prompt_order`]).
    Prompt,
}

/// One agent run through a real adapter against its fake.
pub struct AdapterRun {
    pub vendor: Vendor,
    pub turns: u64,
    pub wall: Duration,
    pub requests: Vec<Request>,
    /// `tokens_before`, `tokens_after` of each `Compacted` event.
    pub compacted: Vec<(u64, u64)>,
}

impl AdapterRun {
    pub fn total_bytes(&self) -> usize {
        self.requests.iter().map(|r| r.bytes).sum()
    }

    fn shared(r: &Request, order: Order) -> usize {
        match order {
            Order::AsSent => r.shared,
            Order::Prompt => r.shared_prompt_order,
        }
    }

    /// Σ shared / Σ bytes over requests 2..N.
    pub fn prefix_share(&self, order: Order) -> f64 {
        let rest = self.requests.iter().skip(1);
        let shared: usize = rest.clone().map(|r| Self::shared(r, order)).sum();
        let bytes: usize = rest.map(|r| r.bytes).sum();
        shared as f64 / bytes.max(1) as f64
    }

    /// Σ shared / Σ bytes of the previous request (2..N): how much of what was sent before
    /// is sent again as the start of the next request.
    pub fn prev_reused(&self, order: Order) -> f64 {
        let rest = self.requests.iter().skip(1);
        let shared: usize = rest.clone().map(|r| Self::shared(r, order)).sum();
        let prev: usize = rest.map(|r| r.prev_bytes).sum();
        shared as f64 / prev.max(1) as f64
    }

    /// The smallest shared/bytes of one request (2..N).
    pub fn min_share(&self, order: Order) -> f64 {
        self.requests
            .iter()
            .skip(1)
            .map(|r| Self::shared(r, order) as f64 / r.bytes.max(1) as f64)
            .fold(f64::NAN, f64::min)
    }

    /// Bytes of the previous request past the shared prefix, per request (2..N).
    pub fn prev_tails(&self, order: Order) -> Summary {
        let v: Vec<f64> = self
            .requests
            .iter()
            .skip(1)
            .map(|r| r.prev_bytes.saturating_sub(Self::shared(r, order)) as f64)
            .collect();
        Summary::from_ms(&v)
    }

    /// Bytes of the last turn request before, and of the first one after, each compaction.
    pub fn around_compactions(&self) -> (Vec<f64>, Vec<f64>) {
        let (mut before, mut after) = (Vec::new(), Vec::new());
        for (i, r) in self.requests.iter().enumerate() {
            if !r.compaction {
                continue;
            }
            if let Some(b) = self.requests[..i].iter().rev().find(|r| !r.compaction) {
                before.push(b.bytes as f64);
            }
            if let Some(a) = self.requests[i + 1..].iter().find(|r| !r.compaction) {
                after.push(a.bytes as f64);
            }
        }
        (before, after)
    }

    /// Requests that are model turns (not compactions).
    pub fn turn_requests(&self) -> usize {
        self.requests.iter().filter(|r| !r.compaction).count()
    }

    pub fn compactions(&self) -> usize {
        self.requests.iter().filter(|r| r.compaction).count()
    }
}

fn kind(v: Vendor) -> ProviderKind {
    match v {
        Vendor::OpenAiResponses => ProviderKind::OpenaiResponses,
        Vendor::OpenAiChat => ProviderKind::OpenaiChat,
        Vendor::Anthropic => ProviderKind::Anthropic,
        Vendor::Gemini => ProviderKind::Gemini,
    }
}

fn vendor_name(v: Vendor) -> &'static str {
    match v {
        Vendor::OpenAiResponses => "OpenAI Responses",
        Vendor::OpenAiChat => "OpenAI Chat Completions",
        Vendor::Anthropic => "Anthropic Messages",
        Vendor::Gemini => "Gemini",
    }
}

/// A compaction request: its last message (the conversation's last entry in every vendor's
/// body: `messages`, `input` or `contents`) carries the agent's compaction prompt.
fn is_compaction(body: &Value) -> bool {
    CONVERSATION
        .iter()
        .find_map(|k| body.get(*k)?.as_array()?.last())
        .is_some_and(|m| m.to_string().contains(COMPACT_MARK))
}

/// The model's answer to a compaction request: a few hundred bytes.
fn summary_text() -> String {
    "summary: the task is to document the helpers of every module. Read so far: the modules \
     under src/, src/net/, src/store/ and tests/; each defines helper_I_J(x) = x * constant ^ J \
     with a doc comment and no tests. Changed so far: nothing. Ran: wc -l on the sources (60 to \
     100 lines per file). Remaining: read the modules not yet read, then write notes/out_K.md \
     for each table and finish."
        .to_string()
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    // Compare in blocks first (fast), then byte by byte inside the first differing block.
    const BLOCK: usize = 4096;
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + BLOCK <= n && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    i + a[i..n]
        .iter()
        .zip(&b[i..n])
        .take_while(|(x, y)| x == y)
        .count()
}

/// The conversation's key in each vendor's body.
const CONVERSATION: [&str; 3] = ["messages", "input", "contents"];

/// The body with its top-level keys in prompt order: tools and the system prompt first, the
/// other settings next, the conversation last, which is the order in which the vendors'
/// prompt caches match prefixes; a check that the adapters send their bodies that way.
fn prompt_order(body: &Value) -> String {
    let Some(map) = body.as_object() else {
        return body.to_string();
    };
    let first = ["tools", "system", "instructions", "systemInstruction"];
    let mut keys: Vec<&String> = map.keys().collect();
    let rank = |k: &str| {
        first
            .iter()
            .position(|f| *f == k)
            .unwrap_or(if CONVERSATION.contains(&k) {
                first.len() + 1
            } else {
                first.len()
            })
    };
    keys.sort_by_key(|k| rank(k));
    let fields: Vec<String> = keys
        .iter()
        .map(|k| format!("{}:{}", Value::from(k.as_str()), map[k.as_str()]))
        .collect();
    format!("{{{}}}", fields.join(","))
}

fn requests(recorded: &[Recorded]) -> Vec<Request> {
    let mut out = Vec::with_capacity(recorded.len());
    let mut prev: Option<(&Recorded, String)> = None;
    for r in recorded {
        let ordered = prompt_order(&r.body);
        out.push(Request {
            bytes: r.body_bytes,
            shared: prev.as_ref().map_or(0, |(p, _)| {
                common_prefix(p.raw.as_bytes(), r.raw.as_bytes())
            }),
            prev_bytes: prev.as_ref().map_or(0, |(p, _)| p.body_bytes),
            shared_prompt_order: prev
                .as_ref()
                .map_or(0, |(_, o)| common_prefix(o.as_bytes(), ordered.as_bytes())),
            compaction: is_compaction(&r.body),
        });
        prev = Some((r, ordered));
    }
    out
}

async fn adapter_once(vendor: Vendor, turns: usize, mix: Mix, window: u64) -> Result<AdapterRun> {
    let ws = Workspace::create()?;
    let mut replies: Vec<Reply> = (0..turns)
        .map(|i| {
            let (name, args) = adapter_call(i, &ws.files, mix);
            Reply::Turn(Turn::call(&name, args))
        })
        .collect();
    replies.push(Reply::Turn(Turn::call("finish", finish_args())));
    let responder: Option<Responder> = (window < HUGE_WINDOW).then(|| {
        Box::new(|body: &Value| {
            is_compaction(body).then(|| Reply::Turn(Turn::text(&summary_text())))
        }) as Responder
    });
    let fake = FakeServer::start_with(vendor, replies, responder);
    let provider = build_resolved(ResolvedProvider {
        name: "bench".into(),
        kind: kind(vendor),
        base_url: fake.base_url.clone(),
        api_key_env: None,
        headers: Default::default(),
        model: "bench-model".into(),
        model_config: ModelConfig {
            context_window: Some(window),
            ..Default::default()
        },
        stream: true,
        timeout_secs: 60,
        idle_timeout_secs: 60,
        max_retries: 0,
    })
    .with_context(|| format!("building the {} adapter", vendor.kind()))?;
    let sandbox = ws.sandbox().await?;
    let r = adapter_timed(&ws, &*sandbox, &*provider, turns + 1).await;
    sandbox.destroy().await.context("destroying the box")?;
    // The adapter's pooled connections go first, so that the fake's shutdown has none to wait
    // for; the fake joins its thread, which is blocking.
    drop(provider);
    let recorded = fake.model_requests();
    tokio::task::spawn_blocking(move || drop(fake))
        .await
        .context("stopping the fake")?;
    let (outcome, wall, events) = r?;
    check_outcome(vendor.kind(), &outcome, turns + 1, &events)?;
    let compacted = events
        .iter()
        .filter_map(|e| match e {
            EventKind::Compacted {
                tokens_before,
                tokens_after,
                ..
            } => Some((*tokens_before, *tokens_after)),
            _ => None,
        })
        .collect();
    let requests = tokio::task::spawn_blocking(move || requests(&recorded))
        .await
        .context("comparing the requests")?;
    Ok(AdapterRun {
        vendor,
        turns: outcome.turns,
        wall,
        requests,
        compacted,
    })
}

async fn adapter_timed(
    ws: &Workspace,
    sandbox: &dyn SandboxBox,
    provider: &dyn Provider,
    turns: usize,
) -> Result<(AgentOutcome, Duration, Vec<EventKind>)> {
    let sink = Collect::default();
    let run = AgentRun {
        prompt: PROMPT,
        workspace: &ws.root,
        sandbox,
        provider,
        sink: &sink,
        cancel: CancellationToken::new(),
        config: config(turns + 10),
        history: vec![],
        resume: None,
    };
    let start = Instant::now();
    let outcome = run
        .run()
        .await
        .with_context(|| format!("the agent run through {}", provider.name()))?;
    Ok((outcome, start.elapsed(), sink.take()))
}

pub struct AgentResult {
    pub loops: Vec<LoopRun>,
    /// Per vendor, the mixed tool calls, without compaction.
    pub plain: Vec<AdapterRun>,
    /// Per vendor, whole files, with a 40,000-token window.
    pub compacting: Vec<AdapterRun>,
    /// Per vendor, whole files, without compaction.
    pub baseline: Vec<AdapterRun>,
}

pub async fn run(plan: &Plan) -> Result<AgentResult> {
    errand_model::install_tls();
    ensure!(
        plan.loop_turns >= 2,
        "the loop bench needs at least 2 turns"
    );
    let mut loops = Vec::new();
    for i in 0..plan.loop_runs {
        let r = loop_once(plan.loop_turns).await?;
        eprintln!(
            "bench:   loop run {}: T_loop {:.0} ms, T_tools {:.0} ms, {:.3} ms per turn",
            i + 1,
            r.t_loop.as_secs_f64() * 1e3,
            r.t_tools.as_secs_f64() * 1e3,
            r.overhead_ms()
        );
        loops.push(r);
    }
    let (mut plain, mut compacting, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    for v in VENDORS {
        for (mix, window, list) in [
            (Mix::Mixed, HUGE_WINDOW, &mut plain),
            (Mix::Files, COMPACT_WINDOW, &mut compacting),
            (Mix::Files, HUGE_WINDOW, &mut baseline),
        ] {
            let r = adapter_once(v, plan.adapter_turns, mix, window).await?;
            eprintln!(
                "bench:   {} ({mix:?} tools, window {}): {} requests, {:.1} MiB, prefix share {:.2} %, {} compactions",
                v.kind(),
                fmt_int(window as f64),
                r.requests.len(),
                r.total_bytes() as f64 / (1024.0 * 1024.0),
                r.prefix_share(Order::AsSent) * 100.0,
                r.compactions()
            );
            list.push(r);
        }
    }
    Ok(AgentResult {
        loops,
        plain,
        compacting,
        baseline,
    })
}

fn kib(bytes: f64) -> String {
    let k = bytes / 1024.0;
    if k < 10.0 {
        format!("{k:.2}")
    } else if k < 100.0 {
        format!("{k:.1}")
    } else {
        format!("{k:.0}")
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1}", bytes / (1024.0 * 1024.0))
}

fn pct(share: f64) -> String {
    if share.is_nan() {
        "n/a".into()
    } else {
        format!("{:.2} %", share * 100.0)
    }
}

/// min / median / max of byte counts, in KiB.
fn kib_range(v: &[f64]) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    let s = Summary::from_ms(v);
    format!("{} / {} / {}", kib(s.min()), kib(s.median()), kib(s.max()))
}

pub fn report(r: &AgentResult) -> String {
    let mut s = String::from("### 8. Agent loop\n\n");

    // 1. Overhead per turn.
    let over = Summary::from_ms(&r.loops.iter().map(LoopRun::overhead_ms).collect::<Vec<_>>());
    let turns = r.loops.first().map_or(0, |l| l.turns);
    s += &format!(
        "**Loop overhead per turn, model latency excluded.** `AgentRun` with the scripted \
         provider, the unisolated box, an in-memory event sink and {} turns of one real tool \
         call each (`read_file` whole and ranges of 20 generated 2.5–4 KB files, `list_dir`, \
         `search`, `write_file` overwriting 4 notes; the last turn calls `finish`): T_loop is \
         the whole run. The same {} calls then go straight through `tools::execute` on the same \
         workspace, once before and once after the loop (T_tools: their mean). Overhead per turn = (T_loop − T_tools) / {}. Each run on a fresh \
         workspace.\n\n",
        fmt_int(turns as f64),
        fmt_int(turns as f64),
        fmt_int(turns as f64),
    );
    s += "| run | T_loop (ms) | T_tools (ms) | overhead per turn (ms) | events per turn (loop) | events per turn (tools alone) |\n";
    s += "|---:|---:|---:|---:|---:|---:|\n";
    for (i, l) in r.loops.iter().enumerate() {
        s += &format!(
            "| {} | {} | {} | {:.3} | {:.2} | {:.2} |\n",
            i + 1,
            fmt_ms(l.t_loop.as_secs_f64() * 1e3),
            fmt_ms(l.t_tools.as_secs_f64() * 1e3),
            l.overhead_ms(),
            l.loop_events as f64 / l.turns as f64,
            l.tool_events as f64 / l.turns as f64,
        );
    }
    let met = if over.median() < 1.0 {
        "met"
    } else {
        "**not met**"
    };
    s += &format!(
        "\nMedian overhead: **{:.3} ms per turn** (target < 1 ms: {met}).\n\n",
        over.median()
    );

    // 2. Prompt-prefix reuse.
    let n = r.plain.first().map_or(0, |a| a.requests.len());
    s += &format!(
        "**Prompt-prefix reuse per adapter.** Each real adapter (streaming) against its fake \
         API on loopback, {} tool-call turns then `finish` ({n} model requests), tool results \
         mostly whole files of 2.5–4 KB (numbered lines), some ranges, `search`, `list_dir` and \
         `shell` (`wc -l`). For every request after the first: the length of the byte prefix \
         its body shares with the previous request's body. Prefix share = Σ shared / Σ bytes \
         over requests 2..{n}; a request's new turn is never shared, so even full reuse stays \
         under 100 %. Previous request reused = Σ shared / Σ bytes of the previous request.\n\n",
        n.saturating_sub(1),
    );
    s += "| adapter | requests | sent in total (MiB) | last request (KiB) | **prefix share** | lowest share of one request | previous request reused | previous request's bytes past the shared prefix (median / max) | run time per turn (ms) | target ≥ 99 % |\n";
    s += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
    for a in &r.plain {
        let o = Order::AsSent;
        let tails = a.prev_tails(o);
        let met = if a.prefix_share(o) >= 0.99 {
            "met"
        } else {
            "**not met**"
        };
        s += &format!(
            "| {} | {} | {} | {} | **{}** | {} | {} | {} / {} | {} | {met} |\n",
            vendor_name(a.vendor),
            a.requests.len(),
            mib(a.total_bytes() as f64),
            kib(a.requests.last().map_or(0, |q| q.bytes) as f64),
            pct(a.prefix_share(o)),
            pct(a.min_share(o)),
            pct(a.prev_reused(o)),
            fmt_int(tails.median()),
            fmt_int(tails.max()),
            fmt_ms(a.wall.as_secs_f64() * 1e3 / a.turns.max(1) as f64),
        );
    }
    s += "\nThe adapters keep their bodies' keys in the order they build them (`serde_json` with \
          `preserve_order`) and put the conversation (`contents`, `input`, `messages`) last, \
          after the tools, the system prompt and the settings, so a request's bytes start with \
          the previous request's bytes up to its closing brackets. As a check, the same bodies \
          with their top-level keys rewritten in prompt order (tools, system prompt, other \
          settings, conversation last) give the same figures:\n\n";
    s += "| adapter | prefix share | lowest share of one request | previous request reused | previous request's bytes past the shared prefix (median / max) |\n";
    s += "|---|---:|---:|---:|---:|\n";
    for a in &r.plain {
        let o = Order::Prompt;
        let tails = a.prev_tails(o);
        s += &format!(
            "| {} | {} | {} | {} | {} / {} |\n",
            vendor_name(a.vendor),
            pct(a.prefix_share(o)),
            pct(a.min_share(o)),
            pct(a.prev_reused(o)),
            fmt_int(tails.median()),
            fmt_int(tails.max()),
        );
    }
    s += "\nAnthropic's second `cache_control` breakpoint sits on the last block of the \
          conversation, so it moves every turn: the shared prefix ends where the previous \
          request's marker was (the block's last key), a few dozen bytes before its end. The \
          run time per turn includes the loop, the tools, the adapter's JSON and the \
          loopback HTTP round trip to the fake.\n\n";

    // 3. Compaction.
    s += &format!(
        "**Bytes sent per turn before and after compaction.** {} turns of `read_file` on whole \
         files (tool results of 2.9–4.4 KB) then `finish`, with `context_window = {}` tokens \
         (the loop compacts at 80 %, keeping the last 4 turns), against the same turns with a \
         window they never reach. The fake answers each compaction request (its last message \
         holds \"{COMPACT_MARK}\") with a {}-byte summary. The fakes report no token usage, so \
         the loop's estimate is bytes / 4. \"Before\" is the last turn request before a \
         compaction request, \"after\" the first one after it (KiB, min / median / max); totals \
         include the compaction requests, and the mean per turn divides them by the turn \
         requests.\n\n",
        r.compacting
            .first()
            .map_or(0, |a| a.turns.saturating_sub(1)),
        fmt_int(COMPACT_WINDOW as f64),
        summary_text().len()
    );
    s += "| adapter | compactions (requests / `Compacted` events) | request before (KiB) | request after (KiB) | `Compacted` tokens before → after (median) | mean per turn (KiB) | sent in total (MiB) | without compaction: mean per turn (KiB) / total (MiB) | prefix share |\n";
    s += "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for a in &r.compacting {
        let (before, after) = a.around_compactions();
        let tb = Summary::from_ms(&a.compacted.iter().map(|c| c.0 as f64).collect::<Vec<_>>());
        let ta = Summary::from_ms(&a.compacted.iter().map(|c| c.1 as f64).collect::<Vec<_>>());
        let without = r
            .baseline
            .iter()
            .find(|p| p.vendor == a.vendor)
            .map(|p| {
                format!(
                    "{} / {}",
                    kib(p.total_bytes() as f64 / p.turn_requests().max(1) as f64),
                    mib(p.total_bytes() as f64)
                )
            })
            .unwrap_or_else(|| "n/a".into());
        s += &format!(
            "| {} | {} / {} | {} | {} | {} → {} | {} | {} | {without} | {} |\n",
            vendor_name(a.vendor),
            a.compactions(),
            a.compacted.len(),
            kib_range(&before),
            kib_range(&after),
            fmt_int(tb.median()),
            fmt_int(ta.median()),
            kib(a.total_bytes() as f64 / a.turn_requests().max(1) as f64),
            mib(a.total_bytes() as f64),
            pct(a.prefix_share(Order::AsSent)),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_spans_blocks() {
        let a = vec![7u8; 10_000];
        let mut b = a.clone();
        assert_eq!(common_prefix(&a, &b), 10_000);
        b[9000] = 0;
        assert_eq!(common_prefix(&a, &b), 9000);
        assert_eq!(common_prefix(&a[..5], &b), 5);
        assert_eq!(common_prefix(b"", &b), 0);
    }

    #[test]
    fn compaction_requests_are_found_by_their_last_message() {
        let c = json!({"messages": [{"role": "user", "content": "hi"},
            {"role": "user", "content": [{"type": "text", "text": "Your context is nearly full, so"}]}]});
        assert!(is_compaction(&c));
        let t = json!({"contents": [{"parts": [{"text": "Your context is nearly full"}]},
            {"parts": [{"text": "later"}]}]});
        assert!(!is_compaction(&t));
        assert!(!is_compaction(&json!({"input": []})));
    }

    #[test]
    fn prompt_order_puts_the_conversation_last() {
        let b = json!({"messages": [{"role": "user", "content": "hi \"x\""}], "model": "m",
            "system": "s", "tools": [{"name": "t"}]});
        let o = prompt_order(&b);
        assert_eq!(o.len(), b.to_string().len());
        assert_eq!(
            o,
            r#"{"tools":[{"name":"t"}],"system":"s","model":"m","messages":[{"role":"user","content":"hi \"x\""}]}"#
        );
        let back: Value = serde_json::from_str(&o).unwrap_or_default();
        assert_eq!(back, b);
    }
}
