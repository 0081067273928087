//! The egress proxy with real clients inside a real box: `curl`, `git clone` over smart HTTP
//! and Python's `urllib` reach loopback servers on the host by test host names, which the
//! proxy resolves through a test-only resolver map, and only as the policy allows: allowed
//! host, denied host, wildcard, deny-wins, disallowed port, IP literals, a name resolving to
//! the metadata address, a direct connection that bypasses the proxy, plain HTTP, a CONNECT
//! tunnel carrying TLS verified end to end, and a proxy restart in the middle of a transfer.
//! Then the same through `errand serve`: an `allowlist` environment, a scripted agent, `net`
//! events, `errand logs --net` and the denial note in the agent's tool output.
//!
//! Linux only; the machine must be able to start a box. Needs curl, git, python3 and openssl.

mod common;
#[path = "common/sandbox.rs"]
mod sandbox;

use errand_fakes::git_http::GitHttpServer;
use errand_proxy::{MapResolver, NetRecord, Policy, Proxy, ProxyConfig, ProxyHandle};
use errand_sandbox::ns::{NamespaceBackend, NetMode, NsBox, NsOptions};
use errand_sandbox::{BoxSpec, Bridge, SandboxBackend, SandboxBox, Stream, proxy_env};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const PORT: u16 = 3128;
const WAIT: Duration = Duration::from_secs(20);

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

// ---------------------------------------------------------------- records

#[derive(Clone, Default)]
struct Records(Arc<Mutex<Vec<NetRecord>>>);

impl Records {
    fn sink(&self) -> Arc<dyn Fn(NetRecord) + Send + Sync> {
        let me = self.clone();
        Arc::new(move |r| me.0.lock().unwrap().push(r))
    }

    fn all(&self) -> Vec<NetRecord> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (bounded) for the latest record of `method host:port`.
    async fn find(&self, method: &str, host: &str, port: u16) -> NetRecord {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(r) =
                self.all().into_iter().rev().find(|r| {
                    r.host == host && r.port == port && r.method.as_deref() == Some(method)
                })
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no record of {method} {host}:{port} in {:#?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------- servers

/// A plain HTTP/1.1 origin on the host's loopback: answers `origin NAME: METHOD PATH host=HOST`
/// and, for `/slow`, trickles 1 KiB every 100 ms (up to a minute), saying when it starts.
struct Origin {
    port: u16,
    conns: Arc<AtomicUsize>,
    slow: mpsc::UnboundedReceiver<()>,
}

async fn origin(name: &'static str) -> Origin {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let (tx, slow) = mpsc::unbounded_channel();
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut io, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::time::timeout(WAIT, io.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 && head.len() < 65536 => {
                            head.extend_from_slice(&buf[..n])
                        }
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut first = head.lines().next().unwrap_or_default().split(' ');
                let method = first.next().unwrap_or_default().to_string();
                let path = first.next().unwrap_or_default().to_string();
                let host = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("host"))
                    .map(|(_, v)| v.trim().to_string())
                    .unwrap_or_default();
                if path == "/slow" {
                    let _ = io
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 614400\r\nConnection: close\r\n\r\n")
                        .await;
                    let _ = tx.send(());
                    for _ in 0..600 {
                        if io.write_all(&[b's'; 1024]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    return;
                }
                let body = format!("origin {name}: {method} {path} host={host}\n");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = io.write_all(resp.as_bytes()).await;
                let _ = io.shutdown().await;
            });
        }
    });
    Origin { port, conns, slow }
}

