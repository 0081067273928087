//! What the worker needs around a check besides running it: the check's output kept for
//! parsing, its JUnit files read from the workspace, and the workspace's `AGENTS.md`.
//!
//! Files are read from the workspace on the host side, outside the box, so every read is
//! confined: no symbolic links followed out of the workspace (the opened file's real path is
//! checked), nothing but regular files (a FIFO can't block the worker), and sizes capped.

use crate::testcounts::{self, BoundedOutput};
use errand_agent::{AgentError, EventSink};
use errand_core::{EventKind, OutputStream, TestCounts, Usage};
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Output kept per stream for parsing test counts.
pub const OUTPUT_KEEP: usize = 4 << 20;
/// Largest JUnit file read.
pub const MAX_JUNIT_FILE: u64 = 16 << 20;
/// Most JUnit files read for one check.
pub const MAX_JUNIT_FILES: usize = 64;
/// Directory entries looked at when a `junit` glob has wildcards.
const MAX_WALK_ENTRIES: usize = 50_000;
/// Largest `AGENTS.md` read for check commands.
pub const MAX_AGENTS_MD: u64 = 256 * 1024;
/// How far a file's change time may lag the clock read before the check started: the kernel
/// stamps files from a coarse clock (a tick behind at most).
const CLOCK_SLACK: Duration = Duration::from_millis(50);

/// Forwards events to the attempt's sink and keeps the output of one command (by call id),
/// stdout and stderr apart so that their lines don't interleave, bounded.
pub struct CaptureSink<'a> {
    inner: &'a dyn EventSink,
    call_id: Option<String>,
    kept: Mutex<(BoundedOutput, BoundedOutput)>,
}

impl<'a> CaptureSink<'a> {
    pub fn new(inner: &'a dyn EventSink, call_id: Option<String>, keep: usize) -> Self {
        CaptureSink {
            inner,
            call_id,
            kept: Mutex::new((BoundedOutput::new(keep), BoundedOutput::new(keep))),
        }
    }

    /// The kept stdout, then the kept stderr.
    pub fn text(&self) -> String {
        let Ok(kept) = self.kept.lock() else {
            return String::new();
        };
        let mut t = kept.0.text();
        if !t.is_empty() && !t.ends_with('\n') {
            t.push('\n');
        }
        t.push_str(&kept.1.text());
        t
    }
}

#[async_trait::async_trait]
impl EventSink for CaptureSink<'_> {
    async fn emit(&self, events: Vec<EventKind>) -> Result<(), AgentError> {
        if let Ok(mut kept) = self.kept.lock() {
            for e in &events {
                if let EventKind::Output {
                    call_id,
                    stream,
                    data,
                } = e
                    && *call_id == self.call_id
                {
                    match stream {
                        OutputStream::Stdout => kept.0.push(data),
                        OutputStream::Stderr => kept.1.push(data),
                    }
                }
            }
        }
        self.inner.emit(events).await
    }
    async fn usage(&self, usage: Usage, turns: u64) -> Result<(), AgentError> {
        self.inner.usage(usage, turns).await
    }
}

/// Opens `path` for reading if it is a regular file inside `root` (already canonical), no
/// larger than `max`, and (with `since`) changed at or after `since`; returns its text.
pub fn read_confined(
    root: &Path,
    path: &Path,
    max: u64,
    since: Option<SystemTime>,
) -> Result<String, String> {
    let shown = path
        .strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string();
    let file = std::fs::OpenOptions::new()
        .read(true)
        // No link as the last component, and no waiting on a FIFO.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => format!("{shown} is a symbolic link; not read"),
            _ => format!("{shown}: {e}"),
        })?;
    // The directories on the way could have been links: check where the file really is.
    let real = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&file)
    ))
    .or_else(|_| path.canonicalize())
    .map_err(|e| format!("{shown}: {e}"))?;
    if !real.starts_with(root) {
        return Err(format!("{shown} is outside the repository; not read"));
    }
    let meta = file.metadata().map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file; not read"));
    }
    if meta.len() > max {
        return Err(format!(
            "{shown} is {} bytes, over the limit of {max}; not read",
            meta.len()
        ));
    }
    if let Some(since) = since {
        // The change time can't be set from user space (unlike the modification time), so a
        // file left from before the check (committed, or written by the agent) is not taken
        // for this run's report.
        let changed = SystemTime::UNIX_EPOCH
            + Duration::new(
                meta.ctime().max(0) as u64,
                meta.ctime_nsec().clamp(0, 999_999_999) as u32,
            );
        if changed + CLOCK_SLACK < since {
            return Err(format!(
                "{shown} was not written by this run of the check; not read"
            ));
        }
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{shown}: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!(
            "{shown} grew over the limit of {max} bytes; not read"
        ));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// What reading a check's JUnit files gave.
