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
//! In a copy-on-write workspace ([`Checkpointer::with_overlay`]) a snapshot does not look at
//! every file: whatever the agent changed, added or deleted is in the overlay's upper
//! directory, so only those paths go to `git update-index` (new ones once `git check-ignore`
//! said they are not ignored; its answers are kept until a `.gitignore` changes), and when
//! none of them changed since the last snapshot (same size, times, mode and inode) git does
//! not run at all. The cost follows the size of the change, not of the repository. Anything
//! unusual (a file that became a directory, an embedded repository) falls back to
//! `git add --all`.
//!
//! With a [`Redactor`] ([`Checkpointer::with_scrub`], for an attempt whose environment has
//! secrets), git never reads the workspace's files itself: each changed file is read, its
//! secret values are replaced with their placeholders, and that copy becomes the blob (see
//! [`scrub`]); the fallback lists the changed files with `git ls-files` instead of adding
//! them. The workspace's files are not touched, and no object holding a value is written.

use crate::{
    AGENT_EMAIL, AGENT_NAME, GitError, Result, base_command, copy_index, run_ok,
    scratch_git_command,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use errand_core::redact::Redactor;
pub use scrub::{MAX_SCRUB_FILE, ScrubbedFile};

mod scrub;

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
    /// New files (not in the lower layer) added to the index so far: updated again at each
    /// snapshot, so that one deleted later leaves the index too.
    added: BTreeSet<Vec<u8>>,
    /// Whether a new path is ignored, as `git check-ignore` said; dropped when a `.gitignore`
    /// changes.
    ignored: HashMap<Vec<u8>, bool>,
    /// The changed paths and their metadata at the last index update.
    last: Option<BTreeMap<Vec<u8>, Option<Stamp>>>,
    /// The tree of the index as the last `write-tree` left it (`None`: not written yet).
    index_tree: Option<String>,
    /// Secret values are kept out of the snapshots ([`Checkpointer::with_scrub`]).
    scrub: Option<Scrubbing>,
}

/// The secret values kept out of an attempt's checkpoints, and the files of the index whose
/// blob differs from the workspace's file because of them.
#[derive(Debug)]
struct Scrubbing {
    redactor: Redactor,
    files: BTreeMap<Vec<u8>, ScrubbedFile>,
    /// The files listed by the checkpoint this run resumed from, with their blob there
    /// (looked up at the first snapshot): restored with placeholders, they stay listed while
    /// they still hold what was restored.
    earlier: HashMap<Vec<u8>, Option<String>>,
    earlier_known: bool,
}

/// What tells that a file changed: ctime (which nothing can set back), mtime, size, mode and
/// inode.
type Stamp = (i64, i64, i64, i64, u64, u32, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    std::fs::symlink_metadata(path).ok().map(|m| {
        (
            m.ctime(),
            m.ctime_nsec(),
            m.mtime(),
            m.mtime_nsec(),
            m.size(),
            m.mode(),
            m.ino(),
        )
    })
}

