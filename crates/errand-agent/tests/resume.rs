//! A run resumed from a checkpoint goes on where the first one stopped: the next scripted
//! turn, the turn and token counters (budgets count what was used before), the plan, and
//! compaction that keeps a long conversation inside the context window. The per-turn hooks
//! (`snapshot`, `checkpoint`) and the stuck detector, with a scripted model and the real
//! unisolated box.

use async_trait::async_trait;
use errand_agent::{AgentConfig, AgentError, AgentRun, EndReason, EventSink, Resume, RunState};
use errand_core::{Budget, EventKind};
use errand_model::scripted::{Script, ScriptedProvider};
use errand_model::{Message, ModelRequest, ModelResponse, Provider};
use errand_sandbox::unisolated::Unisolated;
use errand_sandbox::{BoxSpec, SandboxBackend};
use serde_json::json;
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Records events and the latest checkpoint; cancels the run after the checkpoint of
/// `stop_after` (like a crash right after it was saved).
#[derive(Default)]
struct Checkpoints {
    events: Mutex<Vec<EventKind>>,
    latest: Mutex<Option<(Vec<Message>, RunState)>>,
    snapshots: Mutex<u64>,
    stop_after: Option<u64>,
    cancel: CancellationToken,
    /// What `snapshot` answers (`None`: "can't tell").
    changed: Option<bool>,
}

#[async_trait]
impl EventSink for Checkpoints {
    async fn emit(&self, events: Vec<EventKind>) -> Result<(), AgentError> {
        self.events.lock().unwrap().extend(events);
        Ok(())
    }
    async fn snapshot(&self) -> Result<Option<bool>, AgentError> {
        *self.snapshots.lock().unwrap() += 1;
        Ok(self.changed)
    }
    async fn checkpoint(&self, messages: &[Message], state: &RunState) -> Result<(), AgentError> {
        *self.latest.lock().unwrap() = Some((messages.to_vec(), state.clone()));
        if Some(state.turns) == self.stop_after {
            self.cancel.cancel();
        }
        Ok(())
    }
}

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
        true
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

fn provider(turns: &serde_json::Value) -> Recording {
    Recording {
        inner: ScriptedProvider::new(
            "scripted:test",
            Script::parse(&json!({ "turns": turns }).to_string()).unwrap(),
        ),
        requests: Mutex::new(Vec::new()),
    }
}

async fn run(
    ws: &std::path::Path,
    turns: &serde_json::Value,
    config: AgentConfig,
    sink: &Checkpoints,
    resume: Option<Resume>,
) -> (errand_agent::AgentOutcome, Vec<ModelRequest>) {
    let p = provider(turns);
    let sandbox = Unisolated
        .create(BoxSpec {
            workspace: ws.to_path_buf(),
            scratch: ws.with_file_name("scratch"),
            ro_binds: vec![],
            rootfs: None,
            quota_dir: None,
            env: vec![],
            ..Default::default()
        })
        .await
        .unwrap();
    let outcome = AgentRun {
        prompt: "Append lines.",
        workspace: ws,
        sandbox: sandbox.as_ref(),
        provider: &p,
        sink,
        cancel: sink.cancel.clone(),
        config,
        history: vec![],
        resume,
    }
    .run()
    .await
    .unwrap();
    sandbox.destroy().await.unwrap();
    (outcome, p.requests.into_inner().unwrap())
}

fn model_turns(events: &[EventKind]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            EventKind::ModelTurn { turn, .. } => Some(*turn),
            _ => None,
        })
        .collect()
}

fn compactions(events: &[EventKind]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, EventKind::Compacted { .. }))
        .count()
}

const WINDOW: u64 = 6000;

