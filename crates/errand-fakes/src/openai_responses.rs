//! OpenAI Responses: `POST /v1/responses`, streamed as named events, each with a
//! `sequence_number`: `response.created`, `response.in_progress`, then per output item
//! `response.output_item.added`, its content events (`response.reasoning_summary_part.added`
//! / `response.reasoning_summary_text.delta` / `.done` / `response.reasoning_summary_part.done`
//! for reasoning, `response.content_part.added` / `response.output_text.delta` / `.done` /
//! `response.content_part.done` for text, `response.function_call_arguments.delta` / `.done`
//! for a function call) and `response.output_item.done`, and last `response.completed`
//! carrying the whole Response object. There is no `[DONE]` line. Errors are OpenAI's
//! `{"error": {"message", "type", "param", "code"}}`; a failure after the stream started is a
//! `response.failed` event whose response carries `error: {code, message}`.

use crate::{ErrorKind, Rendered, Turn, frame, halves, signature};
use serde_json::{Value, json};

const CREATED_AT: u64 = 1_760_000_000;

/// The Response object around `output`, in the given status.
fn response(id: &str, model: &str, status: &str, output: Value, usage: Value) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": CREATED_AT,
        "status": status,
        "background": false,
        "error": null,
        "incomplete_details": null,
        "instructions": null,
        "max_output_tokens": null,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "store": false,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": null,
        "metadata": {}
    })
}

/// Numbers events as the API does.
struct Events {
    frames: Vec<String>,
}

impl Events {
    fn push(&mut self, name: &str, mut data: Value) {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.frames.len());
        self.frames.push(frame(name, &data));
    }
}

