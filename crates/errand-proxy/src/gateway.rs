//! The model gateway: OpenAI-, Anthropic- and Gemini-compatible endpoints for programs in the
//! box (Codex CLI, Claude Code, Gemini CLI, aider), with the real API key added outside it.
//!
//! - Routes: `/NAME/REST` goes to the upstream `NAME`, at its base URL without a trailing API
//!   version segment (`https://api.openai.com/v1` → `https://api.openai.com`) joined with
//!   `REST`. Clients keep their own conventions: an OpenAI SDK uses `…/NAME/v1` as its base
//!   URL, the Anthropic and Gemini SDKs use `…/NAME` and add `/v1/messages` or
//!   `/v1beta/models/…` themselves ([`client_base_path`]).
//! - Keys: whatever credentials the client sent (`Authorization`, `x-api-key`,
//!   `x-goog-api-key`, `api-key`, a `key=` query parameter) are removed and the upstream's
//!   own key is added in the form its kind expects (a bearer token for the OpenAI kinds,
//!   `x-api-key` with `anthropic-version` for Anthropic, `x-goog-api-key` for Gemini). The
//!   key is held in memory only, never logged, and masked (same length, `*`) wherever an
//!   upstream echoes it in a response.
//! - Bodies stream both ways: a server-sent event goes to the client as soon as the upstream
//!   sends it. Responses are asked for without compression so that they can be metered.
//! - Metering: the response is read as it passes (SSE events, or the whole JSON body up to a
//!   cap) for the model it names and its usage, in any of the four wire formats: Responses
//!   (`response.completed`, or the JSON `usage`), Chat Completions (`usage`, in the last
//!   chunk of a stream when the client asked for `stream_options.include_usage`), Anthropic
//!   Messages (`message_start` plus `message_delta`, or the JSON `usage`) and Gemini
//!   (`usageMetadata`). Each request ends in one [`GatewayRecord`] with its cost from the
//!   upstream's [`Prices`], given to [`GatewayConfig::on_usage`] when the response ends, fails
//!   or the client goes away.

use bytes::Bytes;
use errand_core::{EventKind, GatewayUpstream, ProviderKind, Usage};
use errand_model::pricing::Prices;
use futures::Stream;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// A JSON response body is kept for metering up to this size; beyond it the response still
/// passes through whole but its usage is not read.
const MAX_METERED_JSON: usize = 16 << 20;
/// The longest single server-sent event read for metering.
const MAX_SSE_EVENT: usize = 8 << 20;
/// Keys shorter than this are not masked in responses (masking would mangle ordinary text).
const MIN_MASKED_KEY: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("model gateway: {0}")]
    Config(String),
    #[error("model gateway: listening on {what}: {source}")]
    Bind {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// An API key, held in memory only. Its `Debug` output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into().trim().to_string())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// One provider behind the gateway.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The route: requests to `/NAME/…` go here.
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    /// `None` for providers that take no key (local servers).
    pub api_key: Option<ApiKey>,
    /// Extra headers sent with every request.
    pub headers: BTreeMap<String, String>,
    pub prices: Prices,
}

impl Upstream {
    /// The upstream for a provider resolved at task creation, with the key the worker read.
    pub fn from_snapshot(u: &GatewayUpstream, api_key: Option<ApiKey>) -> Upstream {
        Upstream {
            name: u.name.clone(),
            kind: u.kind,
            base_url: u.base_url.clone(),
            api_key,
            headers: u.headers.clone(),
            prices: Prices {
                models: u.models.clone(),
                builtin: u.builtin_prices,
            },
        }
    }
}

/// How long the gateway waits on an upstream.
#[derive(Debug, Clone, Copy)]
pub struct GatewayTimeouts {
    pub connect: Duration,
    /// From sending the request to the response's headers.
    pub response: Duration,
    /// The longest silence inside a response body.
    pub idle: Duration,
}

impl Default for GatewayTimeouts {
    fn default() -> Self {
        GatewayTimeouts {
            connect: Duration::from_secs(30),
            response: Duration::from_secs(600),
            idle: Duration::from_secs(300),
        }
    }
}

/// Called once per request with what it used. Runs on the gateway's tasks: keep it quick
/// (send the record to a channel).
pub type UsageSink = Arc<dyn Fn(GatewayRecord) + Send + Sync>;

