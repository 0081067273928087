//! Anthropic Messages API (`POST /v1/messages`), streamed.
//!
//! - System prompt as one text block with a `cache_control` breakpoint (it caches the tools
//!   too); a second breakpoint on the last block of the conversation, so each turn reads the
//!   previous turns from the cache.
//! - Assistant turns are replayed as the content blocks the API returned, `thinking` blocks
//!   with their `signature` and `redacted_thinking` blocks included, as extended thinking with
//!   tool use requires.
//! - All tool results of one assistant turn go back in one user message.
//! - Usage: `input_tokens` here counts every input token (the API's `input_tokens` plus cache
//!   reads and writes).

use crate::http::Http;
use crate::registry::ResolvedProvider;
use crate::{
    Delta, ErrorKind, Message, ModelError, ModelRequest, ModelResponse, Native, Provider,
    ProviderKind, Result, ToolCall,
};
use async_trait::async_trait;
use errand_core::Usage;
use serde_json::{Value, json};

pub const API_VERSION: &str = "2023-06-01";
const DEFAULT_MAX_TOKENS: u64 = 8192;

pub struct Anthropic {
    p: ResolvedProvider,
    name: String,
    http: Http,
    key: Option<String>,
}

impl Anthropic {
    pub fn new(p: ResolvedProvider) -> Result<Anthropic> {
        Ok(Anthropic {
            name: p.full_name(),
            http: p.http()?,
            key: p.key()?,
            p,
        })
    }

    fn headers(&self) -> Vec<(String, String)> {
        let mut h = vec![("anthropic-version".to_string(), API_VERSION.to_string())];
        if let Some(k) = &self.key {
            h.push(("x-api-key".into(), k.clone()));
        }
        h.extend(self.p.extra_headers());
        h
    }

    /// The request body for `req`.
    pub fn body(&self, req: &ModelRequest) -> Value {
        request_body(&self.p, req)
    }
}

/// The content blocks of an assistant message in request form.
fn assistant_blocks(m: &Message) -> Vec<Value> {
    if let Some(Value::Array(blocks)) = m.native_for(ProviderKind::Anthropic) {
        return blocks.clone();
    }
    let Message::Assistant {
        text, tool_calls, ..
    } = m
    else {
        return vec![];
    };
    let mut blocks = Vec::new();
    if let Some(t) = text.as_deref().filter(|t| !t.is_empty()) {
        blocks.push(json!({"type": "text", "text": t}));
    }
    for c in tool_calls {
        blocks.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}));
    }
    blocks
}

/// Builds the Messages request body (without `stream`, which the caller sets).
pub fn request_body(p: &ResolvedProvider, req: &ModelRequest) -> Value {
    let mut messages: Vec<Value> = Vec::new();
    // Consecutive user-side content (user text and tool results) shares one user message.
    let mut pending_user: Vec<Value> = Vec::new();
    for m in &req.messages {
        match m {
            Message::User { text } => {
                pending_user.push(json!({"type": "text", "text": text}));
            }
            Message::Tool {
                call_id,
                content,
                is_error,
                ..
            } => {
                let mut block =
                    json!({"type": "tool_result", "tool_use_id": call_id, "content": content});
                if *is_error {
                    block["is_error"] = json!(true);
                }
                pending_user.push(block);
            }
            Message::Assistant { .. } => {
                if !pending_user.is_empty() {
                    messages.push(
                        json!({"role": "user", "content": std::mem::take(&mut pending_user)}),
                    );
                }
                let blocks = assistant_blocks(m);
                if !blocks.is_empty() {
                    messages.push(json!({"role": "assistant", "content": blocks}));
                }
            }
        }
    }
    if !pending_user.is_empty() {
        messages.push(json!({"role": "user", "content": pending_user}));
    }
    // Cache breakpoint on the last block of the conversation.
    if let Some(last) = messages
        .last_mut()
        .and_then(|m| m.get_mut("content"))
        .and_then(|c| c.as_array_mut())
        .and_then(|c| c.last_mut())
    {
        last["cache_control"] = json!({"type": "ephemeral"});
    }

    let o = &req.options;
    let thinking_budget = o
        .get("thinking_budget")
        .and_then(Value::as_u64)
        .or_else(|| match o.get("reasoning_effort").and_then(Value::as_str) {
            Some("minimal") | Some("low") => Some(2048),
            Some("medium") => Some(8192),
            Some("high") => Some(24576),
            _ => None,
        });
    let max_tokens = o
        .get("max_output_tokens")
        .or_else(|| o.get("max_tokens"))
        .and_then(Value::as_u64)
        .or(p.model_config.max_output_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS + thinking_budget.unwrap_or(0));

    let mut body = json!({
        "model": p.model,
        "max_tokens": max_tokens,
    });
    if !req.system.is_empty() {
        body["system"] =
            json!([{"type": "text", "text": req.system, "cache_control": {"type": "ephemeral"}}]);
    }
    if !req.tools.is_empty() {
        body["tools"] = Value::Array(
            req.tools
                .iter()
                .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
                .collect(),
        );
    }
    body["messages"] = Value::Array(messages);
    if let Some(b) = thinking_budget {
        body["thinking"] = json!({"type": "enabled", "budget_tokens": b});
    }
    crate::merge_extra(
        &mut body,
        o,
        &[
            "thinking_budget",
            "reasoning_effort",
            "max_output_tokens",
            "max_tokens",
        ],
    );
    body
}