#[derive(Debug, Default)]
pub struct JunitRead {
    /// Summed over the files that parsed; `None` when none did.
    pub counts: Option<TestCounts>,
    /// The files read, relative to the repository root.
    pub files: Vec<String>,
    /// Why files (or the pattern) were skipped, for a notice.
    pub problems: Vec<String>,
}

impl JunitRead {
    /// The problems for a notice: the first five, and how many more.
    pub fn problems_text(&self) -> String {
        let mut text = self.problems[..self.problems.len().min(5)].join("; ");
        if self.problems.len() > 5 {
            text.push_str(&format!("; and {} more", self.problems.len() - 5));
        }
        text
    }
}

/// Finds the files `pattern` (a path or glob relative to `root`) names, reads those written
/// since `since`, and adds up their test counts.
pub fn read_junit(root: &Path, pattern: &str, since: SystemTime) -> JunitRead {
    let mut out = JunitRead::default();
    let root = match root.canonicalize() {
        Ok(r) => r,
        Err(e) => {
            out.problems.push(format!("workspace: {e}"));
            return out;
        }
    };
    let paths = match glob_files(&root, pattern) {
        Ok(p) => p,
        Err(e) => {
            out.problems.push(e);
            return out;
        }
    };
    if paths.is_empty() {
        out.problems.push(format!("no file matches '{pattern}'"));
        return out;
    }
    let mut sum: Option<TestCounts> = None;
    for p in paths {
        let rel = p.strip_prefix(&root).unwrap_or(&p).display().to_string();
        match read_confined(&root, &p, MAX_JUNIT_FILE, Some(since)) {
            Ok(text) => match testcounts::parse_junit(&text) {
                Some(c) => {
                    let s = sum.get_or_insert_with(|| TestCounts {
                        source: "junit".into(),
                        ..Default::default()
                    });
                    s.passed += c.passed;
                    s.failed += c.failed;
                    s.skipped += c.skipped;
                    out.files.push(rel);
                }
                None => out
                    .problems
                    .push(format!("{rel} is not a JUnit XML report")),
            },
            Err(e) => out.problems.push(e),
        }
    }
    out.counts = sum;
    out
}

fn has_glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '[', '{', '\\'])
}

/// The files under `root` that `pattern` matches (at most [`MAX_JUNIT_FILES`], sorted). A
/// pattern without wildcards is one path; otherwise the walk starts at the pattern's literal
/// directory prefix, follows no symbolic links and skips `.git` (and `node_modules` unless
/// the pattern names it).
pub fn glob_files(root: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let pattern = pattern.trim().trim_start_matches("./");
    if pattern.is_empty() || pattern.starts_with('/') || pattern.split('/').any(|c| c == "..") {
        return Err(format!(
            "junit '{pattern}' must be a path relative to the repository root"
        ));
    }
    let parts: Vec<&str> = pattern
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let literal = parts.iter().take_while(|c| !has_glob_chars(c)).count();
    if literal == parts.len() {
        let p = root.join(parts.join("/"));
        return Ok(if p.symlink_metadata().is_ok() {
            vec![p]
        } else {
            Vec::new()
        });
    }
    let glob = globset::GlobBuilder::new(&parts.join("/"))
        .literal_separator(true)
        .build()
        .map_err(|e| format!("junit '{pattern}' is not a valid glob: {e}"))?
        .compile_matcher();
    let max_depth = if parts[literal..].iter().any(|c| c.contains("**")) {
        32
    } else {
        parts.len() - literal
    };
    let skip_node_modules = !pattern.contains("node_modules");
    let start = root.join(parts[..literal].join("/"));
    let mut found = Vec::new();
    let mut seen = 0usize;
    let mut stack = vec![(start, 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_WALK_ENTRIES {
                return Err(format!(
                    "junit '{pattern}': stopped after looking at {MAX_WALK_ENTRIES} entries; make the pattern narrower"
                ));
            }
            // `file_type` does not follow links: a link is neither walked nor read.
            let Ok(ft) = entry.file_type() else { continue };
            let path = entry.path();
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let rel_s = rel.to_string_lossy();
            if ft.is_dir() {
                let name = entry.file_name();
                if depth + 1 < max_depth
                    && name != ".git"
                    && !(skip_node_modules && name == "node_modules")
                {
                    stack.push((path, depth + 1));
                }
            } else if ft.is_file() && glob.is_match(rel_s.as_ref()) {
                found.push(path);
            }
        }
    }
    found.sort();
    found.truncate(MAX_JUNIT_FILES);
    Ok(found)
}

