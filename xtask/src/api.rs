//! Benchmarks through the HTTP API of a real `errand serve` process: dispatch latency and
//! enqueue throughput.

use crate::server::Server;
use crate::stats::{Summary, fmt_int, fmt_ms};
use anyhow::{Context, Result, anyhow, bail};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long one task may take from POST to the end of its attempt.
const TASK_DEADLINE: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A small git repository and a one-turn scripted model.
pub struct Fixture {
    pub repo: PathBuf,
    pub script: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub fn create() -> Result<Fixture> {
        let dir = tempfile::Builder::new()
            .prefix("errand-bench-fixture-")
            .tempdir()?;
        let root = dir.path().canonicalize()?;
        let repo = root.join("repo");
        std::fs::create_dir_all(repo.join("src"))?;
        std::fs::write(repo.join("README.md"), "# bench\n\nA small repository.\n")?;
        std::fs::write(
            repo.join("src/lib.rs"),
            "pub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n",
        )?;
        std::fs::write(repo.join(".gitignore"), "target/\n")?;
        crate::git_sync(&repo, &["init", "--quiet", "-b", "main"])?;
        crate::git_sync(&repo, &["add", "-A"])?;
        crate::git_sync(
            &repo,
            &[
                "-c",
                "user.name=x",
                "-c",
                "user.email=x@y",
                "commit",
                "--quiet",
                "-m",
                "initial",
            ],
        )?;
        let script = root.join("script.json");
        std::fs::write(&script, r#"{"turns": [{"text": "done"}]}"#)?;
        Ok(Fixture {
            repo,
            script,
            _dir: dir,
        })
    }

    fn body(&self, prompt: &str) -> Value {
        json!({
            "prompt": prompt,
            "repo": self.repo.display().to_string(),
            "model": format!("scripted:{}", self.script.display()),
            "trigger": "api",
        })
    }
}

pub fn client() -> Result<reqwest::Client> {
    errand_model::install_tls();
    Ok(reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .build()?)
}

async fn post_task(client: &reqwest::Client, server: &Server, body: &Value) -> Result<Value> {
    let resp = client
        .post(server.url("/api/v1/tasks"))
        .json(body)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .context("POST /api/v1/tasks")?;
    let status = resp.status();
    let text = resp.text().await.context("reading the POST response")?;
    if status.as_u16() != 201 {
        bail!("POST /api/v1/tasks returned {status}: {text}");
    }
    serde_json::from_str(&text).context("parsing the created task")
}

/// How the event stream is opened after the POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamConn {
    /// On the client's pooled keep-alive connection (the one the POST just used), as any
    /// HTTP client with a connection pool does.
    Reused,
    /// On a new TCP connection.
    Fresh,
}

/// One task, start to finish.
struct Sample {
    /// From just before the POST to the arrival of the first SSE event.
    dispatch: Duration,
    /// The POST round trip alone.
    post: Duration,
    /// From just before the POST to the SSE response's headers.
    headers: Duration,
    /// From just before the POST to the SSE `end` message.
    total: Duration,
    /// Server clock: the claimed event's timestamp minus the task's creation (1 ms steps).
    queue_wait_ms: Option<i64>,
    status: String,
    id: String,
}

/// The pooled client for everything, and a client that opens a new connection per request.
pub struct Clients {
    pooled: reqwest::Client,
    fresh: reqwest::Client,
}

impl Clients {
    pub fn new() -> Result<Clients> {
        Ok(Clients {
            pooled: client()?,
            fresh: {
                errand_model::install_tls();
                reqwest::Client::builder()
            }
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(0)
            .build()?,
        })
    }
}

async fn run_one(
    clients: &Clients,
    conn: StreamConn,
    server: &Server,
    fx: &Fixture,
    prompt: &str,
) -> Result<Sample> {
    let deadline = tokio::time::Instant::now() + TASK_DEADLINE;
    let t0 = Instant::now();
    let task = post_task(&clients.pooled, server, &fx.body(prompt)).await?;
    let post = t0.elapsed();
    let id = task["id"]
        .as_str()
        .context("the task has no id")?
        .to_string();
    let created = task["created_at_ms"].as_i64();
    let stream_client = match conn {
        StreamConn::Reused => &clients.pooled,
        StreamConn::Fresh => &clients.fresh,
    };
    let resp = stream_client
        .get(server.url(&format!("/api/v1/tasks/{id}/events/stream")))
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .timeout(TASK_DEADLINE)
        .send()
        .await
        .context("opening the event stream")?;
    let headers = t0.elapsed();
    if !resp.status().is_success() {
        bail!("the event stream of {id} returned {}", resp.status());
    }
    let mut events = resp.bytes_stream().eventsource();
    let mut first: Option<(Duration, Value)> = None;
    let status = loop {
        let next = tokio::time::timeout_at(deadline, events.next())
            .await
            .map_err(|_| anyhow!("task {id} did not end within {TASK_DEADLINE:?}"))?;
        let ev = match next {
            None => bail!("the event stream of {id} closed before its `end` message"),
            Some(Err(e)) => bail!("reading the event stream of {id}: {e}"),
            Some(Ok(ev)) => ev,
        };
        match ev.event.as_str() {
            "end" => {
                let v: Value = serde_json::from_str(&ev.data).unwrap_or_default();
                break v["status"].as_str().unwrap_or("?").to_string();
            }
            "error" => bail!("the event stream of {id} reported an error: {}", ev.data),
            _ => {
                if first.is_none() {
                    let v: Value = serde_json::from_str(&ev.data)
                        .with_context(|| format!("parsing event {}", ev.data))?;
                    first = Some((t0.elapsed(), v));
                }
            }
        }
    };
    let total = t0.elapsed();
    let (dispatch, first) = first.with_context(|| format!("task {id} ended without events"))?;
    if first["type"] != "claimed" {
        bail!("the first event of {id} is not `claimed`: {first}");
    }
    Ok(Sample {
        dispatch,
        post,
        headers,
        total,
        queue_wait_ms: match (created, first["ts_ms"].as_i64()) {
            (Some(c), Some(t)) => Some(t - c),
            _ => None,
        },
        status,
        id,
    })
}

