//! The box side: runs in a fresh `errand` process started by the host side with
//! `ERRAND_BOX_INIT` set, before any thread exists.
//!
//! Stage 1 creates a user namespace (mapping the caller to root inside), then PID, IPC, UTS
//! and (unless the network is open) network namespaces, raises loopback and compiles the
//! seccomp filter. Meanwhile the host puts it in the box's cgroups. It then waits for the
//! go-ahead with the box's configuration (a pooled stage 1 waits there until a box is
//! created), creates the mount namespace (a copy of the host's mounts as they are now), makes
//! its mounts private and forks. The child is PID 1 of the new PID namespace: it builds
//! the filesystem view, sets `no_new_privs`, Landlock and seccomp, reports `Ready`, then runs
//! commands on request until the control socket closes. When PID 1 exits, the kernel kills
//! every process left in the namespace; when stage 1 (or the host side) dies, PID 1 gets
//! SIGKILL. On SIGTERM stage 1 kills PID 1 and exits once it is gone.

use super::proto::{self, Reply, Request};
use super::{BoxConfig, Enforced, NetMode, Stage1Args, WORKSPACE};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::{ForkResult, Pid, fork};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The control socket's descriptor number in the box process.
pub const CONTROL_FD: RawFd = 3;

type Res<T> = Result<T, String>;

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: impl FnOnce() -> String) -> Res<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

fn fail(msg: String) -> i32 {
    let _ = proto::send(CONTROL_FD, &Reply::SetupFailed { error: msg }, &[]);
    70
}

/// Stage 1. Returns the process exit code.
pub fn stage1(args_json: &str) -> i32 {
    // Nothing the host process happened to inherit may reach the box, and the control
    // socket must not reach the commands (they could forge replies, like a command's exit).
    close_inherited_fds();
    // SAFETY: fcntl on a descriptor number; no pointers.
    unsafe { libc::fcntl(CONTROL_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    let args: Stage1Args = match serde_json::from_str(args_json) {
        Ok(c) => c,
        Err(e) => return fail(format!("bad box arguments: {e}")),
    };
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER) {
        return fail(format!(
            "cannot create a user namespace ({e}); enable unprivileged user namespaces \
             (sysctl user.max_user_namespaces=15000, and kernel.unprivileged_userns_clone=1 or \
             kernel.apparmor_restrict_unprivileged_userns=0 where those exist), or run trusted \
             tasks with --sandbox none"
        ));
    }
    let maps = [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("0 {} 1", uid.as_raw())),
        ("/proc/self/gid_map", format!("0 {} 1", gid.as_raw())),
    ];
    for (path, content) in maps {
        if let Err(e) = std::fs::write(path, content) {
            return fail(format!("writing {path}: {e}"));
        }
    }
    // The mount namespace comes after the go-ahead: a copy made now would miss what the host
    // mounts meanwhile (a pooled process waits, and attempts' workspaces are mounts).
    let mut flags = CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    if args.net != NetMode::Open {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if let Err(e) = unshare(flags) {
        return fail(format!("cannot create the box's namespaces ({e})"));
    }
    // What does not depend on the box's configuration or the host's mounts is done before.
    if args.net != NetMode::Open
        && let Err(e) = loopback_up()
    {
        return fail(e);
    }
    let mut filters = match super::seccomp::build(args.net) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    // The host puts this process in the box's cgroups meanwhile; wait for it before forking
    // PID 1, so that every process of the box is inside them.
    let mut buf = vec![0u8; proto::MAX_MSG];
    let cfg: BoxConfig = match proto::recv(CONTROL_FD, &mut buf) {
        Ok(Some((bytes, _))) => match serde_json::from_slice::<Request>(&bytes) {
            Ok(Request::Go { config }) => *config,
            _ => return fail("expected the go-ahead from the host".into()),
        },
        _ => return 0,
    };
    drop(buf);
    if cfg.net != args.net {
        // A process made for another mode with the same namespaces (a pooled one): only the
        // seccomp filter differs, and it is not installed yet.
        if cfg.net.own_netns() != args.net.own_netns() {
            return fail("the box's network mode differs from its namespaces'".into());
        }
        filters = match super::seccomp::build(cfg.net) {
            Ok(f) => f,
            Err(e) => return fail(e),
        };
    }
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNS) {
        return fail(format!("cannot create the box's mount namespace ({e})"));
    }
    if let Err(e) = ctx(
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
        || "making mounts private".to_string(),
    ) {
        return fail(e);
    }
    // Stage 1 waits for these below; PID 1 unblocks them first thing.
    let mut waited = SigSet::empty();
    waited.add(Signal::SIGTERM);
    waited.add(Signal::SIGCHLD);
    let old_mask = match waited.thread_swap_mask(SigmaskHow::SIG_BLOCK) {
        Ok(m) => m,
        Err(e) => return fail(format!("blocking signals: {e}")),
    };
    // SAFETY: this process is single-threaded here (stage 1 runs before any runtime starts),
    // so the child may run arbitrary code.
    match unsafe { fork() } {
        Err(e) => fail(format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            if let Err(e) = old_mask.thread_set_mask() {
                std::process::exit(fail(format!("unblocking signals: {e}")));
            }
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            let code = match pid1(&cfg, &filters) {
                Ok(()) => 0,
                Err(e) => fail(e),
            };
            std::process::exit(code)
        }
        Ok(ForkResult::Parent { child }) => wait_pid1(child, &waited),
    }
}

