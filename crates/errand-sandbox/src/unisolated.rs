//! `--sandbox none`: commands run directly on the host, in the workspace directory.
//!
//! There is no isolation at all: this back end exists for trusted local use and for hosts
//! where the real box is not available yet. Each command runs in its own process group with a
//! scrubbed environment (the server's variables, API keys included, are not passed on), and
//! destroying the box kills every process group it started.
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
        Ok(Box::new(UnisolatedBox {
            spec,
            home,
            tmp,
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

    async fn destroy(&self) -> Result<()> {
        self.destroyed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.relays.close();
        let groups = self
            .groups
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default();
        for pgid in groups {
            kill_group(pgid);
        }
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
