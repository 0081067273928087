//! Fake model APIs for tests. No model API is reachable from the test machines, so each
//! adapter is tested against a local HTTP server on loopback that speaks that vendor's
//! documented wire format: the same paths, headers, JSON shapes and SSE event sequences as the
//! vendor's API reference and its streaming examples.
//!
//! A [`FakeServer`] plays a fixed list of [`Reply`]s, one per model request, and records
//! every request it got. It runs on its own thread and runtime, so sync tests (that drive the
//! `errand` binary) and async tests can both use it. Model-info requests (`GET …/models/…`)
//! are answered without using up a reply.
//!
//! Delivery fakes: [`forge::FakeForge`] speaks the pull request endpoints of GitHub, GitLab
//! and Gitea, and [`git_http::GitHttpServer`] runs the real `git http-backend` behind HTTP
//! basic authentication, for pushes over HTTP.

mod anthropic;
pub mod forge;
mod gemini;
pub mod git_http;
mod openai_chat;
mod openai_responses;
mod server;

pub use server::{base64_decode, percent_decode, query_pairs};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The wire format a fake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    OpenAiResponses,
    OpenAiChat,
    Anthropic,
    Gemini,
}

impl Vendor {
    /// The `kind` of a `[providers.NAME]` entry that talks to this fake.
    pub fn kind(self) -> &'static str {
        match self {
            Vendor::OpenAiResponses => "openai-responses",
            Vendor::OpenAiChat => "openai-chat",
            Vendor::Anthropic => "anthropic",
            Vendor::Gemini => "gemini",
        }
    }

    /// The path under the server's root that a provider's `base_url` points at.
    fn base_path(self) -> &'static str {
        match self {
            Vendor::OpenAiResponses | Vendor::OpenAiChat => "/v1",
            Vendor::Anthropic => "",
            Vendor::Gemini => "/v1beta",
        }
    }
}

/// Token counts a fake reports for a turn, in the vendor's own terms where they differ.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FakeUsage {
    /// Every input token, cached ones included.
    pub input: u64,
    /// Input tokens read from the cache.
    pub cached: u64,
    /// Input tokens written to the cache (Anthropic only).
    pub cache_write: u64,
    /// Every output token, reasoning included.
    pub output: u64,
    pub reasoning: u64,
}

/// One model turn to serve.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Turn {
    pub text: Option<String>,
    /// Reasoning to return (a thinking block, a reasoning item with a summary and encrypted
    /// content, or a thought part, by vendor); it comes with an opaque signature.
    pub reasoning: Option<String>,
    /// Tool calls: name and arguments, several for parallel calls.
    pub tool_calls: Vec<(String, Value)>,
    pub usage: FakeUsage,
}

impl Turn {
    pub fn text(t: &str) -> Turn {
        Turn {
            text: Some(t.to_string()),
            ..Default::default()
        }
    }
    pub fn call(name: &str, args: Value) -> Turn {
        Turn {
            tool_calls: vec![(name.to_string(), args)],
            ..Default::default()
        }
    }
}

/// What the fake does with one model request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A normal turn: SSE when the request asked to stream, else one JSON body.
    Turn(Turn),
    /// The turn's SSE frames cut into pieces of `chunk` bytes, sent apart, with `: keep-alive`
    /// comments (and the vendor's own ping events) between frames.
    Chunked { turn: Turn, chunk: usize },
    /// The turn's stream stops after `events` frames, before the final one. With `abort`, the
    /// connection breaks mid-body; without, the body ends cleanly but early.
    Cut {
        turn: Turn,
        events: usize,
        abort: bool,
    },
    /// An HTTP error with the vendor's error body for `kind`.
    Error {
        status: u16,
        kind: ErrorKind,
        message: String,
        headers: Vec<(String, String)>,
    },
    /// The vendor's in-stream error event after the stream started.
    StreamError { kind: ErrorKind, message: String },
    /// Streams the first frame of `turn`, then stays silent for `wait` before the rest (a
    /// non-streamed request waits before its answer): idle timeouts and cancellation.
    Stall { turn: Turn, wait: Duration },
}

/// The error classes vendors distinguish in their bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    ContextLength,
    Authentication,
    Permission,
    NotFound,
    RateLimit,
    QuotaExceeded,
    Overloaded,
    Server,
}

