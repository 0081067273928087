//! Model providers behind one [`Provider`] trait, and the registry that turns a
//! `provider:model` name into a provider.
//!
//! Adapters: OpenAI Responses ([`openai_responses`]), OpenAI Chat Completions and every
//! server that speaks it ([`openai_chat`]: Ollama, vLLM, llama.cpp, OpenRouter, LM Studio),
//! Anthropic Messages ([`anthropic`]) and Google Gemini ([`gemini`]), all streaming over SSE;
//! plus `scripted:PATH`, which plays back a fixed file of turns for tests and `errand demo` and
//! is always labelled as scripted.
//!
//! This crate owns model wire formats, streaming, usage, prices, errors and the retry policy.
//! It must not run tools, touch the workspace or the database: the agent loop does that.

pub mod anthropic;
pub mod error;
pub mod gemini;
pub(crate) mod http;
pub mod openai_chat;
pub mod openai_responses;
pub mod pricing;
pub mod registry;
pub mod retry;
pub mod scripted;

use async_trait::async_trait;
pub use errand_core::ProviderKind;
use errand_core::Usage;
pub use error::{ErrorKind, ModelError};
pub use registry::{build, prepare, split_model_name};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// A tool the model may call, with a JSON Schema for its arguments.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// A tool call made by the model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: serde_json::Value,
}

/// A provider's own rendering of one assistant turn (its output items or content blocks,
/// reasoning and signatures included). The same kind of API gets it back verbatim on the next
/// turn, as the Responses, Messages and Gemini APIs require for reasoning to carry over; other
/// kinds use the portable fields of the message instead.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Native {
    pub kind: ProviderKind,
    pub value: serde_json::Value,
}

/// One message of the conversation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    User {
        text: String,
    },
    Assistant {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        native: Option<Native>,
    },
    Tool {
        call_id: String,
        name: String,
        content: String,
        is_error: bool,
    },
}

impl Message {
    /// The native rendering of an assistant message, if it came from `kind`.
    pub fn native_for(&self, kind: ProviderKind) -> Option<&serde_json::Value> {
        match self {
            Message::Assistant {
                native: Some(n), ..
            } if n.kind == kind => Some(&n.value),
            _ => None,
        }
    }
}

/// What the agent sends for one turn. `system` and `tools` stay byte-identical across turns
/// and `messages` only grows (until a compaction), so the provider's prompt cache hits.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelRequest {
    pub system: String,
    pub tools: Vec<ToolSpec>,
    pub messages: Vec<Message>,
    /// Provider options (`reasoning_effort`, `temperature`, `max_output_tokens`, …); keys an
    /// adapter does not map are merged into its request body as they are.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, serde_json::Value>,
    /// A stable key for the conversation, for providers that route by it for caching.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
    /// True when the request asks for a summary of the conversation (compaction).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub compaction: bool,
}

/// One model turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelResponse {
    pub text: Option<String>,
    pub reasoning: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    /// The provider's stop reason as it gave it (`end_turn`, `tool_use`, `stop`, `STOP`, …).
    pub stop_reason: Option<String>,
    pub native: Option<Native>,
}

impl ModelResponse {
    /// The assistant message to append to the conversation.
    pub fn to_message(&self) -> Message {
        Message::Assistant {
            text: self.text.clone(),
            tool_calls: self.tool_calls.clone(),
            native: self.native.clone(),
        }
    }
}

