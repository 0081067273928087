//! OpenAI Chat Completions: `POST /v1/chat/completions`, streamed as unnamed `data:` chunks
//! (`chat.completion.chunk` objects): the role first, then content deltas, tool calls by
//! `index` (id, type and name in the first fragment, then argument fragments), a chunk with
//! the `finish_reason`, the usage chunk with no choices (the request asks for
//! `stream_options.include_usage`; every other chunk then has `"usage": null`), and
//! `data: [DONE]`.
//!
//! OpenAI itself does not return reasoning here; the compatible servers that do (vLLM,
//! DeepSeek) put it in `reasoning_content`, which is what the fake sends for a turn with
//! reasoning. Errors are OpenAI's `{"error": {...}}` body; an error after the stream started is
//! a `data:` chunk holding that body.

use crate::openai_responses::error_body_with;
use crate::{ErrorKind, Rendered, Turn, frame, halves};
use serde_json::{Value, json};

const CREATED: u64 = 1_760_000_000;

/// The models `GET /v1/models` lists.
pub(crate) const MODELS: &[&str] = &["gpt-4.1-mini", "gpt-5-mini", "qwen2.5-coder:latest"];

pub(crate) fn render(turn: &Turn, model: &str, n: usize) -> Rendered {
    let u = turn.usage;
    let usage = json!({
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": u.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    });
    let id = format!("chatcmpl-fake{n:04}");
    let fingerprint = "fp_fake";
    let chunk = |delta: Value, finish: Option<&str>| {
        frame(
            "",
            &json!({
                "id": id, "object": "chat.completion.chunk", "created": CREATED, "model": model,
                "service_tier": "default", "system_fingerprint": fingerprint,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                "usage": null
            }),
        )
    };
    let mut frames = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        None,
    )];
    let mut message =
        json!({"role": "assistant", "content": turn.text, "refusal": null, "annotations": []});
    if let Some(r) = &turn.reasoning {
        let (a, b) = halves(r);
        for part in [a, b] {
            frames.push(chunk(json!({"reasoning_content": part}), None));
        }
        message["reasoning_content"] = json!(r);
    }
    if let Some(t) = &turn.text {
        let (a, b) = halves(t);
        for part in [a, b] {
            frames.push(chunk(json!({"content": part}), None));
        }
    }
    let mut calls = Vec::new();
    for (i, (name, args)) in turn.tool_calls.iter().enumerate() {
        let call_id = format!("call_fake_{n:04}_{i}");
        let arguments = args.to_string();
        let (a, b) = halves(&arguments);
        frames.push(chunk(
            json!({"tool_calls": [{"index": i, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
            None,
        ));
        for part in [a, b] {
            frames.push(chunk(
                json!({"tool_calls": [{"index": i, "function": {"arguments": part}}]}),
                None,
            ));
        }
        calls.push(json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}));
    }
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    frames.push(chunk(json!({}), Some(finish)));
    frames.push(frame(
        "",
        &json!({
            "id": id, "object": "chat.completion.chunk", "created": CREATED, "model": model,
            "service_tier": "default", "system_fingerprint": fingerprint,
            "choices": [], "usage": usage
        }),
    ));
    frames.push("data: [DONE]\n\n".to_string());
    Rendered {
        frames,
        json: json!({
            "id": id, "object": "chat.completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage, "service_tier": "default", "system_fingerprint": fingerprint
        }),
    }
}

pub(crate) fn error_body(kind: ErrorKind, message: &str) -> Value {
    error_body_with(kind, message, "messages")
}

/// An error chunk after the stream started.
pub(crate) fn stream_error(kind: ErrorKind, message: &str) -> String {
    frame("", &error_body(kind, message))
}

/// `GET /v1/models` (the list) and `GET /v1/models/{model}`.
pub(crate) fn probe(path: &str) -> Option<Value> {
    let entry =
        |id: &str| json!({"id": id, "object": "model", "created": CREATED, "owned_by": "fake"});
    if path == "/models" {
        return Some(
            json!({"object": "list", "data": MODELS.iter().map(|m| entry(m)).collect::<Vec<_>>()}),
        );
    }
    let id = path.strip_prefix("/models/")?;
    MODELS.contains(&id).then(|| entry(id))
}
