//! The OpenAI Responses adapter against a fake that speaks the documented wire format.

mod common;

use common::*;
use errand_fakes::{ErrorKind as FakeKind, FakeServer, FakeUsage, Reply, Turn, Vendor};
use errand_model::{Delta, ErrorKind, Message, ModelError, Native, ProviderKind};
use serde_json::{Value, json};
use std::time::Duration;

const MODEL: &str = "gpt-5";
const V: Vendor = Vendor::OpenAiResponses;

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

/// Every `id` key anywhere in `v`.
fn ids(v: &Value) -> Vec<String> {
    match v {
        Value::Object(o) => o
            .iter()
            .flat_map(|(k, v)| {
                let mut out = ids(v);
                if k == "id" {
                    out.push(v.to_string());
                }
                out
            })
            .collect(),
        Value::Array(a) => a.iter().flat_map(ids).collect(),
        _ => vec![],
    }
}

#[test]
fn sends_the_documented_request() {
    let fake = FakeServer::start(V, vec![Reply::Turn(Turn::text("ok"))]);
    let p = provider(V, &fake, MODEL, true);
    let mut req = history();
    req.options
        .insert("reasoning_effort".into(), json!("medium"));
    req.options.insert("verbosity".into(), json!("low"));
    req.options.insert("max_output_tokens".into(), json!(4000));
    req.options
        .insert("parallel_tool_calls".into(), json!(false));
    req.cache_key = Some("task-42".into());
    rt().block_on(p.complete(&req))
        .unwrap_or_else(|e| panic!("{e}"));
    let r = &fake.model_requests()[0];
    assert_eq!(r.path, "/responses");
    let bearer = format!("Bearer {KEY}");
    assert_eq!(r.header("authorization"), Some(bearer.as_str()));
    assert_eq!(r.header("x-extra"), Some("yes"));
    assert_eq!(
        r.body,
        json!({
            "model": MODEL,
            "instructions": "You are a test.",
            "input": [
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Fix the bug"}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Looking."}]},
                {"type": "function_call", "call_id": "call_a", "name": "read_file", "arguments": "{\"path\":\"a.py\"}"},
                {"type": "function_call", "call_id": "call_b", "name": "read_file", "arguments": "{\"path\":\"b.py\"}"},
                {"type": "function_call_output", "call_id": "call_a", "output": "1\tprint('a')"},
                {"type": "function_call_output", "call_id": "call_b", "output": "b.py: no such file"}
            ],
            "tools": [{
                "type": "function",
                "name": "read_file",
                "description": "Read a file",
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
                "strict": false
            }],
            "store": false,
            "include": ["reasoning.encrypted_content"],
            "reasoning": {"effort": "medium", "summary": "auto"},
            "text": {"verbosity": "low"},
            "max_output_tokens": 4000,
            "prompt_cache_key": "task-42",
            "parallel_tool_calls": false,
            "stream": true
        })
    );
}

#[test]
fn models_that_do_not_reason_are_not_asked_for_encrypted_reasoning() {
    let fake = FakeServer::start(V, vec![Reply::Turn(Turn::text("ok"))]);
    let p = provider(V, &fake, "gpt-4.1", true);
    let mut req = history();
    req.messages.truncate(1);
    req.tools.clear();
    req.system.clear();
    rt().block_on(p.complete(&req))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        fake.model_requests()[0].body,
        json!({
            "model": "gpt-4.1",
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Fix the bug"}]}],
            "store": false,
            "stream": true
        })
    );
}

#[test]
fn parses_a_stream_with_reasoning_and_parallel_calls_and_replays_it() {
    let fake = FakeServer::start(
        V,
        vec![
            Reply::Turn(turn_with_everything()),
            Reply::Turn(Turn::text("done")),
        ],
    );
    let p = provider(V, &fake, MODEL, true);
    let mut req = history();
    let mut deltas = Vec::new();
    let resp = rt()
        .block_on(p.stream(&req, &mut |d: Delta<'_>| {
            deltas.push(match d {
                Delta::Text(t) => ("text".to_string(), t.to_string()),
                Delta::Reasoning(t) => ("reasoning".to_string(), t.to_string()),
                Delta::ToolCall(n) => ("call".to_string(), n.to_string()),
            })
        }))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.text.as_deref(), Some("I will read both files."));
    assert_eq!(
        resp.reasoning.as_deref(),
        Some("The bug is probably in a.py.")
    );
    assert_eq!(resp.tool_calls.len(), 2);
    assert_eq!(resp.tool_calls[0].id, "call_fake_0001_0");
    assert_eq!(resp.tool_calls[1].id, "call_fake_0001_1");
    assert_eq!(resp.tool_calls[0].arguments, json!({"path": "a.py"}));
    assert_eq!(resp.tool_calls[1].arguments, json!({"path": "dir/b.py"}));
    assert_eq!(resp.stop_reason.as_deref(), Some("tool_calls"));
    assert_eq!(resp.usage.input_tokens, 1200);
    assert_eq!(resp.usage.cached_input_tokens, 1000);
    assert_eq!(resp.usage.output_tokens, 80);
    assert_eq!(resp.usage.reasoning_tokens, 50);
    // 200 plain × $1.25 + 1000 cached × $0.125 + 80 out × $10, per million.
    let want = (200.0 * 1.25 + 1000.0 * 0.125 + 80.0 * 10.0) / 1e6;
    assert!(
        (resp.usage.cost_usd - want).abs() < 1e-12,
        "{}",
        resp.usage.cost_usd
    );
    let joined = |kind: &str| -> (usize, String) {
        let parts: Vec<&str> = deltas
            .iter()
            .filter(|(k, _)| k == kind)
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
    let sig = errand_fakes::signature("The bug is probably in a.py.");
    let native = json!([
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "The bug is probably in a.py."}], "encrypted_content": sig},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "I will read both files."}]},
        {"type": "function_call", "call_id": "call_fake_0001_0", "name": "read_file", "arguments": "{\"path\":\"a.py\"}"},
        {"type": "function_call", "call_id": "call_fake_0001_1", "name": "read_file", "arguments": "{\"path\":\"dir/b.py\"}"}
    ]);
    assert_eq!(
        resp.native,
        Some(Native {
            kind: ProviderKind::OpenaiResponses,
            value: native.clone()
        })
    );

    // The next request carries the output items back verbatim, encrypted reasoning included
    // and ids left out (nothing is stored with store: false), followed by the results.
    req.messages.push(resp.to_message());
    for c in &resp.tool_calls {
        req.messages.push(Message::Tool {
            call_id: c.id.clone(),
            name: c.name.clone(),
            content: format!("contents of {}", c.arguments["path"]),
            is_error: false,
        });
    }
    rt().block_on(p.complete(&req))
        .unwrap_or_else(|e| panic!("{e}"));
    let second = &fake.model_requests()[1].body;
    let input = second["input"].as_array().cloned().unwrap_or_default();
    assert_eq!(input.len(), 6 + 4 + 2, "{second}");
    assert_eq!(Value::Array(input[6..10].to_vec()), native);
    assert_eq!(
        input[10],
        json!({"type": "function_call_output", "call_id": "call_fake_0001_0", "output": "contents of \"a.py\""})
    );
    assert_eq!(input[11]["call_id"], "call_fake_0001_1");
    assert!(ids(second).is_empty(), "no item ids: {:?}", ids(second));
}

