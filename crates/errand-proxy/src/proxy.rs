//! The HTTP forward proxy: `CONNECT host:port` tunnels and plain HTTP requests in absolute form
//! (`GET http://host:port/path`), each checked against the policy, resolved by the proxy
//! itself, checked again on the addresses (the DNS-rebinding guard), and reported as a
//! [`NetRecord`]. TLS inside a tunnel is never decrypted.
//!
//! A tunnel is one record, sent when it closes; a plain request is one record, sent when its
//! response body has been forwarded (or the exchange broke off). Byte counts are what went
//! through: the tunnel's bytes each way, or a plain request's request and response bodies.

use crate::policy::{Policy, normalize_host, parse_ip_literal};
use crate::resolve::Resolve;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1 as client_http1;
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The largest request head (request line and headers) accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most client connections (and so tunnels) one proxy serves at once; further ones are reset
/// at once, so that a box cannot exhaust the worker's descriptors.
pub const MAX_CLIENT_CONNECTIONS: usize = 256;

/// The buffer size of each direction of a tunnel.
const TUNNEL_BUF: usize = 64 * 1024;

/// How long [`ProxyHandle::shutdown`] waits for live connections to close.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// One request or tunnel through the proxy, allowed or denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRecord {
    /// Whether the policy allowed it. A request the policy allowed can still fail (the
    /// upstream refused the connection); `reason` then says so.
    pub allowed: bool,
    /// The host as the client named it (lowercase, no trailing dot, no brackets).
    pub host: String,
    pub port: u16,
    /// `CONNECT` for a tunnel, else the HTTP method.
    pub method: Option<String>,
    /// The address the proxy connected to.
    pub addr: Option<SocketAddr>,
    /// Why it was denied, or which rule allowed it (and what went wrong after, if anything).
    pub reason: Option<String>,
    /// Bytes from the client: the tunnel's upstream bytes, or the request body.
    pub bytes_up: u64,
    /// Bytes to the client: the tunnel's downstream bytes, or the response body.
    pub bytes_down: u64,
    /// From the request's arrival to the tunnel's close or the response's end.
    pub duration: Duration,
}

/// How a proxy instance behaves.
#[derive(Clone)]
pub struct ProxyConfig {
    pub policy: Arc<Policy>,
    pub resolver: Arc<dyn Resolve>,
    /// Called once per request or tunnel (from the proxy's tasks; keep it quick).
    pub on_event: Arc<dyn Fn(NetRecord) + Send + Sync>,
    /// The limit for connecting to one upstream address.
    pub connect_timeout: Duration,
    /// A connection or tunnel with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
}

impl ProxyConfig {
    /// A configuration with a 10 s connect timeout and a 5 min idle timeout.
    pub fn new(
        policy: Arc<Policy>,
        resolver: Arc<dyn Resolve>,
        on_event: Arc<dyn Fn(NetRecord) + Send + Sync>,
    ) -> ProxyConfig {
        ProxyConfig {
            policy,
            resolver,
            on_event,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("policy", &self.policy.summary())
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} exists and is not a socket; remove it or choose another path for the proxy socket",
        path.display()
    )]
    NotASocket { path: PathBuf },
    #[error("{} is in use by a live proxy (or another server)", path.display())]
    InUse { path: PathBuf },
}

/// Starts proxies.
pub struct Proxy;

impl Proxy {
    /// Serves on a Unix socket at `path` (what the box's loopback bridge connects to). A stale
    /// socket file left by a previous proxy is removed first; a live one is an error. The file
    /// is removed again on shutdown. Must be called within a tokio runtime.
    pub fn serve_unix(path: &Path, cfg: ProxyConfig) -> Result<ProxyHandle, ProxyError> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(ProxyError::InUse { path: path.into() });
                }
                std::fs::remove_file(path).map_err(|source| ProxyError::Bind {
                    path: path.into(),
                    source,
                })?;
            }
            Ok(_) => return Err(ProxyError::NotASocket { path: path.into() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ProxyError::Bind {
                    path: path.into(),
                    source,
                });
            }
        }
        let listener = UnixListener::bind(path).map_err(|source| ProxyError::Bind {
            path: path.into(),
            source,
        })?;
        let ino = std::fs::symlink_metadata(path).map(|m| m.ino()).ok();
        let sock = SocketFile {
            path: path.to_path_buf(),
            ino,
        };
        Ok(start(Listener::Unix(listener, sock), cfg))
    }

    /// Serves on a TCP listener (benches, tests, or a host-side proxy). Must be called within a
    /// tokio runtime.
    pub fn serve(listener: TcpListener, cfg: ProxyConfig) -> ProxyHandle {
        start(Listener::Tcp(listener), cfg)
    }
}