/// Waits for PID 1 (which exits only once every process of its namespace is gone); on
/// SIGTERM kills it first. Returns stage 1's exit code.
fn wait_pid1(child: Pid, waited: &SigSet) -> i32 {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    loop {
        match waited.wait() {
            Ok(Signal::SIGTERM) => {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            }
            Ok(_) => match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return 71,
            },
            Err(_) => continue,
        }
    }
}

/// Closes every descriptor above the control socket (stdin, stdout and stderr stay).
fn close_inherited_fds() {
    let first = (CONTROL_FD + 1) as libc::c_uint;
    // SAFETY: close_range takes no pointers; we are single-threaded and own no other fds.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0u32) };
    if rc == 0 {
        return;
    }
    // Kernels before 5.9: close what /proc/self/fd lists (collected first, then closed).
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|fd| *fd > CONTROL_FD)
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        // SAFETY: closing descriptors this process inherited and does not use.
        unsafe { libc::close(fd) };
    }
}

fn mkdir_p(p: &Path) -> Res<()> {
    ctx(std::fs::create_dir_all(p), || {
        format!("creating {}", p.display())
    })
}

fn bind(src: &Path, dst: &Path, readonly: bool) -> Res<()> {
    ctx(
        mount(
            Some(src),
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
        || format!("bind-mounting {} on {}", src.display(), dst.display()),
    )?;
    if readonly {
        remount_ro(dst)?;
    }
    Ok(())
}

/// Remounts a bind mount read-only, keeping the flags the kernel locked on it.
fn remount_ro(dst: &Path) -> Res<()> {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let st = ctx(statvfs(dst), || format!("statvfs {}", dst.display()))?;
    let f = st.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (have, add) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(have) {
            flags |= add;
        }
    }
    ctx(
        mount(None::<&str>, dst, None::<&str>, flags, None::<&str>),
        || format!("remounting {} read-only", dst.display()),
    )
}

fn tmpfs(dst: &Path, size: u64, mode: &str) -> Res<()> {
    let opts = format!("size={size},mode={mode}");
    ctx(
        mount(
            Some("tmpfs"),
            dst,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(opts.as_str()),
        ),
        || format!("mounting tmpfs on {}", dst.display()),
    )
}

/// Host paths that make up the box's read-only system view.
const SYSTEM_DIRS: &[&str] = &[
    "usr", "etc", "opt", "bin", "sbin", "lib", "lib32", "lib64", "libx32",
];
/// Files and directories of /etc hidden in the box (credentials and keys).
const MASKED_FILES: &[&str] = &[
    "etc/shadow",
    "etc/shadow-",
    "etc/gshadow",
    "etc/gshadow-",
    "etc/sudoers",
];
const MASKED_DIRS: &[&str] = &["etc/ssh", "etc/sudoers.d", "etc/ssl/private"];
/// Files of the box's /proc masked like the credentials of /etc.
const MASKED_PROC: &[&str] = &["keys", "key-users"];
const DEV_FILES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

