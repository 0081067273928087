//! Box benchmarks: how long a box takes to start and run its first command (Errand's box
//! through the library and through the CLI, next to bubblewrap and a bare `unshare`), and how
//! much memory an idle box holds.

use crate::proc::{self, ProcMem};
use crate::stats::{Summary, fmt_int, fmt_ms};
use anyhow::{Context, Result, bail};
use errand_sandbox::ns::{Limits, NamespaceBackend, NsOptions};
use errand_sandbox::{BoxSpec, SandboxBackend, SandboxBox};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long one box may take to start, run `true` and go away.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds `bwrap`, installing the `bubblewrap` package with apt-get if it is missing. Runs
/// before the bench enters its private namespace and before any thread starts (no threads
/// here: the install is polled). `Err` says why bubblewrap is unavailable.
pub fn ensure_bwrap() -> std::result::Result<(PathBuf, Option<String>), String> {
    if let Some(p) = proc::which("bwrap") {
        return Ok((p, None));
    }
    if proc::which("apt-get").is_none() {
        return Err("bwrap is not installed and there is no apt-get to install it".into());
    }
    eprintln!("bench: bwrap is missing; apt-get install -y bubblewrap");
    let log = std::env::temp_dir().join(format!("errand-bench-apt-{}.log", std::process::id()));
    let file =
        std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    let mut child = Command::new("apt-get")
        .args(["install", "-y", "-q", "bubblewrap"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting apt-get: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(&log);
                return Err("apt-get install bubblewrap did not finish within 300 s".into());
            }
            Err(e) => return Err(format!("waiting for apt-get: {e}")),
        }
    };
    let tail = proc::tail(&log, 3);
    let _ = std::fs::remove_file(&log);
    if !status.success() {
        return Err(format!(
            "apt-get install bubblewrap failed ({status}): {}",
            tail.replace('\n', " / ")
        ));
    }
    proc::which("bwrap")
        .map(|p| {
            (
                p,
                Some("installed by the bench with `apt-get install -y bubblewrap`".into()),
            )
        })
        .ok_or_else(|| "apt-get install bubblewrap succeeded but there is no bwrap".into())
}

