//! Checkpoints without secret values: with a [`Redactor`], a [`super::Checkpointer`] never
//! lets git read a changed file itself. It reads each one (never through a symbolic link,
//! never outside the workspace), replaces every form of a secret value the redactor knows
//! with its placeholder, writes the result to a private staging file, and has git hash those
//! files into blobs (`git hash-object -w --stdin-paths`) and point the index at them
//! (`git update-index --index-info`). So the blob in the mirror holds the placeholder while
//! the file in the workspace, which the agent goes on working with, is left as it is; and no
//! object with the value is ever written, not even one that nothing refers to.

use errand_core::redact::Redactor;
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// The largest file read to be checked for secret values. A larger one keeps the version the
/// checkpoint had (the base's, or none) and is listed as a problem.
pub const MAX_SCRUB_FILE: u64 = 256 << 20;

/// A file of a checkpoint that does not hold what the workspace held: secret values replaced
/// by their placeholders, or (with a `problem`) left at the version the checkpoint had
/// before, because it could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubbedFile {
    /// Workspace-relative path.
    pub path: String,
    /// The secrets found (names only).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Why the file was left out of the checkpoint, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// What the index gets for one path.
#[derive(Debug)]
pub(super) enum Staged {
    /// Not a file in the workspace (any more): its entry goes.
    Gone,
    /// A blob made from `file` (the content, scrubbed), with its git mode.
    Blob { mode: &'static str, file: PathBuf },
    /// The entry stays as it is (the file could not be checked).
    Keep,
}

#[derive(Debug)]
pub(super) struct Prepared {
    pub path: Vec<u8>,
    pub staged: Staged,
    /// Set when the checkpoint's version differs from the workspace's.
    pub found: Option<ScrubbedFile>,
}

/// One path of the workspace, as read for a checkpoint.
enum Entry {
    Gone,
    Link(Vec<u8>),
    File { exec: bool, data: Vec<u8> },
    Problem(String),
}

fn is_not_there(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// Reads `rel` under `root` as git would see it: a path with a symbolic link or a file among
/// its leading directories does not exist; the file itself is opened without following a
/// link, and only if what was opened is the file that was looked at, inside `canon` (the
/// workspace's canonical path), even if something swaps a directory for a link meanwhile.
fn read_path(root: &Path, canon: &Path, rel: &Path) -> Entry {
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Entry::Problem("not a plain relative path".into());
    }
    let mut dir = root.to_path_buf();
    let parts: Vec<&OsStr> = rel.iter().collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Entry::Gone,
            Err(e) if is_not_there(&e) => return Entry::Gone,
            Err(e) => return Entry::Problem(format!("it could not be read: {e}")),
        }
    }
    let full = root.join(rel);
    let meta = match std::fs::symlink_metadata(&full) {
        Ok(m) => m,
        Err(e) if is_not_there(&e) => return Entry::Gone,
        Err(e) => return Entry::Problem(format!("it could not be read: {e}")),
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        return match std::fs::read_link(&full) {
            Ok(target) => Entry::Link(target.as_os_str().as_bytes().to_vec()),
            Err(e) if is_not_there(&e) => Entry::Gone,
            Err(e) => Entry::Problem(format!("its link could not be read: {e}")),
        };
    }
    if !ft.is_file() {
        // A directory (its files are listed on their own), a socket, a FIFO: not a blob.
        return Entry::Gone;
    }
    if meta.len() > MAX_SCRUB_FILE {
        return Entry::Problem(format!(
            "it is larger than {} MiB, too large to check for secret values",
            MAX_SCRUB_FILE >> 20
        ));
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&full)
    {
        Ok(f) => f,
        Err(e) if is_not_there(&e) => return Entry::Gone,
        Err(e) => return Entry::Problem(format!("it could not be read: {e}")),
    };
    let changed = || Entry::Problem("it changed while it was read".into());
    match file.metadata() {
        Ok(m) if m.is_file() && m.dev() == meta.dev() && m.ino() == meta.ino() => {}
        Ok(_) => return changed(),
        Err(e) => return Entry::Problem(format!("it could not be read: {e}")),
    }
    {
        use std::os::fd::AsRawFd;
        let fd = format!("/proc/self/fd/{}", file.as_raw_fd());
        // Without /proc the device and inode check above stands alone.
        if let Ok(opened) = std::fs::read_link(fd)
            && !opened.starts_with(canon)
        {
            return changed();
        }
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    if let Err(e) = file.take(MAX_SCRUB_FILE + 1).read_to_end(&mut data) {
        return Entry::Problem(format!("it could not be read: {e}"));
    }
    if data.len() as u64 > MAX_SCRUB_FILE {
        return changed();
    }
    Entry::File {
        exec: meta.mode() & 0o100 != 0,
        data,
    }
}