/// A running proxy. Dropping it stops the proxy too (without waiting).
pub struct ProxyHandle {
    shared: Arc<Shared>,
    accept: Option<tokio::task::JoinHandle<()>>,
    addr: Option<SocketAddr>,
    path: Option<PathBuf>,
}

impl ProxyHandle {
    /// The TCP address, for a proxy started with [`Proxy::serve`].
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The socket path, for a proxy started with [`Proxy::serve_unix`].
    pub fn socket_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// How many client connections and tunnels are open.
    pub fn live_connections(&self) -> usize {
        self.shared.tracker.0.live.load(Ordering::SeqCst)
    }

    /// Stops accepting, closes every live connection and tunnel (their clients see the
    /// connection close; each one's record is still sent, saying the proxy shut down), removes
    /// the socket file, and waits (up to 5 s) until they are gone.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        if tokio::time::timeout(SHUTDOWN_WAIT, self.shared.tracker.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                live = self.live_connections(),
                "proxy connections still open after shutdown"
            );
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

struct Shared {
    cfg: ProxyConfig,
    cancel: CancellationToken,
    tracker: Tracker,
    /// Room for client connections (see [`MAX_CLIENT_CONNECTIONS`]).
    clients: Arc<tokio::sync::Semaphore>,
}

/// Counts live connections and tasks, so that shutdown can wait for them.
#[derive(Clone, Default)]
struct Tracker(Arc<TrackerInner>);

#[derive(Default)]
struct TrackerInner {
    live: AtomicUsize,
    idle: Notify,
}

struct TrackGuard(Tracker);

impl Tracker {
    fn guard(&self) -> TrackGuard {
        self.0.live.fetch_add(1, Ordering::SeqCst);
        TrackGuard(self.clone())
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.0.live.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.0.idle.notify_waiters();
        }
    }
}

struct SocketFile {
    path: PathBuf,
    ino: Option<u64>,
}