/// The bwrap version, for the report.
pub fn bwrap_version(bwrap: &Path) -> String {
    Command::new(bwrap)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// bubblewrap with a layout comparable to the box: all namespaces, read-only `/usr` and
/// `/etc`, the workspace read-write, private `/tmp`, a minimal `/dev`, its own `/proc`.
pub fn bwrap_args(ws: &Path, argv: &[&str]) -> Vec<OsString> {
    let mut a: Vec<OsString> = [
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    // /bin, /lib… are symlinks into /usr on merged-/usr systems, directories elsewhere.
    for d in ["/bin", "/sbin", "/lib", "/lib32", "/lib64"] {
        let Ok(meta) = std::fs::symlink_metadata(d) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            if let Ok(target) = std::fs::read_link(d) {
                a.extend(["--symlink".into(), target.into_os_string(), d.into()]);
            }
        } else if meta.is_dir() {
            a.extend(["--ro-bind".into(), d.into(), d.into()]);
        }
    }
    a.extend(["--ro-bind", "/etc", "/etc", "--bind"].map(OsString::from));
    a.push(ws.into());
    a.extend(
        [
            "/workspace",
            "--tmpfs",
            "/tmp",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--chdir",
            "/workspace",
        ]
        .map(OsString::from),
    );
    a.extend(argv.iter().map(OsString::from));
    a
}

fn shell_words(prog: &str, args: &[OsString]) -> String {
    let mut s = prog.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// One box through the library: create (until Ready), run `true`, run `true` again, destroy.
/// `quota_dir` is what the disk quota measures (`None`: the whole workspace).
pub async fn lib_once(
    backend: &NamespaceBackend,
    workspace: &Path,
    scratch: &Path,
    quota_dir: Option<&Path>,
) -> Result<LibRun> {
    let spec = BoxSpec {
        workspace: workspace.to_path_buf(),
        scratch: scratch.to_path_buf(),
        ro_binds: vec![],
        rootfs: None,
        quota_dir: quota_dir.map(Path::to_path_buf),
        env: vec![],
        ..Default::default()
    };
    let start = Instant::now();
    let b = tokio::time::timeout(RUN_TIMEOUT, backend.create(spec))
        .await
        .context("the box did not start in time")?
        .context("starting a box")?;
    let ready = start.elapsed();
    let from_pool = b.as_ns().is_some_and(|n| n.from_pool());
    let first = run_true(b.as_ref()).await;
    let exited = start.elapsed();
    let t = Instant::now();
    let second = match first {
        Ok(()) => run_true(b.as_ref()).await,
        Err(e) => Err(e),
    };
    let again = t.elapsed();
    let t = Instant::now();
    let destroyed = tokio::time::timeout(RUN_TIMEOUT, b.destroy()).await;
    let destroy = t.elapsed();
    second?;
    destroyed
        .context("destroying the box timed out")?
        .context("destroying the box")?;
    Ok(LibRun {
        times: [ready, exited, again, destroy],
        from_pool,
    })
}

/// One library box: the time to Ready and to the first command's exit (both from the start of
/// create), the second command's round trip, and how long destroy took.
pub struct LibRun {
    pub times: [Duration; 4],
    /// Whether the box's process came from the back end's pool.
    pub from_pool: bool,
}

/// Waits (untimed, bounded) until the back end's pool of box processes is full again, so that
/// its refill does not run during the next way's timing.
async fn wait_for_pool(backend: &NamespaceBackend) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while backend.pooled() < backend.options.pool && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `true` in a live box and checks that it exited 0.
pub async fn run_true(b: &dyn SandboxBox) -> Result<()> {
    let ns = b.as_ns().context("not a namespace box")?;
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let r = tokio::time::timeout(
        RUN_TIMEOUT,
        ns.exec_argv(
            vec!["true".into()],
            None,
            Duration::from_secs(10),
            CancellationToken::new(),
            tx,
        ),
    )
    .await
    .context("`true` in the box did not finish in time")?
    .context("running `true` in the box")?;
    if !r.success() {
        bail!("`true` in the box ended with {r:?}");
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Lib,
    /// The library box without cgroups (no memory or pids limit).
    LibNoCgroup,
    /// The library box without the pool: every box process started from scratch.
    LibCold,
    Cli,
    Bwrap,
    Unshare,
}

/// What a process-based way runs.
struct Spawn {
    prog: PathBuf,
    args: Vec<OsString>,
}

impl Spawn {
    fn command(&self, log: &Path) -> Result<Command> {
        let mut c = Command::new(&self.prog);
        c.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).context("creating a log file")?);
        proc::die_with_parent(&mut c);
        Ok(c)
    }

    async fn once(&self, log: &Path) -> Result<Duration> {
        let (t, status) = proc::timed(self.command(log)?, RUN_TIMEOUT).await?;
        if !status.success() {
            bail!(
                "`{}` failed ({status}): {}",
                shell_words(&self.prog.to_string_lossy(), &self.args),
                proc::tail(log, 5)
            );
        }
        Ok(t)
    }
}

pub struct StartRow {
    label: String,
    times: Summary,
}

pub struct StartResult {
    runs: usize,
    warmup: usize,
    /// Timed library boxes whose process came from the pool.
    pooled: usize,
    rows: Vec<StartRow>,
    unavailable: Vec<(String, String)>,
    enforced: String,
    /// The box cgroups the kernel shows the box process in.
    controllers: Vec<String>,
    bwrap_cmd: Option<String>,
    bwrap_note: Option<String>,
}

pub struct Tools {
    pub bwrap: std::result::Result<(PathBuf, Option<String>), String>,
}

/// Box start to the first command's exit, every way taking turns, `runs` timed runs each after
/// `warmup` discarded ones.
pub async fn start(
    bin: &Path,
    tools: &Tools,
    runs: usize,
    warmup: usize,
    trash: &mut crate::Trash,
) -> Result<StartResult> {
    let tmp = tempfile::Builder::new()
        .prefix("errand-bench-box-")
        .tempdir()?;
    let root = tmp.path().canonicalize()?;
    let ws = root.join("ws");
    std::fs::create_dir_all(&ws)?;
    std::fs::write(ws.join("README.md"), "a small workspace\n")?;
    let backend = NamespaceBackend::new(NsOptions {
        exe: Some(bin.to_path_buf()),
        ..Default::default()
    })?;
    // A first box proves the box works here (the bench fails otherwise) and says what it enforces.
    let (enforced, controllers) = {
        let spec = BoxSpec {
            workspace: ws.clone(),
            scratch: root.join("scratch-check"),
            ro_binds: vec![],
            rootfs: None,
            quota_dir: None,
            env: vec![],
            ..Default::default()
        };
        let b = tokio::time::timeout(RUN_TIMEOUT, backend.create(spec))
            .await
            .context("the first box did not start in time")?
            .context("starting a box (see `errand sandbox check`)")?;
        let e = b.as_ns().map(|n| n.enforced.summary()).unwrap_or_default();
        let controllers = b
            .as_ns()
            .and_then(|n| n.pid())
            .map(|p| box_controllers(p as i32))
            .unwrap_or_default();
        let r = run_true(b.as_ref()).await;
        let _ = tokio::time::timeout(RUN_TIMEOUT, b.destroy()).await;
        r?;
        (e, controllers)
    };

    let no_cgroup = NamespaceBackend::new(NsOptions {
        exe: Some(bin.to_path_buf()),
        limits: Limits {
            memory_bytes: None,
            pids: None,
            ..Limits::default()
        },
        ..Default::default()
    })?;
    let cold = NamespaceBackend::new(NsOptions {
        exe: Some(bin.to_path_buf()),
        pool: 0,
        ..Default::default()
    })?;
    let mut ways = vec![Way::Lib, Way::LibNoCgroup, Way::LibCold, Way::Cli];
    let mut unavailable = Vec::new();
    let cli = Spawn {
        prog: bin.to_path_buf(),
        args: ["sandbox", "run", "--workspace"]
            .map(OsString::from)
            .into_iter()
            .chain([ws.clone().into_os_string()])
            .chain(["--", "true"].map(OsString::from))
            .collect(),
    };
    let mut bwrap = None;
    let mut bwrap_cmd = None;
    let mut bwrap_note = None;
    match &tools.bwrap {
        Ok((path, note)) => {
            let s = Spawn {
                prog: path.clone(),
                args: bwrap_args(&ws, &["true"]),
            };
            bwrap_cmd = Some(shell_words("bwrap", &s.args).replace(&*ws.to_string_lossy(), "WS"));
            let version = bwrap_version(path);
            bwrap_note = Some(match note {
                Some(n) => format!("{version}, {n}"),
                None => version,
            });
            match s.once(&root.join("bwrap.log")).await {
                Ok(_) => {
                    ways.push(Way::Bwrap);
                    bwrap = Some(s);
                }
                Err(e) => unavailable.push(("bwrap".to_string(), format!("{e:#}"))),
            }
        }
        Err(why) => unavailable.push(("bwrap".to_string(), why.clone())),
    }
    let mut unshare = None;
    match proc::which("unshare") {
        Some(p) => {
            let s = Spawn {
                prog: p,
                args: ["-Urmpfn", "--mount-proc", "true"]
                    .map(OsString::from)
                    .to_vec(),
            };
            match s.once(&root.join("unshare.log")).await {
                Ok(_) => {
                    ways.push(Way::Unshare);
                    unshare = Some(s);
                }
                Err(e) => unavailable.push(("unshare".to_string(), format!("{e:#}"))),
            }
        }
        None => unavailable.push(("unshare".to_string(), "not installed (util-linux)".into())),
    }

    let mut lib: [Vec<Duration>; 4] = Default::default();
    let mut lib_nocg: [Vec<Duration>; 2] = Default::default();
    let mut lib_cold: [Vec<Duration>; 2] = Default::default();
    let mut pooled = 0;
    let mut all = Vec::new();
    let mut by_way: Vec<Vec<Duration>> = vec![Vec::new(); ways.len()];
    for round in 0..warmup + runs {
        for k in 0..ways.len() {
            // Rotate the order every round so that no way always follows the same one.
            let i = (round + k) % ways.len();
            let keep = round >= warmup;
            match ways[i] {
                Way::Lib => {
                    let t = lib_once(&backend, &ws, &root.join(format!("scratch-{round}")), None)
                        .await?;
                    if keep && t.from_pool {
                        pooled += 1;
                    }
                    wait_for_pool(&backend).await;
                    let t = t.times;
                    if keep {
                        for (v, d) in lib.iter_mut().zip(t) {
                            v.push(d);
                        }
                        // create + first command + destroy, without the second command.
                        all.push(t[1] + t[3]);
                        by_way[i].push(t[1]);
                    }
                }
                Way::LibNoCgroup => {
                    let scratch = root.join(format!("scratch-nocg-{round}"));
                    let t = lib_once(&no_cgroup, &ws, &scratch, None).await?.times;
                    wait_for_pool(&no_cgroup).await;
                    if keep {
                        lib_nocg[0].push(t[0]);
                        lib_nocg[1].push(t[1]);
                    }
                }
                Way::LibCold => {
                    let scratch = root.join(format!("scratch-cold-{round}"));
                    let t = lib_once(&cold, &ws, &scratch, None).await?.times;
                    if keep {
                        lib_cold[0].push(t[0]);
                        lib_cold[1].push(t[1]);
                    }
                }
                Way::Cli => {
                    let t = cli.once(&root.join("cli.log")).await?;
                    if keep {
                        by_way[i].push(t);
                    }
                }
                Way::Bwrap => {
                    if let Some(s) = &bwrap {
                        let t = s.once(&root.join("bwrap.log")).await?;
                        if keep {
                            by_way[i].push(t);
                        }
                    }
                }
                Way::Unshare => {
                    if let Some(s) = &unshare {
                        let t = s.once(&root.join("unshare.log")).await?;
                        if keep {
                            by_way[i].push(t);
                        }
                    }
                }
            }
        }
    }
    let mut rows = vec![StartRow {
        label: "**Errand box** (library): `create` → `true` exited".into(),
        times: Summary::new(&lib[1]),
    }];
    for (w, t) in ways.iter().zip(&by_way) {
        let label = match w {
            Way::Lib | Way::LibNoCgroup | Way::LibCold => continue,
            Way::Cli => "`errand sandbox run --workspace WS -- true` (a process: exec, box, exit)",
            Way::Bwrap => "`bwrap` (bubblewrap, layout below) `true`",
            Way::Unshare => "`unshare -Urmpfn --mount-proc true` (namespaces only: the floor)",
        };
        rows.push(StartRow {
            label: label.into(),
            times: Summary::new(t),
        });
    }
    rows.push(StartRow {
        label: "Errand box (library): `create` → Ready (box set up, no command yet)".into(),
        times: Summary::new(&lib[0]),
    });
    rows.push(StartRow {
        label: "Errand box (library) without cgroups (no memory/pids limits): `create` → Ready"
            .into(),
        times: Summary::new(&lib_nocg[0]),
    });
    rows.push(StartRow {
        label: "Errand box (library) without cgroups: `create` → `true` exited".into(),
        times: Summary::new(&lib_nocg[1]),
    });
    rows.push(StartRow {
        label: "Errand box (library) without the pool (`NsOptions::pool` 0: stage 1 started, \
                namespaces made and cgroups joined on `create`): `create` → Ready"
            .into(),
        times: Summary::new(&lib_cold[0]),
    });
    rows.push(StartRow {
        label: "Errand box (library) without the pool: `create` → `true` exited".into(),
        times: Summary::new(&lib_cold[1]),
    });
    rows.push(StartRow {
        label: "Errand box (library): `create` + `true` + `destroy`".into(),
        times: Summary::new(&all),
    });
    rows.push(StartRow {
        label: "Errand box (library): `destroy` alone".into(),
        times: Summary::new(&lib[3]),
    });
    rows.push(StartRow {
        label: "Errand box (library): a second `true` in the same box (exec round trip)".into(),
        times: Summary::new(&lib[2]),
    });
    trash.keep(tmp);
    Ok(StartResult {
        runs,
        warmup,
        pooled,
        rows,
        unavailable,
        enforced,
        controllers,
        bwrap_cmd,
        bwrap_note,
    })
}

impl StartResult {
    pub fn p50(&self, prefix: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.label.contains(prefix))
            .map(|r| r.times.pct(50.0))
    }
}

