//! `errand`: dispatch coding tasks to background agents, follow them, and review the result.
//!
//! Every command but `serve` and `demo` talks to a server over HTTP (`--server`, or
//! `ERRAND_SERVER`, default `http://127.0.0.1:7878`).

mod apply;
mod client;
mod demo;
mod plan_cmd;
mod render;
mod sandbox_cmd;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use client::Client;
use errand_core::{CheckSpec, TaskRequest};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7878";

#[derive(Parser)]
#[command(
    name = "errand",
    version,
    about = "Background coding agents: dispatch a task, come back to a branch, a diff and the full log."
)]
struct Cli {
    /// Errand server to talk to.
    #[arg(long, global = true, env = "ERRAND_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server with embedded workers (SQLite in the data directory).
    Serve(ServeArgs),
    /// Create a task: an agent works on it in the background on its own branch.
    Run(RunArgs),
    /// List tasks, newest first.
    Ls {
        /// Only tasks with this status (queued, running, done, failed, cancelled, …).
        #[arg(long)]
        status: Option<String>,
        /// How many tasks to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show a task: status, branch, diff stats, timings, usage and check results.
    Show {
        task: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a task's event log: model turns, tool calls, commands, output and exit codes.
    Logs {
        task: String,
        /// Keep streaming new events until the attempt ends.
        #[arg(short, long)]
        follow: bool,
        /// Attempt number (default: the task's result attempt).
        #[arg(long)]
        attempt: Option<i64>,
        /// One JSON event per line.
        #[arg(long)]
        json: bool,
        /// Only the network decisions of the egress proxy (allowed or denied, host, port,
        /// method, bytes, duration), with totals.
        #[arg(long)]
        net: bool,
    },
    /// Print the unified diff of an attempt against its base.
    Diff {
        task: String,
        #[arg(long)]
        attempt: Option<i64>,
        /// Only the per-file summary.
        #[arg(long)]
        stat: bool,
        /// Only this file's changes.
        #[arg(long)]
        file: Option<String>,
    },
    /// Apply an attempt's change onto the current checkout, with a 3-way merge where it does
    /// not apply cleanly; lists the applied, conflicted and skipped paths.
    Apply {
        task: String,
        #[arg(long)]
        attempt: Option<i64>,
        /// The checkout to apply to (default: the current directory).
        #[arg(long, short = 'C')]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a task: its agents stop and their boxes are torn down.
    Cancel {
        task: String,
        #[arg(long)]
        json: bool,
    },
    /// Push an ended attempt's branch and open (or update) its pull request on the
    /// environment's forge.
    Pr {
        task: String,
        /// Open it as a draft (an existing pull request keeps its state).
        #[arg(long)]
        draft: bool,
        #[arg(long)]
        attempt: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Best-of-N: the attempts of a task side by side (checks, reviewer verdict, diff size,
    /// cost, time, rank), the task's result marked.
    Compare {
        task: String,
        #[arg(long)]
        json: bool,
    },
    /// Make an ended attempt the task's result (what diff, apply, pr and delivery use); with
    /// push on, its branch is pushed and its pull request opened or updated.
    Pick {
        task: String,
        /// The attempt's number, or its id.
        attempt: String,
        #[arg(long)]
        json: bool,
    },
    /// Continue a finished task: the agent picks up its branch and conversation with a new
    /// request, and the branch gets a new commit.
    Followup {
        task: String,
        /// What else the agent should do.
        prompt: String,
        /// Stream the log until the follow-up ends.
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Approve the plan of a task waiting for approval (`run --plan`): the agent implements it.
    Approve(plan_cmd::ApproveArgs),
    /// Send the plan of a task waiting for approval back with a comment: the agent plans again.
    Revise(plan_cmd::ReviseArgs),
    /// Reject the plan of a task waiting for approval: the task ends, cancelled.
    Reject(plan_cmd::RejectArgs),
    /// Model providers: what is configured, where each key comes from, and whether it works.
    Models {
        #[command(subcommand)]
        command: Option<ModelsCommand>,
        #[arg(long)]
        json: bool,
    },
    /// Try the box that attempts run in: run a command in it, or check what this host enforces.
    #[command(subcommand)]
    Sandbox(sandbox_cmd::SandboxCommand),
    /// Run the whole pipeline on a generated sample repository, offline, with a scripted model.
    Demo {
        /// Data directory of the embedded server (default: $ERRAND_HOME).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// One cheap request per model (no tokens spent where the API allows): reachable? key
    /// valid? model exists? Without PROVIDER: every provider whose key is set.
    Check {
        provider: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: String,
    /// Where the database, mirrors and workspaces live (default: $ERRAND_HOME, else ~/.local/share/errand).
    #[arg(long, env = "ERRAND_HOME")]
    data_dir: Option<PathBuf>,
    /// Embedded workers (attempts that run at once). 0 runs the API only.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Configuration file (default: <data-dir>/errand.toml when present).
    #[arg(long, env = "ERRAND_CONFIG")]
    config: Option<PathBuf>,
    /// Lease length for attempts; a worker silent this long loses its attempt.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    lease_ttl: std::time::Duration,
    /// box (default): every command runs in an isolated box; none: no isolation, for trusted
    /// local use only (every event of such an attempt is marked unisolated).
    #[arg(long, default_value = "box")]
    sandbox: String,
    /// Memory limit of each attempt's box, like 4G.
    #[arg(long, default_value = "4G")]
    memory: String,
    /// Process limit of each attempt's box.
    #[arg(long, default_value_t = 1024)]
    pids: u64,
    /// Workspace disk quota of each attempt, like 10G.
    #[arg(long, default_value = "10G")]
    disk: String,
    /// Wall-time limit of one attempt.
    #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
    attempt_timeout: std::time::Duration,
}

#[derive(Args)]
struct RunArgs {
    /// What the agent should do.
    prompt: String,
    /// Local path or git URL of the repository (default: the current directory).
    #[arg(long)]
    repo: Option<String>,
    /// Branch, tag or commit to start from (default: the repository's default branch).
    #[arg(long)]
    base: Option<String>,
    /// Environment from errand.toml.
    #[arg(long)]
    env: Option<String>,
    /// Model as provider:model: anthropic:claude-sonnet-4-5, openai:gpt-5,
    /// gemini:gemini-2.5-pro, ollama:qwen2.5-coder, a [providers.NAME] from errand.toml, or
    /// scripted:./turns.json. Default: the environment's, else the server's default_model, else
    /// the first provider whose key is set. Repeat it to cycle several models across the
    /// attempts.
    #[arg(long)]
    model: Vec<String>,
    /// Best-of-N: run N attempts in parallel (1 to 8), each on its own branch; they are
    /// ranked when they end (default: 1, or the number of --model).
    #[arg(long, value_name = "N")]
    attempts: Option<u32>,
    /// A reviewer model that reads the diff, plan and check results after the checks and
    /// returns a verdict; its findings go back to the agent (default: the environment's or
    /// server's review_model).
    #[arg(long, value_name = "MODEL")]
    review: Option<String>,
    /// How many times the reviewer's findings go back to the agent (default 1).
    #[arg(long, value_name = "N")]
    max_review_rounds: Option<u32>,
    /// A provider option, KEY=VALUE (repeatable), for example reasoning_effort=high or
    /// temperature=0.2. VALUE is read as JSON when it parses, else as a string.
    #[arg(long = "model-option", value_name = "KEY=VALUE")]
    model_options: Vec<String>,
    /// Stop after this many model turns.
    #[arg(long)]
    max_turns: Option<u32>,
    /// Stop once the attempt has used this many tokens (input plus output).
    #[arg(long)]
    max_tokens: Option<u64>,
    /// Stop once the attempt has cost this many US dollars, like 2.50.
    #[arg(long, value_name = "USD")]
    max_cost: Option<f64>,
    /// Stop the agent after this much wall time, like 30m.
    #[arg(long, value_parser = humantime::parse_duration)]
    max_time: Option<std::time::Duration>,
    /// A check command the worker runs after the agent (repeatable; NAME=COMMAND or COMMAND).
    #[arg(long = "check")]
    checks: Vec<String>,
    /// Plan mode: the agent explores a read-only workspace and proposes a plan, which waits
    /// for `errand approve`, `revise` or `reject` before anything changes.
    #[arg(long)]
    plan: bool,
    /// Stream the log until the task ends (or, with --plan, until its plan waits for approval).
    #[arg(short, long)]
    follow: bool,
    /// Print the created task as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // A box re-executes this binary; that must happen before any thread starts.
    errand_sandbox::ns::maybe_run_box();
    let cli = Cli::parse();
    // Servers that run boxes get their own mount namespace (before any thread starts) so that
    // attempt workspaces can be copy-on-write overlays.
    let cow = match &cli.command {
        Command::Serve(a) if a.sandbox == "box" => {
            Some(errand_sandbox::cow::enter_private_namespace())
        }
        Command::Demo { .. } => Some(errand_sandbox::cow::enter_private_namespace()),
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async_main(cli, cow))
}

async fn async_main(cli: Cli, cow: Option<Result<(), String>>) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ERRAND_LOG").unwrap_or_else(|_| {
        let default = if matches!(cli.command, Command::Serve(_)) {
            "info"
        } else {
            "warn"
        };
        tracing_subscriber::EnvFilter::new(default)
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Some(Err(e)) = cow {
        tracing::warn!(error = %e, "copy-on-write workspaces are unavailable; attempts get full checkouts");
    }
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let client = Client::new(&cli.server)?;
    match cli.command {
        Command::Serve(a) => serve(a).await,
        Command::Run(a) => run(&client, a).await,
        Command::Ls {
            status,
            limit,
            json,
        } => {
            let page = client.list(status.as_deref(), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                let tasks: Vec<errand_core::Task> = serde_json::from_value(page["tasks"].clone())?;
                print!("{}", render::task_table(&tasks));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { task, json } => {
            let t = client.task(&task).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                print!("{}", render::show(&t));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            task,
            follow,
            attempt,
            json,
            net,
        } => {
            let mode = match (net, json) {
                (true, true) => render::LogMode::NetJson,
                (true, false) => render::LogMode::NetHuman,
                (false, true) => render::LogMode::Json,
                (false, false) => render::LogMode::Human,
            };
            if follow {
                client.follow(&task, attempt, 0, mode).await?;
            } else {
                client.print_events(&task, attempt, mode).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply {
            task,
            attempt,
            dir,
            json,
        } => apply::run(&client, &task, attempt, dir, json).await,
        Command::Diff {
            task,
            attempt,
            stat,
            file,
        } => {
            if stat {
                let d = client.diff_json(&task, attempt).await?;
                let stats: errand_core::DiffStats =
                    serde_json::from_value(d["stats"].clone()).unwrap_or_default();
                print!("{}", render::diffstat(&stats));
            } else {
                print!("{}", client.diff(&task, attempt, file.as_deref()).await?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Pr {
            task,
            draft,
            attempt,
            json,
        } => {
            let v = client.pr(&task, draft, attempt).await?;
            let d: errand_core::Delivery =
                serde_json::from_value(v["delivery"].clone()).unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if let Some(e) = &d.error {
                bail!(
                    "{}{}",
                    e,
                    if d.retryable {
                        " (this may work if you try again)"
                    } else {
                        ""
                    }
                );
            } else {
                println!("{}", d.summary());
            }
            Ok(if d.error.is_none() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Followup {
            task,
            prompt,
            follow,
            json,
        } => {
            if prompt.trim().is_empty() {
                bail!(
                    "the follow-up is empty; say what else the agent should do, for example: errand followup {task} \"Also cover the empty cart\""
                );
            }
            let before = client.task(&task).await?;
            let last_seq = before
                .result_attempt()
                .map(|a| a.last_seq)
                .unwrap_or_default();
            let t = client.followup(&task, &prompt, &whoami()).await?;
            if json && !follow {
                println!("{}", serde_json::to_string_pretty(&t)?);
                return Ok(ExitCode::SUCCESS);
            }
            if !json {
                println!("follow-up queued on task {} ({})", t.short_id, t.title);
            }
            if !follow {
                println!("follow it with: errand logs -f {}", t.short_id);
                return Ok(ExitCode::SUCCESS);
            }
            let mode = if json {
                render::LogMode::Json
            } else {
                render::LogMode::Human
            };
            client.follow(&t.id, None, last_seq, mode).await?;
            let done = client.task(&t.id).await?;
            if !json {
                println!();
                print!("{}", render::show(&done));
            }
            Ok(if done.status == errand_core::Status::Done {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Compare { task, json } => {
            let t = client.task(&task).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&render::compare_json(&t))?
                );
            } else {
                print!("{}", render::compare(&t));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Pick {
            task,
            attempt,
            json,
        } => {
            let before = client.task(&task).await?;
            let v = client.pick(&before.id, &attempt, &whoami()).await?;
            let t: errand_core::Task =
                serde_json::from_value(v["task"].clone()).context("decoding the task")?;
            let d: Option<errand_core::Delivery> =
                serde_json::from_value(v["delivery"].clone()).unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let was = before.result_attempt().map(|a| a.number);
                let now = t.result_attempt().map(|a| a.number).unwrap_or_default();
                println!(
                    "attempt {now} is the result of task {} now{}",
                    t.short_id,
                    match was {
                        Some(w) if w != now => format!(" (was attempt {w})"),
                        _ => String::new(),
                    }
                );
                if let Some(d) = &d {
                    println!("{}", d.summary());
                }
                match v["superseded_all"].as_array() {
                    Some(all) if !all.is_empty() => {
                        for c in all {
                            println!("{}", superseded_line(c));
                        }
                    }
                    _ => {
                        if let Some(url) = v["superseded_pr"].as_str() {
                            println!(
                                "the earlier result's pull request stays open: {url} (close it on the forge if it is no longer wanted)"
                            );
                        }
                    }
                }
            }
            Ok(if d.as_ref().is_some_and(|d| d.error.is_some()) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Cancel { task, json } => {
            let t = client.cancel(&task).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!("cancelled task {} ({})", t.short_id, t.title);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve(a) => plan_cmd::approve(&client, a).await,
        Command::Revise(a) => plan_cmd::revise(&client, a).await,
        Command::Reject(a) => plan_cmd::reject(&client, a).await,
        Command::Models { command, json } => models(&client, command, json).await,
        Command::Demo { data_dir } => demo::run(&cli.server, data_dir).await,
        Command::Sandbox(cmd) => sandbox_cmd::run(cmd).await,
    }
}

/// What `errand pick` did with a superseded result's pull request (one entry of the answer's
/// `superseded_all`).
fn superseded_line(c: &serde_json::Value) -> String {
    let url = c["pr_url"].as_str().unwrap_or("?");
    let error = c["error"].as_str();
    match (c["outcome"].as_str(), error) {
        (Some("closed"), None) => format!("closed the superseded pull request {url}"),
        (Some("closed"), Some(e)) => format!("closed the superseded pull request {url}; {e}"),
        (Some("already_closed"), _) => {
            format!("the superseded pull request {url} was closed already")
        }
        (Some("merged"), _) => {
            format!("the superseded pull request {url} was merged already; left as it is")
        }
        (_, e) => format!(
            "the superseded pull request {url} stays open: {}; pick again to retry, or close it on the forge",
            e.unwrap_or("not closed")
        ),
    }
}

async fn serve(a: ServeArgs) -> Result<ExitCode> {
    let data_dir = a.data_dir.unwrap_or_else(errand_server::default_data_dir);
    let mut opts = errand_server::ServeOptions::new(a.listen, data_dir.clone());
    opts.workers = a.workers;
    opts.config = a.config;
    opts.lease_ttl = a.lease_ttl;
    opts.heartbeat_every = (a.lease_ttl / 6).max(std::time::Duration::from_millis(100));
    opts.sandbox = a.sandbox.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    opts.limits.memory_bytes = Some(sandbox_cmd::parse_size(&a.memory).context("--memory")?);
    opts.limits.pids = Some(a.pids);
    opts.limits.disk_bytes = Some(sandbox_cmd::parse_size(&a.disk).context("--disk")?);
    opts.attempt_timeout = a.attempt_timeout;
    let handle = errand_server::start(opts).await?;
    // Tests and scripts read this line to find the port.
    println!(
        "errand: listening on http://{} (data: {})",
        handle.addr,
        data_dir.display()
    );
    let shutdown = handle.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("errand: shutting down");
        shutdown.cancel();
    });
    handle.wait().await?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut i), Ok(mut t)) => {
            tokio::select! {
                _ = i.recv() => {}
                _ = t.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Makes a local path absolute (the server may run in another directory); URLs pass through.
fn absolute(p: &str) -> Result<String> {
    // The same rule the server applies to decide between a path and a URL.
    if errand_git::is_url(p) {
        return Ok(p.to_string());
    }
    let path = Path::new(p);
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("reading the current directory")?
            .join(path)
    };
    Ok(abs.display().to_string())
}

fn parse_check(s: &str, i: usize) -> Result<CheckSpec> {
    if s.trim().is_empty() {
        bail!(
            "--check needs a command, for example --check \"cargo test\" or --check tests=\"cargo test\""
        );
    }
    match s.split_once('=') {
        Some((name, cmd))
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) =>
        {
            Ok(CheckSpec {
                name: name.to_string(),
                command: cmd.to_string(),
                junit: None,
            })
        }
        _ => Ok(CheckSpec {
            name: format!("check-{i}"),
            command: s.to_string(),
            junit: None,
        }),
    }
}

fn whoami() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "cli".into())
}

async fn run(client: &Client, a: RunArgs) -> Result<ExitCode> {
    if a.prompt.trim().is_empty() {
        bail!(
            "the prompt is empty; describe the task, for example: errand run \"Fix the failing test in orders\""
        );
    }
    let repo = match (&a.repo, &a.env) {
        (Some(r), _) => Some(absolute(r)?),
        (None, Some(_)) => None,
        (None, None) => Some(absolute(".")?),
    };
    let scripted_absolute = |m: &str| -> Result<String> {
        Ok(match m.strip_prefix("scripted:") {
            Some(path) if !path.is_empty() => format!("scripted:{}", absolute(path)?),
            _ => m.to_string(),
        })
    };
    let mut models = a
        .model
        .iter()
        .map(|m| scripted_absolute(m))
        .collect::<Result<Vec<_>>>()?;
    let model = if models.len() == 1 {
        models.pop()
    } else {
        None
    };
    if let Some(n) = a.attempts
        && !(1..=8).contains(&n)
    {
        bail!("--attempts {n}: run between 1 and 8 attempts");
    }
    let review_model = a.review.as_deref().map(scripted_absolute).transpose()?;
    let checks = if a.checks.is_empty() {
        None
    } else {
        Some(
            a.checks
                .iter()
                .enumerate()
                .map(|(i, c)| parse_check(c, i + 1))
                .collect::<Result<Vec<_>>>()?,
        )
    };
    let mut model_options = std::collections::BTreeMap::new();
    for o in &a.model_options {
        let (k, v) = errand_model::parse_model_option(o)
            .map_err(|e| anyhow::anyhow!("--model-option: {e}"))?;
        model_options.insert(k, v);
    }
    let budget = errand_core::Budget {
        max_turns: a.max_turns,
        max_tokens: a.max_tokens,
        max_cost_usd: a.max_cost,
        max_time_secs: a.max_time.map(|d| d.as_secs().max(1)),
    };
    budget.validate().map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.replace("budget max_", "--max-")
                .replace("_usd", "")
                .replace("_secs", "")
                .replace('_', "-")
        )
    })?;
    let req = TaskRequest {
        prompt: a.prompt.clone(),
        repo,
        base: a.base.clone(),
        env: a.env.clone(),
        model,
        trigger: Some("cli".into()),
        created_by: Some(whoami()),
        checks,
        model_options,
        budget,
        mode: a.plan.then(|| "plan".to_string()),
        models,
        attempts: a.attempts,
        review_model,
        max_review_rounds: a.max_review_rounds,
    };
    let task = client.create(&req).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&task)?);
    } else {
        println!("created task {} — {}", task.short_id, task.title);
        if task.attempts.len() > 1 {
            println!(
                "{} attempts  base {} @ {}",
                task.attempts.len(),
                task.base_ref,
                render::short_sha(&task.base_commit)
            );
            for at in &task.attempts {
                println!("  attempt {}: {}  {}", at.number, at.branch, at.model);
            }
        } else if let Some(at) = task.result_attempt() {
            println!(
                "branch {}  base {} @ {}",
                at.branch,
                task.base_ref,
                render::short_sha(&task.base_commit)
            );
        }
        if a.plan {
            println!(
                "plan mode: the agent proposes a plan first; then errand show {id}, and errand approve {id} (or revise / reject)",
                id = task.short_id
            );
        }
        if let Some(r) = &task.review_model {
            println!("reviewer {r}");
        }
        if !a.follow {
            println!("follow it with: errand logs -f {}", task.short_id);
        }
    }
    if !a.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mode = if a.json {
        render::LogMode::Json
    } else {
        render::LogMode::Human
    };
    let done = if task.attempts.len() > 1 {
        let done = client.follow_attempts(&task.id, a.json).await?;
        if !a.json {
            println!();
            print!("{}", render::show(&done));
            println!();
            print!("{}", render::compare(&done));
        }
        done
    } else {
        client.follow(&task.id, None, 0, mode).await?;
        let done = client.task(&task.id).await?;
        if !a.json {
            println!();
            print!("{}", render::show(&done));
        }
        done
    };
    Ok(if plan_cmd::end_ok(&done) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn models(client: &Client, command: Option<ModelsCommand>, json: bool) -> Result<ExitCode> {
    match command {
        None => {
            let v = client.models().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", render::models(&v));
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(ModelsCommand::Check {
            provider,
            json: json2,
        }) => {
            let v = client.check_models(provider.as_deref()).await?;
            let results = v["results"].as_array().cloned().unwrap_or_default();
            if json || json2 {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", render::model_checks(&results));
            }
            let all_ok = results.iter().all(|r| r["ok"].as_bool() == Some(true));
            Ok(if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