fn build_root(cfg: &BoxConfig) -> Res<PathBuf> {
    let root = cfg.scratch.join("root");
    mkdir_p(&root)?;
    tmpfs(&root, 16 << 20, "0755")?;
    for d in SYSTEM_DIRS {
        let host = cfg.rootfs.as_deref().unwrap_or(Path::new("/")).join(d);
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        let inside = root.join(d);
        if meta.file_type().is_symlink() {
            let target = ctx(std::fs::read_link(&host), || {
                format!("reading link {}", host.display())
            })?;
            ctx(std::os::unix::fs::symlink(&target, &inside), || {
                format!("linking {}", inside.display())
            })?;
        } else if meta.is_dir() {
            mkdir_p(&inside)?;
            bind(&host, &inside, true)?;
        }
    }
    for f in MASKED_FILES {
        let p = root.join(f);
        if p.exists() {
            bind(Path::new("/dev/null"), &p, true)?;
        }
    }
    for d in MASKED_DIRS {
        let p = root.join(d);
        if p.is_dir() {
            tmpfs(&p, 4096, "0755")?;
        }
    }
    let ws = root.join(WORKSPACE.trim_start_matches('/'));
    mkdir_p(&ws)?;
    bind(&cfg.workspace, &ws, cfg.workspace_readonly)?;
    let tmp = root.join("tmp");
    mkdir_p(&tmp)?;
    tmpfs(&tmp, cfg.limits.tmp_bytes, "1777")?;
    let home = root.join("home/agent");
    mkdir_p(&home)?;
    tmpfs(&home, cfg.limits.tmp_bytes, "0755")?;
    // Read-only extras (after /tmp and $HOME, which they may be under) at their host paths (the mirror's objects, for git alternates).
    for p in &cfg.ro_binds {
        let inside = root.join(p.strip_prefix("/").unwrap_or(p));
        mkdir_p(&inside)?;
        bind(p, &inside, true)?;
    }
    let dev = root.join("dev");
    mkdir_p(&dev)?;
    tmpfs(&dev, 1 << 20, "0755")?;
    for f in DEV_FILES {
        let host = Path::new("/dev").join(f);
        if host.exists() {
            let inside = dev.join(f);
            ctx(std::fs::write(&inside, b""), || {
                format!("creating {}", inside.display())
            })?;
            bind(&host, &inside, false)?;
        }
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, dev.join(name));
    }
    let shm = dev.join("shm");
    mkdir_p(&shm)?;
    tmpfs(&shm, 64 << 20, "1777")?;
    let proc_dir = root.join("proc");
    mkdir_p(&proc_dir)?;
    ctx(
        mount(
            Some("proc"),
            &proc_dir,
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        ),
        || "mounting /proc".to_string(),
    )?;
    // The keyrings of the host user the box runs as (descriptions and ids) are not the
    // box's business; keyctl is denied anyway.
    for f in MASKED_PROC {
        let p = proc_dir.join(f);
        if p.exists() {
            bind(Path::new("/dev/null"), &p, true)?;
        }
    }
    // The root itself becomes read-only once everything is mounted on it.
    Ok(root)
}

fn pivot(root: &Path) -> Res<()> {
    ctx(nix::unistd::chdir(root), || {
        format!("chdir {}", root.display())
    })?;
    ctx(nix::unistd::pivot_root(".", "."), || {
        "pivot_root".to_string()
    })?;
    ctx(umount2(".", MntFlags::MNT_DETACH), || {
        "detaching the old root".to_string()
    })?;
    ctx(nix::unistd::chdir("/"), || "chdir /".to_string())?;
    ctx(
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            None::<&str>,
        ),
        || "remounting / read-only".to_string(),
    )
}

/// Brings the loopback interface up inside a fresh network namespace.
fn loopback_up() -> Res<()> {
    // SAFETY: plain socket/ioctl syscalls on a zeroed ifreq we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(format!(
                "socket for loopback: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(format!("reading loopback flags: {e}"));
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        let rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        let e = std::io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            return Err(format!("raising loopback: {e}"));
        }
    }
    Ok(())
}

