//! HTTP plumbing shared by the adapters: one client per provider, timeouts (whole request and
//! idle stream), SSE reading, and turning error responses into [`ModelError`]s.

use crate::{ErrorKind, ModelError, Result};
use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::time::Duration;
use tokio::time::Instant;

/// Error bodies are read up to this size.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Whole (non-streamed) bodies are read up to this size.
const MAX_BODY: usize = 64 << 20;

pub(crate) struct Http {
    /// The provider's name, first in every error message.
    pub provider: String,
    client: reqwest::Client,
    pub timeout: Duration,
    pub idle: Duration,
    /// Added to authentication errors: which variable holds the key.
    pub key_env: Option<String>,
}

/// One server-sent event.
#[derive(Debug)]
pub(crate) struct SseEvent {
    pub event: String,
    pub data: String,
}

type EventStream = Pin<
    Box<
        dyn Stream<
                Item = std::result::Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

pub(crate) struct Sse {
    inner: EventStream,
    idle: Duration,
    deadline: Instant,
    provider: String,
}

impl Sse {
    /// The next event, `None` at the end of the stream. Comments (keep-alives) are skipped by
    /// the parser; a stall longer than the idle timeout or past the deadline is an error.
    pub async fn next(&mut self) -> Result<Option<SseEvent>> {
        let wait = self.idle.min(
            self.deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        );
        match tokio::time::timeout(wait, self.inner.next()).await {
            Err(_) => Err(ModelError::api(
                &self.provider,
                ErrorKind::Timeout,
                if Instant::now() >= self.deadline {
                    "the response did not finish within the request timeout".to_string()
                } else {
                    format!(
                        "the response stream was silent for {}s (idle timeout)",
                        self.idle.as_secs()
                    )
                },
            )),
            Ok(None) => Ok(None),
            Ok(Some(Ok(ev))) => Ok(Some(SseEvent {
                event: ev.event,
                data: ev.data,
            })),
            Ok(Some(Err(e))) => Err(ModelError::api(
                &self.provider,
                ErrorKind::StreamCut,
                format!("reading the response stream: {e}"),
            )),
        }
    }

    /// The error for a stream that ended without its final event.
    pub fn cut(&self, waiting_for: &str) -> ModelError {
        ModelError::api(
            &self.provider,
            ErrorKind::StreamCut,
            format!("the stream ended before {waiting_for}"),
        )
    }
}

