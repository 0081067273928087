//! Fills a generated repository's history through one `git fast-import` process.
//!
//! `git add` + `git commit` would write one loose object per file, and the `git gc` that packs
//! them would then delete them all. On a file system that avoids reusing recently freed inodes
//! (ext4 without a journal, like this bench's VM, skips inodes freed in the last minute or
//! more), deleting tens of thousands of files makes every file created afterwards slower for
//! minutes, which would skew the workspace timings that follow. fast-import writes the
//! objects straight into a pack: nothing is deleted.

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Importer {
    child: Child,
    input: Option<std::io::BufWriter<ChildStdin>>,
    log: PathBuf,
    time: u64,
}

impl Importer {
    /// Starts `git fast-import` in `repo` (an initialised repository).
    pub fn start(repo: &Path) -> Result<Importer> {
        let log = repo.join(".git/fast-import.log");
        let mut child = Command::new("git")
            .current_dir(repo)
            .args(["fast-import", "--quiet", "--done"])
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting git fast-import")?;
        let stdin = child.stdin.take().context("no stdin pipe")?;
        let input = Some(std::io::BufWriter::with_capacity(1 << 20, stdin));
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Importer {
            child,
            input,
            log,
            time,
        })
    }

    fn input(&mut self) -> Result<&mut std::io::BufWriter<ChildStdin>> {
        self.input
            .as_mut()
            .context("fast-import input already closed")
    }

    /// Starts a commit on `refs/heads/main` (after the previous one, if any).
    pub fn begin_commit(&mut self, message: &str) -> Result<()> {
        self.time += 1;
        let t = self.time;
        write!(
            self.input()?,
            "commit refs/heads/main\nauthor x <x@y> {t} +0000\ncommitter x <x@y> {t} +0000\n\
             data {}\n{message}\n",
            message.len()
        )?;
        Ok(())
    }

    /// Adds or replaces a file in the commit being written.
    pub fn file(&mut self, path: &str, data: &[u8]) -> Result<()> {
        let input = self.input()?;
        write!(input, "M 100644 inline {path}\ndata {}\n", data.len())?;
        input.write_all(data)?;
        input.write_all(b"\n")?;
        Ok(())
    }

    /// Ends the stream and waits (bounded) for fast-import to finish.
    pub fn finish(mut self, timeout: Duration) -> Result<()> {
        let mut input = self
            .input
            .take()
            .context("fast-import input already closed")?;
        let written = input.write_all(b"done\n").and_then(|_| input.flush());
        drop(input);
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait()? {
                Some(s) => break s,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                None => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    bail!("git fast-import did not finish within {timeout:?}");
                }
            }
        };
        if !status.success() || written.is_err() {
            bail!(
                "git fast-import failed ({status}): {}",
                crate::proc::tail(&self.log, 5)
            );
        }
        let _ = std::fs::remove_file(&self.log);
        Ok(())
    }
}

impl Drop for Importer {
    fn drop(&mut self) {
        // Still running only on an error path (no `finish`): do not leave it behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