/// The listening sockets of the box's bridges on its loopback (IPv4, and IPv6 where the
/// loopback has it), their ports in the same order, and how the network reads in the report.
fn bridge_listeners(cfg: &BoxConfig) -> Res<(Vec<OwnedFd>, Vec<u16>, String)> {
    let mut fds = Vec::new();
    let mut ports = Vec::new();
    let mut addrs = Vec::new();
    if cfg.net != NetMode::Allowlist && !cfg.bridges.is_empty() {
        return Err(format!("bridges in network mode '{}'", cfg.net));
    }
    for port in &cfg.bridges {
        let v4 = ctx(std::net::TcpListener::bind(("127.0.0.1", *port)), || {
            format!("listening on 127.0.0.1:{port} for a bridge")
        })?;
        fds.push(OwnedFd::from(v4));
        ports.push(*port);
        // Best effort: a loopback without IPv6 (disabled by the host) has no ::1.
        match std::net::TcpListener::bind(("::1", *port)) {
            Ok(v6) => {
                fds.push(OwnedFd::from(v6));
                ports.push(*port);
                addrs.push(format!("127.0.0.1:{port} and [::1]:{port}"));
            }
            Err(_) => addrs.push(format!("127.0.0.1:{port}")),
        }
    }
    let net = match cfg.net {
        NetMode::Open => "open (host network)".to_string(),
        NetMode::Off => "off (own network namespace, loopback only)".to_string(),
        NetMode::Allowlist if addrs.is_empty() => {
            "allowlist (egress proxy only, no bridge: loopback only)".to_string()
        }
        NetMode::Allowlist => format!(
            "allowlist (egress proxy only, bridged on {})",
            addrs.join(", ")
        ),
    };
    Ok((fds, ports, net))
}

fn landlock(cfg: &BoxConfig) -> (Option<i32>, String) {
    use landlock::{
        ABI, Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus,
    };
    let abi = ABI::V5;
    let run = || -> Result<RulesetStatus, String> {
        let all = AccessFs::from_all(abi);
        let read = AccessFs::from_read(abi);
        let mut rs = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(all)
            .map_err(|e| e.to_string())?
            .create()
            .map_err(|e| e.to_string())?;
        let mut rules: Vec<(&str, landlock::BitFlags<AccessFs>)> = vec![
            ("/", read),
            ("/tmp", all),
            ("/home/agent", all),
            ("/dev/shm", all),
        ];
        rules.push(("/dev", read | AccessFs::WriteFile));
        rules.push((WORKSPACE, if cfg.workspace_readonly { read } else { all }));
        for (path, access) in rules {
            let fd = PathFd::new(path).map_err(|e| format!("{path}: {e}"))?;
            rs = rs
                .add_rule(PathBeneath::new(fd, access))
                .map_err(|e| e.to_string())?;
        }
        let status = rs.restrict_self().map_err(|e| e.to_string())?;
        Ok(status.ruleset)
    };
    // SAFETY: the version query passes no pointers.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    let version = (version > 0).then_some(version as i32);
    match run() {
        Ok(RulesetStatus::FullyEnforced) => (version, "enforced".into()),
        Ok(RulesetStatus::PartiallyEnforced) => {
            (version, "partially enforced (older kernel ABI)".into())
        }
        Ok(RulesetStatus::NotEnforced) => (version, "not available on this kernel".into()),
        Err(e) => (version, format!("failed: {e}")),
    }
}

struct Tracked {
    /// pid → command id, for commands still running.
    running: HashMap<i32, u64>,
    /// id → pid (the process group to kill).
    groups: HashMap<u64, i32>,
}