/// Usage from a Messages `usage` object; `input_tokens` here adds the cache reads and writes
/// to the API's uncached `input_tokens`. Cost not set.
pub fn usage_of(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let read = n("cache_read_input_tokens");
    let write = n("cache_creation_input_tokens");
    Usage {
        input_tokens: n("input_tokens") + read + write,
        cached_input_tokens: read,
        cache_write_tokens: write,
        output_tokens: n("output_tokens"),
        ..Default::default()
    }
}

/// Turns a complete message object (the non-streamed response, or one rebuilt from the
/// stream) into a response.
pub fn parse_message(p: &ResolvedProvider, msg: &Value) -> Result<ModelResponse> {
    let bad = |m: String| ModelError::api(&p.name, ErrorKind::BadResponse, m);
    let content = msg
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("the message has no content array".into()))?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    let mut native = Vec::new();
    for b in content {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                let t = b.get("text").and_then(Value::as_str).unwrap_or_default();
                text.push_str(t);
                native.push(json!({"type": "text", "text": t}));
            }
            Some("thinking") => {
                let t = b
                    .get("thinking")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                reasoning.push_str(t);
                native.push(json!({"type": "thinking", "thinking": t, "signature": b.get("signature").cloned().unwrap_or(json!(""))}));
            }
            Some("redacted_thinking") => {
                native.push(json!({"type": "redacted_thinking", "data": b.get("data").cloned().unwrap_or(json!(""))}));
            }
            Some("tool_use") => {
                let id = b.get("id").and_then(Value::as_str).unwrap_or_default();
                let name = b.get("name").and_then(Value::as_str).unwrap_or_default();
                let input = b.get("input").cloned().unwrap_or(json!({}));
                if id.is_empty() || name.is_empty() {
                    return Err(bad("a tool_use block has no id or name".into()));
                }
                tool_calls.push(ToolCall {
                    id: id.to_string(),
                    name: name.to_string(),
                    arguments: if input.is_object() {
                        input.clone()
                    } else {
                        json!({"_raw": input.to_string()})
                    },
                });
                native.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
            }
            // Blocks this agent does not use (server tools, citations) are dropped.
            _ => {}
        }
    }
    let mut usage = msg.get("usage").map(usage_of).unwrap_or_default();
    usage.cost_usd = crate::pricing::cost(&usage, &p.model_config);
    Ok(ModelResponse {
        text: (!text.is_empty()).then_some(text),
        reasoning: (!reasoning.is_empty()).then_some(reasoning),
        tool_calls,
        usage,
        stop_reason: msg
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        native: (!native.is_empty()).then_some(Native {
            kind: ProviderKind::Anthropic,
            value: Value::Array(native),
        }),
    })
}

