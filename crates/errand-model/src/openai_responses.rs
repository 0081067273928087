//! OpenAI Responses API (`POST {base_url}/responses`), streamed, used statelessly.
//!
//! - `store: false`: nothing is kept on the provider's side, so every request carries the
//!   whole conversation as input items (`instructions` holds the system prompt).
//! - Reasoning carries over with `include: ["reasoning.encrypted_content"]`: reasoning items
//!   come back with an encrypted copy of the model's reasoning, and the next request sends the
//!   turn's output items back as they came (reasoning, message and `function_call` items). Item
//!   `id`s are left out: with `store: false` items are not persisted, and an id refers to
//!   nothing the API can look up. Reasoning items without encrypted content cannot be replayed
//!   statelessly and are dropped.
//! - Tools are declared with `strict: false`: the API's default is strict schemas, which
//!   require every property to be listed as required.
//! - Usage: `input_tokens` includes cached tokens and `output_tokens` includes reasoning
//!   tokens, the same convention as [`errand_core::Usage`].

use crate::http::{Http, Sse};
use crate::registry::ResolvedProvider;
use crate::{
    Delta, ErrorKind, Message, ModelError, ModelRequest, ModelResponse, Native, Provider,
    ProviderKind, Result, ToolCall,
};
use async_trait::async_trait;
use errand_core::Usage;
use serde_json::{Value, json};

pub struct OpenAiResponses {
    p: ResolvedProvider,
    name: String,
    http: Http,
    key: Option<String>,
}

impl OpenAiResponses {
    pub fn new(p: ResolvedProvider) -> Result<OpenAiResponses> {
        Ok(OpenAiResponses {
            name: p.full_name(),
            http: p.http()?,
            key: p.key()?,
            p,
        })
    }

    fn headers(&self) -> Vec<(String, String)> {
        let mut h = Vec::new();
        if let Some(k) = &self.key {
            h.push(("authorization".to_string(), format!("Bearer {k}")));
        }
        h.extend(self.p.extra_headers());
        h
    }

    /// The request body for `req`.
    pub fn body(&self, req: &ModelRequest) -> Value {
        request_body(&self.p, req)
    }
}

/// Whether `model` reasons. The GPT-4 and GPT-3.5 families do not, and are not asked for
/// encrypted reasoning; an `include` model option overrides the choice either way.
fn reasons(model: &str) -> bool {
    let m = model.rsplit('/').next().unwrap_or(model);
    !(m.starts_with("gpt-4") || m.starts_with("gpt-3.5") || m.starts_with("chatgpt-"))
}

