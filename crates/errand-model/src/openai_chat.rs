//! OpenAI Chat Completions (`POST {base_url}/chat/completions`), streamed: OpenAI itself and
//! every server that speaks the format (Ollama, vLLM, llama.cpp, LM Studio, OpenRouter, …).
//!
//! - `Authorization: Bearer` only when the provider has a key: local servers need none.
//! - The system prompt is the first message; tool results are `tool` messages.
//! - An assistant message without text is sent with `content: ""`, not `null`, which some
//!   local servers refuse.
//! - Streaming asks for `stream_options.include_usage`, so the last chunk (with no choices)
//!   carries the usage. Tool calls arrive by `index`, the id and name first, then argument
//!   fragments; several calls may stream side by side.
//! - Reasoning that compatible servers stream as `reasoning_content` (vLLM, DeepSeek) or
//!   `reasoning` (Ollama, OpenRouter) is reported, never sent back: this API has no way to
//!   replay it.
//! - Usage: `prompt_tokens` includes cached tokens, `completion_tokens` includes reasoning.

use crate::http::{Http, Sse};
use crate::registry::ResolvedProvider;
use crate::{
    Delta, ErrorKind, Message, ModelError, ModelRequest, ModelResponse, Provider, Result, ToolCall,
};
use async_trait::async_trait;
use errand_core::Usage;
use serde_json::{Value, json};

pub struct OpenAiChat {
    p: ResolvedProvider,
    name: String,
    http: Http,
    key: Option<String>,
}

impl OpenAiChat {
    pub fn new(p: ResolvedProvider) -> Result<OpenAiChat> {
        Ok(OpenAiChat {
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

    /// The request body for `req`, streamed or not.
    pub fn body(&self, req: &ModelRequest, stream: bool) -> Value {
        request_body(&self.p, req, stream)
    }
}

/// Builds the Chat Completions request body.
pub fn request_body(p: &ResolvedProvider, req: &ModelRequest, stream: bool) -> Value {
    let mut messages: Vec<Value> = Vec::new();
    if !req.system.is_empty() {
        messages.push(json!({"role": "system", "content": req.system}));
    }
    for m in &req.messages {
        match m {
            Message::User { text } => messages.push(json!({"role": "user", "content": text})),
            Message::Assistant {
                text, tool_calls, ..
            } => {
                let text = text.as_deref().unwrap_or_default();
                if text.is_empty() && tool_calls.is_empty() {
                    continue;
                }
                let mut msg = json!({"role": "assistant", "content": text});
                if !tool_calls.is_empty() {
                    msg["tool_calls"] = Value::Array(
                        tool_calls
                            .iter()
                            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments.to_string()}}))
                            .collect(),
                    );
                }
                messages.push(msg);
            }
            // The API has no error flag for tool output: the content says what went wrong.
            Message::Tool {
                call_id, content, ..
            } => {
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": content}))
            }
        }
    }
    let o = &req.options;
    let mut body = json!({
        "model": p.model,
        "messages": messages,
        "stream": stream,
    });
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    if !req.tools.is_empty() {
        body["tools"] = Value::Array(
            req.tools
                .iter()
                .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}))
                .collect(),
        );
    }
    if let Some(effort) = o.get("reasoning_effort") {
        body["reasoning_effort"] = effort.clone();
    }
    if let Some(n) = o
        .get("max_output_tokens")
        .and_then(Value::as_u64)
        .or(p.model_config.max_output_tokens)
    {
        body["max_completion_tokens"] = json!(n);
    }
    crate::merge_extra(&mut body, o, &["reasoning_effort", "max_output_tokens"]);
    body
}

/// Usage from a Chat Completions `usage` object (`prompt_tokens`, `completion_tokens` and
/// their details), cost not set.
pub fn usage_of(u: &Value) -> Usage {
    let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: n(u.get("prompt_tokens")),
        cached_input_tokens: n(u.pointer("/prompt_tokens_details/cached_tokens")),
        output_tokens: n(u.get("completion_tokens")),
        reasoning_tokens: n(u.pointer("/completion_tokens_details/reasoning_tokens")),
        ..Default::default()
    }
}

/// The reasoning text of a message or delta, in whichever field the server uses.
fn reasoning_of(v: &Value) -> Option<&str> {
    ["reasoning_content", "reasoning"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str).filter(|s| !s.is_empty()))
}

