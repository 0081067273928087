//! A private index of an attempt's workspace, to record its files as a tree at a chosen
//! moment and to put the workspace back to such a tree later. The worker records the agent's
//! work before the checks run and puts the workspace back to it once they are done, so that
//! what the checks wrote (reports, coverage, build output that no `.gitignore` covers, edits
//! to tracked files) never reaches the attempt's commit, diff or pull request.
//!
//! Like [`crate::commit_workspace`], nothing of the workspace's own `.git` (which the agent
//! or a check could write) is used: a scratch git directory of Errand's own, with no hooks,
//! no fsmonitor and no configuration but ours ([`crate::scratch_git_command`]). Files ignored
//! by the workspace's `.gitignore` files, or matching the exclude patterns (the files a setup
//! script made), are not part of a tree and are never touched, as they are never committed.

use crate::{GitError, Result, copy_index, run_ok, scratch_git_command, write_exclude};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How a path differs from the tree it is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// Not in the tree: created since.
    Added,
    /// In the tree with other content, mode or type.
    Modified,
    /// In the tree, gone since.
    Deleted,
}

impl ChangeKind {
    /// `created`, `changed` or `deleted`.
    pub fn verb(self) -> &'static str {
        match self {
            ChangeKind::Added => "created",
            ChangeKind::Modified => "changed",
            ChangeKind::Deleted => "deleted",
        }
    }
}

/// One path that differs, relative to the workspace's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathChange {
    pub path: PathBuf,
    pub kind: ChangeKind,
}

/// What [`WorkspaceIndex::restore`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// The paths that differed from the tree and were put back (removed, rewritten or
    /// recreated), sorted.
    pub undone: Vec<PathChange>,
    /// Paths created since the tree that could not be removed (an embedded repository, a
    /// directory that can't be written): they stay in the workspace but are excluded from
    /// the workspace's trees from now on, and must be excluded from its commit too
    /// ([`WorkspaceIndex::excluded`]).
    pub kept_out: Vec<PathBuf>,
}

/// Snapshots of a workspace's files through an index of Errand's own.
#[derive(Debug)]
pub struct WorkspaceIndex {
    workspace: PathBuf,
    git_dir: PathBuf,
    /// The caller's exclude patterns, then those of paths [`WorkspaceIndex::restore`] could
    /// not remove.
    exclude: Mutex<(Vec<String>, Vec<String>)>,
}

/// Passes of put back, then look again, in [`WorkspaceIndex::restore`]: a second one is
/// needed when the first put back a `.gitignore` that had hidden what a check created.
const RESTORE_PASSES: usize = 3;

impl WorkspaceIndex {
    /// Prepares snapshots of `workspace`, whose files are at `start` (a commit in `mirror`).
    /// `git_dir` is a private scratch directory (removed first if it exists); its objects
    /// borrow the mirror's. `seed_index` is an index whose entries match the workspace's
    /// unchanged files, taken before anything ran in the workspace (so that it can be
    /// trusted), so they are not hashed again.
    pub async fn new(
        mirror: &Path,
        workspace: &Path,
        git_dir: &Path,
        start: &str,
        seed_index: Option<&Path>,
    ) -> Result<WorkspaceIndex> {
        if git_dir.exists() {
            tokio::fs::remove_dir_all(git_dir).await?;
        }
        let g = git_dir.to_string_lossy().to_string();
        run_ok(None, &["init", "--quiet", "--bare", &g]).await?;
        let objects = mirror.join("objects").canonicalize()?;
        tokio::fs::write(
            git_dir.join("objects/info/alternates"),
            format!("{}\n", objects.display()),
        )
        .await?;
        let wi = WorkspaceIndex {
            workspace: workspace.to_path_buf(),
            git_dir: git_dir.to_path_buf(),
            exclude: Mutex::new((Vec::new(), Vec::new())),
        };
        let seeded = match seed_index {
            Some(seed) if seed.is_file() => copy_index(seed, &wi.index()).is_ok(),
            _ => false,
        };
        if !seeded {
            wi.git(&["read-tree", start]).await?;
        }
        Ok(wi)
    }

    fn index(&self) -> PathBuf {
        self.git_dir.join("index")
    }

    /// Untracked paths matching these gitignore patterns (for example
    /// [`crate::scan::exclude_pattern`]s of the files a setup script made) are not part of
    /// the snapshots, like they are not part of the commit.
    pub async fn set_exclude(&self, patterns: &[String]) -> Result<()> {
        let text = {
            let mut ex = self.exclude.lock().unwrap_or_else(|p| p.into_inner());
            ex.0 = patterns.to_vec();
            all_patterns(&ex)
        };
        write_exclude(&self.git_dir, &text).await
    }

    /// Every exclude pattern: the caller's, then those of the paths a restore left in the
    /// workspace. The attempt's commit must leave out the same paths.
    pub fn excluded(&self) -> Vec<String> {
        let ex = self.exclude.lock().unwrap_or_else(|p| p.into_inner());
        all_patterns(&ex)
    }