/// One output item in the form the API takes back as input, or `None` for items that cannot
/// be replayed (reasoning without encrypted content, items of tools this agent does not use).
fn request_item(item: &Value) -> Option<Value> {
    let s = |k: &str| item.get(k).and_then(Value::as_str);
    match s("type")? {
        "reasoning" => {
            let enc = s("encrypted_content").filter(|e| !e.is_empty())?;
            let summary: Vec<Value> = item
                .get("summary")
                .and_then(Value::as_array)
                .map(|parts| {
                    parts
                        .iter()
                        .map(|p| json!({"type": "summary_text", "text": p.get("text").and_then(Value::as_str).unwrap_or_default()}))
                        .collect()
                })
                .unwrap_or_default();
            let mut out =
                json!({"type": "reasoning", "summary": summary, "encrypted_content": enc});
            if let Some(content) = item
                .get("content")
                .and_then(Value::as_array)
                .filter(|c| !c.is_empty())
            {
                out["content"] = Value::Array(content.clone());
            }
            Some(out)
        }
        "message" => {
            let content: Vec<Value> = item
                .get("content")
                .and_then(Value::as_array)
                .map(|parts| {
                    parts
                        .iter()
                        .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                            Some("output_text") => Some(json!({"type": "output_text", "text": p.get("text").and_then(Value::as_str).unwrap_or_default()})),
                            Some("refusal") => Some(json!({"type": "refusal", "refusal": p.get("refusal").and_then(Value::as_str).unwrap_or_default()})),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            (!content.is_empty())
                .then(|| json!({"type": "message", "role": "assistant", "content": content}))
        }
        "function_call" => Some(json!({
            "type": "function_call",
            "call_id": s("call_id")?,
            "name": s("name")?,
            "arguments": s("arguments").unwrap_or("{}"),
        })),
        _ => None,
    }
}

/// The input items of an assistant message: its native output items when it came from this
/// API, else rebuilt from its text and tool calls.
fn assistant_items(m: &Message) -> Vec<Value> {
    if let Some(Value::Array(items)) = m.native_for(ProviderKind::OpenaiResponses) {
        return items.clone();
    }
    let Message::Assistant {
        text, tool_calls, ..
    } = m
    else {
        return vec![];
    };
    let mut items = Vec::new();
    if let Some(t) = text.as_deref().filter(|t| !t.is_empty()) {
        items.push(json!({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": t}]}));
    }
    for c in tool_calls {
        items.push(json!({"type": "function_call", "call_id": c.id, "name": c.name, "arguments": c.arguments.to_string()}));
    }
    items
}

/// Builds the Responses request body (without `stream`, which the caller sets).
pub fn request_body(p: &ResolvedProvider, req: &ModelRequest) -> Value {
    let mut input: Vec<Value> = Vec::new();
    for m in &req.messages {
        match m {
            Message::User { text } => input.push(json!({
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}]
            })),
            Message::Assistant { .. } => input.extend(assistant_items(m)),
            // The API has no error flag for tool output: the content says what went wrong.
            Message::Tool {
                call_id, content, ..
            } => input.push(
                json!({"type": "function_call_output", "call_id": call_id, "output": content}),
            ),
        }
    }
    let o = &req.options;
    let mut body = json!({
        "model": p.model,
        "input": input,
        "store": false,
    });
    if !req.system.is_empty() {
        body["instructions"] = json!(req.system);
    }
    if !req.tools.is_empty() {
        body["tools"] = Value::Array(
            req.tools
                .iter()
                .map(|t| json!({"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters, "strict": false}))
                .collect(),
        );
    }
    if reasons(&p.model) {
        body["include"] = json!(["reasoning.encrypted_content"]);
    }
    if let Some(effort) = o.get("reasoning_effort") {
        body["reasoning"] = json!({
            "effort": effort,
            "summary": o.get("reasoning_summary").cloned().unwrap_or(json!("auto")),
        });
    }
    if let Some(n) = o
        .get("max_output_tokens")
        .and_then(Value::as_u64)
        .or(p.model_config.max_output_tokens)
    {
        body["max_output_tokens"] = json!(n);
    }
    if let Some(v) = o.get("verbosity") {
        body["text"] = json!({"verbosity": v});
    }
    if let Some(k) = &req.cache_key {
        body["prompt_cache_key"] = json!(k);
    }
    crate::merge_extra(
        &mut body,
        o,
        &[
            "reasoning_effort",
            "reasoning_summary",
            "max_output_tokens",
            "verbosity",
        ],
    );
    body
}

/// Usage from a Responses `usage` object (`input_tokens` with cached ones included,
/// `output_tokens` with reasoning included), cost not set.
pub fn usage_of(u: &Value) -> Usage {
    let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: n(u.get("input_tokens")),
        cached_input_tokens: n(u.pointer("/input_tokens_details/cached_tokens")),
        output_tokens: n(u.get("output_tokens")),
        reasoning_tokens: n(u.pointer("/output_tokens_details/reasoning_tokens")),
        ..Default::default()
    }
}

/// Turns a complete Response object (the non-streamed body, or the one `response.completed`
/// carries) into a response.
pub fn parse_response(p: &ResolvedProvider, resp: &Value) -> Result<ModelResponse> {
    let bad = |m: &str| ModelError::api(&p.name, ErrorKind::BadResponse, m);
    let output = resp
        .get("output")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("the response has no output array"))?;
    let mut text = String::new();
    let mut reasoning: Vec<String> = Vec::new();
    let mut tool_calls = Vec::new();
    let mut native = Vec::new();
    for item in output {
        let str_of = |v: &Value, k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                for part in item
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    match part.get("type").and_then(Value::as_str) {
                        Some("output_text") => text.push_str(&str_of(part, "text")),
                        Some("refusal") => text.push_str(&str_of(part, "refusal")),
                        _ => {}
                    }
                }
            }
            Some("reasoning") => {
                let summary: Vec<String> = item
                    .get("summary")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|s| str_of(s, "text"))
                    .filter(|s| !s.is_empty())
                    .collect();
                if !summary.is_empty() {
                    reasoning.push(summary.join("\n\n"));
                } else {
                    // Open-weight models served behind this API return their raw reasoning.
                    let raw: String = item
                        .get("content")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(|c| str_of(c, "text"))
                        .collect();
                    if !raw.is_empty() {
                        reasoning.push(raw);
                    }
                }
            }
            Some("function_call") => {
                let id = str_of(item, "call_id");
                let name = str_of(item, "name");
                if id.is_empty() || name.is_empty() {
                    return Err(bad("a function_call item has no call_id or name"));
                }
                tool_calls.push(ToolCall {
                    id,
                    name,
                    arguments: crate::parse_arguments(&str_of(item, "arguments")),
                });
            }
            // Items of built-in tools this agent does not use.
            _ => {}
        }
        native.extend(request_item(item));
    }
    let mut usage = resp.get("usage").map(usage_of).unwrap_or_default();
    usage.cost_usd = crate::pricing::cost(&usage, &p.model_config);
    let status = resp.get("status").and_then(Value::as_str);
    let stop_reason = match status {
        Some("incomplete") => Some(
            resp.pointer("/incomplete_details/reason")
                .and_then(Value::as_str)
                .unwrap_or("incomplete")
                .to_string(),
        ),
        _ if !tool_calls.is_empty() => Some("tool_calls".to_string()),
        s => Some(s.unwrap_or("completed").to_string()),
    };
    Ok(ModelResponse {
        text: (!text.is_empty()).then_some(text),
        reasoning: (!reasoning.is_empty()).then(|| reasoning.join("\n\n")),
        tool_calls,
        usage,
        stop_reason,
        native: (!native.is_empty()).then_some(Native {
            kind: ProviderKind::OpenaiResponses,
            value: Value::Array(native),
        }),
    })
}

