//! `errand serve`: the REST API under `/api/v1` (with SSE live streams and an OpenAPI
//! document), the embedded workers, and the lease reaper, on one SQLite file.
//!
//! This crate owns HTTP and process wiring. Validation of a new task (repo, base ref, model)
//! happens here, before anything is stored, so that a rejected request leaves nothing behind.
//! It must not run agents itself: workers do, through `errand-worker`.

mod api;
mod error;
mod plan;
mod sse;

use anyhow::{Context, bail};
use errand_core::Config;
use errand_git::MirrorCache;
use errand_sandbox::SandboxBackend;
use errand_store::{SqliteStore, Store};
use errand_worker::{LocalClient, Worker, WorkerConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use api::router;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: String,
    pub data_dir: PathBuf,
    pub workers: usize,
    /// `errand.toml`; defaults to `<data_dir>/errand.toml` when that file exists.
    pub config: Option<PathBuf>,
    pub lease_ttl: Duration,
    pub heartbeat_every: Duration,
    /// How attempts' commands are isolated.
    pub sandbox: SandboxMode,
    /// Limits of each attempt's box.
    pub limits: errand_sandbox::ns::Limits,
    /// Wall-time limit of one attempt.
    pub attempt_timeout: Duration,
}

/// How commands of attempts run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// The namespace box (default). The server refuses to start if the host can't provide it.
    Box,
    /// No isolation, for trusted local use; every event of such an attempt is marked.
    None,
}

impl std::str::FromStr for SandboxMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "box" => Ok(SandboxMode::Box),
            "none" => Ok(SandboxMode::None),
            other => Err(format!(
                "unknown sandbox '{other}'; expected box (default) or none"
            )),
        }
    }
}

impl ServeOptions {
    pub fn new(listen: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        ServeOptions {
            listen: listen.into(),
            data_dir: data_dir.into(),
            workers: 2,
            config: None,
            lease_ttl: Duration::from_secs(30),
            heartbeat_every: Duration::from_secs(5),
            sandbox: SandboxMode::Box,
            limits: errand_sandbox::ns::Limits::default(),
            attempt_timeout: Duration::from_secs(2 * 3600),
        }
    }
}

/// Shared by every request handler.
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// How people reach this server, for links.
    pub public_url: Option<String>,
    pub config: Arc<Config>,
    pub config_path: Option<PathBuf>,
    pub mirrors: Arc<MirrorCache>,
    pub sandbox_name: String,
    pub workers: usize,
    pub shutdown: CancellationToken,
    /// Values of the configured secrets set in this process's environment, redacted from
    /// everything the API returns.
    pub redactor: errand_core::Redactor,
}

/// The server's redactor: every secret of every environment whose variable `lookup` finds
/// (the server's own environment, which its embedded workers share).
pub fn secrets_redactor(
    config: &Config,
    lookup: impl Fn(&str) -> Option<String>,
) -> errand_core::Redactor {
    let redactor = errand_core::Redactor::new(config.environments.values().flat_map(|env| {
        env.secrets
            .iter()
            .filter_map(|(name, sc)| lookup(&sc.from_env).map(|v| (name.clone(), v)))
            .collect::<Vec<_>>()
    }));
    for name in redactor.ignored() {
        tracing::warn!(secret = %name, "secret value shorter than {} bytes: too short to redact, and not given to boxes", errand_core::redact::MIN_SECRET_LEN);
    }
    redactor
}

/// A running server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ServerHandle {
    /// Waits until the server stops (after `shutdown` is cancelled, or on a fatal error).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }
}

/// The default data directory: `$ERRAND_HOME`, else `$XDG_DATA_HOME/errand`, else
/// `~/.local/share/errand`.
pub fn default_data_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("ERRAND_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("errand");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/errand")
}

/// Holds an exclusive lock on the data directory for the server's lifetime, so that two
/// servers never share one SQLite file and its embedded workers.
struct DataDirLock {
    _file: std::fs::File,
}

fn lock_data_dir(dir: &Path) -> anyhow::Result<DataDirLock> {
    use std::os::fd::AsRawFd;
    let path = dir.join("serve.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "another errand server is already using the data directory {}; stop it, or pass --data-dir to use another one",
            dir.display()
        );
    }
    Ok(DataDirLock { _file: file })
}

