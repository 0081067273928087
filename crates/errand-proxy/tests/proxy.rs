//! The proxy end to end on loopback: real HTTP and TLS servers, real `curl` as a client over a
//! TCP listener, and a small tokio client over the Unix socket.

use bytes::Bytes;
use errand_proxy::{MapResolver, NetRecord, Policy, Proxy, ProxyConfig, ProxyError, ProxyHandle};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

const WAIT: Duration = Duration::from_secs(20);

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

// ---------------------------------------------------------------- records

#[derive(Clone, Default)]
struct Records(Arc<(Mutex<Vec<NetRecord>>, tokio::sync::Notify)>);

impl Records {
    fn sink(&self) -> Arc<dyn Fn(NetRecord) + Send + Sync> {
        let me = self.clone();
        Arc::new(move |r| {
            me.0.0.lock().unwrap().push(r);
            me.0.1.notify_waiters();
        })
    }

    /// Waits until at least `n` records arrived, and returns them all.
    async fn wait(&self, n: usize) -> Vec<NetRecord> {
        tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.0.1.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let v = self.0.0.lock().unwrap();
                    if v.len() >= n {
                        return v.clone();
                    }
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("expected {n} records, got {:?}", self.0.0.lock().unwrap()))
    }

    fn all(&self) -> Vec<NetRecord> {
        self.0.0.lock().unwrap().clone()
    }
}

fn config(allow: &[&str], deny: &[&str], resolve: &str, records: &Records) -> ProxyConfig {
    let policy = Policy::parse(&s(allow), &s(deny)).unwrap();
    let resolver = MapResolver::from_spec(resolve).unwrap();
    ProxyConfig::new(Arc::new(policy), Arc::new(resolver), records.sink())
}

async fn tcp_proxy(cfg: ProxyConfig) -> (ProxyHandle, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h = Proxy::serve(l, cfg);
    let addr = h.local_addr().unwrap();
    (h, addr)
}

// ---------------------------------------------------------------- servers

/// A body fed from a channel, so that a response can trickle.
struct ChanBody(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

type OriginBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> OriginBody {
    http_body_util::Full::new(b.into()).boxed_unsync()
}

async fn origin_handle(req: Request<Incoming>) -> Response<OriginBody> {
    let path = req.uri().path().to_string();
    let seen_host = req
        .headers()
        .get("host")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let seen_te = req
        .headers()
        .get("transfer-encoding")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_else(|| "none".into());
    let mut seen_proxy: Vec<String> = req
        .headers()
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("proxy-") || k == "connection" || k == "keep-alive")
        .collect();
    if seen_proxy.is_empty() {
        seen_proxy.push("none".into());
    }
    let seen_uri = req.uri().to_string();
    let body = match path.as_str() {
        "/hello" => full("hello from origin"),
        "/echo" => {
            let b = req.into_body().collect().await.unwrap().to_bytes();
            full(b)
        }
        "/slow" => {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(async move {
                for _ in 0..600 {
                    if tx.send(Bytes::from(vec![b's'; 1024])).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            ChanBody(rx).boxed_unsync()
        }
        p if p.starts_with("/bytes/") => {
            let n: usize = p["/bytes/".len()..].parse().unwrap();
            full(vec![b'x'; n])
        }
        _ => {
            let mut r = Response::new(full("not found"));
            *r.status_mut() = http::StatusCode::NOT_FOUND;
            return r;
        }
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert("x-seen-host", seen_host.parse().unwrap());
    h.insert("x-seen-te", seen_te.parse().unwrap());
    h.insert("x-seen-proxy", seen_proxy.join(",").parse().unwrap());
    h.insert("x-seen-uri", seen_uri.parse().unwrap());
    r
}

/// A plain HTTP server on loopback; counts its connections.
async fn origin() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((io, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        TokioIo::new(io),
                        service_fn(|r| async { Ok::<_, Infallible>(origin_handle(r).await) }),
                    )
                    .await;
            });
        }
    });
    (port, conns)
}

/// Echoes every byte back (an opaque protocol through a tunnel).
async fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut io, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = io.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