/// What a stream has delivered so far.
#[derive(Default)]
struct StreamState {
    /// Finished output items by their `output_index`.
    done: Vec<(u64, Value)>,
}

impl StreamState {
    /// Handles one event; returns the final Response object when the stream is complete.
    fn event(
        &mut self,
        http: &Http,
        ty: &str,
        data: &Value,
        raw: &str,
        on_delta: &mut (dyn for<'d> FnMut(Delta<'d>) + Send),
    ) -> Result<Option<Value>> {
        let delta = || {
            data.get("delta")
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        match ty {
            "response.output_text.delta" | "response.refusal.delta" => {
                on_delta(Delta::Text(delta()))
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                on_delta(Delta::Reasoning(delta()))
            }
            // Summary parts after the first one start a new paragraph.
            "response.reasoning_summary_part.added"
                if data.get("summary_index").and_then(Value::as_u64) > Some(0) =>
            {
                on_delta(Delta::Reasoning("\n\n"))
            }
            "response.output_item.added" => {
                let item = data.get("item").unwrap_or(&Value::Null);
                if item.get("type").and_then(Value::as_str) == Some("function_call")
                    && let Some(n) = item.get("name").and_then(Value::as_str)
                {
                    on_delta(Delta::ToolCall(n));
                }
            }
            "response.output_item.done" => {
                if let Some(item) = data.get("item") {
                    let idx = data
                        .get("output_index")
                        .and_then(Value::as_u64)
                        .unwrap_or(self.done.len() as u64);
                    self.done.push((idx, item.clone()));
                }
            }
            "response.completed" | "response.incomplete" => {
                let mut resp = data.get("response").cloned().ok_or_else(|| {
                    ModelError::api(
                        &http.provider,
                        ErrorKind::BadResponse,
                        format!("{ty} without a response"),
                    )
                })?;
                // Servers that leave the final output empty have sent every item already.
                let empty = resp
                    .get("output")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty);
                if empty && !self.done.is_empty() {
                    let mut items = std::mem::take(&mut self.done);
                    items.sort_by_key(|(i, _)| *i);
                    resp["output"] = Value::Array(items.into_iter().map(|(_, v)| v).collect());
                }
                return Ok(Some(resp));
            }
            "response.failed" => {
                return Err(match data.get("response") {
                    Some(r) => http.stream_error(&r.to_string()),
                    None => http.stream_error(raw),
                });
            }
            "error" => return Err(http.stream_error(raw)),
            _ => {}
        }
        Ok(None)
    }
}