async fn explain_failure(client: &reqwest::Client, server: &Server, s: &Sample) -> String {
    let url = server.url(&format!("/api/v1/tasks/{}", s.id));
    let task = match client.get(url).timeout(REQUEST_TIMEOUT).send().await {
        Ok(r) => r.json::<Value>().await.unwrap_or_default(),
        Err(_) => Value::Null,
    };
    format!(
        "warm-up task {} ended {}: {}",
        s.id, s.status, task["attempts"][0]["error"]
    )
}

pub struct Variant {
    pub conn: StreamConn,
    pub dispatch: Summary,
    pub headers: Summary,
    pub post: Summary,
    pub total: Summary,
    pub queue_wait: Summary,
    pub failed: usize,
}

pub struct DispatchResult {
    pub tasks: usize,
    pub warmup: usize,
    pub workers: usize,
    pub variants: Vec<Variant>,
    pub wall: Duration,
}

/// `tasks` tasks per stream mode, the modes taking turns, one task at a time.
pub async fn dispatch(
    bin: &Path,
    fx: &Fixture,
    tasks: usize,
    warmup: usize,
    workers: usize,
) -> Result<DispatchResult> {
    let server = Server::start(bin, workers).await?;
    let clients = Clients::new()?;
    let modes = [StreamConn::Reused, StreamConn::Fresh];
    let r = async {
        for i in 0..warmup {
            let s = run_one(&clients, modes[i % 2], &server, fx, &format!("warm-up {i}")).await?;
            if s.status != "done" {
                bail!("{}", explain_failure(&clients.pooled, &server, &s).await);
            }
        }
        let start = Instant::now();
        let mut samples: Vec<Vec<Sample>> = modes.iter().map(|_| Vec::new()).collect();
        for i in 0..tasks * modes.len() {
            let k = i % modes.len();
            let prompt = format!("dispatch {i}");
            samples[k].push(run_one(&clients, modes[k], &server, fx, &prompt).await?);
            if (i + 1) % 100 == 0 {
                eprintln!("bench:   {}/{} tasks", i + 1, tasks * modes.len());
            }
        }
        let wall = start.elapsed();
        let variants = modes
            .iter()
            .zip(samples)
            .map(|(&conn, samples)| {
                let pick = |f: fn(&Sample) -> Duration| {
                    Summary::new(&samples.iter().map(f).collect::<Vec<_>>())
                };
                Variant {
                    conn,
                    dispatch: pick(|s| s.dispatch),
                    headers: pick(|s| s.headers),
                    post: pick(|s| s.post),
                    total: pick(|s| s.total),
                    queue_wait: Summary::from_ms(
                        &samples
                            .iter()
                            .filter_map(|s| s.queue_wait_ms.map(|v| v as f64))
                            .collect::<Vec<_>>(),
                    ),
                    failed: samples.iter().filter(|s| s.status != "done").count(),
                }
            })
            .collect();
        Ok(DispatchResult {
            tasks,
            warmup,
            workers,
            variants,
            wall,
        })
    }
    .await;
    let r = r.map_err(|e| anyhow!("{e:#}\nserver log:\n{}", server.log_tail()));
    server.stop().await?;
    r
}

pub struct EnqueueResult {
    pub tasks: usize,
    pub concurrency: usize,
    pub workers: usize,
    pub wall: Duration,
    pub latency: Summary,
}

impl EnqueueResult {
    pub fn per_sec(&self) -> f64 {
        self.tasks as f64 / self.wall.as_secs_f64()
    }
}

