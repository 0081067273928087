//! The namespace box: user, mount, PID, network, IPC and UTS namespaces, a read-only view of
//! the host's system directories, a read-write workspace, private `/tmp` and `$HOME`,
//! `no_new_privs`, Landlock, seccomp, rlimits and (where the host delegates them) cgroups.
//!
//! The box is a re-executed `errand` process: any binary that creates boxes must call
//! [`maybe_run_box`] first thing in `main`, before starting threads.

mod init;
pub mod proto;
mod seccomp;

use crate::{
    BoxSpec, ExecRequest, ExecResult, OutputChunk, Result, SandboxBackend, SandboxBox,
    SandboxError, Stream, resolve_workdir,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

/// Where the workspace appears inside the box.
pub const WORKSPACE: &str = "/workspace";
const ENV_INIT: &str = "ERRAND_BOX_INIT";

/// If this process was started as a box, runs it and exits. Call first thing in `main`.
pub fn maybe_run_box() {
    if let Some(cfg) = std::env::var_os(ENV_INIT) {
        let args = cfg.to_string_lossy().into_owned();
        // SAFETY: single-threaded at this point; nothing else reads the environment.
        unsafe { std::env::remove_var(ENV_INIT) };
        std::process::exit(init::stage1(&args));
    }
}

/// Network mode of a box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetMode {
    /// Own network namespace with loopback only; IP sockets denied by seccomp.
    Off,
    /// Own network namespace with loopback only, IP sockets allowed (TCP, UDP, ping); the
    /// only way out is the box's bridges to the host's Unix sockets (the egress proxy).
    Allowlist,
    /// The host's network (explicit opt-in, logged).
    Open,
}

impl NetMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetMode::Off => "off",
            NetMode::Allowlist => "allowlist",
            NetMode::Open => "open",
        }
    }

    /// Whether boxes of this mode have a network namespace of their own (a box process made
    /// for one such mode can serve another: only the seccomp filter differs).
    pub fn own_netns(self) -> bool {
        self != NetMode::Open
    }
}

impl std::fmt::Display for NetMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NetMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "off" => Ok(NetMode::Off),
            "allowlist" => Ok(NetMode::Allowlist),
            "open" => Ok(NetMode::Open),
            other => Err(format!(
                "unknown network mode '{other}'; expected off, allowlist or open"
            )),
        }
    }
}

/// Resource limits of a box.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Limits {
    /// Memory for the whole box (cgroup), else per process address space.
    pub memory_bytes: Option<u64>,
    /// Processes and threads in the whole box (cgroup), else an rlimit.
    pub pids: Option<u64>,
    pub file_size_bytes: Option<u64>,
    pub nofile: u64,
    /// Size of the private `/tmp` and `$HOME`.
    pub tmp_bytes: u64,
    /// Workspace quota, checked while commands run.
    pub disk_bytes: Option<u64>,
    /// Filled in from the above when cgroups are unavailable.
    #[serde(default)]
    pub address_space_bytes: Option<u64>,
    #[serde(default)]
    pub nproc: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: Some(4 << 30),
            pids: Some(1024),
            file_size_bytes: Some(1 << 30),
            nofile: 4096,
            tmp_bytes: 1 << 30,
            disk_bytes: Some(10 << 30),
            address_space_bytes: None,
            nproc: None,
        }
    }
}

/// What stage 1 needs before the box's configuration arrives (passed in its environment).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stage1Args {
    net: NetMode,
}

/// Sent to the box process with the go-ahead.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BoxConfig {
    pub workspace: PathBuf,
    pub workspace_readonly: bool,
    pub scratch: PathBuf,
    pub ro_binds: Vec<PathBuf>,
    /// System directories come from here instead of the host's `/`.
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    pub net: NetMode,
    /// Ports on the box's loopback that PID 1 listens on for the host (the bridges; their
    /// Unix sockets stay on the host side).
    #[serde(default)]
    pub bridges: Vec<u16>,
    pub limits: Limits,
    pub cgroups: Vec<PathBuf>,
    pub hostname: String,
}

/// What a box enforces, as reported by the box itself once it is up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Enforced {
    pub namespaces: String,
    pub network: String,
    pub landlock_abi: Option<i32>,
    pub landlock: String,
    pub seccomp: String,
    pub no_new_privs: bool,
    pub cgroups: Vec<String>,
}

impl Enforced {
    pub fn summary(&self) -> String {
        format!(
            "sandbox: box — namespaces {}; network {}; landlock {}{}; seccomp {}; no_new_privs; {}",
            self.namespaces,
            self.network,
            self.landlock,
            self.landlock_abi
                .map(|a| format!(" (ABI {a})"))
                .unwrap_or_default(),
            self.seccomp,
            if self.cgroups.is_empty() {
                "limits by rlimit (no delegated cgroups)".to_string()
            } else {
                "cgroup memory/pids limits".to_string()
            }
        )
    }
}

/// Settings for boxes made by [`NamespaceBackend`].
#[derive(Debug, Clone)]
pub struct NsOptions {
    /// The network mode of boxes whose [`BoxSpec::net`] is `None`, and of the pooled box
    /// processes.
    pub net: NetMode,
    pub limits: Limits,
    /// The executable to re-run as the box (default: this process's executable).
    pub exe: Option<PathBuf>,
    pub workspace_readonly: bool,
    /// Box processes kept ready (namespaces made, cgroups joined) for the next `create`;
    /// 0 starts every box from scratch.
    pub pool: usize,
}

