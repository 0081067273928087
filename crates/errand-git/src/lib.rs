//! Git plumbing for Errand, through the `git` CLI: a bare mirror per repository, cached and
//! fetched incrementally; attempt workspaces at a base commit on their own `errand/…` branch;
//! commits with `Errand-Task:`/`Errand-Attempt:` trailers; diffs and their stats.
//!
//! This crate owns every git invocation. It must never write to the user's own repository
//! (only read from it), and it refuses to create or move any branch outside `errand/`.
//!
//! Delivery: [`push::push_branch`] pushes an attempt's branch to a remote (only `errand/…`,
//! never the default branch, credentials through `GIT_ASKPASS`); [`forge::ForgeClient`] opens
//! or updates the pull request on GitHub, GitLab or Gitea; [`forge::PrBody`] writes its text.

pub mod checkpoint;
pub mod forge;
pub mod push;
pub mod scan;
mod secret;
pub mod workindex;

pub use checkpoint::{Checkpointer, delete_checkpoint_ref, restore_checkpoint};
pub use push::{PushOutcome, PushStatus, push_branch};
pub use secret::{Credentials, MissingToken, Secret, percent_encode};
pub use workindex::{ChangeKind, PathChange, Restored, WorkspaceIndex};

use errand_core::{DiffStats, FileStat};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error(
        "'{0}' is not a git repository; pass --repo with the path of a git checkout or a git URL"
    )]
    NotARepo(String),
    #[error("'{0}' does not exist; pass --repo with the path of a git checkout or a git URL")]
    NoSuchPath(String),
    #[error(
        "unknown base ref '{reference}' in {repo}; pass --base with an existing branch, tag or commit"
    )]
    UnknownRef { reference: String, repo: String },
    #[error("cannot reach repository {repo}: {message}")]
    Unreachable { repo: String, message: String },
    #[error("refusing to write branch '{0}': Errand only writes branches under errand/")]
    ForbiddenBranch(String),
    #[error("refusing to push '{branch}': {reason}")]
    PushRefused { branch: String, reason: String },
    #[error("unusable remote URL: {0}")]
    BadRemote(String),
    #[error("{remote} rejected the push of '{branch}': {reason}")]
    PushRejected {
        branch: String,
        remote: String,
        reason: String,
    },
    #[error("authentication failed pushing to {remote}: {hint}")]
    AuthFailed { remote: String, hint: String },
    #[error(transparent)]
    MissingToken(#[from] MissingToken),
    #[error(
        "could not put back {paths} as they were before the checks ({reason}); have the checks write outside the repository or list such files in .gitignore"
    )]
    NotRestored { paths: String, reason: String },
    #[error("git {args} failed: {stderr}")]
    Command { args: String, stderr: String },
    #[error("running git: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = GitError> = std::result::Result<T, E>;

/// Output of a finished git command.
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

