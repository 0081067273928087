//! Plan mode in the agent loop: the planning prompt and tools, file-changing tools refused,
//! and a planning conversation continued with the reviewer's decision.

use async_trait::async_trait;
use errand_agent::{AgentConfig, AgentError, AgentRun, EndReason, EventSink};
use errand_core::{EventKind, PlanStep};
use errand_model::scripted::{Script, ScriptedProvider};
use errand_model::{Message, ModelRequest, ModelResponse, Provider};
use errand_sandbox::unisolated::Unisolated;
use errand_sandbox::{BoxSpec, SandboxBackend};
use serde_json::json;
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

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

struct Ran {
    outcome: errand_agent::AgentOutcome,
    events: Vec<EventKind>,
    requests: Vec<ModelRequest>,
}

async fn run(
    ws: &std::path::Path,
    turns: serde_json::Value,
    config: AgentConfig,
    history: Vec<Message>,
) -> Ran {
    let scratch = tempfile::tempdir().unwrap();
    let sandbox = Unisolated
        .create(BoxSpec {
            workspace: ws.to_path_buf(),
            scratch: scratch.path().to_path_buf(),
            ro_binds: vec![],
            rootfs: None,
            quota_dir: None,
            env: vec![],
            workspace_readonly: false,
            ..Default::default()
        })
        .await
        .unwrap();
    let provider = Recording {
        inner: ScriptedProvider::new(
            "scripted:plan",
            Script::parse(&json!({ "turns": turns }).to_string()).unwrap(),
        ),
        requests: Mutex::new(Vec::new()),
    };
    let sink = Collect::default();
    let outcome = AgentRun {
        prompt: "Migrate auth to the new RBAC module",
        workspace: ws,
        sandbox: sandbox.as_ref(),
        provider: &provider,
        sink: &sink,
        cancel: CancellationToken::new(),
        config,
        history,
        resume: None,
    }
    .run()
    .await
    .unwrap();
    sandbox.destroy().await.unwrap();
    Ran {
        outcome,
        events: sink.events.into_inner().unwrap(),
        requests: provider.requests.into_inner().unwrap(),
    }
}

fn result_of(events: &[EventKind], id: &str) -> (bool, String) {
    events
        .iter()
        .find_map(|e| match e {
            EventKind::ToolResult {
                call_id,
                ok,
                output,
                ..
            } if call_id == id => Some((*ok, output.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no result for {id}: {events:#?}"))
}

fn step(s: &str) -> PlanStep {
    PlanStep {
        step: s.into(),
        status: "pending".into(),
    }
}

#[tokio::test]
async fn a_planning_run_offers_no_write_tools_and_refuses_them() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path();
    std::fs::write(ws.join("auth.py"), "TOKENS = 1\n").unwrap();
    let patch = "*** Begin Patch\n*** Add File: new.txt\n+x\n*** End Patch";
    let r = run(
        ws,
        json!([
            {"tool_calls": [
                {"name": "read_file", "arguments": {"path": "auth.py"}},
                {"name": "write_file", "arguments": {"path": "new.txt", "content": "x"}},
                {"name": "edit", "arguments": {"path": "auth.py", "old": "1", "new": "2"}},
                {"name": "apply_patch", "arguments": {"patch": patch}}
            ]},
            {"tool_calls": [{"name": "update_plan", "arguments": {
                "explanation": "two steps",
                "plan": [{"step": "Add the RBAC adapter", "status": "pending"},
                         {"step": "Switch auth.py to it", "status": "pending"}]}}]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "plan: adapter, then switch"}}]}
        ]),
        AgentConfig {
            planning: true,
            ..AgentConfig::default()
        },
        vec![],
    )
    .await;
    assert_eq!(r.outcome.end, EndReason::Finished);
    assert_eq!(
        r.outcome.summary.as_deref(),
        Some("plan: adapter, then switch")
    );
    assert_eq!(
        r.outcome.plan,
        vec![step("Add the RBAC adapter"), step("Switch auth.py to it")]
    );
    // The planning prompt and tools, in every request.
    assert_eq!(r.requests.len(), 3);
    for req in &r.requests {
        assert_eq!(req.system, errand_agent::PLANNING_SYSTEM_PROMPT);
        let names: Vec<&str> = req.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "shell",
                "read_file",
                "list_dir",
                "search",
                "update_plan",
                "finish"
            ]
        );
        let finish = req.tools.iter().find(|t| t.name == "finish").unwrap();
        assert!(
            finish.description.starts_with("Hand in your plan"),
            "{}",
            finish.description
        );
    }
    assert!(r.requests[0].system.contains("PLAN MODE"));
    // Reading works; every file-changing tool is refused and nothing changed.
    let (ok, out) = result_of(&r.events, "call_1_1");
    assert!(ok && out.contains("TOKENS = 1"), "{out}");
    for (id, name) in [
        ("call_1_2", "write_file"),
        ("call_1_3", "edit"),
        ("call_1_4", "apply_patch"),
    ] {
        let (ok, out) = result_of(&r.events, id);
        assert!(!ok, "{name} must fail while planning");
        assert!(
            out.starts_with(&format!("{name} is not available while planning")),
            "{out}"
        );
        assert!(out.contains("read-only"), "{out}");
    }
    assert_eq!(
        std::fs::read_to_string(ws.join("auth.py")).unwrap(),
        "TOKENS = 1\n"
    );
    assert!(!ws.join("new.txt").exists());
    assert!(
        !r.events
            .iter()
            .any(|e| matches!(e, EventKind::FileChange { .. })),
        "no file change recorded"
    );
}