impl Default for NsOptions {
    fn default() -> Self {
        NsOptions {
            net: NetMode::Off,
            limits: Limits::default(),
            exe: None,
            workspace_readonly: false,
            pool: 2,
        }
    }
}

/// The namespace back end. Clones share its pool of ready box processes.
#[derive(Debug, Clone)]
pub struct NamespaceBackend {
    pub options: NsOptions,
    pool: Arc<Pool>,
}

impl NamespaceBackend {
    /// How many box processes are ready in the pool.
    pub fn pooled(&self) -> usize {
        self.pool.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// The host pids of the box processes ready in the pool.
    pub fn pool_pids(&self) -> Vec<u32> {
        self.pool
            .idle
            .lock()
            .map(|v| v.iter().filter_map(|s| s.child.id()).collect())
            .unwrap_or_default()
    }

    pub fn new(options: NsOptions) -> Result<Self> {
        Ok(NamespaceBackend {
            options,
            pool: Arc::new(Pool::default()),
        })
    }
}

#[async_trait]
impl SandboxBackend for NamespaceBackend {
    fn name(&self) -> &str {
        "box"
    }
    fn isolated(&self) -> bool {
        true
    }
    fn description(&self) -> String {
        format!(
            "sandbox: box — user/mount/pid/{}ipc/uts namespaces, read-only system, private /tmp and $HOME, landlock, seccomp, no_new_privs; network {}",
            if self.options.net == NetMode::Open {
                ""
            } else {
                "net/"
            },
            match self.options.net {
                NetMode::Off => "off",
                NetMode::Allowlist => "allowlist (egress proxy only)",
                NetMode::Open => "OPEN (host network)",
            }
        )
    }
    async fn create(&self, spec: BoxSpec) -> Result<Box<dyn SandboxBox>> {
        Ok(Box::new(
            NsBox::start(&self.options, &self.pool, spec).await?,
        ))
    }
}

type Exit = (Option<i32>, Option<i32>);

#[derive(Default)]
struct Waiters {
    started: HashMap<u64, oneshot::Sender<std::result::Result<i32, String>>>,
    exited: HashMap<u64, oneshot::Sender<Exit>>,
    swept: HashMap<u64, oneshot::Sender<crate::Stopped>>,
}

impl Waiters {
    /// Fails everyone still waiting (their senders are dropped): the box is gone.
    fn fail_all(&mut self) {
        self.started.clear();
        self.exited.clear();
        self.swept.clear();
    }
}

/// Host side of a live box.
pub struct NsBox {
    child: Mutex<Option<tokio::process::Child>>,
    sock: Arc<AsyncFd<OwnedFd>>,
    waiters: Arc<Mutex<Waiters>>,
    next_id: AtomicU64,
    spec: BoxSpec,
    limits: Limits,
    cgroups: Vec<PathBuf>,
    destroyed: AtomicBool,
    closed: Arc<AtomicBool>,
    last_quota_check: Mutex<Option<Instant>>,
    /// What the quota's directory held when the box started: the quota counts what is
    /// written after that (a checkout bigger than the quota is not over it from the start).
    quota_base: u64,
    pub enforced: Enforced,
    reader: tokio::task::JoinHandle<()>,
    pid: Option<u32>,
    from_pool: bool,
    net: NetMode,
    relays: crate::bridge::Relays,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}

/// Creates per-box cgroups (v1 `pids` and `memory` hierarchies, or v2) when the host lets us.
fn make_cgroups(name: &str, limits: &Limits) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
    if v2.exists() {
        let dir = Path::new("/sys/fs/cgroup/errand").join(name);
        let ok = std::fs::create_dir_all(&dir).is_ok()
            && limits
                .pids
                .is_none_or(|p| std::fs::write(dir.join("pids.max"), p.to_string()).is_ok())
            && limits
                .memory_bytes
                .is_none_or(|m| std::fs::write(dir.join("memory.max"), m.to_string()).is_ok());
        if ok {
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            out.push(dir);
        } else {
            let _ = std::fs::remove_dir(&dir);
        }
        return out;
    }
    if let Some(p) = limits.pids {
        let dir = Path::new("/sys/fs/cgroup/pids/errand").join(name);
        if std::fs::create_dir_all(&dir).is_ok()
            && std::fs::write(dir.join("pids.max"), p.to_string()).is_ok()
        {
            out.push(dir);
        } else {
            let _ = std::fs::remove_dir(&dir);
        }
    }
    if let Some(m) = limits.memory_bytes {
        let dir = Path::new("/sys/fs/cgroup/memory/errand").join(name);
        if std::fs::create_dir_all(&dir).is_ok()
            && std::fs::write(dir.join("memory.limit_in_bytes"), m.to_string()).is_ok()
        {
            let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), m.to_string());
            out.push(dir);
        } else {
            let _ = std::fs::remove_dir(&dir);
        }
    }
    out
}

