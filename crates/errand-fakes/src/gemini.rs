//! Google Gemini API: `POST /v1beta/models/{model}:generateContent` answers with one
//! `GenerateContentResponse`; `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`
//! answers with a stream of them, one per `data:` line, with no event names and no end marker:
//! the chunk that carries `finishReason` (and the final `usageMetadata`) is the last one.
//!
//! A streamed turn is rendered the way the API sends it: thought-summary parts
//! (`"thought": true`) first, their `thoughtSignature` on the last thought chunk; the answer's
//! text split over two chunks; every function call of the turn whole, in one chunk (parallel
//! calls), the first one carrying a `thoughtSignature`; then a closing chunk with an empty text
//! part, `finishReason: STOP` and the usage. The first chunk carries a partial `usageMetadata`
//! (prompt tokens only), as the API reports usage on every chunk and only the last one is final.
//! The API sends no function-call ids here, as the Gemini Developer API mostly does not.
//!
//! Errors follow Google's JSON error shape: `{"error": {"code", "message", "status",
//! "details"}}`, with a bad key answered as 400 `INVALID_ARGUMENT` and an `ErrorInfo` whose
//! reason is `API_KEY_INVALID`, and a rate limit as 429 `RESOURCE_EXHAUSTED` with a
//! `QuotaFailure` and a `RetryInfo` whose `retryDelay` is always `"17s"`.

use crate::{ErrorKind, Rendered, Turn, frame, halves, signature};
use serde_json::{Map, Value, json};

/// The `retryDelay` of every rate-limit error, in seconds.
const RETRY_DELAY_SECS: u64 = 17;

fn usage_metadata(turn: &Turn) -> Value {
    let u = turn.usage;
    let mut m = Map::new();
    m.insert("promptTokenCount".into(), json!(u.input));
    // Thinking tokens are counted apart from the candidates' tokens.
    m.insert(
        "candidatesTokenCount".into(),
        json!(u.output.saturating_sub(u.reasoning)),
    );
    m.insert("totalTokenCount".into(), json!(u.input + u.output));
    // Zero counts are left out, as proto3 JSON leaves out default values.
    if u.cached > 0 {
        m.insert("cachedContentTokenCount".into(), json!(u.cached));
    }
    if u.reasoning > 0 {
        m.insert("thoughtsTokenCount".into(), json!(u.reasoning));
    }
    m.insert(
        "promptTokensDetails".into(),
        json!([{"modality": "TEXT", "tokenCount": u.input}]),
    );
    Value::Object(m)
}

/// The thought signature of the first function call of turn `n`.
fn call_signature(n: usize, name: &str) -> String {
    signature(&format!("call {n} {name}"))
}

/// One streamed `GenerateContentResponse` holding `parts`.
fn chunk(parts: Vec<Value>, model: &str, response_id: &str) -> Value {
    json!({
        "candidates": [{"content": {"parts": parts, "role": "model"}, "index": 0}],
        "modelVersion": model,
        "responseId": response_id
    })
}

pub(crate) fn render(turn: &Turn, model: &str, n: usize) -> Rendered {
    let response_id = format!("fake-response-{n:04}");
    let mut chunks: Vec<Value> = Vec::new();
    let mut parts: Vec<Value> = Vec::new();
    if let Some(r) = &turn.reasoning {
        let (a, b) = halves(r);
        let sig = signature(r);
        chunks.push(chunk(
            vec![json!({"text": a, "thought": true})],
            model,
            &response_id,
        ));
        chunks.push(chunk(
            vec![json!({"text": b, "thought": true, "thoughtSignature": sig})],
            model,
            &response_id,
        ));
        parts.push(json!({"text": r, "thought": true, "thoughtSignature": sig}));
    }
    if let Some(t) = &turn.text {
        let (a, b) = halves(t);
        for piece in [a, b] {
            chunks.push(chunk(vec![json!({"text": piece})], model, &response_id));
        }
        parts.push(json!({"text": t}));
    }
    if !turn.tool_calls.is_empty() {
        let calls: Vec<Value> = turn
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, (name, args))| {
                let mut part = json!({"functionCall": {"name": name, "args": args}});
                // Parallel calls: only the first one carries the signature.
                if i == 0 {
                    part["thoughtSignature"] = json!(call_signature(n, name));
                }
                part
            })
            .collect();
        chunks.push(chunk(calls.clone(), model, &response_id));
        parts.extend(calls);
    }
    let usage = usage_metadata(turn);
    if let Some(first) = chunks.first_mut() {
        first["usageMetadata"] = json!({
            "promptTokenCount": turn.usage.input,
            "totalTokenCount": turn.usage.input
        });
    }
    let mut last = chunk(vec![json!({"text": ""})], model, &response_id);
    last["candidates"][0]["finishReason"] = json!("STOP");
    last["usageMetadata"] = usage.clone();
    chunks.push(last);
    Rendered {
        frames: chunks.iter().map(|c| frame("", c)).collect(),
        json: json!({
            "candidates": [{
                "content": {"parts": parts, "role": "model"},
                "finishReason": "STOP",
                "index": 0
            }],
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": response_id
        }),
    }
}