impl SocketFile {
    /// Removes the socket file if it is still the one this proxy bound.
    fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && Some(m.ino()) == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

fn start(listener: Listener, cfg: ProxyConfig) -> ProxyHandle {
    let shared = Arc::new(Shared {
        cfg,
        cancel: CancellationToken::new(),
        tracker: Tracker::default(),
        clients: Arc::new(tokio::sync::Semaphore::new(MAX_CLIENT_CONNECTIONS)),
    });
    let (addr, path) = match &listener {
        Listener::Tcp(l) => (l.local_addr().ok(), None),
        Listener::Unix(_, s) => (None, Some(s.path.clone())),
    };
    tracing::debug!(?addr, ?path, policy = %shared.cfg.policy.summary(), "egress proxy listening");
    let accept = tokio::spawn(accept_loop(listener, shared.clone()));
    ProxyHandle {
        shared,
        accept: Some(accept),
        addr,
        path,
    }
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            r = accept_one(&listener) => r,
        };
        match accepted {
            Ok(conn) => {
                let guard = shared.tracker.guard();
                let s = shared.clone();
                tokio::spawn(async move {
                    let conn = match conn {
                        Accepted::Tcp(io) => handoff::Conn::Tcp(io),
                        Accepted::Unix(io) => {
                            let taken = tokio::select! {
                                _ = s.cancel.cancelled() => return,
                                r = handoff::take(io) => r,
                            };
                            match taken {
                                Ok(c) => c,
                                Err(e) => {
                                    tracing::debug!(
                                        "egress proxy: a connection on the socket: {e}"
                                    );
                                    return;
                                }
                            }
                        }
                    };
                    // A box must not exhaust the worker's descriptors.
                    let Ok(permit) = s.clients.clone().try_acquire_owned() else {
                        tracing::warn!(
                            "egress proxy: {MAX_CLIENT_CONNECTIONS} client connections already open; resetting a new one"
                        );
                        if let handoff::Conn::Tcp(t) = conn {
                            let _ = t.set_zero_linger();
                        }
                        return;
                    };
                    match conn {
                        handoff::Conn::Tcp(io) => serve_conn(io, s, guard, permit).await,
                        handoff::Conn::Unix(io) => serve_conn(io, s, guard, permit).await,
                    }
                });
            }
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "egress proxy: accept failed");
                tokio::select! {
                    _ = shared.cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
    if let Listener::Unix(l, sock) = listener {
        drop(l);
        sock.remove();
    }
}

enum Accepted {
    Tcp(TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept_one(l: &Listener) -> io::Result<Accepted> {
    match l {
        Listener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Ok(Accepted::Tcp(s))
        }
        Listener::Unix(l, _) => Ok(Accepted::Unix(l.accept().await?.0)),
    }
}

/// The time of the last byte either way on a connection or tunnel.
#[derive(Clone)]
struct Activity {
    base: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            base: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once nothing moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = last.elapsed();
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    }
}

/// An I/O object that records activity, and optionally counts the bytes read from it.
struct Tracked<T> {
    inner: T,
    activity: Activity,
    read: Option<Arc<AtomicU64>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 {
            this.activity.touch();
            if let Some(c) = &this.read {
                c.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if n > 0 {
            this.activity.touch();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        if n > 0 {
            this.activity.touch();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// One client connection's state: the upstream connection kept for its next plain request.
struct Conn {
    shared: Arc<Shared>,
    activity: Activity,
    upstream: Mutex<Option<Upstream>>,
    /// The connection's place among [`MAX_CLIENT_CONNECTIONS`]; a tunnel takes it over.
    permit: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
}

struct Upstream {
    host: String,
    port: u16,
    addr: SocketAddr,
    sender: client_http1::SendRequest<ProxyBody>,
}

async fn serve_conn<IO>(
    io: IO,
    shared: Arc<Shared>,
    _guard: TrackGuard,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let conn = Arc::new(Conn {
        shared: shared.clone(),
        activity: activity.clone(),
        upstream: Mutex::new(None),
        permit: Mutex::new(Some(permit)),
    });
    let io = TokioIo::new(Tracked {
        inner: io,
        activity: activity.clone(),
        read: None,
    });
    let svc = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(req, conn).await) }
    });
    let idle = shared.cfg.idle_timeout;
    let served = server_http1::Builder::new()
        .max_header_size(MAX_HEADER_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(idle.min(Duration::from_secs(30)))
        .keep_alive(true)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::select! {
        r = served => if let Err(e) = r {
            tracing::debug!(error = %e, "egress proxy: client connection ended with an error");
        },
        _ = shared.cancel.cancelled() => {}
        _ = activity.idle_for(idle) => {
            tracing::debug!("egress proxy: closing an idle client connection");
        }
    }
}

/// Sends the request's record when dropped: when it was refused, when its tunnel closed, when
/// its response body ended, or when the exchange was cut short.
struct RecordGuard {
    shared: Arc<Shared>,
    rec: NetRecord,
    start: Instant,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    /// Appended to the reason (an error or an interruption after the decision).
    outcome: Option<String>,
}

impl RecordGuard {
    fn new(shared: Arc<Shared>, method: &Method, host: &str, port: u16, start: Instant) -> Self {
        RecordGuard {
            shared,
            rec: NetRecord {
                allowed: false,
                host: host.to_string(),
                port,
                method: Some(method.as_str().to_string()),
                addr: None,
                reason: Some("interrupted before a decision".into()),
                bytes_up: 0,
                bytes_down: 0,
                duration: Duration::ZERO,
            },
            start,
            up: Arc::new(AtomicU64::new(0)),
            down: Arc::new(AtomicU64::new(0)),
            outcome: None,
        }
    }

    fn set_outcome(&mut self, outcome: impl Into<String>) {
        self.outcome = Some(outcome.into());
    }

    fn decide(&mut self, allowed: bool, reason: String) {
        self.rec.allowed = allowed;
        self.rec.reason = Some(reason);
    }
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        let mut rec = self.rec.clone();
        rec.bytes_up = self.up.load(Ordering::Relaxed);
        rec.bytes_down = self.down.load(Ordering::Relaxed);
        rec.duration = self.start.elapsed();
        if let Some(o) = self.outcome.take() {
            rec.reason = Some(match rec.reason {
                Some(r) => format!("{r}; {o}"),
                None => o,
            });
        }
        tracing::debug!(
            allowed = rec.allowed,
            host = %rec.host,
            port = rec.port,
            method = ?rec.method,
            reason = ?rec.reason,
            up = rec.bytes_up,
            down = rec.bytes_down,
            "egress proxy request"
        );
        (self.shared.cfg.on_event)(rec);
    }
}

/// A body that counts its data bytes (and carries the request's record, for a response).
struct Counting<B: Body> {
    inner: B,
    count: Arc<AtomicU64>,
    record: Option<RecordGuard>,
    ended: bool,
}

impl<B: Body> Drop for Counting<B> {
    fn drop(&mut self) {
        if let Some(r) = self.record.as_mut()
            && r.outcome.is_none()
            && !self.ended
            && !self.inner.is_end_stream()
        {
            r.set_outcome(if r.shared.cancel.is_cancelled() {
                "the proxy shut down"
            } else {
                "the response was cut short"
            });
        }
    }
}

impl<B> Body for Counting<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    this.count.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                let e: BoxError = e.into();
                if let Some(r) = this.record.as_mut() {
                    // A shutdown drops the upstream connection too: say why it failed.
                    r.outcome = Some(if r.shared.cancel.is_cancelled() {
                        format!("the proxy shut down (response body failed: {e})")
                    } else {
                        format!("response body failed: {e}")
                    });
                }
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.ended = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A header value made of the visible ASCII of `s` (others become `?`), at most 1,000 bytes.
fn header_value(s: &str) -> HeaderValue {
    let clean: String = s
        .chars()
        .take(1000)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("?"))
}

fn denied(method: &Method, host: &str, port: u16, reason: &str) -> Response<ProxyBody> {
    let mut r = text(
        StatusCode::FORBIDDEN,
        format!("errand egress proxy: denied {method} {host}:{port} — {reason}\n"),
    );
    r.headers_mut()
        .insert("x-errand-proxy-denied", header_value(reason));
    r
}

fn failed(method: &Method, host: &str, port: u16, reason: &str) -> Response<ProxyBody> {
    let mut r = text(
        StatusCode::BAD_GATEWAY,
        format!("errand egress proxy: {method} {host}:{port} failed — {reason}\n"),
    );
    r.headers_mut()
        .insert("x-errand-proxy-error", header_value(reason));
    r
}

fn bad_request(reason: &str) -> Response<ProxyBody> {
    let mut r = text(
        StatusCode::BAD_REQUEST,
        format!("errand egress proxy: {reason}\n"),
    );
    r.headers_mut()
        .insert("x-errand-proxy-error", header_value(reason));
    r
}

/// Why a request did not get through before reaching the upstream.
enum Refusal {
    /// The policy said no (403).
    Denied(String),
    /// The name did not resolve (502, counted as not allowed: no address was cleared).
    Unresolved(String),
}

async fn handle(req: Request<Incoming>, conn: Arc<Conn>) -> Response<ProxyBody> {
    let start = Instant::now();
    if req.method() == Method::CONNECT {
        tunnel(req, conn, start).await
    } else {
        forward(req, conn, start).await
    }
}

/// [`admit`], with the decision written into the request's record; a refusal comes back as
/// the answer for the client (403 when denied, 502 when the name did not resolve).
async fn admit_recorded(
    shared: &Shared,
    rec: &mut RecordGuard,
    method: &Method,
    host: &str,
    port: u16,
) -> Result<Vec<IpAddr>, Response<ProxyBody>> {
    match admit(shared, host, port).await {
        Ok((addrs, reason)) => {
            rec.decide(true, reason);
            Ok(addrs)
        }
        Err(Refusal::Denied(reason)) => {
            rec.decide(false, reason.clone());
            Err(denied(method, host, port, &reason))
        }
        Err(Refusal::Unresolved(reason)) => {
            rec.decide(false, reason.clone());
            Err(failed(method, host, port, &reason))
        }
    }
}

/// Checks `host:port` and resolves it: the addresses that passed, and the allowing rule.
async fn admit(shared: &Shared, host: &str, port: u16) -> Result<(Vec<IpAddr>, String), Refusal> {
    let policy = &shared.cfg.policy;
    let d = policy.check_name(host, port);
    if !d.allowed {
        return Err(Refusal::Denied(d.reason));
    }
    let addrs = match parse_ip_literal(host) {
        Some(ip) => vec![ip],
        None => match shared.cfg.resolver.resolve(host, port).await {
            Ok(a) => a,
            Err(e) => {
                return Err(Refusal::Unresolved(format!(
                    "could not resolve {host}: {e}"
                )));
            }
        },
    };
    let d = policy.check_addrs(host, port, &addrs);
    if !d.allowed {
        return Err(Refusal::Denied(d.reason));
    }
    Ok((addrs, d.reason))
}

/// Connects to the first of `addrs` that answers (each within the connect timeout).
async fn connect(
    addrs: &[IpAddr],
    port: u16,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), String> {
    let mut last = String::from("no address to connect to");
    for &ip in addrs {
        let addr = SocketAddr::new(ip, port);
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok((s, addr));
            }
            Ok(Err(e)) => last = format!("connecting to {addr} failed: {e}"),
            Err(_) => {
                last = format!(
                    "connecting to {addr} timed out after {} ms",
                    timeout.as_millis()
                )
            }
        }
    }
    Err(last)
}