/// Progress while a response streams in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta<'a> {
    Text(&'a str),
    Reasoning(&'a str),
    /// A tool call started (its arguments follow).
    ToolCall(&'a str),
}

/// What `errand models check` learned about one model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckReport {
    pub provider: String,
    pub model: String,
    pub ok: bool,
    /// One line: what worked or what is wrong and how to fix it.
    pub detail: String,
    pub latency_ms: u64,
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// The `provider:model` name.
    fn name(&self) -> &str;
    /// True for playback providers: logs and output label them as scripted.
    fn scripted(&self) -> bool {
        false
    }
    /// The resolved settings of an HTTP provider (none for playback providers).
    fn settings(&self) -> Option<&registry::ResolvedProvider> {
        None
    }
    /// Tokens the model accepts in one request, when known.
    fn context_window(&self) -> Option<u64> {
        self.settings().and_then(|p| p.model_config.context_window)
    }
    /// How to retry this provider's retryable errors.
    fn retry_policy(&self) -> retry::RetryPolicy {
        retry::RetryPolicy {
            max_retries: self
                .settings()
                .map_or(retry::RetryPolicy::default().max_retries, |p| p.max_retries),
            ..Default::default()
        }
    }
    /// Runs one turn, streaming when the provider does, and reports progress to `on_delta`.
    /// Dropping the future aborts the request.
    async fn stream(
        &self,
        req: &ModelRequest,
        on_delta: &mut (dyn for<'d> FnMut(Delta<'d>) + Send),
    ) -> Result<ModelResponse>;
    /// One cheap request (no tokens spent where the API allows): is the endpoint reachable,
    /// is the key valid, does `model` exist? Returns what it found.
    async fn probe(&self, _model: Option<&str>) -> Result<String> {
        Ok("nothing to check".into())
    }
    /// Runs one turn without watching progress.
    async fn complete(&self, req: &ModelRequest) -> Result<ModelResponse> {
        self.stream(req, &mut |_| {}).await
    }
}

/// Installs the TLS crypto provider once per process (needed before the first HTTPS client).
pub fn install_tls() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when another provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Parses `KEY=VALUE` model options: VALUE is JSON when it parses as JSON (numbers, booleans,
/// objects), else a string.
pub fn parse_model_option(s: &str) -> std::result::Result<(String, serde_json::Value), String> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(format!(
            "model option '{s}' is not KEY=VALUE (for example reasoning_effort=high)"
        ));
    };
    let k = k.trim();
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err(format!(
            "model option key '{k}' may only use letters, digits, '_', '-' and '.'"
        ));
    }
    let value = serde_json::from_str(v.trim())
        .unwrap_or_else(|_| serde_json::Value::String(v.trim().to_string()));
    Ok((k.to_string(), value))
}

/// Merges `options` keys that an adapter did not map into its JSON body.
pub(crate) fn merge_extra(
    body: &mut serde_json::Value,
    options: &BTreeMap<String, serde_json::Value>,
    mapped: &[&str],
) {
    if let Some(obj) = body.as_object_mut() {
        for (k, v) in options {
            if !mapped.contains(&k.as_str()) {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Moves the conversation (`key`) to the end of a request body, after the instructions, tools
/// and settings, so that each request's bytes start with the previous request's bytes (the
/// workspace builds serde_json with `preserve_order`).
pub(crate) fn conversation_last(body: &mut serde_json::Value, key: &str) {
    if let Some(obj) = body.as_object_mut()
        && let Some(v) = obj.shift_remove(key)
    {
        obj.insert(key.to_string(), v);
    }
}

/// Parses tool-call arguments the model produced as a JSON string. Arguments that are not a
/// JSON object are passed on under `_raw` so the tool can say what is wrong.
pub(crate) fn parse_arguments(s: &str) -> serde_json::Value {
    if s.trim().is_empty() {
        return serde_json::json!({});
    }
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => serde_json::json!({ "_raw": s }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_options_parse_json_or_string() {
        assert_eq!(
            parse_model_option("reasoning_effort=high").unwrap_or_default(),
            ("reasoning_effort".into(), serde_json::json!("high"))
        );
        assert_eq!(
            parse_model_option("temperature=0.2").unwrap_or_default(),
            ("temperature".into(), serde_json::json!(0.2))
        );
        assert!(parse_model_option("nokey").is_err());
        assert!(parse_model_option("=x").is_err());
    }

    #[test]
    fn arguments_that_are_not_objects_are_kept_raw() {
        assert_eq!(parse_arguments(""), serde_json::json!({}));
        assert_eq!(parse_arguments("{\"a\":1}"), serde_json::json!({"a": 1}));
        assert_eq!(
            parse_arguments("{\"a\":"),
            serde_json::json!({"_raw": "{\"a\":"})
        );
    }
}
