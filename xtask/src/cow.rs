//! Workspace preparation at scale: full checkouts (`git clone --local`, `git worktree add`,
//! Errand's checkout sharing the mirror's objects) next to Errand's copy-on-write workspace
//! (an overlay of a per-attempt upper directory over a cached base checkout), for repositories
//! of different sizes; `git status` in the result; and a box started on such a workspace.
//!
//! Overlays need the private user and mount namespace that `main` enters before any thread
//! starts (`errand_sandbox::cow::enter_private_namespace`); without it the copy-on-write rows
//! are reported as unavailable.

use crate::proc;
use crate::stats::{Summary, fmt_int, fmt_ms};
use crate::workspace::{Rng, file_text};
use anyhow::{Context, Result, bail};
use errand_sandbox::ns::{Limits, NamespaceBackend, NsOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// For set-up git commands on the large repository (add, commit, gc, mirror fetch).
const SETUP_TIMEOUT: Duration = Duration::from_secs(600);
/// For one timed checkout.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    CloneLocal,
    WorktreeAdd,
    ErrandCheckout,
}

impl Full {
    const ALL: [Full; 3] = [Full::CloneLocal, Full::WorktreeAdd, Full::ErrandCheckout];

    fn label(self) -> &'static str {
        match self {
            Full::CloneLocal => "`git clone --local` of the user's repo",
            Full::WorktreeAdd => "`git worktree add` in the user's repo",
            Full::ErrandCheckout => {
                "Errand, checkout sharing the mirror's objects (`errand_git::create_workspace`)"
            }
        }
    }
}

struct StatusRow {
    label: &'static str,
    first: Summary,
    second: Summary,
    /// Lines of `git status --porcelain` output (a fresh workspace should be clean).
    dirty_lines: usize,
}

/// What a box's disk quota measures (the host walks it after a command, at most every 2 s).
#[derive(Debug, Clone, Copy)]
enum BoxQuota {
    /// The overlay's upper layer (`BoxSpec::quota_dir`), as the worker sets it.
    Upper,
    /// The whole workspace (`quota_dir: None`).
    Workspace,
    /// No disk quota (`Limits::disk_bytes: None`).
    Off,
}

/// Per quota variant: create → Ready, create → `true` exited, a second `true`'s round trip.
struct BoxRows {
    what: &'static str,
    rows: Vec<(BoxQuota, [Summary; 3])>,
}

pub struct SizeResult {
    files: usize,
    runs: usize,
    text_bytes: u64,
    pack_bytes: u64,
    generated: Duration,
    full: Vec<(Full, Summary)>,
    /// `prepare_base` on a cold cache (once).
    cold: Option<Duration>,
    /// `write_attempt_head` + `mount_overlay` with the base cached.
    warm: Option<Summary>,
    status: Vec<StatusRow>,
    /// Boxes with this size's workspace at /workspace.
    box_first: Option<BoxRows>,
}

pub struct CowResult {
    warm_runs: usize,
    box_runs: usize,
    overlay: std::result::Result<(), String>,
    sizes: Vec<SizeResult>,
}

fn git(cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("git");
    c.current_dir(cwd)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C");
    c
}

