//! Errand's dev tasks. `cargo xtask bench` measures dispatch latency, enqueue throughput,
//! event append throughput, workspace preparation, box start, copy-on-write workspaces,
//! idle box memory, the bridge between a box's loopback and a host Unix socket, the agent
//! loop's overhead, prompt-prefix reuse and compaction, the egress proxy's throughput and
//! added latency, and the checkpoint cost per agent turn on this machine, and prints a Markdown
//! report (progress goes to stderr, the report to stdout).

mod agent;
mod api;
mod bridge;
mod checkpoint;
mod cow;
mod gitgen;
mod proc;
mod proxy;
mod sandbox;
mod server;
mod stats;
mod store;
mod workspace;

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Instant;

const USAGE: &str = "\
usage: cargo xtask bench [options]

Builds the release `errand` binary (unless only benches that do not run it are chosen:
append, workspace, agent, proxy, checkpoint), runs the benchmarks and prints a Markdown report.

options:
  --skip-build          use the existing binary instead of running cargo build
  --bin PATH            the errand binary (default: <target>/release/errand)
  --out FILE            also write the report to FILE
  --dispatch-tasks N    dispatch latency tasks per stream mode (default 200)
  --enqueue-tasks N     tasks per enqueue throughput run (default 1000)
  --events N            events for the batched append bench (default 200000)
  --runs N              timed runs per workspace method (default 10)
  --box-runs N          box starts per way (default 200)
  --boxes N             idle boxes for the memory bench (default 10)
  --cow-files LIST      repository sizes for the copy-on-write bench (default 5000,50000)
  --bridge-runs N       1 GiB transfers per way through the box's bridge (default 3)
  --bridge-trips N      round trips per way through the bridge (default 1000)
  --agent-turns N       turns per scripted agent-loop run (default 1000)
  --adapter-turns N     tool-call turns per agent run through each adapter (default 200)
  --checkpoint-files L  repository sizes for the checkpoint bench (default 5000,50000)
  --checkpoint-turns N  turns checkpointed per size (default 300)
  --proxy-mib N         MiB per transfer through the proxy's CONNECT tunnel (default 1024)
  --proxy-requests N    timed requests per way for the proxy's latency (default 1000)
  --no-private-ns       stay in the host's user and mount namespaces (no copy-on-write)
  --only LIST           run only these benches (comma-separated: dispatch, enqueue,
                        append, workspace, box, cow, box-memory, bridge, agent, proxy,
                        checkpoint)
  --quick               small counts, for checking that the bench works
";

struct Options {
    skip_build: bool,
    bin: Option<PathBuf>,
    out: Option<PathBuf>,
    dispatch_tasks: usize,
    enqueue_tasks: usize,
    events: usize,
    runs: usize,
    box_runs: usize,
    boxes: usize,
    cow_files: Vec<usize>,
    /// Full checkouts per method and size in the copy-on-write bench.
    cow_runs: usize,
    /// Warm copy-on-write workspaces per size.
    cow_warm: usize,
    /// Boxes started on each copy-on-write workspace size.
    cow_box_runs: usize,
    agent_turns: usize,
    adapter_turns: usize,
    bridge_runs: usize,
    bridge_mib: u64,
    bridge_trips: usize,
    proxy_mib: usize,
    proxy_requests: usize,
    checkpoint_files: Vec<usize>,
    checkpoint_turns: usize,
    no_private_ns: bool,
    only: Option<Vec<String>>,
    args: Vec<String>,
}

impl Options {
    fn wants(&self, bench: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|l| l.iter().any(|b| b == bench))
    }

    /// Whether a wanted bench runs the `errand` binary (the others link the crates).
    fn needs_bin(&self) -> bool {
        ["dispatch", "enqueue", "box", "cow", "box-memory", "bridge"]
            .iter()
            .any(|b| self.wants(b))
    }
}

const BENCHES: [&str; 11] = [
    "dispatch",
    "enqueue",
    "append",
    "workspace",
    "box",
    "cow",
    "box-memory",
    "bridge",
    "agent",
    "proxy",
    "checkpoint",
];