/// How many times the box's memory limit was hit (OOM kills where the kernel counts them).
fn memory_events(cgroups: &[PathBuf]) -> u64 {
    for dir in cgroups {
        // v1: `oom_kill N` in memory.oom_control (4.13+). memory.failcnt is only a fallback:
        // recent kernels (seen on 6.18) leave it at 0 after an OOM kill.
        if let Ok(s) = std::fs::read_to_string(dir.join("memory.oom_control"))
            && let Some(n) = s
                .lines()
                .filter_map(|l| l.strip_prefix("oom_kill "))
                .find_map(|v| v.trim().parse::<u64>().ok())
        {
            return n;
        }
        if let Ok(s) = std::fs::read_to_string(dir.join("memory.failcnt")) {
            return s.trim().parse().unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string(dir.join("memory.events")) {
            return s
                .lines()
                .filter_map(|l| l.strip_prefix("oom_kill "))
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum();
        }
    }
    0
}

/// A stage 1 process that has made the box's namespaces and joined its cgroups, and waits for
/// the box's configuration.
struct Stage1 {
    child: tokio::process::Child,
    sock: OwnedFd,
    /// The mode its namespaces and seccomp filter were made for.
    net: NetMode,
    cgroups: Vec<PathBuf>,
    /// With rlimit fallbacks for the limits no cgroup enforces.
    limits: Limits,
}

impl Stage1 {
    async fn spawn(exe: &Path, net: NetMode, limits: &Limits) -> Result<Stage1> {
        let name = format!(
            "box-{}-{}",
            std::process::id(),
            NEXT_BOX.fetch_add(1, Ordering::Relaxed)
        );
        // Cgroups are made while the process starts (mkdir in the memory hierarchy is not free).
        let cg_task = {
            let limits = limits.clone();
            tokio::task::spawn_blocking(move || {
                take_pooled(&limits).unwrap_or_else(|| make_cgroups(&name, &limits))
            })
        };
        let args = serde_json::to_string(&Stage1Args { net })
            .map_err(|e| SandboxError::Refused(e.to_string()))?;
        let (host_end, box_end) =
            proto::socket_pair().map_err(io_err("creating the control socket"))?;
        let box_fd = box_end.as_raw_fd();
        let mut cmd = tokio::process::Command::new(exe);
        cmd.env_clear()
            .env(ENV_INIT, args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        // SAFETY: dup2/fcntl/prctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(box_fd, init::CONTROL_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::setsid();
                Ok(())
            });
        }
        let spawned = cmd.spawn();
        drop(box_end);
        let cgroups = cg_task.await.unwrap_or_default();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                cleanup_cgroups(&cgroups);
                return Err(io_err(format!("starting the box ({})", exe.display()))(e));
            }
        };
        let mut limits = limits.clone();
        let has = |kind: &str| cgroups.iter().any(|c| c.to_string_lossy().contains(kind));
        let v2 = cgroups
            .iter()
            .any(|c| c.starts_with("/sys/fs/cgroup/errand"));
        if !v2 && !has("/memory/") {
            limits.address_space_bytes = limits.memory_bytes;
        }
        if !v2 && !has("/pids/") {
            limits.nproc = limits.pids;
        }
        let Some(pid) = child.id() else {
            cleanup_cgroups(&cgroups);
            return Err(SandboxError::Refused("the box exited during setup".into()));
        };
        // Joining a v1 cgroup waits for an RCU grace period: not on an async thread.
        let joined = {
            let dirs = cgroups.clone();
            tokio::task::spawn_blocking(move || join_cgroups(&dirs, pid)).await
        };
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                drop(child);
                cleanup_cgroups(&cgroups);
                // A stage 1 that failed (and so could not join) said why.
                return Err(SandboxError::Refused(setup_failure(&host_end).unwrap_or(e)));
            }
            Err(e) => {
                drop(child);
                cleanup_cgroups(&cgroups);
                return Err(SandboxError::Refused(format!("joining the cgroups: {e}")));
            }
        }
        Ok(Stage1 {
            child,
            sock: host_end,
            net,
            cgroups,
            limits,
        })
    }
}

/// The error a box process reported before exiting, if one is waiting on the control socket.
fn setup_failure(sock: &OwnedFd) -> Option<String> {
    set_nonblocking(sock).ok()?;
    let mut buf = vec![0u8; proto::MAX_MSG];
    let (bytes, _) = proto::recv(sock.as_raw_fd(), &mut buf).ok()??;
    match serde_json::from_slice(&bytes).ok()? {
        proto::Reply::SetupFailed { error } => Some(error),
        _ => None,
    }
}

