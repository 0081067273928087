//! The scripted provider: plays back a fixed sequence of turns from a JSON file.
//!
//! File format: `{"turns": [{"text"?: string, "tool_calls"?: [{"name": string, "arguments": object}]}]}`.
//! Turn *n* of the conversation gets entry *n* of the file, whatever the conversation holds,
//! so a restarted attempt replays the same script. The position comes from the conversation:
//! the turn number in the id of the last assistant turn's tool calls (`call_<turn>_<i>`, as
//! this provider names them), which survives compaction; else the number of assistant turns
//! in it. So a conversation restored from a checkpoint, compacted or not, resumes the script
//! where it was. Compaction requests do not use up a turn: they get a summary made from the
//! conversation. Past the end, the model says it has no more turns and the run ends.

use crate::{Delta, ModelError, ModelRequest, ModelResponse, Provider, Result, ToolCall};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScriptedCall {
    pub name: String,
    #[serde(default = "empty_object")]
    pub arguments: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScriptedTurn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ScriptedCall>,
    /// Usage to report for this turn (tests of budgets and compaction); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<errand_core::Usage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Script {
    pub turns: Vec<ScriptedTurn>,
}

impl Script {
    /// Reads and validates a script file.
    pub fn load(path: &Path) -> Result<Script> {
        let shown = path.display().to_string();
        let err = |message: String| ModelError::Script {
            path: shown.clone(),
            message,
        };
        const MAX: u64 = 16 << 20;
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        if !meta.is_file() {
            return Err(err("cannot read it: not a regular file".into()));
        }
        if meta.len() > MAX {
            return Err(err(format!(
                "cannot read it: {} bytes is over the 16 MiB limit",
                meta.len()
            )));
        }
        let mut text = String::new();
        use std::io::Read;
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX).read_to_string(&mut text))
            .map_err(|e| err(format!("cannot read it: {e}")))?;
        Script::parse(&text).map_err(err)
    }

    /// Parses and validates script JSON; the error says what is wrong and where.
    pub fn parse(text: &str) -> std::result::Result<Script, String> {
        let script: Script = serde_json::from_str(text).map_err(|e| {
            format!("not a valid script ({e}); expected {{\"turns\": [{{\"text\": \"…\", \"tool_calls\": [{{\"name\": \"shell\", \"arguments\": {{…}}}}]}}]}}")
        })?;
        if script.turns.is_empty() {
            return Err("the script has no turns; add at least one to \"turns\"".into());
        }
        for (i, t) in script.turns.iter().enumerate() {
            for c in &t.tool_calls {
                if c.name.trim().is_empty() {
                    return Err(format!("turn {}: a tool call has an empty name", i + 1));
                }
                if !c.arguments.is_object() {
                    return Err(format!(
                        "turn {}: arguments of '{}' must be a JSON object",
                        i + 1,
                        c.name
                    ));
                }
            }
        }
        Ok(script)
    }
}

/// Plays a [`Script`].
pub struct ScriptedProvider {
    name: String,
    script: Script,
    /// The next turn to play; set from the conversation on the first request.
    next: std::sync::Mutex<Option<usize>>,
}

impl ScriptedProvider {
    pub fn new(name: &str, script: Script) -> ScriptedProvider {
        ScriptedProvider {
            name: name.to_string(),
            script,
            next: std::sync::Mutex::new(None),
        }
    }
}

/// A deterministic summary for a compaction request: the tools called so far.
fn scripted_summary(req: &ModelRequest) -> String {
    let mut calls = Vec::new();
    for m in &req.messages {
        if let crate::Message::Assistant { tool_calls, .. } = m {
            calls.extend(tool_calls.iter().map(|c| c.name.as_str()));
        }
    }
    format!(
        "[SCRIPTED summary] {} earlier tool calls: {}",
        calls.len(),
        errand_core::text::cap_head_tail(&calls.join(", "), 2048).0
    )
}

/// The script entry the next turn of this conversation plays (0-based).
fn position(messages: &[crate::Message]) -> usize {
    let last_turn = messages.iter().rev().find_map(|m| match m {
        crate::Message::Assistant { tool_calls, .. } => Some(
            tool_calls
                .first()
                .and_then(|c| c.id.strip_prefix("call_"))
                .and_then(|rest| rest.split('_').next())
                .and_then(|n| n.parse::<usize>().ok()),
        ),
        _ => None,
    });
    match last_turn {
        Some(Some(n)) => n,
        _ => messages
            .iter()
            .filter(|m| matches!(m, crate::Message::Assistant { .. }))
            .count(),
    }
}