/// PID 1 of the box. Stage 1 made its mounts private and raised loopback.
fn pid1(cfg: &BoxConfig, filters: &[seccompiler::BpfProgram]) -> Res<()> {
    let root = build_root(cfg)?;
    pivot(&root)?;
    let _ = nix::unistd::sethostname(&cfg.hostname);
    // Before any command runs, so that none can take a bridge's port first.
    let (listeners, ports, net) = bridge_listeners(cfg)?;
    ctx(nix::sys::prctl::set_no_new_privs(), || {
        "setting no_new_privs".to_string()
    })?;
    let (landlock_abi, landlock_status) = landlock(cfg);
    super::seccomp::install(filters)?;
    // Commands run as the same user as PID 1: without this they could open /proc/1/fd/*
    // (PID 1's stderr is the host's) or read /proc/1/environ and /proc/1/mem.
    ctx(nix::sys::prctl::set_dumpable(false), || {
        "making PID 1 non-dumpable".to_string()
    })?;
    let report = Enforced {
        namespaces: if cfg.net == NetMode::Open {
            "user, mount, pid, ipc, uts"
        } else {
            "user, mount, pid, net, ipc, uts"
        }
        .into(),
        network: net,
        landlock_abi,
        landlock: landlock_status,
        seccomp: "enforced".into(),
        no_new_privs: true,
        cgroups: cfg
            .cgroups
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
    };
    let raw: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    ctx(
        proto::send(
            CONTROL_FD,
            &Reply::Ready {
                report,
                bridges: ports,
            },
            &raw,
        ),
        || "reporting ready".to_string(),
    )?;
    // The host has them now; the box keeps no copy.
    drop(listeners);

    let tracked = Arc::new(Mutex::new(Tracked {
        running: HashMap::new(),
        groups: HashMap::new(),
    }));
    {
        let tracked = tracked.clone();
        std::thread::spawn(move || reaper(tracked));
    }
    let mut buf = vec![0u8; proto::MAX_MSG];
    loop {
        let (bytes, fds) = match proto::recv(CONTROL_FD, &mut buf) {
            Ok(Some(m)) => m,
            // The host closed the socket: the box ends, and everything in it dies with PID 1.
            Ok(None) | Err(_) => return Ok(()),
        };
        let req: Request = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(_) => continue,
        };
        match req {
            Request::Exec { id, argv, cwd, env } => exec(cfg, &tracked, id, argv, cwd, env, fds),
            Request::Go { .. } => {}
            Request::Sweep { id } => {
                let stopped = sweep();
                let _ = proto::send(CONTROL_FD, &Reply::Swept { id, stopped }, &[]);
            }
            Request::Kill { id } => {
                let pgid = tracked
                    .lock()
                    .map(|t| t.groups.get(&id).copied())
                    .unwrap_or(None);
                if let Some(pgid) = pgid {
                    // The group, and the leader itself in case it moved to another group.
                    let _ = nix::sys::signal::killpg(
                        Pid::from_raw(pgid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    let _ = nix::sys::signal::kill(
                        Pid::from_raw(pgid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

fn exec(
    cfg: &BoxConfig,
    tracked: &Arc<Mutex<Tracked>>,
    id: u64,
    argv: Vec<String>,
    cwd: String,
    env: Vec<(String, String)>,
    mut fds: Vec<OwnedFd>,
) {
    let reply = |r: Reply| {
        let _ = proto::send(CONTROL_FD, &r, &[]);
    };
    if fds.len() != 2 || argv.is_empty() {
        reply(Reply::SpawnFailed {
            id,
            error: "malformed exec request".into(),
        });
        return;
    }
    let stderr = fds.pop();
    let stdout = fds.pop();
    let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
        return;
    };
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(&cwd)
        .env_clear()
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(stdout))
        .stderr(std::process::Stdio::from(stderr));
    let limits = cfg.limits.clone();
    // SAFETY: only async-signal-safe syscalls run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setpgid(0, 0);
            let set = |res, v: u64| {
                let r = libc::rlimit {
                    rlim_cur: v as libc::rlim_t,
                    rlim_max: v as libc::rlim_t,
                };
                libc::setrlimit(res, &r);
            };
            set(libc::RLIMIT_CORE, 0);
            set(libc::RLIMIT_NOFILE, limits.nofile);
            if let Some(f) = limits.file_size_bytes {
                set(libc::RLIMIT_FSIZE, f);
            }
            if let Some(a) = limits.address_space_bytes {
                set(libc::RLIMIT_AS, a);
            }
            if let Some(p) = limits.nproc {
                set(libc::RLIMIT_NPROC, p);
            }
            // Signals ignored by PID 1 must not stay ignored in commands.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut t = match tracked.lock() {
        Ok(t) => t,
        Err(p) => p.into_inner(),
    };
    if !Path::new(&cwd).is_dir() {
        drop(t);
        reply(Reply::SpawnFailed {
            id,
            error: format!("working directory {cwd} does not exist"),
        });
        return;
    }
    // std's spawn waits for a child whose exec failed, and asserts that the wait succeeds;
    // our reaper may have reaped it first. Such a panic must fail this command, not PID 1.
    let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cmd.spawn()));
    let spawned = match spawned {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::other("the command could not be executed")),
    };
    note_spawn();
    match spawned {
        Ok(child) => {
            let pid = child.id() as i32;
            t.running.insert(pid, id);
            t.groups.insert(id, pid);
            drop(t);
            // The reaper waits for it; dropping Child does not.
            drop(child);
            reply(Reply::Started { id, pid });
        }
        Err(e) => {
            drop(t);
            reply(Reply::SpawnFailed {
                id,
                error: format!("{}: {e}", argv[0]),
            });
        }
    }
}

/// How long a sweep waits for the processes it killed to be gone.
const SWEEP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Every process of the box but PID 1, in pid order. The box's `/proc` shows its own PID
/// namespace only.
fn box_processes() -> Vec<crate::procs::Proc> {
    crate::procs::list(|_| false)
}

/// Kills every process of the box but PID 1 and waits (bounded) until none runs any more.
///
/// `kill(-1, SIGKILL)` from the namespace's init reaches every process of the namespace
/// except the caller, wherever it moved (another process group or session, a double fork
/// that reparented it to PID 1), in one pass that a fork cannot race: the kernel walks the
/// task list under its lock, and a fork whose parent has a fatal signal pending fails. The
/// reaper thread collects what exits.
fn sweep() -> crate::Stopped {
    let found: Vec<crate::procs::Proc> = box_processes().into_iter().filter(|p| !p.gone).collect();
    if found.is_empty() {
        return crate::Stopped::default();
    }
    let deadline = std::time::Instant::now() + SWEEP_WAIT;
    let survivors = loop {
        // SAFETY: kill(2) takes no pointers. From PID 1 of a namespace, -1 means every
        // other process of that namespace.
        unsafe { libc::kill(-1, libc::SIGKILL) };
        let alive = box_processes().iter().filter(|p| !p.gone).count();
        if alive == 0 || std::time::Instant::now() >= deadline {
            break alive;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    crate::Stopped::new(
        found.into_iter().map(|p| (p.pid, p.name)).collect(),
        survivors,
    )
}

/// Counts spawned commands; wakes the reaper when it has no child to wait for.
static SPAWNS: (Mutex<u64>, std::sync::Condvar) = (Mutex::new(0), std::sync::Condvar::new());

fn note_spawn() {
    if let Ok(mut n) = SPAWNS.0.lock() {
        *n += 1;
    }
    SPAWNS.1.notify_all();
}

/// Reaps every child of PID 1 (commands and orphans); reports commands' exits.
fn reaper(tracked: Arc<Mutex<Tracked>>) {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        let seen = SPAWNS.0.lock().map(|n| *n).unwrap_or(0);
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) => report_exit(&tracked, pid, Some(code), None),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                report_exit(&tracked, pid, None, Some(sig as i32))
            }
            Ok(_) => {}
            Err(nix::errno::Errno::ECHILD) => {
                // No children: sleep until the next spawn (checked against the count read
                // before waitpid, so a spawn in between is not missed).
                let (lock, cvar) = &SPAWNS;
                if let Ok(guard) = lock.lock() {
                    let _ =
                        cvar.wait_timeout_while(guard, std::time::Duration::from_secs(1), |n| {
                            *n == seen
                        });
                }
            }
            Err(_) => {}
        }
    }
}

fn report_exit(tracked: &Arc<Mutex<Tracked>>, pid: Pid, code: Option<i32>, signal: Option<i32>) {
    let id = {
        let mut t = match tracked.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        t.running.remove(&pid.as_raw())
    };
    if let Some(id) = id {
        let _ = proto::send(CONTROL_FD, &Reply::Exited { id, code, signal }, &[]);
    }
}

/// Keeps the unused-import lint quiet for `AsRawFd` on some targets.
#[allow(dead_code)]
fn _fd(f: &OwnedFd) -> RawFd {
    f.as_raw_fd()
}