pub(crate) fn base_command(cwd: Option<&Path>) -> Command {
    let mut c = Command::new("git");
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    // Never prompt (ssh host keys or passwords would hang a worker), and give up on a
    // transfer that stalls below 1 KB/s for a minute.
    if std::env::var_os("GIT_SSH_COMMAND").is_none() {
        c.env(
            "GIT_SSH_COMMAND",
            "ssh -o BatchMode=yes -o ConnectTimeout=30",
        );
    }
    c.env("GIT_HTTP_LOW_SPEED_LIMIT", "1000")
        .env("GIT_HTTP_LOW_SPEED_TIME", "60");
    c.env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// A git command on `workspace` through a git directory and index of Errand's own
/// (`git_dir`, `index`), trusting nothing the workspace or the host could configure: no
/// system or global configuration, no hooks, no fsmonitor, no line-ending conversion, and
/// stat data compared the cheap way. Callers add their own `-c` options, then the subcommand.
pub(crate) fn scratch_git_command(
    cwd: Option<&Path>,
    git_dir: &Path,
    workspace: &Path,
    index: &Path,
) -> Command {
    let mut c = base_command(cwd);
    c.env("GIT_DIR", git_dir)
        .env("GIT_WORK_TREE", workspace)
        .env("GIT_INDEX_FILE", index)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args([
            "-c",
            "core.bare=false",
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "core.checkStat=minimal",
            "-c",
            "core.trustctime=false",
            "-c",
            "core.autocrlf=false",
        ]);
    c
}

async fn run(cwd: Option<&Path>, args: &[&str]) -> Result<Out> {
    let out = base_command(cwd).args(args).output().await?;
    Ok(Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

pub(crate) async fn run_ok(cwd: Option<&Path>, args: &[&str]) -> Result<String> {
    let out = run(cwd, args).await?;
    if out.ok {
        Ok(out.stdout)
    } else {
        Err(GitError::Command {
            args: args.join(" "),
            stderr: out.stderr,
        })
    }
}

/// Whether `repo` looks like a URL (scheme://, or scp-like `user@host:path`) rather than a path.
pub fn is_url(repo: &str) -> bool {
    if repo.contains("://") {
        return true;
    }
    // scp-like syntax: host:path with no slash before the colon.
    match repo.split_once(':') {
        Some((host, _)) => !host.is_empty() && !host.contains('/') && host.contains('@'),
        None => false,
    }
}

/// A base ref resolved to a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The name the user gave, or the default branch's name.
    pub name: String,
    pub commit: String,
}

/// Resolves `base` (or the checked-out branch) in a local repository, read-only.
pub async fn resolve_local(repo: &Path, base: Option<&str>) -> Result<Resolved> {
    let shown = repo.display().to_string();
    if !repo.exists() {
        return Err(GitError::NoSuchPath(shown));
    }
    let name = match base {
        Some(b) => b.to_string(),
        None => {
            let out = run(Some(repo), &["symbolic-ref", "--quiet", "--short", "HEAD"]).await?;
            if out.ok {
                out.stdout.trim().to_string()
            } else if out.stderr.contains("not a git repository") {
                return Err(GitError::NotARepo(shown));
            } else {
                "HEAD".to_string()
            }
        }
    };
    let spec = format!("{name}^{{commit}}");
    let out = run(
        Some(repo),
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &spec,
        ],
    )
    .await?;
    if out.ok {
        return Ok(Resolved {
            name,
            commit: out.stdout.trim().to_string(),
        });
    }
    if out.stderr.contains("not a git repository") {
        return Err(GitError::NotARepo(shown));
    }
    // rev-parse is quiet for unknown refs; make sure this is a repo at all.
    let probe = run(Some(repo), &["rev-parse", "--git-dir"]).await?;
    if !probe.ok {
        return Err(GitError::NotARepo(shown));
    }
    if base.is_none() {
        return Err(GitError::UnknownRef {
            reference: format!("{name} (the repository has no commits yet)"),
            repo: shown,
        });
    }
    Err(GitError::UnknownRef {
        reference: name,
        repo: shown,
    })
}

/// The attempt branch name: `errand/<short-id>-<slug>[-<n>]`.
pub fn branch_name(short_id: &str, slug: &str, attempt: i64) -> String {
    if attempt <= 1 {
        format!("errand/{short_id}-{slug}")
    } else {
        format!("errand/{short_id}-{slug}-{attempt}")
    }
}

/// Refuses any branch Errand must not write: everything outside `errand/`, and names git
/// would refuse or read as something else (refspec syntax such as `:` or `+`, a leading `-`,
/// `..`, empty or dot-led components, a `.lock` suffix).
pub fn check_agent_branch(branch: &str) -> Result<()> {
    let ok = branch.starts_with("errand/")
        && branch.len() > "errand/".len()
        && !branch.contains("..")
        && !branch.ends_with('/')
        && !branch.ends_with('.')
        && !branch.ends_with(".lock")
        && branch
            .split('/')
            .all(|c| !c.is_empty() && !c.starts_with('.') && !c.ends_with(".lock"))
        && branch
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if ok {
        Ok(())
    } else {
        Err(GitError::ForbiddenBranch(branch.to_string()))
    }
}

/// Bare mirrors of the repositories tasks run on, one per repo, fetched incrementally.
///
/// Upstream branches live under `refs/remotes/origin/*` (pruned on fetch), tags under
/// `refs/tags/*`, and attempt branches under `refs/heads/errand/*` (never pruned).
#[derive(Debug)]
pub struct MirrorCache {
    root: PathBuf,
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl MirrorCache {
    pub fn new(root: impl Into<PathBuf>) -> MirrorCache {
        MirrorCache {
            root: root.into(),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Where the mirror of `repo` lives.
    pub fn mirror_path(&self, repo: &str) -> PathBuf {
        let digest = Sha256::digest(repo.as_bytes());
        let hexed: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let tail: String = repo
            .trim_end_matches('/')
            .trim_end_matches(".git")
            .rsplit(['/', ':'])
            .next()
            .unwrap_or("repo")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(40)
            .collect();
        self.root.join(format!("{tail}-{hexed}.git"))
    }

    /// A lock held while a mirror's refs are being changed (fetch, branch import).
    pub async fn lock(&self, mirror: &Path) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(mirror.to_path_buf()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// Creates the mirror if needed and fetches `repo` into it. Returns the mirror's path.
    pub async fn sync(&self, repo: &str) -> Result<PathBuf> {
        let mirror = self.mirror_path(repo);
        let _guard = self.lock(&mirror).await;
        if !mirror.join("HEAD").exists() {
            tokio::fs::create_dir_all(&self.root).await?;
            let tmp = mirror.with_extension(format!("tmp-{}", std::process::id()));
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            let t = tmp.to_string_lossy().to_string();
            run_ok(None, &["init", "--quiet", "--bare", &t]).await?;
            run_ok(Some(&tmp), &["config", "remote.origin.url", repo]).await?;
            run_ok(Some(&tmp), &["config", "gc.auto", "0"]).await?;
            run_ok(Some(&tmp), &["config", "core.logAllRefUpdates", "false"]).await?;
            tokio::fs::rename(&tmp, &mirror).await?;
        }
        let out = run(
            Some(&mirror),
            &[
                "fetch",
                "--quiet",
                "--prune",
                "--no-tags",
                "--no-write-fetch-head",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ],
        )
        .await?;
        if !out.ok {
            return Err(GitError::Unreachable {
                repo: repo.to_string(),
                message: first_line(&out.stderr),
            });
        }
        Ok(mirror)
    }

    /// Resolves `base` (or the remote's default branch) in a synced mirror.
    pub async fn resolve(&self, mirror: &Path, repo: &str, base: Option<&str>) -> Result<Resolved> {
        let name = match base {
            Some(b) => b.to_string(),
            None => {
                let out = run(Some(mirror), &["ls-remote", "--symref", "origin", "HEAD"]).await?;
                let head = out
                    .stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("ref: refs/heads/"))
                    .and_then(|l| l.split('\t').next())
                    .map(str::to_string);
                match head {
                    Some(h) => h,
                    None => {
                        return Err(GitError::UnknownRef {
                            reference: "HEAD (the remote has no default branch)".into(),
                            repo: repo.to_string(),
                        });
                    }
                }
            }
        };
        for candidate in [
            format!("refs/remotes/origin/{name}"),
            format!("refs/tags/{name}"),
            format!("refs/heads/{name}"),
            name.clone(),
        ] {
            let spec = format!("{candidate}^{{commit}}");
            let out = run(
                Some(mirror),
                &[
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    "--end-of-options",
                    &spec,
                ],
            )
            .await?;
            if out.ok {
                return Ok(Resolved {
                    name,
                    commit: out.stdout.trim().to_string(),
                });
            }
        }
        Err(GitError::UnknownRef {
            reference: name,
            repo: repo.to_string(),
        })
    }

    /// Makes sure `commit` is in the mirror, fetching it by id if the branch fetch missed it.
    pub async fn ensure_commit(&self, mirror: &Path, repo: &str, commit: &str) -> Result<()> {
        if has_commit(mirror, commit).await? {
            return Ok(());
        }
        let _guard = self.lock(mirror).await;
        let _ = run(
            Some(mirror),
            &[
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "origin",
                commit,
            ],
        )
        .await?;
        if has_commit(mirror, commit).await? {
            Ok(())
        } else {
            Err(GitError::UnknownRef {
                reference: commit.to_string(),
                repo: repo.to_string(),
            })
        }
    }

    /// Copies the attempt branch from a workspace into the mirror (`refs/heads/<branch>`).
    pub async fn import_branch(&self, mirror: &Path, workspace: &Path, branch: &str) -> Result<()> {
        check_agent_branch(branch)?;
        let _guard = self.lock(mirror).await;
        fetch_branch(mirror, workspace, branch).await?;
        Ok(())
    }
}

/// Copies an index file keeping its modification time: git treats entries modified in the same
/// second as the index as "racily clean" and rehashes them; a fresh mtime on the copy would
/// make a same-size edit made right after the checkout invisible.
pub(crate) fn copy_index(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::copy(from, to)?;
    let mtime = std::fs::metadata(from)?.modified()?;
    std::fs::File::options()
        .write(true)
        .open(to)?
        .set_modified(mtime)
}

/// Writes the exclude patterns of a scratch git directory (`info/exclude`).
pub(crate) async fn write_exclude(git_dir: &Path, patterns: &[String]) -> Result<()> {
    tokio::fs::create_dir_all(git_dir.join("info")).await?;
    let mut text = patterns.join("\n");
    text.push('\n');
    tokio::fs::write(git_dir.join("info/exclude"), text).await?;
    Ok(())
}

/// A commit message: `message` and, after a blank line, a `Key: value` trailer per entry.
pub(crate) fn commit_message(message: &str, trailers: &[(&str, &str)]) -> String {
    let mut msg = message.trim_end().to_string();
    if !trailers.is_empty() {
        msg.push_str("\n\n");
        for (k, v) in trailers {
            msg.push_str(&format!("{k}: {v}\n"));
        }
    }
    msg
}

/// Copies `refs/heads/<branch>` from the repository at `from` into the mirror (forced).
async fn fetch_branch(mirror: &Path, from: &Path, branch: &str) -> Result<()> {
    let from = from.to_string_lossy().to_string();
    let spec = format!("+refs/heads/{branch}:refs/heads/{branch}");
    run_ok(
        Some(mirror),
        &[
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            &from,
            &spec,
        ],
    )
    .await?;
    Ok(())
}

async fn has_commit(repo: &Path, commit: &str) -> Result<bool> {
    let spec = format!("{commit}^{{commit}}");
    Ok(run(Some(repo), &["cat-file", "-e", &spec]).await?.ok)
}

fn first_line(s: &str) -> String {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("unknown error")
        .trim()
        .to_string()
}

/// Creates a workspace at `commit` on a new branch, sharing the mirror's objects (no object
/// copy: the checkout is the only cost). The workspace has no remote: the agent cannot push.
pub async fn create_workspace(
    mirror: &Path,
    dest: &Path,
    branch: &str,
    commit: &str,
) -> Result<()> {
    check_agent_branch(branch)?;
    if dest.exists() {
        tokio::fs::remove_dir_all(dest).await?;
    }
    tokio::fs::create_dir_all(dest).await?;
    init_borrowing(mirror, dest, &[]).await?;
    run_ok(Some(dest), &["checkout", "--quiet", "-b", branch, commit]).await?;
    Ok(())
}

/// `git init` at `dest` with the mirror's objects borrowed through alternates (nothing is
/// copied), automatic gc off, and extra config.
async fn init_borrowing(mirror: &Path, dest: &Path, config: &[(&str, &str)]) -> Result<()> {
    let d = dest.to_string_lossy().to_string();
    run_ok(None, &["init", "--quiet", &d]).await?;
    let objects = mirror.join("objects").canonicalize()?;
    tokio::fs::write(
        dest.join(".git/objects/info/alternates"),
        format!("{}\n", objects.display()),
    )
    .await?;
    run_ok(Some(dest), &["config", "gc.auto", "0"]).await?;
    for (k, v) in config {
        run_ok(Some(dest), &["config", k, v]).await?;
    }
    Ok(())
}

/// Who commits the agent's work.
pub const AGENT_NAME: &str = "Errand Agent";
pub const AGENT_EMAIL: &str = "agent@errand.invalid";

/// Stages everything and commits it with trailers. Returns the new commit, or `None` when
/// there was nothing to commit.
pub async fn commit_all(
    workspace: &Path,
    message: &str,
    trailers: &[(&str, &str)],
) -> Result<Option<String>> {
    run_ok(Some(workspace), &["add", "--all"]).await?;
    let staged = run(Some(workspace), &["diff", "--cached", "--quiet"]).await?;
    if staged.ok {
        return Ok(None);
    }
    let mut msg = message.trim_end().to_string();
    msg.push('\n');
    if !trailers.is_empty() {
        msg.push('\n');
    }
    for (k, v) in trailers {
        msg.push_str(&format!("{k}: {v}\n"));
    }
    let name_cfg = format!("user.name={AGENT_NAME}");
    let email_cfg = format!("user.email={AGENT_EMAIL}");
    run_ok(
        Some(workspace),
        &[
            "-c",
            &name_cfg,
            "-c",
            &email_cfg,
            "-c",
            "commit.gpgsign=false",
            "-c",
            "core.hooksPath=/dev/null",
            "commit",
            "--quiet",
            "--no-verify",
            "--cleanup=verbatim",
            "-m",
            &msg,
        ],
    )
    .await?;
    Ok(Some(
        run_ok(Some(workspace), &["rev-parse", "HEAD"])
            .await?
            .trim()
            .to_string(),
    ))
}

/// A file whose diff is longer than this is shown as a note instead (the branch and
/// `errand apply` have all of it).
pub const FILE_DIFF_CAP: usize = 1 << 20;

/// The sections of a unified diff, one per file (each starts with `diff --git `).
fn diff_sections(text: &str) -> Vec<&str> {
    let mut starts: Vec<usize> = text
        .match_indices("diff --git ")
        .filter(|(i, _)| *i == 0 || text.as_bytes()[i - 1] == b'\n')
        .map(|(i, _)| i)
        .collect();
    if starts.first() != Some(&0) {
        starts.insert(0, 0);
    }
    let mut out = Vec::with_capacity(starts.len());
    for (k, &a) in starts.iter().enumerate() {
        let b = starts.get(k + 1).copied().unwrap_or(text.len());
        if a < b {
            out.push(&text[a..b]);
        }
    }
    out
}

/// Replaces the hunks of files whose diff is longer than `cap` bytes by a note, keeping each
/// file's header lines (`diff --git`, modes, `index`, `---`, `+++`, renames).
pub fn cap_file_diffs(text: &str, cap: usize) -> String {
    let mut out = String::with_capacity(text.len().min(cap * 4));
    for sec in diff_sections(text) {
        if sec.len() <= cap {
            out.push_str(sec);
            continue;
        }
        let header_end = sec
            .find("\n@@")
            .map(|i| i + 1)
            .unwrap_or(sec.len().min(cap));
        out.push_str(&sec[..header_end]);
        out.push_str(&format!(
            "# Errand: this file's diff ({} bytes) is over the {} KiB display cap and is not shown; the branch and `errand apply` have all of it\n",
            sec.len(),
            cap / 1024
        ));
    }
    out
}

/// The sections of a unified diff that touch `path` (as the old or the new name).
pub fn filter_diff(text: &str, path: &str) -> String {
    let path = path.trim().trim_start_matches("./");
    diff_sections(text)
        .into_iter()
        .filter(|sec| {
            let first = sec.lines().next().unwrap_or("");
            first == format!("diff --git a/{path} b/{path}")
                || first.starts_with(&format!("diff --git a/{path} b/"))
                || first.ends_with(&format!(" b/{path}"))
        })
        .collect()
}

/// The whole change `base..head` as a patch that `git apply --3way` can use: binary files
/// included, full blob ids, renames detected.
pub async fn full_patch(repo: &Path, base: &str, head: &str) -> Result<String> {
    run_ok(
        Some(repo),
        &[
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--find-renames",
            "--binary",
            "--full-index",
            base,
            head,
            "--",
        ],
    )
    .await
}

/// The unified diff `base..head` and its stats (renames detected, binary files noted, files
/// over [`FILE_DIFF_CAP`] shown as a note).
pub async fn diff(repo: &Path, base: &str, head: &str) -> Result<(String, DiffStats)> {
    let text = run_ok(
        Some(repo),
        &[
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--find-renames",
            base,
            head,
            "--",
        ],
    )
    .await?;
    let numstat = run_ok(
        Some(repo),
        &[
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--find-renames",
            "--numstat",
            "-z",
            base,
            head,
            "--",
        ],
    )
    .await?;
    Ok((
        cap_file_diffs(&text, FILE_DIFF_CAP),
        parse_numstat_z(&numstat),
    ))
}

/// Parses `git diff --numstat -z`.
pub fn parse_numstat_z(s: &str) -> DiffStats {
    let mut stats = DiffStats::default();
    let mut parts = s.split('\0');
    while let Some(head) = parts.next() {
        if head.is_empty() {
            continue;
        }
        let mut cols = head.splitn(3, '\t');
        let adds = cols.next().unwrap_or("-");
        let dels = cols.next().unwrap_or("-");
        let mut path = cols.next().unwrap_or("").to_string();
        if path.is_empty() {
            // Rename or copy: the old and new paths follow as two fields.
            let old = parts.next().unwrap_or("");
            let new = parts.next().unwrap_or("");
            path = format!("{old} => {new}");
        }
        let ins = adds.parse::<u64>().ok();
        let del = dels.parse::<u64>().ok();
        stats.files_changed += 1;
        stats.insertions += ins.unwrap_or(0);
        stats.deletions += del.unwrap_or(0);
        stats.files.push(FileStat {
            path,
            insertions: ins,
            deletions: del,
        });
    }
    stats
}

/// Creates (once) a read-only base checkout of `commit` at `dest`, to be used as the lower
/// layer of copy-on-write workspaces: the files plus a `.git` that borrows the mirror's objects
/// and has an index matching the files. Returns whether it had to be created.
pub async fn prepare_base(mirror: &Path, commit: &str, dest: &Path) -> Result<bool> {
    if dest.join(".git/HEAD").exists() {
        return Ok(false);
    }
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let tmp = dest.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        errand_core::new_id()
    ));
    // The overlay changes inode and device numbers; compare only size and mtime so that
    // `git status` in a fresh workspace does not rehash every file.
    init_borrowing(
        mirror,
        &tmp,
        &[("core.checkStat", "minimal"), ("core.trustctime", "false")],
    )
    .await?;
    run_ok(Some(&tmp), &["checkout", "--quiet", "--detach", commit]).await?;
    match tokio::fs::rename(&tmp, dest).await {
        Ok(()) => Ok(true),
        Err(_) if dest.join(".git/HEAD").exists() => {
            // Another attempt made the same base meanwhile.
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            Ok(false)
        }
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            Err(e.into())
        }
    }
}

/// Writes the attempt's branch into the upper layer of a copy-on-write workspace: `HEAD`
/// pointing at `refs/heads/<branch>`, which points at `commit`.
pub fn write_attempt_head(upper: &Path, branch: &str, commit: &str) -> Result<()> {
    check_agent_branch(branch)?;
    let git = upper.join(".git");
    let ref_path = git.join("refs/heads").join(branch);
    if let Some(parent) = ref_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&ref_path, format!("{commit}\n"))?;
    std::fs::write(git.join("HEAD"), format!("ref: refs/heads/{branch}\n"))?;
    Ok(())
}