fn is_gitignore(p: &[u8]) -> bool {
    p == b".gitignore" || p.ends_with(b"/.gitignore")
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
            overlay: None,
            added: BTreeSet::new(),
            ignored: HashMap::new(),
            last: None,
            index_tree: None,
            scrub: None,
        };
        let seeded = match seed_index {
            Some(seed) if seed.is_file() => copy_index(seed, &cp.index()).is_ok(),
            _ => false,
        };
        if !seeded {
            cp.git(&["read-tree", start]).await?;
        }
        // Every snapshot reads and writes this index: the smaller format (paths prefix
        // compressed) and no checksum (`index.skipHash`, below) halve that time in a
        // repository of 50,000 files.
        cp.git(&["update-index", "--index-version", "4"]).await?;
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

    /// Keeps secret values out of the snapshots: files are read and their values replaced
    /// with placeholders before they become blobs (the workspace's files stay as they are).
    /// `earlier`: the files of the checkpoint this run resumed from that hold placeholders,
    /// still listed by [`Checkpointer::scrubbed`] until they change. A redactor with no
    /// values changes nothing.
    pub fn with_scrub(mut self, redactor: Redactor, earlier: Vec<ScrubbedFile>) -> Checkpointer {
        if redactor.is_empty() {
            return self;
        }
        let files: BTreeMap<Vec<u8>, ScrubbedFile> = earlier
            .into_iter()
            .map(|f| (f.path.as_bytes().to_vec(), f))
            .collect();
        let earlier = files.keys().map(|p| (p.clone(), None)).collect();
        self.scrub = Some(Scrubbing {
            redactor,
            files,
            earlier,
            earlier_known: false,
        });
        self
    }

    /// The files of the last snapshot that differ from the workspace's because secret values
    /// were replaced in them (or that were left at an earlier version because they could not
    /// be checked), by path. Empty without [`Checkpointer::with_scrub`].
    pub fn scrubbed(&self) -> Vec<ScrubbedFile> {
        self.scrub
            .as_ref()
            .map(|s| s.files.values().cloned().collect())
            .unwrap_or_default()
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
        let (code, out, err) = self.git_status(args, input).await?;
        if code == Some(0) {
            Ok(out)
        } else {
            Err(GitError::Command {
                args: args.join(" "),
                stderr: err,
            })
        }
    }

    /// Like [`Checkpointer::git_io`], but returns the exit code, stdout and stderr.
    async fn git_status(
        &self,
        args: &[&str],
        input: Option<Vec<u8>>,
    ) -> Result<(Option<i32>, Vec<u8>, String)> {
        let name_cfg = format!("user.name={AGENT_NAME}");
        let email_cfg = format!("user.email={AGENT_EMAIL}");
        let mut c = scratch_git_command(
            Some(&self.workspace),
            &self.git_dir,
            &self.workspace,
            &self.index(),
        );
        c.env("GIT_OBJECT_DIRECTORY", &self.objects)
            .args([
                "-c",
                "index.skipHash=true",
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
        Ok((
            out.status.code(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }

    /// Asks `git check-ignore` about the paths the cache does not know.
    async fn learn_ignored(&mut self, paths: &[Vec<u8>]) -> Result<Option<()>> {
        let unknown: Vec<Vec<u8>> = paths
            .iter()
            .filter(|p| !self.ignored.contains_key(*p))
            .cloned()
            .collect();
        if unknown.is_empty() {
            return Ok(Some(()));
        }
        // Exit 0: some are ignored; 1: none is; anything else is an error.
        let (code, out, _) = self
            .git_status(&["check-ignore", "-z", "--stdin"], Some(nul(&unknown)))
            .await?;
        if !matches!(code, Some(0) | Some(1)) {
            return Ok(None);
        }
        let ignored: HashSet<&[u8]> = out.split(|b| *b == 0).collect();
        for p in unknown {
            let yes = ignored.contains(p.as_slice());
            self.ignored.insert(p, yes);
        }
        Ok(Some(()))
    }

    /// The new files that are not ignored: `new` entries (and everything under those that
    /// are directories git would look into), with ignored ones and ignored directories
    /// left out. `None`: an embedded repository (left to `git add`).
    async fn new_files(&mut self, new: Vec<NewPath>) -> Result<Option<Vec<Vec<u8>>>> {
        let mut files = Vec::new();
        let mut frontier = new;
        while !frontier.is_empty() {
            let paths: Vec<Vec<u8>> = frontier.iter().map(|(p, _)| p.clone()).collect();
            if self.learn_ignored(&paths).await?.is_none() {
                return Ok(None);
            }
            let mut dirs = Vec::new();
            for (p, is_dir) in frontier {
                if self.ignored.get(&p).copied().unwrap_or(false) {
                    continue;
                }
                if is_dir {
                    dirs.push(p);
                } else {
                    files.push(p);
                }
            }
            let ws = self.workspace.clone();
            let listed = tokio::task::spawn_blocking(move || list_dirs(&ws, &dirs))
                .await
                .map_err(|e| GitError::Io(std::io::Error::other(e.to_string())))??;
            match listed {
                Some(next) => frontier = next,
                None => return Ok(None),
            }
        }
        Ok(Some(files))
    }

    /// Brings the index up to date with the paths the overlay shows as changed. `Ok(None)`
    /// when this can't be done that way (the caller adds everything instead); else whether
    /// the index changed.
    async fn add_changed(&mut self) -> Result<Option<bool>> {
        let Some((upper, lower)) = self.overlay.clone() else {
            return Ok(None);
        };
        let merged = self.workspace.clone();
        let found = tokio::task::spawn_blocking(move || overlay_changes(&upper, &lower, &merged))
            .await
            .map_err(|e| GitError::Io(std::io::Error::other(e.to_string())))??;
        let Some(ch) = found else {
            return Ok(None);
        };
        // Twice at most: again from scratch when a `.gitignore` changed, since the answers
        // kept from earlier snapshots may be wrong now.
        let had_answers = !self.ignored.is_empty();
        let mut pass = 0;
        let (files, stamps) = loop {
            pass += 1;
            let Some(files) = self.new_files(ch.new.clone()).await? else {
                return Ok(None);
            };
            let mut stamps: BTreeMap<Vec<u8>, Option<Stamp>> = BTreeMap::new();
            for p in ch.update.iter().chain(files.iter()) {
                stamps.insert(
                    p.clone(),
                    stamp(&self.workspace.join(std::ffi::OsStr::from_bytes(p))),
                );
            }
            let ignore_changed = stamps
                .iter()
                .filter(|(p, _)| is_gitignore(p))
                .any(|(p, st)| {
                    self.last
                        .as_ref()
                        .is_none_or(|last| last.get(p) != Some(st))
                })
                || self.last.as_ref().is_some_and(|last| {
                    last.keys()
                        .filter(|p| is_gitignore(p))
                        .any(|p| !stamps.contains_key(p))
                });
            if ignore_changed && pass == 1 && had_answers {
                self.ignored.clear();
                continue;
            }
            break (files, stamps);
        };
        if self.last.as_ref() == Some(&stamps) && self.index_tree.is_some() {
            return Ok(Some(false));
        }
        let mut input: BTreeSet<Vec<u8>> = stamps.keys().cloned().collect();
        input.extend(self.added.iter().cloned());
        if self.scrub.is_some()
            && let Some(last) = &self.last
        {
            // Scrubbing reads every path it is given (git would only compare its stat data):
            // only those that changed since the last snapshot, or are gone from the list.
            input.retain(|p| match (stamps.get(p), last.get(p)) {
                (Some(now), Some(before)) => now != before,
                _ => true,
            });
        }
        if !input.is_empty() {
            let list: Vec<Vec<u8>> = input.into_iter().collect();
            let updated = if self.scrub.is_some() {
                self.stage_scrubbed(list).await
            } else {
                self.git_io(
                    &[
                        "update-index",
                        "-z",
                        "--add",
                        "--remove",
                        "--replace",
                        "--stdin",
                    ],
                    Some(nul(&list)),
                )
                .await
                .map(|_| ())
            };
            if updated.is_err() {
                return Ok(None);
            }
        }
        self.added = files.into_iter().collect();
        self.last = Some(stamps);
        Ok(Some(true))
    }

    /// Brings the index's entries for `paths` up to date with the workspace, with secret
    /// values replaced in the blobs ([`scrub`]): the files are read and scrubbed here, git
    /// hashes the scrubbed copies and the index points at those blobs.
    async fn stage_scrubbed(&mut self, paths: Vec<Vec<u8>>) -> Result<()> {
        let Some(redactor) = self.scrub.as_ref().map(|s| s.redactor.clone()) else {
            return Ok(());
        };
        if paths.is_empty() {
            return Ok(());
        }
        let stage = self.git_dir.join("scrub");
        let (root, dir) = (self.workspace.clone(), stage.clone());
        let prepared =
            tokio::task::spawn_blocking(move || scrub::prepare(&root, &dir, &redactor, &paths))
                .await
                .map_err(|e| GitError::Io(std::io::Error::other(e.to_string())))??;
        let result = self.apply_prepared(&prepared).await;
        let _ = tokio::fs::remove_dir_all(&stage).await;
        let ids = result?;
        self.learn_earlier().await;
        if let Some(sc) = self.scrub.as_mut() {
            for (p, id) in prepared.into_iter().zip(ids) {
                match p.found {
                    Some(f) => {
                        sc.files.insert(p.path, f);
                    }
                    // A file that could not be checked keeps its entry, and its listing.
                    None if matches!(p.staged, scrub::Staged::Keep) => {}
                    // Restored with placeholders and not changed since.
                    None if id.is_some() && sc.earlier.get(&p.path) == Some(&id) => {}
                    None => {
                        sc.files.remove(&p.path);
                        sc.earlier.remove(&p.path);
                    }
                }
            }
        }
        Ok(())
    }

    /// Looks up, once, the blobs the checkpoint this run resumed from has for the files it
    /// listed as scrubbed.
    async fn learn_earlier(&mut self) {
        let paths: Vec<Vec<u8>> = match &self.scrub {
            Some(sc) if !sc.earlier_known && !sc.earlier.is_empty() => {
                sc.earlier.keys().cloned().collect()
            }
            _ => return,
        };
        let mut input = Vec::new();
        for p in &paths {
            input.extend_from_slice(self.head.as_bytes());
            input.push(b':');
            input.extend_from_slice(p);
            input.push(b'\n');
        }
        let found = self
            .git_io(&["cat-file", "--batch-check=%(objectname)"], Some(input))
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&found);
        let Some(sc) = self.scrub.as_mut() else {
            return;
        };
        sc.earlier_known = true;
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() != paths.len() {
            return;
        }
        for (p, line) in paths.into_iter().zip(lines) {
            // A missing one reads `<name> missing`.
            let id = line.trim();
            if !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                sc.earlier.insert(p, Some(id.to_string()));
            }
        }
    }

    /// Hashes the staged copies into the mirror's objects and updates the index entries.
    /// Returns the blob of each path (`None`: removed or kept as it was).
    async fn apply_prepared(&self, prepared: &[scrub::Prepared]) -> Result<Vec<Option<String>>> {
        let mut files = Vec::new();
        for p in prepared {
            if let scrub::Staged::Blob { file, .. } = &p.staged {
                files.extend_from_slice(file.as_os_str().as_bytes());
                files.push(b'\n');
            }
        }
        let ids: Vec<String> = if files.is_empty() {
            Vec::new()
        } else {
            let out = self
                .git_io(
                    &["hash-object", "-w", "--no-filters", "--stdin-paths"],
                    Some(files),
                )
                .await?;
            String::from_utf8_lossy(&out)
                .lines()
                .map(str::to_string)
                .collect()
        };
        // A mode of 0 removes the entry; its id only has to be well-formed.
        let zero = "0".repeat(self.head_tree.len().max(40));
        let mut ids = ids.into_iter();
        let mut info = Vec::new();
        let mut blobs = Vec::with_capacity(prepared.len());
        for p in prepared {
            let line = match &p.staged {
                scrub::Staged::Keep => {
                    blobs.push(None);
                    continue;
                }
                scrub::Staged::Gone => {
                    blobs.push(None);
                    format!("0 {zero}\t")
                }
                scrub::Staged::Blob { mode, .. } => {
                    let Some(id) = ids.next().filter(|i| !i.is_empty()) else {
                        return Err(GitError::Command {
                            args: "hash-object -w --no-filters --stdin-paths".into(),
                            stderr: "fewer object ids than files".into(),
                        });
                    };
                    let line = format!("{mode} {id}\t");
                    blobs.push(Some(id));
                    line
                }
            };
            info.extend_from_slice(line.as_bytes());
            info.extend_from_slice(&p.path);
            info.push(0);
        }
        if !info.is_empty() {
            self.git_io(
                &["update-index", "-z", "--add", "--replace", "--index-info"],
                Some(info),
            )
            .await?;
        }
        Ok(blobs)
    }

    /// Records the workspace's files as a tree (objects go into the mirror) and says whether
    /// they changed since the previous snapshot. Files ignored by `.gitignore` are not part
    /// of it, as they are not part of the attempt's commit.
    pub async fn snapshot(&mut self) -> Result<Snapshot> {
        let fast = match self.overlay {
            Some(_) => self.add_changed().await.unwrap_or(None),
            None => None,
        };
        if fast.is_none() {
            // Whatever the fast way knew is stale once everything was added.
            self.last = None;
        }
        let tree = match (fast, &self.index_tree) {
            // Nothing to update: the index is as the last write-tree left it.
            (Some(false), Some(t)) => t.clone(),
            (Some(_), _) => self.git(&["write-tree"]).await?.trim().to_string(),
            (None, _) if self.scrub.is_some() => {
                // Every file git would add, without letting it hash (and store) any: changed,
                // deleted and new ones that are not ignored. Nested repositories (`dir/`) are
                // left out.
                let listed = self
                    .git_io(
                        &["ls-files", "-z", "-m", "-d", "-o", "--exclude-standard"],
                        None,
                    )
                    .await?;
                let paths: BTreeSet<Vec<u8>> = listed
                    .split(|b| *b == 0)
                    .filter(|p| !p.is_empty() && !p.ends_with(b"/"))
                    .map(<[u8]>::to_vec)
                    .collect();
                self.stage_scrubbed(paths.into_iter().collect()).await?;
                self.git(&["write-tree"]).await?.trim().to_string()
            }
            (None, _) => {
                self.git(&["add", "--all", "--", "."]).await?;
                self.git(&["write-tree"]).await?.trim().to_string()
            }
        };
        self.index_tree = Some(tree.clone());
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

/// Commits the workspace's files onto `branch` of the mirror on top of `base`, like
/// [`crate::commit_workspace`] (a fresh git directory, nothing of the workspace's own `.git`
/// used), but with secret values replaced in the blobs as in a scrubbed checkpoint: the
/// workspace's files are not changed and no object holding a value is written anywhere. For
/// work in progress that must be committed while the agent still works (the reviewer's
/// look). Paths matching `exclude` (gitignore patterns, as for
/// [`crate::commit_workspace_excluding`]: what setup left) are not committed. Returns the
/// commit (`None`: nothing differs from `base`) and the files that hold placeholders (or
/// their earlier version).
#[allow(clippy::too_many_arguments)]
pub async fn commit_workspace_redacted(
    mirror: &Path,
    workspace: &Path,
    scratch_git: &Path,
    base: &str,
    branch: &str,
    message: &str,
    trailers: &[(&str, &str)],
    seed_index: Option<&Path>,
    redactor: &Redactor,
    exclude: &[String],
) -> Result<(Option<String>, Vec<ScrubbedFile>)> {
    crate::check_agent_branch(branch)?;
    let mut cp = Checkpointer::new(mirror, workspace, scratch_git, "commit", base, seed_index)
        .await?
        .with_scrub(redactor.clone(), Vec::new());
    let mut tree = cp.snapshot().await?.tree;
    if !exclude.is_empty() {
        // Drop the excluded paths from the snapshot's index, whichever way it was taken.
        let patterns = scratch_git.join("info").join("errand-commit-exclude");
        tokio::fs::create_dir_all(scratch_git.join("info")).await?;
        tokio::fs::write(&patterns, format!("{}\n", exclude.join("\n"))).await?;
        let from = format!("--exclude-from={}", patterns.display());
        let listed = cp
            .git_io(&["ls-files", "-z", "--cached", "--ignored", &from], None)
            .await?;
        if !listed.is_empty() {
            cp.git_io(
                &["update-index", "-z", "--force-remove", "--stdin"],
                Some(listed),
            )
            .await?;
            tree = cp.git(&["write-tree"]).await?.trim().to_string();
        }
    }
    if tree == cp.head_tree {
        return Ok((None, cp.scrubbed()));
    }
    let msg = crate::commit_message(message, trailers);
    let commit = cp
        .git(&["commit-tree", &tree, "-p", base, "-m", &msg])
        .await?
        .trim()
        .to_string();
    run_ok(
        Some(mirror),
        &["update-ref", &format!("refs/heads/{branch}"), &commit],
    )
    .await?;
    Ok((Some(commit), cp.scrubbed()))
}

/// What differs between an overlay workspace and its lower layer, read from the upper one.
#[derive(Debug, Default)]
struct Changes {
    /// Files of the lower layer (tracked) that changed or are gone.
    update: Vec<Vec<u8>>,
    /// Files and directories (`true`) that are not in the lower layer, in directories that
    /// are.
    new: Vec<NewPath>,
}

/// A path that is not in the lower layer, and whether it is a directory.
type NewPath = (Vec<u8>, bool);

/// NUL-terminated paths, for `--stdin -z`.
fn nul(paths: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::with_capacity(paths.iter().map(|p| p.len() + 1).sum());
    for p in paths {
        v.extend_from_slice(p);
        v.push(0);
    }
    v
}

/// The entries of new directories of the workspace (`true` for a directory). `None` when
/// one holds a `.git` (an embedded repository).
fn list_dirs(ws: &Path, dirs: &[Vec<u8>]) -> std::io::Result<Option<Vec<NewPath>>> {
    let mut out = Vec::new();
    for d in dirs {
        let rel = Path::new(std::ffi::OsStr::from_bytes(d));
        let rd = match std::fs::read_dir(ws.join(rel)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in rd {
            let e = e?;
            if e.file_name() == ".git" {
                return Ok(None);
            }
            out.push((bytes_of(&rel.join(e.file_name())), e.file_type()?.is_dir()));
        }
    }
    Ok(Some(out))
}

fn bytes_of(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

/// Every file under `dir` of the lower layer, as paths relative to the layer.
fn lower_files(lower: &Path, dir: &Path, out: &mut Vec<Vec<u8>>) -> std::io::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(lower.join(&rel))? {
            let e = e?;
            let path = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                stack.push(path);
            } else {
                out.push(bytes_of(&path));
            }
        }
    }
    Ok(())
}

/// Reads what changed in an overlay workspace from its upper layer. Every change to the
/// workspace lands there: a changed or new file is there (copied up), a deleted one leaves a
/// whiteout, a directory deleted and made again is there as an opaque directory (which hides
/// the lower one's entries, so entries of the lower directory that the workspace no longer
/// shows are deletions). `None` when a file became a directory (left to `git add`). The
/// workspace's `.git` is left out.
fn overlay_changes(upper: &Path, lower: &Path, merged: &Path) -> std::io::Result<Option<Changes>> {
    let mut ch = Changes::default();
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let rd = match std::fs::read_dir(upper.join(&rel)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if !rel.as_os_str().is_empty() {
            // Entries of the lower directory the workspace no longer shows were deleted.
            let shown: HashSet<OsString> = std::fs::read_dir(merged.join(&rel))?
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect();
            for e in std::fs::read_dir(lower.join(&rel))? {
                let e = e?;
                if !shown.contains(&e.file_name()) {
                    let path = rel.join(e.file_name());
                    if e.file_type()?.is_dir() {
                        lower_files(lower, &path, &mut ch.update)?;
                    } else {
                        ch.update.push(bytes_of(&path));
                    }
                }
            }
        }
        for entry in rd {
            let entry = entry?;
            let name = entry.file_name();
            if rel.as_os_str().is_empty() && name == ".git" {
                continue;
            }
            let path = rel.join(&name);
            let in_lower = std::fs::symlink_metadata(lower.join(&path)).ok();
            let in_ws = std::fs::symlink_metadata(merged.join(&path)).ok();
            if entry.file_type()?.is_dir() {
                match &in_lower {
                    Some(m) if m.is_dir() => dirs.push(path),
                    // A file that became a directory.
                    Some(_) => return Ok(None),
                    None => ch.new.push((bytes_of(&path), true)),
                }
                continue;
            }
            match &in_lower {
                // A directory replaced (a whiteout, or a file in its place): its files go.
                Some(m) if m.is_dir() => lower_files(lower, &path, &mut ch.update)?,
                // A tracked file changed or deleted.
                Some(_) => ch.update.push(bytes_of(&path)),
                None => {}
            }
            let new_here = in_lower.as_ref().is_none_or(|m| m.is_dir());
            if new_here && in_ws.is_some_and(|m| !m.is_dir()) {
                ch.new.push((bytes_of(&path), false));
            }
        }
    }
    Ok(Some(ch))
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