/// The host (normalized) and port of a request target's authority.
fn host_port(auth: &http::uri::Authority, default_port: Option<u16>) -> Option<(String, u16)> {
    let port = auth.port_u16().or(default_port)?;
    Some((normalize_host(auth.host()), port))
}

async fn tunnel(
    mut req: Request<Incoming>,
    conn: Arc<Conn>,
    start: Instant,
) -> Response<ProxyBody> {
    let shared = conn.shared.clone();
    let method = Method::CONNECT;
    let Some((host, port)) = req.uri().authority().and_then(|a| host_port(a, None)) else {
        let what = format!(
            "CONNECT needs host:port as its target (got '{}')",
            req.uri()
        );
        let mut rec = RecordGuard::new(shared, &method, &req.uri().to_string(), 0, start);
        rec.decide(false, what.clone());
        return bad_request(&what);
    };
    let mut rec = RecordGuard::new(shared.clone(), &method, &host, port, start);
    let addrs = match admit_recorded(&shared, &mut rec, &method, &host, port).await {
        Ok(addrs) => addrs,
        Err(refused) => return refused,
    };
    let (upstream, addr) = match connect(&addrs, port, shared.cfg.connect_timeout).await {
        Ok(x) => x,
        Err(e) => {
            rec.set_outcome(e.clone());
            return failed(&method, &host, port, &e);
        }
    };
    rec.rec.addr = Some(addr);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let guard = shared.tracker.guard();
    let activity = conn.activity.clone();
    // The client's connection becomes the tunnel: its place in the limit goes along.
    let permit = conn.permit.lock().unwrap_or_else(|p| p.into_inner()).take();
    tokio::spawn(async move {
        let _guard = guard;
        let _permit = permit;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                rec.set_outcome(format!("the client did not start the tunnel: {e}"));
                return;
            }
        };
        let idle = shared.cfg.idle_timeout;
        tokio::select! {
            r = pipe_tunnel(upgraded, upstream, &rec.up, &rec.down, &activity) => {
                if let Err(e) = r {
                    rec.set_outcome(format!("tunnel ended with an error: {e}"));
                }
            }
            _ = shared.cancel.cancelled() => {
                rec.set_outcome("the proxy shut down");
            }
            _ = activity.idle_for(idle) => {
                rec.set_outcome(format!("closed after {} without traffic", fmt_duration(idle)));
            }
        }
    });
    Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
}