/// Google's canonical status name for an error class at an HTTP status.
fn status_name(status: u16, kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest | ErrorKind::ContextLength => "INVALID_ARGUMENT",
        // A wrong key is a 400 INVALID_ARGUMENT on this API, not a 401.
        ErrorKind::Authentication if status == 400 => "INVALID_ARGUMENT",
        ErrorKind::Authentication => "UNAUTHENTICATED",
        ErrorKind::Permission => "PERMISSION_DENIED",
        ErrorKind::NotFound => "NOT_FOUND",
        ErrorKind::RateLimit | ErrorKind::QuotaExceeded => "RESOURCE_EXHAUSTED",
        ErrorKind::Overloaded => "UNAVAILABLE",
        ErrorKind::Server => "INTERNAL",
    }
}

fn details(status: u16, kind: ErrorKind) -> Option<Value> {
    let help = json!({
        "@type": "type.googleapis.com/google.rpc.Help",
        "links": [{"description": "Gemini API rate limits", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]
    });
    let quota = |id: &str| {
        json!({
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                "quotaId": id,
                "quotaDimensions": {"location": "global", "model": "gemini-2.5-pro"},
                "quotaValue": "5"
            }]
        })
    };
    Some(match kind {
        ErrorKind::Authentication if status == 400 => json!([{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"}
        }]),
        ErrorKind::RateLimit => json!([
            quota("GenerateRequestsPerMinutePerProjectPerModel"),
            help,
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{RETRY_DELAY_SECS}s")}
        ]),
        // A used-up daily quota: no RetryInfo, waiting a minute does not help.
        ErrorKind::QuotaExceeded => {
            json!([quota("GenerateRequestsPerDayPerProjectPerModel"), help])
        }
        _ => return None,
    })
}

pub(crate) fn error_body(status: u16, kind: ErrorKind, message: &str) -> Value {
    let mut error = json!({
        "code": status,
        "message": message,
        "status": status_name(status, kind)
    });
    if let Some(d) = details(status, kind) {
        error["details"] = d;
    }
    json!({ "error": error })
}

/// An error after the stream started: the same error object, as one more `data:` chunk.
pub(crate) fn stream_error(kind: ErrorKind, message: &str) -> String {
    let status = match kind {
        ErrorKind::InvalidRequest | ErrorKind::ContextLength => 400,
        ErrorKind::Authentication => 401,
        ErrorKind::Permission => 403,
        ErrorKind::NotFound => 404,
        ErrorKind::RateLimit | ErrorKind::QuotaExceeded => 429,
        ErrorKind::Overloaded => 503,
        ErrorKind::Server => 500,
    };
    frame("", &error_body(status, kind, message))
}

/// `GET /v1beta/models/{model}`: the `Model` resource. Only `gemini*` models exist.
pub(crate) fn probe(path: &str) -> Option<Value> {
    if path == "/models" {
        return probe("/models/gemini-2.5-pro").map(|m| json!({"models": [m]}));
    }
    let id = path.strip_prefix("/models/")?;
    (id.starts_with("gemini") && !id.contains(['/', ':'])).then(|| {
        json!({
            "name": format!("models/{id}"),
            "version": "001",
            "displayName": format!("Fake {id}"),
            "description": "A fake Gemini model for tests.",
            "inputTokenLimit": 1_048_576,
            "outputTokenLimit": 65_536,
            "supportedGenerationMethods": ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"],
            "temperature": 1.0,
            "topP": 0.95,
            "topK": 64,
            "maxTemperature": 2.0,
            "thinking": true
        })
    })
}