#[derive(Clone)]
pub struct GatewayConfig {
    pub upstreams: Vec<Upstream>,
    pub on_usage: UsageSink,
    pub timeouts: GatewayTimeouts,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("upstreams", &self.upstreams)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

/// What one request through the gateway used.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayRecord {
    pub upstream: String,
    /// The model the response named (for Gemini, the one in the path), if any.
    pub model: Option<String>,
    /// The path under the route (`/v1/responses`), without the query.
    pub path: String,
    /// The status the client got (502/504 when the upstream could not be reached).
    pub status: u16,
    /// Tokens, with `cost_usd` set.
    pub usage: Usage,
    pub cost_usd: f64,
    /// From the request's arrival to the end of its response.
    pub duration: Duration,
    /// Why the request did not complete (upstream unreachable, stream cut, client gone).
    pub error: Option<String>,
}

impl GatewayRecord {
    /// The `gateway_request` event for this record.
    pub fn to_event(&self) -> EventKind {
        EventKind::GatewayRequest {
            upstream: self.upstream.clone(),
            model: self.model.clone(),
            path: self.path.clone(),
            status: self.status,
            usage: self.usage,
            cost_usd: self.cost_usd,
            duration_ms: self.duration.as_millis() as u64,
            error: self.error.clone(),
        }
    }
}

/// The base path a client in the box uses for upstream `name` (append it to
/// `http://127.0.0.1:PORT`): `/NAME/v1` for an OpenAI kind whose base URL ends in `/v1` (the
/// OpenAI SDKs' convention), `/NAME` for Anthropic and Gemini, whose SDKs add the version.
pub fn client_base_path(name: &str, kind: ProviderKind, base_url: &str) -> String {
    let (_, version) = split_version(base_url);
    match (kind, version) {
        (ProviderKind::OpenaiResponses | ProviderKind::OpenaiChat, Some(v)) => {
            format!("/{name}/{v}")
        }
        _ => format!("/{name}"),
    }
}

/// `base_url` without a trailing slash and without a trailing API version segment (`v1`,
/// `v1beta`, `v2alpha1`), and that segment.
fn split_version(base_url: &str) -> (&str, Option<&str>) {
    let base = base_url.trim_end_matches('/');
    let path_start = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|i| base[i..].find('/').map(|j| i + j));
    if let (Some(start), Some(slash)) = (path_start, base.rfind('/'))
        && slash >= start
        && is_version(&base[slash + 1..])
    {
        return (&base[..slash], Some(&base[slash + 1..]));
    }
    (base, None)
}

fn is_version(seg: &str) -> bool {
    let Some(rest) = seg.strip_prefix('v') else {
        return false;
    };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 {
        return false;
    }
    let rest = &rest[digits..];
    let letters = rest.chars().take_while(char::is_ascii_lowercase).count();
    rest[letters..].chars().all(|c| c.is_ascii_digit())
}

/// Starts gateways.
pub struct Gateway;

impl Gateway {
    /// Serves the gateway on a Unix socket at `path` (mode 0600; a stale socket there is
    /// replaced), until the handle is shut down or dropped.
    pub async fn serve_unix(
        path: &Path,
        config: GatewayConfig,
    ) -> Result<GatewayHandle, GatewayError> {
        let shared = Shared::new(config)?;
        if let Ok(meta) = std::fs::symlink_metadata(path)
            && std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type())
        {
            let _ = std::fs::remove_file(path);
        }
        let bind_err = |source| GatewayError::Bind {
            what: path.display().to_string(),
            source,
        };
        let listener = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(bind_err)?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(Listener::Unix(listener), shared, stop.clone()));
        Ok(GatewayHandle {
            socket: Some(path.to_path_buf()),
            addr: None,
            stop,
            task: Some(task),
        })
    }

    /// Serves the gateway on TCP (`127.0.0.1:0` for a free port), for tests and benchmarks.
    pub async fn serve_tcp(
        addr: SocketAddr,
        config: GatewayConfig,
    ) -> Result<GatewayHandle, GatewayError> {
        let shared = Shared::new(config)?;
        let bind_err = |source| GatewayError::Bind {
            what: addr.to_string(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(Listener::Tcp(listener), shared, stop.clone()));
        Ok(GatewayHandle {
            socket: None,
            addr: Some(local),
            stop,
            task: Some(task),
        })
    }
}