/// Copies both ways between the client (its upgraded connection) and the upstream until both
/// ends are done, counting bytes each way. On Linux, when the client connection is a plain TCP
/// or Unix socket, the bytes move with `splice(2)` through a pipe and never enter user space.
async fn pipe_tunnel(
    upgraded: hyper::upgrade::Upgraded,
    mut upstream: TcpStream,
    up: &Arc<AtomicU64>,
    down: &Arc<AtomicU64>,
    activity: &Activity,
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    #[cfg(target_os = "linux")]
    let upgraded = {
        let sock = match upgraded.downcast::<TokioIo<Tracked<TcpStream>>>() {
            Ok(p) => Ok((splice::Sock::Tcp(p.io.into_inner().inner), p.read_buf)),
            Err(u) => match u.downcast::<TokioIo<Tracked<tokio::net::UnixStream>>>() {
                Ok(p) => Ok((splice::Sock::Unix(p.io.into_inner().inner), p.read_buf)),
                Err(u) => Err(u),
            },
        };
        match sock {
            Ok((client, early)) => {
                // Bytes the client sent right after the CONNECT head.
                if !early.is_empty() {
                    upstream.write_all(&early).await?;
                    up.fetch_add(early.len() as u64, Ordering::Relaxed);
                }
                let server = splice::Sock::Tcp(upstream);
                return splice::both_ways(&client, &server, up, down, activity).await;
            }
            Err(u) => u,
        }
    };
    let mut client = Tracked {
        inner: TokioIo::new(upgraded),
        activity: activity.clone(),
        read: Some(up.clone()),
    };
    let mut server = Tracked {
        inner: &mut upstream,
        activity: activity.clone(),
        read: Some(down.clone()),
    };
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, TUNNEL_BUF, TUNNEL_BUF)
        .await
        .map(|_| ())
}

