//! Model providers behind one [`Provider`] trait, and the model registry that turns a
//! `provider:model` name into a provider.
//!
//! Today: `scripted:PATH`, which plays back a fixed file of turns (tests and `errand demo`),
//! and is always labelled as scripted. Real providers (OpenAI, Anthropic, Gemini and
//! OpenAI-compatible servers) plug in behind the same trait.
//!
//! This crate owns model wire formats, usage and errors. It must not run tools, touch the
//! workspace or the database: the agent loop does that.

pub mod scripted;

use async_trait::async_trait;
use errand_core::Usage;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model '{0}' is not of the form provider:model (for example scripted:./turns.json)")]
    BadName(String),
    #[error("unknown model provider '{provider}' in '{model}'; this build supports: scripted:PATH")]
    UnknownProvider { provider: String, model: String },
    #[error("scripted model file {path}: {message}")]
    Script { path: String, message: String },
    #[error("model request failed: {0}")]
    Request(String),
}

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
    },
    Tool {
        call_id: String,
        name: String,
        content: String,
        is_error: bool,
    },
}

/// What the agent sends for one turn. `system` and `tools` stay byte-identical across turns.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRequest {
    pub system: String,
    pub tools: Vec<ToolSpec>,
    pub messages: Vec<Message>,
}

/// One model turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelResponse {
    pub text: Option<String>,
    pub reasoning: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    pub stop_reason: Option<String>,
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// The `provider:model` name.
    fn name(&self) -> &str;
    /// True for playback providers: logs and output label them as scripted.
    fn scripted(&self) -> bool {
        false
    }
    async fn complete(&self, req: &ModelRequest) -> Result<ModelResponse>;
}

/// Splits `provider:model`.
pub fn split_model_name(name: &str) -> Result<(&str, &str)> {
    match name.split_once(':') {
        Some((p, m)) if !p.is_empty() && !m.is_empty() => Ok((p, m)),
        _ => Err(ModelError::BadName(name.to_string())),
    }
}

/// Validates a model name when a task is created and returns the payload that must travel
/// with the task (for `scripted`, the turns themselves, so that any worker can play them).
pub fn prepare(name: &str) -> Result<Option<serde_json::Value>> {
    let (provider, rest) = split_model_name(name)?;
    match provider {
        "scripted" => {
            let script = scripted::Script::load(std::path::Path::new(rest))?;
            serde_json::to_value(&script)
                .map(Some)
                .map_err(|e| ModelError::Script {
                    path: rest.to_string(),
                    message: e.to_string(),
                })
        }
        other => Err(ModelError::UnknownProvider {
            provider: other.to_string(),
            model: name.to_string(),
        }),
    }
}

/// Builds the provider for a claimed attempt from its name and creation-time payload.
pub fn build(name: &str, payload: Option<&serde_json::Value>) -> Result<Box<dyn Provider>> {
    let (provider, rest) = split_model_name(name)?;
    match provider {
        "scripted" => {
            let script = match payload {
                Some(v) => serde_json::from_value(v.clone()).map_err(|e| ModelError::Script {
                    path: rest.to_string(),
                    message: e.to_string(),
                })?,
                None => scripted::Script::load(std::path::Path::new(rest))?,
            };
            Ok(Box::new(scripted::ScriptedProvider::new(name, script)))
        }
        other => Err(ModelError::UnknownProvider {
            provider: other.to_string(),
            model: name.to_string(),
        }),
    }
}