pub fn report_start(r: &StartResult) -> String {
    let mut s = String::from("### 5. Box start to the first command's exit\n\n");
    s += &format!(
        "{} timed runs per way after {} discarded warm-up runs, the ways taking turns (the order \
         rotates every round). Each run starts a new box, runs `true` in it and waits for its \
         exit. The library rows use `NamespaceBackend::create` (with the release `errand` binary \
         as the box executable and default options, so with the default pool of ready box \
         processes: {} of the {} timed boxes took their process from it), \
         `NsBox::exec_argv([\"true\"])` and `destroy`, from this bench process; the process rows \
         are timed from just before `spawn` to the return of `wait`, so they include starting \
         the program itself. The rows after the first four split the library box's time: until \
         it reports Ready (set up, no command yet); the same box without cgroups (`Limits` with \
         no memory and no pids limit, so it joins no cgroup); the box without the pool (its \
         process started, its namespaces made and its cgroups joined during `create`, as \
         `errand sandbox run` does); `destroy` on its own; and a second `true` in the box that \
         already ran one (the round trip of one command).\n\n",
        r.runs, r.warmup, r.pooled, r.runs
    );
    s += "| way | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |\n|---|---:|---:|---:|---:|\n";
    for row in &r.rows {
        let t = &row.times;
        let bold = row.label.starts_with("**");
        let p50 = if bold {
            format!("**{}**", fmt_ms(t.pct(50.0)))
        } else {
            fmt_ms(t.pct(50.0))
        };
        s += &format!(
            "| {} | {p50} | {} | {} | {} |\n",
            row.label,
            fmt_ms(t.pct(90.0)),
            fmt_ms(t.pct(99.0)),
            fmt_ms(t.max())
        );
    }
    for (what, why) in &r.unavailable {
        s += &format!("| `{what}` | unavailable: {why} | | | |\n");
    }
    s += &format!(
        "\nThe box reports: `{}`. The kernel shows its process in {}.\n",
        r.enforced,
        if r.controllers.is_empty() {
            "no box cgroup (`/proc/PID/cgroup`)".to_string()
        } else {
            format!(
                "the box cgroups of the {} controllers (`/proc/PID/cgroup`)",
                r.controllers.join(", ")
            )
        }
    );
    if let Some(c) = &r.bwrap_cmd {
        s += &format!("\nbubblewrap ran as `{c}`");
        if let Some(n) = &r.bwrap_note {
            s += &format!(" ({n})");
        }
        s += ". It sets up namespaces and mounts like the box, but installs no seccomp filter, \
              no Landlock ruleset and no cgroup, masks nothing in `/etc`, and mounts no \
              private `$HOME` or `/dev/shm`.\n";
    }
    let lib = r.p50("**Errand box**");
    let bw = r.p50("`bwrap`");
    if let Some(lib) = lib {
        s += &format!(
            "\nTarget: box start p50 under 10 ms: **{}** ({} ms)",
            if lib < 10.0 { "met" } else { "not met" },
            fmt_ms(lib)
        );
        match bw {
            Some(bw) => {
                s += &format!(
                    "; no slower than bwrap's: **{}** (bwrap {} ms).\n",
                    if lib <= bw { "met" } else { "not met" },
                    fmt_ms(bw)
                )
            }
            None => s += "; no bwrap to compare with.\n",
        }
    }
    s
}