/// Runs a set-up git command (not timed) and returns its stdout.
fn git_setup(cwd: &Path, args: &[&str]) -> Result<String> {
    let out = proc::output(&mut git(cwd, args), SETUP_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A timed git command; its stdout goes to `out` when given.
async fn git_timed(cwd: &Path, args: &[&str], log: &Path, out: Option<&Path>) -> Result<Duration> {
    let mut c = git(cwd, args);
    c.stdin(Stdio::null())
        .stdout(match out {
            Some(p) => Stdio::from(std::fs::File::create(p)?),
            None => Stdio::null(),
        })
        .stderr(std::fs::File::create(log)?);
    proc::die_with_parent(&mut c);
    let (t, status) = proc::timed(c, RUN_TIMEOUT).await?;
    if !status.success() {
        bail!(
            "git {} failed ({status}): {}",
            args.join(" "),
            proc::tail(log, 5)
        );
    }
    Ok(t)
}

/// `files` files of ~1.3 KiB in directories of 50, written with std::fs and, in the same
/// pass, streamed into one `git fast-import` commit (see `gitgen`: no loose objects to delete
/// afterwards); then the index (`git reset`) and `git gc`. Returns the bytes of text and of
/// the packed objects.
pub(crate) fn generate(repo: &Path, files: usize) -> Result<(u64, u64)> {
    std::fs::create_dir_all(repo)?;
    git_setup(repo, &["init", "--quiet", "-b", "main"])?;
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut text_bytes = 0u64;
    let mut import = crate::gitgen::Importer::start(repo)?;
    import.begin_commit("generated")?;
    let readme = "# generated\n";
    std::fs::write(repo.join("README.md"), readme)?;
    import.file("README.md", readme.as_bytes())?;
    for i in 0..files {
        let d = i / 50;
        let dir = format!("src/m{:03}/d{:02}", d / 32, d % 32);
        if i % 50 == 0 {
            std::fs::create_dir_all(repo.join(&dir))?;
        }
        let lines = 10 + (rng.next() % 50) as usize;
        let text = file_text(&mut rng, lines);
        text_bytes += text.len() as u64;
        let path = format!("{dir}/f{i:06}.rs");
        std::fs::write(repo.join(&path), &text)?;
        import.file(&path, text.as_bytes())?;
    }
    import.finish(SETUP_TIMEOUT)?;
    git_setup(repo, &["reset", "--quiet"])?;
    git_setup(repo, &["gc", "--quiet"])?;
    let pack_bytes = dir_bytes(&repo.join(".git/objects"));
    Ok((text_bytes, pack_bytes))
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn sync_fs() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// Overlays mounted by the bench, unmounted when dropped (before their directories go).
#[derive(Default)]
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in self.0.drain(..).rev() {
            errand_sandbox::cow::unmount(&m);
        }
    }
}

async fn full_once(
    m: Full,
    repo: &Path,
    mirror: &Path,
    commit: &str,
    dest: &Path,
    log: &Path,
    run: usize,
) -> Result<Duration> {
    let d = dest.to_string_lossy().to_string();
    let r = repo.to_string_lossy().to_string();
    Ok(match m {
        Full::CloneLocal => {
            git_timed(repo, &["clone", "--quiet", "--local", &r, &d], log, None).await?
        }
        Full::WorktreeAdd => {
            let branch = format!("bench-wt-{run}");
            git_timed(
                repo,
                &["worktree", "add", "--quiet", "-b", &branch, &d, commit],
                log,
                None,
            )
            .await?
        }
        Full::ErrandCheckout => {
            let branch = format!("errand/bench-{run}");
            let start = Instant::now();
            tokio::time::timeout(
                RUN_TIMEOUT,
                errand_git::create_workspace(mirror, dest, &branch, commit),
            )
            .await
            .context("errand_git::create_workspace timed out")??;
            start.elapsed()
        }
    })
}

/// How much to measure.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Repository sizes, in files.
    pub sizes: Vec<usize>,
    /// Timed full checkouts per method (at most 2 at 20,000 files and more).
    pub runs: usize,
    /// Warm copy-on-write workspaces per size.
    pub warm_runs: usize,
    /// Boxes started on each size's workspace.
    pub box_runs: usize,
}

