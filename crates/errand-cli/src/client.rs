//! The CLI's HTTP client for the `/api/v1` API.

use crate::render::{self, LogMode};
use anyhow::{Context, Result, anyhow, bail};
use errand_core::{Event, Task, TaskRequest};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use std::time::Duration;

pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str) -> Result<Client> {
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!(
                "--server '{server}' must be an http:// or https:// URL, for example {}",
                crate::DEFAULT_SERVER
            );
        }
        errand_model::install_tls();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        Ok(Client { base, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn unreachable(&self, e: &reqwest::Error) -> anyhow::Error {
        if e.is_connect() || e.is_timeout() {
            anyhow!(
                "no errand server is running at {}; start one with `errand serve` (or pass --server URL / set ERRAND_SERVER)",
                self.base
            )
        } else {
            anyhow!("request to {} failed: {e}", self.base)
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("server answered {status}: {}", body.trim()));
        Err(anyhow!(message))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.send(self.http.get(self.url(path))).await?;
        resp.json().await.context("decoding the server's answer")
    }

    pub async fn health(&self) -> Result<serde_json::Value> {
        self.get_json("/health").await
    }

    pub async fn create(&self, req: &TaskRequest) -> Result<Task> {
        let resp = self
            .send(self.http.post(self.url("/tasks")).json(req))
            .await?;
        resp.json().await.context("decoding the created task")
    }

    pub async fn list(&self, status: Option<&str>, limit: usize) -> Result<serde_json::Value> {
        let mut path = format!("/tasks?limit={limit}");
        if let Some(s) = status {
            path.push_str(&format!("&status={}", errand_git::percent_encode(s)));
        }
        self.get_json(&path).await
    }

    pub async fn models(&self) -> Result<serde_json::Value> {
        self.get_json("/models").await
    }

    pub async fn check_models(&self, provider: Option<&str>) -> Result<serde_json::Value> {
        let resp = self
            .send(
                self.http
                    .post(self.url("/models/check"))
                    .json(&serde_json::json!({ "provider": provider })),
            )
            .await?;
        resp.json().await.context("decoding the check results")
    }

    pub async fn task(&self, id: &str) -> Result<Task> {
        self.get_json(&format!("/tasks/{}", errand_git::percent_encode(id)))
            .await
    }

    pub async fn followup(&self, id: &str, prompt: &str, by: &str) -> Result<Task> {
        let resp = self
            .send(
                self.http
                    .post(self.url(&format!(
                        "/tasks/{}/followup",
                        errand_git::percent_encode(id)
                    )))
                    .json(&serde_json::json!({ "prompt": prompt, "created_by": by })),
            )
            .await?;
        resp.json().await.context("decoding the task")
    }

    /// Approves, revises or rejects the plan of a task waiting for approval.
    pub async fn decide(
        &self,
        id: &str,
        action: errand_core::PlanAction,
        actor: &str,
        comment: Option<&str>,
    ) -> Result<Task> {
        let resp = self
            .send(
                self.http
                    .post(self.url(&format!(
                        "/tasks/{}/{action}",
                        errand_git::percent_encode(id)
                    )))
                    .json(&serde_json::json!({ "actor": actor, "comment": comment })),
            )
            .await?;
        resp.json().await.context("decoding the task")
    }

    pub async fn pr(
        &self,
        id: &str,
        draft: bool,
        attempt: Option<i64>,
    ) -> Result<serde_json::Value> {
        let resp = self
            .send(
                self.http
                    .post(self.url(&format!("/tasks/{}/pr", errand_git::percent_encode(id))))
                    .json(&serde_json::json!({ "draft": draft, "attempt": attempt })),
            )
            .await?;
        resp.json().await.context("decoding the answer")
    }

    pub async fn pick(&self, id: &str, attempt: &str, by: &str) -> Result<serde_json::Value> {
        let attempt = match attempt.trim().parse::<i64>() {
            Ok(n) => serde_json::json!(n),
            Err(_) => serde_json::json!(attempt.trim()),
        };
        let resp = self
            .send(
                self.http
                    .post(self.url(&format!("/tasks/{}/pick", errand_git::percent_encode(id))))
                    .json(&serde_json::json!({ "attempt": attempt, "by": by })),
            )
            .await?;
        resp.json().await.context("decoding the answer")
    }

    /// Follows a task with several attempts: a line each time an attempt changes status,
    /// until every attempt has ended (and, when the environment pushes, the result has been
    /// delivered). Returns the task as it ended.
    pub async fn follow_attempts(&self, id: &str, json: bool) -> Result<Task> {
        let mut seen: std::collections::HashMap<String, errand_core::Status> = Default::default();
        let mut ended_at: Option<std::time::Instant> = None;
        loop {
            let t = self.task(id).await?;
            for a in &t.attempts {
                if seen.get(&a.id) != Some(&a.status) {
                    seen.insert(a.id.clone(), a.status);
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"attempt": a.number, "status": a.status, "model": a.model})
                        );
                    } else {
                        println!("{}", render::attempt_line(a));
                    }
                }
            }
            if t.status.is_terminal() {
                // The result of a best-of-N task is pushed once the last attempt has ended.
                let delivering = t.environment.push
                    && t.status == errand_core::Status::Done
                    && !t
                        .attempts
                        .iter()
                        .any(|a| a.status == errand_core::Status::Cancelled)
                    && t.result_attempt().is_some_and(|a| a.delivery.is_none());
                let since = *ended_at.get_or_insert_with(std::time::Instant::now);
                if !delivering || since.elapsed() > Duration::from_secs(120) {
                    return Ok(t);
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn cancel(&self, id: &str) -> Result<Task> {
        let resp = self
            .send(
                self.http
                    .post(self.url(&format!("/tasks/{}/cancel", errand_git::percent_encode(id)))),
            )
            .await?;
        resp.json().await.context("decoding the task")
    }

    pub async fn diff(&self, id: &str, attempt: Option<i64>, file: Option<&str>) -> Result<String> {
        let mut path = format!("/tasks/{}/diff?", errand_git::percent_encode(id));
        if let Some(n) = attempt {
            path.push_str(&format!("attempt={n}&"));
        }
        if let Some(f) = file {
            path.push_str(&format!("file={}", errand_git::percent_encode(f)));
        }
        let resp = self.send(self.http.get(self.url(&path))).await?;
        resp.text().await.context("reading the diff")
    }

    /// The attempt's whole change for `git apply`, with its base and head commits.
    pub async fn patch(&self, id: &str, attempt: Option<i64>) -> Result<(String, String, String)> {
        let mut path = format!("/tasks/{}/patch", errand_git::percent_encode(id));
        if let Some(n) = attempt {
            path.push_str(&format!("?attempt={n}"));
        }
        let resp = self.send(self.http.get(self.url(&path))).await?;
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let (base, head) = (
            header("x-errand-base-commit"),
            header("x-errand-head-commit"),
        );
        let text = resp.text().await.context("reading the patch")?;
        Ok((text, base, head))
    }

    pub async fn diff_json(&self, id: &str, attempt: Option<i64>) -> Result<serde_json::Value> {
        let mut path = format!("/tasks/{}/diff?format=json", errand_git::percent_encode(id));
        if let Some(n) = attempt {
            path.push_str(&format!("&attempt={n}"));
        }
        self.get_json(&path).await
    }

    /// Prints every event recorded so far.
    pub async fn print_events(&self, id: &str, attempt: Option<i64>, mode: LogMode) -> Result<()> {
        let mut after = 0;
        let mut r = render::Renderer::new(mode);
        loop {
            let mut path = format!(
                "/tasks/{}/events?after={after}&limit=5000",
                errand_git::percent_encode(id)
            );
            if let Some(n) = attempt {
                path.push_str(&format!("&attempt={n}"));
            }
            let page: serde_json::Value = self.get_json(&path).await?;
            let events: Vec<Event> =
                serde_json::from_value(page["events"].clone()).context("decoding events")?;
            for e in &events {
                r.print(e);
            }
            after = page["next_after"].as_i64().unwrap_or(after);
            if !page["more"].as_bool().unwrap_or(false) || events.is_empty() {
                break;
            }
        }
        r.flush();
        Ok(())
    }

    /// Streams events over SSE until the attempt ends, resuming with `Last-Event-ID` when the
    /// connection drops (for example while the server restarts).
    pub async fn follow(
        &self,
        id: &str,
        attempt: Option<i64>,
        after: i64,
        mode: LogMode,
    ) -> Result<()> {
        let mut last = after;
        let mut r = render::Renderer::new(mode);
        let mut failures = 0u32;
        loop {
            let mut path = format!("/tasks/{}/events/stream", errand_git::percent_encode(id));
            if let Some(n) = attempt {
                path.push_str(&format!("?attempt={n}"));
            }
            let req = self
                .http
                .get(self.url(&path))
                .header("accept", "text/event-stream")
                .header("last-event-id", last.to_string());
            let resp = match self.send(req).await {
                Ok(r) => r,
                Err(e) if failures < 60 && last > 0 => {
                    failures += 1;
                    tracing::debug!(error = %e, "stream reconnect");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            failures = 0;
            let mut stream = resp.bytes_stream().eventsource();
            let mut ended = false;
            while let Some(item) = stream.next().await {
                let Ok(ev) = item else { break };
                match ev.event.as_str() {
                    "end" => {
                        ended = true;
                        break;
                    }
                    "error" => bail!("the server reported an error while streaming: {}", ev.data),
                    _ => {
                        let e: Event =
                            serde_json::from_str(&ev.data).context("decoding a streamed event")?;
                        last = e.seq;
                        r.print(&e);
                    }
                }
            }
            if ended {
                r.flush();
                return Ok(());
            }
            // The connection dropped before the end: reconnect and resume.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
