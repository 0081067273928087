//! The Gemini adapter against a fake that speaks the documented wire format.

mod common;

use common::*;
use errand_fakes::{ErrorKind as FakeKind, FakeServer, FakeUsage, Reply, Turn, Vendor};
use errand_model::gemini::parse_response;
use errand_model::{Delta, ErrorKind, Message, ModelError, Native, ProviderKind, ToolCall};
use serde_json::{Value, json};
use std::time::Duration;

const MODEL: &str = "gemini-2.5-pro";
const REASONING: &str = "The bug is probably in a.py.";

fn turn_with_everything() -> Turn {
    Turn {
        text: Some("I will read both files.".into()),
        reasoning: Some(REASONING.into()),
        tool_calls: vec![
            ("read_file".into(), json!({"path": "a.py"})),
            ("read_file".into(), json!({"path": "dir/b.py"})),
        ],
        usage: FakeUsage {
            input: 1200,
            cached: 1000,
            cache_write: 0,
            output: 80,
            reasoning: 30,
        },
    }
}

/// The signature the fake puts on the first function call of reply `n`.
fn call_signature(n: usize, name: &str) -> String {
    errand_fakes::signature(&format!("call {n} {name}"))
}

#[test]
fn sends_the_documented_request() {
    let fake = FakeServer::start(Vendor::Gemini, vec![Reply::Turn(Turn::text("ok"))]);
    let p = provider(Vendor::Gemini, &fake, MODEL, true);
    let mut req = history();
    req.options
        .insert("reasoning_effort".into(), json!("medium"));
    req.options.insert("temperature".into(), json!(1));
    rt().block_on(p.complete(&req))
        .unwrap_or_else(|e| panic!("{e}"));
    let r = &fake.model_requests()[0];
    assert_eq!(r.path, "/models/gemini-2.5-pro:streamGenerateContent");
    // The key travels in its header only, never in the URL.
    assert_eq!(r.query.as_deref(), Some("alt=sse"));
    assert_eq!(r.header("x-goog-api-key"), Some(KEY));
    assert_eq!(r.header("x-extra"), Some("yes"));
    assert!(r.header("authorization").is_none());
    assert_eq!(
        r.body,
        json!({
            "systemInstruction": {"parts": [{"text": "You are a test."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Fix the bug"}]},
                // Rebuilt from the portable fields: the other provider's call ids stay out.
                {"role": "model", "parts": [
                    {"text": "Looking."},
                    {"functionCall": {"name": "read_file", "args": {"path": "a.py"}}},
                    {"functionCall": {"name": "read_file", "args": {"path": "b.py"}}}
                ]},
                // Both results in one user content, the failed one as an error.
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "read_file", "response": {"output": "1\tprint('a')"}}},
                    {"functionResponse": {"name": "read_file", "response": {"error": "b.py: no such file"}}}
                ]}
            ],
            "tools": [{"functionDeclarations": [{
                "name": "read_file",
                "description": "Read a file",
                "parametersJsonSchema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
            }]}],
            "generationConfig": {
                "temperature": 1,
                "thinkingConfig": {"thinkingBudget": 8192, "includeThoughts": true}
            }
        })
    );
}

