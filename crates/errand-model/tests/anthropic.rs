//! The Anthropic Messages adapter against a fake that speaks the documented wire format.

mod common;

use common::*;
use errand_fakes::{ErrorKind as FakeKind, FakeServer, FakeUsage, Reply, Turn, Vendor};
use errand_model::{Delta, ErrorKind, Message, ModelError};
use serde_json::json;
use std::time::Duration;

const MODEL: &str = "claude-sonnet-4-5";

fn turn_with_everything() -> Turn {
    Turn {
        text: Some("I will read both files.".into()),
        reasoning: Some("The bug is probably in a.py.".into()),
        tool_calls: vec![
            ("read_file".into(), json!({"path": "a.py"})),
            ("read_file".into(), json!({"path": "dir/b.py"})),
        ],
        usage: FakeUsage {
            input: 1200,
            cached: 1000,
            cache_write: 100,
            output: 80,
            reasoning: 0,
        },
    }
}

#[test]
fn sends_the_documented_request() {
    let fake = FakeServer::start(Vendor::Anthropic, vec![Reply::Turn(Turn::text("ok"))]);
    let p = provider(Vendor::Anthropic, &fake, MODEL, true);
    let mut req = history();
    req.options
        .insert("reasoning_effort".into(), json!("medium"));
    req.options.insert("temperature".into(), json!(1));
    rt().block_on(p.complete(&req))
        .unwrap_or_else(|e| panic!("{e}"));
    let r = &fake.model_requests()[0];
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.header("x-api-key"), Some(KEY));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("x-extra"), Some("yes"));
    assert_eq!(
        r.body,
        json!({
            "model": MODEL,
            "max_tokens": 8192 + 8192,
            "system": [{"type": "text", "text": "You are a test.", "cache_control": {"type": "ephemeral"}}],
            "tools": [{"name": "read_file", "description": "Read a file", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Fix the bug"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "call_a", "name": "read_file", "input": {"path": "a.py"}},
                    {"type": "tool_use", "id": "call_b", "name": "read_file", "input": {"path": "b.py"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_a", "content": "1\tprint('a')"},
                    {"type": "tool_result", "tool_use_id": "call_b", "content": "b.py: no such file", "is_error": true, "cache_control": {"type": "ephemeral"}}
                ]}
            ],
            "thinking": {"type": "enabled", "budget_tokens": 8192},
            "temperature": 1,
            "stream": true
        })
    );
}

