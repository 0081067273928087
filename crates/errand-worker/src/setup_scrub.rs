//! Secret values that the setup phase wrote into files.
//!
//! Setup (and maintenance) get every secret of the environment; the agent only those with
//! `expose_to_agent`. A setup that writes a secret into a file (`~/.npmrc`, `~/.netrc`, a
//! `.env` in the workspace) would hand it to the agent's box through its outputs, and the
//! setup cache would keep it at rest. So once the phase's box is gone, and before anything is
//! cached or handed on, every file the phase created or changed has the values of the secrets
//! that are *not* exposed replaced with their placeholders, in place:
//!
//! - in the workspace: with an overlay workspace, the files of its upper layer (exactly what
//!   the phase wrote, `.git` included but its objects); otherwise the untracked, ignored and
//!   changed paths the scan found, and `.git` (but its objects). Nothing is followed through a
//!   symbolic link ([`crate::redact::scrub_files`]). A path that setup created whose *name*
//!   holds a value is removed.
//! - in the carried `$HOME`: the tar archive made inside the box is rewritten on the host as a
//!   stream of bytes, never unpacked ([`scrub_tar`]): a regular file's content is replaced
//!   (its size and the header's checksum follow, and a pax `size` record), an entry whose
//!   name, link target or other header fields hold a value is left out.
//!
//! Files larger than [`MAX_SCRUB_FILE`] are not read; they are listed with a problem.