#[test]
fn options_map_to_generation_config_and_the_rest_goes_top_level() {
    let fake = FakeServer::start(
        Vendor::Gemini,
        vec![
            Reply::Turn(Turn::text("ok")),
            Reply::Turn(Turn::text("ok")),
            Reply::Turn(Turn::text("ok")),
        ],
    );
    let p = provider(Vendor::Gemini, &fake, MODEL, false);
    let mut req = history();
    req.tools.clear();
    req.options.insert("max_output_tokens".into(), json!(4096));
    req.options.insert("thinking_level".into(), json!("low"));
    // Refused together with a level by the API, so only the level is sent.
    req.options.insert("reasoning_effort".into(), json!("high"));
    req.options
        .insert("generationConfig".into(), json!({"topP": 0.5}));
    req.options.insert(
        "safetySettings".into(),
        json!([{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]),
    );
    rt().block_on(p.complete(&req))
        .unwrap_or_else(|e| panic!("{e}"));
    req.options.clear();
    req.options.insert("thinking_budget".into(), json!(-1));
    rt().block_on(p.complete(&req))
        .unwrap_or_else(|e| panic!("{e}"));
    req.options.clear();
    req.options.insert("reasoning_effort".into(), json!("none"));
    rt().block_on(p.complete(&req))
        .unwrap_or_else(|e| panic!("{e}"));

    let bodies: Vec<Value> = fake.model_requests().into_iter().map(|r| r.body).collect();
    assert_eq!(
        fake.model_requests()[0].path,
        "/models/gemini-2.5-pro:generateContent"
    );
    assert_eq!(fake.model_requests()[0].query, None);
    assert!(bodies[0].get("tools").is_none());
    assert_eq!(
        bodies[0]["generationConfig"],
        json!({"maxOutputTokens": 4096, "topP": 0.5, "thinkingConfig": {"thinkingLevel": "low", "includeThoughts": true}})
    );
    assert_eq!(
        bodies[0]["safetySettings"],
        json!([{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}])
    );
    for key in ["max_output_tokens", "thinking_level", "reasoning_effort"] {
        assert!(bodies[0].get(key).is_none(), "{key} leaked into the body");
    }
    assert_eq!(
        bodies[1]["generationConfig"],
        json!({"thinkingConfig": {"thinkingBudget": -1, "includeThoughts": true}})
    );
    // Thinking off: no thought summaries asked for.
    assert_eq!(
        bodies[2]["generationConfig"],
        json!({"thinkingConfig": {"thinkingBudget": 0}})
    );
}

#[test]
fn parses_a_stream_with_thoughts_and_parallel_calls_and_replays_it() {
    let fake = FakeServer::start(
        Vendor::Gemini,
        vec![
            Reply::Turn(turn_with_everything()),
            Reply::Turn(Turn::text("done")),
        ],
    );
    let p = provider(Vendor::Gemini, &fake, MODEL, true);
    let mut req = history();
    let mut deltas = Vec::new();
    let resp = rt()
        .block_on(p.stream(&req, &mut |d: Delta<'_>| deltas.push(format!("{d:?}"))))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.text.as_deref(), Some("I will read both files."));
    assert_eq!(resp.reasoning.as_deref(), Some(REASONING));
    assert_eq!(
        resp.tool_calls,
        vec![
            ToolCall {
                id: "gemini-call-1-0".into(),
                name: "read_file".into(),
                arguments: json!({"path": "a.py"}),
            },
            ToolCall {
                id: "gemini-call-1-1".into(),
                name: "read_file".into(),
                arguments: json!({"path": "dir/b.py"}),
            },
        ]
    );
    assert_eq!(resp.stop_reason.as_deref(), Some("STOP"));
    // The last chunk's usage, not the first chunk's partial one.
    assert_eq!(resp.usage.input_tokens, 1200);
    assert_eq!(resp.usage.cached_input_tokens, 1000);
    assert_eq!(resp.usage.cache_write_tokens, 0);
    assert_eq!(resp.usage.output_tokens, 80);
    assert_eq!(resp.usage.reasoning_tokens, 30);
    // 200 plain × $1.25 + 1000 cached × $0.31 + 80 out (thinking included) × $10, per million.
    let want = (200.0 * 1.25 + 1000.0 * 0.31 + 80.0 * 10.0) / 1e6;
    assert!(
        (resp.usage.cost_usd - want).abs() < 1e-12,
        "{}",
        resp.usage.cost_usd
    );
    let reasoning: Vec<&String> = deltas
        .iter()
        .filter(|d| d.starts_with("Reasoning"))
        .collect();
    assert_eq!(reasoning.len(), 2, "{deltas:?}");
    assert_eq!(
        deltas.iter().filter(|d| d.starts_with("Text")).count(),
        2,
        "{deltas:?}"
    );
    assert_eq!(
        deltas.iter().filter(|d| d.starts_with("ToolCall")).count(),
        2,
        "{deltas:?}"
    );

    // The next request replays the parts verbatim, thought signatures where they came.
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
    assert_eq!(
        second["contents"][3],
        json!({"role": "model", "parts": [
            {"text": REASONING, "thought": true, "thoughtSignature": errand_fakes::signature(REASONING)},
            {"text": "I will read both files."},
            {"functionCall": {"name": "read_file", "args": {"path": "a.py"}}, "thoughtSignature": call_signature(1, "read_file")},
            {"functionCall": {"name": "read_file", "args": {"path": "dir/b.py"}}}
        ]})
    );
    // Gemini sent no call ids, so none go back.
    assert_eq!(
        second["contents"][4],
        json!({"role": "user", "parts": [
            {"functionResponse": {"name": "read_file", "response": {"output": "contents of \"a.py\""}}},
            {"functionResponse": {"name": "read_file", "response": {"output": "contents of \"dir/b.py\""}}}
        ]})
    );
    assert_eq!(second["contents"].as_array().map(Vec::len), Some(5));
}

#[test]
fn call_ids_gemini_sent_go_back_and_generated_ones_do_not() {
    let fake = FakeServer::start(Vendor::Gemini, vec![Reply::Turn(Turn::text("ok"))]);
    let p = provider(Vendor::Gemini, &fake, MODEL, true);
    let mut req = history();
    let parts = json!([
        {"functionCall": {"id": "fc-7", "name": "read_file", "args": {"path": "x"}}, "thoughtSignature": "c2ln"},
        {"functionCall": {"name": "read_file", "args": {"path": "y"}}}
    ]);
    req.messages.push(Message::Assistant {
        text: None,
        tool_calls: vec![
            ToolCall {
                id: "fc-7".into(),
                name: "read_file".into(),
                arguments: json!({"path": "x"}),
            },
            ToolCall {
                id: "gemini-call-1-1".into(),
                name: "read_file".into(),
                arguments: json!({"path": "y"}),
            },
        ],
        native: Some(Native {
            kind: ProviderKind::Gemini,
            value: parts.clone(),
        }),
    });
    for id in ["fc-7", "gemini-call-1-1"] {
        req.messages.push(Message::Tool {
            call_id: id.into(),
            name: "read_file".into(),
            content: "ok".into(),
            is_error: false,
        });
    }
    // A user message after the results joins the same user content, after them.
    req.messages.push(Message::User {
        text: "Go on".into(),
    });
    rt().block_on(p.complete(&req))
        .unwrap_or_else(|e| panic!("{e}"));
    let body = &fake.model_requests()[0].body;
    assert_eq!(
        body["contents"][3],
        json!({"role": "model", "parts": parts})
    );
    assert_eq!(
        body["contents"][4],
        json!({"role": "user", "parts": [
            {"functionResponse": {"id": "fc-7", "name": "read_file", "response": {"output": "ok"}}},
            {"functionResponse": {"name": "read_file", "response": {"output": "ok"}}},
            {"text": "Go on"}
        ]})
    );
}

#[test]
fn non_streamed_and_chunked_streams_parse_the_same() {
    // Two fakes, so both answers are reply number 1 and carry the same signatures.
    let fake = FakeServer::start(Vendor::Gemini, vec![Reply::Turn(turn_with_everything())]);
    let fake2 = FakeServer::start(
        Vendor::Gemini,
        vec![Reply::Chunked {
            turn: turn_with_everything(),
            chunk: 7,
        }],
    );
    let fake3 = FakeServer::start(Vendor::Gemini, vec![Reply::Turn(turn_with_everything())]);
    let plain = provider(Vendor::Gemini, &fake, MODEL, false);
    let chunked = provider(Vendor::Gemini, &fake2, MODEL, true);
    let streamed = provider(Vendor::Gemini, &fake3, MODEL, true);
    let a = rt()
        .block_on(plain.complete(&history()))
        .unwrap_or_else(|e| panic!("{e}"));
    let b = rt()
        .block_on(chunked.complete(&history()))
        .unwrap_or_else(|e| panic!("{e}"));
    let c = rt()
        .block_on(streamed.complete(&history()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        fake.model_requests()[0].path,
        "/models/gemini-2.5-pro:generateContent"
    );
    assert_eq!(fake.model_requests()[0].query, None);
    assert!(a.native.is_some());
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a.tool_calls.len(), 2);
    assert_eq!(a.usage.output_tokens, 80);
}

#[test]
fn signatures_stay_on_the_text_run_they_close() {
    let fake = FakeServer::start(Vendor::Gemini, vec![]);
    let r = resolved(Vendor::Gemini, &fake, MODEL, true);
    let whole = json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "Think", "thought": true},
            {"text": "ing.", "thought": true},
            {"text": "", "thought": true, "thoughtSignature": "c2lnLTE="},
            {"text": "Answer "},
            {"text": "here.", "thoughtSignature": "c2lnLTI="},
            {"text": " More."},
            {"text": ""}
        ]}, "finishReason": "MAX_TOKENS"}]
    });
    let resp = parse_response(&r, &whole, 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.reasoning.as_deref(), Some("Thinking."));
    assert_eq!(resp.text.as_deref(), Some("Answer here. More."));
    assert_eq!(resp.stop_reason.as_deref(), Some("MAX_TOKENS"));
    assert_eq!(
        resp.native.map(|n| n.value),
        Some(json!([
            {"text": "Thinking.", "thought": true, "thoughtSignature": "c2lnLTE="},
            {"text": "Answer here.", "thoughtSignature": "c2lnLTI="},
            {"text": " More."}
        ]))
    );
    assert_eq!(resp.usage, Default::default());
}