#[tokio::test]
async fn an_approved_plan_continues_the_conversation_with_every_tool() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path();
    std::fs::write(ws.join("auth.py"), "TOKENS = 1\n").unwrap();
    // The planning conversation: the task, one assistant turn, its tool result.
    let history = vec![
        Message::User {
            text: "<task>\nMigrate auth\n</task>".into(),
        },
        Message::Assistant {
            text: Some("planning".into()),
            tool_calls: vec![errand_model::ToolCall {
                id: "call_1_1".into(),
                name: "update_plan".into(),
                arguments: json!({"plan": [{"step": "Switch auth.py", "status": "pending"}]}),
            }],
            native: None,
        },
        Message::Tool {
            call_id: "call_1_1".into(),
            name: "update_plan".into(),
            content: "Plan updated (0 of 1 steps completed).".into(),
            is_error: false,
        },
    ];
    let approved = "<plan_approved>\nThe plan was approved by ann; implement it.\n</plan_approved>";
    // Script entry 2 is the first turn of this run: entry 1 is already in the conversation.
    let r = run(
        ws,
        json!([
            {"text": "never played"},
            {"tool_calls": [{"name": "edit", "arguments": {"path": "auth.py", "old": "1", "new": "2"}}]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "switched"}}]}
        ]),
        AgentConfig {
            continuation: Some(approved.into()),
            plan: vec![step("Switch auth.py")],
            ..AgentConfig::default()
        },
        history.clone(),
    )
    .await;
    assert_eq!(r.outcome.end, EndReason::Finished, "{:#?}", r.events);
    assert_eq!(
        std::fs::read_to_string(ws.join("auth.py")).unwrap(),
        "TOKENS = 2\n"
    );
    let first = &r.requests[0];
    assert_ne!(first.system, errand_agent::PLANNING_SYSTEM_PROMPT);
    assert!(first.tools.iter().any(|t| t.name == "edit"));
    assert_eq!(first.messages[..3], history[..]);
    assert_eq!(
        first.messages[3],
        Message::User {
            text: approved.into()
        },
        "the continuation is sent as it is"
    );
    assert_eq!(first.messages.len(), 4);
    // The approved plan is the run's plan until the agent updates it.
    assert_eq!(r.outcome.plan, vec![step("Switch auth.py")]);
}
