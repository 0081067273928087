//! Child processes for the benches: timed runs with a deadline, long-lived processes that are
//! killed when dropped, and a look at the process table (`/proc`).

use anyhow::{Context, Result, bail};
use std::collections::{HashMap, HashSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Makes the child die with the bench (even on SIGKILL). The signal fires when the forking
/// thread exits: spawn from the bench's main future (the main thread), not from a worker
/// task or a blocking thread.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

fn kill(pid: u32) {
    // SAFETY: plain syscall on our own child's pid (not reaped yet, so not reused).
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Runs `cmd` to completion and times it from just before the spawn to the return of
/// `wait` (the exit, not the end of its output: stdout and stderr should be files or null).
/// Killed after `timeout`.
pub async fn timed(mut cmd: Command, timeout: Duration) -> Result<(Duration, ExitStatus)> {
    let what = format!("{:?}", cmd.get_program());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let pid = child.id();
    let mut waiter = tokio::task::spawn_blocking(move || {
        let status = child.wait();
        (status, Instant::now())
    });
    let (status, end) = match tokio::time::timeout(timeout, &mut waiter).await {
        Ok(r) => r?,
        Err(_) => {
            kill(pid);
            let _ = waiter.await;
            bail!("{what} did not exit within {timeout:?}; killed it");
        }
    };
    let status = status.with_context(|| format!("waiting for {what}"))?;
    Ok((end - start, status))
}

/// Like `Command::output`, killed after `timeout` (for set-up steps, not timed).
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = format!("{:?}", cmd.get_program());
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(timeout) {
            kill(pid);
            true
        } else {
            false
        }
    });
    let out = child.wait_with_output();
    let _ = done_tx.send(());
    let killed = watchdog.join().unwrap_or(false);
    let out = out.with_context(|| format!("waiting for {what}"))?;
    if killed {
        bail!("{what} did not exit within {timeout:?}; killed it");
    }
    Ok(out)
}

/// A long-lived child process, killed and reaped when dropped.
pub struct Guard {
    child: Option<Child>,
}

impl Guard {
    pub fn spawn(cmd: &mut Command) -> Result<Guard> {
        let child = die_with_parent(cmd)
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        Ok(Guard { child: Some(child) })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Whether it has exited (and its status), without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            // SIGKILL cannot be ignored; reap it (bounded, in case it is stuck in the kernel).
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// `name` on `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// pid → parent pid, for every process visible in `/proc`.
pub fn parents() -> HashMap<i32, i32> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(ppid) = ppid(pid) {
            out.insert(pid, ppid);
        }
    }
    out
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …"; comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The direct children of `pid`.
pub fn children(pid: i32) -> HashSet<i32> {
    parents()
        .into_iter()
        .filter(|(_, p)| *p == pid)
        .map(|(c, _)| c)
        .collect()
}

/// `pid` and all its descendants, parents before children.
pub fn tree(pid: i32) -> Vec<i32> {
    let map = parents();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        let mut kids: Vec<i32> = map
            .iter()
            .filter(|(_, pp)| **pp == p)
            .map(|(c, _)| *c)
            .collect();
        kids.sort();
        out.extend(kids);
        i += 1;
    }
    out
}

/// Memory of one process, in KiB.
#[derive(Debug, Clone)]
pub struct ProcMem {
    pub name: String,
    pub rss_kib: u64,
    /// From `/proc/PID/smaps_rollup`, when the kernel has it and lets us read it.
    pub pss_kib: Option<u64>,
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn mem(pid: i32) -> Option<ProcMem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let name = status
        .lines()
        .find_map(|l| l.strip_prefix("Name:"))
        .map(|n| n.trim().to_string())
        .unwrap_or_default();
    let rss_kib = kib_field(&status, "VmRSS:").unwrap_or(0);
    let pss_kib = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| kib_field(&s, "Pss:"));
    Some(ProcMem {
        name,
        rss_kib,
        pss_kib,
    })
}

/// The last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
