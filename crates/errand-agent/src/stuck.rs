//! The stuck detector: notices an agent that repeats itself instead of working, tells it, and
//! stops the run if it goes on.
//!
//! Two signals, both counted per run and carried over a resume (the state is serialisable):
//! - **Repeats**: the same call (tool and arguments, key order ignored) fails `repeats` times
//!   while the workspace does not change. An edit between two failing test runs is normal
//!   work, so any workspace change clears the counts.
//! - **No progress**: `turns` model turns in a row without progress. Progress is a change of
//!   the workspace's files (as the worker's checkpoint sees them; without one, a successful
//!   `write_file`, `edit` or `apply_patch`), a plan step newly completed, or a successful call
//!   not made before (reading a new file or running a new passing command is exploring; the
//!   same successful call again is not).
//!
//! The first time a signal fires, the agent is told (a note appended to the tool result it
//! sees) that the attempt stops if it continues. If the same signal fires again (the same
//! call fails once more, or one more turn passes without progress), the run stops. Progress
//! in between resets the warning. 0 disables a signal.

use errand_core::PlanStep;
use errand_model::ToolCall;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Thresholds (0 disables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StuckConfig {
    pub repeats: u32,
    pub turns: u32,
}

/// The successful calls remembered for "not made before"; past this the set starts over.
const MAX_REMEMBERED: usize = 50_000;

/// What the detector knows between turns.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StuckState {
    /// Failures per call signature since the workspace last changed.
    #[serde(default)]
    failures: BTreeMap<String, u32>,
    /// Signatures of calls that succeeded.
    #[serde(default)]
    succeeded: BTreeSet<String>,
    /// Model turns in a row without progress.
    #[serde(default)]
    idle_turns: u32,
    /// Plan steps completed in the latest plan.
    #[serde(default)]
    completed_steps: u32,
    /// The call whose repeats the agent was warned about.
    #[serde(default)]
    warned_repeat: Option<String>,
    /// Whether the agent was warned about making no progress.
    #[serde(default)]
    warned_idle: bool,
    /// Progress seen in the current turn.
    #[serde(default)]
    turn_progress: bool,
    /// A stop decided during the current turn (applied at its end).
    #[serde(default)]
    stop: Option<String>,
}

/// What the detector decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Tell the agent: `note` goes into what the model sees, `reason` into the event.
    Warn { reason: String, note: String },
    /// End the run.
    Stop { reason: String },
}