/// Turns a complete chat completion (the non-streamed body, or one rebuilt from the stream)
/// into a response.
pub fn parse_completion(p: &ResolvedProvider, v: &Value) -> Result<ModelResponse> {
    let bad = |m: &str| ModelError::api(&p.name, ErrorKind::BadResponse, m);
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| bad("the completion has no choices"))?;
    let msg = choice
        .get("message")
        .ok_or_else(|| bad("the completion's choice has no message"))?;
    let text = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .or_else(|| msg.get("refusal").and_then(Value::as_str))
        .map(str::to_string);
    let mut tool_calls = Vec::new();
    for (i, c) in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = c
            .pointer("/function/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if name.is_empty() {
            return Err(bad("a tool call has no function name"));
        }
        // Some local servers leave the id out; the tool result needs one to refer to.
        let id = c
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map_or_else(|| format!("call_{i}"), str::to_string);
        let arguments = match c.pointer("/function/arguments") {
            Some(Value::String(s)) => crate::parse_arguments(s),
            Some(a @ Value::Object(_)) => a.clone(),
            _ => json!({}),
        };
        tool_calls.push(ToolCall {
            id,
            name: name.to_string(),
            arguments,
        });
    }
    let mut usage = v.get("usage").map(usage_of).unwrap_or_default();
    usage.cost_usd = crate::pricing::cost(&usage, &p.model_config);
    Ok(ModelResponse {
        text,
        reasoning: reasoning_of(msg).map(str::to_string),
        tool_calls,
        usage,
        stop_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        native: None,
    })
}

#[derive(Default)]
struct CallAcc {
    id: String,
    name: String,
    arguments: String,
}

/// A completion rebuilt from stream chunks.
#[derive(Default)]
struct StreamState {
    text: String,
    reasoning: String,
    calls: Vec<CallAcc>,
    finish: Option<String>,
    usage: Option<Value>,
}

impl StreamState {
    /// Adds one chunk (the JSON of a `data:` line).
    fn chunk(&mut self, v: &Value, on_delta: &mut (dyn for<'d> FnMut(Delta<'d>) + Send)) {
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        // Only the first choice: requests never ask for more.
        let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
            return;
        };
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_string());
        }
        let Some(d) = choice.get("delta") else {
            return;
        };
        if let Some(r) = reasoning_of(d) {
            self.reasoning.push_str(r);
            on_delta(Delta::Reasoning(r));
        }
        if let Some(t) = d
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.text.push_str(t);
            on_delta(Delta::Text(t));
        }
        for tc in d
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id = tc.get("id").and_then(Value::as_str).unwrap_or_default();
            let idx = match tc.get("index").and_then(Value::as_u64) {
                Some(i) => i as usize,
                // Without an index: a new id starts a call, anything else continues the last.
                None if !id.is_empty() && self.calls.last().is_none_or(|c| c.id != id) => {
                    self.calls.len()
                }
                None => self.calls.len().saturating_sub(1),
            };
            if idx >= self.calls.len() {
                self.calls.resize_with(idx + 1, CallAcc::default);
            }
            let call = &mut self.calls[idx];
            if call.id.is_empty() && !id.is_empty() {
                call.id = id.to_string();
            }
            if let Some(n) = tc
                .pointer("/function/name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                && call.name.is_empty()
            {
                call.name = n.to_string();
                on_delta(Delta::ToolCall(n));
            }
            match tc.pointer("/function/arguments") {
                Some(Value::String(a)) => call.arguments.push_str(a),
                Some(a @ Value::Object(_)) => call.arguments.push_str(&a.to_string()),
                _ => {}
            }
        }
    }

    /// The completion in the shape of a non-streamed body.
    fn finish(self) -> Value {
        let mut message = json!({"role": "assistant", "content": self.text});
        if !self.reasoning.is_empty() {
            message["reasoning_content"] = json!(self.reasoning);
        }
        if !self.calls.is_empty() {
            message["tool_calls"] = Value::Array(
                self.calls
                    .into_iter()
                    .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                    .collect(),
            );
        }
        let mut out =
            json!({"choices": [{"index": 0, "message": message, "finish_reason": self.finish}]});
        if let Some(u) = self.usage {
            out["usage"] = u;
        }
        out
    }
}

