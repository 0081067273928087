//! Google Gemini API: `POST {base}/models/{model}:streamGenerateContent?alt=sse` (streamed)
//! or `POST {base}/models/{model}:generateContent`, the key in the `x-goog-api-key` header
//! (never in the URL).
//!
//! - The system prompt goes in `systemInstruction`; the conversation in `contents` with the
//!   roles `user` and `model` (the only two roles the API takes). Function responses are user
//!   content: all results of one assistant turn go back in one `user` content, as
//!   `functionResponse {name, id?, response: {output | error}}` parts.
//! - Assistant turns that came from Gemini are replayed as the candidate's `content.parts`,
//!   thought parts and `thoughtSignature`s included, as the API requires for function calling
//!   with thinking models. Turns from other providers are rebuilt as `text` and
//!   `functionCall {name, args}` parts (their call ids mean nothing to Gemini and are left out).
//! - Tools are declared with `parametersJsonSchema`, which takes JSON Schema as it is
//!   (`additionalProperties` and all), instead of `parameters`, which takes only Google's
//!   OpenAPI subset.
//! - Function calls without an `id` (the Developer API mostly sends none) get
//!   `gemini-call-<turn>-<i>`, stable across retries; only ids Gemini sent go back in
//!   `functionResponse.id`.
//! - Streaming: every `data:` line is a whole `GenerateContentResponse`; text pieces are joined
//!   (a `thoughtSignature` stays on the text run it closed), function calls arrive whole, and
//!   the chunk with `finishReason` is the last one. `usageMetadata` is taken from the last
//!   chunk that has it.
//! - Ends other than `STOP` and `MAX_TOKENS` are errors, since an agent would otherwise take a
//!   blocked or broken turn for a finished answer: a malformed or unexpected function call
//!   (`MALFORMED_FUNCTION_CALL`, `UNEXPECTED_TOOL_CALL`, `TOO_MANY_TOOL_CALLS`,
//!   `MALFORMED_RESPONSE`) is a retryable server error, since asking again usually works; a
//!   blocked response (`SAFETY`, `RECITATION`, `PROHIBITED_CONTENT`, …), a blocked prompt
//!   (`promptFeedback.blockReason`) and `MISSING_THOUGHT_SIGNATURE` are bad requests.
//! - Errors: a wrong key is a 400 `INVALID_ARGUMENT` ("API key not valid") on this API; it is
//!   reported as an authentication error that names the key's variable. A 429 that carries a
//!   `RetryInfo` is a rate limit (waiting helps) even when its message speaks of quota and
//!   billing, as Google's per-minute limits do.
//! - Usage: input is `promptTokenCount` (cached tokens included), cached is
//!   `cachedContentTokenCount`, output is `candidatesTokenCount + thoughtsTokenCount` (thinking
//!   is billed as output), reasoning is `thoughtsTokenCount`.

use crate::http::Http;
use crate::registry::ResolvedProvider;
use crate::{
    Delta, ErrorKind, Message, ModelError, ModelRequest, ModelResponse, Native, Provider,
    ProviderKind, Result, ToolCall,
};
use async_trait::async_trait;
use errand_core::Usage;
use serde_json::{Map, Value, json};
use std::collections::HashSet;

pub struct Gemini {
    p: ResolvedProvider,
    name: String,
    http: Http,
    key: Option<String>,
}

/// `models/gemini-2.5-pro` and `gemini-2.5-pro` name the same model.
fn model_id(model: &str) -> &str {
    model.strip_prefix("models/").unwrap_or(model)
}

impl Gemini {
    pub fn new(p: ResolvedProvider) -> Result<Gemini> {
        Ok(Gemini {
            name: p.full_name(),
            http: p.http()?,
            key: p.key()?,
            p,
        })
    }

    fn headers(&self) -> Vec<(String, String)> {
        let mut h = Vec::new();
        if let Some(k) = &self.key {
            h.push(("x-goog-api-key".to_string(), k.clone()));
        }
        h.extend(self.p.extra_headers());
        h
    }

    /// The request body for `req`.
    pub fn body(&self, req: &ModelRequest) -> Value {
        request_body(&self.p, req)
    }