#[test]
fn blocked_prompts_and_bad_finish_reasons_are_errors() {
    let fake = FakeServer::start(Vendor::Gemini, vec![]);
    let r = resolved(Vendor::Gemini, &fake, MODEL, true);
    let finished = |reason: &str| json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "partial"}]}, "finishReason": reason, "finishMessage": "details here"}]});
    let kind_of = |v: &Value| {
        parse_response(&r, v, 0)
            .err()
            .unwrap_or_else(|| panic!("expected an error for {v}"))
    };
    let e = kind_of(
        &json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 9}}),
    );
    assert_eq!(e.kind(), Some(ErrorKind::BadRequest));
    assert!(e.to_string().contains("blocked the prompt"), "{e}");
    assert!(e.to_string().contains("PROHIBITED_CONTENT"), "{e}");
    for reason in [
        "SAFETY",
        "RECITATION",
        "PROHIBITED_CONTENT",
        "SPII",
        "OTHER",
    ] {
        let e = kind_of(&finished(reason));
        assert_eq!(e.kind(), Some(ErrorKind::BadRequest), "{reason}");
        assert!(!e.retryable());
        assert!(e.to_string().contains(reason), "{e}");
        assert!(e.to_string().contains("details here"), "{e}");
    }
    for reason in [
        "MALFORMED_FUNCTION_CALL",
        "UNEXPECTED_TOOL_CALL",
        "TOO_MANY_TOOL_CALLS",
    ] {
        let e = kind_of(&finished(reason));
        assert!(e.retryable(), "{reason}: {e}");
        assert!(e.to_string().contains(reason), "{e}");
    }
    let e = kind_of(&finished("MISSING_THOUGHT_SIGNATURE"));
    assert!(!e.retryable());
    assert!(e.to_string().contains("thoughtSignature"), "{e}");
    let e = kind_of(&json!({"candidates": []}));
    assert_eq!(e.kind(), Some(ErrorKind::BadResponse));
    // A normal end keeps its text.
    let ok = parse_response(&r, &finished("STOP"), 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.text.as_deref(), Some("partial"));
}

