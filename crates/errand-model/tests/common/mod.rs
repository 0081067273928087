//! Shared helpers for the adapter tests: a provider pointed at a fake server, and requests.
#![allow(dead_code)]

use errand_fakes::{FakeServer, Vendor};
use errand_model::registry::{ResolvedProvider, build_resolved};
use errand_model::{Message, ModelRequest, Provider, ProviderKind, ToolCall, ToolSpec};
use serde_json::json;

pub const KEY_VAR: &str = "ERRAND_TEST_MODEL_KEY";
pub const KEY: &str = "sk-test-0123456789";

pub fn kind(v: Vendor) -> ProviderKind {
    match v {
        Vendor::OpenAiResponses => ProviderKind::OpenaiResponses,
        Vendor::OpenAiChat => ProviderKind::OpenaiChat,
        Vendor::Anthropic => ProviderKind::Anthropic,
        Vendor::Gemini => ProviderKind::Gemini,
    }
}

pub fn resolved(v: Vendor, fake: &FakeServer, model: &str, stream: bool) -> ResolvedProvider {
    // Each test runs in its own process under nextest, so setting the variable is safe.
    unsafe { std::env::set_var(KEY_VAR, KEY) };
    ResolvedProvider {
        name: "fake".into(),
        kind: kind(v),
        base_url: fake.base_url.clone(),
        api_key_env: Some(KEY_VAR.into()),
        headers: [("x-extra".to_string(), "yes".to_string())].into(),
        model: model.into(),
        model_config: errand_model::pricing::builtin(kind(v), model).unwrap_or_default(),
        stream,
        timeout_secs: 20,
        idle_timeout_secs: 2,
        max_retries: 0,
    }
}

pub fn provider(v: Vendor, fake: &FakeServer, model: &str, stream: bool) -> Box<dyn Provider> {
    build_resolved(resolved(v, fake, model, stream)).unwrap_or_else(|e| panic!("{e}"))
}

pub fn tools() -> Vec<ToolSpec> {
    vec![ToolSpec {
        name: "read_file".into(),
        description: "Read a file".into(),
        parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
    }]
}

/// A conversation after one turn with two parallel tool calls, one of which failed.
pub fn history() -> ModelRequest {
    ModelRequest {
        system: "You are a test.".into(),
        tools: tools(),
        messages: vec![
            Message::User {
                text: "Fix the bug".into(),
            },
            Message::Assistant {
                text: Some("Looking.".into()),
                tool_calls: vec![
                    ToolCall {
                        id: "call_a".into(),
                        name: "read_file".into(),
                        arguments: json!({"path": "a.py"}),
                    },
                    ToolCall {
                        id: "call_b".into(),
                        name: "read_file".into(),
                        arguments: json!({"path": "b.py"}),
                    },
                ],
                native: None,
            },
            Message::Tool {
                call_id: "call_a".into(),
                name: "read_file".into(),
                content: "1\tprint('a')".into(),
                is_error: false,
            },
            Message::Tool {
                call_id: "call_b".into(),
                name: "read_file".into(),
                content: "b.py: no such file".into(),
                is_error: true,
            },
        ],
        ..Default::default()
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}