impl Http {
    pub fn new(
        provider: &str,
        timeout: Duration,
        idle: Duration,
        key_env: Option<String>,
    ) -> Result<Http> {
        crate::install_tls();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30).min(timeout))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| {
                ModelError::Config(format!("{provider}: building the HTTP client: {e}"))
            })?;
        Ok(Http {
            provider: provider.to_string(),
            client,
            timeout,
            idle,
            key_env,
        })
    }

    fn transport(&self, e: reqwest::Error, url: &str) -> ModelError {
        let kind = if e.is_timeout() {
            ErrorKind::Timeout
        } else {
            ErrorKind::Connection
        };
        let mut err = ModelError::api(&self.provider, kind, format!("{url}: {}", chain(&e)));
        if e.is_connect()
            && let ModelError::Api { hint, .. } = &mut err
        {
            *hint = Some("is the provider's base_url right and the server up?".into());
        }
        err
    }

    /// Sends a request and returns the response once its status is 2xx; anything else becomes
    /// a classified error. Returns the deadline for reading the body.
    pub async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<(reqwest::Response, Instant)> {
        let deadline = Instant::now() + self.timeout;
        let resp = match tokio::time::timeout_at(deadline, req.send()).await {
            Err(_) => {
                return Err(ModelError::api(
                    &self.provider,
                    ErrorKind::Timeout,
                    format!("{url}: no response within {}s", self.timeout.as_secs()),
                ));
            }
            Ok(Err(e)) => return Err(self.transport(e, url)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if status.is_success() {
            return Ok((resp, deadline));
        }
        let headers = resp.headers().clone();
        let body = match tokio::time::timeout_at(deadline, read_capped(resp, MAX_ERROR_BODY)).await
        {
            Ok(Ok(b)) => b,
            _ => Vec::new(),
        };
        Err(classify(
            &self.provider,
            status.as_u16(),
            &headers,
            &String::from_utf8_lossy(&body),
            self.key_env.as_deref(),
        ))
    }

    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &serde_json::Value,
    ) -> Result<(reqwest::Response, Instant)> {
        let mut req = self.client.post(url).json(body);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        self.send(req, url).await
    }

    pub async fn get(&self, url: &str, headers: &[(String, String)]) -> Result<serde_json::Value> {
        let mut req = self.client.get(url);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let (resp, deadline) = self.send(req, url).await?;
        self.body_json(resp, deadline).await
    }

    /// Reads a whole JSON body.
    pub async fn body_json(
        &self,
        resp: reqwest::Response,
        deadline: Instant,
    ) -> Result<serde_json::Value> {
        let bytes = match tokio::time::timeout_at(deadline, read_capped(resp, MAX_BODY)).await {
            Err(_) => {
                return Err(ModelError::api(
                    &self.provider,
                    ErrorKind::Timeout,
                    "the response body did not arrive within the request timeout",
                ));
            }
            Ok(Err(e)) => {
                return Err(ModelError::api(
                    &self.provider,
                    ErrorKind::StreamCut,
                    format!("reading the response: {}", chain(&e)),
                ));
            }
            Ok(Ok(b)) => b,
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            ModelError::api(
                &self.provider,
                ErrorKind::BadResponse,
                format!("the response is not JSON ({e})"),
            )
        })
    }

    pub fn sse(&self, resp: reqwest::Response, deadline: Instant) -> Sse {
        Sse {
            inner: Box::pin(resp.bytes_stream().eventsource()),
            idle: self.idle,
            deadline,
            provider: self.provider.clone(),
        }
    }

    /// An error event inside a stream, in any vendor's shape.
    pub fn stream_error(&self, data: &str) -> ModelError {
        let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
        let (message, kind_word) = error_fields(&v);
        let kind = match kind_word.as_deref() {
            Some(w) if w.contains("overloaded") => ErrorKind::Overloaded,
            // `insufficient_quota` (OpenAI): waiting does not help.
            Some(w) if w.contains("quota") => ErrorKind::QuotaExceeded,
            // Google's canonical status names (`error.status`).
            Some("UNAVAILABLE") if message.to_ascii_lowercase().contains("overloaded") => {
                ErrorKind::Overloaded
            }
            Some("UNAUTHENTICATED") => ErrorKind::Auth,
            Some("PERMISSION_DENIED") => ErrorKind::PermissionDenied,
            Some("NOT_FOUND") => ErrorKind::ModelNotFound,
            Some("DEADLINE_EXCEEDED") => ErrorKind::Timeout,
            Some(w) if w.contains("rate_limit") || w == "RESOURCE_EXHAUSTED" => {
                ErrorKind::RateLimited
            }
            Some(w) if w.contains("context_length") => ErrorKind::ContextLength,
            Some(w) if w.contains("authentication") || w == "invalid_api_key" => ErrorKind::Auth,
            // `invalid_request_error`, and OpenAI's `invalid_prompt`, `invalid_image`, …
            Some(w) if w.starts_with("invalid") || w == "INVALID_ARGUMENT" => {
                if is_context_message(&message) {
                    ErrorKind::ContextLength
                } else {
                    ErrorKind::BadRequest
                }
            }
            Some(w) if w.contains("permission") => ErrorKind::PermissionDenied,
            Some(w) if w.contains("not_found") => ErrorKind::ModelNotFound,
            _ => ErrorKind::Server,
        };
        ModelError::api(
            &self.provider,
            kind,
            if message.is_empty() {
                format!("error event in the stream: {}", truncate(data, 300))
            } else {
                message
            },
        )
    }
}

