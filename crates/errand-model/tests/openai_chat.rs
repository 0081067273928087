//! The OpenAI Chat Completions adapter against a fake that speaks the documented wire format.

mod common;

use common::*;
use errand_fakes::{ErrorKind as FakeKind, FakeServer, FakeUsage, Reply, Turn, Vendor};
use errand_model::registry::build_resolved;
use errand_model::{Delta, ErrorKind, Message, ModelError, Provider, ToolCall};
use serde_json::json;
use std::time::Duration;

const MODEL: &str = "gpt-4.1-mini";
const V: Vendor = Vendor::OpenAiChat;

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
            cache_write: 0,
            output: 80,
            reasoning: 50,
        },
    }
}

/// A provider with no key configured, as for a local server.
fn keyless(fake: &FakeServer, model: &str) -> Box<dyn Provider> {
    let mut r = resolved(V, fake, model, true);
    r.api_key_env = None;
    build_resolved(r).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn sends_the_documented_request() {
    let fake = FakeServer::start(V, vec![Reply::Turn(Turn::text("ok"))]);
    let p = provider(V, &fake, MODEL, true);
    let mut req = history();
    req.options.insert("reasoning_effort".into(), json!("low"));
    req.options.insert("max_output_tokens".into(), json!(4000));
    req.options.insert("temperature".into(), json!(0.2));
    rt().block_on(p.complete(&req))
        .unwrap_or_else(|e| panic!("{e}"));
    let r = &fake.model_requests()[0];
    assert_eq!(r.path, "/chat/completions");
    let bearer = format!("Bearer {KEY}");
    assert_eq!(r.header("authorization"), Some(bearer.as_str()));
    assert_eq!(r.header("x-extra"), Some("yes"));
    assert_eq!(
        r.body,
        json!({
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are a test."},
                {"role": "user", "content": "Fix the bug"},
                {"role": "assistant", "content": "Looking.", "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a.py\"}"}},
                    {"id": "call_b", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"b.py\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_a", "content": "1\tprint('a')"},
                {"role": "tool", "tool_call_id": "call_b", "content": "b.py: no such file"}
            ],
            "tools": [{"type": "function", "function": {
                "name": "read_file",
                "description": "Read a file",
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
            }}],
            "reasoning_effort": "low",
            "max_completion_tokens": 4000,
            "temperature": 0.2,
            "stream": true,
            "stream_options": {"include_usage": true}
        })
    );
}

#[test]
fn a_server_without_a_key_gets_no_authorization_header() {
    let fake = FakeServer::start(V, vec![Reply::Turn(Turn::text("ok"))]);
    let p = keyless(&fake, "qwen2.5-coder");
    let resp = rt()
        .block_on(p.complete(&history()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.text.as_deref(), Some("ok"));
    let r = &fake.model_requests()[0];
    assert_eq!(r.header("authorization"), None);
    assert_eq!(r.header("x-extra"), Some("yes"));
    // No price is known for a local model.
    assert_eq!(resp.usage.cost_usd, 0.0);
}

#[test]
fn parses_a_stream_with_reasoning_and_parallel_calls_and_does_not_replay_reasoning() {
    let fake = FakeServer::start(
        V,
        vec![
            Reply::Turn(turn_with_everything()),
            Reply::Turn(Turn::text("done")),
        ],
    );
    let p = provider(V, &fake, MODEL, true);
    let mut req = history();
    let mut deltas: Vec<(&str, String)> = Vec::new();
    let resp = rt()
        .block_on(p.stream(&req, &mut |d: Delta<'_>| {
            deltas.push(match d {
                Delta::Text(t) => ("text", t.to_string()),
                Delta::Reasoning(t) => ("reasoning", t.to_string()),
                Delta::ToolCall(n) => ("call", n.to_string()),
            })
        }))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.text.as_deref(), Some("I will read both files."));
    assert_eq!(
        resp.reasoning.as_deref(),
        Some("The bug is probably in a.py.")
    );
    assert_eq!(
        resp.tool_calls,
        vec![
            ToolCall {
                id: "call_fake_0001_0".into(),
                name: "read_file".into(),
                arguments: json!({"path": "a.py"})
            },
            ToolCall {
                id: "call_fake_0001_1".into(),
                name: "read_file".into(),
                arguments: json!({"path": "dir/b.py"})
            },
        ]
    );
    assert_eq!(resp.stop_reason.as_deref(), Some("tool_calls"));
    assert_eq!(resp.usage.input_tokens, 1200);
    assert_eq!(resp.usage.cached_input_tokens, 1000);
    assert_eq!(resp.usage.output_tokens, 80);
    assert_eq!(resp.usage.reasoning_tokens, 50);
    // 200 plain × $0.40 + 1000 cached × $0.10 + 80 out × $1.60, per million.
    let want = (200.0 * 0.4 + 1000.0 * 0.1 + 80.0 * 1.6) / 1e6;
    assert!(
        (resp.usage.cost_usd - want).abs() < 1e-12,
        "{}",
        resp.usage.cost_usd
    );
    assert_eq!(resp.native, None);
    let joined = |kind: &str| -> (usize, String) {
        let parts: Vec<&str> = deltas
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, t)| t.as_str())
            .collect();
        (parts.len(), parts.concat())
    };
    assert_eq!(
        joined("reasoning"),
        (2, "The bug is probably in a.py.".into())
    );
    assert_eq!(joined("text"), (2, "I will read both files.".into()));
    assert_eq!(joined("call"), (2, "read_fileread_file".into()));

    // The next request has the calls and their results, and no reasoning.
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
    let messages = second["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages.len(), 5 + 3, "{second}");
    assert_eq!(
        messages[5],
        json!({"role": "assistant", "content": "I will read both files.", "tool_calls": [
            {"id": "call_fake_0001_0", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a.py\"}"}},
            {"id": "call_fake_0001_1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"dir/b.py\"}"}}
        ]})
    );
    assert_eq!(
        messages[7],
        json!({"role": "tool", "tool_call_id": "call_fake_0001_1", "content": "x"})
    );
    assert!(!second.to_string().contains("reasoning"), "{second}");
}