/// Memory of one idle sandbox, by process.
struct Idle {
    procs: Vec<ProcMem>,
    cgroup_bytes: Option<u64>,
}

pub struct MemoryResult {
    boxes: usize,
    errand: Vec<Idle>,
    bwrap: Vec<Idle>,
    bwrap_unavailable: Option<String>,
    cgroup_file: Option<String>,
}

/// The current usage of the memory cgroup `pid` is in, if it is one of Errand's box cgroups
/// (read from `/proc/PID/cgroup`, not from the box's report, so that it is what the kernel
/// says), and the file it came from.
fn cgroup_usage(pid: i32) -> Option<(u64, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in text.lines() {
        // v1: "7:memory:/errand/box-1-2"; v2: "0::/errand/box-1-2".
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if !path.contains("/errand/box-") {
            continue;
        }
        let (dir, file) = if controllers.split(',').any(|c| c == "memory") {
            (
                format!("/sys/fs/cgroup/memory{path}"),
                "memory.usage_in_bytes",
            )
        } else if controllers.is_empty() {
            (format!("/sys/fs/cgroup{path}"), "memory.current")
        } else {
            continue;
        };
        if let Ok(v) = std::fs::read_to_string(Path::new(&dir).join(file))
            && let Ok(n) = v.trim().parse::<u64>()
        {
            return Some((n, file.to_string()));
        }
    }
    None
}