fn load_config(opts: &ServeOptions) -> anyhow::Result<(Config, Option<PathBuf>)> {
    let path = match &opts.config {
        Some(p) => Some(p.clone()),
        None => {
            let p = opts.data_dir.join("errand.toml");
            p.exists().then_some(p)
        }
    };
    let Some(path) = path else {
        return Ok((Config::default(), None));
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the configuration file {}", path.display()))?;
    let cfg = Config::parse(&text, &path.display().to_string())?;
    check_network_policies(&cfg, &path)?;
    Ok((cfg, Some(path)))
}

/// Refuses an environment whose `allow`/`deny` entries are malformed, naming the entry, so
/// that the mistake shows at start and not in every attempt. A registry preset this machine
/// cannot resolve is only a warning: the workers resolve presets on their own machines.
fn check_network_policies(cfg: &Config, path: &std::path::Path) -> anyhow::Result<()> {
    for (name, env) in &cfg.environments {
        let n = &env.network;
        if n.allow.is_empty() && n.deny.is_empty() {
            continue;
        }
        let presets = errand_proxy::Presets::with_overrides(n.presets.clone());
        match errand_proxy::Policy::parse_with(&n.allow, &n.deny, &presets) {
            Ok(_) => {}
            Err(e @ errand_proxy::PolicyError::Preset { .. }) => {
                tracing::warn!(environment = %name, "network policy: {e}");
            }
            Err(e) => anyhow::bail!("{}: environments.{name}.network: {e}", path.display()),
        }
    }
    Ok(())
}

/// Starts the server: opens the database, re-queues attempts orphaned by a previous run,
/// starts the embedded workers and the reaper, and listens.
pub async fn start(opts: ServeOptions) -> anyhow::Result<ServerHandle> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating the data directory {}", opts.data_dir.display()))?;
    let data_dir = opts
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", opts.data_dir.display()))?;
    let lock = lock_data_dir(&data_dir)?;
    let (config, config_path) = load_config(&opts)?;
    let db = data_dir.join("errand.db");
    let store =
        SqliteStore::open(&db).with_context(|| format!("opening the database {}", db.display()))?;
    let store: Arc<dyn Store> = Arc::new(store);

    // We hold the data-dir lock, so every active attempt belonged to a server that is gone.
    let orphans = store.requeue_orphans("the server restarted").await?;
    if !orphans.is_empty() {
        tracing::warn!(
            count = orphans.len(),
            "re-queued attempts interrupted by a restart"
        );
    }
    let work_root = data_dir.join("work");
    if work_root.exists() {
        let _ = std::fs::remove_dir_all(&work_root);
    }
    std::fs::create_dir_all(&work_root)
        .with_context(|| format!("creating {}", work_root.display()))?;
    let mirrors = Arc::new(MirrorCache::new(data_dir.join("mirrors")));
    let sandbox = make_sandbox(&opts, &data_dir).await?;

    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .with_context(|| {
            format!(
                "listening on {} (is another server using this port? pass --listen)",
                opts.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let shutdown = CancellationToken::new();

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..opts.workers {
        let mut wc = WorkerConfig::new(format!("{}-w{}", hostname_tag(), i + 1), &work_root);
        wc.lease_ttl = opts.lease_ttl;
        wc.heartbeat_every = opts.heartbeat_every;
        wc.attempt_timeout = opts.attempt_timeout;
        wc.public_url = Some(public_url.clone());
        let worker = Arc::new(Worker::new(
            wc,
            Arc::new(LocalClient::new(store.clone())),
            mirrors.clone(),
            sandbox.clone(),
        ));
        let token = shutdown.clone();
        tasks.spawn(async move {
            worker.run(token).await;
        });
    }
    {
        let store = store.clone();
        let token = shutdown.clone();
        let every = (opts.lease_ttl / 3).max(Duration::from_millis(200));
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = token.cancelled() => break,
                }
                if let Err(e) = store.requeue_expired(errand_core::now_ms()).await {
                    tracing::warn!(error = %e, "lease reaper failed");
                }
            }
        });
    }

    let redactor = secrets_redactor(&config, |var| std::env::var(var).ok());
    let state = Arc::new(AppState {
        redactor,
        store,
        public_url: Some(public_url.clone()),
        config: Arc::new(config),
        config_path,
        mirrors,
        sandbox_name: sandbox.name().to_string(),
        workers: opts.workers,
        shutdown: shutdown.clone(),
    });
    let app = router(state);
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        let _lock = lock;
        // No Nagle: an SSE stream opened on the connection that just POSTed a task must see
        // the first event at once, not after a delayed ACK.
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY");
            }
        });
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
        while tasks.join_next().await.is_some() {}
        served.context("serving HTTP")
    });
    tracing::info!(%addr, data_dir = %data_dir.display(), workers = opts.workers, "errand server started");
    Ok(ServerHandle {
        addr,
        shutdown,
        task,
    })
}

/// Builds the sandbox back end and proves it works by starting one box; a host that can't
/// isolate gets a refusal that says why, never a silent unisolated run.
async fn make_sandbox(
    opts: &ServeOptions,
    data_dir: &Path,
) -> anyhow::Result<Arc<dyn SandboxBackend>> {
    use errand_sandbox::ns::{NamespaceBackend, NsOptions};
    match opts.sandbox {
        SandboxMode::None => {
            tracing::warn!("--sandbox none: agent commands run WITHOUT isolation on this host");
            Ok(Arc::new(errand_sandbox::unisolated::Unisolated))
        }
        SandboxMode::Box => {
            let swept = errand_sandbox::ns::sweep_stale_cgroups();
            if swept > 0 {
                tracing::info!(count = swept, "removed cgroups left behind by dead boxes");
            }
            let backend = NamespaceBackend::new(NsOptions {
                limits: opts.limits.clone(),
                ..Default::default()
            })?;
            let probe = data_dir.join("work").join("probe");
            std::fs::create_dir_all(probe.join("ws"))
                .with_context(|| format!("creating {}", probe.display()))?;
            let spec = errand_sandbox::BoxSpec {
                workspace: probe.join("ws"),
                scratch: probe.join("scratch"),
                ro_binds: vec![],
                rootfs: None,
                quota_dir: None,
                env: vec![],
                ..Default::default()
            };
            let created = backend.create(spec).await;
            let result = match created {
                Ok(b) => {
                    if let Some(ns) = b.as_ns() {
                        tracing::info!("{}", ns.enforced.summary());
                        if ns.enforced.landlock != "enforced" {
                            tracing::warn!(landlock = %ns.enforced.landlock, "Landlock is not fully enforced on this kernel; writes are still limited by the box's read-only mounts");
                        }
                    }
                    let _ = b.destroy().await;
                    Ok(Arc::new(backend) as Arc<dyn SandboxBackend>)
                }
                Err(e) => Err(anyhow::anyhow!(
                    "this host cannot run the agent sandbox: {e}. Run `errand sandbox check` for details; to run tasks without any isolation (trusted local use only), pass --sandbox none"
                )),
            };
            let _ = std::fs::remove_dir_all(&probe);
            result
        }
    }
}

fn hostname_tag() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "local".into());
    format!("{name}-{}", std::process::id())
}
