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

use crate::{AGENT_EMAIL, AGENT_NAME, GitError, Result, base_command, copy_index, run_ok};
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
}

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
        let name_cfg = format!("user.name={AGENT_NAME}");
        let email_cfg = format!("user.email={AGENT_EMAIL}");
        let mut c = base_command(None);
        c.env("GIT_DIR", &self.git_dir)
            .env("GIT_WORK_TREE", &self.workspace)
            .env("GIT_INDEX_FILE", self.index())
            .env("GIT_OBJECT_DIRECTORY", &self.objects)
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
                "-c",
                "commit.gpgsign=false",
                "-c",
                &name_cfg,
                "-c",
                &email_cfg,
            ])
            .args(args);
        let out = c.output().await?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(GitError::Command {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Records the workspace's files as a tree (objects go into the mirror) and says whether
    /// they changed since the previous snapshot. Files ignored by `.gitignore` are not part
    /// of it, as they are not part of the attempt's commit.
    pub async fn snapshot(&mut self) -> Result<Snapshot> {
        self.git(&["add", "--all", "--", "."]).await?;
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