/// A running gateway. Dropping it stops accepting and ends open connections; `shutdown`
/// also waits for them (so every record has been delivered when it returns).
pub struct GatewayHandle {
    socket: Option<PathBuf>,
    addr: Option<SocketAddr>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl GatewayHandle {
    /// The Unix socket, for a gateway started with [`Gateway::serve_unix`].
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    /// The TCP address, for a gateway started with [`Gateway::serve_tcp`].
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Stops the gateway: no new connections, open ones are closed (their records are
    /// delivered, marked as cut), the socket file is removed.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        if let Some(p) = self.socket.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(p) = self.socket.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

enum Listener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

impl Listener {
    async fn accept(&self) -> std::io::Result<Box<dyn Io>> {
        Ok(match self {
            Listener::Unix(l) => Box::new(l.accept().await?.0),
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
        })
    }
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>, stop: CancellationToken) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let io = tokio::select! {
            _ = stop.cancelled() => break,
            // Reap finished connections as we go, so the set stays small.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => r,
        };
        let io = match io {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!(error = %e, "model gateway: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (shared, stop) = (shared.clone(), stop.clone());
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(shared.handle(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(io), svc);
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "model gateway: connection ended");
                    }
                }
                _ = stop.cancelled() => {}
            }
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

struct Route {
    up: Upstream,
    /// The base URL without its version segment.
    root: String,
}

struct Shared {
    routes: HashMap<String, Route>,
    /// `/openai/, /anthropic/`, for the unknown-route error.
    route_list: String,
    client: reqwest::Client,
    on_usage: UsageSink,
    timeouts: GatewayTimeouts,
}

/// Headers that belong to one connection, not to the request or response.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Credentials a client may send; all of them are removed before the request goes on.
const CLIENT_AUTH: &[&str] = &["authorization", "x-api-key", "x-goog-api-key", "api-key"];

impl Shared {
    fn new(config: GatewayConfig) -> Result<Arc<Shared>, GatewayError> {
        let mut routes = HashMap::new();
        let mut names = Vec::new();
        for up in config.upstreams {
            if up.name.is_empty()
                || !up
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            {
                return Err(GatewayError::Config(format!(
                    "upstream name '{}' is not a usable route; use letters, digits, '_', '-' and '.'",
                    up.name
                )));
            }
            if !(up.base_url.starts_with("http://") || up.base_url.starts_with("https://")) {
                return Err(GatewayError::Config(format!(
                    "upstream '{}': base URL '{}' is not an http:// or https:// URL",
                    up.name, up.base_url
                )));
            }
            names.push(format!("/{}/", up.name));
            let root = split_version(&up.base_url).0.to_string();
            let name = up.name.clone();
            if routes.insert(name.clone(), Route { up, root }).is_some() {
                return Err(GatewayError::Config(format!(
                    "upstream '{name}' is configured twice"
                )));
            }
        }
        errand_model::install_tls();
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeouts.connect)
            .tcp_nodelay(true)
            // A redirect would carry the key to wherever it points; the client gets it instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GatewayError::Config(format!("building the HTTP client: {e}")))?;
        Ok(Arc::new(Shared {
            routes,
            route_list: if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            },
            client,
            on_usage: config.on_usage,
            timeouts: config.timeouts,
        }))
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<GatewayBody> {
        let started = Instant::now();
        let full_path = req.uri().path().to_string();
        let trimmed = full_path.trim_start_matches('/');
        let (name, rest) = match trimmed.find('/') {
            Some(i) => (&trimmed[..i], &trimmed[i..]),
            None => (trimmed, "/"),
        };
        let Some(route) = self.routes.get(name) else {
            tracing::debug!(path = %full_path, "model gateway: no such route");
            return error_response(
                StatusCode::NOT_FOUND,
                "unknown_route",
                &format!(
                    "the model gateway has no route for '{full_path}'; configured routes: {} (use http://HOST/NAME/… as the client's base URL)",
                    self.route_list
                ),
            );
        };
        let rest = rest.to_string();
        let record = Pending {
            sink: self.on_usage.clone(),
            upstream: route.up.name.clone(),
            kind: route.up.kind,
            prices: route.up.prices.clone(),
            path: rest.clone(),
            path_model: path_model(&rest),
            started,
        };
        if rest.split('/').any(|s| {
            matches!(
                s.to_ascii_lowercase().as_str(),
                "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e."
            )
        }) {
            let msg = format!("the path '{rest}' has '.' or '..' segments");
            record.finish(400, None, Usage::default(), Some(msg.clone()));
            return error_response(StatusCode::BAD_REQUEST, "bad_path", &msg);
        }
        let url = match req.uri().query().map(strip_key_param) {
            Some(q) if !q.is_empty() => format!("{}{rest}?{q}", route.root),
            _ => format!("{}{rest}", route.root),
        };
        let (parts, body) = req.into_parts();
        let headers = upstream_headers(&parts.headers, &route.up);
        let upstream_req = self
            .client
            .request(parts.method, &url)
            .headers(headers)
            .body(reqwest::Body::wrap(body));
        let secret = route.up.api_key.as_ref().map(|k| k.expose().to_string());
        let scrub = |s: &str| match &secret {
            Some(k) if k.len() >= MIN_MASKED_KEY => s.replace(k.as_str(), &"*".repeat(k.len())),
            _ => s.to_string(),
        };
        let resp = match tokio::time::timeout(self.timeouts.response, upstream_req.send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let msg = scrub(&format!(
                    "upstream '{}' ({}) could not be reached: {}",
                    route.up.name,
                    route.root,
                    chain(&e)
                ));
                tracing::warn!(upstream = %route.up.name, error = %msg, "model gateway");
                record.finish(502, None, Usage::default(), Some(msg.clone()));
                return error_response(StatusCode::BAD_GATEWAY, "upstream_unreachable", &msg);
            }
            Err(_) => {
                let msg = format!(
                    "upstream '{}' sent no response within {}s",
                    route.up.name,
                    self.timeouts.response.as_secs()
                );
                record.finish(504, None, Usage::default(), Some(msg.clone()));
                return error_response(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", &msg);
            }
        };
        let status = resp.status();
        let sse = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("text/event-stream"));
        let mut out = Response::builder().status(status);
        if let Some(h) = out.headers_mut() {
            for (k, v) in resp.headers() {
                if HOP_BY_HOP.contains(&k.as_str()) {
                    continue;
                }
                if let Some(s) = &secret
                    && s.len() >= MIN_MASKED_KEY
                    && String::from_utf8_lossy(v.as_bytes()).contains(s.as_str())
                {
                    continue;
                }
                h.append(k.clone(), v.clone());
            }
        }
        let length = resp.content_length();
        let body = MeteredBody {
            inner: Some(Box::pin(resp.bytes_stream())),
            meter: Meter::new(sse),
            scrub: Scrubber::new(secret.filter(|k| k.len() >= MIN_MASKED_KEY)),
            idle: self.timeouts.idle,
            sleep: Box::pin(tokio::time::sleep(self.timeouts.idle)),
            tail: None,
            status: status.as_u16(),
            record: Some(record),
            remaining: length,
        };
        out.body(GatewayBody::Metered(Box::new(body)))
            .unwrap_or_else(|e| {
                error_response(
                    StatusCode::BAD_GATEWAY,
                    "bad_upstream_response",
                    &format!("the upstream's response could not be passed on: {e}"),
                )
            })
    }
}