    /// Gemini-specific readings of an error response that the shared classification gets
    /// wrong or leaves without advice.
    fn refine(&self, e: ModelError) -> ModelError {
        let ModelError::Api {
            provider,
            kind,
            status,
            message,
            retry_after,
            hint,
        } = e
        else {
            return e;
        };
        let key_hint = || match &self.p.api_key_env {
            Some(var) => format!("check the key in {var}"),
            None => "this provider needs an API key: set api_key_env in its [providers] entry"
                .to_string(),
        };
        let (kind, hint) = match kind {
            ErrorKind::BadRequest if status == Some(400) && is_key_message(&message) => {
                (ErrorKind::Auth, Some(key_hint()))
            }
            ErrorKind::PermissionDenied if hint.is_none() => (
                kind,
                Some(format!(
                    "{}, and that its project may use this model",
                    key_hint()
                )),
            ),
            ErrorKind::QuotaExceeded if retry_after.is_some() => (ErrorKind::RateLimited, hint),
            _ => (kind, hint),
        };
        ModelError::Api {
            provider,
            kind,
            status,
            message,
            retry_after,
            hint,
        }
    }
}

/// Whether a 400 is Google saying the key is wrong ("API key not valid. Please pass a valid
/// API key.", "API key expired. Please renew the API key.").
fn is_key_message(m: &str) -> bool {
    let m = m.to_ascii_lowercase();
    m.contains("api key")
        && ["not valid", "invalid", "not found", "expired"]
            .iter()
            .any(|w| m.contains(w))
}

/// The parts of an assistant message in request form.
fn model_parts(m: &Message) -> Vec<Value> {
    if let Some(Value::Array(parts)) = m.native_for(ProviderKind::Gemini) {
        return parts.clone();
    }
    let Message::Assistant {
        text, tool_calls, ..
    } = m
    else {
        return vec![];
    };
    let mut parts = Vec::new();
    if let Some(t) = text.as_deref().filter(|t| !t.is_empty()) {
        parts.push(json!({"text": t}));
    }
    for c in tool_calls {
        parts.push(json!({"functionCall": {"name": c.name, "args": c.arguments}}));
    }
    parts
}

/// The thinking budget `reasoning_effort` stands for (the levels Google's own OpenAI
/// compatibility layer uses).
fn effort_budget(effort: &str) -> Option<i64> {
    match effort {
        "none" => Some(0),
        "minimal" | "low" => Some(1024),
        "medium" => Some(8192),
        "high" => Some(24576),
        _ => None,
    }
}