#[tokio::test]
async fn a_resumed_run_keeps_its_turns_budgets_plan_and_context() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::create_dir_all(tmp.path().join("scratch")).unwrap();
    // Turn 1 makes a plan; turns 2–40 append a line and print 1.5 KB each; every turn costs
    // 10 tokens.
    let mut turns = vec![json!({
        "tool_calls": [{"name": "update_plan", "arguments": {"plan": [{"step": "Append the lines", "status": "in_progress"}]}}],
        "usage": {"output_tokens": 10}
    })];
    for n in 2..=40 {
        turns.push(json!({
            "tool_calls": [{"name": "shell", "arguments": {"command": format!("echo line-{n} >> log.txt; head -c 1500 /dev/zero | tr '\\0' x")}}],
            "usage": {"output_tokens": 10}
        }));
    }
    let turns = json!(turns);
    // A small window, so that the long run compacts again and again; a token budget of 255
    // stops it after turn 26, counting the tokens of both runs.
    let config = AgentConfig {
        default_context_window: WINDOW,
        compact_at: 0.8,
        keep_recent_turns: 2,
        budget: Budget {
            max_tokens: Some(255),
            ..Default::default()
        },
        ..AgentConfig::default()
    };

    // Run 1 dies right after its checkpoint of turn 15.
    let first = Checkpoints {
        stop_after: Some(15),
        ..Default::default()
    };
    let (o1, req1) = run(&ws, &turns, config.clone(), &first, None).await;
    assert_eq!(o1.end, EndReason::Cancelled);
    let ev1 = first.events.into_inner().unwrap();
    assert_eq!(model_turns(&ev1), (1..=15).collect::<Vec<_>>());
    assert!(compactions(&ev1) >= 1, "run 1 compacted");
    let (messages, state) = first.latest.into_inner().unwrap().expect("a checkpoint");
    assert_eq!(state.turns, 15);
    assert_eq!(state.usage.output_tokens, 150);
    assert_eq!(state.plan[0].step, "Append the lines");
    assert!(state.elapsed_ms > 0);
    // The state goes through JSON in a real checkpoint.
    let state: RunState = serde_json::from_value(serde_json::to_value(&state).unwrap()).unwrap();
    let messages: Vec<Message> =
        serde_json::from_value(serde_json::to_value(&messages).unwrap()).unwrap();
    let summaries = |m: &[Message]| {
        m.iter()
            .filter(|m| matches!(m, Message::User { text } if text.contains("<summary_of_earlier_turns>")))
            .count()
    };
    assert_eq!(
        summaries(&messages),
        1,
        "the checkpoint holds the compacted conversation"
    );

    // Run 2, from the checkpoint, with a fresh provider (another process).
    let second = Checkpoints::default();
    let elapsed_before = state.elapsed_ms;
    let (o2, req2) = run(
        &ws,
        &turns,
        config.clone(),
        &second,
        Some(Resume { messages, state }),
    )
    .await;
    let ev2 = second.events.into_inner().unwrap();
    // It goes on with turn 16 (the script's 16th entry) and stops on the token budget after
    // turn 26: 260 tokens over both runs.
    assert_eq!(model_turns(&ev2), (16..=26).collect::<Vec<_>>());
    match &o2.end {
        EndReason::Budget(why) => assert!(why.contains("token budget of 255"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(o2.turns, 26);
    assert_eq!(o2.usage.output_tokens, 260);
    assert!(o2.elapsed.as_millis() as u64 >= elapsed_before);
    let first_call = ev2.iter().find_map(|e| match e {
        EventKind::ToolCall { call_id, .. } => Some(call_id.clone()),
        _ => None,
    });
    assert_eq!(first_call.as_deref(), Some("call_16_1"));
    let log = std::fs::read_to_string(ws.join("log.txt")).unwrap();
    let expected: String = (2..=26).map(|n| format!("line-{n}\n")).collect();
    assert_eq!(log, expected, "no turn ran twice or was skipped");

    // Compaction went on in run 2, keeping the plan, and no request outgrew the window.
    assert!(compactions(&ev2) >= 1, "run 2 compacted");
    let after = req2
        .iter()
        .filter(|r| !r.compaction)
        .find(|r| {
            r.messages.iter().any(|m| matches!(m, Message::User { text } if text.contains("<current_plan>\n- [in_progress] Append the lines")))
        });
    assert!(
        after.is_some(),
        "the plan survives compaction after a resume"
    );
    for r in req1.iter().chain(req2.iter()).filter(|r| !r.compaction) {
        let bytes: usize = serde_json::to_string(&r.messages).unwrap().len()
            + r.system.len()
            + serde_json::to_string(&r.tools).unwrap().len();
        assert!(
            (bytes as u64) / 4 < WINDOW,
            "a request of ~{} tokens is over the {WINDOW}-token window",
            bytes / 4
        );
    }
}

#[tokio::test]
async fn the_stuck_detector_uses_the_sinks_view_of_the_workspace() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::create_dir_all(tmp.path().join("scratch")).unwrap();
    // The same failing command, turn after turn.
    let turns =
        json!((0..8)
        .map(|_| json!({"tool_calls": [{"name": "shell", "arguments": {"command": "exit 3"}}]}))
        .collect::<Vec<_>>());
    let config = AgentConfig {
        stuck_repeats: 3,
        stuck_turns: 0,
        ..AgentConfig::default()
    };
    // The sink says the workspace changes every turn (another process is writing): that is
    // not an agent going round in circles, so it runs until the script ends.
    let busy = Checkpoints {
        changed: Some(true),
        ..Default::default()
    };
    let (o, _) = run(&ws, &turns, config.clone(), &busy, None).await;
    assert_eq!(o.end, EndReason::NoToolCalls);
    assert_eq!(o.turns, 9);
    assert_eq!(*busy.snapshots.lock().unwrap(), 8);
    assert!(
        !busy
            .events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, EventKind::Stuck { .. }))
    );

    // Nothing changes: warned on the third failure, stopped on the fourth, with a checkpoint
    // after each turn the run went on from (not after the one it stopped in).
    let idle = Checkpoints {
        changed: Some(false),
        ..Default::default()
    };
    let (o, _) = run(&ws, &turns, config, &idle, None).await;
    match &o.end {
        EndReason::Stuck(why) => assert!(why.contains("failed 4 times"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(o.turns, 4);
    let events = idle.events.into_inner().unwrap();
    let stuck: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::Stuck { action, .. } => Some(action.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(stuck, vec!["warned", "stopped"]);
    let (_, state) = idle.latest.into_inner().unwrap().unwrap();
    assert_eq!(state.turns, 3);
    // The model saw the warning in the third result.
    let warned = o.messages.iter().any(|m| {
        matches!(m, Message::Tool { content, .. } if content.contains("Making it again will stop the attempt"))
    });
    assert!(warned);
}