/// A TLS server (rustls; a self-signed certificate for `secure.test` made by `openssl`) that
/// answers one HTTP request per connection. Returns its port; the certificate is `cert`.
async fn tls_server(dir: &Path, cert: &Path) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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
            "/CN=secure.test",
            "-addext",
            "subjectAltName=DNS:secure.test",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(cert)
        .output()
        .expect("this test needs the openssl command to make a certificate");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let certs = vec![CertificateDer::from_pem_file(cert).unwrap()];
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
                let Ok(Ok(mut tls)) = tokio::time::timeout(WAIT, acceptor.accept(io)).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::time::timeout(WAIT, tls.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let body = "hello over tls, verified end to end\n";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

/// A bare repository `repo.git` under `root`, with one commit holding `hello.txt`.
fn bare_repo(root: &Path) {
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("hello.txt"), "cloned through the egress proxy\n").unwrap();
    common::git(&work, &["init", "--quiet", "--initial-branch=main"]);
    common::git(&work, &["add", "."]);
    common::git(&work, &["commit", "--quiet", "-m", "first"]);
    let bare = root.join("repos");
    std::fs::create_dir_all(&bare).unwrap();
    common::git(
        &bare,
        &[
            "clone",
            "--quiet",
            "--bare",
            work.to_str().unwrap(),
            "repo.git",
        ],
    );
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

// ---------------------------------------------------------------- the box

/// A directory for Unix sockets outside `/tmp` (which the box replaces) and short enough for
/// `sun_path`.
fn socket_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("egr")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

async fn allowlist_box(ws: &Path, scratch: &Path, socket: &Path) -> Box<dyn SandboxBox> {
    let backend = NamespaceBackend::new(NsOptions {
        net: NetMode::Off,
        exe: Some(sandbox::BIN.into()),
        pool: 0,
        ..Default::default()
    })
    .unwrap();
    let mut env = proxy_env(PORT);
    env.push(("GIT_TERMINAL_PROMPT".into(), "0".into()));
    backend
        .create(BoxSpec {
            workspace: ws.to_path_buf(),
            scratch: scratch.join("box"),
            net: Some(NetMode::Allowlist),
            bridges: vec![Bridge {
                port: PORT,
                socket: socket.to_path_buf(),
                handoff: true,
            }],
            env,
            ..Default::default()
        })
        .await
        .unwrap()
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Ran {
    fn dump(&self) -> String {
        format!(
            "exit {:?} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }

    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{}", self.dump());
        &self.stdout
    }
}

async fn run(b: &NsBox, argv: &[&str]) -> Ran {
    let (tx, mut rx) = mpsc::channel(64);
    let start = Instant::now();
    let res = b
        .exec_argv(
            s(argv),
            None,
            Duration::from_secs(60),
            tokio_util::sync::CancellationToken::new(),
            tx,
        )
        .await
        .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(c) = rx.recv().await {
        match c.stream {
            Stream::Stdout => out.extend(c.data),
            Stream::Stderr => err.extend(c.data),
        }
    }
    Ran {
        code: res.exit_code,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// `curl` in the box, through the proxy variables: `-sS`, 15 s at most.
async fn curl(b: &NsBox, args: &[&str]) -> Ran {
    let mut argv = vec!["curl", "-sS", "--max-time", "15"];
    argv.extend_from_slice(args);
    run(b, &argv).await
}

/// Everything one library-level test needs: the servers on the host, the proxy on a Unix
/// socket, and an allowlist box bridged to it.
struct Lab {
    web: Origin,
    other_port: Origin,
    git: GitHttpServer,
    git_port: u16,
    tls_port: u16,
    records: Records,
    cfg: ProxyConfig,
    sock: PathBuf,
    proxy: Option<ProxyHandle>,
    bx: Box<dyn SandboxBox>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Lab {
    async fn start() -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let sockdir = socket_dir();
        let web = origin("web").await;
        let other_port = origin("second").await;
        bare_repo(tmp.path());
        let git = GitHttpServer::start(&tmp.path().join("repos"), None);
        let git_port = port_of(&git.base_url);
        // The certificate goes where the box can read it: the workspace.
        let tls_port = tls_server(tmp.path(), &ws.path().join("ca.pem")).await;
        let p = web.port;
        let resolver = MapResolver::from_spec(
            "allowed.test=127.0.0.1,api.allowed.test=127.0.0.1,blocked.allowed.test=127.0.0.1,\
             other.test=127.0.0.1,git.test=127.0.0.1,secure.test=127.0.0.1,\
             meta.test=169.254.169.254",
        )
        .unwrap();
        let policy = Policy::parse(
            &[
                format!("allowed.test:{p}"),
                format!("*.allowed.test:{p}"),
                format!("git.test:{git_port}"),
                format!("secure.test:{tls_port}"),
                "meta.test:80".into(),
                // The names above resolve to loopback: the rebinding guard needs the address.
                "127.0.0.1".into(),
            ],
            &s(&["blocked.allowed.test"]),
        )
        .unwrap();
        let records = Records::default();
        let cfg = ProxyConfig::new(Arc::new(policy), Arc::new(resolver), records.sink());
        let sock = sockdir.path().join("proxy.sock");
        let proxy = Proxy::serve_unix(&sock, cfg.clone()).unwrap();
        let bx = allowlist_box(ws.path(), scratch.path(), &sock).await;
        Lab {
            web,
            other_port,
            git,
            git_port,
            tls_port,
            records,
            cfg,
            sock,
            proxy: Some(proxy),
            bx,
            _dirs: vec![tmp, ws, scratch, sockdir],
        }
    }

    fn ns(&self) -> &NsBox {
        self.bx.as_ns().unwrap()
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.web.port)
    }

    async fn finish(mut self) {
        self.bx.destroy().await.unwrap();
        if let Some(p) = self.proxy.take() {
            p.shutdown().await;
        }
    }
}

/// Asserts a curl `-i` output is the proxy's 403 naming `reason`.
fn assert_403(r: &Ran, what: &str, reason: &str) {
    assert_eq!(r.code, Some(0), "{what}: {}", r.dump());
    assert!(
        r.stdout.starts_with("HTTP/1.1 403"),
        "{what}: not a 403\n{}",
        r.dump()
    );
    assert!(
        r.stdout.contains("x-errand-proxy-denied: ") && r.stdout.contains(reason),
        "{what}: the answer does not say {reason:?}\n{}",
        r.dump()
    );
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_git_and_python_in_a_box_get_exactly_what_the_policy_allows() {
    let lab = Lab::start().await;
    let ns = lab.ns();
    let p = lab.web.port;

    // Allowed host, plain HTTP: the origin sees the checked host in origin form.
    let r = curl(ns, &[&lab.url("allowed.test", "/plain")]).await;
    assert_eq!(
        r.ok(),
        format!("origin web: GET /plain host=allowed.test:{p}\n")
    );
    let rec = lab.records.find("GET", "allowed.test", p).await;
    assert!(rec.allowed, "{rec:?}");
    assert_eq!(rec.addr, Some(([127, 0, 0, 1], p).into()));
    assert_eq!(
        rec.reason.as_deref(),
        Some(format!("allowed by rule allowed.test:{p}").as_str())
    );
    assert!(rec.bytes_down > 0, "{rec:?}");

    // Wildcard.
    let r = curl(ns, &[&lab.url("api.allowed.test", "/wild")]).await;
    assert_eq!(
        r.ok(),
        format!("origin web: GET /wild host=api.allowed.test:{p}\n")
    );
    let rec = lab.records.find("GET", "api.allowed.test", p).await;
    assert!(rec.allowed && rec.bytes_down > 0, "{rec:?}");
    assert_eq!(
        rec.reason.as_deref(),
        Some(format!("allowed by rule *.allowed.test:{p}").as_str())
    );

    let before = lab.web.conns.load(Ordering::SeqCst) + lab.other_port.conns.load(Ordering::SeqCst);
    // Denied host, deny-wins, disallowed port, IP literals, metadata: each a 403 that says why,
    // with curl's own status line and code.
    let q = lab.other_port.port;
    let denied: Vec<(String, String, u16, String)> = vec![
        (
            lab.url("other.test", "/x"),
            "other.test".into(),
            p,
            "other.test is not in the allowlist".into(),
        ),
        (
            lab.url("blocked.allowed.test", "/x"),
            "blocked.allowed.test".into(),
            p,
            "denied by rule blocked.allowed.test".into(),
        ),
        (
            format!("http://allowed.test:{q}/x"),
            "allowed.test".into(),
            q,
            format!("port {q} is not allowed for allowed.test (allowed ports: {p})"),
        ),
        (
            "http://10.1.2.3/x".into(),
            "10.1.2.3".into(),
            80,
            "IP address 10.1.2.3 is not allowed".into(),
        ),
        (
            // Loopback is allowed as an address (for the names above), on ports 80 and 443
            // only: a literal on the origin's port is still refused.
            format!("http://127.0.0.1:{p}/x"),
            "127.0.0.1".into(),
            p,
            format!("port {p} is not allowed for 127.0.0.1"),
        ),
        (
            "http://169.254.169.254/latest/meta-data/".into(),
            "169.254.169.254".into(),
            80,
            "169.254.169.254 is a cloud metadata address".into(),
        ),
        (
            "http://meta.test/latest/meta-data/".into(),
            "meta.test".into(),
            80,
            "meta.test resolves to 169.254.169.254, a cloud metadata address".into(),
        ),
    ];
    for (url, host, port, reason) in &denied {
        // No `-x`: the box's environment carries the proxy. Loopback is in NO_PROXY (the
        // bridge is there), so the loopback literal asks for the proxy explicitly.
        let via: &[&str] = if url.contains("127.0.0.1") {
            &["--noproxy", ""]
        } else {
            &[]
        };
        let r = curl(ns, &[via, &["-i", url.as_str()]].concat()).await;
        assert_403(&r, url, reason);
        let r = curl(
            ns,
            &[
                via,
                &["-o", "/dev/null", "-w", "%{http_code}", url.as_str()],
            ]
            .concat(),
        )
        .await;
        assert_eq!(r.ok(), "403", "{url}");
        let rec = lab.records.find("GET", host, *port).await;
        assert!(!rec.allowed, "{url}: {rec:?}");
        assert!(
            rec.reason
                .as_deref()
                .unwrap_or_default()
                .contains(reason.as_str()),
            "{url}: {rec:?}"
        );
        assert_eq!(rec.addr, None, "{url}: {rec:?}");
        assert_eq!(rec.bytes_down, 0, "{url}: {rec:?}");
        // `--fail` turns it into curl's error 22, naming the status.
        let r = curl(ns, &[via, &["--fail", url.as_str()]].concat()).await;
        assert_eq!(r.code, Some(22), "{url}: {}", r.dump());
        assert!(r.stderr.contains("403"), "{url}: {}", r.dump());
    }
    // None of the denied requests reached a server on the host.
    assert_eq!(
        lab.web.conns.load(Ordering::SeqCst) + lab.other_port.conns.load(Ordering::SeqCst),
        before
    );

    // A CONNECT tunnel carrying TLS: curl verifies the origin's own certificate (the proxy
    // could not present one for secure.test: it never decrypts).
    let t = lab.tls_port;
    let r = curl(
        ns,
        &[
            "--cacert",
            "ca.pem",
            &format!("https://secure.test:{t}/tls"),
        ],
    )
    .await;
    assert_eq!(r.ok(), "hello over tls, verified end to end\n");
    let rec = lab.records.find("CONNECT", "secure.test", t).await;
    assert!(rec.allowed, "{rec:?}");
    assert_eq!(rec.addr, Some(([127, 0, 0, 1], t).into()));
    assert!(
        rec.bytes_up > 200 && rec.bytes_down > 300,
        "a TLS handshake each way: {rec:?}"
    );
    // Without the CA, curl refuses the origin's certificate: it is the origin's, not the proxy's.
    let r = curl(ns, &[&format!("https://secure.test:{t}/tls")]).await;
    assert_eq!(r.code, Some(60), "{}", r.dump());
    // A denied tunnel: CONNECT gets the 403, curl fails with 56 and shows the reason.
    let r = curl(ns, &["-v", &format!("https://other.test:{t}/")]).await;
    assert_eq!(r.code, Some(56), "{}", r.dump());
    assert!(
        r.stderr.contains("403") && r.stderr.contains("other.test is not in the allowlist"),
        "{}",
        r.dump()
    );
    let rec = lab.records.find("CONNECT", "other.test", t).await;
    assert!(!rec.allowed, "{rec:?}");

    // git clone over smart HTTP, through the proxy.
    let g = lab.git_port;
    let r = run(
        ns,
        &[
            "git",
            "clone",
            "--quiet",
            &format!("http://git.test:{g}/repo.git"),
            "cloned",
        ],
    )
    .await;
    r.ok();
    let r = run(ns, &["cat", "cloned/hello.txt"]).await;
    assert_eq!(r.ok(), "cloned through the egress proxy\n");
    let git_recs: Vec<NetRecord> = lab
        .records
        .all()
        .into_iter()
        .filter(|r| r.host == "git.test")
        .collect();
    assert!(
        git_recs.len() >= 2
            && git_recs.iter().all(|r| r.allowed && r.port == g)
            && git_recs.iter().any(|r| r.method.as_deref() == Some("POST")),
        "ref discovery (GET) and upload-pack (POST): {git_recs:#?}"
    );
    assert!(
        git_recs.iter().map(|r| r.bytes_down).sum::<u64>() > 100,
        "{git_recs:#?}"
    );
    assert!(
        lab.git
            .requests()
            .iter()
            .any(|q| q.uri.contains("git-upload-pack") && q.status == 200),
        "{:?}",
        lab.git.requests()
    );
    // A clone from a host that is not allowed fails with git's own clear error.
    let served = lab.git.requests().len();
    let r = run(
        ns,
        &[
            "git",
            "clone",
            "--quiet",
            &format!("http://other.test:{g}/repo.git"),
            "denied-clone",
        ],
    )
    .await;
    assert_eq!(r.code, Some(128), "{}", r.dump());
    assert!(
        r.stderr.contains("unable to access") && r.stderr.contains("403"),
        "{}",
        r.dump()
    );
    assert_eq!(
        lab.git.requests().len(),
        served,
        "the denied clone reached the server"
    );
    let rec = lab.records.find("GET", "other.test", g).await;
    assert!(!rec.allowed, "{rec:?}");

    // Python's urllib, through the proxy variables.
    let py = format!(
        r#"
import urllib.request, urllib.error
print(urllib.request.urlopen("http://api.allowed.test:{p}/py", timeout=15).read().decode(), end="")
try:
    urllib.request.urlopen("http://blocked.allowed.test:{p}/py", timeout=15)
    print("denied=NO")
except urllib.error.HTTPError as e:
    print("denied=%d %s" % (e.code, e.headers.get("x-errand-proxy-denied")))
"#
    );
    let r = run(ns, &["python3", "-c", &py]).await;
    assert_eq!(
        r.ok(),
        format!(
            "origin web: GET /py host=api.allowed.test:{p}\ndenied=403 denied by rule blocked.allowed.test\n"
        )
    );

    // Every decision was recorded, each with a method.
    let all = lab.records.all();
    assert!(all.iter().all(|r| r.method.is_some()), "{all:#?}");
    assert!(
        all.iter()
            .filter(|r| r.allowed)
            .all(|r| r.bytes_down > 0 && r.addr.is_some()),
        "{all:#?}"
    );
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_connection_that_bypasses_the_proxy_fails() {
    let lab = Lab::start().await;
    let ns = lab.ns();
    let p = lab.web.port;
    let calls_before = lab.records.all().len();
    // The host's loopback origin: the box's loopback is its own, nothing listens there.
    let r = curl(
        ns,
        &["--noproxy", "*", &format!("http://127.0.0.1:{p}/direct")],
    )
    .await;
    assert_eq!(r.code, Some(7), "{}", r.dump());
    assert!(r.elapsed < Duration::from_secs(10), "{}", r.dump());
    // Anywhere else: no route.
    let r = curl(ns, &["--noproxy", "*", "http://10.0.0.1/direct"]).await;
    assert_eq!(r.code, Some(7), "{}", r.dump());
    assert!(r.elapsed < Duration::from_secs(10), "{}", r.dump());
    // A test name: the box has no resolver; only the proxy resolves names.
    let r = curl(
        ns,
        &["--noproxy", "*", &format!("http://allowed.test:{p}/direct")],
    )
    .await;
    assert_eq!(r.code, Some(6), "{}", r.dump());
    // Python without the proxy variables, straight to the host's port.
    let r = run(
        ns,
        &[
            "python3",
            "-c",
            &format!(
                "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {p}), timeout=5)\n    print('connected')\nexcept OSError as e:\n    print(type(e).__name__)"
            ),
        ],
    )
    .await;
    assert_eq!(r.ok(), "ConnectionRefusedError\n");
    assert_eq!(
        lab.web.conns.load(Ordering::SeqCst),
        0,
        "the origin was reached"
    );
    assert_eq!(
        lab.records.all().len(),
        calls_before,
        "the proxy saw the bypass attempts"
    );
    // The way through the proxy works from the same box.
    let r = curl(ns, &[&lab.url("allowed.test", "/via-proxy")]).await;
    assert!(r.ok().contains("GET /via-proxy"), "{}", r.dump());
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_restart_mid_transfer_fails_cleanly_and_the_same_box_recovers() {
    let mut lab = Lab::start().await;
    let p = lab.web.port;
    let ok_url = lab.url("allowed.test", "/before");
    {
        let ns = lab.ns();
        assert!(curl(ns, &[&ok_url]).await.ok().contains("GET /before"));
    }

    // A slow download is in flight when the proxy stops.
    let proxy = lab.proxy.take().unwrap();
    let mut slow_rx = std::mem::replace(&mut lab.web.slow, mpsc::unbounded_channel().1);
    let url = lab.url("allowed.test", "/slow");
    let stopper = async move {
        tokio::time::timeout(WAIT, slow_rx.recv())
            .await
            .expect("the slow download never started")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.shutdown().await;
        Instant::now()
    };
    let args = ["-o", "/dev/null", url.as_str()];
    let (r, stopped) = tokio::join!(curl(lab.ns(), &args), stopper);
    // curl sees the connection close short of the announced length (18), or a reset (56).
    assert!(
        matches!(r.code, Some(18) | Some(56) | Some(52)),
        "the cut transfer must fail, not succeed short:\n{}",
        r.dump()
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "curl went on for {:?} after the proxy stopped\n{}",
        stopped.elapsed(),
        r.dump()
    );
    let rec = lab.records.find("GET", "allowed.test", p).await;
    assert!(rec.allowed, "{rec:?}");
    assert!(
        rec.reason
            .as_deref()
            .unwrap_or_default()
            .contains("the proxy shut down"),
        "{rec:?}"
    );
    assert!(rec.bytes_down > 0, "{rec:?}");

    // While it is down: a clean, fast error, never a hang.
    for url in [ok_url.as_str(), "https://secure.test/"] {
        let r = curl(lab.ns(), &["--max-time", "10", url]).await;
        assert!(r.elapsed < Duration::from_secs(10), "{url}: {}", r.dump());
        assert!(
            matches!(r.code, Some(7) | Some(56) | Some(52)),
            "{url}: {}",
            r.dump()
        );
    }

    // A new proxy on the same socket path: the same box gets through again.
    lab.proxy = Some(Proxy::serve_unix(&lab.sock, lab.cfg.clone()).unwrap());
    let again = lab.url("allowed.test", "/after");
    let r = curl(lab.ns(), &[&again]).await;
    assert_eq!(
        r.ok(),
        format!("origin web: GET /after host=allowed.test:{p}\n")
    );
    let r = curl(lab.ns(), &["-i", &lab.url("other.test", "/after")]).await;
    assert_403(&r, "after restart", "other.test is not in the allowlist");
    lab.finish().await;
}

// ---------------------------------------------------------------- through `errand serve`

#[tokio::test(flavor = "multi_thread")]
async fn an_allowlist_task_records_its_network_decisions_and_tells_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = common::make_repo(tmp.path());
    let web = origin("e2e").await;
    let p = web.port;
    let script = common::write_script(
        tmp.path(),
        "agent.json",
        json!({"turns": [
            {"tool_calls": [{"name": "shell", "arguments": {
                "command": format!("curl -sS --max-time 15 http://allowed.test:{p}/from-agent")}}]},
            {"tool_calls": [{"name": "shell", "arguments": {
                "command": format!("curl -sS --max-time 15 -o /dev/null -w 'code=%{{http_code}}\\n' http://other.test:{p}/nope")}}]},
            {"tool_calls": [
                {"name": "write_file", "arguments": {"path": "net.txt", "content": "reached it\n"}},
                {"name": "finish", "arguments": {"summary": "fetched through the proxy"}}]}
        ]}),
    );
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        format!(
            "[environments.web]\nrepo = \"{}\"\nmodel = \"scripted:{}\"\n\
             [environments.web.network]\nagent = \"allowlist\"\n\
             allow = [\"allowed.test:{p}\", \"127.0.0.1\"]\ndeny = [\"*.internal.test\"]\n",
            repo.display(),
            script.display()
        ),
    )
    .unwrap();
    let server = common::Server::start_with_env(
        &data,
        &[],
        &[(
            errand_proxy::TEST_RESOLVE_ENV,
            "allowed.test=127.0.0.1,other.test=127.0.0.1",
        )],
    );
    let out = common::ok(server.cli(&["run", "fetch something", "--env", "web", "--json"]));
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = common::wait_status(
        &server,
        &id,
        &["done", "failed", "cancelled"],
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(t["status"], "done", "{t:#}");
    assert_eq!(
        web.conns.load(Ordering::SeqCst),
        1,
        "only the allowed request got through"
    );

    let evs = common::events(&server, &id).await;
    let results: Vec<&Value> = evs.iter().filter(|e| e["type"] == "tool_result").collect();
    let allowed_out = results[0]["output"].as_str().unwrap();
    assert!(
        allowed_out.contains(&format!(
            "origin e2e: GET /from-agent host=allowed.test:{p}"
        )),
        "{results:#?}"
    );
    assert!(
        !allowed_out.contains("[errand] The egress proxy denied"),
        "{allowed_out}"
    );
    let denied_out = results[1]["output"].as_str().unwrap();
    assert!(denied_out.contains("code=403"), "{denied_out}");
    assert!(
        denied_out.contains("[errand] The egress proxy denied")
            && denied_out.contains(&format!(
                "GET other.test:{p} — other.test is not in the allowlist"
            )),
        "{denied_out}"
    );
    assert!(
        evs.iter().any(|e| e["type"] == "notice"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("network of the agent phase: allowlist through the egress proxy")),
        "no notice of the agent's network"
    );

    // `errand logs --net`: one line per decision and the totals.
    let net = common::ok(server.cli(&["logs", &id, "--net"]));
    let lines: Vec<&str> = net.lines().collect();
    assert_eq!(lines.len(), 3, "{net}");
    assert!(
        lines[0].starts_with(&format!(
            "net [agent] ALLOWED GET allowed.test:{p} (127.0.0.1:{p})"
        )),
        "{net}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "net [agent] DENIED GET other.test:{p}: other.test is not in the allowlist"
        )),
        "{net}"
    );
    assert!(
        lines[2].starts_with("2 requests: 1 allowed, 1 denied;"),
        "{net}"
    );

    // `--net --json`: the same two as `net` events.
    let js = common::ok(server.cli(&["logs", &id, "--net", "--json"]));
    let evs: Vec<Value> = js
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(evs.len(), 2, "{js}");
    assert!(
        evs.iter()
            .all(|e| e["type"] == "net" && e["phase"] == "agent"),
        "{js}"
    );
    assert_eq!(evs[0]["allowed"], true);
    assert_eq!(evs[0]["host"], "allowed.test");
    assert_eq!(evs[0]["port"], p);
    assert_eq!(evs[0]["method"], "GET");
    assert!(evs[0]["bytes_down"].as_u64().unwrap() > 0, "{js}");
    assert_eq!(evs[1]["allowed"], false);
    assert_eq!(evs[1]["host"], "other.test");
    assert!(
        evs[1]["reason"]
            .as_str()
            .unwrap()
            .contains("other.test is not in the allowlist"),
        "{js}"
    );
}

#[test]
fn the_clients_are_there() {
    for tool in ["curl", "git", "python3", "openssl"] {
        assert!(
            sandbox::have(tool),
            "the egress tests need {tool} on the host"
        );
    }
}