/// Commits the workspace's files onto `branch` in the mirror, on top of `base`, without
/// trusting anything the agent could have changed in the workspace's own `.git`: the commit is
/// made through a fresh git directory at `scratch_git` (no hooks, no fsmonitor, no system or
/// global config), so hooks, filters or a `gitdir:` file planted by the agent never run or
/// redirect anything on the host. Commits the agent made itself, or a branch it switched to,
/// don't matter: the result is the workspace's tree on top of `base`. `seed_index` (the base
/// checkout's index) avoids rehashing unchanged files. Returns `None` when nothing changed.
#[allow(clippy::too_many_arguments)]
pub async fn commit_workspace(
    mirror: &Path,
    workspace: &Path,
    scratch_git: &Path,
    base: &str,
    branch: &str,
    message: &str,
    trailers: &[(&str, &str)],
    seed_index: Option<&Path>,
) -> Result<Option<String>> {
    commit_workspace_with(
        mirror,
        workspace,
        scratch_git,
        base,
        branch,
        message,
        trailers,
        seed_index,
        None,
        &[],
    )
    .await
}

/// What [`commit_workspace_with`] calls with the files about to be committed.
pub type Scrub = Box<
    dyn FnOnce(Vec<PathBuf>) -> std::pin::Pin<Box<dyn Future<Output = ScrubOutcome> + Send>> + Send,