#[test]
fn an_assistant_turn_without_text_is_sent_with_empty_content() {
    let fake = FakeServer::start(V, vec![Reply::Turn(Turn::text("ok"))]);
    let p = keyless(&fake, "llama3.1");
    let mut req = history();
    if let Message::Assistant { text, .. } = &mut req.messages[1] {
        *text = None;
    }
    // An empty turn (no text, no calls) is left out.
    req.messages.insert(
        1,
        Message::Assistant {
            text: None,
            tool_calls: vec![],
            native: None,
        },
    );
    rt().block_on(p.complete(&req))
        .unwrap_or_else(|e| panic!("{e}"));
    let body = &fake.model_requests()[0].body;
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(5));
    assert_eq!(body["messages"][2]["role"], "assistant");
    assert_eq!(body["messages"][2]["content"], "");
    assert_eq!(body["messages"][2]["tool_calls"][1]["id"], "call_b");
}

#[test]
fn streamed_non_streamed_and_chunked_parse_the_same() {
    let fakes: Vec<FakeServer> = [
        Reply::Turn(turn_with_everything()),
        Reply::Turn(turn_with_everything()),
        Reply::Chunked {
            turn: turn_with_everything(),
            chunk: 7,
        },
    ]
    .into_iter()
    .map(|r| FakeServer::start(V, vec![r]))
    .collect();
    let results: Vec<_> = fakes
        .iter()
        .zip([false, true, true])
        .map(|(f, stream)| {
            rt().block_on(provider(V, f, MODEL, stream).complete(&history()))
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let plain = &fakes[0].model_requests()[0].body;
    assert_eq!(plain.get("stream"), Some(&json!(false)));
    assert_eq!(plain.get("stream_options"), None);
    assert_eq!(results[0].tool_calls.len(), 2);
    assert!(results[0].reasoning.is_some());
    assert!(results[0].usage.cost_usd > 0.0);
    assert_eq!(results[0], results[1]);
    assert_eq!(results[1], results[2]);
}

#[test]
fn a_text_turn_stops() {
    let fake = FakeServer::start(V, vec![Reply::Turn(Turn::text("All done."))]);
    let p = provider(V, &fake, MODEL, true);
    let resp = rt()
        .block_on(p.complete(&history()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.text.as_deref(), Some("All done."));
    assert_eq!(resp.reasoning, None);
    assert!(resp.tool_calls.is_empty());
    assert_eq!(resp.stop_reason.as_deref(), Some("stop"));
}

fn err_of(reply: Reply) -> ModelError {
    let fake = FakeServer::start(V, vec![reply]);
    let p = provider(V, &fake, MODEL, true);
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
fn a_stream_that_finished_its_choice_needs_no_done_line() {
    // Role, two content chunks, the finish chunk and the usage chunk: all but [DONE].
    let fake = FakeServer::start(
        V,
        vec![Reply::Cut {
            turn: Turn {
                usage: FakeUsage {
                    input: 10,
                    output: 2,
                    ..Default::default()
                },
                ..Turn::text("hi there")
            },
            events: 5,
            abort: false,
        }],
    );
    let p = provider(V, &fake, MODEL, true);
    let resp = rt()
        .block_on(p.complete(&history()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.text.as_deref(), Some("hi there"));
    assert_eq!(resp.usage.input_tokens, 10);
    assert_eq!(resp.stop_reason.as_deref(), Some("stop"));
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
        (
            400,
            FakeKind::ContextLength,
            ErrorKind::ContextLength,
            false,
        ),
        (
            429,
            FakeKind::QuotaExceeded,
            ErrorKind::QuotaExceeded,
            false,
        ),
        (500, FakeKind::Server, ErrorKind::Server, true),
        (503, FakeKind::Overloaded, ErrorKind::Overloaded, true),
        (503, FakeKind::Server, ErrorKind::Server, true),
    ];
    for (status, fk, want, retry) in cases {
        let e = err_of(Reply::error(status, fk, "something went wrong"));
        assert_eq!(e.kind(), Some(want), "{status} {fk:?}: {e}");
        assert_eq!(e.retryable(), retry, "{status} {fk:?}");
        assert!(e.to_string().contains("something went wrong"), "{e}");
    }
    let e = err_of(Reply::error(
        401,
        FakeKind::Authentication,
        "Incorrect API key provided.",
    ));
    assert!(e.to_string().contains(KEY_VAR), "{e}");
    assert!(!e.to_string().contains(KEY), "the key must never show: {e}");
    for (header, value, want) in [
        ("retry-after", "13", Duration::from_secs(13)),
        ("retry-after-ms", "1500", Duration::from_millis(1500)),
    ] {
        let e = err_of(Reply::Error {
            status: 429,
            kind: FakeKind::RateLimit,
            message: "Rate limit reached for gpt-4.1-mini on requests per min (RPM)".into(),
            headers: vec![(header.into(), value.into())],
        });
        assert_eq!(e.kind(), Some(ErrorKind::RateLimited), "{e}");
        assert!(e.retryable());
        assert_eq!(e.retry_after(), Some(want));
    }
}

#[test]
fn an_error_chunk_in_the_stream_is_classified() {
    let cases = [
        (FakeKind::Server, ErrorKind::Server, true),
        (FakeKind::Overloaded, ErrorKind::Overloaded, true),
        (FakeKind::RateLimit, ErrorKind::RateLimited, true),
        (FakeKind::QuotaExceeded, ErrorKind::QuotaExceeded, false),
        (FakeKind::ContextLength, ErrorKind::ContextLength, false),
    ];
    for (fk, want, retry) in cases {
        let e = err_of(Reply::StreamError {
            kind: fk,
            message: "the model failed".into(),
        });
        assert_eq!(e.kind(), Some(want), "{fk:?}: {e}");
        assert_eq!(e.retryable(), retry, "{fk:?}");
        assert!(e.to_string().contains("the model failed"), "{e}");
    }
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
fn probe_looks_for_the_model_in_the_list() {
    let fake = FakeServer::start(V, vec![]);
    let p = provider(V, &fake, MODEL, true);
    let ok = rt()
        .block_on(p.probe(None))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ok.contains("gpt-4.1-mini"), "{ok}");
    // Ollama lists a model pulled without a tag as `name:latest`.
    let ok = rt()
        .block_on(p.probe(Some("qwen2.5-coder")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ok.contains("qwen2.5-coder"), "{ok}");
    let missing = rt().block_on(p.probe(Some("nope"))).err();
    assert_eq!(
        missing.as_ref().and_then(|e| e.kind()),
        Some(ErrorKind::ModelNotFound)
    );
    let msg = missing.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.contains("'nope'") && msg.contains("gpt-5-mini"),
        "{msg}"
    );
    let reqs = fake.requests();
    assert!(
        reqs.iter()
            .all(|r| r.method == "GET" && r.path == "/models"),
        "{reqs:?}"
    );
    let bearer = format!("Bearer {KEY}");
    assert_eq!(reqs[0].header("authorization"), Some(bearer.as_str()));

    let local = keyless(&fake, "qwen2.5-coder:latest");
    rt().block_on(local.probe(None))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        fake.requests()
            .last()
            .and_then(|r| r.header("authorization").map(str::to_string)),
        None
    );
}
