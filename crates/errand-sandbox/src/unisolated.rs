//! `--sandbox none`: commands run directly on the host, in the workspace directory.
//!
//! There is no isolation at all: this back end exists for trusted local use and for hosts
//! where the real box is not available yet. Each command runs in its own process group with a
//! scrubbed environment (the server's variables, API keys included, are not passed on), and
//! destroying the box kills every process of it that can be found.
//!
//! A process counts as the box's ([`SandboxBox::stop_leftovers`], `destroy`) when it is in
//! the process group of one of its commands, or when its environment still carries the box's
//! marker variable (`ERRAND_SANDBOX_ID`, unique per box), which a daemon that left the group
//! (`setsid`, a double fork, `nohup`) inherits. One that also cleared its environment is not
//! found: there is no PID namespace to fall back on here.
//!
//! Network: commands have the host's network whatever the box's mode says. Bridges listen on
//! the host's own loopback (so their ports must be free there, and any local process can use
//! them while the box lives).

use crate::{
    BoxSpec, ExecRequest, ExecResult, OutputChunk, Result, SandboxBackend, SandboxBox,
    SandboxError, Stream, resolve_workdir,
};
use async_trait::async_trait;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Instant;
use tokio::process::Command;
use tokio::sync::mpsc;

/// The unisolated back end.
#[derive(Debug, Default)]
pub struct Unisolated;

#[async_trait]
impl SandboxBackend for Unisolated {
    fn name(&self) -> &str {
        "none"
    }
    fn isolated(&self) -> bool {
        false
    }
    fn description(&self) -> String {
        "sandbox: none — UNISOLATED: commands run directly on this host as the server's user, \
         in the workspace directory, with network access; use only with trusted tasks"
            .to_string()
    }
    async fn create(&self, spec: BoxSpec) -> Result<Box<dyn SandboxBox>> {
        if spec.workspace_readonly {
            // Nothing here could stop a command from writing: refuse rather than pretend.
            return Err(SandboxError::Refused(
                "the workspace cannot be made read-only without the box: --sandbox none runs \
                 commands directly on the host; plan mode needs `errand serve --sandbox box`"
                    .into(),
            ));
        }
        // The checks of an allowlist box's bridges (port, path); the mode itself means
        // nothing without isolation.
        crate::bridge::validate(crate::NetMode::Allowlist, &spec.bridges)?;
        let relays = crate::bridge::Relays::default();
        for b in &spec.bridges {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", b.port))
                .await
                .map_err(|e| {
                    SandboxError::Refused(format!(
                        "bridge port {} on the host's loopback: {e} (with --sandbox none, \
                         bridges share the host's loopback; choose a free port)",
                        b.port
                    ))
                })?;
            relays.serve(listener, b);
        }
        let home = spec.scratch.join("home");
        let tmp = spec.scratch.join("tmp");
        for d in [&home, &tmp] {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| SandboxError::Io {
                    context: format!("creating {}", d.display()),
                    source: e,
                })?;
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let marker = format!(
            "{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        Ok(Box::new(UnisolatedBox {
            spec,
            home,
            tmp,
            marker,
            groups: Mutex::new(Vec::new()),
            destroyed: std::sync::atomic::AtomicBool::new(false),
            relays,
        }))
    }
}

struct UnisolatedBox {
    spec: BoxSpec,
    home: std::path::PathBuf,
    tmp: std::path::PathBuf,
    /// Process group ids of every command started; all are killed on destroy.
    groups: Mutex<Vec<i32>>,
    /// The value of [`MARKER_VAR`] in every command's environment.
    marker: String,
    destroyed: std::sync::atomic::AtomicBool,
    relays: crate::bridge::Relays,
}

fn kill_group(pgid: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; it has no memory effects.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

const PASS_THROUGH: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ"];

/// The variable that marks the processes of one box (its value is unique to the box).
pub const MARKER_VAR: &str = "ERRAND_SANDBOX_ID";

/// How long [`SandboxBox::stop_leftovers`] waits for what it killed to be gone.
const SWEEP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A host process that looks like one of the box's.
struct HostProc {
    pid: i32,
    name: String,
    pgrp: i32,
}

/// Whether `/proc/PID/environ` holds `needle` (`NAME=value` with its terminating NUL).
fn environ_has(pid: i32, needle: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| {
            env.split(|b| *b == 0)
                .any(|var| var.len() + 1 == needle.len() && needle.starts_with(var))
        })
        .unwrap_or(false)
}