/// Builds the `generateContent` request body.
pub fn request_body(p: &ResolvedProvider, req: &ModelRequest) -> Value {
    // Function-call ids that Gemini itself sent: only these go back in functionResponse.id.
    let gemini_ids: HashSet<&str> = req
        .messages
        .iter()
        .filter_map(|m| m.native_for(ProviderKind::Gemini))
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|part| part.get("functionCall")?.get("id")?.as_str())
        .collect();
    let mut contents: Vec<Value> = Vec::new();
    // Consecutive user-side content (user text and function responses) shares one content.
    let mut pending_user: Vec<Value> = Vec::new();
    for m in &req.messages {
        match m {
            Message::User { text } => pending_user.push(json!({"text": text})),
            Message::Tool {
                call_id,
                name,
                content,
                is_error,
            } => {
                let key = if *is_error { "error" } else { "output" };
                let mut response = Map::new();
                response.insert(key.to_string(), json!(content));
                let mut fr = json!({"name": name, "response": response});
                if gemini_ids.contains(call_id.as_str()) {
                    fr["id"] = json!(call_id);
                }
                pending_user.push(json!({"functionResponse": fr}));
            }
            Message::Assistant { .. } => {
                if !pending_user.is_empty() {
                    contents
                        .push(json!({"role": "user", "parts": std::mem::take(&mut pending_user)}));
                }
                let parts = model_parts(m);
                if !parts.is_empty() {
                    contents.push(json!({"role": "model", "parts": parts}));
                }
            }
        }
    }
    if !pending_user.is_empty() {
        contents.push(json!({"role": "user", "parts": pending_user}));
    }

    let mut body = json!({});
    if !req.system.is_empty() {
        body["systemInstruction"] = json!({"parts": [{"text": req.system}]});
    }
    body["contents"] = Value::Array(contents);
    if !req.tools.is_empty() {
        let decls: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                json!({"name": t.name, "description": t.description, "parametersJsonSchema": t.parameters})
            })
            .collect();
        body["tools"] = json!([{ "functionDeclarations": decls }]);
    }

    let o = &req.options;
    let mut config = Map::new();
    if let Some(t) = o.get("temperature") {
        config.insert("temperature".into(), t.clone());
    }
    if let Some(n) = o
        .get("max_output_tokens")
        .or_else(|| o.get("max_tokens"))
        .and_then(Value::as_u64)
        .or(p.model_config.max_output_tokens)
    {
        config.insert("maxOutputTokens".into(), json!(n));
    }
    // One of the three, as the API refuses a budget and a level together.
    let budget = o.get("thinking_budget").and_then(Value::as_i64);
    let level = o.get("thinking_level").and_then(Value::as_str);
    let thinking = match (budget, level) {
        (Some(b), _) => Some(json!({"thinkingBudget": b})),
        (None, Some(l)) => Some(json!({"thinkingLevel": l})),
        (None, None) => o
            .get("reasoning_effort")
            .and_then(Value::as_str)
            .and_then(effort_budget)
            .map(|b| json!({"thinkingBudget": b})),
    };
    if let Some(mut t) = thinking {
        if t.get("thinkingBudget") != Some(&json!(0)) {
            t["includeThoughts"] = json!(true);
        }
        config.insert("thinkingConfig".into(), t);
    }
    // A generationConfig given as an option adds to these fields instead of replacing them.
    if let Some(Value::Object(extra)) = o.get("generationConfig") {
        for (k, v) in extra {
            config.insert(k.clone(), v.clone());
        }
    }
    if !config.is_empty() {
        body["generationConfig"] = Value::Object(config);
    }
    crate::merge_extra(
        &mut body,
        o,
        &[
            "temperature",
            "max_output_tokens",
            "max_tokens",
            "thinking_budget",
            "thinking_level",
            "reasoning_effort",
            "generationConfig",
        ],
    );
    body
}

fn is_thought(part: &Value) -> bool {
    part.get("thought").and_then(Value::as_bool) == Some(true)
}

/// Adds one part of a response to `acc`. Text pieces of the same kind (thought or answer)
/// are joined until a piece brings a `thoughtSignature`, which then belongs to the joined run;
/// the next piece starts a new part. Empty pieces without a signature carry nothing and are
/// dropped. Other parts (function calls) are kept whole.
fn add_part(
    acc: &mut Vec<Value>,
    part: &Value,
    on_delta: &mut (dyn for<'d> FnMut(Delta<'d>) + Send),
) {
    if let Some(text) = part.get("text").and_then(Value::as_str) {
        let thought = is_thought(part);
        let sig = part
            .get("thoughtSignature")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        if !text.is_empty() {
            on_delta(if thought {
                Delta::Reasoning(text)
            } else {
                Delta::Text(text)
            });
        }
        if let Some(last) = acc.last_mut()
            && let Some(prev) = last.get("text").and_then(Value::as_str)
            && is_thought(last) == thought
            && last.get("thoughtSignature").is_none()
        {
            let joined = format!("{prev}{text}");
            last["text"] = json!(joined);
            if let Some(s) = sig {
                last["thoughtSignature"] = json!(s);
            }
            return;
        }
        if text.is_empty() && sig.is_none() {
            return;
        }
        acc.push(part.clone());
        return;
    }
    if let Some(name) = part
        .get("functionCall")
        .and_then(|c| c.get("name"))
        .and_then(Value::as_str)
    {
        on_delta(Delta::ToolCall(name));
    }
    acc.push(part.clone());
}

/// Usage from a Gemini `usageMetadata` object (thinking counted as output), cost not set.
pub fn usage_of(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: n("promptTokenCount"),
        cached_input_tokens: n("cachedContentTokenCount"),
        output_tokens: n("candidatesTokenCount") + n("thoughtsTokenCount"),
        reasoning_tokens: n("thoughtsTokenCount"),
        ..Default::default()
    }
}