/// The controllers of Errand's box cgroups that `pid` is in, from `/proc/PID/cgroup`.
fn box_controllers(pid: i32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            path.contains("/errand/box-").then(|| {
                if controllers.is_empty() {
                    "v2".to_string()
                } else {
                    controllers.to_string()
                }
            })
        })
        .collect()
}

/// Waits (bounded) until `pid`'s process tree has `n` processes; returns the tree.
async fn settled_tree(pid: i32, n: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = proc::tree(pid);
        if t.len() >= n || Instant::now() > deadline {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `n` boxes (each runs `true` once) and `n` `bwrap … sleep 1000`, waits a second for
/// them to be idle, then reads the RSS and PSS of their processes.
pub async fn memory(bin: &Path, tools: &Tools, n: usize) -> Result<MemoryResult> {
    let tmp = tempfile::Builder::new()
        .prefix("errand-bench-mem-")
        .tempdir()?;
    let root = tmp.path().canonicalize()?;
    // No pool: each box's process is the one new child, and no pooled process is counted.
    let backend = NamespaceBackend::new(NsOptions {
        exe: Some(bin.to_path_buf()),
        pool: 0,
        ..Default::default()
    })?;
    let me = std::process::id() as i32;
    let mut boxes: Vec<(Box<dyn SandboxBox>, i32)> = Vec::new();
    let mut bwraps: Vec<proc::Guard> = Vec::new();
    let result = async {
        for i in 0..n {
            let ws = root.join(format!("ws-{i}"));
            std::fs::create_dir_all(&ws)?;
            let before = proc::children(me);
            let spec = BoxSpec {
                workspace: ws,
                scratch: root.join(format!("scratch-{i}")),
                ro_binds: vec![],
                rootfs: None,
                quota_dir: None,
                env: vec![],
                ..Default::default()
            };
            let b = tokio::time::timeout(RUN_TIMEOUT, backend.create(spec))
                .await
                .context("a box did not start in time")??;
            let new: Vec<i32> = proc::children(me).difference(&before).copied().collect();
            run_true(b.as_ref()).await?;
            let [stage1] = new[..] else {
                boxes.push((b, 0));
                bail!("expected one new child process for box {i}, found {new:?}");
            };
            boxes.push((b, stage1));
        }
        let mut bwrap_unavailable = None;
        match &tools.bwrap {
            Ok((path, _)) => {
                for i in 0..n {
                    let ws = root.join(format!("ws-{i}"));
                    let mut cmd = Command::new(path);
                    cmd.args(bwrap_args(&ws, &["sleep", "1000"]))
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null());
                    bwraps.push(proc::Guard::spawn(&mut cmd)?);
                }
            }
            Err(why) => bwrap_unavailable = Some(why.clone()),
        }
        // Idle: nothing runs in the boxes; let the bwraps reach `sleep`.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut errand = Vec::new();
        let mut cgroup_file = None;
        for (_, stage1) in &boxes {
            let tree = settled_tree(*stage1, 2).await;
            let cg = cgroup_usage(*stage1);
            if let Some((_, f)) = &cg {
                cgroup_file = Some(f.clone());
            }
            errand.push(Idle {
                procs: tree.iter().filter_map(|p| proc::mem(*p)).collect(),
                cgroup_bytes: cg.map(|(b, _)| b),
            });
        }
        let mut bwrap = Vec::new();
        for g in &mut bwraps {
            if let Some(st) = g.exited() {
                bail!("bwrap … sleep 1000 exited early ({st})");
            }
            let tree = settled_tree(g.pid() as i32, 3).await;
            bwrap.push(Idle {
                procs: tree.iter().filter_map(|p| proc::mem(*p)).collect(),
                cgroup_bytes: None,
            });
        }
        Ok::<_, anyhow::Error>(MemoryResult {
            boxes: n,
            errand,
            bwrap,
            bwrap_unavailable,
            cgroup_file,
        })
    }
    .await;
    for (b, _) in &boxes {
        let _ = tokio::time::timeout(RUN_TIMEOUT, b.destroy()).await;
    }
    drop(boxes);
    drop(bwraps);
    result
}

fn mib(kib: f64) -> String {
    format!("{:.2}", kib / 1024.0)
}

/// Mean per sandbox of each process position in the tree, plus the total.
fn memory_rows(label: &str, roles: &[&str], idle: &[Idle]) -> String {
    let n = idle.len().max(1) as f64;
    let depth = idle.iter().map(|i| i.procs.len()).max().unwrap_or(0);
    let mut s = String::new();
    let mut total_rss = 0.0;
    let mut total_pss = 0.0;
    let mut pss_ok = true;
    for k in 0..depth {
        let rss: f64 = idle
            .iter()
            .filter_map(|i| i.procs.get(k))
            .map(|p| p.rss_kib as f64)
            .sum::<f64>()
            / n;
        let pss: Option<f64> = idle
            .iter()
            .filter_map(|i| i.procs.get(k))
            .map(|p| p.pss_kib.map(|v| v as f64))
            .sum::<Option<f64>>()
            .map(|v| v / n);
        let name = idle
            .iter()
            .find_map(|i| i.procs.get(k))
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let role = roles.get(k).copied().unwrap_or("another process");
        total_rss += rss;
        match pss {
            Some(p) => total_pss += p,
            None => pss_ok = false,
        }
        s += &format!(
            "| {label}: {role} (`{name}`) | {} | {} |\n",
            mib(rss),
            pss.map(mib).unwrap_or_else(|| "n/a".into())
        );
    }
    s += &format!(
        "| **{label}: all its processes** | **{}** | **{}** |\n",
        mib(total_rss),
        if pss_ok { mib(total_pss) } else { "n/a".into() }
    );
    s
}

pub fn report_memory(r: &MemoryResult) -> String {
    let mut s = String::from("### 7. Idle box memory\n\n");
    s += &format!(
        "{n} Errand boxes started through the library (each ran `true` once) and {n} `bwrap … \
         sleep 1000` (the layout of benchmark 5), all alive at once, measured 1 s after the \
         last one started. Memory per sandbox, the mean over the {n}: RSS from \
         `/proc/PID/status` and PSS (shared pages divided among the processes sharing them) \
         from `/proc/PID/smaps_rollup`.\n\n",
        n = r.boxes
    );
    s += "| process | RSS (MiB) | PSS (MiB) |\n|---|---:|---:|\n";
    s += &memory_rows("Errand box", &["stage 1", "PID 1"], &r.errand);
    if let Some(why) = &r.bwrap_unavailable {
        s += &format!("| bwrap | unavailable: {why} | |\n");
    } else {
        s += &memory_rows(
            "bwrap",
            &["outside (monitor)", "PID 1 inside", "the command"],
            &r.bwrap,
        );
    }
    let cg: Vec<u64> = r.errand.iter().filter_map(|i| i.cgroup_bytes).collect();
    if !cg.is_empty() {
        let mean = cg.iter().sum::<u64>() as f64 / cg.len() as f64;
        let min = *cg.iter().min().unwrap_or(&0);
        let max = *cg.iter().max().unwrap_or(&0);
        s += &format!(
            "\nThe box's memory cgroup (`{}`) reads {} KiB per box on average (min {}, max {} \
             KiB): it also counts kernel memory and page cache charged to the box (its tmpfs \
             files, page tables, the mount and namespace structures).\n",
            r.cgroup_file.as_deref().unwrap_or("?"),
            fmt_int(mean / 1024.0),
            fmt_int(min as f64 / 1024.0),
            fmt_int(max as f64 / 1024.0)
        );
    } else {
        s += "\nThe boxes have no memory cgroup on this host.\n";
    }
    s
}