fn err_of(reply: Reply) -> ModelError {
    let fake = FakeServer::start(Vendor::Gemini, vec![reply]);
    let p = provider(Vendor::Gemini, &fake, MODEL, true);
    match rt().block_on(p.complete(&history())) {
        Ok(r) => panic!("expected an error, got {r:?}"),
        Err(e) => e,
    }
}

#[test]
fn cut_streams_are_retryable_errors() {
    // Six frames: two thought pieces, two text pieces, the calls, the end.
    for (events, abort) in [(5, false), (5, true), (0, false), (1, true)] {
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
        (
            400,
            FakeKind::InvalidRequest,
            "Invalid JSON payload received.",
            ErrorKind::BadRequest,
            false,
        ),
        (
            401,
            FakeKind::Authentication,
            "Request had invalid authentication credentials.",
            ErrorKind::Auth,
            false,
        ),
        (
            403,
            FakeKind::Permission,
            "Permission denied: Consumer has been suspended.",
            ErrorKind::PermissionDenied,
            false,
        ),
        (
            404,
            FakeKind::NotFound,
            "models/gemini-0 is not found for API version v1beta, or is not supported for generateContent.",
            ErrorKind::ModelNotFound,
            false,
        ),
        (
            500,
            FakeKind::Server,
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
            ErrorKind::Server,
            true,
        ),
        (
            503,
            FakeKind::Overloaded,
            "The model is overloaded. Please try again later.",
            ErrorKind::Overloaded,
            true,
        ),
        (
            400,
            FakeKind::ContextLength,
            "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            ErrorKind::ContextLength,
            false,
        ),
        (
            429,
            FakeKind::QuotaExceeded,
            "You exceeded your current quota, please check your plan and billing details.",
            ErrorKind::QuotaExceeded,
            false,
        ),
    ];
    for (status, fk, message, want, retry) in cases {
        let e = err_of(Reply::error(status, fk, message));
        assert_eq!(e.kind(), Some(want), "{status}: {e}");
        assert_eq!(e.retryable(), retry, "{status}");
        assert!(e.to_string().contains(message), "{e}");
    }
    let e = err_of(Reply::error(403, FakeKind::Permission, "Permission denied"));
    assert!(e.to_string().contains(KEY_VAR), "{e}");
}