/// The text of the workspace's root `AGENTS.md`, if it has one that can be read (confined,
/// capped).
pub fn read_agents_md(root: &Path) -> Option<String> {
    let root = root.canonicalize().ok()?;
    let path = root.join("AGENTS.md");
    path.symlink_metadata().ok()?;
    read_confined(&root, &path, MAX_AGENTS_MD, None).ok()
}

/// Paths listed by name in [`leftovers_notice`]; the rest are counted.
const LISTED_LEFTOVERS: usize = 10;

/// The notice for what the checks left in the workspace and the worker took out again, if
/// anything: `checks created or changed 2 files that are not part of the commit: junit.xml,
/// README.md (changed); …`.
pub fn leftovers_notice(r: &errand_git::Restored) -> Option<String> {
    use errand_git::ChangeKind;
    let n = r.undone.len() + r.kept_out.len();
    if n == 0 {
        return None;
    }
    let items: Vec<String> = r
        .undone
        .iter()
        .map(|c| match c.kind {
            ChangeKind::Added => c.path.display().to_string(),
            k => format!("{} ({})", c.path.display(), k.verb()),
        })
        .chain(
            r.kept_out
                .iter()
                .map(|p| format!("{} (could not be removed; left out)", p.display())),
        )
        .collect();
    let mut list = items[..items.len().min(LISTED_LEFTOVERS)].join(", ");
    if items.len() > LISTED_LEFTOVERS {
        list.push_str(&format!(" and {} more", items.len() - LISTED_LEFTOVERS));
    }
    let (files, are) = if n == 1 {
        ("file", "is")
    } else {
        ("files", "are")
    };
    Some(format!(
        "checks created or changed {n} {files} that {are} not part of the commit: {list}; the workspace has the agent's version again"
    ))
}

/// Process names listed in [`leftover_processes_notice`]; the rest are left out.
const LISTED_NAMES: usize = 8;

/// The notice for the processes `who` left running in the box, which were stopped, if there
/// were any: `check "test" left 2 processes running (python3, node); they were stopped`.
/// `when` ends the sentence (` before the checks`, or nothing).
pub fn leftover_processes_notice(
    who: &str,
    stopped: &errand_sandbox::Stopped,
    when: &str,
) -> Option<String> {
    if stopped.is_empty() {
        return None;
    }
    let names = stopped.names();
    let mut list = names[..names.len().min(LISTED_NAMES)].join(", ");
    if names.len() > LISTED_NAMES {
        list.push_str(", …");
    }
    let n = stopped.count;
    let mut text = if n == 1 {
        format!("{who} left 1 process running ({list}); it was stopped{when}")
    } else {
        format!("{who} left {n} processes running ({list}); they were stopped{when}")
    };
    if stopped.survivors > 0 {
        text.push_str(&format!(
            "; {} did not exit after SIGKILL",
            stopped.survivors
        ));
    }
    Some(text)
}