fn join_cgroups(dirs: &[PathBuf], pid: u32) -> std::result::Result<(), String> {
    for dir in dirs {
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("joining cgroup {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Kills stage 1 processes that will not become boxes and recycles their cgroups.
fn discard(stage1s: Vec<Stage1>) {
    let mut stage1s = stage1s;
    for s in &mut stage1s {
        let _ = s.child.start_kill();
    }
    for mut s in stage1s {
        // A killed stage 1 has no child yet; it is gone within a few milliseconds.
        for _ in 0..200 {
            if !matches!(s.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let limits = s.limits.clone();
        recycle_cgroups(std::mem::take(&mut s.cgroups), &limits);
    }
}

/// How long after a box is up its pool starts refilling: making a box process costs a few
/// milliseconds of CPU, which the new box's first commands should not compete with.
const REFILL_DELAY: Duration = Duration::from_millis(50);

/// Stage 1 processes ready for the next boxes of one back end. Bounded by
/// [`NsOptions::pool`]; refilled in the background, [`REFILL_DELAY`] after each box is up.
/// Pooled processes die with the thread that spawned them (a runtime worker), or with this
/// pool.
#[derive(Default)]
struct Pool {
    idle: Mutex<Vec<Stage1>>,
    filling: AtomicUsize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.idle.lock().map(|v| v.len()).unwrap_or(0);
        f.debug_struct("Pool").field("idle", &idle).finish()
    }
}

impl Pool {
    /// A live pooled stage 1 whose namespaces suit a box of mode `net`, if there is one.
    fn take(&self, net: NetMode) -> Option<Stage1> {
        loop {
            let mut s = {
                let mut idle = self.idle.lock().ok()?;
                let i = idle
                    .iter()
                    .rposition(|s| s.net.own_netns() == net.own_netns())?;
                idle.remove(i)
            };
            match s.child.try_wait() {
                Ok(None) => return Some(s),
                _ => discard(vec![s]),
            }
        }
    }

    /// Starts filling the pool up to `opts.pool` in the background.
    fn refill(self: &Arc<Self>, exe: &Path, opts: &NsOptions) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let idle = self.idle.lock().map(|v| v.len()).unwrap_or(opts.pool);
        let want = opts
            .pool
            .saturating_sub(idle + self.filling.load(Ordering::SeqCst));
        for _ in 0..want {
            self.filling.fetch_add(1, Ordering::SeqCst);
            let pool = Arc::downgrade(self);
            let (exe, net, limits, max) =
                (exe.to_path_buf(), opts.net, opts.limits.clone(), opts.pool);
            rt.spawn(async move {
                tokio::time::sleep(REFILL_DELAY).await;
                let made = Stage1::spawn(&exe, net, &limits).await;
                let Some(pool) = pool.upgrade() else {
                    if let Ok(s) = made {
                        discard(vec![s]);
                    }
                    return;
                };
                pool.filling.fetch_sub(1, Ordering::SeqCst);
                match made {
                    Ok(s) => {
                        let extra = match pool.idle.lock() {
                            Ok(mut idle) if idle.len() < max => {
                                idle.push(s);
                                None
                            }
                            _ => Some(s),
                        };
                        if let Some(s) = extra {
                            discard(vec![s]);
                        }
                    }
                    Err(e) => tracing::debug!("refilling the box pool: {e}"),
                }
            });
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().map(std::mem::take).unwrap_or_default();
        discard(idle);
    }
}

/// Why a box did not come up: `Gone` when its process ended or stopped answering before
/// reporting anything (a pooled process may have been killed meanwhile).
enum BootError {
    Gone(SandboxError),
    Failed(SandboxError),
}

impl NsBox {
    async fn start(opts: &NsOptions, pool: &Arc<Pool>, spec: BoxSpec) -> Result<NsBox> {
        let net = spec.net.unwrap_or(opts.net);
        crate::bridge::validate(net, &spec.bridges)?;
        let exe = match &opts.exe {
            Some(e) => e.clone(),
            None => std::env::current_exe().map_err(io_err("finding the errand executable"))?,
        };
        // One mkdir: cheaper here than a hop to a blocking thread.
        std::fs::create_dir_all(&spec.scratch)
            .map_err(io_err(format!("creating {}", spec.scratch.display())))?;
        let workspace = spec
            .workspace
            .canonicalize()
            .map_err(io_err(format!("workspace {}", spec.workspace.display())))?;
        let cfg = BoxConfig {
            workspace,
            workspace_readonly: opts.workspace_readonly || spec.workspace_readonly,
            scratch: spec.scratch.clone(),
            ro_binds: spec.ro_binds.clone(),
            rootfs: spec.rootfs.clone(),
            net,
            bridges: spec.bridges.iter().map(|b| b.port).collect(),
            limits: opts.limits.clone(),
            cgroups: vec![],
            hostname: "errand-box".into(),
        };
        // A pooled process serves any mode with the same namespaces (stage 1 compiles the
        // box's own seccomp filter when the modes differ); others start from scratch.
        let mut pooled = if opts.pool > 0 { pool.take(net) } else { None };
        loop {
            let from_pool = pooled.is_some();
            let stage1 = match pooled.take() {
                Some(s) => s,
                None => Stage1::spawn(&exe, net, &opts.limits).await?,
            };
            match NsBox::boot(stage1, cfg.clone(), spec.clone(), from_pool).await {
                Ok(b) => {
                    if opts.pool > 0 {
                        pool.refill(&exe, opts);
                    }
                    return Ok(b);
                }
                Err(BootError::Gone(e)) if from_pool => {
                    tracing::debug!("a pooled box process was gone ({e}); starting a new one");
                }
                Err(BootError::Gone(e) | BootError::Failed(e)) => return Err(e),
            }
        }
    }

    /// Sends a stage 1 the box's configuration and waits until the box is Ready.
    async fn boot(
        stage1: Stage1,
        mut cfg: BoxConfig,
        spec: BoxSpec,
        from_pool: bool,
    ) -> std::result::Result<NsBox, BootError> {
        let Stage1 {
            child,
            sock,
            cgroups,
            limits,
            net: _,
        } = stage1;
        let net = cfg.net;
        let abandon = |child: tokio::process::Child, e: SandboxError| {
            // kill_on_drop: the process is killed, then its cgroups can go.
            drop(child);
            cleanup_cgroups(&cgroups);
            e
        };
        let registered = set_nonblocking(&sock).and_then(|()| {
            // SAFETY: `sock` owns its descriptor, and the AsyncFd owns `sock` from here on.
            unsafe { AsyncFd::register(sock) }
                .map_err(|e| io_err("watching the control socket")(e.into()))
        });
        let sock = match registered {
            Ok(s) => Arc::new(s),
            Err(e) => return Err(BootError::Failed(abandon(child, e))),
        };
        cfg.limits = limits.clone();
        let go = proto::Request::Go {
            config: Box::new(cfg),
        };
        if let Err(e) = send_request(&sock, &go, &[]).await {
            if let Some(error) = setup_failure(sock.get_ref()) {
                return Err(BootError::Failed(abandon(
                    child,
                    SandboxError::Refused(error),
                )));
            }
            return Err(BootError::Gone(abandon(
                child,
                io_err("starting the box")(e),
            )));
        }
        // While the box sets itself up: what the quota's directory holds before any command.
        // A copy-on-write workspace's upper layer starts empty; a plain directory is walked.
        let quota_base = match (limits.disk_bytes, &spec.quota_dir) {
            (Some(_), None) => {
                let dir = spec.workspace.clone();
                tokio::task::spawn_blocking(move || disk_usage(&dir))
                    .await
                    .unwrap_or(0)
            }
            _ => 0,
        };
        // Wait for Ready or SetupFailed.
        let first = tokio::time::timeout(Duration::from_secs(20), read_reply_fds(&sock)).await;
        let relays = crate::bridge::Relays::default();
        let enforced = match first {
            Ok(Ok(Some((
                proto::Reply::Ready {
                    mut report,
                    bridges,
                },
                fds,
            )))) => {
                if let Err(e) = serve_bridges(&relays, &spec.bridges, &bridges, fds) {
                    return Err(BootError::Failed(abandon(child, e)));
                }
                report.cgroups = cgroups.iter().map(|p| p.display().to_string()).collect();
                report
            }
            Ok(Ok(Some((proto::Reply::SetupFailed { error }, _)))) => {
                return Err(BootError::Failed(abandon(
                    child,
                    SandboxError::Refused(error),
                )));
            }
            Ok(Ok(_)) => {
                return Err(BootError::Gone(abandon(
                    child,
                    SandboxError::Refused("the box exited during setup".into()),
                )));
            }
            Ok(Err(e)) => return Err(BootError::Gone(abandon(child, e))),
            Err(_) => {
                return Err(BootError::Failed(abandon(
                    child,
                    SandboxError::Refused("the box did not start within 20 s".into()),
                )));
            }
        };
        let waiters = Arc::new(Mutex::new(Waiters::default()));
        let closed = Arc::new(AtomicBool::new(false));
        let reader = {
            let (sock, waiters, closed) = (sock.clone(), waiters.clone(), closed.clone());
            tokio::spawn(async move {
                while let Ok(Some(r)) = read_reply(&sock).await {
                    dispatch(&waiters, r);
                }
                closed.store(true, Ordering::SeqCst);
                // Fail everyone still waiting: the box is gone.
                if let Ok(mut w) = waiters.lock() {
                    w.fail_all();
                }
            })
        };
        Ok(NsBox {
            pid: child.id(),
            from_pool,
            child: Mutex::new(Some(child)),
            sock,
            waiters,
            next_id: AtomicU64::new(1),
            spec,
            limits,
            cgroups,
            destroyed: AtomicBool::new(false),
            closed,
            last_quota_check: Mutex::new(None),
            quota_base,
            enforced,
            reader,
            net,
            relays,
        })
    }

    /// This box's network mode.
    pub fn net(&self) -> NetMode {
        self.net
    }

    /// The host pid of the box's first process (stage 1, PID 1's parent).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Whether this box's process came from the back end's pool.
    pub fn from_pool(&self) -> bool {
        self.from_pool
    }

    async fn send(&self, req: &proto::Request, fds: &[std::os::fd::RawFd]) -> Result<()> {
        send_request(&self.sock, req, fds)
            .await
            .map_err(io_err("sending to the box"))
    }

    /// Disk used by the quota directory (walked on a blocking thread), at most once per
    /// `QUOTA_EVERY` unless `force`.
    async fn over_quota(&self, force: bool) -> bool {
        let Some(quota) = self.limits.disk_bytes else {
            return false;
        };
        if let Ok(mut last) = self.last_quota_check.lock() {
            if !force && last.is_some_and(|t| t.elapsed() < QUOTA_EVERY) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let dir = self
            .spec
            .quota_dir
            .clone()
            .unwrap_or_else(|| self.spec.workspace.clone());
        let used = tokio::task::spawn_blocking(move || disk_usage(&dir))
            .await
            .unwrap_or(0);
        used.saturating_sub(self.quota_base) > quota
    }
}

const QUOTA_EVERY: Duration = Duration::from_secs(2);

fn disk_usage(root: &Path) -> u64 {
    fn walk(p: &Path, total: &mut u64, budget: &mut u32) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            *budget = budget.saturating_sub(1);
            if *budget == 0 {
                return;
            }
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                walk(&e.path(), total, budget);
            } else {
                use std::os::unix::fs::MetadataExt;
                *total += m.blocks() * 512;
            }
        }
    }
    let mut total = 0;
    let mut budget = 2_000_000;
    walk(root, &mut total, &mut budget);
    total
}

static NEXT_BOX: AtomicU64 = AtomicU64::new(1);

/// Empty box cgroups kept for the next box with the same limits: making one (mkdir in the
/// memory hierarchy) costs several milliseconds of a box's start.
type CgroupPool = Vec<((Option<u64>, Option<u64>), Vec<PathBuf>)>;
static CGROUP_POOL: Mutex<CgroupPool> = Mutex::new(Vec::new());
const POOL_MAX: usize = 8;

fn pool_key(limits: &Limits) -> (Option<u64>, Option<u64>) {
    (limits.memory_bytes, limits.pids)
}

fn take_pooled(limits: &Limits) -> Option<Vec<PathBuf>> {
    let mut pool = CGROUP_POOL.lock().ok()?;
    let i = pool.iter().position(|(k, _)| *k == pool_key(limits))?;
    Some(pool.swap_remove(i).1)
}

/// Puts a destroyed box's cgroups back in the pool when they are empty, else removes them.
fn recycle_cgroups(cgroups: Vec<PathBuf>, limits: &Limits) {
    if cgroups.is_empty() {
        return;
    }
    let empty = |dir: &PathBuf| {
        (0..500).any(|_| {
            let none = std::fs::read_to_string(dir.join("cgroup.procs"))
                .map(|s| s.trim().is_empty())
                .unwrap_or(false);
            if !none {
                std::thread::sleep(Duration::from_millis(1));
            }
            none
        })
    };
    if cgroups.iter().all(empty)
        && let Ok(mut pool) = CGROUP_POOL.lock()
        && pool.len() < POOL_MAX
    {
        pool.push((pool_key(limits), cgroups));
        return;
    }
    cleanup_cgroups(&cgroups);
}

fn cleanup_cgroups(cgroups: &[PathBuf]) {
    for dir in cgroups {
        for _ in 0..500 {
            if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn dispatch(waiters: &Mutex<Waiters>, r: proto::Reply) {
    let Ok(mut w) = waiters.lock() else { return };
    match r {
        proto::Reply::Started { id, pid } => {
            if let Some(tx) = w.started.remove(&id) {
                let _ = tx.send(Ok(pid));
            }
        }
        proto::Reply::SpawnFailed { id, error } => {
            if let Some(tx) = w.started.remove(&id) {
                let _ = tx.send(Err(error));
            }
            w.exited.remove(&id);
        }
        proto::Reply::Exited { id, code, signal } => {
            if let Some(tx) = w.exited.remove(&id) {
                let _ = tx.send((code, signal));
            }
        }
        proto::Reply::Swept { id, stopped } => {
            if let Some(tx) = w.swept.remove(&id) {
                let _ = tx.send(stopped);
            }
        }
        proto::Reply::Ready { .. } | proto::Reply::SetupFailed { .. } => {}
    }
}

/// Sends one request to the box over the non-blocking control socket.
async fn send_request(
    sock: &AsyncFd<OwnedFd>,
    req: &proto::Request,
    fds: &[std::os::fd::RawFd],
) -> std::io::Result<()> {
    loop {
        let mut guard = sock.writable().await?;
        match guard.try_io(|inner| proto::send(inner.get_ref().as_raw_fd(), req, fds)) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

async fn read_reply(sock: &AsyncFd<OwnedFd>) -> Result<Option<proto::Reply>> {
    Ok(read_reply_fds(sock).await?.map(|(r, _fds)| r))
}

/// The next reply and the descriptors that came with it.
async fn read_reply_fds(sock: &AsyncFd<OwnedFd>) -> Result<Option<(proto::Reply, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; proto::MAX_MSG];
    loop {
        let mut guard = sock.readable().await.map_err(io_err("control socket"))?;
        match guard.try_io(|inner| proto::recv(inner.get_ref().as_raw_fd(), &mut buf)) {
            Ok(Ok(Some((bytes, fds)))) => {
                return serde_json::from_slice(&bytes)
                    .map(|r| Some((r, fds)))
                    .map_err(|e| SandboxError::Refused(format!("bad message from the box: {e}")));
            }
            Ok(Ok(None)) => return Ok(None),
            Ok(Err(e)) => return Err(io_err("reading from the box")(e)),
            Err(_would_block) => continue,
        }
    }
}

/// Relays the listening sockets the box made for its bridges (`ports[i]` is the port of
/// `fds[i]`) to the bridges' Unix sockets.
fn serve_bridges(
    relays: &crate::bridge::Relays,
    bridges: &[crate::Bridge],
    ports: &[u16],
    fds: Vec<OwnedFd>,
) -> Result<()> {
    let bad = |what: String| SandboxError::Refused(format!("setting up the bridges: {what}"));
    if ports.len() != fds.len() {
        return Err(bad(format!(
            "the box sent {} listening sockets for {} ports",
            fds.len(),
            ports.len()
        )));
    }
    for b in bridges {
        if !ports.contains(&b.port) {
            return Err(bad(format!("the box did not listen on port {}", b.port)));
        }
    }
    for (port, fd) in ports.iter().zip(fds) {
        let Some(b) = bridges.iter().find(|b| b.port == *port) else {
            return Err(bad(format!(
                "the box listened on port {port}, which no bridge has"
            )));
        };
        let std_listener = std::net::TcpListener::from(fd);
        std_listener
            .set_nonblocking(true)
            .map_err(io_err("setting a bridge's socket non-blocking"))?;
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .map_err(io_err("watching a bridge's socket"))?;
        relays.serve(listener, b);
    }
    Ok(())
}

fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags =
        fcntl(fd, FcntlArg::F_GETFL).map_err(|e| io_err("fcntl")(std::io::Error::from(e)))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(|e| io_err("fcntl")(std::io::Error::from(e)))?;
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io_err("creating a pipe")(std::io::Error::from(e)))
}

async fn pump(fd: OwnedFd, stream: Stream, tx: mpsc::Sender<OutputChunk>) {
    let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok();
    crate::pump(rx, stream, tx).await
}

/// Default `PATH` inside the box.
const BOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl NsBox {
    /// Runs `argv` (no shell) in the box.
    pub async fn exec_argv(
        &self,
        argv: Vec<String>,
        workdir: Option<&str>,
        timeout: Duration,
        cancel: tokio_util::sync::CancellationToken,
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<ExecResult> {
        if self.destroyed.load(Ordering::SeqCst) || self.closed.load(Ordering::SeqCst) {
            return Err(SandboxError::Destroyed);
        }
        let host_dir = resolve_workdir(&self.spec.workspace, workdir)?;
        let ws = self
            .spec
            .workspace
            .canonicalize()
            .map_err(io_err("workspace"))?;
        let rel = host_dir.strip_prefix(&ws).unwrap_or(Path::new(""));
        let cwd = Path::new(WORKSPACE).join(rel).display().to_string();
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), BOX_PATH.into()),
            ("HOME".into(), "/home/agent".into()),
            ("TMPDIR".into(), "/tmp".into()),
            ("TERM".into(), "dumb".into()),
            ("LANG".into(), "C.UTF-8".into()),
            ("USER".into(), "agent".into()),
            ("ERRAND_SANDBOX".into(), "box".into()),
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        ];
        env.extend(self.spec.env.iter().cloned());
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (started_tx, started_rx) = oneshot::channel();
        let (exit_tx, exit_rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.started.insert(id, started_tx);
            w.exited.insert(id, exit_tx);
        }
        let program = argv.first().cloned().unwrap_or_default();
        let full = argv;
        let mem_before = memory_events(&self.cgroups);
        let start = Instant::now();
        self.send(
            &proto::Request::Exec {
                id,
                argv: full,
                cwd,
                env,
            },
            &[out_w.as_raw_fd(), err_w.as_raw_fd()],
        )
        .await?;
        drop(out_w);
        drop(err_w);
        let out_task = tokio::spawn(pump(out_r, Stream::Stdout, output.clone()));
        let err_task = tokio::spawn(pump(err_r, Stream::Stderr, output.clone()));
        match started_rx.await {
            Ok(Ok(_pid)) => {}
            Ok(Err(e)) => {
                // Like a shell: say why on stderr, exit 127 (not found) or 126 (not runnable).
                let code = if e.contains("No such file") || e.contains("not found") {
                    127
                } else {
                    126
                };
                let msg = format!("errand: cannot run {program}: {e}\n");
                let _ = output
                    .send(OutputChunk {
                        stream: Stream::Stderr,
                        data: msg.into_bytes(),
                    })
                    .await;
                return Ok(ExecResult {
                    exit_code: Some(code),
                    signal: None,
                    duration: start.elapsed(),
                    killed_by: None,
                });
            }
            Err(_) => return Err(SandboxError::Destroyed),
        }
        let mut killed_by: Option<String> = None;
        let mut exit_rx = exit_rx;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        // Not `interval`: its first tick waits for the timer wheel's next millisecond.
        let mut quota_tick =
            tokio::time::interval_at(tokio::time::Instant::now() + QUOTA_EVERY, QUOTA_EVERY);
        let exit = loop {
            tokio::select! {
                r = &mut exit_rx => break r.ok(),
                // A killed command that does not go away (it left its process group) takes
                // the whole box down with it rather than hanging the worker.
                _ = tokio::time::sleep(Duration::from_secs(10)), if killed_by.is_some() => {
                    tracing::warn!(command = id, "a killed command did not exit; destroying its box");
                    let _ = self.destroy().await;
                    break Some((None, Some(libc::SIGKILL)));
                }
                _ = &mut deadline, if killed_by.is_none() => {
                    killed_by = Some("timeout".into());
                    let _ = self.send(&proto::Request::Kill { id }, &[]).await;
                }
                _ = cancel.cancelled(), if killed_by.is_none() => {
                    killed_by = Some("cancelled".into());
                    let _ = self.send(&proto::Request::Kill { id }, &[]).await;
                }
                _ = quota_tick.tick(), if killed_by.is_none() && self.limits.disk_bytes.is_some() => {
                    if self.over_quota(true).await {
                        killed_by = Some("disk_quota".into());
                        let _ = self.send(&proto::Request::Kill { id }, &[]).await;
                    }
                }
            }
        };
        let Some((code, signal)) = exit else {
            return Err(SandboxError::Destroyed);
        };
        let drain = async {
            let _ = out_task.await;
            let _ = err_task.await;
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
        if killed_by.is_none() {
            if signal == Some(libc::SIGKILL) && memory_events(&self.cgroups) > mem_before {
                killed_by = Some("memory".into());
            } else if signal == Some(libc::SIGXFSZ) {
                killed_by = Some("file_size".into());
            } else if self.over_quota(false).await {
                killed_by = Some("disk_quota".into());
            }
        }
        Ok(ExecResult {
            exit_code: code,
            signal,
            duration: start.elapsed(),
            killed_by,
        })
    }
}

#[async_trait]
impl SandboxBox for NsBox {
    async fn exec(
        &self,
        req: ExecRequest,
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<ExecResult> {
        let argv = vec!["bash".to_string(), "-c".to_string(), req.command];
        self.exec_argv(
            argv,
            req.workdir.as_deref(),
            req.timeout,
            req.cancel,
            output,
        )
        .await
    }

    fn as_ns(&self) -> Option<&NsBox> {
        Some(self)
    }

    async fn stop_leftovers(&self) -> Result<crate::Stopped> {
        if self.destroyed.load(Ordering::SeqCst) || self.closed.load(Ordering::SeqCst) {
            return Err(SandboxError::Destroyed);
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.swept.insert(id, tx);
        }
        let forget = || {
            if let Ok(mut w) = self.waiters.lock() {
                w.swept.remove(&id);
            }
        };
        if let Err(e) = self.send(&proto::Request::Sweep { id }, &[]).await {
            forget();
            return Err(e);
        }
        // PID 1 waits up to 5 s for what it killed; this bound covers that and the trip.
        match tokio::time::timeout(Duration::from_secs(15), rx).await {
            Ok(Ok(stopped)) => {
                if stopped.survivors > 0 {
                    tracing::warn!(
                        survivors = stopped.survivors,
                        "processes of the box did not exit after SIGKILL"
                    );
                }
                Ok(stopped)
            }
            Ok(Err(_)) => Err(SandboxError::Destroyed),
            Err(_) => {
                forget();
                Err(SandboxError::Refused(
                    "the box did not answer a request to stop its leftover processes within 15 s"
                        .into(),
                ))
            }
        }
    }

    fn close_bridges(&self) {
        self.relays.close();
    }

    async fn destroy(&self) -> Result<()> {
        if self.destroyed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // The bridges first: nothing is relayed for a box on its way out.
        self.relays.close();
        let child = self.child.lock().ok().and_then(|mut c| c.take());
        if let Some(mut child) = child {
            // SIGTERM asks stage 1 to kill PID 1 and wait for it: PID 1 exits only after
            // every process of its namespace is gone, so once stage 1 has exited the box's
            // cgroups are empty. SIGKILL if it does not answer.
            let asked = child.id().is_some_and(|pid| {
                // SAFETY: a signal to our own unreaped child.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) == 0 }
            });
            let done = asked
                && tokio::time::timeout(Duration::from_secs(2), child.wait())
                    .await
                    .is_ok();
            if !done {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            }
        }
        self.reader.abort();
        // The reader may not have seen the control socket close before it was stopped: fail
        // every command still waiting, as the reader would have (an `exec` returns
        // `Destroyed` instead of waiting for an exit report that never comes).
        if let Ok(mut w) = self.waiters.lock() {
            w.fail_all();
        }
        let cgroups = self.cgroups.clone();
        let limits = self.limits.clone();
        let _ = tokio::task::spawn_blocking(move || recycle_cgroups(cgroups, &limits)).await;
        Ok(())
    }
}

impl Drop for NsBox {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock()
            && let Some(child) = c.as_mut()
        {
            let _ = child.start_kill();
        }
        self.reader.abort();
    }
}

/// Removes box cgroups left behind by processes that no longer exist (a server killed with
/// SIGKILL cannot clean up). Only directories named after a dead process are touched, and
/// `rmdir` never removes a cgroup that still has tasks.
pub fn sweep_stale_cgroups() -> usize {
    let mut removed = 0;
    for parent in [
        "/sys/fs/cgroup/errand",
        "/sys/fs/cgroup/pids/errand",
        "/sys/fs/cgroup/memory/errand",
    ] {
        let Ok(rd) = std::fs::read_dir(parent) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("box-").and_then(|r| r.split('-').next()) else {
                continue;
            };
            if Path::new("/proc").join(pid).exists() {
                continue;
            }
            if std::fs::remove_dir(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Removes the pooled (idle) box cgroups. A short-lived process that created boxes calls this
/// before it exits, so that nothing is left behind.
pub fn release_pooled_cgroups() {
    let pooled = CGROUP_POOL
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default();
    for (_, dirs) in pooled {
        cleanup_cgroups(&dirs);
    }
}
