//! Keeping secret values out of everything the worker records.
//!
//! The worker reads the values of an attempt's secrets (all of them, exposed to the agent or
//! not) from its own environment and builds a [`Redactor`]. Every call that leaves the worker
//! for the queue goes through [`RedactingClient`], the one place where redaction happens:
//! events (an `output` chunk through a per-command, per-stream [`StreamRedactor`], so that a
//! value split across chunks is still caught; every other event through its JSON form, so
//! every string field of every kind is covered), status reasons, and the outcome (error,
//! summary, diff, checks, conversation, delivery). The agent's changes are scrubbed before
//! they are committed ([`scrub_files`]).

use crate::WorkerClient;
use async_trait::async_trait;
use errand_core::redact::{Redactor, StreamRedactor};
use errand_core::{
    Delivery, EventKind, OutputStream, SecretConfig, SetupInfo, Status, Task, Usage,
};
use errand_store::{
    AttemptOutcome, Checkpoint, ClaimRequest, ClaimedAttempt, LeaseState, PlanSubmission, Result,
};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The redactor of an attempt: the values of all its secrets found by `lookup` (the worker's
/// environment), whether exposed to the agent or not.
pub fn attempt_redactor(
    secrets: &BTreeMap<String, SecretConfig>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Redactor {
    Redactor::new(
        secrets
            .iter()
            .filter_map(|(name, sc)| lookup(&sc.from_env).map(|v| (name.clone(), v))),
    )
}

/// `NAME=value` of the secrets configured with `expose_to_agent`, for the agent's box. Values
/// too short to redact are left out (the redactor lists them in [`Redactor::ignored`]).
pub fn exposed_env(
    secrets: &BTreeMap<String, SecretConfig>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    secrets
        .iter()
        .filter(|(_, sc)| sc.expose_to_agent)
        .filter_map(|(name, sc)| lookup(&sc.from_env).map(|v| (name.clone(), v)))
        .filter(|(_, v)| v.len() >= errand_core::redact::MIN_SECRET_LEN)
        .collect()
}

/// A variable of the worker's own environment (`None` when unset or not UTF-8).
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// One output stream of one command (by call id), with its redactor.
type Streams = Vec<((Option<String>, OutputStream), StreamRedactor)>;

/// One attempt's redactor and the output it holds back.
struct AttemptRedaction {
    redactor: Redactor,
    /// Per command (call id) and stream, in the order they started.
    streams: Mutex<Streams>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AttemptRedaction {
    fn events(&self, events: Vec<EventKind>) -> Vec<EventKind> {
        let mut out = Vec::with_capacity(events.len());
        let mut streams = lock(&self.streams);
        for ev in events {
            match ev {
                EventKind::Output {
                    call_id,
                    stream,
                    data,
                } => {
                    let key = (call_id, stream);
                    let i = match streams.iter().position(|(k, _)| *k == key) {
                        Some(i) => i,
                        None => {
                            streams.push((key.clone(), StreamRedactor::new(self.redactor.clone())));
                            streams.len() - 1
                        }
                    };
                    let data = streams[i].1.push(&data);
                    if !data.is_empty() {
                        let (call_id, stream) = key;
                        out.push(EventKind::Output {
                            call_id,
                            stream,
                            data,
                        });
                    }
                }
                other => {
                    // Commands run one at a time, so any other event (`command_finished`
                    // first of all) means the held output is complete: it goes first.
                    Self::flush(&mut streams, &mut out);
                    out.push(self.event(other));
                }
            }
        }
        out
    }

    /// The rest of every stream, as `output` events.
    fn flush(streams: &mut Streams, out: &mut Vec<EventKind>) {
        for ((call_id, stream), mut s) in streams.drain(..) {
            let data = s.finish();
            if !data.is_empty() {
                out.push(EventKind::Output {
                    call_id,
                    stream,
                    data,
                });
            }
        }
    }

    fn pending(&self) -> Vec<EventKind> {
        let mut out = Vec::new();
        Self::flush(&mut lock(&self.streams), &mut out);
        out
    }

    /// Any event, through its JSON form: every string of every kind.
    fn event(&self, ev: EventKind) -> EventKind {
        let kind = ev.type_name();
        let Ok(mut v) = serde_json::to_value(&ev) else {
            return EventKind::Notice {
                message: format!(
                    "a {kind} event could not be checked for secrets and was left out"
                ),
            };
        };
        if !self.redactor.redact_json(&mut v) {
            return ev;
        }
        serde_json::from_value(v.clone()).unwrap_or_else(|_| EventKind::Notice {
            message: format!("{kind} (redacted): {v}"),
        })
    }

    fn text(&self, s: Option<String>) -> Option<String> {
        s.map(|s| self.redactor.redact_string(s))
    }

    fn outcome(&self, mut o: AttemptOutcome) -> AttemptOutcome {
        let r = &self.redactor;
        o.error = self.text(o.error);
        o.summary = self.text(o.summary);
        o.diff = self.text(o.diff);
        if let Some(stats) = &mut o.diff_stats {
            for f in &mut stats.files {
                f.path = r.redact_string(std::mem::take(&mut f.path));
            }
        }
        for c in &mut o.checks {
            c.name = r.redact_string(std::mem::take(&mut c.name));
            c.command = r.redact_string(std::mem::take(&mut c.command));
        }
        if let Some(conv) = &mut o.conversation {
            r.redact_json(conv);
        }
        if let Some(d) = &mut o.delivery {
            d.remote = r.redact_string(std::mem::take(&mut d.remote));
            d.error = self.text(d.error.take());
            d.pr_url = self.text(d.pr_url.take());
        }
        o
    }

    fn plan(&self, mut p: PlanSubmission) -> PlanSubmission {
        let r = &self.redactor;
        p.explanation = self.text(p.explanation);
        p.summary = self.text(p.summary);
        for step in &mut p.steps {
            step.step = r.redact_string(std::mem::take(&mut step.step));
        }
        if let Some(conv) = &mut p.conversation {
            r.redact_json(conv);
        }
        p
    }
}

/// Wraps the worker's client: everything an attempt with secrets sends to the queue is
/// redacted here, and nowhere else.
pub(crate) struct RedactingClient {
    inner: Arc<dyn WorkerClient>,
    attempts: Mutex<HashMap<String, Arc<AttemptRedaction>>>,
}

impl RedactingClient {
    pub(crate) fn new(inner: Arc<dyn WorkerClient>) -> RedactingClient {
        RedactingClient {
            inner,
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// From now on, what is sent for `attempt` is redacted with `redactor`.
    pub(crate) fn register(&self, attempt: &str, redactor: Redactor) {
        if redactor.is_empty() {
            return;
        }
        lock(&self.attempts).insert(
            attempt.to_string(),
            Arc::new(AttemptRedaction {
                redactor,
                streams: Mutex::new(Vec::new()),
            }),
        );
    }

    pub(crate) fn unregister(&self, attempt: &str) {
        lock(&self.attempts).remove(attempt);
    }

    fn get(&self, attempt: &str) -> Option<Arc<AttemptRedaction>> {
        lock(&self.attempts).get(attempt).cloned()
    }

    /// The attempt's redactor (empty when it has no secrets).
    pub(crate) fn redactor(&self, attempt: &str) -> Redactor {
        self.get(attempt)
            .map(|a| a.redactor.clone())
            .unwrap_or_default()
    }

    /// `text` redacted for `attempt`, for log lines.
    pub(crate) fn redact(&self, attempt: &str, text: &str) -> String {
        self.redactor(attempt).redact(text).into_owned()
    }
}

#[async_trait]
impl WorkerClient for RedactingClient {
    async fn claim(&self, req: &ClaimRequest) -> Result<Option<ClaimedAttempt>> {
        self.inner.claim(req).await
    }
    async fn wait_for_work(&self) {
        self.inner.wait_for_work().await
    }
    async fn heartbeat(&self, attempt: &str, worker: &str, ttl_ms: i64) -> Result<LeaseState> {
        self.inner.heartbeat(attempt, worker, ttl_ms).await
    }
    async fn cancel_hint(&self, attempt: &str) {
        self.inner.cancel_hint(attempt).await
    }
    async fn transition(
        &self,
        attempt: &str,
        worker: &str,
        from: Status,
        to: Status,
        reason: Option<String>,
    ) -> Result<()> {
        let reason = match self.get(attempt) {
            Some(a) => a.text(reason),
            None => reason,
        };
        self.inner
            .transition(attempt, worker, from, to, reason)
            .await
    }
    async fn append_events(
        &self,
        attempt: &str,
        worker: &str,
        events: Vec<EventKind>,
    ) -> Result<i64> {
        let events = match self.get(attempt) {
            Some(a) => a.events(events),
            None => events,
        };
        self.inner.append_events(attempt, worker, events).await
    }
    async fn update_usage(
        &self,
        attempt: &str,
        worker: &str,
        usage: Usage,
        turns: u64,
    ) -> Result<()> {
        self.inner.update_usage(attempt, worker, usage, turns).await
    }
    async fn finish(&self, attempt: &str, worker: &str, outcome: AttemptOutcome) -> Result<Status> {
        let outcome = match self.get(attempt) {
            Some(a) => {
                let held = a.pending();
                if !held.is_empty() {
                    self.inner.append_events(attempt, worker, held).await?;
                }
                a.outcome(outcome)
            }
            None => outcome,
        };
        self.inner.finish(attempt, worker, outcome).await
    }
    async fn submit_plan(
        &self,
        attempt: &str,
        worker: &str,
        plan: PlanSubmission,
    ) -> Result<Status> {
        let plan = match self.get(attempt) {
            Some(a) => {
                let held = a.pending();
                if !held.is_empty() {
                    self.inner.append_events(attempt, worker, held).await?;
                }
                a.plan(plan)
            }
            None => plan,
        };
        self.inner.submit_plan(attempt, worker, plan).await
    }
    async fn claim_result_delivery(&self, task: &str) -> Result<Option<Task>> {
        self.inner.claim_result_delivery(task).await
    }
    async fn record_setup(&self, attempt: &str, worker: &str, setup: &SetupInfo) -> Result<()> {
        self.inner.record_setup(attempt, worker, setup).await
    }
    async fn checkpoint(
        &self,
        attempt: &str,
        worker: &str,
        mut checkpoint: Checkpoint,
    ) -> Result<()> {
        if let Some(a) = self.get(attempt) {
            let held = a.pending();
            if !held.is_empty() {
                self.inner.append_events(attempt, worker, held).await?;
            }
            a.redactor.redact_json(&mut checkpoint.conversation);
            a.redactor.redact_json(&mut checkpoint.state);
        }
        self.inner.checkpoint(attempt, worker, checkpoint).await
    }
    async fn record_delivery(&self, attempt: &str, delivery: &Delivery) -> Result<()> {
        match self.get(attempt) {
            Some(a) => {
                let mut d = delivery.clone();
                d.remote = a.redactor.redact_string(std::mem::take(&mut d.remote));
                d.error = a.text(d.error.take());
                d.pr_url = a.text(d.pr_url.take());
                self.inner.record_delivery(attempt, &d).await
            }
            None => self.inner.record_delivery(attempt, delivery).await,
        }
    }
}

/// Largest file scanned for secret values before a commit (the checkpoints' limit).
pub use errand_git::checkpoint::MAX_SCRUB_FILE;

/// The [`Scrubbed::problem`] of a file whose path holds a secret value.
pub const NAME_HOLDS_A_VALUE: &str = "its path holds a secret value";

/// Splits `paths` into those whose path holds a secret value (with the secrets' names) and
/// the others.
pub fn split_named(
    redactor: &Redactor,
    paths: Vec<PathBuf>,
) -> (Vec<(PathBuf, Vec<String>)>, Vec<PathBuf>) {
    use std::os::unix::ffi::OsStrExt as _;
    let mut named = Vec::new();
    let mut rest = Vec::new();
    for p in paths {
        let found = redactor.find(p.as_os_str().as_bytes());
        if found.is_empty() {
            rest.push(p);
        } else {
            named.push((p, found.into_iter().map(str::to_string).collect()));
        }
    }
    (named, rest)
}

/// What [`scrub_files`] found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scrubbed {
    /// Workspace-relative path.
    pub path: String,
    /// The secrets whose values were replaced (names only).
    pub secrets: Vec<String>,
    /// Why the file could not be scrubbed, if it could not.
    pub problem: Option<String>,
}

/// Replaces secret values in the listed workspace files (and symbolic link targets) with
/// their placeholders. Never follows a link out of the workspace: a path whose parent is not
/// inside `root` is skipped. Returns the files that held a value, or could not be checked.
pub fn scrub_files(root: &Path, redactor: &Redactor, paths: &[PathBuf]) -> Vec<Scrubbed> {
    let mut out = Vec::new();
    let Ok(root) = root.canonicalize() else {
        return out;
    };
    for rel in paths {
        let shown = rel.display().to_string();
        let full = root.join(rel);
        let inside = full
            .parent()
            .and_then(|p| p.canonicalize().ok())
            .is_some_and(|p| p.starts_with(&root));
        if !inside || rel.is_absolute() {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&full) else {
            continue;
        };
        let found = |names: Vec<&str>| names.into_iter().map(str::to_string).collect::<Vec<_>>();
        let problem = |secrets: Vec<String>, e: &dyn std::fmt::Display| Scrubbed {
            path: shown.clone(),
            secrets,
            problem: Some(e.to_string()),
        };
        if meta.file_type().is_symlink() {
            use std::os::unix::ffi::OsStrExt as _;
            let Ok(target) = std::fs::read_link(&full) else {
                continue;
            };
            let bytes = target.as_os_str().as_bytes();
            let names = found(redactor.find(bytes));
            if names.is_empty() {
                continue;
            }
            let new = std::ffi::OsStr::from_bytes(&redactor.redact_bytes(bytes)).to_owned();
            let done =
                std::fs::remove_file(&full).and_then(|_| std::os::unix::fs::symlink(&new, &full));
            out.push(match done {
                Ok(()) => Scrubbed {
                    path: shown,
                    secrets: names,
                    problem: None,
                },
                Err(e) => problem(names, &e),
            });
        } else if meta.is_file() {
            if meta.len() > MAX_SCRUB_FILE {
                out.push(problem(
                    Vec::new(),
                    &format!(
                        "larger than {} MiB, not checked for secret values",
                        MAX_SCRUB_FILE >> 20
                    ),
                ));
                continue;
            }
            let data = match std::fs::read(&full) {
                Ok(d) => d,
                Err(e) => {
                    out.push(problem(Vec::new(), &e));
                    continue;
                }
            };
            let names = found(redactor.find(&data));
            if names.is_empty() {
                continue;
            }
            // Written in place: the file keeps its mode.
            match std::fs::write(&full, redactor.redact_bytes(&data)) {
                Ok(()) => out.push(Scrubbed {
                    path: shown,
                    secrets: names,
                    problem: None,
                }),
                Err(e) => out.push(problem(names, &e)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> BTreeMap<String, SecretConfig> {
        let mut m = BTreeMap::new();
        m.insert(
            "EXPOSED".to_string(),
            SecretConfig {
                from_env: "VAR_A".into(),
                expose_to_agent: true,
            },
        );
        m.insert(
            "HIDDEN".to_string(),
            SecretConfig {
                from_env: "VAR_B".into(),
                expose_to_agent: false,
            },
        );
        m.insert(
            "SHORT".to_string(),
            SecretConfig {
                from_env: "VAR_C".into(),
                expose_to_agent: true,
            },
        );
        m
    }

    fn lookup(var: &str) -> Option<String> {
        match var {
            "VAR_A" => Some("exposed-value-1".into()),
            "VAR_B" => Some("hidden-value-2".into()),
            "VAR_C" => Some("abc".into()),
            _ => None,
        }
    }

    #[test]
    fn every_secret_is_redacted_and_only_exposed_ones_reach_the_box() {
        let r = attempt_redactor(&secrets(), lookup);
        assert_eq!(r.names(), vec!["EXPOSED", "HIDDEN"]);
        assert_eq!(r.ignored(), ["SHORT".to_string()]);
        assert_eq!(
            exposed_env(&secrets(), lookup),
            vec![("EXPOSED".to_string(), "exposed-value-1".to_string())]
        );
    }

    fn output(call: &str, data: &str) -> EventKind {
        EventKind::Output {
            call_id: Some(call.into()),
            stream: OutputStream::Stdout,
            data: data.into(),
        }
    }

    #[test]
    fn output_split_across_batches_is_caught_and_released_before_the_command_ends() {
        let a = AttemptRedaction {
            redactor: attempt_redactor(&secrets(), lookup),
            streams: Mutex::new(Vec::new()),
        };
        let first = a.events(vec![output("c1", "token: exposed-va")]);
        assert_eq!(first, vec![output("c1", "token: ")]);
        let second = a.events(vec![
            output("c1", "lue-1 and exposed"),
            EventKind::CommandFinished {
                call_id: Some("c1".into()),
                exit_code: Some(0),
                signal: None,
                duration_ms: 1,
                killed_by: None,
            },
        ]);
        assert_eq!(second.len(), 3, "{second:?}");
        assert_eq!(second[0], output("c1", "[REDACTED:EXPOSED] and "));
        assert_eq!(second[1], output("c1", "exposed"));
        assert!(matches!(second[2], EventKind::CommandFinished { .. }));
        assert!(a.pending().is_empty());
    }

    #[test]
    fn every_kind_of_event_is_redacted() {
        let a = AttemptRedaction {
            redactor: attempt_redactor(&secrets(), lookup),
            streams: Mutex::new(Vec::new()),
        };
        let evs = a.events(vec![
            EventKind::ToolCall {
                call_id: "c".into(),
                name: "shell".into(),
                arguments: serde_json::json!({"command": "echo hidden-value-2"}),
            },
            EventKind::Error {
                message: "could not run: exposed-value-1".into(),
            },
        ]);
        let text = serde_json::to_string(&evs).unwrap();
        assert!(!text.contains("value-"), "{text}");
        assert!(
            text.contains("echo [REDACTED:HIDDEN]") && text.contains("run: [REDACTED:EXPOSED]"),
            "{text}"
        );
    }

    #[test]
    fn files_are_scrubbed_in_place_without_leaving_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join("sub")).unwrap();
        std::fs::write(ws.join("sub/config.env"), "TOKEN=hidden-value-2\n").unwrap();
        std::fs::write(ws.join("clean.txt"), "nothing\n").unwrap();
        std::os::unix::fs::symlink("/tmp/exposed-value-1", ws.join("link")).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("f"), "hidden-value-2").unwrap();
        std::os::unix::fs::symlink(&outside, ws.join("out")).unwrap();
        let r = attempt_redactor(&secrets(), lookup);
        let found = scrub_files(
            &ws,
            &r,
            &[
                "sub/config.env".into(),
                "clean.txt".into(),
                "link".into(),
                "out/f".into(),
            ],
        );
        assert_eq!(
            found,
            vec![
                Scrubbed {
                    path: "sub/config.env".into(),
                    secrets: vec!["HIDDEN".into()],
                    problem: None
                },
                Scrubbed {
                    path: "link".into(),
                    secrets: vec!["EXPOSED".into()],
                    problem: None
                },
            ]
        );
        assert_eq!(
            std::fs::read_to_string(ws.join("sub/config.env")).unwrap(),
            "TOKEN=[REDACTED:HIDDEN]\n"
        );
        assert_eq!(
            std::fs::read_link(ws.join("link")).unwrap(),
            PathBuf::from("/tmp/[REDACTED:EXPOSED]")
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("f")).unwrap(),
            "hidden-value-2",
            "a file behind a link out of the workspace is not touched"
        );
    }
}