/// Reads the workspace files at `paths` (relative to `root`), replaces secret values in
/// their content (and in link targets), and writes what the checkpoint should hold into
/// `stage` (made empty first), one file per blob. Blocking.
pub(super) fn prepare(
    root: &Path,
    stage: &Path,
    redactor: &Redactor,
    paths: &[Vec<u8>],
) -> std::io::Result<Vec<Prepared>> {
    if stage.exists() {
        std::fs::remove_dir_all(stage)?;
    }
    std::fs::create_dir_all(stage)?;
    let stage = stage.canonicalize()?;
    let canon = root.canonicalize()?;
    let mut out = Vec::with_capacity(paths.len());
    for (i, p) in paths.iter().enumerate() {
        let shown = String::from_utf8_lossy(p).into_owned();
        let in_name = redactor.find(p);
        if !in_name.is_empty() {
            out.push(Prepared {
                path: p.clone(),
                staged: Staged::Keep,
                found: Some(ScrubbedFile {
                    path: shown,
                    secrets: in_name.into_iter().map(str::to_string).collect(),
                    problem: Some("its path holds a secret value".into()),
                }),
            });
            continue;
        }
        let (mode, data) = match read_path(root, &canon, Path::new(OsStr::from_bytes(p))) {
            Entry::Gone => {
                out.push(Prepared {
                    path: p.clone(),
                    staged: Staged::Gone,
                    found: None,
                });
                continue;
            }
            Entry::Problem(why) => {
                out.push(Prepared {
                    path: p.clone(),
                    staged: Staged::Keep,
                    found: Some(ScrubbedFile {
                        path: shown,
                        secrets: Vec::new(),
                        problem: Some(why),
                    }),
                });
                continue;
            }
            Entry::Link(target) => ("120000", target),
            Entry::File { exec: true, data } => ("100755", data),
            Entry::File { exec: false, data } => ("100644", data),
        };
        let secrets: Vec<String> = redactor
            .find(&data)
            .into_iter()
            .map(str::to_string)
            .collect();
        let file = stage.join(i.to_string());
        let mut f = std::fs::File::create(&file)?;
        if secrets.is_empty() {
            f.write_all(&data)?;
        } else {
            f.write_all(&redactor.redact_bytes(&data))?;
        }
        drop(data);
        out.push(Prepared {
            path: p.clone(),
            staged: Staged::Blob { mode, file },
            found: (!secrets.is_empty()).then_some(ScrubbedFile {
                path: shown,
                secrets,
                problem: None,
            }),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nothing_through_a_link_or_outside_the_workspace() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ws");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("dir")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("host.txt"), "host secret-value-123\n").unwrap();
        std::fs::write(root.join("dir/a.txt"), "a secret-value-123\n").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.join("host.txt"), root.join("link.txt")).unwrap();
        let red = Redactor::new([("TOKEN", "secret-value-123")]);
        let paths: Vec<Vec<u8>> = [
            "dir/a.txt",
            "escape/host.txt",
            "link.txt",
            "missing.txt",
            "dir",
            "../outside/host.txt",
            "secret-value-123.txt",
        ]
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
        let stage = tmp.path().join("stage");
        let got = prepare(&root, &stage, &red, &paths).unwrap();
        let content = |p: &Prepared| match &p.staged {
            Staged::Blob { mode, file } => Some((*mode, std::fs::read(file).unwrap())),
            _ => None,
        };
        assert_eq!(
            content(&got[0]),
            Some(("100644", b"a [REDACTED:TOKEN]\n".to_vec()))
        );
        assert_eq!(got[0].found.as_ref().unwrap().secrets, ["TOKEN"]);
        // A file under a linked directory does not exist for git, and is not read.
        assert!(matches!(got[1].staged, Staged::Gone), "{:?}", got[1]);
        // A link is its target, never the file it points to.
        assert_eq!(
            content(&got[2]),
            Some((
                "120000",
                outside.join("host.txt").as_os_str().as_bytes().to_vec()
            ))
        );
        assert!(got[2].found.is_none());
        assert!(matches!(got[3].staged, Staged::Gone));
        assert!(matches!(got[4].staged, Staged::Gone));
        assert!(matches!(got[5].staged, Staged::Keep));
        assert!(got[5].found.as_ref().unwrap().problem.is_some());
        assert!(matches!(got[6].staged, Staged::Keep));
        assert_eq!(got[6].found.as_ref().unwrap().secrets, ["TOKEN"]);
        // The workspace's file is as it was.
        assert_eq!(
            std::fs::read_to_string(root.join("dir/a.txt")).unwrap(),
            "a secret-value-123\n"
        );
    }
}