/// Reads the stream up to `response.completed` (or `response.incomplete`) and returns the
/// Response object it carries.
async fn read_stream(
    http: &Http,
    sse: &mut Sse,
    on_delta: &mut (dyn for<'d> FnMut(Delta<'d>) + Send),
) -> Result<Value> {
    let mut state = StreamState::default();
    while let Some(ev) = sse.next().await? {
        let data: Value = match ev.data.trim() {
            "" | "[DONE]" => continue,
            d => serde_json::from_str(d).map_err(|e| {
                ModelError::api(
                    &http.provider,
                    ErrorKind::BadResponse,
                    format!("a stream event is not JSON ({e})"),
                )
            })?,
        };
        let ty = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(ev.event.as_str())
            .to_string();
        if let Some(resp) = state.event(http, &ty, &data, &ev.data, on_delta)? {
            return Ok(resp);
        }
    }
    Err(sse.cut("response.completed"))
}

#[async_trait]
impl Provider for OpenAiResponses {
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
        body["stream"] = json!(self.p.stream);
        crate::conversation_last(&mut body, "input");
        let url = self.p.url("/responses");
        let (resp, deadline) = self.http.post_json(&url, &self.headers(), &body).await?;
        let resp = if self.p.stream {
            let mut sse = self.http.sse(resp, deadline);
            read_stream(&self.http, &mut sse, on_delta).await?
        } else {
            self.http.body_json(resp, deadline).await?
        };
        if resp.get("status").and_then(Value::as_str) == Some("failed") {
            return Err(self.http.stream_error(&resp.to_string()));
        }
        parse_response(&self.p, &resp)
    }
    async fn probe(&self, model: Option<&str>) -> Result<String> {
        let model = model.unwrap_or(&self.p.model);
        if model.is_empty() || model == "-" {
            let v = self
                .http
                .get(&self.p.url("/models"), &self.headers())
                .await?;
            let n = v.get("data").and_then(Value::as_array).map_or(0, Vec::len);
            return Ok(format!("ok: key accepted, {n} models available"));
        }
        let url = self.p.url(&format!("/models/{model}"));
        let v = self.http.get(&url, &self.headers()).await?;
        Ok(format!(
            "ok: key accepted, model {} exists",
            v.get("id").and_then(Value::as_str).unwrap_or(model)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn http() -> Http {
        Http::new(
            "openai",
            Duration::from_secs(5),
            Duration::from_secs(5),
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn feed(state: &mut StreamState, data: Value) -> Result<Option<Value>> {
        let ty = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        state.event(&http(), &ty, &data, &data.to_string(), &mut |_| {})
    }

    #[test]
    fn error_events_are_classified() {
        let mut st = StreamState::default();
        let e = feed(
            &mut st,
            json!({"type": "error", "code": "rate_limit_exceeded", "message": "Rate limit reached", "param": null, "sequence_number": 3}),
        );
        assert_eq!(e.err().and_then(|e| e.kind()), Some(ErrorKind::RateLimited));
        let e = feed(
            &mut st,
            json!({"type": "error", "code": null, "message": "An error occurred", "param": null, "sequence_number": 3}),
        );
        assert_eq!(e.err().and_then(|e| e.kind()), Some(ErrorKind::Server));
        let e = feed(
            &mut st,
            json!({"type": "response.failed", "sequence_number": 9, "response": {"id": "resp_1", "status": "failed", "output": [], "error": {"code": "insufficient_quota", "message": "You exceeded your current quota"}}}),
        );
        let e = e.err();
        assert_eq!(
            e.as_ref().and_then(|e| e.kind()),
            Some(ErrorKind::QuotaExceeded)
        );
        assert!(e.is_some_and(|e| !e.retryable()));
        let e = feed(
            &mut st,
            json!({"type": "response.failed", "response": {"status": "failed", "error": {"code": "context_length_exceeded", "message": "Your input exceeds the context window of this model."}}}),
        );
        assert_eq!(
            e.err().and_then(|e| e.kind()),
            Some(ErrorKind::ContextLength)
        );
    }

    #[test]
    fn an_empty_final_output_is_rebuilt_from_the_finished_items() {
        let mut st = StreamState::default();
        let call = json!({"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "ls", "arguments": "{}", "status": "completed"});
        let msg = json!({"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "content": [{"type": "output_text", "text": "hi", "annotations": []}]});
        assert!(matches!(
            feed(
                &mut st,
                json!({"type": "response.output_item.done", "output_index": 1, "item": call})
            ),
            Ok(None)
        ));
        assert!(matches!(
            feed(
                &mut st,
                json!({"type": "response.output_item.done", "output_index": 0, "item": msg})
            ),
            Ok(None)
        ));
        let resp = feed(&mut st, json!({"type": "response.completed", "response": {"status": "completed", "output": []}}))
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(resp["output"][0]["type"], "message");
        assert_eq!(resp["output"][1]["call_id"], "call_1");
    }

    #[test]
    fn an_incomplete_response_keeps_its_output_and_says_why() {
        let p = ResolvedProvider {
            name: "openai".into(),
            kind: ProviderKind::OpenaiResponses,
            base_url: "http://127.0.0.1:9/v1".into(),
            api_key_env: None,
            headers: Default::default(),
            model: "gpt-5".into(),
            model_config: Default::default(),
            stream: true,
            timeout_secs: 5,
            idle_timeout_secs: 5,
            max_retries: 0,
        };
        let mut st = StreamState::default();
        let resp = feed(
            &mut st,
            json!({"type": "response.incomplete", "response": {
                "status": "incomplete",
                "incomplete_details": {"reason": "max_output_tokens"},
                "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "incomplete", "content": [{"type": "output_text", "text": "Half a sen", "annotations": []}]}],
                "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 64, "output_tokens_details": {"reasoning_tokens": 60}}
            }}),
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        let r = parse_response(&p, &resp).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.text.as_deref(), Some("Half a sen"));
        assert_eq!(r.stop_reason.as_deref(), Some("max_output_tokens"));
        assert_eq!(r.usage.reasoning_tokens, 60);
        assert_eq!(
            parse_response(&p, &json!({"status": "completed"}))
                .err()
                .and_then(|e| e.kind()),
            Some(ErrorKind::BadResponse)
        );
    }

    #[test]
    fn native_items_drop_ids_and_unreplayable_reasoning() {
        assert_eq!(
            request_item(&json!({"type": "reasoning", "id": "rs_1", "summary": []})),
            None
        );
        assert_eq!(
            request_item(
                &json!({"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "t"}], "encrypted_content": "e", "status": "completed"})
            ),
            Some(
                json!({"type": "reasoning", "summary": [{"type": "summary_text", "text": "t"}], "encrypted_content": "e"})
            )
        );
        assert_eq!(
            request_item(&json!({"type": "web_search_call", "id": "ws_1"})),
            None
        );
        assert!(!reasons("gpt-4.1-mini"));
        assert!(reasons("gpt-5"));
        assert!(reasons("o4-mini"));
    }
}
