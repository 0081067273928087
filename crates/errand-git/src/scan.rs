//! What a setup script left in a workspace, and what keys its cached result.
//!
//! Everything here reads the workspace through a fresh git directory (no hooks, no fsmonitor,
//! no system, global or workspace config), so nothing a script wrote into the workspace's own
//! `.git` runs or redirects anything on the host. Git never follows a symlink into a directory
//! while it walks, so every path listed is a real path inside the workspace.

use crate::{Result, copy_index, run_ok, scratch_git_command};
use std::path::Path;

/// One entry of a commit's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    pub path: String,
    /// `100644`, `100755`, `120000` (symlink), `040000` (directory), …
    pub mode: String,
    /// The object id: a hash of the content, so it keys caches by content.
    pub oid: String,
}

/// The entries of `commit` at `paths` (relative to the repository root; a leading `./` is
/// dropped; absolute paths and `..` never match). Paths not in the tree are left out.
pub async fn tree_entries(repo: &Path, commit: &str, paths: &[String]) -> Result<Vec<TreeEntry>> {
    let wanted: Vec<String> = paths.iter().filter_map(|p| normalize(p)).collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec!["ls-tree", "-z", "--full-tree", commit, "--"];
    args.extend(wanted.iter().map(String::as_str));
    let out = run_ok(Some(repo), &args).await?;
    let mut entries = Vec::new();
    for rec in out.split('\0').filter(|r| !r.is_empty()) {
        // `<mode> SP <type> SP <oid> TAB <path>`
        let Some((meta, path)) = rec.split_once('\t') else {
            continue;
        };
        let mut f = meta.split(' ');
        if let (Some(mode), Some(_kind), Some(oid)) = (f.next(), f.next(), f.next()) {
            // ls-tree matches by prefix of whole components; keep exact paths only.
            if wanted.iter().any(|w| w == path) {
                entries.push(TreeEntry {
                    path: path.to_string(),
                    mode: mode.to_string(),
                    oid: oid.to_string(),
                });
            }
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

/// `./a/b` → `a/b`; `None` for empty, absolute or `..` paths.
fn normalize(p: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    (!p.starts_with('/') && !parts.is_empty()).then(|| parts.join("/"))
}

/// What a command changed in a workspace, compared with `commit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkspaceScan {
    /// Untracked paths that no ignore rule covers; a directory that holds nothing tracked is
    /// one entry ending in `/`.
    pub untracked: Vec<String>,
    /// Untracked paths that `.gitignore` covers (`node_modules/`, `target/`, …).
    pub ignored: Vec<String>,
    /// Tracked files whose content or mode changed, or that were deleted.
    pub modified: Vec<String>,
    /// Paths left out because they are not UTF-8 or hold a newline.
    pub unusable: usize,
}

/// Lists what is in `workspace` beyond `commit`, through a fresh git directory at
/// `scratch_git` (removed afterwards). `seed_index` (the base checkout's index, matching
/// `commit`) spares rehashing unchanged files.
pub async fn scan_workspace(
    mirror: &Path,
    workspace: &Path,
    scratch_git: &Path,
    commit: &str,
    seed_index: Option<&Path>,
) -> Result<WorkspaceScan> {
    let result = scan_in(mirror, workspace, scratch_git, commit, seed_index).await;
    let _ = tokio::fs::remove_dir_all(scratch_git).await;
    result
}

async fn scan_in(
    mirror: &Path,
    workspace: &Path,
    scratch_git: &Path,
    commit: &str,
    seed_index: Option<&Path>,
) -> Result<WorkspaceScan> {
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
    let index = scratch_git.join("index");
    let seeded = match seed_index {
        Some(seed) if seed.is_file() => copy_index(seed, &index).is_ok(),
        _ => false,
    };
    let git = |args: &[&str]| {
        let mut c = scratch_git_command(None, scratch_git, workspace, &index);
        c.args([
            "-c",
            "core.untrackedCache=false",
            "-c",
            "core.excludesFile=/dev/null",
        ])
        .args(args);
        crate::run_io(c, args.join(" "), None)
    };
    if !seeded {
        git(&["read-tree", commit]).await?;
    }
    let mut scan = WorkspaceScan::default();
    let mut paths = |raw: Vec<u8>| -> Vec<String> {
        let mut v = Vec::new();
        for p in raw.split(|b| *b == 0).filter(|p| !p.is_empty()) {
            match std::str::from_utf8(p) {
                Ok(s) if !s.contains('\n') && !s.contains('\r') => v.push(s.to_string()),
                _ => scan.unusable += 1,
            }
        }
        v
    };
    let untracked = paths(
        git(&[
            "ls-files",
            "-z",
            "--others",
            "--exclude-standard",
            "--directory",
        ])
        .await?,
    );
    let ignored = paths(
        git(&[
            "ls-files",
            "-z",
            "--others",
            "--ignored",
            "--exclude-standard",
            "--directory",
        ])
        .await?,
    );
    // Refreshing only updates the stat data of this scratch index; with -q it goes on past
    // changed files, which diff-files then lists.
    let _ = git(&["update-index", "-q", "--refresh"]).await;
    let modified = paths(git(&["diff-files", "--name-only", "-z"]).await?);
    scan.untracked = untracked;
    scan.ignored = ignored;
    scan.modified = modified;
    Ok(scan)
}

/// The gitignore pattern that matches exactly `path` (relative to the root; a trailing `/`
/// keeps it to a directory), with glob characters escaped.
pub fn exclude_pattern(path: &str) -> String {
    let (body, dir) = match path.strip_suffix('/') {
        Some(b) => (b, "/"),
        None => (path, ""),
    };
    let mut out = String::from("/");
    for c in body.chars() {
        if matches!(c, '\\' | '*' | '?' | '[' | ']' | '!' | '#') {
            out.push('\\');
        }
        out.push(c);
    }
    // Trailing spaces are dropped by git unless escaped.
    let trimmed = out.trim_end_matches(' ').len();
    let spaces = out.len() - trimmed;
    out.truncate(trimmed);
    for _ in 0..spaces {
        out.push_str("\\ ");
    }
    out.push_str(dir);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized() {
        assert_eq!(
            normalize("./scripts/setup.sh").as_deref(),
            Some("scripts/setup.sh")
        );
        assert_eq!(normalize("Cargo.lock").as_deref(), Some("Cargo.lock"));
        assert_eq!(normalize("a//b/").as_deref(), Some("a/b"));
        assert_eq!(normalize("/etc/passwd"), None);
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("a/../../x"), None);
        assert_eq!(normalize("."), None);
    }

    #[test]
    fn patterns_match_one_path_literally() {
        assert_eq!(exclude_pattern("gen/out.txt"), "/gen/out.txt");
        assert_eq!(exclude_pattern("node_modules/"), "/node_modules/");
        assert_eq!(exclude_pattern("a*b?[c].txt"), "/a\\*b\\?\\[c\\].txt");
        assert_eq!(exclude_pattern("!keep"), "/\\!keep");
        assert_eq!(exclude_pattern("#x"), "/\\#x");
        assert_eq!(exclude_pattern("trail  "), "/trail\\ \\ ");
    }
}