#[test]
fn a_bad_key_is_an_auth_error_that_names_the_variable() {
    // Gemini answers a wrong key with 400 INVALID_ARGUMENT, not 401.
    let e = err_of(Reply::error(
        400,
        FakeKind::Authentication,
        "API key not valid. Please pass a valid API key.",
    ));
    assert_eq!(e.kind(), Some(ErrorKind::Auth), "{e}");
    assert!(!e.retryable());
    assert_eq!(
        e.to_string(),
        format!(
            "fake: authentication failed (HTTP 400): API key not valid. Please pass a valid API key. — check the key in {KEY_VAR}"
        )
    );
    assert!(!e.to_string().contains(KEY), "the key must never show: {e}");
}

#[test]
fn rate_limits_wait_for_the_retry_delay() {
    // Google's per-minute limits speak of quota and billing too; the RetryInfo says waiting
    // helps.
    for message in [
        "Resource has been exhausted (e.g. check quota).",
        "You exceeded your current quota, please check your plan and billing details.",
    ] {
        let e = err_of(Reply::error(429, FakeKind::RateLimit, message));
        assert_eq!(e.kind(), Some(ErrorKind::RateLimited), "{e}");
        assert!(e.retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(17)));
    }
}

#[test]
fn errors_inside_the_stream_are_classified() {
    let cases = [
        (
            FakeKind::Overloaded,
            "The model is overloaded. Please try again later.",
            ErrorKind::Overloaded,
        ),
        (
            FakeKind::Server,
            "An internal error has occurred.",
            ErrorKind::Server,
        ),
        (
            FakeKind::RateLimit,
            "Resource has been exhausted (e.g. check quota).",
            ErrorKind::RateLimited,
        ),
        (
            FakeKind::NotFound,
            "models/x is not found",
            ErrorKind::ModelNotFound,
        ),
        (
            FakeKind::InvalidRequest,
            "Request contains an invalid argument.",
            ErrorKind::BadRequest,
        ),
    ];
    for (fk, message, want) in cases {
        let e = err_of(Reply::StreamError {
            kind: fk,
            message: message.into(),
        });
        assert_eq!(e.kind(), Some(want), "{e}");
        assert!(e.to_string().contains(message), "{e}");
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
    let fake = FakeServer::start(Vendor::Gemini, vec![]);
    let p = provider(Vendor::Gemini, &fake, MODEL, true);
    let ok = rt()
        .block_on(p.probe(None))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ok.contains("Fake gemini-2.5-pro"), "{ok}");
    assert!(ok.contains("1048576 input tokens"), "{ok}");
    let missing = rt().block_on(p.probe(Some("nope")));
    assert_eq!(
        missing.err().and_then(|e| e.kind()),
        Some(ErrorKind::ModelNotFound)
    );
    let reqs = fake.requests();
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, "/models/gemini-2.5-pro");
    assert_eq!(reqs[0].query, None);
    assert_eq!(reqs[0].header("x-goog-api-key"), Some(KEY));
    assert_eq!(reqs[1].path, "/models/nope");
    assert_eq!(fake.model_requests().len(), 0);
}