>;

/// What a [`Scrub`] did with the files about to be committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubOutcome {
    /// It rewrote some of them: they are staged again.
    pub rewrote: bool,
    /// Paths (of those it got) that must not be committed, such as a file whose name holds a
    /// secret value: a new one is left out, one the base has keeps the base's version.
    pub leave_out: Vec<PathBuf>,
}

/// [`commit_workspace`] leaving out untracked paths that match `exclude` (gitignore patterns,
/// for example [`scan::exclude_pattern`]s of the files a setup script created).
#[allow(clippy::too_many_arguments)]
pub async fn commit_workspace_excluding(
    mirror: &Path,
    workspace: &Path,
    scratch_git: &Path,
    base: &str,
    branch: &str,
    message: &str,
    trailers: &[(&str, &str)],
    seed_index: Option<&Path>,
    exclude: &[String],
) -> Result<Option<String>> {
    commit_workspace_with(
        mirror,
        workspace,
        scratch_git,
        base,
        branch,
        message,
        trailers,
        seed_index,
        None,
        exclude,
    )
    .await
}

/// [`commit_workspace`], with two options: before the tree is written, `scrub` gets the
/// workspace-relative paths of every file added or changed against `base` (regular files and
/// symbolic links); when it says it rewrote some of them they are staged again, and the paths
/// it names in [`ScrubOutcome::leave_out`] are taken out of the commit (an added one) or keep
/// the base's version (a changed one) — the worker uses it to replace secret values in the
/// agent's changes, and to leave out files whose names hold one, before they reach a commit.
/// Untracked paths matching `exclude` (gitignore patterns) are left out.
#[allow(clippy::too_many_arguments)]
pub async fn commit_workspace_with(
    mirror: &Path,
    workspace: &Path,
    scratch_git: &Path,
    base: &str,
    branch: &str,
    message: &str,
    trailers: &[(&str, &str)],
    seed_index: Option<&Path>,
    scrub: Option<Scrub>,
    exclude: &[String],
) -> Result<Option<String>> {
    check_agent_branch(branch)?;
    if scratch_git.exists() {
        tokio::fs::remove_dir_all(scratch_git).await?;
    }
    let g = scratch_git.to_string_lossy().to_string();
    run_ok(None, &["init", "--quiet", "--bare", &g]).await?;
    let objects = mirror.join("objects").canonicalize()?;
    tokio::fs::write(
        scratch_git.join("objects/info/alternates"),
        format!("{}\n", objects.display()),
    )
    .await?;
    if !exclude.is_empty() {
        write_exclude(scratch_git, exclude).await?;
    }
    let index = scratch_git.join("index");
    let seeded = match seed_index {
        Some(seed) if seed.is_file() => copy_index(seed, &index).is_ok(),
        _ => false,
    };
    let name_cfg = format!("user.name={AGENT_NAME}");
    let email_cfg = format!("user.email={AGENT_EMAIL}");
    let git = |args: Vec<String>| {
        let mut c = scratch_git_command(None, scratch_git, workspace, &index);
        c.args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            &name_cfg,
            "-c",
            &email_cfg,
        ])
        .args(&args);
        async move {
            let shown = args.join(" ");
            let out = c.output().await?;
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            } else {
                Err(GitError::Command {
                    args: shown,
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                })
            }
        }
    };
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    if !seeded {
        git(v(&["read-tree", base])).await?;
    }
    git(v(&["add", "--all", "--", "."])).await?;
    if let Some(scrub) = scrub {
        let git_io = |args: &[&str], input: Option<Vec<u8>>| {
            let mut c = scratch_git_command(None, scratch_git, workspace, &index);
            c.args(args);
            run_io(c, args.join(" "), input)
        };
        // `:srcmode dstmode srcoid dstoid status\0path\0` per file: the base's entry is kept
        // for a path that must not be committed.
        let listed = git_io(
            &[
                "diff-index",
                "--cached",
                "-z",
                "--no-abbrev",
                "--no-renames",
                "--diff-filter=ACMT",
                base,
                "--",
            ],
            None,
        )
        .await?;
        let entries = parse_raw_diff(&listed);
        let paths: Vec<PathBuf> = entries
            .iter()
            .map(|e| PathBuf::from(std::ffi::OsStr::from_bytes(&e.path)))
            .collect();
        if !paths.is_empty() {
            let done = scrub(paths).await;
            if done.rewrote {
                git(v(&["add", "--all", "--", "."])).await?;
            }
            if !done.leave_out.is_empty() {
                let mut info = Vec::new();
                for e in &entries {
                    let p = Path::new(std::ffi::OsStr::from_bytes(&e.path));
                    if !done.leave_out.iter().any(|l| l == p) {
                        continue;
                    }
                    // An added path's source is mode 0 and the null object id: the entry goes.
                    let line = if e.status == b'A' {
                        format!("0 {}\t", e.src_oid)
                    } else {
                        format!("{} {}\t", e.src_mode, e.src_oid)
                    };
                    info.extend_from_slice(line.as_bytes());
                    info.extend_from_slice(&e.path);
                    info.push(0);
                }
                if !info.is_empty() {
                    git_io(&["update-index", "-z", "--index-info"], Some(info)).await?;
                }
            }
        }
    }
    let tree = git(v(&["write-tree"])).await?.trim().to_string();
    let base_tree = git(vec!["rev-parse".into(), format!("{base}^{{tree}}")])
        .await?
        .trim()
        .to_string();
    if tree == base_tree {
        return Ok(None);
    }
    let msg = commit_message(message, trailers);
    let commit = git(vec![
        "commit-tree".into(),
        tree,
        "-p".into(),
        base.to_string(),
        "-m".into(),
        msg,
    ])
    .await?
    .trim()
    .to_string();
    git(vec![
        "update-ref".into(),
        format!("refs/heads/{branch}"),
        commit.clone(),
    ])
    .await?;
    fetch_branch(mirror, scratch_git, branch).await?;
    Ok(Some(commit))
}