#[test]
fn parses_a_stream_with_thinking_and_parallel_calls_and_replays_it() {
    let fake = FakeServer::start(
        Vendor::Anthropic,
        vec![
            Reply::Turn(turn_with_everything()),
            Reply::Turn(Turn::text("done")),
        ],
    );
    let p = provider(Vendor::Anthropic, &fake, MODEL, true);
    let mut req = history();
    let mut deltas = Vec::new();
    let resp = rt()
        .block_on(p.stream(&req, &mut |d: Delta<'_>| deltas.push(format!("{d:?}"))))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.text.as_deref(), Some("I will read both files."));
    assert_eq!(
        resp.reasoning.as_deref(),
        Some("The bug is probably in a.py.")
    );
    assert_eq!(resp.tool_calls.len(), 2);
    assert_eq!(resp.tool_calls[1].arguments, json!({"path": "dir/b.py"}));
    assert_eq!(resp.tool_calls[0].id, "toolu_fake_0001_0");
    assert_eq!(resp.stop_reason.as_deref(), Some("tool_use"));
    assert_eq!(resp.usage.input_tokens, 1200);
    assert_eq!(resp.usage.cached_input_tokens, 1000);
    assert_eq!(resp.usage.cache_write_tokens, 100);
    assert_eq!(resp.usage.output_tokens, 80);
    // 100 plain × $3 + 1000 cached × $0.30 + 100 written × $3.75 + 80 out × $15, per million.
    let want = (100.0 * 3.0 + 1000.0 * 0.3 + 100.0 * 3.75 + 80.0 * 15.0) / 1e6;
    assert!((resp.usage.cost_usd - want).abs() < 1e-12);
    assert!(deltas.iter().any(|d| d.contains("Reasoning")));
    assert!(deltas.iter().any(|d| d.contains("ToolCall")));

    // The next request carries the thinking block back verbatim, signature included.
    req.messages.push(resp.to_message());
    for c in &resp.tool_calls {
        req.messages.push(Message::Tool {
            call_id: c.id.clone(),
            name: c.name.clone(),
            content: "x".into(),
            is_error: false,
        });
    }
    rt().block_on(p.complete(&req))
        .unwrap_or_else(|e| panic!("{e}"));
    let second = &fake.model_requests()[1].body;
    let assistant = &second["messages"][3];
    assert_eq!(assistant["role"], "assistant");
    assert_eq!(
        assistant["content"][0],
        json!({"type": "thinking", "thinking": "The bug is probably in a.py.", "signature": errand_fakes::signature("The bug is probably in a.py.")})
    );
    assert_eq!(assistant["content"][2]["type"], "tool_use");
    assert_eq!(assistant["content"][2]["id"], "toolu_fake_0001_0");
    let results = second["messages"][4]["content"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(results.len(), 2, "both results in one user message");
}

#[test]
fn non_streamed_and_chunked_streams_parse_the_same() {
    // Two fakes, so both answers are reply number 1 and carry the same ids.
    let fake = FakeServer::start(Vendor::Anthropic, vec![Reply::Turn(turn_with_everything())]);
    let fake2 = FakeServer::start(
        Vendor::Anthropic,
        vec![Reply::Chunked {
            turn: turn_with_everything(),
            chunk: 7,
        }],
    );
    let plain = provider(Vendor::Anthropic, &fake, MODEL, false);
    let streamed = provider(Vendor::Anthropic, &fake2, MODEL, true);
    let a = rt()
        .block_on(plain.complete(&history()))
        .unwrap_or_else(|e| panic!("{e}"));
    let b = rt()
        .block_on(streamed.complete(&history()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        fake.model_requests()[0].body.get("stream"),
        Some(&json!(false))
    );
    assert_eq!(a.text, b.text);
    assert_eq!(a.tool_calls, b.tool_calls);
    assert_eq!(a.usage, b.usage);
    assert_eq!(a.native, b.native);
}

fn err_of(reply: Reply) -> ModelError {
    let fake = FakeServer::start(Vendor::Anthropic, vec![reply]);
    let p = provider(Vendor::Anthropic, &fake, MODEL, true);
    match rt().block_on(p.complete(&history())) {
        Ok(r) => panic!("expected an error, got {r:?}"),
        Err(e) => e,
    }
}

#[test]
fn cut_streams_are_retryable_errors() {
    for abort in [false, true] {
        let e = err_of(Reply::Cut {
            turn: turn_with_everything(),
            events: 5,
            abort,
        });
        assert_eq!(e.kind(), Some(ErrorKind::StreamCut), "{e}");
        assert!(e.retryable());
    }
}

#[test]
fn each_error_status_is_classified() {
    let cases = [
        (401, FakeKind::Authentication, ErrorKind::Auth, false),
        (
            403,
            FakeKind::Permission,
            ErrorKind::PermissionDenied,
            false,
        ),
        (404, FakeKind::NotFound, ErrorKind::ModelNotFound, false),
        (400, FakeKind::InvalidRequest, ErrorKind::BadRequest, false),
        (500, FakeKind::Server, ErrorKind::Server, true),
        (529, FakeKind::Overloaded, ErrorKind::Overloaded, true),
    ];
    for (status, fk, want, retry) in cases {
        let e = err_of(Reply::error(status, fk, "something"));
        assert_eq!(e.kind(), Some(want), "{status}: {e}");
        assert_eq!(e.retryable(), retry, "{status}");
    }
    let e = err_of(Reply::error(
        400,
        FakeKind::ContextLength,
        "prompt is too long: 215000 tokens > 200000 maximum",
    ));
    assert_eq!(e.kind(), Some(ErrorKind::ContextLength));
    let e = err_of(Reply::error(
        401,
        FakeKind::Authentication,
        "invalid x-api-key",
    ));
    assert!(e.to_string().contains(KEY_VAR), "{e}");
    assert!(!e.to_string().contains(KEY), "the key must never show: {e}");
    let e = err_of(Reply::Error {
        status: 429,
        kind: FakeKind::RateLimit,
        message: "Number of request tokens has exceeded your per-minute rate limit".into(),
        headers: vec![("retry-after".into(), "13".into())],
    });
    assert_eq!(e.kind(), Some(ErrorKind::RateLimited));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(13)));
    let e = err_of(Reply::StreamError {
        kind: FakeKind::Overloaded,
        message: "Overloaded".into(),
    });
    assert_eq!(e.kind(), Some(ErrorKind::Overloaded), "{e}");
}

#[test]
fn a_silent_stream_hits_the_idle_timeout() {
    let e = err_of(Reply::Stall {
        turn: Turn::text("late"),
        wait: Duration::from_secs(30),
    });
    assert_eq!(e.kind(), Some(ErrorKind::Timeout), "{e}");
    assert!(e.to_string().contains("idle timeout"), "{e}");
}

#[test]
fn probe_reads_the_model() {
    let fake = FakeServer::start(Vendor::Anthropic, vec![]);
    let p = provider(Vendor::Anthropic, &fake, MODEL, true);
    let ok = rt()
        .block_on(p.probe(None))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ok.contains("Fake claude-sonnet-4-5"), "{ok}");
    let missing = rt().block_on(p.probe(Some("nope")));
    assert_eq!(
        missing.err().and_then(|e| e.kind()),
        Some(ErrorKind::ModelNotFound)
    );
    assert_eq!(fake.model_requests().len(), 0);
}