fn parse(args: Vec<String>) -> Result<Options> {
    let mut o = Options {
        skip_build: false,
        bin: None,
        out: None,
        dispatch_tasks: 200,
        enqueue_tasks: 1000,
        events: 200_000,
        runs: 10,
        box_runs: 200,
        boxes: 10,
        cow_files: vec![5000, 50_000],
        cow_runs: 3,
        cow_warm: 50,
        cow_box_runs: 10,
        agent_turns: 1000,
        adapter_turns: 200,
        bridge_runs: 3,
        bridge_mib: 1024,
        bridge_trips: 1000,
        proxy_mib: 1024,
        proxy_requests: 1000,
        checkpoint_files: vec![5000, 50_000],
        checkpoint_turns: 300,
        no_private_ns: false,
        only: None,
        args: args.clone(),
    };
    let mut it = args.into_iter();
    let num = |name: &str, v: Option<String>| -> Result<usize> {
        let v = v.with_context(|| format!("{name} needs a value"))?;
        let n: usize = v
            .parse()
            .with_context(|| format!("{name} expects a number, got '{v}'"))?;
        if n == 0 {
            bail!("{name} must be at least 1");
        }
        Ok(n)
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--skip-build" => o.skip_build = true,
            "--no-private-ns" => o.no_private_ns = true,
            "--bin" => o.bin = Some(it.next().context("--bin needs a path")?.into()),
            "--out" => o.out = Some(it.next().context("--out needs a path")?.into()),
            "--dispatch-tasks" => o.dispatch_tasks = num(&a, it.next())?,
            "--enqueue-tasks" => o.enqueue_tasks = num(&a, it.next())?,
            "--events" => o.events = num(&a, it.next())?,
            "--runs" => o.runs = num(&a, it.next())?,
            "--box-runs" => o.box_runs = num(&a, it.next())?,
            "--boxes" => o.boxes = num(&a, it.next())?,
            "--agent-turns" => o.agent_turns = num(&a, it.next())?,
            "--adapter-turns" => o.adapter_turns = num(&a, it.next())?,
            "--bridge-runs" => o.bridge_runs = num(&a, it.next())?,
            "--bridge-trips" => o.bridge_trips = num(&a, it.next())?,
            "--proxy-mib" => o.proxy_mib = num(&a, it.next())?,
            "--proxy-requests" => o.proxy_requests = num(&a, it.next())?,
            "--checkpoint-turns" => o.checkpoint_turns = num(&a, it.next())?,
            "--checkpoint-files" => {
                let v = it.next().context("--checkpoint-files needs a list")?;
                o.checkpoint_files = v
                    .split(',')
                    .map(|n| num("--checkpoint-files", Some(n.trim().to_string())))
                    .collect::<Result<_>>()?;
            }
            "--cow-files" => {
                let v = it.next().context("--cow-files needs a list")?;
                o.cow_files = v
                    .split(',')
                    .map(|n| num("--cow-files", Some(n.trim().to_string())))
                    .collect::<Result<_>>()?;
            }
            "--only" => {
                let list: Vec<String> = it
                    .next()
                    .context("--only needs a list")?
                    .split(',')
                    .map(|b| b.trim().to_string())
                    .filter(|b| !b.is_empty())
                    .collect();
                if let Some(b) = list.iter().find(|b| !BENCHES.contains(&b.as_str())) {
                    bail!(
                        "unknown bench '{b}'; expected some of: {}",
                        BENCHES.join(", ")
                    );
                }
                o.only = Some(list);
            }
            "--quick" => {
                o.dispatch_tasks = 20;
                o.enqueue_tasks = 100;
                o.events = 10_000;
                o.runs = 2;
                o.box_runs = 20;
                o.boxes = 3;
                o.cow_files = vec![500, 5000];
                o.cow_runs = 1;
                o.cow_warm = 5;
                o.cow_box_runs = 3;
                o.agent_turns = 100;
                o.adapter_turns = 60;
                o.bridge_runs = 1;
                o.bridge_mib = 64;
                o.bridge_trips = 100;
                o.proxy_mib = 64;
                o.proxy_requests = 100;
                o.checkpoint_files = vec![500];
                o.checkpoint_turns = 40;
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option '{other}'\n\n{USAGE}"),
        }
    }
    Ok(o)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// Runs git synchronously (set-up only, never timed) and returns its stdout.
pub fn git_sync(cwd: &Path, args: &[&str]) -> Result<String> {
    let out = proc::output(
        std::process::Command::new("git")
            .current_dir(cwd)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C"),
        std::time::Duration::from_secs(600),
    )
    .context("running git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "git {} failed in {}: {}",
            args.join(" "),
            cwd.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn build(root: &Path) -> Result<()> {
    eprintln!("bench: cargo build --release -p errand-cli");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "errand-cli"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p errand-cli failed");
    }
    Ok(())
}

fn default_bin(root: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"));
    target.join("release/errand")
}

fn machine_info() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "unknown".into());
    let git = std::process::Command::new("git")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!(
        "| | |\n|---|---|\n| CPUs (`nproc`) | {cpus} |\n| CPU model | {model} |\n| memory | {mem} |\n\
         | kernel | {kernel} |\n| git | {git} |\n| date (UTC) | {} |\n",
        errand_core::format_ts(errand_core::now_ms())
    )
}