/// Connections handed over by a box's bridge (`errand_sandbox::Bridge::handoff`): the bridge
/// sends one message of the byte 0 with the box's accepted TCP socket attached, and the proxy
/// serves that socket itself, so a tunnel's bytes cross one relay (this proxy's splice) rather
/// than a relay in the bridge and another here. Any other first byte is an HTTP client on the
/// Unix socket itself, served as before.
mod handoff {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::time::Duration;
    use tokio::io::Interest;
    use tokio::net::{TcpStream, UnixStream};

    /// The byte a bridge sends with a handed-over connection.
    const HANDOFF_BYTE: u8 = 0;
    /// How long a new connection on the socket may stay silent before its first byte.
    const FIRST_BYTE_WAIT: Duration = Duration::from_secs(30);

    pub(super) enum Conn {
        Tcp(TcpStream),
        Unix(UnixStream),
    }

    /// Reads what a new connection on the Unix socket is: a handed-over TCP connection, or
    /// an HTTP client (its first byte is left unread).
    pub(super) async fn take(unix: UnixStream) -> io::Result<Conn> {
        let first = tokio::time::timeout(FIRST_BYTE_WAIT, peek_byte(&unix))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "sent nothing"))??;
        match first {
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed at once",
            )),
            Some(b) if b != HANDOFF_BYTE => Ok(Conn::Unix(unix)),
            Some(_) => {
                let fd = loop {
                    unix.readable().await?;
                    match unix.try_io(Interest::READABLE, || recv_fd(unix.as_raw_fd())) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        r => break r?,
                    }
                };
                let tcp = tcp_stream(fd)?;
                let _ = tcp.set_nodelay(true);
                Ok(Conn::Tcp(tcp))
            }
        }
    }

    async fn peek_byte(unix: &UnixStream) -> io::Result<Option<u8>> {
        loop {
            unix.readable().await?;
            let mut b = [0u8; 1];
            let r = unix.try_io(Interest::READABLE, || {
                // SAFETY: a one-byte buffer we own, on a descriptor `unix` owns.
                let n = unsafe {
                    libc::recv(
                        unix.as_raw_fd(),
                        b.as_mut_ptr().cast(),
                        1,
                        libc::MSG_PEEK | libc::MSG_DONTWAIT,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(0) => return Ok(None),
                Ok(_) => return Ok(Some(b[0])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Receives the handoff byte and exactly one descriptor with it.
    fn recv_fd(sock: RawFd) -> io::Result<OwnedFd> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        use std::io::IoSliceMut;
        let mut byte = [0u8; 1];
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [IoSliceMut::new(&mut byte)];
        let msg = recvmsg::<()>(
            sock,
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors for us.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) || fds.len() != 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a handoff must carry one connection; it carried {}",
                    fds.len()
                ),
            ));
        }
        fds.pop()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no connection"))
    }

    /// The handed-over descriptor as a tokio TCP stream, if it is a connected TCP socket.
    fn tcp_stream(fd: OwnedFd) -> io::Result<TcpStream> {
        use nix::sys::socket::{SockType, getsockopt, sockopt};
        let not_tcp = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the handed-over descriptor is not a TCP connection",
            )
        };
        let kind = getsockopt(&fd, sockopt::SockType).map_err(|_| not_tcp())?;
        if kind != SockType::Stream {
            return Err(not_tcp());
        }
        let std = std::net::TcpStream::from(fd);
        match std.peer_addr() {
            Ok(_) => {}
            Err(_) => return Err(not_tcp()),
        }
        std.set_nonblocking(true)?;
        TcpStream::from_std(std)
    }
}

/// Zero-copy tunnels: `splice(2)` from one socket into a pipe and from the pipe into the other.
#[cfg(target_os = "linux")]
mod splice {
    use super::Activity;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::Interest;
    use tokio::net::{TcpStream, UnixStream};

    /// The largest pipe asked for (the default limit for unprivileged processes).
    const PIPE_SIZE: libc::c_int = 1 << 20;

    pub(super) enum Sock {
        Tcp(TcpStream),
        Unix(UnixStream),
    }

    impl Sock {
        fn fd(&self) -> RawFd {
            match self {
                Sock::Tcp(s) => s.as_raw_fd(),
                Sock::Unix(s) => s.as_raw_fd(),
            }
        }

        async fn ready(&self, interest: Interest) -> io::Result<()> {
            match self {
                Sock::Tcp(s) => s.ready(interest).await.map(|_| ()),
                Sock::Unix(s) => s.ready(interest).await.map(|_| ()),
            }
        }