/// Reads the stream up to `data: [DONE]` and returns the completion it adds up to.
async fn read_stream(
    http: &Http,
    sse: &mut Sse,
    on_delta: &mut (dyn for<'d> FnMut(Delta<'d>) + Send),
) -> Result<Value> {
    let mut state = StreamState::default();
    while let Some(ev) = sse.next().await? {
        let data = ev.data.trim();
        if data.is_empty() {
            continue;
        }
        if data == "[DONE]" {
            return Ok(state.finish());
        }
        let v: Value = serde_json::from_str(data).map_err(|e| {
            ModelError::api(
                &http.provider,
                ErrorKind::BadResponse,
                format!("a stream chunk is not JSON ({e})"),
            )
        })?;
        if v.get("error").is_some_and(|e| !e.is_null()) {
            return Err(http.stream_error(data));
        }
        state.chunk(&v, on_delta);
    }
    // Some servers end without [DONE]: a stream that finished its choice is whole.
    if state.finish.is_some() {
        return Ok(state.finish());
    }
    Err(sse.cut("[DONE]"))
}

#[async_trait]
impl Provider for OpenAiChat {
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
        let mut body = self.body(req, self.p.stream);
        crate::conversation_last(&mut body, "messages");
        let url = self.p.url("/chat/completions");
        let (resp, deadline) = self.http.post_json(&url, &self.headers(), &body).await?;
        let completion = if self.p.stream {
            let mut sse = self.http.sse(resp, deadline);
            read_stream(&self.http, &mut sse, on_delta).await?
        } else {
            self.http.body_json(resp, deadline).await?
        };
        parse_completion(&self.p, &completion)
    }
    /// Lists the server's models (`GET /models`, which Ollama, vLLM and llama.cpp serve too)
    /// and looks for this one.
    async fn probe(&self, model: Option<&str>) -> Result<String> {
        let model = model.unwrap_or(&self.p.model);
        let v = self
            .http
            .get(&self.p.url("/models"), &self.headers())
            .await?;
        let ids: Vec<&str> = v
            .get("data")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| m.get("id").and_then(Value::as_str))
            .collect();
        if model.is_empty() || model == "-" {
            return Ok(format!("ok: the server lists {} models", ids.len()));
        }
        // Ollama lists `name:latest` for a model pulled as `name`.
        if ids
            .iter()
            .any(|id| *id == model || id.strip_suffix(":latest") == Some(model))
        {
            return Ok(format!(
                "ok: model {model} is among the {} models the server lists",
                ids.len()
            ));
        }
        let mut shown = ids.iter().take(10).copied().collect::<Vec<_>>().join(", ");
        if ids.len() > 10 {
            shown.push_str(", …");
        }
        Err(ModelError::Api {
            provider: self.p.name.clone(),
            kind: ErrorKind::ModelNotFound,
            status: None,
            message: format!(
                "the server does not list model '{model}' (it lists: {})",
                if shown.is_empty() { "none" } else { &shown }
            ),
            retry_after: None,
            hint: Some("check the model name, or pull or load the model on the server".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(chunks: &[Value]) -> (StreamState, Vec<String>) {
        let mut st = StreamState::default();
        let mut deltas = Vec::new();
        for c in chunks {
            st.chunk(c, &mut |d| deltas.push(format!("{d:?}")));
        }
        (st, deltas)
    }

    #[test]
    fn reasoning_is_read_from_either_field() {
        let (st, deltas) = feed(&[
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "reasoning": "think "}}]}),
            json!({"choices": [{"index": 0, "delta": {"reasoning_content": "more", "reasoning": "more"}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]}),
            json!({"choices": null, "usage": {"prompt_tokens": 3, "completion_tokens": 2}}),
        ]);
        assert_eq!(st.reasoning, "think more");
        assert_eq!(st.text, "ok");
        assert_eq!(deltas.len(), 3);
        let v = st.finish();
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn tool_calls_without_an_index_still_separate() {
        // Some servers send each call whole, without `index`.
        let (st, _) = feed(&[
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"id": "c1", "type": "function", "function": {"name": "a", "arguments": "{\"x\":"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"function": {"arguments": "1}"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"id": "c2", "type": "function", "function": {"name": "b", "arguments": {"y": 2}}}]}}]}),
        ]);
        assert_eq!(st.calls.len(), 2);
        assert_eq!(st.calls[0].arguments, "{\"x\":1}");
        assert_eq!(st.calls[1].name, "b");
        assert_eq!(st.calls[1].arguments, "{\"y\":2}");
    }
}
