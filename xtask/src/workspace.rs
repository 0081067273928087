//! Workspace preparation on a medium repository: the usual ways to get a second checkout of a
//! repo, side by side with Errand's (`errand_git::create_workspace` on a bare mirror).

use crate::stats::{Summary, fmt_int, fmt_ms};
use anyhow::{Context, Result, bail};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    CloneNoHardlinks,
    Clone,
    CloneShared,
    WorktreeAdd,
    Errand,
}

impl Method {
    const ALL: [Method; 5] = [
        Method::CloneNoHardlinks,
        Method::Clone,
        Method::CloneShared,
        Method::WorktreeAdd,
        Method::Errand,
    ];

    fn label(self) -> &'static str {
        match self {
            Method::CloneNoHardlinks => "`git clone --no-hardlinks` (copies every object)",
            Method::Clone => "`git clone` of a local path (hard-links objects)",
            Method::CloneShared => "`git clone --shared` (alternates to the source repo)",
            Method::WorktreeAdd => "`git worktree add` (in the user's repo)",
            Method::Errand => {
                "Errand: `git init` + alternates to the bare mirror + `checkout -b` (`errand_git::create_workspace`)"
            }
        }
    }
}

pub struct RepoShape {
    pub files: usize,
    pub commits: usize,
    pub worktree_bytes: u64,
    pub pack_bytes: u64,
}

pub struct MethodResult {
    label: &'static str,
    times: Summary,
    copied_bytes: u64,
}

pub struct WorkspaceResult {
    pub shape: RepoShape,
    pub runs: usize,
    methods: Vec<MethodResult>,
}

/// A deterministic pseudo-random generator (xorshift), so every run builds the same repo.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const WORDS: &[&str] = &[
    "let", "fn", "match", "self", "value", "result", "error", "config", "worker", "task",
    "attempt", "event", "stream", "mirror", "commit", "branch", "return", "Some", "None", "Ok",
];

pub(crate) fn file_text(rng: &mut Rng, lines: usize) -> String {
    let mut s = String::new();
    for _ in 0..lines {
        let n = 3 + (rng.next() % 8) as usize;
        for j in 0..n {
            if j > 0 {
                s.push(' ');
            }
            s.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
        }
        s.push('\n');
    }
    s
}

/// `files` files in 40 directories, committed in `commits` commits (the later ones each
/// modify 10% of the files) through `git fast-import` (nothing written loose and then
/// deleted, see `gitgen`), checked out, then packed with `git gc` like a real repo.
fn generate_repo(repo: &Path, files: usize, commits: usize) -> Result<RepoShape> {
    std::fs::create_dir_all(repo)?;
    crate::git_sync(repo, &["init", "--quiet", "-b", "main"])?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let path_of = |i: usize| format!("src/mod{:02}/file{:04}.rs", i % 40, i);
    let mut texts: Vec<String> = (0..files)
        .map(|_| {
            let lines = 20 + (rng.next() % 60) as usize;
            file_text(&mut rng, lines)
        })
        .collect();
    let mut import = crate::gitgen::Importer::start(repo)?;
    for c in 0..commits {
        import.begin_commit(&format!("commit {c}"))?;
        if c == 0 {
            for (i, t) in texts.iter().enumerate() {
                import.file(&path_of(i), t.as_bytes())?;
            }
        } else {
            for _ in 0..files / 10 {
                let i = (rng.next() % files as u64) as usize;
                texts[i].push_str(&file_text(&mut rng, 5));
                import.file(&path_of(i), texts[i].as_bytes())?;
            }
        }
    }
    import.finish(Duration::from_secs(600))?;
    for (i, t) in texts.iter().enumerate() {
        let p = repo.join(path_of(i));
        if i < 40 {
            std::fs::create_dir_all(p.parent().unwrap())?;
        }
        std::fs::write(&p, t)?;
    }
    // The index, from HEAD and the files just written.
    crate::git_sync(repo, &["reset", "--quiet"])?;
    crate::git_sync(repo, &["gc", "--quiet"])?;
    let worktree_bytes = dir_bytes(&repo.join("src"), false)?;
    let pack_bytes = dir_bytes(&repo.join(".git/objects"), false)?;
    Ok(RepoShape {
        files,
        commits,
        worktree_bytes,
        pack_bytes,
    })
}

/// Sum of file sizes under `dir`; with `unshared_only`, files with other hard links are
/// skipped (they cost no new space).
fn dir_bytes(dir: &Path, unshared_only: bool) -> Result<u64> {
    let mut total = 0;
    if !dir.exists() {
        return Ok(0);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            total += dir_bytes(&entry.path(), unshared_only)?;
        } else if !unshared_only || meta.nlink() == 1 {
            total += meta.len();
        }
    }
    Ok(total)
}