impl Reply {
    pub fn error(status: u16, kind: ErrorKind, message: &str) -> Reply {
        Reply::Error {
            status,
            kind,
            message: message.to_string(),
            headers: vec![],
        }
    }
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path relative to the base URL (`/messages`, `/responses`, `/models/x:generateContent`).
    pub path: String,
    pub query: Option<String>,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Value,
    /// The raw body size in bytes.
    pub body_bytes: usize,
    /// The body exactly as sent.
    pub raw: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Chooses the reply to a request before the queue is consulted (`None`: take the next one).
pub type Responder = Box<dyn Fn(&Value) -> Option<Reply> + Send + Sync>;

struct State {
    vendor: Vendor,
    responder: Option<Responder>,
    replies: Mutex<std::collections::VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
    served: Mutex<usize>,
}

/// A fake vendor API on 127.0.0.1. Dropping it stops the server.
pub struct FakeServer {
    /// What to put in a provider's `base_url`.
    pub base_url: String,
    state: Arc<State>,
    _running: server::Running,
}

impl FakeServer {
    /// Starts a fake on a free loopback port; panics if it cannot (tests only).
    pub fn start(vendor: Vendor, replies: Vec<Reply>) -> FakeServer {
        FakeServer::start_with(vendor, replies, None)
    }

