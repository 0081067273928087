//! Errand's dev tasks. `cargo xtask bench` measures dispatch latency, enqueue throughput,
//! event append throughput and workspace preparation on this machine and prints a Markdown
//! report (progress goes to stderr, the report to stdout).

mod api;
mod server;
mod stats;
mod store;
mod workspace;

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Instant;

const USAGE: &str = "\
usage: cargo xtask bench [options]

Builds the release `errand` binary, runs the benchmarks and prints a Markdown report.

options:
  --skip-build          use the existing binary instead of running cargo build
  --bin PATH            the errand binary (default: <target>/release/errand)
  --out FILE            also write the report to FILE
  --dispatch-tasks N    dispatch latency tasks per stream mode (default 200)
  --enqueue-tasks N     tasks per enqueue throughput run (default 1000)
  --events N            events for the batched append bench (default 200000)
  --runs N              timed runs per workspace method (default 10)
  --only LIST           run only these benches (comma-separated: dispatch, enqueue,
                        append, workspace)
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
    only: Option<Vec<String>>,
    args: Vec<String>,
}

impl Options {
    fn wants(&self, bench: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|l| l.iter().any(|b| b == bench))
    }
}

const BENCHES: [&str; 4] = ["dispatch", "enqueue", "append", "workspace"];

fn parse(args: Vec<String>) -> Result<Options> {
    let mut o = Options {
        skip_build: false,
        bin: None,
        out: None,
        dispatch_tasks: 200,
        enqueue_tasks: 1000,
        events: 200_000,
        runs: 10,
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
            "--bin" => o.bin = Some(it.next().context("--bin needs a path")?.into()),
            "--out" => o.out = Some(it.next().context("--out needs a path")?.into()),
            "--dispatch-tasks" => o.dispatch_tasks = num(&a, it.next())?,
            "--enqueue-tasks" => o.enqueue_tasks = num(&a, it.next())?,
            "--events" => o.events = num(&a, it.next())?,
            "--runs" => o.runs = num(&a, it.next())?,
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
    let out = std::process::Command::new("git")
        .current_dir(cwd)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
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

async fn bench(o: Options) -> Result<String> {
    let root = workspace_root();
    if !o.skip_build && o.bin.is_none() {
        build(&root)?;
    }
    let started = Instant::now();
    let bin = o.bin.clone().unwrap_or_else(|| default_bin(&root));
    if !bin.is_file() {
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
    let load_start = loadavg();
    let mut report = format!(
        "## Errand benchmark report\n\nCommand: `{command}`\n\n{}| load average (1/5/15 min) at start | {load_start} |\n\n",
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
        let ws = workspace::run(2000, 5, o.runs).await?;
        eprintln!("bench:   took {:.1} s", t.elapsed().as_secs_f64());
        report += &workspace::report(&ws);
    }

    report += &format!(
        "\nBench run time: {:.0} s (excluding the build). Load average at the end: {}.\n",
        started.elapsed().as_secs_f64(),
        loadavg()
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
        let out = o.out.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        // Ctrl-C drops the bench future, and with it every server child (kill_on_drop).
        let report = rt.block_on(async {
            tokio::select! {
                r = bench(o) => r,
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
