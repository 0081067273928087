//! The model gateway of one attempt: started on a Unix socket in the attempt's directory when
//! its environment names `gateway` providers, with the keys read from the worker's own
//! environment. The box reaches it on `127.0.0.1:GATEWAY_PORT` (a bridge to the socket) and
//! gets only the base URLs and placeholder keys. Every request becomes a `gateway_request`
//! event, and its usage is added to the attempt's.

use crate::WorkerClient;
use errand_core::{EventKind, GatewayUpstream, ProviderKind, Usage};
use errand_proxy::gateway::{
    ApiKey, Gateway, GatewayConfig, GatewayHandle, GatewayRecord, GatewayTimeouts, Upstream,
    client_base_path,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The port the gateway has on the box's loopback.
pub const GATEWAY_PORT: u16 = 4319;
/// What programs in the box send as their API key: not a secret, only something for SDKs
/// that refuse to start without a key. The gateway replaces it with the real one.
pub const PLACEHOLDER_KEY: &str = "errand-gateway";

/// Unix socket paths longer than this do not fit `sockaddr_un`.
const MAX_SOCKET_PATH: usize = 100;

/// The environment variables that point the usual SDKs and agent CLIs in the box at the
/// gateway on `port`: for the first provider of each family, its base URL and a placeholder
/// key; `ERRAND_GATEWAY_URL` is the gateway's root (each provider is at `/NAME/…` under it).
pub fn box_env(upstreams: &[GatewayUpstream], port: u16) -> Vec<(String, String)> {
    let root = format!("http://127.0.0.1:{port}");
    let mut env = vec![("ERRAND_GATEWAY_URL".to_string(), root.clone())];
    let mut seen: Vec<&str> = Vec::new();
    for u in upstreams {
        let (family, url_var, key_var) = match u.kind {
            ProviderKind::OpenaiResponses | ProviderKind::OpenaiChat => {
                ("openai", "OPENAI_BASE_URL", "OPENAI_API_KEY")
            }
            ProviderKind::Anthropic => ("anthropic", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"),
            ProviderKind::Gemini => ("gemini", "GOOGLE_GEMINI_BASE_URL", "GEMINI_API_KEY"),
        };
        if seen.contains(&family) {
            continue;
        }
        seen.push(family);
        env.push((
            url_var.to_string(),
            format!("{root}{}", client_base_path(&u.name, u.kind, &u.base_url)),
        ));
        env.push((key_var.to_string(), PLACEHOLDER_KEY.to_string()));
    }
    env
}

/// The running gateway of an attempt.
pub struct AttemptGateway {
    handle: GatewayHandle,
    socket: PathBuf,
    /// What the box's commands get (see [`box_env`]).
    pub env: Vec<(String, String)>,
    /// The usage metered so far, for the attempt's running totals.
    pub used: Arc<Mutex<Usage>>,
    consumer: tokio::task::JoinHandle<()>,
}

impl AttemptGateway {
    /// Reads each provider's key from this process's environment and starts the gateway on
    /// a Unix socket in `dir`. Records become events of `attempt`, written as `worker`.
    pub async fn start(
        upstreams: &[GatewayUpstream],
        dir: &Path,
        client: Arc<dyn WorkerClient>,
        attempt: &str,
        worker: &str,
    ) -> Result<AttemptGateway, String> {
        let mut ups = Vec::new();
        for u in upstreams {
            let key = match &u.api_key_env {
                None => None,
                Some(var) => match std::env::var(var) {
                    Ok(k) if !k.trim().is_empty() => Some(ApiKey::new(k)),
                    _ => {
                        return Err(format!(
                            "the model gateway's provider '{}' needs an API key: set {var} in the worker's environment",
                            u.name
                        ));
                    }
                },
            };
            ups.push(Upstream::from_snapshot(u, key));
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut socket = dir.join("gateway.sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            socket = std::env::temp_dir().join(format!(
                "errand-gw-{}-{}.sock",
                errand_core::short_id(attempt),
                std::process::id()
            ));
        }
        let used = Arc::new(Mutex::new(Usage::default()));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<GatewayRecord>();
        let config = GatewayConfig {
            upstreams: ups,
            on_usage: Arc::new(move |r| {
                let _ = tx.send(r);
            }),
            timeouts: GatewayTimeouts::default(),
        };
        let handle = Gateway::serve_unix(&socket, config)
            .await
            .map_err(|e| e.to_string())?;
        let consumer = tokio::spawn(consume(
            rx,
            client,
            attempt.to_string(),
            worker.to_string(),
            used.clone(),
        ));
        Ok(AttemptGateway {
            handle,
            socket,
            env: box_env(upstreams, GATEWAY_PORT),
            used,
            consumer,
        })
    }

    /// The box's loopback port and the host socket to relay it to.
    pub fn bridge(&self) -> (u16, PathBuf) {
        (GATEWAY_PORT, self.socket.clone())
    }

    /// Stops the gateway, waits until every record is an event, and returns what was used.
    pub async fn stop(self) -> Usage {
        self.handle.shutdown().await;
        // The channel closes once the gateway and its last response are gone.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.consumer).await;
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn consume(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<GatewayRecord>,
    client: Arc<dyn WorkerClient>,
    attempt: String,
    worker: String,
    used: Arc<Mutex<Usage>>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(r) = rx.try_recv() {
            batch.push(r);
        }
        let events: Vec<EventKind> = {
            let mut u = used.lock().unwrap_or_else(|e| e.into_inner());
            batch
                .iter()
                .map(|r| {
                    u.add(&r.usage);
                    r.to_event()
                })
                .collect()
        };
        if let Err(e) = client.append_events(&attempt, &worker, events).await {
            tracing::warn!(attempt = %attempt, error = %e, "recording model gateway requests failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(name: &str, kind: ProviderKind, base_url: &str) -> GatewayUpstream {
        GatewayUpstream {
            name: name.into(),
            kind,
            base_url: base_url.into(),
            api_key_env: Some("X".into()),
            headers: Default::default(),
            models: Default::default(),
            builtin_prices: true,
        }
    }

    #[test]
    fn the_box_gets_base_urls_and_placeholders_only() {
        let env = box_env(
            &[
                up(
                    "openai",
                    ProviderKind::OpenaiResponses,
                    "https://api.openai.com/v1",
                ),
                up(
                    "anthropic",
                    ProviderKind::Anthropic,
                    "https://api.anthropic.com",
                ),
                up(
                    "local",
                    ProviderKind::OpenaiChat,
                    "http://127.0.0.1:8000/v1",
                ),
            ],
            4319,
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("OPENAI_BASE_URL"),
            Some("http://127.0.0.1:4319/openai/v1")
        );
        assert_eq!(get("OPENAI_API_KEY"), Some(PLACEHOLDER_KEY));
        assert_eq!(
            get("ANTHROPIC_BASE_URL"),
            Some("http://127.0.0.1:4319/anthropic")
        );
        assert_eq!(get("ANTHROPIC_API_KEY"), Some(PLACEHOLDER_KEY));
        assert_eq!(get("ERRAND_GATEWAY_URL"), Some("http://127.0.0.1:4319"));
        // Only the kinds configured; the first provider of a family gets the variables.
        assert_eq!(get("GOOGLE_GEMINI_BASE_URL"), None);
        assert_eq!(get("GEMINI_API_KEY"), None);
        assert_eq!(
            env.iter().filter(|(n, _)| n == "OPENAI_BASE_URL").count(),
            1
        );
        let g = box_env(
            &[up(
                "gemini",
                ProviderKind::Gemini,
                "https://generativelanguage.googleapis.com/v1beta",
            )],
            4319,
        );
        assert!(g.contains(&(
            "GOOGLE_GEMINI_BASE_URL".into(),
            "http://127.0.0.1:4319/gemini".into()
        )));
        assert!(g.contains(&("GEMINI_API_KEY".into(), PLACEHOLDER_KEY.into())));
    }
}
