//! `errand sandbox run` and `errand sandbox check`: the same box an attempt gets, by hand.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use errand_sandbox::ns::{Limits, NamespaceBackend, NetMode, NsOptions};
use errand_sandbox::{BoxSpec, SandboxBackend, Stream};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand)]
pub enum SandboxCommand {
    /// Run one command in a fresh box; exits with the command's exit code.
    Run(Box<RunArgs>),
    /// Say what this host can enforce, then start a box to prove it.
    Check,
}

#[derive(Args)]
pub struct RunArgs {
    /// off (loopback only), allowlist (through the egress proxy), open (host network).
    #[arg(long, default_value = "off")]
    net: String,
    /// With --net allowlist: a host the command may reach (`example.org`, `*.example.org`,
    /// `example.org:8443`, `registry:python`, `git:github`, an address or CIDR). Repeatable.
    #[arg(long = "allow", value_name = "HOST")]
    allow: Vec<String>,
    /// With --net allowlist: a host never reachable, whatever --allow says. Repeatable.
    #[arg(long = "deny", value_name = "HOST")]
    deny: Vec<String>,
    /// Directory mounted read-write at /workspace (default: the current directory).
    #[arg(long)]
    workspace: Option<PathBuf>,
    /// A root filesystem folder (usr/, etc/, …) to use instead of the host's system directories.
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// Memory limit for the whole box, like 512M or 2G.
    #[arg(long, default_value = "4G")]
    memory: String,
    /// Maximum number of processes and threads in the box.
    #[arg(long, default_value_t = 1024)]
    pids: u64,
    /// Kill the command after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Largest file a command may write, like 1G.
    #[arg(long, default_value = "1G")]
    max_file_size: String,
    /// Workspace disk quota, like 10G.
    #[arg(long, default_value = "10G")]
    disk: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Exit codes for commands killed by a limit (documented in the README).
pub fn limit_exit_code(limit: &str) -> u8 {
    match limit {
        "timeout" => 124,
        "memory" => 125,
        "file_size" => 122,
        "disk_quota" => 123,
        "cancelled" => 130,
        _ => 121,
    }
}

pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].to_ascii_uppercase();
            let mult: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => bail!("size '{s}' has an unknown unit; use K, M, G or T (for example 512M)"),
            };
            (&t[..i], mult)
        }
        None => (t, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("size '{s}' is not a number with an optional K/M/G/T unit"))?;
    if n <= 0.0 {
        bail!("size '{s}' must be positive");
    }
    Ok((n * mult as f64) as u64)
}

pub async fn run(cmd: SandboxCommand) -> Result<ExitCode> {
    let result = match cmd {
        SandboxCommand::Run(a) => run_one(*a).await,
        SandboxCommand::Check => check().await,
    };
    // This process is about to exit: its idle cgroups must not outlive it.
    errand_sandbox::ns::release_pooled_cgroups();
    result
}