        fn try_io<R>(
            &self,
            interest: Interest,
            f: impl FnOnce() -> io::Result<R>,
        ) -> io::Result<R> {
            match self {
                Sock::Tcp(s) => s.try_io(interest, f),
                Sock::Unix(s) => s.try_io(interest, f),
            }
        }

        /// Runs `f` (a non-blocking system call on this socket) once the socket is ready.
        async fn op(
            &self,
            interest: Interest,
            mut f: impl FnMut() -> io::Result<usize>,
        ) -> io::Result<usize> {
            loop {
                self.ready(interest).await?;
                match self.try_io(interest, &mut f) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return r,
                }
            }
        }
    }

    struct Pipe {
        r: OwnedFd,
        w: OwnedFd,
        size: usize,
    }

    fn pipe() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own; failure just keeps the default size.
        let size = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        let size = if size > 0 { size as usize } else { 64 * 1024 };
        Ok(Pipe { r, w, size })
    }

    fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        // SAFETY: plain descriptors and null offsets (both ends are a socket or a pipe).
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// `src` to `dst` until `src` ends; then `dst`'s write side is shut down.
    async fn one_way(
        src: &Sock,
        dst: &Sock,
        count: &AtomicU64,
        activity: &Activity,
    ) -> io::Result<()> {
        let p = pipe()?;
        loop {
            // The pipe is empty here, so a WouldBlock means the socket has nothing to read.
            let n = src
                .op(Interest::READABLE, || {
                    splice(src.fd(), p.w.as_raw_fd(), p.size)
                })
                .await?;
            if n == 0 {
                // SAFETY: shutdown on a descriptor owned by `dst`, which outlives this call.
                unsafe { libc::shutdown(dst.fd(), libc::SHUT_WR) };
                return Ok(());
            }
            count.fetch_add(n as u64, Ordering::Relaxed);
            activity.touch();
            let mut left = n;
            while left > 0 {
                let m = dst
                    .op(Interest::WRITABLE, || {
                        splice(p.r.as_raw_fd(), dst.fd(), left)
                    })
                    .await?;
                if m == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the peer stopped taking bytes",
                    ));
                }
                left -= m;
            }
            activity.touch();
        }
    }

    pub(super) async fn both_ways(
        client: &Sock,
        server: &Sock,
        up: &AtomicU64,
        down: &AtomicU64,
        activity: &Activity,
    ) -> io::Result<()> {
        tokio::try_join!(
            one_way(client, server, up, activity),
            one_way(server, client, down, activity),
        )
        .map(|_| ())
    }
}

/// `300 ms`, `5 s`, `2 min`.
fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d < Duration::from_secs(120) || !d.as_secs().is_multiple_of(60) {
        format!("{} s", d.as_secs())
    } else {
        format!("{} min", d.as_secs() / 60)
    }
}

/// Hop-by-hop headers, which a proxy does not forward (RFC 9110 §7.6.1), and `Proxy-*`.
fn strip_hop_headers(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(n);
    }
    let proxy: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for n in proxy {
        h.remove(n);
    }
}