/// The error for a candidate that ended with `reason`, or `None` for a normal end.
fn finish_error(provider: &str, reason: &str, detail: Option<&str>) -> Option<ModelError> {
    let (kind, what) = match reason {
        "STOP" | "MAX_TOKENS" => return None,
        "MALFORMED_FUNCTION_CALL"
        | "UNEXPECTED_TOOL_CALL"
        | "TOO_MANY_TOOL_CALLS"
        | "MALFORMED_RESPONSE" => (
            ErrorKind::Server,
            "the model produced a function call or response the API could not use; asking again usually works",
        ),
        "MISSING_THOUGHT_SIGNATURE" => (
            ErrorKind::BadRequest,
            "a function call was replayed without the thoughtSignature Gemini gave it",
        ),
        "SAFETY"
        | "RECITATION"
        | "LANGUAGE"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => (
            ErrorKind::BadRequest,
            "Gemini's content filters blocked the response",
        ),
        _ => (
            ErrorKind::BadRequest,
            "Gemini stopped the response before its end",
        ),
    };
    let detail = detail
        .filter(|d| !d.is_empty())
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    Some(ModelError::api(
        provider,
        kind,
        format!("finishReason {reason}: {what}{detail}"),
    ))
}

/// Turns a whole `GenerateContentResponse` (the non-streamed body, or one rebuilt from the
/// stream) into a response. `turn` numbers the generated call ids.
pub fn parse_response(p: &ResolvedProvider, v: &Value, turn: usize) -> Result<ModelResponse> {
    let bad = |m: String| ModelError::api(&p.name, ErrorKind::BadResponse, m);
    if let Some(reason) = v
        .get("promptFeedback")
        .and_then(|f| f.get("blockReason"))
        .and_then(Value::as_str)
    {
        return Err(ModelError::api(
            &p.name,
            ErrorKind::BadRequest,
            format!("Gemini blocked the prompt (promptFeedback.blockReason {reason})"),
        ));
    }
    let candidate = v
        .get("candidates")
        .and_then(|c| c.get(0))
        .ok_or_else(|| bad("the response has no candidates".into()))?;
    let finish = candidate.get("finishReason").and_then(Value::as_str);
    if let Some(e) = finish.and_then(|r| {
        finish_error(
            &p.name,
            r,
            candidate.get("finishMessage").and_then(Value::as_str),
        )
    }) {
        return Err(e);
    }
    let mut parts = Vec::new();
    for part in candidate
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        add_part(&mut parts, part, &mut |_| {});
    }
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for part in &parts {
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            if is_thought(part) {
                reasoning.push_str(t);
            } else {
                text.push_str(t);
            }
        } else if let Some(call) = part.get("functionCall") {
            let name = call.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() {
                return Err(bad("a functionCall part has no name".into()));
            }
            let id = match call.get("id").and_then(Value::as_str) {
                Some(id) if !id.is_empty() => id.to_string(),
                _ => format!("gemini-call-{turn}-{}", tool_calls.len()),
            };
            let arguments = match call.get("args") {
                None | Some(Value::Null) => json!({}),
                Some(a @ Value::Object(_)) => a.clone(),
                Some(other) => json!({"_raw": other.to_string()}),
            };
            tool_calls.push(ToolCall {
                id,
                name: name.to_string(),
                arguments,
            });
        }
    }
    let mut usage = v.get("usageMetadata").map(usage_of).unwrap_or_default();
    usage.cost_usd = crate::pricing::cost(&usage, &p.model_config);
    Ok(ModelResponse {
        text: (!text.is_empty()).then_some(text),
        reasoning: (!reasoning.is_empty()).then_some(reasoning),
        tool_calls,
        usage,
        stop_reason: finish.map(str::to_string),
        native: (!parts.is_empty()).then_some(Native {
            kind: ProviderKind::Gemini,
            value: Value::Array(parts),
        }),
    })
}