/// Arguments with object keys sorted, so that key order does not make two calls differ.
fn canonical(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A short stable id of a call: its tool and its arguments.
pub fn signature(call: &ToolCall) -> String {
    let mut text = String::with_capacity(64);
    text.push_str(&call.name);
    text.push('\0');
    canonical(&call.arguments, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// One line naming a call, for reasons and notes.
fn describe(call: &ToolCall) -> String {
    let args = call.arguments.to_string();
    let (args, _) = errand_core::text::cap_head_tail(&args, 160);
    format!("`{}` {}", call.name, args.replace('\n', " "))
}

const EDIT_TOOLS: [&str; 3] = ["write_file", "edit", "apply_patch"];

impl StuckState {
    /// After each tool call: its outcome, and the new plan if it was `update_plan`. Returns a
    /// warning to append to the call's result.
    pub fn after_call(
        &mut self,
        cfg: &StuckConfig,
        call: &ToolCall,
        ok: bool,
        plan: Option<&[PlanStep]>,
    ) -> Option<Verdict> {
        if let Some(steps) = plan {
            let done = steps.iter().filter(|s| s.status == "completed").count() as u32;
            if done > self.completed_steps {
                self.turn_progress = true;
            }
            self.completed_steps = done;
            return None;
        }
        let sig = signature(call);
        if ok {
            self.failures.remove(&sig);
            if call.name != "finish" && !self.succeeded.contains(&sig) {
                if self.succeeded.len() >= MAX_REMEMBERED {
                    self.succeeded.clear();
                }
                self.succeeded.insert(sig);
                self.turn_progress = true;
            }
            return None;
        }
        let n = {
            let n = self.failures.entry(sig.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if cfg.repeats == 0 {
            return None;
        }
        let what = describe(call);
        if n == cfg.repeats {
            self.warned_repeat = Some(sig);
            let reason = format!(
                "the same call failed {n} times with no change to the workspace in between: {what}"
            );
            let note = format!(
                "\n\n[errand] This exact call has now failed {n} times and nothing in the workspace changed in between. Making it again will stop the attempt as stuck. Change approach (read the error, look at the code, try something else), or call `finish` and explain what blocks you."
            );
            return Some(Verdict::Warn { reason, note });
        }
        if n > cfg.repeats && self.warned_repeat.as_deref() == Some(sig.as_str()) {
            self.stop.get_or_insert(format!(
                "the same call failed {n} times with no change to the workspace in between, after a warning: {what}"
            ));
        }
        None
    }

    /// At the end of a turn the run continues after, with whether the workspace's files
    /// changed during it. Returns what to do.
    pub fn end_turn(
        &mut self,
        cfg: &StuckConfig,
        workspace_changed: bool,
        edited: bool,
    ) -> Option<Verdict> {
        let changed = workspace_changed || edited;
        let progress = std::mem::take(&mut self.turn_progress) || changed;
        if changed {
            self.failures.clear();
            self.warned_repeat = None;
        }
        if let Some(reason) = self.stop.take() {
            return Some(Verdict::Stop { reason });
        }
        if progress {
            self.idle_turns = 0;
            self.warned_idle = false;
            return None;
        }
        self.idle_turns += 1;
        if cfg.turns == 0 {
            return None;
        }
        let n = self.idle_turns;
        if self.warned_idle && n > cfg.turns {
            return Some(Verdict::Stop {
                reason: format!(
                    "no progress in {n} model turns, after a warning (no change to the workspace, no plan step completed, no new successful call)"
                ),
            });
        }
        if n == cfg.turns {
            self.warned_idle = true;
            return Some(Verdict::Warn {
                reason: format!(
                    "no progress in {n} model turns (no change to the workspace, no plan step completed, no new successful call)"
                ),
                note: format!(
                    "\n\n[errand] {n} turns in a row made no progress: the workspace did not change, no plan step was completed and no call did anything new. If the next turn makes no progress either, the attempt stops as stuck. Change approach, or call `finish` and explain what blocks you."
                ),
            });
        }
        None
    }

    /// Whether a successful call of this tool changes files (the fallback when the sink
    /// cannot tell whether the workspace changed).
    pub fn edits(call: &ToolCall, ok: bool) -> bool {
        ok && EDIT_TOOLS.contains(&call.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(name: &str, args: serde_json::Value) -> ToolCall {
        ToolCall {
            id: "c".into(),
            name: name.into(),
            arguments: args,
        }
    }

    const CFG: StuckConfig = StuckConfig {
        repeats: 3,
        turns: 4,
    };

    #[test]
    fn key_order_does_not_matter() {
        let a = call("shell", json!({"command": "x", "workdir": "a"}));
        let b = call("shell", json!({"workdir": "a", "command": "x"}));
        assert_eq!(signature(&a), signature(&b));
        assert_ne!(
            signature(&a),
            signature(&call("shell", json!({"command": "y", "workdir": "a"})))
        );
        assert_ne!(
            signature(&a),
            signature(&call("read_file", json!({"command": "x", "workdir": "a"})))
        );
    }

    #[test]
    fn a_repeated_failure_warns_then_stops() {
        let mut s = StuckState::default();
        let c = call("shell", json!({"command": "make"}));
        assert_eq!(s.after_call(&CFG, &c, false, None), None);
        assert_eq!(s.end_turn(&CFG, false, false), None);
        assert_eq!(s.after_call(&CFG, &c, false, None), None);
        assert_eq!(s.end_turn(&CFG, false, false), None);
        match s.after_call(&CFG, &c, false, None) {
            Some(Verdict::Warn { reason, note }) => {
                assert!(reason.contains("failed 3 times"), "{reason}");
                assert!(note.contains("stop the attempt"), "{note}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.end_turn(&CFG, false, false), None);
        assert_eq!(s.after_call(&CFG, &c, false, None), None);
        match s.end_turn(&CFG, false, false) {
            Some(Verdict::Stop { reason }) => {
                assert!(reason.contains("failed 4 times"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_workspace_change_clears_repeats_and_the_warning() {
        let mut s = StuckState::default();
        let c = call("shell", json!({"command": "cargo test"}));
        for _ in 0..2 {
            s.after_call(&CFG, &c, false, None);
        }
        assert!(matches!(
            s.after_call(&CFG, &c, false, None),
            Some(Verdict::Warn { .. })
        ));
        // The agent edits a file: the next failure starts counting again.
        assert_eq!(s.end_turn(&CFG, true, false), None);
        for _ in 0..2 {
            assert_eq!(s.after_call(&CFG, &c, false, None), None);
            assert_eq!(s.end_turn(&CFG, true, false), None);
        }
        // A success clears the count of that call as well.
        s.after_call(&CFG, &c, false, None);
        s.after_call(&CFG, &c, true, None);
        assert_eq!(s.failures.get(&signature(&c)), None);
    }

    #[test]
    fn no_progress_warns_then_stops_and_progress_resets() {
        let mut s = StuckState::default();
        let same = call("read_file", json!({"path": "a"}));
        assert_eq!(s.after_call(&CFG, &same, true, None), None);
        assert_eq!(
            s.end_turn(&CFG, false, false),
            None,
            "a new call is progress"
        );
        for _ in 0..3 {
            s.after_call(&CFG, &same, true, None);
            assert_eq!(s.end_turn(&CFG, false, false), None);
        }
        s.after_call(&CFG, &same, true, None);
        assert!(matches!(
            s.end_turn(&CFG, false, false),
            Some(Verdict::Warn { .. })
        ));
        // Progress after the warning resets everything.
        let plan = [PlanStep {
            step: "x".into(),
            status: "completed".into(),
        }];
        s.after_call(&CFG, &call("update_plan", json!({})), true, Some(&plan));
        assert_eq!(s.end_turn(&CFG, false, false), None);
        for _ in 0..3 {
            assert_eq!(s.end_turn(&CFG, false, false), None);
        }
        assert!(matches!(
            s.end_turn(&CFG, false, false),
            Some(Verdict::Warn { .. })
        ));
        match s.end_turn(&CFG, false, false) {
            Some(Verdict::Stop { reason }) => {
                assert!(reason.contains("no progress in 5"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zero_disables() {
        let off = StuckConfig {
            repeats: 0,
            turns: 0,
        };
        let mut s = StuckState::default();
        let c = call("shell", json!({"command": "false"}));
        for _ in 0..50 {
            assert_eq!(s.after_call(&off, &c, false, None), None);
            assert_eq!(s.end_turn(&off, false, false), None);
        }
    }

    #[test]
    fn state_survives_serialisation() {
        let mut s = StuckState::default();
        let c = call("shell", json!({"command": "false"}));
        s.after_call(&CFG, &c, false, None);
        s.after_call(&CFG, &c, false, None);
        s.end_turn(&CFG, false, false);
        let back: StuckState = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let mut back = back;
        assert!(matches!(
            back.after_call(&CFG, &c, false, None),
            Some(Verdict::Warn { .. })
        ));
    }
}
