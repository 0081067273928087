//! Checkpoints of an attempt's workspace: after each agent turn the workspace's files become a
//! commit on a hidden ref of the mirror, `refs/errand/checkpoints/<attempt>`, so that a run
//! that dies can be resumed by a later one. The ref is never a branch and is never pushed.
//!
//! Cost per turn is what matters (an attempt can have hundreds of turns), so a [`Checkpointer`]
//! keeps one private index for the whole run (seeded with the base checkout's index, so
//! unchanged files are never hashed), writes objects straight into the mirror's object store
//! (no fetch), and makes a commit only when the tree changed: `git add --all` and
//! `git write-tree` every turn, plus `git commit-tree` and `git update-ref` when something
//! changed. Like [`crate::commit_workspace`], nothing of the workspace's own `.git` (which
//! the agent could write) is used: no hooks, no fsmonitor, no config but ours.
//!
//! In a copy-on-write workspace ([`Checkpointer::with_overlay`]) a snapshot does not even look
//! at every file: whatever the agent changed, added or deleted is in the overlay's upper
//! directory, so only those paths are examined (`git ls-files` + `git update-index`), and the
//! cost follows the size of the change, not of the repository. Anything unusual (a file that
//! became a directory, an embedded repository, a huge change) falls back to `git add --all`.

use crate::{AGENT_EMAIL, AGENT_NAME, GitError, Result, base_command, copy_index, run_ok};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The hidden ref holding an attempt's latest checkpoint in the mirror.
pub fn checkpoint_ref(attempt_id: &str) -> Result<String> {
    let ok = !attempt_id.is_empty()
        && attempt_id.len() <= 64
        && attempt_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(GitError::ForbiddenBranch(format!(
            "refs/errand/checkpoints/{attempt_id}"
        )));
    }
    Ok(format!("refs/errand/checkpoints/{attempt_id}"))
}

/// Takes an attempt's checkpoints during one run.
#[derive(Debug)]
pub struct Checkpointer {
    mirror: PathBuf,
    workspace: PathBuf,
    git_dir: PathBuf,
    objects: PathBuf,
    reference: String,
    /// The latest checkpoint commit (at first: the commit the workspace started from).
    head: String,
    head_tree: String,
    /// The tree of the last [`Checkpointer::snapshot`], not yet committed.
    pending: Option<String>,
    /// The overlay's upper and lower directories, when the workspace is one.
    overlay: Option<(PathBuf, PathBuf)>,
    /// Every path (or directory) the overlay showed as changed so far: examined again at each
    /// snapshot, so that a change undone later is seen too.
    seen: BTreeSet<Vec<u8>>,
}

/// Past this many bytes of changed paths, a snapshot adds everything instead.
const MAX_PATHSPEC_BYTES: usize = 256 * 1024;

/// What [`Checkpointer::snapshot`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub tree: String,
    /// Whether the workspace differs from the previous snapshot (or, for the first one, from
    /// the commit the run started from).
    pub changed: bool,
}

impl Checkpointer {
    /// Prepares checkpoints of `workspace`, whose files are at `start` (the base, the branch
    /// head of a follow-up, or the checkpoint the run resumed from). `git_dir` is a private
    /// scratch directory (removed first if it exists); `seed_index` an index whose entries
    /// match the workspace's unchanged files (the base checkout's, or the fresh workspace's
    /// own taken before the agent ran), so they are not hashed again.
    pub async fn new(
        mirror: &Path,
        workspace: &Path,
        git_dir: &Path,
        attempt_id: &str,
        start: &str,
        seed_index: Option<&Path>,
    ) -> Result<Checkpointer> {
        let reference = checkpoint_ref(attempt_id)?;
        if git_dir.exists() {
            tokio::fs::remove_dir_all(git_dir).await?;
        }
        let g = git_dir.to_string_lossy().to_string();
        run_ok(None, &["init", "--quiet", "--bare", &g]).await?;
        let mut cp = Checkpointer {
            mirror: mirror.to_path_buf(),
            workspace: workspace.to_path_buf(),
            git_dir: git_dir.to_path_buf(),
            objects: mirror.join("objects").canonicalize()?,
            reference,
            head: start.to_string(),
            head_tree: String::new(),
            pending: None,
            overlay: None,
            seen: BTreeSet::new(),
        };
        let seeded = match seed_index {
            Some(seed) if seed.is_file() => copy_index(seed, &cp.index()).is_ok(),
            _ => false,
        };
        if !seeded {
            cp.git(&["read-tree", start]).await?;
        }
        cp.head_tree = cp
            .git(&["rev-parse", &format!("{start}^{{tree}}")])
            .await?
            .trim()
            .to_string();
        Ok(cp)
    }