/// Reads the stream up to the chunk with `finishReason` and rebuilds the whole response.
async fn read_stream(
    http: &Http,
    sse: &mut crate::http::Sse,
    on_delta: &mut (dyn for<'d> FnMut(Delta<'d>) + Send),
) -> Result<Value> {
    let mut parts: Vec<Value> = Vec::new();
    let mut usage: Option<Value> = None;
    while let Some(ev) = sse.next().await? {
        let data = ev.data.trim();
        if data.is_empty() {
            continue;
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| {
            ModelError::api(
                &http.provider,
                ErrorKind::BadResponse,
                format!("a stream chunk is not JSON ({e})"),
            )
        })?;
        if chunk.get("error").is_some() {
            return Err(http.stream_error(data));
        }
        if chunk
            .get("promptFeedback")
            .and_then(|f| f.get("blockReason"))
            .is_some()
        {
            // parse_response says what was blocked.
            return Ok(chunk);
        }
        if let Some(u) = chunk.get("usageMetadata") {
            usage = Some(u.clone());
        }
        let Some(candidate) = chunk.get("candidates").and_then(|c| c.get(0)) else {
            continue;
        };
        for part in candidate
            .get("content")
            .and_then(|c| c.get("parts"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            add_part(&mut parts, part, on_delta);
        }
        if let Some(reason) = candidate.get("finishReason") {
            let mut c = json!({
                "content": {"role": "model", "parts": parts},
                "finishReason": reason
            });
            if let Some(m) = candidate.get("finishMessage") {
                c["finishMessage"] = m.clone();
            }
            let mut whole = json!({ "candidates": [c] });
            if let Some(u) = usage {
                whole["usageMetadata"] = u;
            }
            return Ok(whole);
        }
    }
    Err(sse.cut("a chunk with finishReason"))
}

#[async_trait]
impl Provider for Gemini {
    fn name(&self) -> &str {
        &self.name
    }
    fn settings(&self) -> Option<&ResolvedProvider> {
        Some(&self.p)
    }
    async fn stream(
        &self,
        req: &ModelRequest,
        on_delta: &mut (dyn for<'d> FnMut(Delta<'d>) + Send),
    ) -> Result<ModelResponse> {
        let mut body = self.body(req);
        crate::conversation_last(&mut body, "contents");
        let model = model_id(&self.p.model);
        let url = if self.p.stream {
            self.p
                .url(&format!("/models/{model}:streamGenerateContent?alt=sse"))
        } else {
            self.p.url(&format!("/models/{model}:generateContent"))
        };
        let (resp, deadline) = self
            .http
            .post_json(&url, &self.headers(), &body)
            .await
            .map_err(|e| self.refine(e))?;
        let whole = if self.p.stream {
            let mut sse = self.http.sse(resp, deadline);
            read_stream(&self.http, &mut sse, on_delta).await?
        } else {
            self.http.body_json(resp, deadline).await?
        };
        let turn = req
            .messages
            .iter()
            .filter(|m| matches!(m, Message::Assistant { .. }))
            .count();
        parse_response(&self.p, &whole, turn)
    }
    async fn probe(&self, model: Option<&str>) -> Result<String> {
        let model = model_id(model.unwrap_or(&self.p.model));
        if model.is_empty() || model == "-" {
            let v = self
                .http
                .get(&self.p.url("/models"), &self.headers())
                .await
                .map_err(|e| self.refine(e))?;
            let n = v
                .get("models")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            return Ok(format!("ok: key accepted, {n} models available"));
        }
        let url = self.p.url(&format!("/models/{model}"));
        let v = self
            .http
            .get(&url, &self.headers())
            .await
            .map_err(|e| self.refine(e))?;
        let shown = v
            .get("displayName")
            .and_then(Value::as_str)
            .unwrap_or(model);
        if let Some(methods) = v
            .get("supportedGenerationMethods")
            .and_then(Value::as_array)
            && !methods.iter().any(|m| m == "generateContent")
        {
            return Err(ModelError::api(
                &self.p.name,
                ErrorKind::BadRequest,
                format!(
                    "model {shown} exists but cannot generate content (it does not support generateContent)"
                ),
            ));
        }
        let limit = v
            .get("inputTokenLimit")
            .and_then(Value::as_u64)
            .map(|n| format!(", {n} input tokens"))
            .unwrap_or_default();
        Ok(format!("ok: key accepted, model {shown} exists{limit}"))
    }
}
