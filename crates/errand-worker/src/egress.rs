//! The egress proxy of one phase of an attempt whose network mode is `allowlist`.
//!
//! The proxy (`errand_proxy`) listens on a Unix socket in the attempt's directory; the box
//! reaches it only through a bridge on its own loopback (`127.0.0.1:3128`), with
//! `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` set. Every decision becomes a `net` event of the
//! attempt, and denials are kept so that the agent is told why in its tool output.

use crate::WorkerClient;
use errand_core::{EventKind, NetworkConfig};
use errand_proxy::{NetRecord, Policy, Presets, Proxy, ProxyConfig, ProxyHandle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// The port the proxy is bridged to inside the box.
pub const PROXY_PORT: u16 = 3128;

/// Denials kept for the agent's next tool result, at most.
const MAX_PENDING_DENIALS: usize = 20;

/// The proxy of one phase, alive as long as this value.
pub struct PhaseProxy {
    /// The Unix socket the box's bridge connects to.
    pub socket: PathBuf,
    /// One line per denial not yet shown to the agent.
    denials: Arc<Mutex<Vec<String>>>,
    handle: Option<ProxyHandle>,
    pump: tokio::task::JoinHandle<()>,
    policy: Arc<Policy>,
}

impl std::fmt::Debug for PhaseProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhaseProxy")
            .field("socket", &self.socket)
            .field("policy", &self.policy.summary())
            .finish_non_exhaustive()
    }
}

impl PhaseProxy {
    /// One line saying what this phase may reach.
    pub fn summary(&self) -> String {
        self.policy.summary()
    }

    /// Where the agent's sink reads the denials from.
    pub fn feed(&self) -> DenialFeed {
        DenialFeed {
            denials: self.denials.clone(),
            summary: self.policy.summary(),
        }
    }

    /// Stops the proxy; the records of connections it closes are still logged.
    pub async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
        // The pump ends once the proxy (the only sender) is gone and the queue is drained.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.pump).await;
    }
}

/// The denials of a phase's proxy that the agent has not been told about yet.
#[derive(Debug, Clone)]
pub struct DenialFeed {
    denials: Arc<Mutex<Vec<String>>>,
    summary: String,
}

impl DenialFeed {
    /// A note for the tool result, when requests were denied since the last call.
    pub fn take_note(&self) -> Option<String> {
        let lines = self
            .denials
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        (!lines.is_empty()).then(|| denial_note(&lines, &self.summary))
    }
}

/// The resolver the proxy uses: the system's, or the test-only map in `ERRAND_TEST_RESOLVE`
/// (`name=127.0.0.1,other=10.0.0.1`; never set it in production).
/// Builds the phase's policy from the environment's `allow`/`deny` (presets resolved on this
/// machine, off the executor: discovery may ask package tools).
pub async fn policy(
    cfg: &NetworkConfig,
    presets: &BTreeMap<String, Vec<String>>,
) -> Result<Policy, String> {
    let (allow, deny, presets) = (cfg.allow.clone(), cfg.deny.clone(), presets.clone());
    tokio::task::spawn_blocking(move || {
        Policy::parse_with(&allow, &deny, &Presets::with_overrides(presets))
    })
    .await
    .map_err(|e| format!("building the network policy: {e}"))?
    .map_err(|e| format!("the environment's network policy: {e}"))
}

/// Starts the proxy of `phase` for `attempt` on a socket in `dir`.
pub async fn start(
    phase: &'static str,
    policy: Policy,
    dir: &Path,
    client: Arc<dyn WorkerClient>,
    attempt: &str,
    worker: &str,
) -> Result<PhaseProxy, String> {
    let resolver = errand_proxy::resolver_from_env()?;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let socket = dir.join(format!("egress-{phase}.sock"));
    let (tx, mut rx) = mpsc::unbounded_channel::<NetRecord>();
    let denials: Arc<Mutex<Vec<String>>> = Arc::default();
    let on_event: Arc<dyn Fn(NetRecord) + Send + Sync> = {
        let denials = denials.clone();
        Arc::new(move |r: NetRecord| {
            if !r.allowed
                && let Ok(mut d) = denials.lock()
                && d.len() < MAX_PENDING_DENIALS
            {
                d.push(denial_line(&r));
            }
            let _ = tx.send(r);
        })
    };
    let policy = Arc::new(policy);
    let cfg = ProxyConfig::new(policy.clone(), resolver, on_event);
    let handle = Proxy::serve_unix(&socket, cfg).map_err(|e| e.to_string())?;
    let (attempt, worker) = (attempt.to_string(), worker.to_string());
    let pump = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![event(phase, first)];
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(r) => batch.push(event(phase, r)),
                    Err(_) => break,
                }
            }
            if let Err(e) = client.append_events(&attempt, &worker, batch).await {
                tracing::warn!(attempt = %attempt, error = %e, "recording network decisions failed");
            }
        }
    });
    Ok(PhaseProxy {
        socket,
        denials,
        handle: Some(handle),
        pump,
        policy,
    })
}

fn denial_line(r: &NetRecord) -> String {
    format!(
        "{} {}:{} — {}",
        r.method.as_deref().unwrap_or("request"),
        r.host,
        r.port,
        r.reason
            .as_deref()
            .unwrap_or("denied by the network policy")
    )
}

/// The note added to a tool result after the egress proxy denied requests during it.
pub fn denial_note(lines: &[String], summary: &str) -> String {
    let mut s = String::from(
        "[errand] The egress proxy denied network access during this command (the sandbox only reaches hosts on the environment's allowlist; retrying will not help):\n",
    );
    for l in lines {
        s.push_str("  - ");
        s.push_str(l);
        s.push('\n');
    }
    s.push_str("Policy: ");
    s.push_str(summary);
    s
}

fn event(phase: &str, r: NetRecord) -> EventKind {
    EventKind::Net {
        phase: phase.to_string(),
        allowed: r.allowed,
        host: r.host,
        port: r.port,
        method: r.method,
        addr: r.addr.map(|a| a.to_string()),
        reason: r.reason,
        bytes_up: r.bytes_up,
        bytes_down: r.bytes_down,
        duration_ms: r.duration.as_millis() as u64,
    }
}