async fn one_size(
    bin: &Path,
    root: &Path,
    files: usize,
    plan: &Plan,
    overlay_ok: bool,
    mounts: &mut Mounts,
) -> Result<SizeResult> {
    let Plan {
        runs,
        warm_runs,
        box_runs,
        ..
    } = *plan;
    // Every full checkout of a large repository costs a second to make and as long to delete
    // (ext4 here is mounted with `discard`), so fewer runs at 20,000 files and more.
    let runs = if files >= 20_000 { runs.min(2) } else { runs };
    let dir = root.join(format!("n{files}"));
    let repo = dir.join("repo");
    let log = dir.join("git.log");
    let t = Instant::now();
    let (text_bytes, pack_bytes) = generate(&repo, files)?;
    let generated = t.elapsed();
    eprintln!(
        "bench:   {} files: generated and committed in {:.1} s",
        fmt_int(files as f64),
        generated.as_secs_f64()
    );
    let mirrors = errand_git::MirrorCache::new(dir.join("mirrors"));
    let mirror = tokio::time::timeout(SETUP_TIMEOUT, mirrors.sync(&repo.to_string_lossy()))
        .await
        .context("syncing the mirror timed out")??;
    let commit = git_setup(&repo, &["rev-parse", "HEAD"])?.trim().to_string();

    // The base checkout, once: the first attempt on this commit pays for it.
    let base = dir.join("checkouts").join(&commit);
    let cold = if overlay_ok {
        sync_fs();
        let t = Instant::now();
        let created = tokio::time::timeout(
            RUN_TIMEOUT,
            errand_git::prepare_base(&mirror, &commit, &base),
        )
        .await
        .context("prepare_base timed out")??;
        let d = t.elapsed();
        if !created {
            bail!("prepare_base found an existing base at {}", base.display());
        }
        Some(d)
    } else {
        None
    };

    // Full checkouts, the methods taking turns; none is deleted until the end.
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); Full::ALL.len()];
    let mut dests: Vec<Vec<PathBuf>> = vec![Vec::new(); Full::ALL.len()];
    for r in 0..runs {
        for k in 0..Full::ALL.len() {
            let i = (r + k) % Full::ALL.len();
            let m = Full::ALL[i];
            let dest = dir.join(format!("{m:?}-{r}"));
            sync_fs();
            let t = full_once(m, &repo, &mirror, &commit, &dest, &log, r).await?;
            times[i].push(t);
            dests[i].push(dest);
        }
    }

    // Copy-on-write workspaces on the cached base.
    let mut merged_dirs = Vec::new();
    let warm = if overlay_ok {
        let mut w = Vec::new();
        for i in 0..warm_runs {
            let ws_dir = dir.join(format!("cow-{i}"));
            let (upper, work, merged) = (
                ws_dir.join("upper"),
                ws_dir.join("overlay-work"),
                ws_dir.join("repo"),
            );
            let branch = format!("errand/cow-{i}");
            sync_fs();
            let t = Instant::now();
            errand_git::write_attempt_head(&upper, &branch, &commit)?;
            let mounted = errand_sandbox::cow::mount_overlay(&base, &upper, &work, &merged);
            let d = t.elapsed();
            if let Err(e) = mounted {
                bail!("{e}");
            }
            mounts.0.push(merged.clone());
            if i == 0 {
                let head = git_setup(&merged, &["rev-parse", "HEAD"])?;
                let name = git_setup(&merged, &["symbolic-ref", "--short", "HEAD"])?;
                if head.trim() != commit || name.trim() != branch {
                    bail!(
                        "the overlay workspace is at {} on {}, expected {commit} on {branch}",
                        head.trim(),
                        name.trim()
                    );
                }
            }
            w.push(d);
            merged_dirs.push(merged);
        }
        Some(Summary::new(&w))
    } else {
        None
    };

    // `git status`, twice, in fresh workspaces of each kind.
    let n_status = runs.min(3);
    let mut status = Vec::new();
    let mut kinds: Vec<(&'static str, Vec<PathBuf>)> = vec![
        (
            "`git clone --local`",
            dests[0].iter().take(n_status).cloned().collect(),
        ),
        (
            "Errand checkout (`create_workspace`)",
            dests[2].iter().take(n_status).cloned().collect(),
        ),
    ];
    if overlay_ok {
        kinds.push((
            "**Errand copy-on-write overlay**",
            merged_dirs.iter().skip(1).take(n_status).cloned().collect(),
        ));
    }
    let out = dir.join("status.out");
    for (label, wss) in kinds {
        let (mut first, mut second) = (Vec::new(), Vec::new());
        let mut dirty_lines = 0;
        for ws in &wss {
            for (k, v) in [&mut first, &mut second].into_iter().enumerate() {
                sync_fs();
                v.push(git_timed(ws, &["status", "--porcelain"], &log, Some(&out)).await?);
                if k == 0 {
                    dirty_lines = dirty_lines.max(
                        std::fs::read_to_string(&out)
                            .unwrap_or_default()
                            .lines()
                            .count(),
                    );
                }
            }
        }
        status.push(StatusRow {
            label,
            first: Summary::new(&first),
            second: Summary::new(&second),
            dirty_lines,
        });
    }

    // A box on this workspace: the first command's exit includes the host side's workspace
    // size check (disk quota), which walks the workspace.
    let box_first = if box_runs > 0 {
        let backend = NamespaceBackend::new(NsOptions {
            exe: Some(bin.to_path_buf()),
            ..Default::default()
        })?;
        let no_quota = NamespaceBackend::new(NsOptions {
            exe: Some(bin.to_path_buf()),
            limits: Limits {
                disk_bytes: None,
                ..Limits::default()
            },
            ..Default::default()
        })?;
        let (wss, what) = if overlay_ok {
            (&merged_dirs, "copy-on-write")
        } else {
            (&dests[2], "Errand's checkout")
        };
        let mut variants: Vec<(BoxQuota, &NamespaceBackend)> =
            vec![(BoxQuota::Workspace, &backend), (BoxQuota::Off, &no_quota)];
        if overlay_ok {
            variants.insert(0, (BoxQuota::Upper, &backend));
        }
        let mut v: Vec<[Vec<Duration>; 3]> = vec![Default::default(); variants.len()];
        // Past the workspaces `git status` ran in (their dentries are warm).
        let mut k = 1 + n_status;
        for i in 0..box_runs {
            // Taking turns (the order rotates every round), each on a workspace no box has
            // used yet (while there are some).
            for n in 0..variants.len() {
                let j = (i + n) % variants.len();
                let (quota, b) = &variants[j];
                let ws = &wss[k % wss.len()];
                k += 1;
                let upper = ws.parent().map(|p| p.join("upper"));
                let quota_dir = match quota {
                    BoxQuota::Upper => upper.as_deref(),
                    _ => None,
                };
                let scratch = dir.join(format!("box-scratch-{i}-{j}"));
                let t = crate::sandbox::lib_once(b, ws, &scratch, quota_dir)
                    .await?
                    .times;
                for (x, d) in v[j].iter_mut().zip(t) {
                    x.push(d);
                }
            }
        }
        Some(BoxRows {
            what,
            rows: variants
                .iter()
                .zip(v)
                .map(|((q, _), t)| (*q, t.map(|x| Summary::new(&x))))
                .collect(),
        })
    } else {
        None
    };

    Ok(SizeResult {
        files,
        runs,
        text_bytes,
        pack_bytes,
        generated,
        full: Full::ALL
            .iter()
            .zip(&times)
            .map(|(m, t)| (*m, Summary::new(t)))
            .collect(),
        cold,
        warm,
        status,
        box_first,
    })
}