/// The 1, 5 and 15 minute load averages (other work on the machine skews the figures).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Temporary directories kept until the end of the run. Deleting many files makes file
/// creation slow for a while afterwards on some file systems (ext4 without a journal skips
/// inodes freed in the last minute or more when it allocates new ones), which would skew
/// every bench that follows; so nothing big is deleted until all measurements are done.
#[derive(Default)]
pub struct Trash(Vec<Box<dyn Send>>);

impl Trash {
    pub fn keep(&mut self, x: impl Send + 'static) {
        self.0.push(Box::new(x));
    }
}

/// Microseconds per file to create 1,000 empty files in a new directory under `dir`: a probe
/// of the file system's state (see `Trash`). The files are kept until the end of the run.
fn create_probe(trash: &mut Trash) -> Result<f64> {
    let dir = tempfile::Builder::new()
        .prefix("errand-bench-probe-")
        .tempdir()?;
    let start = Instant::now();
    for i in 0..1000 {
        std::fs::File::create(dir.path().join(format!("f{i}")))?;
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / 1000.0;
    trash.keep(dir);
    Ok(us)
}

/// What `main` set up before the runtime started.
struct Prepared {
    /// Entering the private user and mount namespace (needed to mount overlays).
    private_ns: std::result::Result<(), String>,
    tools: sandbox::Tools,
}

async fn bench(o: Options, prep: Prepared) -> Result<String> {
    let root = workspace_root();
    let started = Instant::now();
    let bin = o.bin.clone().unwrap_or_else(|| default_bin(&root));
    if o.needs_bin() && !bin.is_file() {
        bail!(
            "{} does not exist; run cargo build --release -p errand-cli, or pass --bin",
            bin.display()
        );
    }
    let command = if o.args.is_empty() {
        "cargo xtask bench".to_string()
    } else {
        format!("cargo xtask bench {}", o.args.join(" "))
    };
    let mut trash = Trash::default();
    let probe_start = create_probe(&mut trash)?;
    let load_start = loadavg();
    let ns = match &prep.private_ns {
        Ok(()) => "yes (own user and mount namespace, as `errand serve`)".to_string(),
        Err(e) => format!("no ({e})"),
    };
    let mut report = format!(
        "## Errand benchmark report\n\nCommand: `{command}`\n\n{}| load average (1/5/15 min) at start | {load_start} |\n\
         | bench in a private namespace | {ns} |\n\
         | file creation probe at start (1,000 empty files) | {probe_start:.0} µs per file |\n\n",
        machine_info()
    );

    let fx = api::Fixture::create()?;
    if o.wants("dispatch") {
        eprintln!(
            "bench: dispatch latency ({} tasks per stream mode, workers=2)",
            o.dispatch_tasks
        );
        let t = Instant::now();
        let d = api::dispatch(&bin, &fx, o.dispatch_tasks, 5, 2).await?;
        eprintln!("bench:   took {:.1} s", t.elapsed().as_secs_f64());
        report += &api::report_dispatch(&d);
        report += "\n";
    }

    if o.wants("enqueue") {
        let mut enq = Vec::new();
        for (conc, workers) in [(8, 0), (1, 0), (8, 2)] {
            eprintln!(
                "bench: enqueue throughput ({} tasks, {conc} connections, workers={workers})",
                o.enqueue_tasks
            );
            let t = Instant::now();
            enq.push(api::enqueue(&bin, &fx, o.enqueue_tasks, conc, workers).await?);
            eprintln!("bench:   took {:.1} s", t.elapsed().as_secs_f64());
        }
        report += &api::report_enqueue(&enq);
        report += "\n";
    }

    if o.wants("append") {
        let mut app = Vec::new();
        for (events, batch) in [
            (o.events, 100),
            (o.events, 1000),
            ((o.events / 20).max(1), 1),
        ] {
            eprintln!("bench: event appends ({events} events, batches of {batch})");
            let t = Instant::now();
            app.push(store::append(events, batch).await?);
            eprintln!("bench:   took {:.1} s", t.elapsed().as_secs_f64());
        }
        report += &store::report(&app);
        report += "\n";
    }

    if o.wants("workspace") {
        eprintln!("bench: workspace preparation ({} runs each)", o.runs);
        let t = Instant::now();
        let probe = create_probe(&mut trash)?;
        let ws = workspace::run(2000, 5, o.runs, &mut trash).await?;
        eprintln!("bench:   took {:.1} s", t.elapsed().as_secs_f64());
        report += &workspace::report(&ws);
        report += &format!(
            "\nFile creation probe just before this bench: {probe:.0} µs per empty file.\n"
        );
        report += "\n";
    }

    if o.wants("box") {
        eprintln!("bench: box start ({} runs per way)", o.box_runs);
        let t = Instant::now();
        let warmup = (o.box_runs / 40).clamp(1, 5);
        let r = sandbox::start(&bin, &prep.tools, o.box_runs, warmup, &mut trash).await?;
        eprintln!("bench:   took {:.1} s", t.elapsed().as_secs_f64());
        report += &sandbox::report_start(&r);
        report += "\n";
    }

    if o.wants("cow") {
        eprintln!(
            "bench: copy-on-write workspaces ({} files)",
            o.cow_files
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let t = Instant::now();
        let plan = cow::Plan {
            sizes: o.cow_files.clone(),
            runs: o.cow_runs,
            warm_runs: o.cow_warm,
            box_runs: o.cow_box_runs,
        };
        let probe = create_probe(&mut trash)?;
        let r = cow::run(&bin, prep.private_ns.clone(), &plan, &mut trash).await?;
        eprintln!("bench:   took {:.1} s", t.elapsed().as_secs_f64());
        report += &cow::report(&r);
        report += &format!(
            "\nFile creation probe just before this bench: {probe:.0} µs per empty file.\n"
        );
        report += "\n";
    }

    if o.wants("box-memory") {
        eprintln!("bench: idle box memory ({} boxes)", o.boxes);
        let t = Instant::now();
        let r = sandbox::memory(&bin, &prep.tools, o.boxes).await?;
        eprintln!("bench:   took {:.1} s", t.elapsed().as_secs_f64());
        report += &sandbox::report_memory(&r);
        report += "\n";
    }

    if o.wants("bridge") {
        eprintln!(
            "bench: bridge ({} transfers of {} MiB per way, {} round trips per way)",
            o.bridge_runs, o.bridge_mib, o.bridge_trips
        );
        let t = Instant::now();
        let plan = bridge::Plan {
            transfers: o.bridge_runs,
            transfer_mib: o.bridge_mib,
            round_trips: o.bridge_trips,
        };
        let r = bridge::run(&bin, &plan).await?;
        eprintln!("bench:   took {:.1} s", t.elapsed().as_secs_f64());
        report += &bridge::report(&r);
        report += "\n";
    }

    if o.wants("agent") {
        eprintln!(
            "bench: agent loop ({} scripted turns x 3, {} turns per adapter run)",
            o.agent_turns, o.adapter_turns
        );
        let t = Instant::now();
        let plan = agent::Plan {
            loop_turns: o.agent_turns,
            loop_runs: 3,
            adapter_turns: o.adapter_turns,
        };
        let r = agent::run(&plan).await?;
        eprintln!("bench:   took {:.1} s", t.elapsed().as_secs_f64());
        report += &agent::report(&r);
        report += "\n";
    }

    if o.wants("proxy") {
        eprintln!(
            "bench: egress proxy ({} MiB transfers, {} requests per way)",
            o.proxy_mib, o.proxy_requests
        );
        let t = Instant::now();
        let plan = proxy::Plan {
            bytes: o.proxy_mib as u64 * 1024 * 1024,
            runs: 5,
            requests: o.proxy_requests,
            baselines: true,
        };
        let r = proxy::run(&plan).await?;
        eprintln!("bench:   took {:.1} s", t.elapsed().as_secs_f64());
        report += &proxy::report(&r);
        report += "\n";
    }
    if o.wants("checkpoint") {
        eprintln!(
            "bench: checkpoint cost per turn ({} turns; {} files)",
            o.checkpoint_turns,
            o.checkpoint_files
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let t = Instant::now();
        let probe = create_probe(&mut trash)?;
        let plan = checkpoint::Plan {
            sizes: o.checkpoint_files.clone(),
            turns: o.checkpoint_turns,
        };
        let r = checkpoint::run(&plan, prep.private_ns.is_ok(), &mut trash).await?;
        eprintln!("bench:   took {:.1} s", t.elapsed().as_secs_f64());
        report += &checkpoint::report(&r);
        report += &format!(
            "File creation probe just before this bench: {probe:.0} µs per empty file.\n\n"
        );
    }

    let measured = started.elapsed();
    let load_end = loadavg();
    eprintln!("bench: removing the temporary files");
    let t = Instant::now();
    drop(trash);
    let removed = t.elapsed();
    eprintln!("bench:   removed in {:.1} s", removed.as_secs_f64());
    if o.wants("box") || o.wants("box-memory") || o.wants("cow") || o.wants("bridge") {
        // Remove the box cgroups of processes that are gone, as `errand serve` does at start,
        // and this process's own idle ones (its back ends, and their pools, are gone by now).
        let swept = errand_sandbox::ns::sweep_stale_cgroups();
        eprintln!("bench: removed {swept} box cgroups left by exited processes");
        errand_sandbox::ns::release_pooled_cgroups();
    }
    report += &format!(
        "\nBench run time: {:.0} s (excluding the build), then {:.0} s to remove the temporary \
         files. Load average at the end: {load_end}.\n",
        measured.as_secs_f64(),
        removed.as_secs_f64()
    );
    Ok(report)
}

fn main() -> std::process::ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = if args.is_empty() {
        String::new()
    } else {
        args.remove(0)
    };
    if cmd != "bench" {
        eprint!("{USAGE}");
        return std::process::ExitCode::from(2);
    }
    let result = parse(args).and_then(|o| {
        // Everything that forks or changes namespaces happens here, before the runtime starts
        // a thread: the build, installing bubblewrap, and entering the private namespace.
        if !o.skip_build && o.bin.is_none() && o.needs_bin() {
            build(&workspace_root())?;
        }
        let tools = sandbox::Tools {
            bwrap: if o.wants("box") || o.wants("box-memory") {
                sandbox::ensure_bwrap()
            } else {
                Err("not needed".into())
            },
        };
        // Like `errand serve`: an own user namespace (this user as root) and mount namespace,
        // so the copy-on-write bench can mount overlays. Everything else runs in it too, as
        // the server's boxes do. Mounts made in it vanish with the process.
        let private_ns = if o.no_private_ns {
            Err("--no-private-ns".to_string())
        } else {
            errand_sandbox::cow::enter_private_namespace()
        };
        if let Err(e) = &private_ns {
            eprintln!("bench: no private namespace ({e}); copy-on-write will be unavailable");
        }
        let prep = Prepared { private_ns, tools };
        let out = o.out.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        // Ctrl-C drops the bench future, and with it every server child (kill_on_drop).
        let report = rt.block_on(async {
            tokio::select! {
                r = bench(o, prep) => r,
                _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            }
        })?;
        print!("{report}");
        if let Some(path) = out {
            std::fs::write(&path, &report)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("bench: report written to {}", path.display());
        }
        Ok(())
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
