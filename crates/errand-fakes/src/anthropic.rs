//! Anthropic Messages: `POST /v1/messages`, streamed as `message_start`, `ping`,
//! `content_block_start` / `content_block_delta` / `content_block_stop` per block,
//! `message_delta` (stop reason and output tokens) and `message_stop`.

use crate::{ErrorKind, Rendered, Turn, frame, halves, signature};
use serde_json::{Value, json};

pub(crate) fn render(turn: &Turn, model: &str, n: usize) -> Rendered {
    let u = turn.usage;
    // The API's input_tokens excludes cache reads and writes.
    let usage_start = json!({
        "input_tokens": u.input.saturating_sub(u.cached).saturating_sub(u.cache_write),
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cached,
        "output_tokens": 1
    });
    let stop = if turn.tool_calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    };
    let id = format!("msg_fake_{n:04}");
    let mut content = Vec::new();
    let mut frames = vec![
        frame(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "content": [],
                "model": model, "stop_reason": null, "stop_sequence": null,
                "usage": usage_start
            }}),
        ),
        frame("ping", &json!({"type": "ping"})),
    ];
    let mut index = 0;
    if let Some(r) = &turn.reasoning {
        let (a, b) = halves(r);
        let sig = signature(r);
        frames.push(frame("content_block_start", &json!({"type": "content_block_start", "index": index, "content_block": {"type": "thinking", "thinking": ""}})));
        for part in [a, b] {
            frames.push(frame("content_block_delta", &json!({"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": part}})));
        }
        frames.push(frame("content_block_delta", &json!({"type": "content_block_delta", "index": index, "delta": {"type": "signature_delta", "signature": sig}})));
        frames.push(frame(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
        content.push(json!({"type": "thinking", "thinking": r, "signature": sig}));
        index += 1;
    }
    if let Some(t) = &turn.text {
        let (a, b) = halves(t);
        frames.push(frame("content_block_start", &json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})));
        for part in [a, b] {
            frames.push(frame("content_block_delta", &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": part}})));
        }
        frames.push(frame(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
        content.push(json!({"type": "text", "text": t}));
        index += 1;
    }
    for (i, (name, args)) in turn.tool_calls.iter().enumerate() {
        let call_id = format!("toolu_fake_{n:04}_{i}");
        let (a, b) = halves(&args.to_string());
        frames.push(frame("content_block_start", &json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}}})));
        for part in [a, b] {
            frames.push(frame("content_block_delta", &json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": part}})));
        }
        frames.push(frame(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
        content.push(json!({"type": "tool_use", "id": call_id, "name": name, "input": args}));
        index += 1;
    }
    frames.push(frame(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": u.output}}),
    ));
    frames.push(frame("message_stop", &json!({"type": "message_stop"})));
    let mut usage = usage_start;
    usage["output_tokens"] = json!(u.output);
    Rendered {
        frames,
        json: json!({
            "id": id, "type": "message", "role": "assistant", "content": content,
            "model": model, "stop_reason": stop, "stop_sequence": null, "usage": usage
        }),
    }
}

fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest | ErrorKind::ContextLength => "invalid_request_error",
        ErrorKind::Authentication => "authentication_error",
        ErrorKind::Permission => "permission_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::RateLimit | ErrorKind::QuotaExceeded => "rate_limit_error",
        ErrorKind::Overloaded => "overloaded_error",
        ErrorKind::Server => "api_error",
    }
}

pub(crate) fn error_body(kind: ErrorKind, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(kind), "message": message}})
}

pub(crate) fn stream_error(kind: ErrorKind, message: &str) -> String {
    frame("error", &error_body(kind, message))
}

/// `GET /v1/models/{model_id}`, and the list at `GET /v1/models`.
pub(crate) fn probe(path: &str) -> Option<Value> {
    if path == "/v1/models" {
        return Some(json!({"data": [
            {"type": "model", "id": "claude-sonnet-4-5", "display_name": "Fake claude-sonnet-4-5", "created_at": "2025-09-29T00:00:00Z"}
        ], "has_more": false, "first_id": "claude-sonnet-4-5", "last_id": "claude-sonnet-4-5"}));
    }
    let id = path.strip_prefix("/v1/models/")?;
    id.starts_with("claude").then(|| {
        json!({"type": "model", "id": id, "display_name": format!("Fake {id}"), "created_at": "2025-09-29T00:00:00Z"})
    })
}