/// The request headers for the upstream: the client's, minus connection headers and any
/// credentials, plus the configured headers and the upstream's own key.
fn upstream_headers(client: &HeaderMap, up: &Upstream) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in client {
        let n = k.as_str();
        if HOP_BY_HOP.contains(&n)
            || CLIENT_AUTH.contains(&n)
            || n == "host"
            || n == "content-length"
            || n == "accept-encoding"
        {
            continue;
        }
        h.append(k.clone(), v.clone());
    }
    // Uncompressed, so the response can be metered as it passes.
    h.insert(
        http::header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    for (k, v) in &up.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(k, v);
        }
    }
    if up.kind == ProviderKind::Anthropic && !h.contains_key("anthropic-version") {
        h.insert(
            "anthropic-version",
            HeaderValue::from_static(errand_model::anthropic::API_VERSION),
        );
    }
    if let Some(key) = &up.api_key {
        let (name, value) = match up.kind {
            ProviderKind::OpenaiResponses | ProviderKind::OpenaiChat => (
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {}", key.expose())),
            ),
            ProviderKind::Anthropic => (
                HeaderName::from_static("x-api-key"),
                HeaderValue::from_str(key.expose()),
            ),
            ProviderKind::Gemini => (
                HeaderName::from_static("x-goog-api-key"),
                HeaderValue::from_str(key.expose()),
            ),
        };
        if let Ok(mut v) = value {
            v.set_sensitive(true);
            h.insert(name, v);
        }
    }
    h
}