    /// Like [`FakeServer::start`], with a responder that may answer a request (by its JSON
    /// body) without using up a queued reply.
    pub fn start_with(
        vendor: Vendor,
        replies: Vec<Reply>,
        responder: Option<Responder>,
    ) -> FakeServer {
        let state = Arc::new(State {
            vendor,
            responder,
            replies: Mutex::new(replies.into()),
            requests: Mutex::new(Vec::new()),
            served: Mutex::new(0),
        });
        let st = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let st = st.clone();
                async move { handle(st, method, uri, headers, body).await }
            },
        );
        let running = server::serve("fake model API", app);
        FakeServer {
            base_url: format!("http://{}{}", running.addr, vendor.base_path()),
            state,
            _running: running,
        }
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The model requests only (probes left out).
    pub fn model_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect()
    }

    /// Replies not served yet.
    pub fn remaining(&self) -> usize {
        self.state
            .replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// A frame on the wire: `event: NAME\ndata: JSON\n\n` (no event line when `name` is empty).
pub(crate) fn frame(name: &str, data: &Value) -> String {
    if name.is_empty() {
        format!("data: {data}\n\n")
    } else {
        format!("event: {name}\ndata: {data}\n\n")
    }
}

/// Splits `s` into two pieces at a char boundary near the middle, for multi-delta streams.
pub(crate) fn halves(s: &str) -> (String, String) {
    let mut mid = s.len() / 2;
    while !s.is_char_boundary(mid) {
        mid -= 1;
    }
    (s[..mid].to_string(), s[mid..].to_string())
}

/// An opaque signature for reasoning, derived from its text so replays can be checked.
pub fn signature(reasoning: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in reasoning.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("sig-{h:016x}")
}

/// One vendor's rendering of replies.
pub(crate) struct Rendered {
    /// SSE frames for a streamed turn, the last one being the vendor's end of stream.
    pub frames: Vec<String>,
    /// The whole response for a non-streamed request.
    pub json: Value,
}

fn render(vendor: Vendor, turn: &Turn, model: &str, n: usize) -> Rendered {
    match vendor {
        Vendor::Anthropic => anthropic::render(turn, model, n),
        Vendor::OpenAiResponses => openai_responses::render(turn, model, n),
        Vendor::OpenAiChat => openai_chat::render(turn, model, n),
        Vendor::Gemini => gemini::render(turn, model, n),
    }
}

fn error_body(vendor: Vendor, status: u16, kind: ErrorKind, message: &str) -> Value {
    match vendor {
        Vendor::Anthropic => anthropic::error_body(kind, message),
        Vendor::OpenAiResponses => openai_responses::error_body(kind, message),
        Vendor::OpenAiChat => openai_chat::error_body(kind, message),
        Vendor::Gemini => gemini::error_body(status, kind, message),
    }
}

fn stream_error(vendor: Vendor, kind: ErrorKind, message: &str, model: &str, n: usize) -> String {
    match vendor {
        Vendor::Anthropic => anthropic::stream_error(kind, message),
        Vendor::OpenAiResponses => openai_responses::stream_error(kind, message, model, n),
        Vendor::OpenAiChat => openai_chat::stream_error(kind, message),
        Vendor::Gemini => gemini::stream_error(kind, message),
    }
}

fn probe(vendor: Vendor, path: &str) -> Option<Value> {
    match vendor {
        Vendor::Anthropic => anthropic::probe(path),
        Vendor::OpenAiResponses => openai_responses::probe(path),
        Vendor::OpenAiChat => openai_chat::probe(path),
        Vendor::Gemini => gemini::probe(path),
    }
}

/// Whether the request asked for a streamed response.
fn wants_stream(vendor: Vendor, path: &str, query: Option<&str>, body: &Value) -> bool {
    match vendor {
        Vendor::Gemini => {
            path.contains(":streamGenerateContent") && query.is_some_and(|q| q.contains("alt=sse"))
        }
        _ => body.get("stream").and_then(Value::as_bool) == Some(true),
    }
}

fn json_response(status: u16, headers: &[(String, String)], body: &Value) -> Response {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Body::from(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn sse_response(chunks: Vec<Bytes>, gap: Duration, abort: bool) -> Response {
    sse_with_pause(chunks, gap, abort, None)
}

/// SSE body: `gap` before every chunk, plus `pause.1` before chunk number `pause.0`.
fn sse_with_pause(
    chunks: Vec<Bytes>,
    gap: Duration,
    abort: bool,
    pause: Option<(usize, Duration)>,
) -> Response {
    let stream = futures::stream::unfold(
        (chunks.into_iter().enumerate(), false),
        move |(mut it, done)| async move {
            if done {
                return None;
            }
            match it.next() {
                Some((i, c)) => {
                    if !gap.is_zero() {
                        tokio::time::sleep(gap).await;
                    }
                    if let Some((at, wait)) = pause
                        && at == i
                    {
                        tokio::time::sleep(wait).await;
                    }
                    Some((Ok::<Bytes, std::io::Error>(c), (it, false)))
                }
                None if abort => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "fake: connection cut",
                    )),
                    (it, true),
                )),
                None => None,
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

async fn handle(
    st: Arc<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let vendor = st.vendor;
    let full = uri.path().to_string();
    let path = full
        .strip_prefix(vendor.base_path())
        .unwrap_or(&full)
        .to_string();
    let query = uri.query().map(str::to_string);
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    st.requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Recorded {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_ascii_lowercase(),
                        v.to_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
            body: json.clone(),
            body_bytes: body.len(),
            raw: String::from_utf8_lossy(&body).into_owned(),
        });
    if method == Method::GET {
        return match probe(vendor, &path) {
            Some(v) => json_response(200, &[], &v),
            None => json_response(
                404,
                &[],
                &error_body(vendor, 404, ErrorKind::NotFound, "model not found"),
            ),
        };
    }
    let reply = match st.responder.as_ref().and_then(|r| r(&json)) {
        Some(r) => Some(r),
        None => st
            .replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front(),
    };
    let n = {
        let mut s = st.served.lock().unwrap_or_else(|e| e.into_inner());
        *s += 1;
        *s
    };
    let model = match vendor {
        // Gemini names the model in the path: /models/NAME:generateContent.
        Vendor::Gemini => path
            .strip_prefix("/models/")
            .and_then(|p| p.split(':').next())
            .unwrap_or("gemini")
            .to_string(),
        _ => json
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("model")
            .to_string(),
    };
    let stream = wants_stream(vendor, &path, query.as_deref(), &json);
    let Some(reply) = reply else {
        return json_response(
            500,
            &[],
            &error_body(
                vendor,
                500,
                ErrorKind::Server,
                "fake server: no replies left in the script",
            ),
        );
    };
    match reply {
        Reply::Turn(turn) => {
            let r = render(vendor, &turn, &model, n);
            if stream {
                sse_response(
                    r.frames.into_iter().map(Bytes::from).collect(),
                    Duration::ZERO,
                    false,
                )
            } else {
                json_response(200, &[], &r.json)
            }
        }
        Reply::Stall { turn, wait } => {
            let r = render(vendor, &turn, &model, n);
            if stream {
                sse_with_pause(
                    r.frames.into_iter().map(Bytes::from).collect(),
                    Duration::ZERO,
                    false,
                    Some((1, wait)),
                )
            } else {
                tokio::time::sleep(wait).await;
                json_response(200, &[], &r.json)
            }
        }
        Reply::Chunked { turn, chunk } => {
            let r = render(vendor, &turn, &model, n);
            let ping = match vendor {
                Vendor::Anthropic => "event: ping\ndata: {\"type\": \"ping\"}\n\n",
                _ => "",
            };
            let mut wire = String::new();
            for f in &r.frames {
                wire.push_str(": keep-alive\n\n");
                wire.push_str(ping);
                wire.push_str(f);
            }
            let bytes = wire.into_bytes();
            let chunks = bytes
                .chunks(chunk.max(1))
                .map(Bytes::copy_from_slice)
                .collect();
            sse_response(chunks, Duration::from_millis(1), false)
        }
        Reply::Cut {
            turn,
            events,
            abort,
        } => {
            let r = render(vendor, &turn, &model, n);
            let frames: Vec<Bytes> = r.frames.into_iter().take(events).map(Bytes::from).collect();
            // A small gap so headers and frames are on the wire before the cut.
            sse_response(frames, Duration::from_millis(2), abort)
        }
        Reply::Error {
            status,
            kind,
            message,
            headers,
        } => json_response(
            status,
            &headers,
            &error_body(vendor, status, kind, &message),
        ),
        Reply::StreamError { kind, message } => {
            let r = render(vendor, &Turn::text("partial"), &model, n);
            let mut frames: Vec<Bytes> = r.frames.into_iter().take(1).map(Bytes::from).collect();
            frames.push(Bytes::from(stream_error(vendor, kind, &message, &model, n)));
            sse_response(frames, Duration::ZERO, false)
        }
    }
}