/// The live host processes in one of `groups` or carrying `needle` in their environment,
/// in pid order. The caller itself is never one.
fn scan_host(groups: &[i32], needle: &[u8]) -> Vec<HostProc> {
    let me = std::process::id() as i32;
    crate::procs::list(|pid| pid == me)
        .into_iter()
        .filter(|p| !p.gone && (groups.contains(&p.pgrp) || environ_has(p.pid, needle)))
        .map(|p| HostProc {
            pid: p.pid,
            name: p.name,
            pgrp: p.pgrp,
        })
        .collect()
}

/// SIGKILL to `pid` if it is still one of the box's: through a pidfd where the kernel has
/// them, so that a pid reused meanwhile is never signalled.
fn kill_checked(pid: i32, groups: &[i32], needle: &[u8]) {
    let ours = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        crate::procs::parse_stat(&stat)
            .is_some_and(|(_, gone, pgrp)| !gone && groups.contains(&pgrp))
            || environ_has(pid, needle)
    };
    // SAFETY: pidfd_open takes a pid and flags, no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) && ours() {
            // SAFETY: kill(2) has no memory effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        return;
    }
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    if ours() {
        // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
    }
}

/// Kills what [`scan_host`] finds until nothing is left (bounded); returns what it found
/// first and the process groups that still had members then.
fn sweep_host(groups: &[i32], needle: &[u8]) -> (crate::Stopped, Vec<i32>) {
    let found = scan_host(groups, needle);
    let live: Vec<i32> = groups
        .iter()
        .copied()
        .filter(|g| found.iter().any(|p| p.pgrp == *g))
        .collect();
    if found.is_empty() {
        return (crate::Stopped::default(), live);
    }
    let deadline = Instant::now() + SWEEP_WAIT;
    let mut round = found.iter().map(|p| p.pid).collect::<Vec<_>>();
    let survivors = loop {
        for pgid in &live {
            kill_group(*pgid);
        }
        for pid in &round {
            kill_checked(*pid, groups, needle);
        }
        round = scan_host(groups, needle).iter().map(|p| p.pid).collect();
        if round.is_empty() || Instant::now() >= deadline {
            break round.len();
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    let stopped = crate::Stopped::new(
        found.into_iter().map(|p| (p.pid, p.name)).collect(),
        survivors,
    );
    (stopped, live)
}

#[async_trait]
impl SandboxBox for UnisolatedBox {
    async fn exec(
        &self,
        req: ExecRequest,
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<ExecResult> {
        if self.destroyed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SandboxError::Destroyed);
        }
        let cwd = resolve_workdir(&self.spec.workspace, req.workdir.as_deref())?;
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(&req.command)
            .current_dir(&cwd)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for k in PASS_THROUGH {
            if let Ok(v) = std::env::var(k) {
                cmd.env(k, v);
            }
        }
        if std::env::var_os("PATH").is_none() {
            cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin");
        }
        cmd.env("HOME", &self.home)
            .env("TMPDIR", &self.tmp)
            .env("TERM", "dumb")
            .env("ERRAND_SANDBOX", "none")
            .env(MARKER_VAR, &self.marker)
            .env("GIT_TERMINAL_PROMPT", "0");
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(|e| SandboxError::Io {
            context: "starting bash".into(),
            source: e,
        })?;
        let pgid = child.id().map(|p| p as i32).unwrap_or(0);
        if let Ok(mut g) = self.groups.lock() {
            g.push(pgid);
        }
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let out_task = tokio::spawn(crate::pump(stdout, Stream::Stdout, output.clone()));
        let err_task = tokio::spawn(crate::pump(stderr, Stream::Stderr, output));

        let mut killed_by = None;
        let status = tokio::select! {
            s = child.wait() => Some(s),
            _ = tokio::time::sleep(req.timeout) => {
                killed_by = Some("timeout".to_string());
                None
            }
            _ = req.cancel.cancelled() => {
                killed_by = Some("cancelled".to_string());
                None
            }
        };
        let status = match status {
            Some(s) => s,
            None => {
                kill_group(pgid);
                child.wait().await
            }
        }
        .map_err(|e| SandboxError::Io {
            context: "waiting for bash".into(),
            source: e,
        })?;
        // Background processes keep the pipes open; give the readers a moment, then move on
        // (the box keeps them until it is destroyed).
        let drain = async {
            let _ = out_task.await;
            let _ = err_task.await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), drain).await;
        use std::os::unix::process::ExitStatusExt;
        Ok(ExecResult {
            exit_code: status.code(),
            signal: status.signal(),
            duration: start.elapsed(),
            killed_by,
        })
    }

    fn close_bridges(&self) {
        self.relays.close();
    }

    async fn stop_leftovers(&self) -> Result<crate::Stopped> {
        if self.destroyed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SandboxError::Destroyed);
        }
        let seen = self.groups.lock().map(|g| g.clone()).unwrap_or_default();
        let needle = format!("{MARKER_VAR}={}\0", self.marker).into_bytes();
        let groups = seen.clone();
        let (stopped, live) = tokio::task::spawn_blocking(move || sweep_host(&groups, &needle))
            .await
            .map_err(|e| SandboxError::Refused(format!("stopping leftover processes: {e}")))?;
        // The groups looked at are forgotten once empty (all of them, unless something
        // survived), so that their numbers, once reused by unrelated processes, are never
        // killed later. Groups of commands started meanwhile stay.
        if let Ok(mut g) = self.groups.lock() {
            g.retain(|pgid| !seen.contains(pgid) || (stopped.survivors > 0 && live.contains(pgid)));
        }
        Ok(stopped)
    }

    async fn destroy(&self) -> Result<()> {
        self.destroyed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.relays.close();
        let groups = self
            .groups
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default();
        // The commands' groups and what left them still carrying the marker.
        let needle = format!("{MARKER_VAR}={}\0", self.marker).into_bytes();
        let _ = tokio::task::spawn_blocking(move || sweep_host(&groups, &needle)).await;
        Ok(())
    }
}