/// The query without any `key=` parameter (Gemini clients may put their key there).
fn strip_key_param(q: &str) -> String {
    q.split('&')
        .filter(|p| {
            let name = p.split('=').next().unwrap_or_default();
            !name.is_empty() && !name.eq_ignore_ascii_case("key")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The model a Gemini path names (`/v1beta/models/gemini-2.5-pro:generateContent`).
fn path_model(path: &str) -> Option<String> {
    let after = path.split("/models/").nth(1)?;
    let model = after.split([':', '/', '?']).next()?;
    (!model.is_empty()).then(|| model.to_string())
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

/// An error in a shape every vendor SDK can read: `error.message` (OpenAI, Gemini) inside a
/// `type: "error"` envelope (Anthropic).
fn error_response(status: StatusCode, code: &str, message: &str) -> Response<GatewayBody> {
    let body = json!({
        "type": "error",
        "error": {"type": "errand_gateway", "code": code, "message": message}
    });
    let mut r = Response::new(GatewayBody::Full(Some(Bytes::from(body.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A request's record, not yet delivered.
struct Pending {
    sink: UsageSink,
    upstream: String,
    kind: ProviderKind,
    prices: Prices,
    path: String,
    path_model: Option<String>,
    started: Instant,
}

impl Pending {
    fn finish(self, status: u16, model: Option<String>, mut usage: Usage, error: Option<String>) {
        let model = self.path_model.or(model);
        usage.cost_usd = errand_model::pricing::cost(
            &usage,
            &self
                .prices
                .for_model(self.kind, model.as_deref().unwrap_or_default()),
        );
        let record = GatewayRecord {
            upstream: self.upstream,
            model,
            path: self.path,
            status,
            cost_usd: usage.cost_usd,
            usage,
            duration: self.started.elapsed(),
            error,
        };
        tracing::debug!(
            upstream = %record.upstream,
            path = %record.path,
            status = record.status,
            input = record.usage.input_tokens,
            output = record.usage.output_tokens,
            "model gateway request"
        );
        (self.sink)(record);
    }
}

/// Masks a secret in a byte stream, including occurrences split across chunks: the longest
/// tail that could start the secret is held back until the next chunk shows what follows.
struct Scrubber {
    secret: Option<Vec<u8>>,
    held: Vec<u8>,
}

impl Scrubber {
    fn new(secret: Option<String>) -> Scrubber {
        Scrubber {
            secret: secret.map(String::into_bytes),
            held: Vec::new(),
        }
    }

    fn push(&mut self, chunk: Bytes) -> Bytes {
        let Some(secret) = &self.secret else {
            return chunk;
        };
        if self.held.is_empty() && !may_contain(&chunk, secret) {
            return chunk;
        }
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(&chunk);
        let mut i = 0;
        while i + secret.len() <= data.len() {
            if data[i..i + secret.len()] == secret[..] {
                data[i..i + secret.len()].fill(b'*');
                i += secret.len();
            } else {
                i += 1;
            }
        }
        let keep = (1..secret.len().min(data.len() + 1))
            .rev()
            .find(|&k| data[data.len() - k..] == secret[..k])
            .unwrap_or(0);
        self.held = data.split_off(data.len() - keep);
        Bytes::from(data)
    }

    /// What is still held back at the end of the stream (a partial secret is not one).
    fn finish(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.held))
    }
}

/// Whether `chunk` contains the secret or ends with a part of its start: the fast path that
/// lets ordinary chunks through untouched.
fn may_contain(chunk: &[u8], secret: &[u8]) -> bool {
    let Some(&first) = secret.first() else {
        return false;
    };
    let from = chunk.len().saturating_sub(secret.len());
    chunk.contains(&first)
        && (chunk.windows(secret.len()).any(|w| w == secret) || chunk[from..].contains(&first))
}

/// Reads a response as it passes for its model and usage.
struct Meter {
    sse: bool,
    /// SSE: the current unfinished line. JSON: the body so far.
    buf: Vec<u8>,
    /// SSE: the `data:` lines of the current event.
    data: String,
    /// Too large to meter: passed on, not read.
    gave_up: bool,
    model: Option<String>,
    usage: Option<Usage>,
    /// Anthropic streams report usage in parts (`message_start`, then `message_delta`).
    anthropic: serde_json::Map<String, Value>,
}

impl Meter {
    fn new(sse: bool) -> Meter {
        Meter {
            sse,
            buf: Vec::new(),
            data: String::new(),
            gave_up: false,
            model: None,
            usage: None,
            anthropic: serde_json::Map::new(),
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        if self.gave_up {
            return;
        }
        if !self.sse {
            if self.buf.len() + chunk.len() > MAX_METERED_JSON {
                self.gave_up = true;
                self.buf = Vec::new();
            } else {
                self.buf.extend_from_slice(chunk);
            }
            return;
        }
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.buf);
            line.extend_from_slice(&rest[..nl]);
            rest = &rest[nl + 1..];
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line(&line);
            if self.gave_up {
                return;
            }
        }
        self.buf.extend_from_slice(rest);
        if self.buf.len() > MAX_SSE_EVENT {
            self.gave_up = true;
            self.buf = Vec::new();
        }
    }

    fn line(&mut self, line: &[u8]) {
        if line.is_empty() {
            let data = std::mem::take(&mut self.data);
            self.event(&data);
            return;
        }
        if let Some(d) = line.strip_prefix(b"data:") {
            let d = d.strip_prefix(b" ").unwrap_or(d);
            if !self.data.is_empty() {
                self.data.push('\n');
            }
            self.data.push_str(&String::from_utf8_lossy(d));
            if self.data.len() > MAX_SSE_EVENT {
                self.gave_up = true;
                self.data = String::new();
            }
        }
    }

    fn event(&mut self, data: &str) {
        let data = data.trim();
        // Only events that can carry usage or a model are parsed.
        if data.is_empty()
            || !(data.contains("usage")
                || self.model.is_none()
                    && (data.contains("\"model") || data.contains("modelVersion")))
        {
            return;
        }
        if let Ok(v) = serde_json::from_str::<Value>(data) {
            self.observe(&v);
        }
    }

    /// Takes the model and usage from one JSON object of any of the four formats.
    fn observe(&mut self, v: &Value) {
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let ty = v.get("type").and_then(Value::as_str).unwrap_or_default();
        if let Some(u) = v.get("usageMetadata").filter(|u| u.is_object()) {
            // Gemini: every chunk may carry usage; the last one is final.
            self.usage = Some(errand_model::gemini::usage_of(u));
            self.model = self.model.take().or_else(|| s(v, "modelVersion"));
            return;
        }
        match ty {
            "message_start" => {
                if let Some(m) = v.get("message") {
                    self.model = self.model.take().or_else(|| s(m, "model"));
                    self.merge_anthropic(m.get("usage"));
                }
                return;
            }
            "message_delta" => {
                self.merge_anthropic(v.get("usage"));
                return;
            }
            "message" => {
                self.model = self.model.take().or_else(|| s(v, "model"));
                self.merge_anthropic(v.get("usage"));
                return;
            }
            _ => {}
        }
        // Responses: events carry the Response object; a non-streamed body is one.
        let response = match v.get("response") {
            Some(r) if ty.starts_with("response.") => Some(r),
            _ if v.get("object").and_then(Value::as_str) == Some("response") => Some(v),
            _ => None,
        };
        if let Some(r) = response {
            self.model = s(r, "model").or(self.model.take());
            if let Some(u) = r.get("usage").filter(|u| u.is_object()) {
                self.usage = Some(errand_model::openai_responses::usage_of(u));
            }
            return;
        }
        // Chat Completions: the body, or the last chunk of a stream.
        if self.model.is_none() {
            self.model = s(v, "model");
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(if u.get("prompt_tokens").is_some() {
                errand_model::openai_chat::usage_of(u)
            } else {
                errand_model::openai_responses::usage_of(u)
            });
        }
    }

    fn merge_anthropic(&mut self, usage: Option<&Value>) {
        let Some(u) = usage.and_then(Value::as_object) else {
            return;
        };
        for (k, v) in u {
            if !v.is_null() {
                self.anthropic.insert(k.clone(), v.clone());
            }
        }
        self.usage = Some(errand_model::anthropic::usage_of(&Value::Object(
            self.anthropic.clone(),
        )));
    }

    /// The model and usage seen, once the response has ended.
    fn finish(&mut self) -> (Option<String>, Usage) {
        if self.sse {
            // A last event without its blank line.
            if !self.buf.is_empty() {
                let line = std::mem::take(&mut self.buf);
                self.line(&line);
            }
            if !self.data.is_empty() {
                let data = std::mem::take(&mut self.data);
                self.event(&data);
            }
        } else if !self.gave_up && !self.buf.is_empty() {
            let body = std::mem::take(&mut self.buf);
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                self.observe(&v);
            }
        }
        (self.model.take(), self.usage.take().unwrap_or_default())
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The upstream's response body on its way to the client: metered, scrubbed, watched for
/// silence. Its record is delivered when it ends, fails or is dropped.
struct MeteredBody {
    inner: Option<ByteStream>,
    meter: Meter,
    scrub: Scrubber,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Held-back bytes to send after the upstream's end.
    tail: Option<Bytes>,
    status: u16,
    record: Option<Pending>,
    /// Bytes still to come, when the upstream said how many.
    remaining: Option<u64>,
}

impl MeteredBody {
    fn report(&mut self, error: Option<String>) {
        if let Some(r) = self.record.take() {
            let (model, usage) = self.meter.finish();
            r.finish(self.status, model, usage, error);
        }
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        if self.record.is_some() {
            self.report(Some(
                "the response was not read to its end (the client went away or the gateway stopped)"
                    .into(),
            ));
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(this.tail.take().map(|t| Ok(Frame::data(t))));
            };
            match inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let deadline = tokio::time::Instant::now() + this.idle;
                    this.sleep.as_mut().reset(deadline);
                    if let Some(r) = &mut this.remaining {
                        *r = r.saturating_sub(chunk.len() as u64);
                    }
                    this.meter.feed(&chunk);
                    let mut out = this.scrub.push(chunk);
                    if this.remaining == Some(0) {
                        // All the announced bytes are here: the server may not ask for more,
                        // so the response ends now.
                        this.inner = None;
                        let tail = this.scrub.finish();
                        if !tail.is_empty() {
                            out = Bytes::from([&out[..], &tail[..]].concat());
                        }
                        this.report(None);
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.inner = None;
                    let msg = format!("the upstream's response broke off: {}", chain(&e));
                    this.report(Some(msg.clone()));
                    return Poll::Ready(Some(Err(std::io::Error::other(msg))));
                }
                Poll::Ready(None) => {
                    this.inner = None;
                    let tail = this.scrub.finish();
                    this.report(None);
                    if !tail.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(tail))));
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if this.sleep.as_mut().poll(cx).is_ready() {
                        this.inner = None;
                        let msg = format!(
                            "the upstream's response was silent for {}s",
                            this.idle.as_secs()
                        );
                        this.report(Some(msg.clone()));
                        return Poll::Ready(Some(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            msg,
                        ))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_none() && self.tail.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (self.remaining, &self.inner) {
            (Some(n), Some(_)) => SizeHint::with_exact(n),
            (_, None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Every response body the gateway sends.
enum GatewayBody {
    Full(Option<Bytes>),
    Metered(Box<MeteredBody>),
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            GatewayBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            GatewayBody::Metered(m) => Pin::new(m.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Full(b) => b.is_none(),
            GatewayBody::Metered(m) => m.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            GatewayBody::Full(None) => SizeHint::with_exact(0),
            GatewayBody::Metered(m) => m.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_drop_the_version_and_clients_get_their_base_path() {
        assert_eq!(
            split_version("https://api.openai.com/v1/"),
            ("https://api.openai.com", Some("v1"))
        );
        assert_eq!(
            split_version("https://generativelanguage.googleapis.com/v1beta"),
            ("https://generativelanguage.googleapis.com", Some("v1beta"))
        );
        assert_eq!(
            split_version("https://api.anthropic.com"),
            ("https://api.anthropic.com", None)
        );
        assert_eq!(
            split_version("https://openrouter.example/api/v1"),
            ("https://openrouter.example/api", Some("v1"))
        );
        assert_eq!(
            split_version("http://v1.example:8000/vendor"),
            ("http://v1.example:8000/vendor", None)
        );
        assert!(is_version("v1beta1") && is_version("v2alpha") && !is_version("vx1"));
        assert_eq!(
            client_base_path(
                "openai",
                ProviderKind::OpenaiResponses,
                "https://api.openai.com/v1"
            ),
            "/openai/v1"
        );
        assert_eq!(
            client_base_path("local", ProviderKind::OpenaiChat, "http://127.0.0.1:9/api"),
            "/local"
        );
        assert_eq!(
            client_base_path(
                "anthropic",
                ProviderKind::Anthropic,
                "https://api.anthropic.com"
            ),
            "/anthropic"
        );
        assert_eq!(
            client_base_path(
                "gemini",
                ProviderKind::Gemini,
                "https://generativelanguage.googleapis.com/v1beta"
            ),
            "/gemini"
        );
    }

    #[test]
    fn the_key_parameter_is_removed_from_queries() {
        assert_eq!(strip_key_param("alt=sse&key=sk-1"), "alt=sse");
        assert_eq!(strip_key_param("KEY=x&a=1&monkey=2"), "a=1&monkey=2");
        assert_eq!(
            path_model("/v1beta/models/gemini-2.5-pro:streamGenerateContent").as_deref(),
            Some("gemini-2.5-pro")
        );
        assert_eq!(path_model("/v1/responses"), None);
    }

    #[test]
    fn secrets_split_across_chunks_are_masked() {
        let key = "sk-secret-key-123";
        let mut s = Scrubber::new(Some(key.into()));
        let mut out = Vec::new();
        for piece in [
            "error: bad key sk-sec",
            "ret-key-1",
            "23 and sk-",
            "s",
            " end sk-s",
        ] {
            out.extend_from_slice(&s.push(Bytes::from(piece)));
        }
        out.extend_from_slice(&s.finish());
        let text = String::from_utf8(out).unwrap_or_default();
        assert_eq!(
            text,
            format!("error: bad key {} and sk-s end sk-s", "*".repeat(key.len()))
        );
        // Ordinary chunks pass through untouched and without delay.
        assert_eq!(&s.push(Bytes::from("data: {}\n\n"))[..], b"data: {}\n\n");
    }

    #[test]
    fn meters_every_format() {
        let sse = |events: &[Value]| {
            let mut m = Meter::new(true);
            let wire: String = events
                .iter()
                .map(|e| format!("event: x\ndata: {e}\n\n"))
                .collect();
            // Split mid-line to exercise the line buffer.
            let (a, b) = wire.split_at(wire.len() / 2);
            m.feed(a.as_bytes());
            m.feed(b.as_bytes());
            m.finish()
        };
        let (model, u) = sse(&[
            json!({"type": "message_start", "message": {"model": "claude-sonnet-4-5", "usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 1}}}),
            json!({"type": "message_delta", "usage": {"output_tokens": 42}}),
        ]);
        assert_eq!(model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(
            (u.input_tokens, u.cached_input_tokens, u.output_tokens),
            (100, 90, 42)
        );
        let (model, u) = sse(&[
            json!({"object": "chat.completion.chunk", "model": "gpt-4.1-mini", "choices": [], "usage": null}),
            json!({"object": "chat.completion.chunk", "model": "gpt-4.1-mini", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}),
        ]);
        assert_eq!(model.as_deref(), Some("gpt-4.1-mini"));
        assert_eq!((u.input_tokens, u.output_tokens), (7, 3));
        let (model, u) = sse(&[
            json!({"type": "response.created", "response": {"model": "gpt-5", "usage": null}}),
            json!({"type": "response.completed", "response": {"model": "gpt-5", "usage": {"input_tokens": 5, "output_tokens": 6, "output_tokens_details": {"reasoning_tokens": 2}}}}),
        ]);
        assert_eq!(model.as_deref(), Some("gpt-5"));
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.reasoning_tokens),
            (5, 6, 2)
        );
        let mut m = Meter::new(false);
        m.feed(br#"{"candidates": [], "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2, "thoughtsTokenCount": 1}, "modelVersion": "gemini-2.5-pro"}"#);
        let (model, u) = m.finish();
        assert_eq!(model.as_deref(), Some("gemini-2.5-pro"));
        assert_eq!((u.input_tokens, u.output_tokens), (4, 3));
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let up = Upstream {
            name: "openai".into(),
            kind: ProviderKind::OpenaiResponses,
            base_url: "http://127.0.0.1:9/v1".into(),
            api_key: Some(ApiKey::new("sk-do-not-print-me")),
            headers: BTreeMap::new(),
            prices: Prices::default(),
        };
        let text = format!("{up:?}");
        assert!(!text.contains("do-not-print"), "{text}");
        assert!(text.contains("redacted"), "{text}");
        let h = upstream_headers(&HeaderMap::new(), &up);
        assert_eq!(
            h.get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer sk-do-not-print-me")
        );
        assert!(!format!("{h:?}").contains("do-not-print"));
    }
}