async fn forward(req: Request<Incoming>, conn: Arc<Conn>, start: Instant) -> Response<ProxyBody> {
    let shared = conn.shared.clone();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let (host, port, authority) = match (uri.scheme_str(), uri.authority()) {
        (Some(s), Some(auth)) if s.eq_ignore_ascii_case("http") => {
            match host_port(auth, Some(80)) {
                Some((h, p)) => {
                    // The authority without credentials, for the Host header.
                    let a = auth.as_str();
                    (h, p, a.rsplit_once('@').map_or(a, |(_, x)| x).to_string())
                }
                None => return bad_request(&format!("bad request target '{uri}'")),
            }
        }
        (Some(s), _) if s.eq_ignore_ascii_case("https") => {
            let what = format!(
                "{method} {uri}: the proxy does not originate TLS; use CONNECT (HTTPS_PROXY) for https URLs"
            );
            let (h, p) = uri
                .authority()
                .and_then(|a| host_port(a, Some(443)))
                .unwrap_or_default();
            let mut rec = RecordGuard::new(shared, &method, &h, p, start);
            rec.decide(false, what.clone());
            return bad_request(&what);
        }
        (Some(s), _) => return bad_request(&format!("unsupported scheme '{s}' in {uri}")),
        (None, _) => {
            let host_header = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
                .to_string();
            let what = format!(
                "'{method} {uri}' is not a proxy request: this is an HTTP forward proxy, send the \
                 full URL (GET http://host/path) or CONNECT host:port (set HTTP_PROXY and \
                 HTTPS_PROXY)"
            );
            let mut rec =
                RecordGuard::new(shared, &method, &normalize_host(&host_header), 0, start);
            rec.decide(false, what.clone());
            return bad_request(&what);
        }
    };
    let mut rec = RecordGuard::new(shared.clone(), &method, &host, port, start);
    let addrs = match admit_recorded(&shared, &mut rec, &method, &host, port).await {
        Ok(addrs) => addrs,
        Err(refused) => return refused,
    };

    let (mut parts, body) = req.into_parts();
    strip_hop_headers(&mut parts.headers);
    // The proxy answered any `Expect: 100-continue` itself.
    parts.headers.remove(header::EXPECT);
    // The upstream must serve the host that was checked, whatever Host the client sent.
    match HeaderValue::from_str(&authority) {
        Ok(v) => {
            parts.headers.insert(header::HOST, v);
        }
        Err(_) => return bad_request(&format!("bad host in '{uri}'")),
    }
    parts.uri = match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    };
    parts.version = Version::HTTP_11;
    let empty_body = body.is_end_stream();
    let retry_parts = empty_body.then(|| {
        let mut p = Request::new(());
        *p.method_mut() = parts.method.clone();
        *p.uri_mut() = parts.uri.clone();
        *p.headers_mut() = parts.headers.clone();
        p
    });
    let body = Counting {
        inner: body,
        count: rec.up.clone(),
        record: None,
        ended: false,
    }
    .boxed_unsync();
    let upstream_req = Request::from_parts(parts, body);

    // Reuse this client connection's upstream connection to the same place, if it is idle.
    let cached = conn
        .upstream
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .filter(|u| u.host == host && u.port == port && addrs.contains(&u.addr.ip()));
    let mut reused = None;
    if let Some(mut u) = cached
        && tokio::time::timeout(shared.cfg.connect_timeout, u.sender.ready())
            .await
            .is_ok_and(|r| r.is_ok())
    {
        reused = Some(u);
    }
    let was_reused = reused.is_some();
    let mut up = match reused {
        Some(u) => u,
        None => match open_upstream(&shared, &host, port, &addrs).await {
            Ok(u) => u,
            Err(e) => {
                rec.set_outcome(e.clone());
                return failed(&method, &host, port, &e);
            }
        },
    };
    rec.rec.addr = Some(up.addr);
    let mut result = up.sender.send_request(upstream_req).await;
    if let (Err(e), true, Some(p)) = (&result, was_reused, retry_parts) {
        // The kept connection was closed under us; a request without a body can go again.
        tracing::debug!(error = %e, "egress proxy: kept upstream connection failed; retrying");
        match open_upstream(&shared, &host, port, &addrs).await {
            Ok(fresh) => {
                up = fresh;
                rec.rec.addr = Some(up.addr);
                let (p, ()) = p.into_parts();
                let empty = http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync();
                result = up.sender.send_request(Request::from_parts(p, empty)).await;
            }
            Err(e) => {
                rec.set_outcome(e.clone());
                return failed(&method, &host, port, &e);
            }
        }
    }
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("the upstream at {} failed: {e}", up.addr);
            rec.set_outcome(msg.clone());
            return failed(&method, &host, port, &msg);
        }
    };
    *conn.upstream.lock().unwrap_or_else(|p| p.into_inner()) = Some(up);
    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_headers(&mut rparts.headers);
    rparts.version = Version::HTTP_11;
    let count = rec.down.clone();
    let body = Counting {
        inner: rbody,
        count,
        record: Some(rec),
        ended: false,
    }
    .boxed_unsync();
    Response::from_parts(rparts, body)
}

async fn open_upstream(
    shared: &Arc<Shared>,
    host: &str,
    port: u16,
    addrs: &[IpAddr],
) -> Result<Upstream, String> {
    let (stream, addr) = connect(addrs, port, shared.cfg.connect_timeout).await?;
    let (sender, driver) = client_http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {addr} failed: {e}"))?;
    let guard = shared.tracker.guard();
    let cancel = shared.cancel.clone();
    tokio::spawn(async move {
        let _guard = guard;
        tokio::select! {
            r = driver => if let Err(e) = r {
                tracing::debug!(error = %e, "egress proxy: upstream connection ended with an error");
            },
            _ = cancel.cancelled() => {}
        }
    });
    Ok(Upstream {
        host: host.to_string(),
        port,
        addr,
        sender,
    })
}