async fn git(cwd: Option<&Path>, args: &[&str]) -> Result<()> {
    let mut cmd = tokio::process::Command::new("git");
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = cmd
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .with_context(|| format!("git {} timed out", args.join(" ")))??;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

struct Ctx {
    repo: PathBuf,
    mirror: PathBuf,
    commit: String,
    out: PathBuf,
}

/// Prepares one workspace; returns how long it took and where it is.
async fn prepare(ctx: &Ctx, m: Method, run: usize) -> Result<(Duration, PathBuf)> {
    let dest = ctx.out.join(format!("{m:?}-{run}"));
    let d = dest.to_string_lossy().to_string();
    let r = ctx.repo.to_string_lossy().to_string();
    let branch = format!("errand/bench-{run}");
    let start = Instant::now();
    match m {
        Method::CloneNoHardlinks => {
            git(None, &["clone", "--quiet", "--no-hardlinks", &r, &d]).await?
        }
        Method::Clone => git(None, &["clone", "--quiet", &r, &d]).await?,
        Method::CloneShared => git(None, &["clone", "--quiet", "--shared", &r, &d]).await?,
        Method::WorktreeAdd => {
            git(
                Some(&ctx.repo),
                &["worktree", "add", "--quiet", "-b", &branch, &d, &ctx.commit],
            )
            .await?
        }
        Method::Errand => {
            errand_git::create_workspace(&ctx.mirror, &dest, &branch, &ctx.commit).await?
        }
    }
    Ok((start.elapsed(), dest))
}

/// Flushes dirty pages (not timed), so that no run pays for the writeback of the previous one.
fn sync_fs() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

pub async fn run(
    files: usize,
    commits: usize,
    runs: usize,
    trash: &mut crate::Trash,
) -> Result<WorkspaceResult> {
    let tmp = tempfile::Builder::new()
        .prefix("errand-bench-ws-")
        .tempdir()?;
    let root = tmp.path().canonicalize()?;
    let repo = root.join("repo");
    let t = Instant::now();
    let shape = generate_repo(&repo, files, commits)?;
    eprintln!(
        "bench:   generated the repository in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mirrors = errand_git::MirrorCache::new(root.join("mirrors"));
    let repo_s = repo.to_string_lossy().to_string();
    let mirror = mirrors.sync(&repo_s).await?;
    let commit = crate::git_sync(&repo, &["rev-parse", "HEAD"])?
        .trim()
        .to_string();
    let out = root.join("ws");
    std::fs::create_dir_all(&out)?;
    let ctx = Ctx {
        repo,
        mirror,
        commit,
        out,
    };
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); Method::ALL.len()];
    let mut copied = vec![0u64; Method::ALL.len()];
    // Round 0 warms the page cache and is discarded; the methods take turns in every round.
    // Workspaces are kept until the end: deleting thousands of files right before a timed run
    // makes that run pay for the deletion (ext4 does part of the work lazily).
    for round in 0..=runs {
        for (k, &m) in Method::ALL.iter().enumerate() {
            sync_fs();
            let (t, dest) = prepare(&ctx, m, round).await?;
            if round == 0 {
                copied[k] = dir_bytes(&dest.join(".git/objects"), true)?;
            } else {
                times[k].push(t);
            }
        }
    }
    trash.keep(tmp);
    Ok(WorkspaceResult {
        shape,
        runs,
        methods: Method::ALL
            .iter()
            .zip(times.iter().zip(copied))
            .map(|(m, (t, c))| MethodResult {
                label: m.label(),
                times: Summary::new(t),
                copied_bytes: c,
            })
            .collect(),
    })
}

pub fn report(r: &WorkspaceResult) -> String {
    let mut s = format!(
        "### 4. Workspace preparation\n\nA generated repository of {} files ({:.1} MiB of text) \
         in {} commits, packed with `git gc` ({:.1} MiB of objects). Each method makes a \
         checkout of the same commit on a new branch, into a new directory; {} timed runs each \
         after one discarded warm-up run, methods taking turns, `sync` before every run, and no \
         workspace deleted until all runs are done (deleting 2,000 files just before a run made \
         that run up to 10× slower here). The bare mirror Errand uses is already synced (a warm mirror, as after the first task on a \
         repo).\n\n",
        fmt_int(r.shape.files as f64),
        r.shape.worktree_bytes as f64 / (1024.0 * 1024.0),
        r.shape.commits,
        r.shape.pack_bytes as f64 / (1024.0 * 1024.0),
        r.runs
    );
    s += "| method | median (ms) | min (ms) | max (ms) | object bytes copied |\n";
    s += "|---|---:|---:|---:|---:|\n";
    for m in &r.methods {
        s += &format!(
            "| {} | {} | {} | {} | {} KiB |\n",
            m.label,
            fmt_ms(m.times.median()),
            fmt_ms(m.times.min()),
            fmt_ms(m.times.max()),
            fmt_int(m.copied_bytes as f64 / 1024.0)
        );
    }
    s += "\n\"Object bytes copied\" counts files under the workspace's `.git/objects` that are \
          not hard links (so a hard-linked clone shows only what it had to write).\n";
    s
}