#[test]
fn a_turn_from_another_provider_is_rebuilt_from_its_text_and_calls() {
    let fake = FakeServer::start(V, vec![Reply::Turn(Turn::text("ok"))]);
    let p = provider(V, &fake, MODEL, true);
    let mut req = history();
    if let Message::Assistant { native, .. } = &mut req.messages[1] {
        *native = Some(Native {
            kind: ProviderKind::Anthropic,
            value: json!([{"type": "thinking", "thinking": "x", "signature": "s"}]),
        });
    }
    rt().block_on(p.complete(&req))
        .unwrap_or_else(|e| panic!("{e}"));
    let body = &fake.model_requests()[0].body;
    assert_eq!(body["input"][1]["type"], "message");
    assert_eq!(body["input"][2]["call_id"], "call_a");
    assert!(!body.to_string().contains("thinking"), "{body}");
}

#[test]
fn streamed_non_streamed_and_chunked_parse_the_same() {
    // Separate fakes, so every answer is reply number 1 and carries the same ids.
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
    assert_eq!(
        fakes[0].model_requests()[0].body.get("stream"),
        Some(&json!(false))
    );
    assert_eq!(results[0].tool_calls.len(), 2);
    assert!(results[0].native.is_some());
    assert_eq!(results[0], results[1]);
    assert_eq!(results[1], results[2]);
}

#[test]
fn a_text_turn_completes() {
    let fake = FakeServer::start(V, vec![Reply::Turn(Turn::text("All done."))]);
    let p = provider(V, &fake, MODEL, true);
    let resp = rt()
        .block_on(p.complete(&history()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.text.as_deref(), Some("All done."));
    assert_eq!(resp.reasoning, None);
    assert!(resp.tool_calls.is_empty());
    assert_eq!(resp.stop_reason.as_deref(), Some("completed"));
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
    // 26 frames is everything but `response.completed`.
    for (events, abort) in [(5, false), (5, true), (26, false), (26, true)] {
        let e = err_of(Reply::Cut {
            turn: turn_with_everything(),
            events,
            abort,
        });
        assert_eq!(
            e.kind(),
            Some(ErrorKind::StreamCut),
            "{events} {abort}: {e}"
        );
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
            message: "Rate limit reached for gpt-5 on tokens per min (TPM)".into(),
            headers: vec![(header.into(), value.into())],
        });
        assert_eq!(e.kind(), Some(ErrorKind::RateLimited), "{e}");
        assert!(e.retryable());
        assert_eq!(e.retry_after(), Some(want));
    }
}

#[test]
fn a_failed_response_in_the_stream_is_classified() {
    let cases = [
        (FakeKind::Server, ErrorKind::Server, true),
        (FakeKind::Overloaded, ErrorKind::Overloaded, true),
        (FakeKind::RateLimit, ErrorKind::RateLimited, true),
        (FakeKind::QuotaExceeded, ErrorKind::QuotaExceeded, false),
        (FakeKind::ContextLength, ErrorKind::ContextLength, false),
        (FakeKind::InvalidRequest, ErrorKind::BadRequest, false),
        (FakeKind::Authentication, ErrorKind::Auth, false),
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
fn probe_reads_the_model() {
    let fake = FakeServer::start(V, vec![]);
    let p = provider(V, &fake, MODEL, true);
    let ok = rt()
        .block_on(p.probe(None))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ok.contains("model gpt-5 exists"), "{ok}");
    let missing = rt().block_on(p.probe(Some("nope")));
    assert_eq!(
        missing.err().and_then(|e| e.kind()),
        Some(ErrorKind::ModelNotFound)
    );
    let reqs = fake.requests();
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, "/models/gpt-5");
    let bearer = format!("Bearer {KEY}");
    assert_eq!(reqs[0].header("authorization"), Some(bearer.as_str()));
    assert_eq!(reqs[1].path, "/models/nope");
    assert_eq!(fake.model_requests().len(), 0);
}