pub async fn run(
    bin: &Path,
    overlay: std::result::Result<(), String>,
    plan: &Plan,
    trash: &mut crate::Trash,
) -> Result<CowResult> {
    let tmp = tempfile::Builder::new()
        .prefix("errand-bench-cow-")
        .tempdir()?;
    let root = tmp.path().canonicalize()?;
    // Unmounted before the directories are removed (drop order: mounts first, then tmp).
    let mut mounts = Mounts::default();
    let mut out = Vec::new();
    let mut result = Ok(());
    for &files in &plan.sizes {
        match one_size(bin, &root, files, plan, overlay.is_ok(), &mut mounts).await {
            Ok(r) => out.push(r),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // Unmounted now; the files go at the end of the run (see `Trash`).
    drop(mounts);
    trash.keep(tmp);
    result?;
    Ok(CowResult {
        warm_runs: plan.warm_runs,
        box_runs: plan.box_runs,
        overlay,
        sizes: out,
    })
}

impl CowResult {
    /// Warm copy-on-write medians, by repository size.
    pub fn warm_medians(&self) -> Vec<(usize, f64)> {
        self.sizes
            .iter()
            .filter_map(|s| s.warm.as_ref().map(|w| (s.files, w.median())))
            .collect()
    }
}

pub fn report(r: &CowResult) -> String {
    let mut s = String::from("### 6. Workspace preparation at scale: copy-on-write\n\n");
    s += "Generated repositories (files of ~1.3 KiB in directories of 50, one commit made with \
          `git fast-import`, packed with `git gc`):\n\n| files | text | packed objects | generated and committed in | \
          timed full checkouts per method |\n|---:|---:|---:|---:|---:|\n";
    for z in &r.sizes {
        s += &format!(
            "| {} | {:.1} MiB | {:.1} MiB | {:.1} s | {} |\n",
            fmt_int(z.files as f64),
            z.text_bytes as f64 / (1024.0 * 1024.0),
            z.pack_bytes as f64 / (1024.0 * 1024.0),
            z.generated.as_secs_f64(),
            z.runs
        );
    }
    s += &format!(
        "\nFull checkouts: the methods take turns, `sync` before every \
         run, nothing deleted until the end. Errand's mirror is synced beforehand. Copy-on-write: \
         `errand_git::prepare_base` once on a cold cache (the first attempt on a commit pays \
         it), then per workspace `errand_git::write_attempt_head` + \
         `errand_sandbox::cow::mount_overlay` on the cached base ({} runs, `sync` before \
         each).\n\n",
        r.warm_runs
    );
    if let Err(why) = &r.overlay {
        s += &format!(
            "**Copy-on-write unavailable**: the bench could not enter a private user and mount \
             namespace ({why}).\n\n"
        );
    }
    let cols: Vec<String> = r.sizes.iter().map(|z| fmt_int(z.files as f64)).collect();
    s += "| method |";
    for c in &cols {
        s += &format!(" {c} files: median (ms) | p99 / max (ms) |");
    }
    s += "\n|---|";
    for _ in &cols {
        s += "---:|---:|";
    }
    s += "\n";
    for (k, m) in Full::ALL.iter().enumerate() {
        s += &format!("| {} |", m.label());
        for z in &r.sizes {
            let t = &z.full[k].1;
            s += &format!(" {} | {} |", fmt_ms(t.median()), fmt_ms(t.max()));
        }
        s += "\n";
    }
    if r.overlay.is_ok() {
        s += "| Errand copy-on-write, cold: `prepare_base` (once per commit) |";
        for z in &r.sizes {
            s += &format!(
                " {} | |",
                z.cold
                    .map(|d| fmt_ms(d.as_secs_f64() * 1e3))
                    .unwrap_or_else(|| "n/a".into())
            );
        }
        s += "\n| **Errand copy-on-write, warm**: `write_attempt_head` + `mount_overlay` |";
        for z in &r.sizes {
            match &z.warm {
                Some(w) => s += &format!(" **{}** | {} |", fmt_ms(w.median()), fmt_ms(w.pct(99.0))),
                None => s += " n/a | |",
            }
        }
        s += "\n";
    }
    s += "\nThe full checkouts' last column is the max (few runs); the warm row's is the p99.\n";

    s += "\n`git status --porcelain` in fresh workspaces (the first run after the workspace was \
          made, then a second one), median over up to 3 workspaces:\n\n| workspace |";
    for c in &cols {
        s += &format!(" {c} files: 1st (ms) | 2nd (ms) |");
    }
    s += "\n|---|";
    for _ in &cols {
        s += "---:|---:|";
    }
    s += "\n";
    let labels: Vec<&str> = r
        .sizes
        .first()
        .map(|z| z.status.iter().map(|x| x.label).collect())
        .unwrap_or_default();
    for (k, label) in labels.iter().enumerate() {
        s += &format!("| {label} |");
        for z in &r.sizes {
            match z.status.get(k) {
                Some(x) => {
                    s += &format!(
                        " {} | {} |",
                        fmt_ms(x.first.median()),
                        fmt_ms(x.second.median())
                    )
                }
                None => s += " n/a | |",
            }
        }
        s += "\n";
    }
    for z in &r.sizes {
        for x in &z.status {
            if x.dirty_lines > 0 {
                s += &format!(
                    "\nNote: `git status` listed {} changed or untracked paths in a fresh {} \
                     workspace of {} files (it should be clean).\n",
                    x.dirty_lines,
                    x.label,
                    fmt_int(z.files as f64)
                );
            }
        }
    }
    if r.box_runs > 0 && r.sizes.iter().any(|z| z.box_first.is_some()) {
        s += &format!(
            "\nA box on such a workspace ({} runs per size and row, rows taking turns in an order \
             that rotates every round, each on a workspace no box used before, through the library as in benchmark 5). The host \
             checks the workspace disk quota by walking a directory after a command (at most \
             every 2 s); the rows differ in what it walks. p50, with the max in parentheses:\n\n\
             | workspace | files | disk quota walks | `create` → Ready (ms) | `create` → `true` exited (ms) | a second `true` (ms) |\n\
             |---|---:|---|---:|---:|---:|\n",
            r.box_runs
        );
        for z in &r.sizes {
            if let Some(b) = &z.box_first {
                let cell = |x: &Summary| format!("{} ({})", fmt_ms(x.pct(50.0)), fmt_ms(x.max()));
                for (q, t) in &b.rows {
                    let quota = match q {
                        BoxQuota::Upper => "the upper layer (`quota_dir`, as the worker)",
                        BoxQuota::Workspace => "the whole workspace (`quota_dir: None`)",
                        BoxQuota::Off => "none (`disk_bytes: None`)",
                    };
                    s += &format!(
                        "| {} | {} | {quota} | {} | {} | {} |\n",
                        b.what,
                        fmt_int(z.files as f64),
                        cell(&t[0]),
                        cell(&t[1]),
                        cell(&t[2])
                    );
                }
            }
        }
    }
    let warm = r.warm_medians();
    if !warm.is_empty() {
        let all_fast = warm.iter().all(|(_, m)| *m < 100.0);
        s += &format!(
            "\nTarget: workspace preparation under 100 ms: **{}** ({}).",
            if all_fast { "met" } else { "not met" },
            warm.iter()
                .map(|(f, m)| format!("{} ms at {} files", fmt_ms(*m), fmt_int(*f as f64)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let (Some(a), Some(b)) = (warm.first(), warm.last())
            && warm.len() > 1
        {
            s += &format!(
                " Flat as the repo grows: {}× the files, {:.2}× the time.",
                fmt_int(b.0 as f64 / a.0 as f64),
                b.1 / a.1
            );
        }
        s += "\n";
    }
    s
}