/// Rebuilds the message object from the stream's events.
async fn read_stream(
    http: &Http,
    sse: &mut crate::http::Sse,
    on_delta: &mut (dyn for<'d> FnMut(Delta<'d>) + Send),
) -> Result<Value> {
    let mut message: Option<Value> = None;
    // Per block: the block, and the tool input JSON accumulated so far.
    let mut blocks: Vec<(Value, String)> = Vec::new();
    let bad = |m: String| ModelError::api(&http.provider, ErrorKind::BadResponse, m);
    while let Some(ev) = sse.next().await? {
        let data: Value = match ev.data.as_str() {
            "" => continue,
            d => serde_json::from_str(d)
                .map_err(|e| bad(format!("a stream event is not JSON ({e})")))?,
        };
        let ty = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(ev.event.as_str());
        match ty {
            "ping" => {}
            "error" => return Err(http.stream_error(&ev.data)),
            "message_start" => {
                message = data.get("message").cloned();
            }
            "content_block_start" => {
                let idx = data
                    .get("index")
                    .and_then(Value::as_u64)
                    .unwrap_or(blocks.len() as u64) as usize;
                let block = data.get("content_block").cloned().unwrap_or(json!({}));
                if block.get("type").and_then(Value::as_str) == Some("tool_use")
                    && let Some(n) = block.get("name").and_then(Value::as_str)
                {
                    on_delta(Delta::ToolCall(n));
                }
                if idx >= blocks.len() {
                    blocks.resize(idx + 1, (json!({}), String::new()));
                }
                blocks[idx] = (block, String::new());
            }
            "content_block_delta" => {
                let idx = data.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                let Some((block, json_buf)) = blocks.get_mut(idx) else {
                    return Err(bad(format!("a delta for block {idx}, which never started")));
                };
                let d = data.get("delta").cloned().unwrap_or(json!({}));
                let s = |k: &str| {
                    d.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let t = s("text");
                        on_delta(Delta::Text(&t));
                        let prev = block
                            .get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        block["text"] = json!(format!("{prev}{t}"));
                    }
                    Some("thinking_delta") => {
                        let t = s("thinking");
                        on_delta(Delta::Reasoning(&t));
                        let prev = block
                            .get("thinking")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        block["thinking"] = json!(format!("{prev}{t}"));
                    }
                    Some("signature_delta") => {
                        let prev = block
                            .get("signature")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        block["signature"] = json!(format!("{prev}{}", s("signature")));
                    }
                    Some("input_json_delta") => json_buf.push_str(&s("partial_json")),
                    _ => {}
                }
            }
            "content_block_stop" => {
                let idx = data.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                if let Some((block, json_buf)) = blocks.get_mut(idx)
                    && block.get("type").and_then(Value::as_str) == Some("tool_use")
                    && !json_buf.is_empty()
                {
                    block["input"] = crate::parse_arguments(json_buf);
                }
            }
            "message_delta" => {
                let m = message.get_or_insert_with(|| json!({}));
                if let Some(sr) = data.get("delta").and_then(|d| d.get("stop_reason")) {
                    m["stop_reason"] = sr.clone();
                }
                if let Some(u) = data.get("usage").and_then(Value::as_object) {
                    let usage = m
                        .as_object_mut()
                        .map(|o| o.entry("usage").or_insert(json!({})));
                    if let Some(Value::Object(dst)) = usage {
                        for (k, v) in u {
                            if !v.is_null() {
                                dst.insert(k.clone(), v.clone());
                            }
                        }
                    }
                }
            }
            "message_stop" => {
                let mut m =
                    message.ok_or_else(|| bad("message_stop before message_start".into()))?;
                m["content"] = Value::Array(blocks.into_iter().map(|(b, _)| b).collect());
                return Ok(m);
            }
            _ => {}
        }
    }
    Err(sse.cut("message_stop"))
}

#[async_trait]
impl Provider for Anthropic {
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
        crate::conversation_last(&mut body, "messages");
        let url = self.p.url("/v1/messages");
        let (resp, deadline) = self.http.post_json(&url, &self.headers(), &body).await?;
        let msg = if self.p.stream {
            let mut sse = self.http.sse(resp, deadline);
            read_stream(&self.http, &mut sse, on_delta).await?
        } else {
            self.http.body_json(resp, deadline).await?
        };
        parse_message(&self.p, &msg)
    }
    async fn probe(&self, model: Option<&str>) -> Result<String> {
        let model = model.unwrap_or(&self.p.model);
        if model.is_empty() || model == "-" {
            let v = self
                .http
                .get(&self.p.url("/v1/models"), &self.headers())
                .await?;
            let n = v.get("data").and_then(Value::as_array).map_or(0, Vec::len);
            return Ok(format!("ok: key accepted, {n} models available"));
        }
        let url = self.p.url(&format!("/v1/models/{model}"));
        let v = self.http.get(&url, &self.headers()).await?;
        Ok(format!(
            "ok: key accepted, model {} exists",
            v.get("display_name")
                .and_then(Value::as_str)
                .unwrap_or(model)
        ))
    }
}