impl crate::Worker {
    /// Kills what is still running in the box (see `SandboxBox::stop_leftovers`) and says
    /// so in a notice naming `who` left it. A box already gone has nothing left; another
    /// failure is a notice, not the end of the attempt.
    async fn stop_leftovers(
        &self,
        aid: &str,
        sandbox_box: &dyn errand_sandbox::SandboxBox,
        who: &str,
        when: &str,
    ) -> Result<(), crate::RunError> {
        match sandbox_box.stop_leftovers().await {
            Ok(stopped) => {
                if let Some(note) = leftover_processes_notice(who, &stopped, when) {
                    self.notice(aid, note).await?;
                }
            }
            Err(errand_sandbox::SandboxError::Destroyed) => {}
            Err(e) => {
                tracing::warn!(attempt = %aid, "stopping what {who} left running: {e}");
                self.notice(
                    aid,
                    format!("could not stop the processes {who} left running: {e}"),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// [`Worker::run_checks`](crate::Worker), with what the checks write kept apart from the
    /// agent's work: the workspace's files are recorded in `index` before the checks (which
    /// see them as the agent left them) and put back to that afterwards, so what the checks
    /// created or changed reaches neither the review nor the commit; a notice lists it.
    /// Without `index`, the checks just run.
    ///
    /// Processes the agent left running (a dev server, a watcher) are stopped first: the
    /// checks run in a quiet box (ports free, no writer in the workspace while it is
    /// recorded), and every check's own leftovers are stopped as it ends (`run_checks`), so
    /// nothing writes into the workspace after it is put back.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_checks_apart(
        &self,
        aid: &str,
        sandbox_box: &dyn errand_sandbox::SandboxBox,
        sink: &dyn EventSink,
        ws: &Path,
        specs: &[errand_core::CheckSpec],
        cancel: &tokio_util::sync::CancellationToken,
        index: Option<&errand_git::WorkspaceIndex>,
    ) -> Result<(Vec<errand_core::CheckResult>, Option<String>), crate::RunError> {
        self.stop_leftovers(aid, sandbox_box, "the agent", " before the checks")
            .await?;
        let Some(index) = index else {
            return self
                .run_checks(aid, sandbox_box, sink, ws, specs, cancel)
                .await;
        };
        let failed =
            |what: &str, e: &dyn std::fmt::Display| crate::RunError::Failed(format!("{what}: {e}"));
        let agent = index
            .snapshot()
            .await
            .map_err(|e| failed("recording the agent's work before the checks", &e))?;
        let out = self
            .run_checks(aid, sandbox_box, sink, ws, specs, cancel)
            .await?;
        let restored = index.restore(&agent).await.map_err(|e| {
            failed(
                "putting the workspace back as the agent left it after the checks",
                &e,
            )
        })?;
        if let Some(note) = leftovers_notice(&restored) {
            self.notice(aid, note).await?;
        }
        Ok(out)
    }
}

impl crate::Worker {
    /// Runs the checks one after the other in the attempt's box, recording each one's exit
    /// code, duration and test counts (`check_result`). As each check's command ends (or is
    /// killed), whatever it left running in the box is stopped, with a notice. Returns the
    /// results and, when one failed, why (the first failure).
    pub(crate) async fn run_checks(
        &self,
        aid: &str,
        sandbox_box: &dyn errand_sandbox::SandboxBox,
        sink: &dyn EventSink,
        ws: &Path,
        specs: &[errand_core::CheckSpec],
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(Vec<errand_core::CheckResult>, Option<String>), crate::RunError> {
        let mut results = Vec::new();
        let mut failure: Option<String> = None;
        for check in specs {
            let call_id = Some(format!("check:{}", check.name));
            let capture = CaptureSink::new(sink, call_id.clone(), OUTPUT_KEEP);
            // Only JUnit files written from now on belong to this run of the check.
            let started = std::time::SystemTime::now();
            let r = errand_agent::tools::StreamedCommand {
                sandbox: sandbox_box,
                sink: &capture,
                call_id,
                command: check.command.clone(),
                workdir: None,
                timeout: self.config.check_timeout,
                cancel: cancel.child_token(),
            }
            .run()
            .await?;
            // What the check started and left running (a server, a daemon that left its
            // process group) goes before anything reads the workspace.
            self.stop_leftovers(aid, sandbox_box, &format!("check \"{}\"", check.name), "")
                .await?;
            let (exit_code, duration_ms) = match &r.result {
                Ok(res) => (res.exit_code, res.duration.as_millis() as u64),
                Err(_) => (None, 0),
            };
            let mut tests = None;
            if let Some(pattern) = &check.junit {
                let (root, pattern) = (ws.to_path_buf(), pattern.clone());
                let read =
                    tokio::task::spawn_blocking(move || read_junit(&root, &pattern, started))
                        .await
                        .unwrap_or_default();
                if !read.problems.is_empty() {
                    self.notice(
                        aid,
                        format!(
                            "check '{}': JUnit {}{}",
                            check.name,
                            read.problems_text(),
                            if read.counts.is_some() {
                                ""
                            } else {
                                "; test counts come from the output instead"
                            }
                        ),
                    )
                    .await?;
                }
                tests = read.counts;
            }
            if tests.is_none() {
                tests = testcounts::parse_output(&capture.text());
            }
            let failed_tests = tests.as_ref().map_or(0, |t| t.failed);
            // A check passes on exit code 0 *and* no failed tests. The exit code alone can
            // hide failures: it is the last command's in a pipeline or a list
            // (`cargo test | tee log`, `pytest; echo done`, `make -k`, `|| true`), so when
            // the runner itself reports failed tests the check fails even with exit 0. A
            // non-zero exit fails the check whatever the counts say.
            let passed = exit_code == Some(0) && failed_tests == 0;
            self.emit(
                aid,
                vec![EventKind::CheckResult {
                    name: check.name.clone(),
                    command: check.command.clone(),
                    exit_code,
                    duration_ms,
                    passed,
                    tests: tests.clone(),
                }],
            )
            .await?;
            if !passed && failure.is_none() {
                let counts = tests
                    .as_ref()
                    .map(|t| format!("; {} of {} tests failed", t.failed, t.total()))
                    .unwrap_or_default();
                failure = Some(match exit_code {
                    Some(0) => format!(
                        "check '{}' reported {failed_tests} failed test{} (exit 0)",
                        check.name,
                        if failed_tests == 1 { "" } else { "s" }
                    ),
                    Some(code) => {
                        format!("check '{}' failed (exit {code}{counts})", check.name)
                    }
                    None => format!("check '{}' did not complete", check.name),
                });
            }
            results.push(errand_core::CheckResult {
                name: check.name.clone(),
                command: check.command.clone(),
                exit_code,
                duration_ms,
                passed,
                tests,
            });
            if cancel.is_cancelled() {
                break;
            }
        }
        Ok((results, failure))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "errand-checks-{}-{}",
            std::process::id(),
            errand_core::new_id()
        ));
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
        d.canonicalize().unwrap_or_else(|e| panic!("{e}"))
    }

    const JUNIT: &str = r#"<testsuite tests="3" failures="1"><testcase name="a"/><testcase name="b"/><testcase name="c"><failure/></testcase></testsuite>"#;

    #[test]
    fn junit_globs_read_fresh_files_inside_the_workspace() {
        let root = tmp();
        let write = |rel: &str, text: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap_or(&root)).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
        };
        write("old/junit.xml", JUNIT);
        std::thread::sleep(CLOCK_SLACK * 3);
        let since = SystemTime::now();
        write("reports/a/junit.xml", JUNIT);
        write("reports/b/junit.xml", JUNIT);
        write("reports/b/notes.txt", "not xml");
        write("reports/bad.xml", "<html>");
        write("node_modules/x/junit.xml", JUNIT);
        let outside = tmp();
        std::fs::write(outside.join("junit.xml"), JUNIT).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(outside.join("junit.xml"), root.join("reports/link.xml"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(&outside, root.join("reports/dirlink"))
            .unwrap_or_else(|e| panic!("{e}"));

        let r = read_junit(&root, "reports/**/*.xml", since);
        assert_eq!(r.files, vec!["reports/a/junit.xml", "reports/b/junit.xml"]);
        let c = r.counts.unwrap_or_default();
        assert_eq!((c.passed, c.failed, c.skipped), (4, 2, 0));
        assert!(
            r.problems.iter().any(|p| p.contains("bad.xml")),
            "{:?}",
            r.problems
        );

        // Stale: written before the check started.
        let r = read_junit(&root, "old/junit.xml", since);
        assert!(r.counts.is_none());
        assert!(
            r.problems[0].contains("not written by this run"),
            "{:?}",
            r.problems
        );
        // A link named directly is refused, not followed.
        let r = read_junit(&root, "reports/link.xml", since);
        assert!(
            r.counts.is_none() && r.problems[0].contains("symbolic link"),
            "{:?}",
            r.problems
        );
        // So is a file reached through a linked directory.
        let r = read_junit(&root, "reports/dirlink/junit.xml", since);
        assert!(
            r.counts.is_none() && r.problems[0].contains("outside"),
            "{:?}",
            r.problems
        );
        // node_modules only when named.
        assert!(
            read_junit(&root, "**/junit.xml", since)
                .files
                .iter()
                .all(|f| !f.contains("node_modules"))
        );
        assert_eq!(
            read_junit(&root, "node_modules/*/junit.xml", since)
                .files
                .len(),
            1
        );
        let r = read_junit(&root, "missing/*.xml", since);
        assert!(r.problems[0].contains("no file matches"));
        assert!(glob_files(&root, "../x.xml").is_err());
        assert!(glob_files(&root, "/etc/*.xml").is_err());
        assert!(glob_files(&root, "reports/[.xml").is_err());

        // A FIFO doesn't block the read.
        let fifo = root.join("reports/fifo.xml");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap_or_default();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let e = read_confined(&root, &fifo, 100, None)
            .err()
            .unwrap_or_default();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read_confined(&root, &root.join("reports/a/junit.xml"), 10, None)
            .err()
            .unwrap_or_default();
        assert!(e.contains("over the limit"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&outside);
    }

    #[test]
    fn the_leftovers_notice_lists_ten_and_counts_the_rest() {
        use errand_git::{ChangeKind, PathChange, Restored};
        assert_eq!(leftovers_notice(&Restored::default()), None);
        let one = Restored {
            undone: vec![PathChange {
                path: "README.md".into(),
                kind: ChangeKind::Modified,
            }],
            kept_out: Vec::new(),
        };
        assert_eq!(
            leftovers_notice(&one).unwrap_or_default(),
            "checks created or changed 1 file that is not part of the commit: README.md (changed); the workspace has the agent's version again"
        );
        let mut many = Restored {
            undone: (0..11)
                .map(|i| PathChange {
                    path: format!("out/{i:02}.txt").into(),
                    kind: if i == 0 {
                        ChangeKind::Deleted
                    } else {
                        ChangeKind::Added
                    },
                })
                .collect(),
            kept_out: vec!["fixtures/dep".into()],
        };
        let text = leftovers_notice(&many).unwrap_or_default();
        assert!(
            text.starts_with(
                "checks created or changed 12 files that are not part of the commit: out/00.txt (deleted), out/01.txt, "
            ),
            "{text}"
        );
        assert!(
            text.contains("out/09.txt and 2 more; the workspace"),
            "{text}"
        );
        many.undone.truncate(1);
        let text = leftovers_notice(&many).unwrap_or_default();
        assert!(
            text.contains("out/00.txt (deleted), fixtures/dep (could not be removed; left out)"),
            "{text}"
        );
    }

    #[test]
    fn the_leftover_processes_notice_names_them_once() {
        use errand_sandbox::{LeftProcess, Stopped};
        let procs = |names: &[&str]| Stopped {
            processes: names
                .iter()
                .enumerate()
                .map(|(i, n)| LeftProcess {
                    pid: 10 + i as i32,
                    name: n.to_string(),
                })
                .collect(),
            count: names.len(),
            survivors: 0,
        };
        assert_eq!(
            leftover_processes_notice("check \"test\"", &Stopped::default(), ""),
            None
        );
        assert_eq!(
            leftover_processes_notice("check \"test\"", &procs(&["python3", "node"]), "")
                .unwrap_or_default(),
            "check \"test\" left 2 processes running (python3, node); they were stopped"
        );
        assert_eq!(
            leftover_processes_notice("the agent", &procs(&["node"]), " before the checks")
                .unwrap_or_default(),
            "the agent left 1 process running (node); it was stopped before the checks"
        );
        let mut many = procs(&["sh", "sleep", "sleep", "a", "b", "c", "d", "e", "f", "g"]);
        many.count = 400;
        many.survivors = 1;
        assert_eq!(
            leftover_processes_notice("check \"x\"", &many, "").unwrap_or_default(),
            "check \"x\" left 400 processes running (sh, sleep, a, b, c, d, e, f, …); they were stopped; 1 did not exit after SIGKILL"
        );
    }

    #[test]
    fn agents_md_is_read_only_from_inside() {
        let root = tmp();
        assert_eq!(read_agents_md(&root), None);
        std::fs::write(root.join("AGENTS.md"), "# Tests\n`cargo test`\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            read_agents_md(&root)
                .unwrap_or_default()
                .contains("cargo test")
        );
        let other = tmp();
        std::fs::write(other.join("secret"), "x").unwrap_or_else(|e| panic!("{e}"));
        std::fs::remove_file(root.join("AGENTS.md")).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(other.join("secret"), root.join("AGENTS.md"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_agents_md(&root), None);
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&other);
    }
}