/// One file of `git diff-index --raw -z`.
#[derive(Debug, PartialEq, Eq)]
struct RawEntry {
    src_mode: String,
    src_oid: String,
    status: u8,
    path: Vec<u8>,
}

/// Parses `git diff-index -z` raw output (no renames): `:srcmode dstmode srcoid dstoid
/// status\0path\0` per file.
fn parse_raw_diff(out: &[u8]) -> Vec<RawEntry> {
    let mut v = Vec::new();
    let mut parts = out.split(|b| *b == 0);
    while let (Some(head), Some(path)) = (parts.next(), parts.next()) {
        let head = String::from_utf8_lossy(head);
        let f: Vec<&str> = head.trim_start_matches(':').split(' ').collect();
        if f.len() < 5 || path.is_empty() {
            continue;
        }
        v.push(RawEntry {
            src_mode: f[0].to_string(),
            src_oid: f[2].to_string(),
            status: f[4].as_bytes().first().copied().unwrap_or(b'?'),
            path: path.to_vec(),
        });
    }
    v
}

/// Runs a prepared git command with `input` on its stdin; its stdout.
async fn run_io(mut c: Command, shown: String, input: Option<Vec<u8>>) -> Result<Vec<u8>> {
    use tokio::io::AsyncWriteExt as _;
    c.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn()?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(&data).await?;
        drop(stdin);
    }
    let out = child.wait_with_output().await?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(GitError::Command {
            args: shown,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_FILES: &str = "diff --git a/a.txt b/a.txt\nindex 1..2 100644\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-x\n+y\ndiff --git a/big.txt b/big.txt\nindex 3..4 100644\n--- a/big.txt\n+++ b/big.txt\n@@ -1 +1 @@\n-diff --git inside a line\n+zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\n";

    #[test]
    fn oversized_file_diffs_become_a_note() {
        let capped = cap_file_diffs(TWO_FILES, 120);
        assert!(capped.starts_with("diff --git a/a.txt b/a.txt\n"));
        assert!(capped.contains("+y\n"), "small files stay: {capped}");
        assert!(
            capped.contains("+++ b/big.txt\n# Errand: this file's diff ("),
            "{capped}"
        );
        assert!(!capped.contains("zzzz"));
        assert_eq!(cap_file_diffs(TWO_FILES, 1 << 20), TWO_FILES);
    }

    #[test]
    fn filter_keeps_one_file() {
        let one = filter_diff(TWO_FILES, "big.txt");
        assert!(one.starts_with("diff --git a/big.txt b/big.txt"));
        assert!(!one.contains("a.txt b/a.txt"));
        assert_eq!(filter_diff(TWO_FILES, "./a.txt").lines().count(), 7);
        assert_eq!(filter_diff(TWO_FILES, "nope"), "");
        let renamed = "diff --git a/old.rs b/new.rs\nsimilarity index 90%\nrename from old.rs\nrename to new.rs\n";
        assert_eq!(filter_diff(renamed, "new.rs"), renamed);
        assert_eq!(filter_diff(renamed, "old.rs"), renamed);
    }

    #[test]
    fn urls_and_paths() {
        assert!(is_url("https://example.com/a/b.git"));
        assert!(is_url("git@example.com:a/b.git"));
        assert!(is_url("file:///tmp/x"));
        assert!(!is_url("/tmp/x"));
        assert!(!is_url("./a:b"));
    }

    #[test]
    fn branches() {
        assert_eq!(branch_name("abc", "fix-it", 1), "errand/abc-fix-it");
        assert_eq!(branch_name("abc", "fix-it", 3), "errand/abc-fix-it-3");
        assert!(check_agent_branch("errand/abc-fix").is_ok());
        for bad in [
            "main",
            "master",
            "errand/",
            "errand/../main",
            "refs/heads/main",
            "errand/a b",
            "feature/x",
            "errand//x",
            "errand/.hidden",
            "errand/x.lock/y",
            "errand/x.",
        ] {
            assert!(check_agent_branch(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numstat() {
        let s = "1\t2\ta.txt\0-\t-\tbin.png\0".to_string() + "3\t0\t\0old.rs\0new.rs\0";
        let st = parse_numstat_z(&s);
        assert_eq!(st.files_changed, 3);
        assert_eq!(st.insertions, 4);
        assert_eq!(st.deletions, 2);
        assert_eq!(st.files[1].insertions, None);
        assert_eq!(st.files[2].path, "old.rs => new.rs");
    }
}
