//! An `errand serve` child process on an ephemeral port, with its own temporary data
//! directory. It is killed when stopped, when dropped (an error or a panic in the bench), and
//! (on Linux) when the bench process itself dies.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Server {
    // Declared first so that it is dropped (and killed) before the data directory is removed.
    child: Child,
    pub base_url: String,
    log: PathBuf,
    _data: tempfile::TempDir,
}

const LISTENING: &str = "errand: listening on http://";

impl Server {
    pub async fn start(bin: &Path, workers: usize) -> Result<Server> {
        let data = tempfile::Builder::new()
            .prefix("errand-bench-data-")
            .tempdir()
            .context("creating a data directory")?;
        let log = data.path().join("server.log");
        let log_file = std::fs::File::create(&log).context("creating the server log")?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data.path().join("home"))
            .arg("--workers")
            .arg(workers.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                // The server must not outlive the bench, even if the bench is SIGKILLed. (The
                // signal fires when the forking thread exits; servers are started from the
                // main thread, which lives as long as the process.)
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(LISTENING) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    return Ok::<_, anyhow::Error>(Some(addr));
                }
            }
            Ok(None)
        })
        .await;
        let addr = match found {
            Ok(Ok(Some(addr))) if !addr.is_empty() => addr,
            other => {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let why = match other {
                    Err(_) => "no 'listening' line within 30 s".to_string(),
                    Ok(Err(e)) => format!("reading its stdout: {e}"),
                    _ => "it exited without printing a 'listening' line".to_string(),
                };
                bail!(
                    "errand serve did not start ({why}); its log:\n{}",
                    tail(&log, 20)
                );
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server {
            child,
            base_url: format!("http://{addr}"),
            log,
            _data: data,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The last lines of the server's stderr, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 20)
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            // SAFETY: plain syscall on our own child's pid (not yet reaped, so not reused).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(r) => {
                r.context("waiting for the server")?;
            }
            Err(_) => {
                eprintln!("bench: the server did not exit within 10 s of SIGTERM; killing it");
                self.child.kill().await.context("killing the server")?;
            }
        }
        Ok(())
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