async fn read_capped(resp: reqwest::Response, cap: usize) -> reqwest::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= cap {
            break;
        }
    }
    Ok(out)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `error.message` and the most specific error word (`error.code`, `error.type`,
/// `error.status`) of an OpenAI, Anthropic or Google error body.
fn error_fields(v: &serde_json::Value) -> (String, Option<String>) {
    let e = v.get("error").unwrap_or(v);
    let e = if e.is_array() {
        e.get(0).and_then(|x| x.get("error")).unwrap_or(e)
    } else {
        e
    };
    let message = e
        .get("message")
        .and_then(|m| m.as_str())
        .or_else(|| e.as_str())
        .unwrap_or_default()
        .to_string();
    let word = ["code", "type", "status"].iter().find_map(|k| {
        e.get(*k)
            .and_then(|w| w.as_str())
            .filter(|w| !w.is_empty())
            .map(str::to_string)
    });
    (message, word)
}

fn is_context_message(m: &str) -> bool {
    let m = m.to_ascii_lowercase();
    m.contains("context length")
        || m.contains("context_length")
        || m.contains("context window")
        || m.contains("prompt is too long")
        || m.contains("maximum context")
        || m.contains("exceeds the maximum number of tokens")
        || m.contains("too many tokens")
}

/// How long the provider asked us to wait: `retry-after-ms`, `retry-after` (seconds or an
/// HTTP date), or a Google `RetryInfo` detail (`"retryDelay": "17s"`).
fn retry_after(headers: &reqwest::header::HeaderMap, body: &serde_json::Value) -> Option<Duration> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    if let Some(d) = header("retry-after").and_then(errand_core::text::parse_retry_after) {
        return Some(d);
    }
    let details = body.get("error")?.get("details")?.as_array()?;
    details.iter().find_map(|d| {
        let delay = d.get("retryDelay")?.as_str()?;
        let secs: f64 = delay.strip_suffix('s')?.parse().ok()?;
        (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
    })
}

/// Turns a non-2xx response into an error that says what happened and what to do.
pub(crate) fn classify(
    provider: &str,
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &str,
    key_env: Option<&str>,
) -> ModelError {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let (mut message, word) = error_fields(&v);
    if message.is_empty() {
        message = if body.trim().is_empty() {
            "(empty body)".to_string()
        } else {
            truncate(body.trim(), 300)
        };
    }
    let word = word.unwrap_or_default();
    let mut hint = None;
    let kind = match status {
        401 => {
            hint = Some(match key_env {
                Some(var) => format!("check the key in {var}"),
                None => "this provider needs an API key: set api_key_env in its [providers] entry"
                    .into(),
            });
            ErrorKind::Auth
        }
        403 => ErrorKind::PermissionDenied,
        404 => {
            hint = Some(
                "check the model name (`errand models check` lists what the provider has)".into(),
            );
            ErrorKind::ModelNotFound
        }
        408 => ErrorKind::Timeout,
        413 => ErrorKind::ContextLength,
        // A quota message with a retry delay (Google's per-minute quotas) is a rate limit.
        429 if word == "insufficient_quota"
            || message.contains("quota")
                && message.contains("billing")
                && retry_after(headers, &v).is_none() =>
        {
            ErrorKind::QuotaExceeded
        }
        429 => ErrorKind::RateLimited,
        400 | 422 if word == "context_length_exceeded" || is_context_message(&message) => {
            ErrorKind::ContextLength
        }
        529 => ErrorKind::Overloaded,
        503 if word.contains("overloaded")
            || message.to_ascii_lowercase().contains("overloaded") =>
        {
            ErrorKind::Overloaded
        }
        500..=599 => ErrorKind::Server,
        _ if word.contains("overloaded") => ErrorKind::Overloaded,
        _ => ErrorKind::BadRequest,
    };
    ModelError::Api {
        provider: provider.to_string(),
        kind,
        status: Some(status),
        message,
        retry_after: retry_after(headers, &v),
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn classifies_vendor_error_bodies() {
        let e = classify(
            "openai",
            400,
            &h(&[]),
            r#"{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
            None,
        );
        assert_eq!(e.kind(), Some(ErrorKind::ContextLength));
        let e = classify(
            "anthropic",
            529,
            &h(&[]),
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            None,
        );
        assert_eq!(e.kind(), Some(ErrorKind::Overloaded));
        assert!(e.retryable());
        let e = classify(
            "openai",
            429,
            &h(&[]),
            r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","code":"insufficient_quota"}}"#,
            None,
        );
        assert_eq!(e.kind(), Some(ErrorKind::QuotaExceeded));
        assert!(!e.retryable());
        let e = classify(
            "anthropic",
            401,
            &h(&[]),
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
            Some("ANTHROPIC_API_KEY"),
        );
        assert_eq!(
            e.to_string(),
            "anthropic: authentication failed (HTTP 401): invalid x-api-key — check the key in ANTHROPIC_API_KEY"
        );
    }

    #[test]
    fn retry_after_from_headers_and_google_details() {
        let e = classify("x", 429, &h(&[("retry-after", "7")]), "{}", None);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        let e = classify("x", 429, &h(&[("retry-after-ms", "1500")]), "{}", None);
        assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
        let e = classify(
            "gemini",
            429,
            &h(&[]),
            r#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"17s"}]}}"#,
            None,
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(17)));
        let e = classify(
            "x",
            503,
            &h(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            "",
            None,
        );
        assert_eq!(e.retry_after(), Some(Duration::ZERO));
        assert_eq!(e.kind(), Some(ErrorKind::Server));
    }
}