use crate::redact::MAX_SCRUB_FILE;
use errand_core::redact::{Redactor, placeholder};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// A file of the setup phase's outputs that held a value of a secret not exposed to the
/// agent (or could not be checked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupScrubbed {
    /// `~/…` for a file of the carried `$HOME`, else workspace-relative; any value in it
    /// replaced by its placeholder.
    pub path: String,
    /// The secrets found (names only).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Its name (or link target, or another header field) held a value: it was removed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// Why it could not be checked (no `secrets`) or scrubbed (with `secrets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl SetupScrubbed {
    /// A file whose values could not be replaced: the agent's box must not get it.
    pub fn failed(&self) -> bool {
        !self.secrets.is_empty() && self.problem.is_some()
    }

    /// The notice for this file; `cached`: it was found when the restored snapshot was made.
    pub fn notice(&self, cached: bool) -> String {
        let names = self.secrets.join(", ");
        let (secret, them) = if self.secrets.len() == 1 {
            ("secret", "it")
        } else {
            ("secrets", "them")
        };
        let when = if cached {
            " (when the cached snapshot was made)"
        } else {
            ""
        };
        let keep = format!("set expose_to_agent = true for {names} to keep {them}");
        match (&self.problem, self.removed) {
            (Some(p), _) if self.secrets.is_empty() => format!(
                "setup wrote {}{when}, which was not checked for secret values: {p}",
                self.path
            ),
            (Some(p), _) => format!(
                "setup wrote {secret} {names} into {}, and {them} could not be replaced ({p}); the agent's box must not get it",
                self.path
            ),
            (None, true) => format!(
                "setup created {}{when}, whose name holds the value of {secret} {names}; it is removed, so the agent's box does not get it ({keep})",
                self.path
            ),
            (None, false) => format!(
                "setup wrote {secret} {names} into {}{when}; the agent's box gets {} there ({keep})",
                self.path,
                self.secrets
                    .iter()
                    .map(|n| placeholder(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

fn names(found: Vec<&str>) -> Vec<String> {
    found.into_iter().map(str::to_string).collect()
}

// -------------------------------------------------------------------------------------------
// The workspace
// -------------------------------------------------------------------------------------------

/// Whether `rel` is `.git/objects` or below (compressed objects: not scanned).
fn is_git_objects(rel: &Path) -> bool {
    rel.starts_with(".git/objects")
}

/// Regular files, symbolic links and directories under `root/rel` (and `rel` itself), as
/// paths relative to `root`; never through a symbolic link. Skips `.git/objects`, and (in an
/// overlay's upper layer) whiteouts, which are character devices.
fn walk(root: &Path, rel: PathBuf, out: &mut Vec<PathBuf>) {
    let mut stack = vec![rel];
    while let Some(rel) = stack.pop() {
        if is_git_objects(&rel) {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(root.join(&rel)) else {
            continue;
        };
        let ft = m.file_type();
        if ft.is_dir()
            && let Ok(rd) = std::fs::read_dir(root.join(&rel))
        {
            for e in rd.flatten() {
                stack.push(rel.join(e.file_name()));
            }
        }
        if (ft.is_dir() || ft.is_file() || ft.is_symlink()) && !rel.as_os_str().is_empty() {
            out.push(rel);
        }
    }
}

/// A scan's path (`dir/` for a directory) as a plain relative path; `None` if it is not one.
fn plain(p: &str) -> Option<PathBuf> {
    let p = p.trim_end_matches('/');
    let ok = !p.is_empty()
        && !p.starts_with('/')
        && !p.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    ok.then(|| PathBuf::from(p))
}

/// The workspace files (and directories, for their names) the phase created or changed: those
/// of the overlay's `upper` layer when there is one, else those under the scan's untracked,
/// ignored and changed paths; `.git` in both cases (but its objects). Blocking.
pub fn workspace_files(
    ws: &Path,
    upper: Option<&Path>,
    scan: &errand_git::scan::WorkspaceScan,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    match upper {
        Some(upper) => walk(upper, PathBuf::new(), &mut out),
        None => {
            let roots = scan
                .untracked
                .iter()
                .chain(&scan.ignored)
                .chain(&scan.modified)
                .filter_map(|p| plain(p))
                .chain(std::iter::once(PathBuf::from(".git")));
            for r in roots {
                walk(ws, r, &mut out);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The shortest leading part of `rel` (whole components) that holds a value, if any.
fn named_prefix(redactor: &Redactor, rel: &Path) -> Option<(PathBuf, Vec<String>)> {
    let mut prefix = PathBuf::new();
    for c in rel.components() {
        prefix.push(c);
        let found = redactor.find(prefix.as_os_str().as_bytes());
        if !found.is_empty() {
            return Some((prefix, names(found)));
        }
    }
    None
}

/// Replaces the values `redactor` knows in the workspace files at `paths` (relative to `ws`),
/// in place, and removes what setup created under a name holding a value (`tracked`: the
/// scan's changed tracked files, whose names come from the repository and stay). Blocking.
pub fn scrub_workspace(
    ws: &Path,
    redactor: &Redactor,
    paths: Vec<PathBuf>,
    tracked: &[String],
) -> Vec<SetupScrubbed> {
    let mut out = Vec::new();
    if redactor.is_empty() {
        return out;
    }
    let Ok(canon) = ws.canonicalize() else {
        return out;
    };
    let mut removed: Vec<PathBuf> = Vec::new();
    let mut rest = Vec::with_capacity(paths.len());
    for p in paths {
        let is_tracked = tracked.iter().any(|t| Path::new(t) == p);
        let prefix = (!is_tracked).then(|| named_prefix(redactor, &p)).flatten();
        let Some((prefix, secrets)) = prefix else {
            rest.push(p);
            continue;
        };
        if removed.iter().any(|r| prefix.starts_with(r)) {
            continue;
        }
        let shown = redactor.redact(&prefix.display().to_string()).into_owned();
        let full = ws.join(&prefix);
        let inside = full
            .parent()
            .and_then(|d| d.canonicalize().ok())
            .is_some_and(|d| d.starts_with(&canon));
        let done = if !inside {
            Err("it is not inside the workspace".to_string())
        } else {
            match std::fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&full).map_err(|e| e.to_string()),
                Ok(_) => std::fs::remove_file(&full).map_err(|e| e.to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        };
        out.push(SetupScrubbed {
            path: shown,
            secrets,
            removed: done.is_ok(),
            problem: done.err().map(|e| format!("removing it failed: {e}")),
        });
        removed.push(prefix);
    }
    for s in crate::redact::scrub_files(ws, redactor, &rest) {
        out.push(SetupScrubbed {
            path: redactor.redact(&s.path).into_owned(),
            secrets: s.secrets,
            removed: false,
            problem: s.problem,
        });
    }
    out
}

// -------------------------------------------------------------------------------------------
// The carried $HOME: a tar archive, rewritten as bytes
// -------------------------------------------------------------------------------------------

const BLOCK: usize = 512;
/// The largest GNU long name, long link or pax header read.
const MAX_META: u64 = 1 << 20;

type Header = [u8; BLOCK];

fn padding(n: u64) -> u64 {
    n.div_ceil(BLOCK as u64) * BLOCK as u64 - n
}

/// A numeric header field: octal text, or GNU base-256 (high bit of the first byte set).
fn parse_num(field: &[u8]) -> Option<u64> {
    if let Some(&first) = field.first()
        && first & 0x80 != 0
    {
        if first == 0xff {
            return None;
        }
        let mut v = u64::from(first & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let digits = field
        .iter()
        .skip_while(|b| **b == b' ' || **b == 0)
        .take_while(|b| **b != b' ' && **b != 0);
    let mut v = 0u64;
    for &b in digits {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

fn checksum(h: &Header) -> u64 {
    h.iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum()
}

fn set_checksum(h: &mut Header) {
    let sum = checksum(h);
    h[148..156].copy_from_slice(format!("{:06o}\0 ", sum & 0o777777).as_bytes());
}

fn set_size(h: &mut Header, n: u64) {
    if n < 8u64.pow(11) {
        h[124..136].copy_from_slice(format!("{n:011o}\0").as_bytes());
    } else {
        h[124..136].fill(0);
        h[124] = 0x80;
        for (i, b) in n.to_be_bytes().iter().enumerate() {
            h[128 + i] = *b;
        }
    }
}

/// A NUL-terminated header field.
fn cstr(f: &[u8]) -> &[u8] {
    let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
    &f[..end]
}

/// pax records `LEN key=value\n`.
fn pax_records(data: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|b| *b == 0) {
            break;
        }
        let sp = rest.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return None;
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec.iter().position(|b| *b == b'=')?;
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Some(out)
}

fn pax_build(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        // " key=value\n" plus the length's own digits.
        let body = k.len() + v.len() + 3;
        let mut len = body + 1;
        while body + len.to_string().len() != len {
            len = body + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// What comes before an entry: GNU long names and links, pax extended headers.
enum Piece {
    Raw(Vec<u8>),
    Pax {
        header: Box<Header>,
        data: Vec<u8>,
        records: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

impl Piece {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Piece::Raw(b) => b.clone(),
            Piece::Pax { header, data, .. } => {
                let mut v = header.to_vec();
                v.extend_from_slice(data);
                v
            }
        }
    }

    /// Written out; a pax header's `size` record set to `size` when given.
    fn write(&self, w: &mut impl Write, size: Option<u64>) -> std::io::Result<()> {
        match (self, size) {
            (
                Piece::Pax {
                    header, records, ..
                },
                Some(n),
            ) if records.iter().any(|(k, _)| k == b"size") => {
                let records: Vec<(Vec<u8>, Vec<u8>)> = records
                    .iter()
                    .map(|(k, v)| {
                        if k == b"size" {
                            (k.clone(), n.to_string().into_bytes())
                        } else {
                            (k.clone(), v.clone())
                        }
                    })
                    .collect();
                let data = pax_build(&records);
                let mut h = **header;
                set_size(&mut h, data.len() as u64);
                set_checksum(&mut h);
                w.write_all(&h)?;
                w.write_all(&data)?;
                w.write_all(&vec![0; padding(data.len() as u64) as usize])
            }
            (Piece::Raw(b), _) => w.write_all(b),
            (Piece::Pax { header, data, .. }, _) => {
                w.write_all(&header[..])?;
                w.write_all(data)?;
                w.write_all(&vec![0; padding(data.len() as u64) as usize])
            }
        }
    }
}

/// Reads one block; `None` at the end of the input.
fn read_block(r: &mut impl Read) -> Result<Option<Header>, String> {
    let mut h = [0u8; BLOCK];
    let mut got = 0;
    while got < BLOCK {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err("the archive ends inside a header".into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the archive: {e}")),
        }
    }
    Ok(Some(h))
}

fn read_exact_vec(r: &mut impl Read, n: u64) -> Result<Vec<u8>, String> {
    let mut v = Vec::with_capacity(n as usize);
    r.take(n)
        .read_to_end(&mut v)
        .map_err(|e| format!("reading the archive: {e}"))?;
    if v.len() as u64 != n {
        return Err("the archive ends inside an entry".into());
    }
    Ok(v)
}

fn skip(r: &mut impl Read, n: u64) -> Result<(), String> {
    let copied = std::io::copy(&mut r.take(n), &mut std::io::sink())
        .map_err(|e| format!("reading the archive: {e}"))?;
    if copied != n {
        return Err("the archive ends inside an entry".into());
    }
    Ok(())
}

/// `~/name` for an entry of the archive of `$HOME` (made with `-C "$HOME" .`).
fn home_path(name: &[u8], redactor: &Redactor) -> String {
    let name = String::from_utf8_lossy(name);
    let rel = name.trim_start_matches("./").trim_end_matches('/');
    let shown = if rel.is_empty() || rel == "." {
        "~".to_string()
    } else {
        format!("~/{rel}")
    };
    redactor.redact_string(shown)
}

/// Rewrites the tar archive at `path` (the carried `$HOME`) with the values `redactor` knows
/// replaced: see the module docs. The new archive replaces the old one by a rename (never
/// written in place: the old one may be a hard link into the cache), and only when something
/// changed. An archive it cannot read is an error. Blocking.
pub fn scrub_tar(path: &Path, redactor: &Redactor) -> Result<Vec<SetupScrubbed>, String> {
    let mut found = Vec::new();
    if redactor.is_empty() {
        return Ok(found);
    }
    let input = std::fs::File::open(path).map_err(|e| format!("opening the archive: {e}"))?;
    let mut r = std::io::BufReader::new(input);
    let tmp = path.with_extension("tar.scrub");
    let out =
        std::fs::File::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let mut w = std::io::BufWriter::new(out);
    let result = rewrite(&mut r, &mut w, redactor, &mut found).and_then(|changed| {
        w.flush()
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        Ok(changed)
    });
    drop(w);
    match result {
        Ok(true) => std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("replacing the archive: {e}")
        })?,
        Ok(false) => {
            let _ = std::fs::remove_file(&tmp);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    }
    Ok(found)
}

/// The rewrite of [`scrub_tar`]; returns whether the output differs from the input.
fn rewrite(
    r: &mut impl Read,
    w: &mut impl Write,
    redactor: &Redactor,
    found: &mut Vec<SetupScrubbed>,
) -> Result<bool, String> {
    let werr = |e: std::io::Error| format!("writing the archive: {e}");
    let mut changed = false;
    // GNU long names and links and pax headers, waiting for the entry they describe.
    let mut pieces: Vec<Piece> = Vec::new();
    let mut long_name: Option<Vec<u8>> = None;
    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    loop {
        let Some(mut h) = read_block(r)? else {
            if !pieces.is_empty() {
                return Err("the archive ends after an extended header".into());
            }
            // No end-of-archive blocks: they are added.
            w.write_all(&[0u8; 2 * BLOCK]).map_err(werr)?;
            return Ok(true);
        };
        if h.iter().all(|b| *b == 0) {
            if !pieces.is_empty() {
                return Err("the archive ends after an extended header".into());
            }
            // The end. Only zeros are expected after it, and nothing else is carried.
            let mut rest = Vec::new();
            r.take(64 << 10)
                .read_to_end(&mut rest)
                .map_err(|e| format!("reading the archive: {e}"))?;
            let mut more = [0u8; 1];
            if rest.iter().any(|b| *b != 0) || matches!(r.read(&mut more), Ok(n) if n > 0) {
                changed = true;
            }
            w.write_all(&[0u8; 2 * BLOCK]).map_err(werr)?;
            return Ok(changed);
        }
        if parse_num(&h[148..156]) != Some(checksum(&h)) {
            return Err("a header's checksum is wrong (not a tar archive?)".into());
        }
        let mut size = parse_num(&h[124..136]).ok_or("a header's size is unreadable")?;
        let kind = h[156];
        if matches!(kind, b'L' | b'K' | b'x') {
            if size > MAX_META {
                return Err("an extended header is too large".into());
            }
            let data = read_exact_vec(r, size)?;
            skip(r, padding(size))?;
            if kind == b'x' {
                let records = pax_records(&data).ok_or("a pax extended header is unreadable")?;
                pax.extend(records.iter().cloned());
                pieces.push(Piece::Pax {
                    header: Box::new(h),
                    data,
                    records,
                });
            } else {
                if kind == b'L' {
                    long_name = Some(cstr(&data).to_vec());
                }
                let mut raw = h.to_vec();
                raw.extend_from_slice(&data);
                raw.resize(raw.len() + padding(size) as usize, 0);
                pieces.push(Piece::Raw(raw));
            }
            continue;
        }
        // An entry (a global pax header counts as one: it stands alone).
        let pax_get = |key: &[u8]| {
            pax.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let name = pax_get(b"path").or(long_name.take()).unwrap_or_else(|| {
            let (name, prefix) = (cstr(&h[..100]), cstr(&h[345..500]));
            if &h[257..263] == b"ustar\0" && !prefix.is_empty() {
                [prefix, b"/", name].concat()
            } else {
                name.to_vec()
            }
        });
        // A pax `size` stands for the header's (which can't hold more than 8 GiB).
        if let Some(v) = pax_get(b"size") {
            size = std::str::from_utf8(&v)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or("a pax size is unreadable")?;
        }
        let padded = size + padding(size);
        let shown = home_path(&name, redactor);
        let mut meta: Vec<u8> = pieces.iter().flat_map(Piece::bytes).collect();
        meta.extend_from_slice(&h);
        let in_meta = redactor.find(&meta);
        let before = std::mem::take(&mut pieces);
        pax.clear();
        if !in_meta.is_empty() {
            // Its name, link target or another header field holds a value: left out.
            skip(r, padded)?;
            found.push(SetupScrubbed {
                path: shown,
                secrets: names(in_meta),
                removed: true,
                problem: None,
            });
            changed = true;
            continue;
        }
        if size > MAX_SCRUB_FILE {
            for p in &before {
                p.write(w, None).map_err(werr)?;
            }
            w.write_all(&h).map_err(werr)?;
            let n = std::io::copy(&mut r.take(padded), w).map_err(werr)?;
            if n != padded {
                return Err("the archive ends inside an entry".into());
            }
            found.push(SetupScrubbed {
                path: shown,
                secrets: Vec::new(),
                removed: false,
                problem: Some(format!(
                    "it is larger than {} MiB, too large to check",
                    MAX_SCRUB_FILE >> 20
                )),
            });
            continue;
        }
        let data = read_exact_vec(r, size)?;
        skip(r, padding(size))?;
        let secrets = redactor.find(&data);
        let (data, new_size) = if secrets.is_empty() {
            (data, None)
        } else if matches!(kind, b'0' | 0 | b'7') {
            let new = redactor.redact_bytes(&data).into_owned();
            let n = new.len() as u64;
            set_size(&mut h, n);
            set_checksum(&mut h);
            found.push(SetupScrubbed {
                path: shown,
                secrets: names(secrets),
                removed: false,
                problem: None,
            });
            changed = true;
            (new, Some(n))
        } else {
            // Not a plain file (a sparse one, a vendor extension): its data can't be
            // rewritten, so it is left out.
            found.push(SetupScrubbed {
                path: shown,
                secrets: names(secrets),
                removed: true,
                problem: None,
            });
            changed = true;
            continue;
        };
        for p in &before {
            p.write(w, new_size).map_err(werr)?;
        }
        w.write_all(&h).map_err(werr)?;
        w.write_all(&data).map_err(werr)?;
        w.write_all(&vec![0; padding(data.len() as u64) as usize])
            .map_err(werr)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const HIDDEN: &str = "hidden-Npm-7f3e2d1c0b";

    fn red() -> Redactor {
        Redactor::new([("NPM_TOKEN", HIDDEN)])
    }

    fn tar_available() -> bool {
        Command::new("tar").arg("--version").output().is_ok()
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn b64(v: &[u8]) -> String {
        let mut child = Command::new("base64")
            .arg("-w0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(v).unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    }

    /// A home directory with the value in a file, in a long-named file, base64-encoded, in a
    /// file name and a link target, next to clean files; archived by the system's tar in
    /// `format`.
    fn home_archive(dir: &Path, format: &str) -> PathBuf {
        let home = dir.join(format!("home-{format}"));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(
            home.join(".npmrc"),
            format!("//registry.example.test/:_authToken={HIDDEN}\n"),
        )
        .unwrap();
        // Longer than a header's name field: a GNU long name, a pax path, a ustar prefix.
        std::fs::create_dir_all(home.join(".config").join("d".repeat(95))).unwrap();
        std::fs::write(
            home.join(".config").join("d".repeat(95)).join("x.txt"),
            format!("token {HIDDEN} again {HIDDEN}"),
        )
        .unwrap();
        std::fs::write(home.join(".b64"), b64(HIDDEN.as_bytes())).unwrap();
        std::fs::write(home.join(format!("cache-{HIDDEN}")), "nothing\n").unwrap();
        std::os::unix::fs::symlink(format!("/tmp/{HIDDEN}"), home.join("link")).unwrap();
        std::fs::write(home.join("clean.txt"), "clean\n").unwrap();
        std::fs::write(home.join("big-clean.bin"), vec![7u8; 3000]).unwrap();
        let tar = dir.join(format!("home-{format}.tar"));
        run(Command::new("tar")
            .arg(format!("--format={format}"))
            .args(["--numeric-owner", "-C"])
            .arg(&home)
            .args(["-cf"])
            .arg(&tar)
            .arg("."));
        tar
    }

    #[test]
    fn a_tar_of_home_is_rewritten_without_values_and_stays_readable() {
        if !tar_available() {
            return;
        }
        for format in ["gnu", "pax", "ustar"] {
            let tmp = tempfile::tempdir().unwrap();
            let tar = home_archive(tmp.path(), format);
            // A hard link to the archive (as the cache holds) must keep the old bytes.
            let cached = tmp.path().join("cached.tar");
            std::fs::hard_link(&tar, &cached).unwrap();
            let before = std::fs::read(&cached).unwrap();
            let found = scrub_tar(&tar, &red()).unwrap();
            assert_eq!(std::fs::read(&cached).unwrap(), before, "{format}");
            let mut paths: Vec<(String, bool)> =
                found.iter().map(|f| (f.path.clone(), f.removed)).collect();
            paths.sort();
            let long = format!("~/.config/{}/x.txt", "d".repeat(95));
            let want = vec![
                ("~/.b64".to_string(), false),
                (long.clone(), false),
                ("~/.npmrc".to_string(), false),
                ("~/cache-[REDACTED:NPM_TOKEN]".to_string(), true),
                ("~/link".to_string(), true),
            ];
            assert_eq!(paths, want, "{format}");
            assert!(found.iter().all(|f| f.secrets == ["NPM_TOKEN"]));
            // The system's tar reads it, and every file is there but the removed ones.
            let out = tmp.path().join(format!("out-{format}"));
            std::fs::create_dir_all(&out).unwrap();
            run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&out));
            assert_eq!(
                std::fs::read_to_string(out.join(".npmrc")).unwrap(),
                "//registry.example.test/:_authToken=[REDACTED:NPM_TOKEN]\n"
            );
            assert_eq!(
                std::fs::read_to_string(out.join(".b64")).unwrap(),
                "[REDACTED:NPM_TOKEN]"
            );
            assert_eq!(
                std::fs::read_to_string(out.join(".config").join("d".repeat(95)).join("x.txt"))
                    .unwrap(),
                "token [REDACTED:NPM_TOKEN] again [REDACTED:NPM_TOKEN]"
            );
            assert_eq!(
                std::fs::read_to_string(out.join("clean.txt")).unwrap(),
                "clean\n"
            );
            assert_eq!(
                std::fs::read(out.join("big-clean.bin")).unwrap(),
                vec![7u8; 3000]
            );
            assert!(!out.join(format!("cache-{HIDDEN}")).exists());
            assert!(std::fs::symlink_metadata(out.join("link")).is_err());
            let bytes = std::fs::read(&tar).unwrap();
            assert!(
                !bytes.windows(HIDDEN.len()).any(|w| w == HIDDEN.as_bytes()),
                "{format}: the value is still in the archive"
            );
            // Scrubbing again finds nothing and leaves the archive as it is.
            let again = std::fs::read(&tar).unwrap();
            assert!(scrub_tar(&tar, &red()).unwrap().is_empty());
            assert_eq!(std::fs::read(&tar).unwrap(), again);
        }
    }

    #[test]
    fn a_clean_archive_is_not_rewritten_and_garbage_is_an_error() {
        if !tar_available() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join("a"), "clean").unwrap();
        let tar = tmp.path().join("home.tar");
        run(Command::new("tar")
            .args(["-C"])
            .arg(&home)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        let before = std::fs::metadata(&tar).unwrap();
        assert!(scrub_tar(&tar, &red()).unwrap().is_empty());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&tar).unwrap().ino(), before.ino());
        assert!(!tmp.path().join("home.tar.scrub").exists());

        let junk = tmp.path().join("junk.tar");
        std::fs::write(&junk, format!("not a tar {HIDDEN}").repeat(100)).unwrap();
        let err = scrub_tar(&junk, &red()).unwrap_err();
        assert!(err.contains("checksum"), "{err}");
        assert!(!tmp.path().join("junk.tar.scrub").exists());
    }

    /// A ustar header.
    fn header(name: &str, size: u64, kind: u8) -> Header {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        set_size(&mut h, size);
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        set_checksum(&mut h);
        h
    }

    fn entry(out: &mut Vec<u8>, h: Header, data: &[u8]) {
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len() + padding(data.len() as u64) as usize, 0);
    }

    #[test]
    fn a_pax_size_record_follows_the_new_size() {
        if !tar_available() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let content = format!("_authToken={HIDDEN}\n");
        let recs = pax_build(&[
            (b"path".to_vec(), b"./.npmrc".to_vec()),
            (b"size".to_vec(), content.len().to_string().into_bytes()),
        ]);
        let mut bytes = Vec::new();
        entry(
            &mut bytes,
            header("PaxHeaders/x", recs.len() as u64, b'x'),
            &recs,
        );
        entry(
            &mut bytes,
            header("short", content.len() as u64, b'0'),
            content.as_bytes(),
        );
        entry(&mut bytes, header("after.txt", 6, b'0'), b"after\n");
        // Trailing junk after the end holds the value: it is not carried either.
        bytes.extend_from_slice(&[0u8; 2 * BLOCK]);
        bytes.extend_from_slice(HIDDEN.as_bytes());
        let tar = tmp.path().join("home.tar");
        std::fs::write(&tar, &bytes).unwrap();
        let found = scrub_tar(&tar, &red()).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "~/.npmrc");
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&out));
        assert_eq!(
            std::fs::read_to_string(out.join(".npmrc")).unwrap(),
            "_authToken=[REDACTED:NPM_TOKEN]\n"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("after.txt")).unwrap(),
            "after\n"
        );
        let bytes = std::fs::read(&tar).unwrap();
        assert!(!bytes.windows(HIDDEN.len()).any(|w| w == HIDDEN.as_bytes()));
        let rewritten =
            pax_records(&bytes[BLOCK..BLOCK + parse_num(&bytes[124..136]).unwrap() as usize])
                .unwrap();
        assert!(
            rewritten.contains(&(
                b"size".to_vec(),
                "_authToken=[REDACTED:NPM_TOKEN]\n"
                    .len()
                    .to_string()
                    .into_bytes()
            ))
        );
    }

    #[test]
    fn numbers_and_pax_records_round_trip() {
        let mut h = [0u8; BLOCK];
        for n in [0u64, 1, 511, 8u64.pow(11) - 1, 8u64.pow(11), 1 << 40] {
            set_size(&mut h, n);
            assert_eq!(parse_num(&h[124..136]), Some(n), "{n}");
        }
        let recs = vec![
            (b"path".to_vec(), b"a/b".to_vec()),
            (b"size".to_vec(), b"12345".to_vec()),
            (b"k".to_vec(), vec![b'v'; 94]),
        ];
        let built = pax_build(&recs);
        assert_eq!(pax_records(&built).unwrap(), recs);
        assert!(built.starts_with(b"12 path=a/b\n"));
        // A record whose length gains a digit with its own length.
        assert!(pax_build(&recs[2..]).starts_with(b"101 k="));
    }

    #[test]
    fn workspace_files_are_scrubbed_and_named_ones_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(ws.join("config")).unwrap();
        std::fs::create_dir_all(ws.join(".git/objects/ab")).unwrap();
        std::fs::create_dir_all(ws.join(format!("cache/{HIDDEN}/sub"))).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(ws.join("config/.env"), format!("NPM_TOKEN={HIDDEN}\n")).unwrap();
        std::fs::write(ws.join("config/clean"), "clean\n").unwrap();
        std::fs::write(
            ws.join(".git/config"),
            format!("[url \"https://x:{HIDDEN}@git.example.test/\"]\n"),
        )
        .unwrap();
        std::fs::write(ws.join(".git/objects/ab/cdef"), HIDDEN).unwrap();
        std::fs::write(ws.join(format!("cache/{HIDDEN}/sub/f")), "x").unwrap();
        std::fs::write(ws.join("README.md"), format!("tracked {HIDDEN}\n")).unwrap();
        std::fs::write(outside.join("host"), HIDDEN).unwrap();
        std::os::unix::fs::symlink(&outside, ws.join("escape")).unwrap();
        let scan = errand_git::scan::WorkspaceScan {
            untracked: vec!["config/".into(), "escape".into()],
            ignored: vec!["cache/".into(), "../outside/".into()],
            modified: vec!["README.md".into()],
            unusable: 0,
        };
        let files = workspace_files(&ws, None, &scan);
        let shown: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            shown,
            [
                ".git".to_string(),
                ".git/config".into(),
                "README.md".into(),
                "cache".into(),
                format!("cache/{HIDDEN}"),
                format!("cache/{HIDDEN}/sub"),
                format!("cache/{HIDDEN}/sub/f"),
                "config".into(),
                "config/.env".into(),
                "config/clean".into(),
                "escape".into(),
            ]
        );
        let found = scrub_workspace(&ws, &red(), files, &scan.modified);
        let mut got: Vec<(String, bool)> =
            found.iter().map(|f| (f.path.clone(), f.removed)).collect();
        got.sort();
        assert_eq!(
            got,
            [
                (".git/config".to_string(), false),
                ("README.md".into(), false),
                ("cache/[REDACTED:NPM_TOKEN]".into(), true),
                ("config/.env".into(), false),
            ]
        );
        assert!(found.iter().all(|f| !f.failed()));
        assert_eq!(
            std::fs::read_to_string(ws.join("config/.env")).unwrap(),
            "NPM_TOKEN=[REDACTED:NPM_TOKEN]\n"
        );
        assert!(!ws.join(format!("cache/{HIDDEN}")).exists());
        assert!(ws.join("cache").is_dir());
        assert_eq!(
            std::fs::read_to_string(outside.join("host")).unwrap(),
            HIDDEN
        );
        assert_eq!(
            std::fs::read_to_string(ws.join(".git/objects/ab/cdef")).unwrap(),
            HIDDEN,
            "objects are not scanned"
        );

        // An overlay's upper layer lists exactly what is in it (whiteouts are devices).
        let upper = tmp.path().join("upper");
        std::fs::create_dir_all(upper.join("config")).unwrap();
        std::fs::create_dir_all(upper.join(format!("empty-{HIDDEN}"))).unwrap();
        std::fs::write(upper.join("config/.env"), "x").unwrap();
        let files = workspace_files(&ws, Some(&upper), &scan);
        assert_eq!(
            files,
            [
                PathBuf::from("config"),
                PathBuf::from("config/.env"),
                PathBuf::from(format!("empty-{HIDDEN}"))
            ]
        );
        // An empty directory named with a value goes too.
        std::fs::create_dir_all(ws.join(format!("empty-{HIDDEN}"))).unwrap();
        let found = scrub_workspace(&ws, &red(), files, &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "empty-[REDACTED:NPM_TOKEN]");
        assert!(found[0].removed);
        assert!(!ws.join(format!("empty-{HIDDEN}")).exists());
    }

    #[test]
    fn notices_say_what_the_agent_gets() {
        let f = SetupScrubbed {
            path: "~/.npmrc".into(),
            secrets: vec!["NPM_TOKEN".into()],
            removed: false,
            problem: None,
        };
        assert_eq!(
            f.notice(false),
            "setup wrote secret NPM_TOKEN into ~/.npmrc; the agent's box gets [REDACTED:NPM_TOKEN] there (set expose_to_agent = true for NPM_TOKEN to keep it)"
        );
        assert!(
            f.notice(true)
                .contains("(when the cached snapshot was made)")
        );
        let two = SetupScrubbed {
            secrets: vec!["A".into(), "B".into()],
            ..f.clone()
        };
        assert!(
            two.notice(false)
                .contains("secrets A, B into ~/.npmrc; the agent's box gets [REDACTED:A], [REDACTED:B] there (set expose_to_agent = true for A, B to keep them)"),
            "{}",
            two.notice(false)
        );
        let failed = SetupScrubbed {
            problem: Some("read-only".into()),
            ..f.clone()
        };
        assert!(failed.failed());
        let big = SetupScrubbed {
            secrets: vec![],
            problem: Some("too large".into()),
            ..f
        };
        assert!(!big.failed());
        assert!(big.notice(false).contains("not checked for secret values"));
    }
}