#[async_trait]
impl Provider for ScriptedProvider {
    fn name(&self) -> &str {
        &self.name
    }
    fn scripted(&self) -> bool {
        true
    }
    async fn stream(
        &self,
        req: &ModelRequest,
        _on_delta: &mut (dyn for<'d> FnMut(Delta<'d>) + Send),
    ) -> Result<ModelResponse> {
        if req.compaction {
            return Ok(ModelResponse {
                text: Some(scripted_summary(req)),
                stop_reason: Some("end_turn".into()),
                ..Default::default()
            });
        }
        let turn = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let n = next.unwrap_or_else(|| position(&req.messages));
            *next = Some(n + 1);
            n
        };
        let Some(t) = self.script.turns.get(turn) else {
            return Ok(ModelResponse {
                text: Some(format!(
                    "(scripted model: the script has only {} turns; ending the run)",
                    self.script.turns.len()
                )),
                stop_reason: Some("end_of_script".into()),
                ..Default::default()
            });
        };
        let tool_calls = t
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, c)| ToolCall {
                id: format!("call_{}_{}", turn + 1, i + 1),
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            })
            .collect::<Vec<_>>();
        Ok(ModelResponse {
            text: t.text.clone(),
            reasoning: None,
            stop_reason: Some(if tool_calls.is_empty() {
                "end_turn".into()
            } else {
                "tool_use".into()
            }),
            tool_calls,
            usage: t.usage.unwrap_or_default(),
            native: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    #[test]
    fn parse_errors_are_specific() {
        assert!(
            Script::parse("{")
                .unwrap_err()
                .contains("not a valid script")
        );
        assert!(
            Script::parse(r#"{"turns": []}"#)
                .unwrap_err()
                .contains("no turns")
        );
        assert!(
            Script::parse(r#"{"turns": [{"tool_calls": [{"name": "shell", "arguments": 3}]}]}"#)
                .unwrap_err()
                .contains("must be a JSON object")
        );
        assert!(
            Script::parse(r#"{"turns": [{"txt": "x"}]}"#)
                .unwrap_err()
                .contains("txt")
        );
    }

    #[tokio::test]
    async fn plays_turns_in_order_by_conversation_position() {
        let s = Script::parse(
            r#"{"turns": [{"text": "look", "tool_calls": [{"name": "list_dir", "arguments": {"path": "."}}]}, {"text": "done"}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let p = ScriptedProvider::new("scripted:x", s);
        let mut req = ModelRequest {
            messages: vec![Message::User { text: "hi".into() }],
            ..Default::default()
        };
        let r1 = p.complete(&req).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r1.tool_calls[0].name, "list_dir");
        assert_eq!(r1.tool_calls[0].id, "call_1_1");
        req.messages.push(r1.to_message());
        let r2 = p.complete(&req).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r2.text.as_deref(), Some("done"));
        assert!(r2.tool_calls.is_empty());
        req.messages.push(r2.to_message());
        let r3 = p.complete(&req).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r3.stop_reason.as_deref(), Some("end_of_script"));
    }

    #[tokio::test]
    async fn a_compacted_conversation_resumes_at_its_last_turn() {
        let turns: Vec<String> = (1..=6)
            .map(|i| format!(r#"{{"tool_calls": [{{"name": "shell", "arguments": {{"command": "echo {i}"}}}}]}}"#))
            .collect();
        let s = Script::parse(&format!(r#"{{"turns": [{}]}}"#, turns.join(",")))
            .unwrap_or_else(|e| panic!("{e}"));
        // A conversation whose turns 1–3 were replaced by a summary and turn 4 kept: the next
        // turn is 5, although only one assistant turn is left in it.
        let kept = Message::Assistant {
            text: None,
            tool_calls: vec![ToolCall {
                id: "call_4_1".into(),
                name: "shell".into(),
                arguments: serde_json::json!({"command": "echo 4"}),
            }],
            native: None,
        };
        let req = ModelRequest {
            messages: vec![
                Message::User {
                    text: "task".into(),
                },
                Message::User {
                    text: "<summary_of_earlier_turns>…".into(),
                },
                kept,
                Message::Tool {
                    call_id: "call_4_1".into(),
                    name: "shell".into(),
                    content: "4".into(),
                    is_error: false,
                },
            ],
            ..Default::default()
        };
        let p = ScriptedProvider::new("scripted:x", s);
        let r = p.complete(&req).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.tool_calls[0].id, "call_5_1");
        assert_eq!(r.tool_calls[0].arguments["command"], "echo 5");
    }
}
