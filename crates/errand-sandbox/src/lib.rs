//! Sandbox back ends: the box in which an attempt's commands run.
//!
//! An attempt gets one long-lived box ([`SandboxBox`]) from a [`SandboxBackend`]. Commands run
//! in it one after another; their output streams back as chunks; the box and every process it
//! started die when it is destroyed.
//!
//! This crate owns process lifecycle and isolation. It must not know about tasks, models or
//! the database: it only runs commands and reports what they did.
//!
//! Back ends today: [`ns::NamespaceBackend`] (the box) and [`unisolated::Unisolated`]
//! (`--sandbox none`: commands run directly in the workspace on the host, for trusted local
//! use, and every log says so). Remote back ends (Kubernetes) implement the same traits.
//!
//! Network: a box's [`NetMode`] is its back end's default unless [`BoxSpec::net`] says
//! otherwise. An `allowlist` box reaches the host only through its [`Bridge`]s: TCP ports on
//! its own loopback relayed by the host to Unix sockets (the egress proxy, the model gateway).

mod bridge;
pub mod cow;
pub mod ns;
mod procs;
pub mod unisolated;

pub use bridge::{MAX_BRIDGES, MAX_CONNECTIONS, proxy_env};
pub use ns::NetMode;

use async_trait::async_trait;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox refused: {0}")]
    Refused(String),
    #[error("workdir '{0}' is outside the workspace")]
    WorkdirOutside(String),
    #[error("workdir '{0}' does not exist in the workspace")]
    NoSuchWorkdir(String),
    #[error("the box has been destroyed")]
    Destroyed,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

/// What a box is made of.
#[derive(Debug, Clone, Default)]
pub struct BoxSpec {
    /// The attempt's workspace on the host (read-write inside the box).
    pub workspace: PathBuf,
    /// A host directory outside the workspace for the box's private `$HOME` and `/tmp`.
    pub scratch: PathBuf,
    /// Host paths the box may read, visible at the same path (for example the mirror's
    /// objects that the workspace's git borrows through alternates).
    pub ro_binds: Vec<PathBuf>,
    /// A root filesystem folder to use instead of the host's system directories.
    pub rootfs: Option<PathBuf>,
    /// What the disk quota measures (default: the workspace). For a copy-on-write workspace,
    /// its upper layer: only what the attempt wrote counts, and measuring it is cheap.
    pub quota_dir: Option<PathBuf>,
    /// Extra environment variables for every command (already filtered: no secrets unless the
    /// environment exposes them).
    pub env: Vec<(String, String)>,
    /// Mount the workspace read-only in the box (plan mode: the agent explores, changes
    /// nothing). A back end that cannot enforce it refuses to create the box.
    pub workspace_readonly: bool,
    /// This box's network mode; `None` is the back end's default.
    pub net: Option<NetMode>,
    /// Ports on the box's loopback relayed to Unix sockets on the host. `allowlist` boxes only
    /// (refused with `off`, which has no way out, and `open`, which shares the host's
    /// network).
    pub bridges: Vec<Bridge>,
}

/// A bridge: inside the box, TCP `127.0.0.1:port` (and `[::1]:port` where the box's loopback
/// has IPv6) accepts connections; the host relays each one to a new connection to the Unix
/// socket `socket`. The socket's path is not visible in the box. While nothing listens on the
/// socket, connections are reset at once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bridge {
    pub port: u16,
    /// An absolute path on the host (at most 107 bytes); it need not exist yet.
    pub socket: PathBuf,
    /// Hand each accepted connection itself to the server instead of relaying its bytes: the
    /// host connects to `socket`, sends one message of the single byte [`HANDOFF_BYTE`] with
    /// the accepted TCP socket attached (`SCM_RIGHTS`), and closes its own copy. The server
    /// then talks to the box's client directly, so the bytes cross one relay (the server's)
    /// instead of two. Only for servers that accept handed-over connections (the egress
    /// proxy, `errand_proxy::Proxy::serve_unix`).
    pub handoff: bool,
}

/// The one byte a bridge sends with a handed-over connection (see [`Bridge::handoff`]). No
/// HTTP request starts with it.
pub const HANDOFF_BYTE: u8 = 0;

/// One command to run in the box.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// Passed to `bash -c`.
    pub command: String,
    /// Relative to the workspace root; `None` is the root.
    pub workdir: Option<String>,
    pub timeout: Duration,
    /// Cancels the command (its whole process group is killed).
    pub cancel: CancellationToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A piece of output, in the order the box read it.
#[derive(Debug, Clone)]
pub struct OutputChunk {
    pub stream: Stream,
    pub data: Vec<u8>,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration: Duration,
    /// The limit that killed it: `timeout`, `cancelled`, …
    pub killed_by: Option<String>,
}