    async fn git(&self, args: &[&str]) -> Result<String> {
        let out = scratch_git_command(None, &self.git_dir, &self.workspace, &self.index())
            .args(args)
            .output()
            .await?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(GitError::Command {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Records the workspace's files (those not ignored or excluded) as a tree, whose
    /// objects go to the scratch directory; returns the tree's id.
    pub async fn snapshot(&self) -> Result<String> {
        self.git(&["add", "--all", "--", "."]).await?;
        Ok(self.git(&["write-tree"]).await?.trim().to_string())
    }

    /// The paths that differ between the trees `from` and `to` (as `to` has them against
    /// `from`), in git's order.
    pub async fn changes(&self, from: &str, to: &str) -> Result<Vec<PathChange>> {
        let out = scratch_git_command(None, &self.git_dir, &self.workspace, &self.index())
            .args([
                "diff-tree",
                "-r",
                "-z",
                "--no-renames",
                "--name-status",
                from,
                to,
            ])
            .output()
            .await?;
        if !out.status.success() {
            return Err(GitError::Command {
                args: format!("diff-tree {from} {to}"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let mut fields = out.stdout.split(|b| *b == 0).filter(|f| !f.is_empty());
        let mut changes = Vec::new();
        while let (Some(status), Some(path)) = (fields.next(), fields.next()) {
            let kind = match status.first() {
                Some(b'A') => ChangeKind::Added,
                Some(b'D') => ChangeKind::Deleted,
                _ => ChangeKind::Modified,
            };
            changes.push(PathChange {
                path: PathBuf::from(std::ffi::OsStr::from_bytes(path)),
                kind,
            });
        }
        Ok(changes)
    }

    /// Puts the workspace back to `tree` (a [`WorkspaceIndex::snapshot`] taken earlier):
    /// files created since are removed (and directories left empty by that), files changed
    /// or deleted since get the tree's content and mode again. Only the paths that differ
    /// are written; ignored and excluded files are left alone. Git writes the files, so a
    /// symbolic link planted in place of a directory is replaced, never followed.
    ///
    /// A created path that can't be removed (an embedded repository, a directory that can't
    /// be written) stays, excluded from later snapshots ([`Restored::kept_out`]); a tracked
    /// file that can't be put back is an error naming it.
    pub async fn restore(&self, tree: &str) -> Result<Restored> {
        let mut undone: BTreeMap<PathBuf, ChangeKind> = BTreeMap::new();
        let mut trouble = String::new();
        for _ in 0..RESTORE_PASSES {
            let now = self.snapshot().await?;
            if now == tree {
                return Ok(Restored {
                    undone: sorted(undone),
                    kept_out: Vec::new(),
                });
            }
            for c in self.changes(tree, &now).await? {
                undone.entry(c.path).or_insert(c.kind);
            }
            // The index is at `now`: a two-tree merge to `tree` updates exactly the paths
            // that differ, in the index and in the workspace.
            if let Err(e) = self.git(&["read-tree", "-m", "-u", &now, tree]).await {
                trouble = e.to_string();
            }
        }
        let now = self.snapshot().await?;
        if now == tree {
            return Ok(Restored {
                undone: sorted(undone),
                kept_out: Vec::new(),
            });
        }
        let left = self.changes(tree, &now).await?;
        let stuck: Vec<&PathChange> = left
            .iter()
            .filter(|c| c.kind != ChangeKind::Added || c.path.to_str().is_none())
            .collect();
        if !stuck.is_empty() {
            return Err(GitError::NotRestored {
                paths: stuck
                    .iter()
                    .map(|c| c.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                reason: if trouble.is_empty() {
                    "git left them as they are".into()
                } else {
                    trouble
                },
            });
        }
        // Created paths that would not go: excluded from now on, and the index brought
        // back to `tree` (keeping the stat data of the entries that did not change).
        let kept_out: Vec<PathBuf> = left.into_iter().map(|c| c.path).collect();
        let text = {
            let mut ex = self.exclude.lock().unwrap_or_else(|p| p.into_inner());
            for p in &kept_out {
                if let Some(s) = p.to_str() {
                    ex.1.push(crate::scan::exclude_pattern(s));
                }
            }
            all_patterns(&ex)
        };
        write_exclude(&self.git_dir, &text).await?;
        self.git(&["read-tree", "-m", &now, tree]).await?;
        let again = self.snapshot().await?;
        if again != tree {
            let left = self.changes(tree, &again).await?;
            return Err(GitError::NotRestored {
                paths: left
                    .iter()
                    .map(|c| c.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                reason: "they are still there after being excluded".into(),
            });
        }
        for p in &kept_out {
            undone.remove(p);
        }
        Ok(Restored {
            undone: sorted(undone),
            kept_out,
        })
    }
}

fn all_patterns(ex: &(Vec<String>, Vec<String>)) -> Vec<String> {
    ex.0.iter().chain(ex.1.iter()).cloned().collect()
}

fn sorted(undone: BTreeMap<PathBuf, ChangeKind>) -> Vec<PathChange> {
    undone
        .into_iter()
        .map(|(path, kind)| PathChange { path, kind })
        .collect()
}