async fn run_one(a: RunArgs) -> Result<ExitCode> {
    let net: NetMode = a.net.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let workspace = match a.workspace {
        Some(w) => w,
        None => std::env::current_dir().context("reading the current directory")?,
    };
    if !workspace.is_dir() {
        bail!("--workspace {} is not a directory", workspace.display());
    }
    let limits = Limits {
        memory_bytes: Some(parse_size(&a.memory).context("--memory")?),
        pids: Some(a.pids),
        file_size_bytes: Some(parse_size(&a.max_file_size).context("--max-file-size")?),
        disk_bytes: Some(parse_size(&a.disk).context("--disk")?),
        ..Limits::default()
    };
    if net == NetMode::Open {
        eprintln!("errand: warning: --net open gives the command the host's network");
    }
    if net != NetMode::Allowlist && !(a.allow.is_empty() && a.deny.is_empty()) {
        bail!(
            "--allow and --deny only apply with --net allowlist (the box reaches the network only through the egress proxy); add --net allowlist"
        );
    }
    // One box per process: a pool of ready box processes would only be thrown away.
    let backend = NamespaceBackend::new(NsOptions {
        net,
        limits,
        pool: 0,
        ..Default::default()
    })?;
    if let Some(r) = &a.rootfs
        && !r.join("usr").is_dir()
    {
        bail!(
            "--rootfs {} has no usr/ directory; point it at a root filesystem folder",
            r.display()
        );
    }
    let scratch = tempdir()?;
    let mut spec = BoxSpec {
        workspace,
        scratch: scratch.join("box"),
        ro_binds: vec![],
        rootfs: a.rootfs.clone(),
        quota_dir: None,
        env: vec![],
        ..Default::default()
    };
    let proxy = if net == NetMode::Allowlist {
        match start_proxy(&a.allow, &a.deny, &scratch).await {
            Ok(p) => {
                spec.bridges.push(errand_sandbox::Bridge {
                    port: PROXY_PORT,
                    socket: scratch.join("egress.sock"),
                    handoff: true,
                });
                spec.env = errand_sandbox::proxy_env(PROXY_PORT);
                Some(p)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&scratch);
                return Err(e);
            }
        }
    } else {
        None
    };
    let result = run_in(&backend, spec, a.command, a.timeout).await;
    if let Some(p) = proxy {
        p.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// The port the egress proxy is bridged to inside the box (as in an attempt).
const PROXY_PORT: u16 = 3128;

/// Starts the egress proxy for `--net allowlist` on a socket in `dir`; every decision is
/// printed to stderr.
async fn start_proxy(
    allow: &[String],
    deny: &[String],
    dir: &std::path::Path,
) -> Result<errand_proxy::ProxyHandle> {
    let (allow_v, deny_v) = (allow.to_vec(), deny.to_vec());
    let policy = tokio::task::spawn_blocking(move || {
        errand_proxy::Policy::parse_with(&allow_v, &deny_v, &errand_proxy::Presets::system())
    })
    .await
    .context("building the network policy")?
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if allow.is_empty() {
        eprintln!("errand: warning: --net allowlist without --allow: every request will be denied");
    }
    eprintln!("errand: egress proxy: {}", policy.summary());
    let resolver = errand_proxy::resolver_from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let on_event = std::sync::Arc::new(|r: errand_proxy::NetRecord| {
        eprintln!(
            "errand: net {} {}{}:{}{} — {} B up, {} B down{}",
            if r.allowed { "ALLOWED" } else { "DENIED" },
            r.method.map(|m| format!("{m} ")).unwrap_or_default(),
            r.host,
            r.port,
            r.addr.map(|a| format!(" ({a})")).unwrap_or_default(),
            r.bytes_up,
            r.bytes_down,
            r.reason.map(|x| format!(": {x}")).unwrap_or_default()
        );
    });
    let cfg = errand_proxy::ProxyConfig::new(std::sync::Arc::new(policy), resolver, on_event);
    errand_proxy::Proxy::serve_unix(&dir.join("egress.sock"), cfg)
        .map_err(|e| anyhow::anyhow!("starting the egress proxy: {e}"))
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "errand-box-{}-{}",
        std::process::id(),
        errand_core::new_id()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

async fn run_in(
    backend: &NamespaceBackend,
    spec: BoxSpec,
    argv: Vec<String>,
    timeout: Duration,
) -> Result<ExitCode> {
    let b = backend.create(spec).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<errand_sandbox::OutputChunk>(64);
    let printer = tokio::spawn(async move {
        while let Some(c) = rx.recv().await {
            let _ = match c.stream {
                Stream::Stdout => std::io::stdout()
                    .write_all(&c.data)
                    .and_then(|_| std::io::stdout().flush()),
                Stream::Stderr => std::io::stderr()
                    .write_all(&c.data)
                    .and_then(|_| std::io::stderr().flush()),
            };
        }
    });
    let cancel = tokio_util::sync::CancellationToken::new();
    let ctrl_c = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.cancel();
            }
        })
    };
    let nsbox = b.as_ns().context("internal: not a namespace box")?;
    let res = nsbox.exec_argv(argv, None, timeout, cancel, tx).await;
    ctrl_c.abort();
    let _ = b.destroy().await;
    let _ = printer.await;
    let res = res?;
    if let Some(limit) = &res.killed_by {
        let what = match limit.as_str() {
            "timeout" => format!(
                "it ran past --timeout {}",
                humantime::format_duration(timeout)
            ),
            "memory" => "it went over the box's memory limit (--memory)".to_string(),
            "file_size" => "it wrote a file larger than --max-file-size".to_string(),
            "disk_quota" => "the workspace went over its disk quota (--disk)".to_string(),
            "cancelled" => "interrupted".to_string(),
            other => other.to_string(),
        };
        eprintln!("errand: command killed: {what} [limit: {limit}]");
        return Ok(ExitCode::from(limit_exit_code(limit)));
    }
    Ok(match (res.exit_code, res.signal) {
        (Some(c), _) => ExitCode::from(c.clamp(0, 255) as u8),
        (None, Some(s)) => ExitCode::from((128 + s).clamp(0, 255) as u8),
        _ => ExitCode::from(1),
    })
}