impl Drop for UnisolatedBox {
    fn drop(&mut self) {
        if let Ok(g) = self.groups.lock() {
            for pgid in g.iter() {
                kill_group(*pgid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    async fn run(b: &dyn SandboxBox, cmd: &str, timeout: Duration) -> (ExecResult, String, String) {
        let (tx, mut rx) = mpsc::channel(64);
        let req = ExecRequest {
            command: cmd.into(),
            workdir: None,
            timeout,
            cancel: CancellationToken::new(),
        };
        let res = b
            .exec(req, tx)
            .await
            .unwrap_or_else(|e| panic!("exec: {e}"));
        let (mut out, mut err) = (String::new(), String::new());
        while let Some(c) = rx.recv().await {
            match c.stream {
                Stream::Stdout => out.push_str(&String::from_utf8_lossy(&c.data)),
                Stream::Stderr => err.push_str(&String::from_utf8_lossy(&c.data)),
            }
        }
        (res, out, err)
    }

    #[tokio::test]
    async fn runs_in_workspace_with_scrubbed_env() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // SAFETY: test-only; the variable is unique to this test.
        unsafe { std::env::set_var("ERRAND_TEST_SECRET_KEY", "sk-test") };
        let b = Unisolated
            .create(BoxSpec {
                workspace: dir.path().to_path_buf(),
                scratch: scratch.path().to_path_buf(),
                ro_binds: vec![],
                rootfs: None,
                quota_dir: None,
                env: vec![("FOO".into(), "bar".into())],
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (res, out, err) = run(
            b.as_ref(),
            "pwd; echo \"$FOO\"; echo \"[${ERRAND_TEST_SECRET_KEY:-unset}]\"; echo oops >&2; exit 3",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(res.exit_code, Some(3));
        let canon = dir.path().canonicalize().unwrap_or_default();
        assert!(out.starts_with(&canon.display().to_string()), "{out}");
        assert!(out.contains("bar\n[unset]"), "{out}");
        assert_eq!(err, "oops\n");
        b.destroy().await.unwrap_or_else(|e| panic!("{e}"));
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let b = Unisolated
            .create(BoxSpec {
                workspace: dir.path().to_path_buf(),
                scratch: dir.path().join(".scratch"),
                ro_binds: vec![],
                rootfs: None,
                quota_dir: None,
                env: vec![],
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (res, _, _) = run(
            b.as_ref(),
            "sleep 30 & sleep 30; echo never",
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(res.killed_by.as_deref(), Some("timeout"));
        assert_eq!(res.signal, Some(libc::SIGKILL));
        assert!(res.duration < Duration::from_secs(5));
    }

    /// Host pids whose command line is exactly `sleep ARG`.
    fn sleeps(arg: &str) -> Vec<i32> {
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let raw = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let argv: Vec<&[u8]> = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
            let state = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = crate::procs::parse_stat(&state).is_some_and(|(_, gone, _)| gone);
            if !zombie
                && argv.len() == 2
                && argv[0].ends_with(b"sleep")
                && argv[1] == arg.as_bytes()
            {
                found.push(pid);
            }
        }
        found
    }

    async fn eventually(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..400 {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    #[tokio::test]
    async fn stop_leftovers_finds_what_left_the_process_group_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let b = Unisolated
            .create(BoxSpec {
                workspace: dir.path().to_path_buf(),
                scratch: dir.path().join(".scratch"),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let tag = format!(
            "{}{:09}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let (in_group, setsid, double, outsider) = (
            format!("971.1{tag}"),
            format!("971.2{tag}"),
            format!("971.3{tag}"),
            format!("971.4{tag}"),
        );
        // Not the box's: started by this test, it must survive.
        let mut other = std::process::Command::new("sleep")
            .arg(&outsider)
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let (res, out, _) = run(
            b.as_ref(),
            &format!(
                "sleep {in_group} >/dev/null 2>&1 & setsid sleep {setsid} >/dev/null 2>&1 & \
                 (setsid sh -c 'sleep {double}; :' >/dev/null 2>&1 &) ; echo started"
            ),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!((res.exit_code, out.as_str()), (Some(0), "started\n"));
        let all = [&in_group, &setsid, &double];
        assert!(
            eventually(|| all.iter().all(|a| !sleeps(a).is_empty())).await,
            "the background sleeps never showed up"
        );
        let stopped = b.stop_leftovers().await.unwrap_or_else(|e| panic!("{e}"));
        // Three sleeps and the double-forked shell.
        assert_eq!(stopped.count, 4, "{stopped:?}");
        let mut names = stopped.names();
        names.sort();
        assert_eq!(names, ["sh", "sleep"], "{stopped:?}");
        assert_eq!(stopped.survivors, 0);
        for a in all {
            assert!(sleeps(a).is_empty(), "sleep {a} survived");
        }
        assert_eq!(
            sleeps(&outsider).len(),
            1,
            "a process not of the box was killed"
        );
        // The box goes on; nothing is left to stop after a command that left nothing.
        let (res, out, _) = run(b.as_ref(), "echo next", Duration::from_secs(10)).await;
        assert_eq!((res.exit_code, out.as_str()), (Some(0), "next\n"));
        assert_eq!(
            b.stop_leftovers().await.unwrap_or_else(|e| panic!("{e}")),
            crate::Stopped::default()
        );
        // Destroying the box stops such a daemon too.
        let last = format!("971.5{tag}");
        let (res, _, _) = run(
            b.as_ref(),
            &format!("setsid sleep {last} >/dev/null 2>&1 &"),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(res.exit_code, Some(0));
        assert!(eventually(|| !sleeps(&last).is_empty()).await);
        b.destroy().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(sleeps(&last).is_empty(), "sleep {last} outlived the box");
        assert_eq!(
            sleeps(&outsider).len(),
            1,
            "a process not of the box was killed"
        );
        let _ = other.kill();
        let _ = other.wait();
        assert!(matches!(
            b.stop_leftovers().await,
            Err(SandboxError::Destroyed)
        ));
    }

    #[tokio::test]
    async fn a_read_only_workspace_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let r = Unisolated
            .create(BoxSpec {
                workspace: dir.path().to_path_buf(),
                scratch: dir.path().join(".scratch"),
                ro_binds: vec![],
                rootfs: None,
                quota_dir: None,
                env: vec![],
                workspace_readonly: true,
                ..Default::default()
            })
            .await;
        match r {
            Err(SandboxError::Refused(m)) => assert!(m.contains("read-only"), "{m}"),
            Err(e) => panic!("expected a refusal, got {e}"),
            Ok(_) => panic!("an unisolated box cannot keep the workspace read-only"),
        }
        assert!(!dir.path().join(".scratch").exists(), "nothing was created");
    }

    #[tokio::test]
    async fn bridges_listen_on_the_host_loopback_and_close() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let sock = dir.path().join("echo.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"));
        let b = Unisolated
            .create(BoxSpec {
                workspace: dir.path().to_path_buf(),
                scratch: dir.path().join(".scratch"),
                bridges: vec![crate::Bridge {
                    port,
                    socket: sock.clone(),
                    handoff: false,
                }],
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        c.write_all(b"ping").await.unwrap_or_else(|e| panic!("{e}"));
        let mut got = [0u8; 4];
        c.read_exact(&mut got)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&got, b"ping");
        // A second box cannot take the same port on the same host.
        let taken = Unisolated
            .create(BoxSpec {
                workspace: dir.path().to_path_buf(),
                scratch: dir.path().join(".scratch2"),
                bridges: vec![crate::Bridge {
                    port,
                    socket: sock,
                    handoff: false,
                }],
                ..Default::default()
            })
            .await;
        let err = taken.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(&format!("bridge port {port}")), "{err}");
        b.close_bridges();
        // The relayed connection is cut and the port stops accepting.
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut got))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        let mut refused = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "the bridge port still accepts after close_bridges");
        b.destroy().await.unwrap_or_else(|e| panic!("{e}"));
    }

    #[tokio::test]
    async fn workdir_must_stay_inside() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(resolve_workdir(dir.path(), Some("..")).is_err());
        assert!(resolve_workdir(dir.path(), Some("/")).is_err());
        assert!(resolve_workdir(dir.path(), Some("missing")).is_err());
        assert!(resolve_workdir(dir.path(), Some(".")).is_ok());
    }
}