    /// The workspace is an overlay of `upper` (where every change lands) over `lower` (the
    /// read-only base checkout, whose files the seed index describes): snapshots examine only
    /// the paths found in `upper`.
    pub fn with_overlay(mut self, upper: &Path, lower: &Path) -> Checkpointer {
        self.overlay = Some((upper.to_path_buf(), lower.to_path_buf()));
        self
    }

    fn index(&self) -> PathBuf {
        self.git_dir.join("index")
    }

    /// The latest checkpoint commit.
    pub fn head(&self) -> &str {
        &self.head
    }

    /// The hidden ref the checkpoints go to.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    async fn git(&self, args: &[&str]) -> Result<String> {
        let out = self.git_io(args, None).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Runs git on the scratch directory, the workspace and the private index, with `input`
    /// on its stdin; returns its stdout.
    async fn git_io(&self, args: &[&str], input: Option<Vec<u8>>) -> Result<Vec<u8>> {
        let name_cfg = format!("user.name={AGENT_NAME}");
        let email_cfg = format!("user.email={AGENT_EMAIL}");
        let mut c = base_command(None);
        c.env("GIT_DIR", &self.git_dir)
            .env("GIT_WORK_TREE", &self.workspace)
            .env("GIT_INDEX_FILE", self.index())
            .env("GIT_OBJECT_DIRECTORY", &self.objects)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_LITERAL_PATHSPECS", "1")
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
                "-c",
                "commit.gpgsign=false",
                "-c",
                &name_cfg,
                "-c",
                &email_cfg,
            ])
            .args(args);
        let out = match input {
            None => c.output().await?,
            Some(bytes) => {
                use tokio::io::AsyncWriteExt;
                c.stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                let mut child = c.spawn()?;
                if let Some(mut stdin) = child.stdin.take() {
                    // A git that exits early closes the pipe; its exit status tells why.
                    let _ = stdin.write_all(&bytes).await;
                }
                child.wait_with_output().await?
            }
        };
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(GitError::Command {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Brings the index up to date with the paths the overlay shows as changed. `Ok(false)`
    /// when this can't be done that way (the caller adds everything instead).
    async fn add_changed(&mut self) -> Result<bool> {
        let Some((upper, lower)) = self.overlay.clone() else {
            return Ok(false);
        };
        let merged = self.workspace.clone();
        let found = tokio::task::spawn_blocking(move || changed_paths(&upper, &lower, &merged))
            .await
            .map_err(|e| GitError::Io(std::io::Error::other(e.to_string())))??;
        self.seen.extend(found);
        if self.seen.is_empty() {
            return Ok(true);
        }
        let bytes: usize = self.seen.iter().map(|p| p.len() + 1).sum();
        if bytes > MAX_PATHSPEC_BYTES {
            return Ok(false);
        }
        // Tracked paths under them (to refresh or remove) and new files that are not ignored.
        let mut args: Vec<String> = [
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for p in &self.seen {
            match std::str::from_utf8(p) {
                Ok(p) => args.push(p.to_string()),
                // Arguments must be text here; such names are rare enough to add everything.
                Err(_) => return Ok(false),
            }
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let listed = match self.git_io(&refs, None).await {
            Ok(l) => l,
            Err(_) => return Ok(false),
        };
        if listed.is_empty() {
            return Ok(true);
        }
        // An embedded repository is listed as `dir/`: `git add` knows what to do with it.
        if listed.split(|b| *b == 0).any(|p| p.ends_with(b"/")) {
            return Ok(false);
        }
        let updated = self
            .git_io(
                &[
                    "update-index",
                    "-z",
                    "--add",
                    "--remove",
                    "--replace",
                    "--stdin",
                ],
                Some(listed),
            )
            .await;
        Ok(updated.is_ok())
    }

    /// Records the workspace's files as a tree (objects go into the mirror) and says whether
    /// they changed since the previous snapshot. Files ignored by `.gitignore` are not part
    /// of it, as they are not part of the attempt's commit.
    pub async fn snapshot(&mut self) -> Result<Snapshot> {
        let fast = self.overlay.is_some() && self.add_changed().await.unwrap_or(false);
        if !fast {
            self.git(&["add", "--all", "--", "."]).await?;
        }
        let tree = self.git(&["write-tree"]).await?.trim().to_string();
        let previous = self.pending.as_deref().unwrap_or(&self.head_tree);
        let changed = tree != previous;
        self.pending = Some(tree.clone());
        Ok(Snapshot { tree, changed })
    }

    /// Commits the last snapshot (taking one first if there is none) on top of the previous
    /// checkpoint and points the hidden ref at it. An unchanged tree makes no new commit.
    /// Returns the checkpoint commit.
    pub async fn commit(&mut self, message: &str) -> Result<String> {
        let tree = match self.pending.take() {
            Some(t) => t,
            None => self.snapshot().await?.tree,
        };
        self.pending = None;
        if tree == self.head_tree {
            return Ok(self.head.clone());
        }
        let commit = self
            .git(&["commit-tree", &tree, "-p", &self.head, "-m", message])
            .await?
            .trim()
            .to_string();
        run_ok(
            Some(&self.mirror),
            &["update-ref", &self.reference, &commit],
        )
        .await?;
        self.head = commit;
        self.head_tree = tree;
        Ok(self.head.clone())
    }
}

/// The paths of the workspace that differ from the overlay's lower layer, from its upper one:
/// every file, link or whiteout (a deletion) in it, and every directory the lower layer does
/// not have, or in which an entry of the lower layer is gone (a whiteout or an opaque
/// directory), as a whole; directories the lower layer has, with nothing missing, are walked
/// into. The workspace's `.git` is left out.
fn changed_paths(upper: &Path, lower: &Path, merged: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let rd = match std::fs::read_dir(upper.join(&rel)) {
            Ok(rd) => rd,
            // Removed while we looked: its paths are in `seen` if they mattered before.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in rd {
            let entry = entry?;
            let name = entry.file_name();
            if rel.as_os_str().is_empty() && name == ".git" {
                continue;
            }
            let path = rel.join(&name);
            let walk_into = entry.file_type()?.is_dir()
                && std::fs::symlink_metadata(lower.join(&path)).is_ok_and(|m| m.is_dir())
                && nothing_missing(&lower.join(&path), &merged.join(&path))?;
            if walk_into {
                dirs.push(path);
            } else {
                out.push(path.as_os_str().as_bytes().to_vec());
            }
        }
    }
    Ok(out)
}

/// Whether every entry of `lower` is still in `merged`.
fn nothing_missing(lower: &Path, merged: &Path) -> std::io::Result<bool> {
    let present: std::collections::HashSet<OsString> = match std::fs::read_dir(merged) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
        Err(_) => return Ok(false),
    };
    for e in std::fs::read_dir(lower)? {
        if !present.contains(&e?.file_name()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Brings a fresh workspace checked out at `start` to the files of `checkpoint` (a commit in
/// the mirror its `.git` borrows objects from), leaving `HEAD` and the index at `start`, as
/// they were while the agent worked: the checkpoint's changes are uncommitted changes again.
/// Only the files that differ are written. Git runs with no system or global configuration
/// and no hooks, so nothing in the checkpoint's tree (`.gitattributes` filters) reaches a
/// program on the host.
pub async fn restore_checkpoint(workspace: &Path, start: &str, checkpoint: &str) -> Result<()> {
    if start == checkpoint {
        return Ok(());
    }
    let git = |args: &[&str]| {
        let mut c = base_command(Some(workspace));
        c.env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args([
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "core.fsmonitor=false",
                "-c",
                "core.autocrlf=false",
            ])
            .args(args);
        let shown = args.join(" ");
        async move {
            let out = c.output().await?;
            if out.status.success() {
                Ok(())
            } else {
                Err(GitError::Command {
                    args: shown,
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                })
            }
        }
    };
    git(&["read-tree", "-m", "-u", start, checkpoint]).await?;
    git(&["reset", "--quiet", "--mixed", start]).await?;
    Ok(())
}

/// Deletes an attempt's checkpoint ref (once its work is on its branch, or it was given up).
pub async fn delete_checkpoint_ref(mirror: &Path, attempt_id: &str) -> Result<()> {
    let reference = checkpoint_ref(attempt_id)?;
    run_ok(Some(mirror), &["update-ref", "-d", &reference]).await?;
    Ok(())
}