/// Sends bytes forever (for cutting a tunnel mid-transfer).
async fn source_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut io, _)) = l.accept().await {
            tokio::spawn(async move {
                let chunk = vec![7u8; 16 * 1024];
                for _ in 0..100_000 {
                    if io.write_all(&chunk).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
    });
    port
}

/// A TLS server (rustls, a self-signed certificate for `tls.test` made by `openssl`) that
/// answers one HTTP request per connection. Returns its port and the certificate's path.
async fn tls_server(dir: &Path) -> (u16, PathBuf) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=tls.test",
            "-addext",
            "subjectAltName=DNS:tls.test",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("this test needs the openssl command to make a certificate");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let certs = vec![CertificateDer::from_pem_file(&cert).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((io, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(io).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "hello over tls";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, cert)
}

// ---------------------------------------------------------------- clients

struct CurlOut {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `curl` through the proxy at `proxy`.
async fn curl(proxy: SocketAddr, args: &[&str]) -> CurlOut {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--proxy"])
        .arg(format!("http://{proxy}"))
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("curl timed out")
        .expect("this test needs curl");
    CurlOut {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Reads a response head (up to the blank line) byte by byte, so nothing after it is consumed.
async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    tokio::time::timeout(WAIT, async {
        while !head.ends_with(b"\r\n\r\n") {
            let n = r.read(&mut b).await.unwrap();
            assert!(n > 0, "connection closed in the head: {head:?}");
            head.push(b[0]);
        }
    })
    .await
    .expect("no response head");
    String::from_utf8(head).unwrap()
}

/// Sends `CONNECT target` over `io` and returns the response head.
async fn connect_over<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, target: &str) -> String {
    io.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_head(io).await
}

/// Bytes with every value, in a pattern that is not periodic at small sizes.
fn binary(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn allowed_and_denied_plain_http_with_curl() {
    let (port, _) = origin().await;
    let rec = Records::default();
    let (h, proxy) = tcp_proxy(config(
        &["origin.test:*", "127.0.0.1"],
        &[],
        "origin.test=127.0.0.1",
        &rec,
    ))
    .await;

    let out = curl(proxy, &[&format!("http://Origin.Test:{port}/hello")]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "hello from origin");
    let r = &rec.wait(1).await[0];
    assert!(r.allowed);
    assert_eq!(r.host, "origin.test");
    assert_eq!(r.port, port);
    assert_eq!(r.method.as_deref(), Some("GET"));
    assert_eq!(r.addr, Some(SocketAddr::from(([127, 0, 0, 1], port))));
    assert_eq!(r.reason.as_deref(), Some("allowed by rule origin.test:*"));
    assert_eq!(r.bytes_up, 0);
    assert_eq!(r.bytes_down, "hello from origin".len() as u64);
    assert!(r.duration > Duration::ZERO);

    // A denied name is refused before any lookup (the resolver does not know it).
    let out = curl(proxy, &["-i", &format!("http://other.test:{port}/hello")]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("HTTP/1.1 403"), "{}", out.stdout);
    let reason = "other.test is not in the allowlist (allowed: origin.test:*, 127.0.0.1)";
    assert!(
        out.stdout
            .contains(&format!("x-errand-proxy-denied: {reason}")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.ends_with(&format!(
            "errand egress proxy: denied GET other.test:{port} — {reason}\n"
        )),
        "{}",
        out.stdout
    );
    let r = &rec.wait(2).await[1];
    assert!(!r.allowed);
    assert_eq!(r.host, "other.test");
    assert_eq!(r.reason.as_deref(), Some(reason));
    assert_eq!(r.addr, None);
    h.shutdown().await;
}

#[tokio::test]
async fn wildcards_deny_wins_and_ports() {
    let (port, _) = origin().await;
    let rec = Records::default();
    let (h, proxy) = tcp_proxy(config(
        &["*.corp.test:*", "web.test", "127.0.0.1"],
        &["secret.corp.test"],
        "a.corp.test=127.0.0.1,corp.test=127.0.0.1,secret.corp.test=127.0.0.1,web.test=127.0.0.1",
        &rec,
    ))
    .await;
    let get = |host: &str| format!("http://{host}:{port}/hello");

    let ok = curl(proxy, &[&get("a.corp.test")]).await;
    assert_eq!(ok.stdout, "hello from origin", "{}", ok.stderr);

    for (host, reason) in [
        (
            "corp.test",
            "corp.test is not in the allowlist (allowed: *.corp.test:*, web.test, 127.0.0.1)"
                .to_string(),
        ),
        (
            "secret.corp.test",
            "denied by rule secret.corp.test".to_string(),
        ),
        (
            "web.test",
            format!("port {port} is not allowed for web.test (allowed ports: 80, 443)"),
        ),
    ] {
        let out = curl(proxy, &["-i", &get(host)]).await;
        assert!(
            out.stdout.starts_with("HTTP/1.1 403"),
            "{host}: {}",
            out.stdout
        );
        assert!(
            out.stdout.contains(&format!("— {reason}\n")),
            "{host}: {}",
            out.stdout
        );
    }
    let recs = rec.wait(4).await;
    assert_eq!(
        recs.iter().map(|r| r.allowed).collect::<Vec<_>>(),
        [true, false, false, false]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn ip_literals_need_an_address_entry() {
    let (port, _) = origin().await;
    let rec = Records::default();
    let (h, proxy) = tcp_proxy(config(&["origin.test:*"], &[], "", &rec)).await;
    let out = curl(proxy, &["-i", &format!("http://127.0.0.1:{port}/hello")]).await;
    assert!(out.stdout.starts_with("HTTP/1.1 403"), "{}", out.stdout);
    assert!(
        out.stdout.contains("IP address 127.0.0.1 is not allowed"),
        "{}",
        out.stdout
    );
    h.shutdown().await;

    let (h, proxy) = tcp_proxy(config(&["127.0.0.1:*"], &[], "", &rec)).await;
    let out = curl(proxy, &[&format!("http://127.0.0.1:{port}/hello")]).await;
    assert_eq!(out.stdout, "hello from origin", "{}", out.stderr);
    let r = rec.wait(2).await;
    assert!(!r[0].allowed);
    assert!(r[1].allowed);
    assert_eq!(r[1].host, "127.0.0.1");
    h.shutdown().await;
}

#[tokio::test]
async fn names_resolving_to_metadata_or_private_addresses_are_refused() {
    let (port, conns) = origin().await;
    let rec = Records::default();
    let (h, proxy) = tcp_proxy(config(
        &["*.test:*"],
        &[],
        "meta.test=169.254.169.254,private.test=10.1.2.3,loop.test=127.0.0.1,v6.test=::1",
        &rec,
    ))
    .await;
    for (host, why) in [
        (
            "meta.test",
            "meta.test resolves to 169.254.169.254, a cloud metadata address",
        ),
        (
            "private.test",
            "private.test resolves to 10.1.2.3, a private address",
        ),
        (
            "loop.test",
            "loop.test resolves to 127.0.0.1, a loopback address",
        ),
        ("v6.test", "v6.test resolves to ::1, a loopback address"),
    ] {
        let out = curl(proxy, &["-i", &format!("http://{host}:{port}/hello")]).await;
        assert!(
            out.stdout.starts_with("HTTP/1.1 403"),
            "{host}: {}",
            out.stdout
        );
        assert!(out.stdout.contains(why), "{host}: {}", out.stdout);
        // Through a tunnel too.
        let out = curl(proxy, &["-v", &format!("https://{host}:{port}/")]).await;
        assert_ne!(out.code, 0);
        assert!(
            out.stderr.contains("403") && out.stderr.contains(why),
            "{host}: {}",
            out.stderr
        );
    }
    // The loopback origin was never reached.
    assert_eq!(conns.load(Ordering::SeqCst), 0);
    let recs = rec.wait(8).await;
    assert!(recs.iter().all(|r| !r.allowed && r.addr.is_none()));
    h.shutdown().await;
}

#[tokio::test]
async fn chunked_uploads_stream_through_and_hop_headers_are_stripped() {
    let (port, conns) = origin().await;
    let rec = Records::default();
    let (h, proxy) = tcp_proxy(config(
        &["origin.test:*", "127.0.0.1"],
        &[],
        "origin.test=127.0.0.1",
        &rec,
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let data = binary(300_000);
    let file = dir.path().join("upload.bin");
    std::fs::write(&file, &data).unwrap();
    let out_file = dir.path().join("out.bin");
    let url = format!("http://origin.test:{port}/echo?x=1");
    let out = curl(
        proxy,
        &[
            "-D",
            "-",
            "-o",
            out_file.to_str().unwrap(),
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Proxy-Authorization: Basic c2VjcmV0",
            "-H",
            "Host: evil.test",
            "--data-binary",
            &format!("@{}", file.display()),
            &url,
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let head = out.stdout.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-seen-te: chunked"), "{head}");
    assert!(head.contains("x-seen-proxy: none"), "{head}");
    // The upstream sees the host that was checked, in origin form.
    assert!(
        head.contains(&format!("x-seen-host: origin.test:{port}")),
        "{head}"
    );
    assert!(head.contains("x-seen-uri: /echo?x=1"), "{head}");
    assert_eq!(std::fs::read(&out_file).unwrap(), data);
    let r = &rec.wait(1).await[0];
    assert_eq!(r.method.as_deref(), Some("POST"));
    assert_eq!(r.bytes_up, data.len() as u64);
    assert_eq!(r.bytes_down, data.len() as u64);

    // Keep-alive: two requests on one curl connection use one upstream connection.
    let before = conns.load(Ordering::SeqCst);
    let out = curl(
        proxy,
        &[
            &format!("http://origin.test:{port}/hello"),
            &format!("http://origin.test:{port}/bytes/5000"),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.len(), "hello from origin".len() + 5000);
    assert_eq!(conns.load(Ordering::SeqCst) - before, 1);
    let recs = rec.wait(3).await;
    assert_eq!(recs[1].bytes_down, 17);
    assert_eq!(recs[2].bytes_down, 5000);
    h.shutdown().await;
}

#[tokio::test]
async fn a_connect_tunnel_carries_tls_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (port, cert) = tls_server(dir.path()).await;
    let rec = Records::default();
    let (h, proxy) = tcp_proxy(config(
        &["tls.test:*", "127.0.0.1"],
        &[],
        "tls.test=127.0.0.1",
        &rec,
    ))
    .await;
    let out = curl(
        proxy,
        &[
            "--cacert",
            cert.to_str().unwrap(),
            &format!("https://tls.test:{port}/"),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "hello over tls");
    let r = &rec.wait(1).await[0];
    assert!(r.allowed);
    assert_eq!(r.method.as_deref(), Some("CONNECT"));
    assert_eq!(r.host, "tls.test");
    assert_eq!(r.addr, Some(SocketAddr::from(([127, 0, 0, 1], port))));
    // A TLS handshake and the request went up, the handshake and the response came down.
    assert!(r.bytes_up > 200, "{r:?}");
    assert!(r.bytes_down > 300, "{r:?}");

    // A denied tunnel: curl reports the 403 and shows the proxy's reason header.
    let out = curl(proxy, &["-v", "https://nope.test/"]).await;
    assert_eq!(out.code, 56, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "x-errand-proxy-denied: nope.test is not in the allowlist (allowed: tls.test:*, 127.0.0.1)"
        ),
        "{}",
        out.stderr
    );
    h.shutdown().await;
}

#[tokio::test]
async fn the_unix_socket_carries_an_opaque_tunnel_with_exact_byte_counts() {
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("proxy.sock");
    let rec = Records::default();
    let h = Proxy::serve_unix(
        &sock,
        config(
            &["echo.test:*", "127.0.0.1"],
            &[],
            "echo.test=127.0.0.1",
            &rec,
        ),
    )
    .unwrap();
    assert_eq!(h.socket_path(), Some(sock.as_path()));

    let mut c = UnixStream::connect(&sock).await.unwrap();
    let head = connect_over(&mut c, &format!("echo.test:{echo}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let data = binary(1 << 20);
    let (mut r, mut w) = c.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, r.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the echo differs");
    let rec0 = &rec.wait(1).await[0];
    assert_eq!(rec0.bytes_up, 1 << 20);
    assert_eq!(rec0.bytes_down, 1 << 20);
    assert_eq!(rec0.method.as_deref(), Some("CONNECT"));
    assert_eq!(rec0.port, echo);

    // Denied over the Unix socket: a 403 with the reason, and the connection stays usable.
    let mut c = UnixStream::connect(&sock).await.unwrap();
    let head = connect_over(&mut c, "blocked.test:443").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.contains("x-errand-proxy-denied: blocked.test is not in the allowlist"),
        "{head}"
    );
    let body_len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0; body_len];
    c.read_exact(&mut body).await.unwrap();
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.starts_with("errand egress proxy: denied CONNECT blocked.test:443 — "),
        "{body}"
    );
    let head = connect_over(&mut c, &format!("echo.test:{echo}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    c.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    c.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"ping");
    drop(c);
    let recs = rec.wait(3).await;
    assert!(!recs[1].allowed);
    assert_eq!((recs[2].bytes_up, recs[2].bytes_down), (4, 4));
    h.shutdown().await;
    assert!(!sock.exists(), "the socket file is removed on shutdown");
}

#[tokio::test]
async fn non_proxy_requests_and_failures_get_clear_answers() {
    let rec = Records::default();
    // A port with nothing listening.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let (h, proxy) = tcp_proxy(config(
        &["*.test:*", "127.0.0.1"],
        &[],
        "down.test=127.0.0.1",
        &rec,
    ))
    .await;

    // Origin form: not a proxy request.
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(b"GET /hello HTTP/1.1\r\nHost: down.test\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(head.contains("is not a proxy request"), "{head}");

    // An https URL in absolute form: the proxy does not speak TLS upstream.
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(b"GET https://down.test/ HTTP/1.1\r\nHost: down.test\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(head.contains("use CONNECT"), "{head}");

    // An unknown name: 502, and nothing was allowed.
    let out = curl(proxy, &["-i", "http://unknown.test/"]).await;
    assert!(out.stdout.starts_with("HTTP/1.1 502"), "{}", out.stdout);
    assert!(
        out.stdout.contains("could not resolve unknown.test"),
        "{}",
        out.stdout
    );
    // Nothing listening upstream: 502 for plain HTTP and for CONNECT.
    let out = curl(proxy, &["-i", &format!("http://down.test:{closed}/")]).await;
    assert!(out.stdout.starts_with("HTTP/1.1 502"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains(&format!("connecting to 127.0.0.1:{closed} failed")),
        "{}",
        out.stdout
    );
    let mut c = TcpStream::connect(proxy).await.unwrap();
    let head = connect_over(&mut c, &format!("down.test:{closed}")).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");

    // Headers past the limit.
    let mut c = TcpStream::connect(proxy).await.unwrap();
    let big = "a".repeat(errand_proxy::proxy::MAX_HEADER_BYTES + 10);
    c.write_all(format!("GET http://down.test/ HTTP/1.1\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");

    let recs = rec.wait(5).await;
    let by_host = |h: &str| {
        recs.iter()
            .filter(|r| r.host == h)
            .cloned()
            .collect::<Vec<_>>()
    };
    let down = by_host("down.test");
    // The origin-form request, the https one, and two connection failures.
    assert_eq!(down.len(), 4, "{recs:?}");
    let failures: Vec<_> = down.iter().filter(|r| r.allowed).collect();
    assert_eq!(failures.len(), 2, "{down:?}");
    assert!(
        failures
            .iter()
            .all(|r| r.reason.as_deref().unwrap().contains("failed"))
    );
    let unknown = by_host("unknown.test");
    assert!(!unknown[0].allowed);
    h.shutdown().await;
}

#[tokio::test]
async fn shutdown_mid_transfer_ends_cleanly_and_a_new_proxy_takes_the_same_path() {
    let src = source_server().await;
    let (port, _) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("proxy.sock");
    let rec = Records::default();
    let cfg = config(
        &["src.test:*", "origin.test:*", "127.0.0.1"],
        &[],
        "src.test=127.0.0.1,origin.test=127.0.0.1",
        &rec,
    );
    let h = Proxy::serve_unix(&sock, cfg.clone()).unwrap();

    // A tunnel receiving a stream, and a plain response trickling.
    let mut tunnel = UnixStream::connect(&sock).await.unwrap();
    let head = connect_over(&mut tunnel, &format!("src.test:{src}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = 0;
    while first < 100_000 {
        first += tunnel.read(&mut buf).await.unwrap();
    }
    let mut plain = UnixStream::connect(&sock).await.unwrap();
    plain
        .write_all(
            format!("GET http://origin.test:{port}/slow HTTP/1.1\r\nHost: origin.test\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let head = read_head(&mut plain).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let n = plain.read(&mut buf).await.unwrap();
    assert!(n > 0);
    assert!(
        h.live_connections() >= 2,
        "a client, a tunnel and an upstream are live"
    );

    tokio::time::timeout(WAIT, h.shutdown())
        .await
        .expect("shutdown hangs");
    assert!(!sock.exists());
    // Both clients see their connection end: no hang.
    for c in [&mut tunnel, &mut plain] {
        let end = tokio::time::timeout(WAIT, async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(end.is_ok(), "a client hangs after shutdown");
    }
    let recs = rec.wait(2).await;
    let t = recs
        .iter()
        .find(|r| r.method.as_deref() == Some("CONNECT"))
        .unwrap();
    assert!(t.allowed);
    assert!(t.bytes_down >= first as u64, "{t:?}");
    assert!(
        t.reason
            .as_deref()
            .unwrap()
            .ends_with("; the proxy shut down"),
        "{t:?}"
    );
    let p = recs
        .iter()
        .find(|r| r.method.as_deref() == Some("GET"))
        .unwrap();
    // The client read chunk framing too.
    assert!(p.bytes_down >= 1024 && p.bytes_down <= n as u64, "{p:?}");
    assert!(
        p.reason
            .as_deref()
            .unwrap()
            .ends_with("; the proxy shut down"),
        "{p:?}"
    );
    // New connections are refused while no proxy runs.
    assert!(UnixStream::connect(&sock).await.is_err());

    // A new proxy on the same path.
    let h2 = Proxy::serve_unix(&sock, cfg.clone()).unwrap();
    let mut c = UnixStream::connect(&sock).await.unwrap();
    c.write_all(
        format!("GET http://origin.test:{port}/hello HTTP/1.1\r\nHost: origin.test\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // A live proxy's socket is not taken over; a stale one (its proxy gone) is replaced.
    match Proxy::serve_unix(&sock, cfg.clone()) {
        Err(ProxyError::InUse { .. }) => {}
        other => panic!("expected InUse, got {:?}", other.map(|_| ())),
    }
    drop(c);
    h2.shutdown().await;
    let stale = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    drop(stale);
    assert!(sock.exists());
    let h3 = Proxy::serve_unix(&sock, cfg.clone()).unwrap();
    assert!(UnixStream::connect(&sock).await.is_ok());
    h3.shutdown().await;
    // Not a socket: left alone.
    std::fs::write(&sock, "data").unwrap();
    match Proxy::serve_unix(&sock, cfg) {
        Err(e @ ProxyError::NotASocket { .. }) => {
            assert!(e.to_string().contains("is not a socket"), "{e}")
        }
        other => panic!("expected NotASocket, got {:?}", other.map(|_| ())),
    }
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "data");
}

#[tokio::test]
async fn idle_tunnels_are_closed() {
    let echo = echo_server().await;
    let rec = Records::default();
    let mut cfg = config(
        &["echo.test:*", "127.0.0.1"],
        &[],
        "echo.test=127.0.0.1",
        &rec,
    );
    cfg.idle_timeout = Duration::from_millis(300);
    let (h, proxy) = tcp_proxy(cfg).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    let head = connect_over(&mut c, &format!("echo.test:{echo}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    c.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    c.read_exact(&mut b).await.unwrap();
    // Then silence: the proxy closes the tunnel.
    let mut rest = Vec::new();
    let r = tokio::time::timeout(WAIT, c.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "the idle tunnel was not closed");
    let r = &rec.wait(1).await[0];
    assert!(
        r.reason
            .as_deref()
            .unwrap()
            .ends_with("closed after 300 ms without traffic"),
        "{r:?}"
    );
    assert_eq!((r.bytes_up, r.bytes_down), (2, 2));
    h.shutdown().await;
    assert!(rec.all().len() == 1);
}

#[tokio::test]
async fn bytes_sent_along_with_the_connect_head_reach_the_upstream() {
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("p.sock");
    let rec = Records::default();
    let h = Proxy::serve_unix(
        &sock,
        config(
            &["echo.test:*", "127.0.0.1"],
            &[],
            "echo.test=127.0.0.1",
            &rec,
        ),
    )
    .unwrap();
    let mut c = UnixStream::connect(&sock).await.unwrap();
    // The first bytes of the tunnelled protocol in the same write as the CONNECT head.
    let target = format!("echo.test:{echo}");
    c.write_all(
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\nearly bytes").as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut got = [0u8; 11];
    tokio::time::timeout(WAIT, c.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"early bytes");
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, c.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
    let r = &rec.wait(1).await[0];
    assert_eq!((r.bytes_up, r.bytes_down), (11, 11));
    h.shutdown().await;
}

/// Sends `byte` over a new connection to the proxy's socket, with `fds` attached, as a box's
/// bridge does with `handoff` on; returns that connection.
fn hand_over(sock: &Path, byte: u8, fds: &[std::os::fd::RawFd]) -> std::os::unix::net::UnixStream {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;
    let u = std::os::unix::net::UnixStream::connect(sock).unwrap();
    let iov = [std::io::IoSlice::new(std::slice::from_ref(&byte))];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    let n = sendmsg::<()>(u.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).unwrap();
    assert_eq!(n, 1);
    u
}

/// Reads until the peer closes; `true` when it did within [`WAIT`].
async fn closes<R: AsyncRead + Unpin>(r: &mut R) -> bool {
    let mut buf = [0u8; 256];
    tokio::time::timeout(WAIT, async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_handed_over_tcp_connection_is_served_directly_and_bad_handoffs_are_dropped() {
    use std::os::fd::AsRawFd;
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("proxy.sock");
    let rec = Records::default();
    let h = Proxy::serve_unix(
        &sock,
        config(
            &["echo.test:*", "127.0.0.1"],
            &[],
            "echo.test=127.0.0.1",
            &rec,
        ),
    )
    .unwrap();

    // What a bridge does: accept a client's TCP connection, hand it over, close its copies.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (accepted, _) = l.accept().await.unwrap();
    let accepted = accepted.into_std().unwrap();
    let bridge_side = hand_over(&sock, 0, &[accepted.as_raw_fd()]);
    drop(accepted);
    drop(bridge_side);

    // The client now talks to the proxy itself: a tunnel with exact byte counts.
    let head = connect_over(&mut client, &format!("echo.test:{echo}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let data = binary(4 << 20);
    let (mut r, mut w) = client.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, r.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert!(got == data, "the echo differs ({} bytes back)", got.len());
    let r0 = &rec.wait(1).await[0];
    assert_eq!((r0.bytes_up, r0.bytes_down), (4 << 20, 4 << 20));
    assert_eq!(r0.method.as_deref(), Some("CONNECT"));

    // A handoff without a descriptor, or with one that is not a TCP connection, is dropped.
    let mut no_fd = tokio::net::UnixStream::from_std({
        let u = hand_over(&sock, 0, &[]);
        u.set_nonblocking(true).unwrap();
        u
    })
    .unwrap();
    assert!(
        closes(&mut no_fd).await,
        "a handoff without a connection stays open"
    );
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let passed = hand_over(&sock, 0, &[theirs.as_raw_fd()]);
    drop(theirs);
    mine.set_nonblocking(true).unwrap();
    let mut mine = tokio::net::UnixStream::from_std(mine).unwrap();
    assert!(
        closes(&mut mine).await,
        "a Unix socket passed as a connection was kept"
    );
    drop(passed);

    // Plain clients on the socket are still served.
    let mut c = UnixStream::connect(&sock).await.unwrap();
    let head = connect_over(&mut c, &format!("echo.test:{echo}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(c);
    h.shutdown().await;
}

#[tokio::test]
async fn client_connections_beyond_the_limit_are_reset() {
    let echo = echo_server().await;
    let rec = Records::default();
    let (h, proxy) = tcp_proxy(config(
        &["echo.test:*", "127.0.0.1"],
        &[],
        "echo.test=127.0.0.1",
        &rec,
    ))
    .await;
    let target = format!("echo.test:{echo}");
    let mut open = Vec::new();
    for _ in 0..errand_proxy::MAX_CLIENT_CONNECTIONS {
        let mut c = TcpStream::connect(proxy).await.unwrap();
        let head = connect_over(&mut c, &target).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        open.push(c);
    }
    // One more: accepted by the kernel, then reset by the proxy without an answer.
    let mut extra = TcpStream::connect(proxy).await.unwrap();
    let _ = extra
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await;
    assert!(
        closes(&mut extra).await,
        "the connection over the limit was served"
    );
    // Room again once one closes (the proxy sees the close shortly after).
    drop(open.pop());
    let mut served = false;
    for _ in 0..100 {
        let mut c = TcpStream::connect(proxy).await.unwrap();
        c.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut b = [0u8; 12];
        if let Ok(Ok(12)) = tokio::time::timeout(WAIT, c.read_exact(&mut b)).await {
            assert_eq!(&b, b"HTTP/1.1 200");
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "no room after a connection closed");
    drop(open);
    h.shutdown().await;
}