impl ExecResult {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// A process that was still running in a box when [`SandboxBox::stop_leftovers`] ran.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeftProcess {
    /// Its pid as the box sees it (in the box's PID namespace for the namespace box).
    pub pid: i32,
    /// Its command name (`/proc/PID/comm`: at most 15 bytes).
    pub name: String,
}

/// What [`SandboxBox::stop_leftovers`] found running and stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stopped {
    /// The processes found, in pid order (at most [`Stopped::MAX_LISTED`]).
    pub processes: Vec<LeftProcess>,
    /// How many were found in all (more than `processes` holds when the list was cut).
    pub count: usize,
    /// How many were still running when the back end stopped waiting for them.
    pub survivors: usize,
}

impl Stopped {
    /// Most processes listed by name; the rest are only counted.
    pub const MAX_LISTED: usize = 256;

    /// What was found (pid, name, in pid order), listing at most [`Stopped::MAX_LISTED`], and
    /// how many were still running at the end.
    pub fn new(found: Vec<(i32, String)>, survivors: usize) -> Stopped {
        Stopped {
            count: found.len(),
            processes: found
                .into_iter()
                .take(Stopped::MAX_LISTED)
                .map(|(pid, name)| LeftProcess { pid, name })
                .collect(),
            survivors,
        }
    }

    /// Whether nothing was left running.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The distinct names of the processes, in pid order.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for p in &self.processes {
            if !names.contains(&p.name.as_str()) {
                names.push(&p.name);
            }
        }
        names
    }
}

/// A live box.
#[async_trait]
pub trait SandboxBox: Send + Sync {
    /// Runs one command to completion, sending its output to `output` as it comes.
    async fn exec(&self, req: ExecRequest, output: mpsc::Sender<OutputChunk>)
    -> Result<ExecResult>;
    /// Kills every process still running in the box — what earlier commands left behind:
    /// background jobs, and daemons that left their process group or session (`setsid`,
    /// double forks, `nohup`) — and waits until they are gone; the box then runs commands as
    /// before. A command still running is killed too, so call it between commands. Back
    /// ends that cannot find such processes report none.
    async fn stop_leftovers(&self) -> Result<Stopped> {
        Ok(Stopped::default())
    }
    /// Kills every process of the box and releases it. Idempotent.
    async fn destroy(&self) -> Result<()>;
    /// Stops the box's bridges for good: their ports stop accepting and the connections they
    /// relay are cut (an `allowlist` box is then as closed as an `off` one). Idempotent.
    fn close_bridges(&self) {}
    /// The namespace box behind this handle, if it is one.
    fn as_ns(&self) -> Option<&ns::NsBox> {
        None
    }
}

/// Makes boxes.
#[async_trait]
pub trait SandboxBackend: Send + Sync {
    /// Short name recorded in every attempt's first event, for example `none`.
    fn name(&self) -> &str;
    /// Whether commands are isolated from the host.
    fn isolated(&self) -> bool;
    /// One line a user reads in the log to know what this back end does and does not protect.
    fn description(&self) -> String;
    async fn create(&self, spec: BoxSpec) -> Result<Box<dyn SandboxBox>>;
}

/// Resolves a user-given workdir against the workspace root, refusing anything outside it.
pub fn resolve_workdir(root: &std::path::Path, workdir: Option<&str>) -> Result<PathBuf> {
    let Some(w) = workdir.filter(|w| !w.is_empty() && *w != ".") else {
        return Ok(root.to_path_buf());
    };
    let rel = std::path::Path::new(w);
    let candidate = if rel.is_absolute() {
        // Absolute paths are accepted when they point inside the workspace.
        rel.to_path_buf()
    } else {
        root.join(rel)
    };
    let canon = candidate
        .canonicalize()
        .map_err(|_| SandboxError::NoSuchWorkdir(w.to_string()))?;
    let root_canon = root.canonicalize().map_err(|e| SandboxError::Io {
        context: format!("workspace {}", root.display()),
        source: e,
    })?;
    if !canon.starts_with(&root_canon) {
        return Err(SandboxError::WorkdirOutside(w.to_string()));
    }
    if !canon.is_dir() {
        return Err(SandboxError::NoSuchWorkdir(w.to_string()));
    }
    Ok(canon)
}

/// Reads a command's output stream into chunks until end of file (or until nobody listens).
pub(crate) async fn pump<R: tokio::io::AsyncRead + Unpin>(
    reader: Option<R>,
    stream: Stream,
    tx: mpsc::Sender<OutputChunk>,
) {
    use tokio::io::AsyncReadExt;
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let chunk = OutputChunk {
                    stream,
                    data: buf[..n].to_vec(),
                };
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
        }
    }
}