async fn check() -> Result<ExitCode> {
    let mut ok = true;
    let line = |name: &str, good: bool, text: String| {
        println!("{} {name:<16} {text}", if good { "✓" } else { "✗" });
    };
    let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .map(|s| s.trim().parse::<u64>().unwrap_or(0))
        .unwrap_or(0);
    line(
        "user namespaces",
        userns > 0,
        format!("user.max_user_namespaces = {userns}"),
    );
    // SAFETY: version query with no pointers.
    let abi = unsafe { libc_landlock_abi() };
    line(
        "landlock",
        abi > 0,
        if abi > 0 {
            format!("ABI {abi}")
        } else {
            "not available (writes are then limited by the mount layout only)".into()
        },
    );
    let seccomp = std::fs::read_to_string("/proc/self/status")
        .map(|s| s.contains("Seccomp:"))
        .unwrap_or(false);
    line(
        "seccomp",
        seccomp,
        if seccomp {
            "available".into()
        } else {
            "not available".into()
        },
    );
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let v1_pids = std::path::Path::new("/sys/fs/cgroup/pids").is_dir();
    let v1_mem = std::path::Path::new("/sys/fs/cgroup/memory").is_dir();
    line(
        "cgroups",
        v2 || v1_pids || v1_mem,
        if v2 {
            "v2".into()
        } else {
            format!(
                "v1 (pids: {}, memory: {}); used when writable, rlimits otherwise",
                yes(v1_pids),
                yes(v1_mem)
            )
        },
    );
    let overlay = std::fs::read_to_string("/proc/filesystems")
        .map(|s| s.contains("overlay"))
        .unwrap_or(false);
    line(
        "overlayfs",
        overlay,
        if overlay {
            "available".into()
        } else {
            "not available".into()
        },
    );
    let ws = tempdir()?;
    let scratch = ws.join(".scratch");
    let backend = NamespaceBackend::new(NsOptions {
        pool: 0,
        ..Default::default()
    })?;
    let spec = BoxSpec {
        workspace: ws.clone(),
        scratch,
        ro_binds: vec![],
        rootfs: None,
        quota_dir: None,
        env: vec![],
        ..Default::default()
    };
    match backend.create(spec).await {
        Ok(b) => {
            if let Some(n) = b.as_ns() {
                println!("\nA box started. It enforces:\n  {}", n.enforced.summary());
            }
            let _ = b.destroy().await;
        }
        Err(e) => {
            ok = false;
            println!("\n✗ a box could not start, so Errand refuses to run agents here: {e}");
            println!(
                "  (`errand serve --sandbox none` runs without isolation, for trusted local use only)"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&ws);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

unsafe fn libc_landlock_abi() -> i64 {
    // SAFETY: LANDLOCK_CREATE_RULESET_VERSION takes no pointers.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    }
}