pub(crate) fn render(turn: &Turn, model: &str, n: usize) -> Rendered {
    let u = turn.usage;
    let usage = json!({
        "input_tokens": u.input,
        "input_tokens_details": {"cached_tokens": u.cached},
        "output_tokens": u.output,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": u.input + u.output
    });
    let id = format!("resp_fake_{n:04}");
    let mut ev = Events { frames: vec![] };
    ev.push(
        "response.created",
        json!({"response": response(&id, model, "in_progress", json!([]), Value::Null)}),
    );
    ev.push(
        "response.in_progress",
        json!({"response": response(&id, model, "in_progress", json!([]), Value::Null)}),
    );
    let mut output = Vec::new();
    if let Some(r) = &turn.reasoning {
        let item_id = format!("rs_fake_{n:04}");
        let idx = output.len();
        let (a, b) = halves(r);
        ev.push(
            "response.output_item.added",
            json!({"output_index": idx, "item": {"id": item_id, "type": "reasoning", "summary": []}}),
        );
        ev.push(
            "response.reasoning_summary_part.added",
            json!({"item_id": item_id, "output_index": idx, "summary_index": 0, "part": {"type": "summary_text", "text": ""}}),
        );
        for part in [a, b] {
            ev.push(
                "response.reasoning_summary_text.delta",
                json!({"item_id": item_id, "output_index": idx, "summary_index": 0, "delta": part}),
            );
        }
        ev.push(
            "response.reasoning_summary_text.done",
            json!({"item_id": item_id, "output_index": idx, "summary_index": 0, "text": r}),
        );
        ev.push(
            "response.reasoning_summary_part.done",
            json!({"item_id": item_id, "output_index": idx, "summary_index": 0, "part": {"type": "summary_text", "text": r}}),
        );
        let item = json!({
            "id": item_id,
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": r}],
            "encrypted_content": signature(r)
        });
        ev.push(
            "response.output_item.done",
            json!({"output_index": idx, "item": item}),
        );
        output.push(item);
    }
    if let Some(t) = &turn.text {
        let item_id = format!("msg_fake_{n:04}");
        let idx = output.len();
        let (a, b) = halves(t);
        ev.push(
            "response.output_item.added",
            json!({"output_index": idx, "item": {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}),
        );
        ev.push(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": idx, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
        );
        for part in [a, b] {
            ev.push(
                "response.output_text.delta",
                json!({"item_id": item_id, "output_index": idx, "content_index": 0, "delta": part, "logprobs": []}),
            );
        }
        ev.push(
            "response.output_text.done",
            json!({"item_id": item_id, "output_index": idx, "content_index": 0, "text": t, "logprobs": []}),
        );
        let part = json!({"type": "output_text", "text": t, "annotations": [], "logprobs": []});
        ev.push(
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": idx, "content_index": 0, "part": part}),
        );
        let item = json!({"id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": [part]});
        ev.push(
            "response.output_item.done",
            json!({"output_index": idx, "item": item}),
        );
        output.push(item);
    }
    for (i, (name, args)) in turn.tool_calls.iter().enumerate() {
        let item_id = format!("fc_fake_{n:04}_{i}");
        let call_id = format!("call_fake_{n:04}_{i}");
        let idx = output.len();
        let arguments = args.to_string();
        let (a, b) = halves(&arguments);
        ev.push(
            "response.output_item.added",
            json!({"output_index": idx, "item": {"id": item_id, "type": "function_call", "status": "in_progress", "arguments": "", "call_id": call_id, "name": name}}),
        );
        for part in [a, b] {
            ev.push(
                "response.function_call_arguments.delta",
                json!({"item_id": item_id, "output_index": idx, "delta": part}),
            );
        }
        ev.push(
            "response.function_call_arguments.done",
            json!({"item_id": item_id, "output_index": idx, "arguments": arguments}),
        );
        let item = json!({"id": item_id, "type": "function_call", "status": "completed", "arguments": arguments, "call_id": call_id, "name": name});
        ev.push(
            "response.output_item.done",
            json!({"output_index": idx, "item": item}),
        );
        output.push(item);
    }
    let done = response(&id, model, "completed", Value::Array(output), usage);
    ev.push("response.completed", json!({"response": done}));
    Rendered {
        frames: ev.frames,
        json: done,
    }
}

/// OpenAI's `type` and `code` for each error class.
pub(crate) fn type_and_code(kind: ErrorKind) -> (&'static str, Option<&'static str>) {
    match kind {
        ErrorKind::InvalidRequest => ("invalid_request_error", None),
        ErrorKind::ContextLength => ("invalid_request_error", Some("context_length_exceeded")),
        ErrorKind::Authentication => ("invalid_request_error", Some("invalid_api_key")),
        ErrorKind::Permission => (
            "invalid_request_error",
            Some("unsupported_country_region_territory"),
        ),
        ErrorKind::NotFound => ("invalid_request_error", Some("model_not_found")),
        ErrorKind::RateLimit => ("tokens", Some("rate_limit_exceeded")),
        ErrorKind::QuotaExceeded => ("insufficient_quota", Some("insufficient_quota")),
        ErrorKind::Overloaded => ("service_unavailable_error", Some("server_is_overloaded")),
        ErrorKind::Server => ("server_error", None),
    }
}

/// `{"error": {...}}`, with `param` naming the request field the error is about.
pub(crate) fn error_body_with(kind: ErrorKind, message: &str, input_param: &str) -> Value {
    let (ty, code) = type_and_code(kind);
    let param = match kind {
        ErrorKind::ContextLength => Some(input_param),
        ErrorKind::NotFound => Some("model"),
        _ => None,
    };
    json!({"error": {"message": message, "type": ty, "param": param, "code": code}})
}

pub(crate) fn error_body(kind: ErrorKind, message: &str) -> Value {
    error_body_with(kind, message, "input")
}

/// A `response.failed` event for a response that had started.
pub(crate) fn stream_error(kind: ErrorKind, message: &str, model: &str, n: usize) -> String {
    let (ty, code) = type_and_code(kind);
    let mut failed = response(
        &format!("resp_fake_{n:04}"),
        model,
        "failed",
        json!([]),
        Value::Null,
    );
    // A prompt the model refuses to take is `invalid_prompt` here.
    let code = match kind {
        ErrorKind::InvalidRequest => "invalid_prompt",
        _ => code.unwrap_or(ty),
    };
    failed["error"] = json!({"code": code, "message": message});
    // Follows the one frame (`response.created`) sent before it.
    frame(
        "response.failed",
        &json!({"type": "response.failed", "sequence_number": 1, "response": failed}),
    )
}

/// `GET /v1/models/{model}`: OpenAI's model families.
pub(crate) fn probe(path: &str) -> Option<Value> {
    let id = path.strip_prefix("/models/")?;
    let known = ["gpt-", "o1", "o3", "o4-", "chatgpt-"];
    known
        .iter()
        .any(|k| id.starts_with(k))
        .then(|| json!({"id": id, "object": "model", "created": CREATED_AT, "owned_by": "openai"}))
}