pub async fn enqueue(
    bin: &Path,
    fx: &Fixture,
    tasks: usize,
    concurrency: usize,
    workers: usize,
) -> Result<EnqueueResult> {
    let server = Arc::new(Server::start(bin, workers).await?);
    let client = client()?;
    let r = async {
        // One request first, so that the connection set-up and any first-use costs are out.
        post_task(&client, &server, &fx.body("enqueue warm-up")).await?;
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (client, server, next) = (client.clone(), server.clone(), next.clone());
            let body = fx.body("enqueue");
            set.spawn(async move {
                let mut lat = Vec::new();
                loop {
                    if next.fetch_add(1, Ordering::Relaxed) >= tasks {
                        break;
                    }
                    let t = Instant::now();
                    post_task(&client, &server, &body).await?;
                    lat.push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(lat)
            });
        }
        let mut latency = Vec::with_capacity(tasks);
        let joined = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(r) = set.join_next().await {
                latency.extend(r.context("an enqueue client panicked")??);
            }
            Ok::<_, anyhow::Error>(())
        })
        .await;
        match joined {
            Ok(r) => r?,
            Err(_) => bail!("enqueueing {tasks} tasks took more than 120 s"),
        }
        let wall = start.elapsed();
        if latency.len() != tasks {
            bail!("expected {tasks} created tasks, got {}", latency.len());
        }
        Ok(EnqueueResult {
            tasks,
            concurrency,
            workers,
            wall,
            latency: Summary::new(&latency),
        })
    }
    .await;
    let r = r.map_err(|e| anyhow!("{e:#}\nserver log:\n{}", server.log_tail()));
    // Every clone of the Arc lives in a finished client task by now.
    match Arc::try_unwrap(server) {
        Ok(s) => s.stop().await?,
        Err(s) => drop(s), // kill_on_drop once the last clone goes
    }
    r
}

pub fn report_dispatch(r: &DispatchResult) -> String {
    let mut s = String::new();
    s += &format!(
        "### 1. Dispatch latency\n\n{} tasks per stream mode, one at a time, the two modes \
         taking turns (after {} warm-up tasks), `--workers {}`. Each task is waited on until its \
         attempt ended, so a worker is always idle when the POST arrives. Dispatch latency = from \
         just before `POST /api/v1/tasks` to the arrival of the attempt's first SSE event \
         (`claimed`) on `GET /api/v1/tasks/{{id}}/events/stream` opened right after the POST \
         returned, either on the keep-alive connection the POST used (what a pooling HTTP client \
         does) or on a new connection.\n\n",
        r.tasks, r.warmup, r.workers
    );
    s += "| metric (ms) | p50 | p90 | p99 | max |\n|---|---:|---:|---:|---:|\n";
    let row = |name: &str, x: &Summary| {
        format!(
            "| {name} | {} | {} | {} | {} |\n",
            fmt_ms(x.pct(50.0)),
            fmt_ms(x.pct(90.0)),
            fmt_ms(x.pct(99.0)),
            fmt_ms(x.max())
        )
    };
    let name = |c: StreamConn| match c {
        StreamConn::Reused => "stream on the reused connection",
        StreamConn::Fresh => "stream on a new connection",
    };
    for v in &r.variants {
        s += &row(
            &format!("**POST → first event**, {}", name(v.conn)),
            &v.dispatch,
        );
    }
    for v in &r.variants {
        s += &row(
            &format!("POST → SSE response headers, {}", name(v.conn)),
            &v.headers,
        );
    }
    let all = |f: fn(&Variant) -> &Summary| {
        let mut ms = Vec::new();
        for v in &r.variants {
            ms.extend_from_slice(f(v).values());
        }
        Summary::from_ms(&ms)
    };
    s += &row("POST round trip (both modes)", &all(|v| &v.post));
    s += &row(
        "server clock: task created → `claimed` written (1 ms resolution, both modes)",
        &all(|v| &v.queue_wait),
    );
    s += &row(
        "POST → SSE `end` (attempt finished, both modes)",
        &all(|v| &v.total),
    );
    s += "\n";
    for v in &r.variants {
        let p50 = v.dispatch.pct(50.0);
        s += &format!(
            "Target p50 < 50 ms, {}: {} (p50 = {} ms).\n",
            name(v.conn),
            if p50 < 50.0 { "met" } else { "**missed**" },
            fmt_ms(p50)
        );
    }
    s += &format!(
        "\nAttempts not `done`: {}. Wall time {:.1} s.\n",
        r.variants.iter().map(|v| v.failed).sum::<usize>(),
        r.wall.as_secs_f64()
    );
    s
}

pub fn report_enqueue(rs: &[EnqueueResult]) -> String {
    let mut s = String::from(
        "### 2. Enqueue throughput\n\n`POST /api/v1/tasks` as fast as the clients can go \
         (each request validates the repo and base with git and inserts the task durably).\n\n",
    );
    s += "| tasks | client connections | server workers | total (s) | tasks/s | request p50 (ms) | p99 (ms) | target < 5 s |\n";
    s += "|---:|---:|---:|---:|---:|---:|---:|---|\n";
    for r in rs {
        // 1,000 tasks in < 5 s is 200 tasks/s.
        let met = if r.per_sec() > 200.0 { "yes" } else { "**no**" };
        s += &format!(
            "| {} | {} | {} | {:.2} | {} | {} | {} | {met} |\n",
            fmt_int(r.tasks as f64),
            r.concurrency,
            r.workers,
            r.wall.as_secs_f64(),
            fmt_int(r.per_sec()),
            fmt_ms(r.latency.pct(50.0)),
            fmt_ms(r.latency.pct(99.0)),
        );
    }
    s
}
