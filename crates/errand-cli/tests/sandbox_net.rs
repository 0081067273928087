//! Box network modes: `allowlist` boxes reach a host Unix socket (the egress proxy, the model
//! gateway) only through a bridge on their own loopback, and nothing else; `off` boxes still
//! cannot make IP sockets; bridges are refused where they would open a way out; the pool
//! hands out processes with the right namespaces and seccomp filter.
//!
//! Linux only; the machine must be able to start a box (`errand sandbox check`). The box runs
//! the real `errand` binary, curl and Python from the host's system directories.

#[path = "common/sandbox.rs"]
mod sandbox;

use errand_sandbox::ns::{NamespaceBackend, NetMode, NsBox, NsOptions};
use errand_sandbox::{BoxSpec, Bridge, SandboxBackend, SandboxBox, Stream, proxy_env};
use sandbox::{BIN, EPERM, OK, have, prelude};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

const PORT: u16 = 3128;
const BODY: &str = "hello from the unix socket\n";

fn backend(net: NetMode, pool: usize) -> NamespaceBackend {
    NamespaceBackend::new(NsOptions {
        net,
        exe: Some(BIN.into()),
        pool,
        ..Default::default()
    })
    .unwrap()
}

fn spec(ws: &Path, scratch: PathBuf, net: Option<NetMode>, bridges: Vec<Bridge>) -> BoxSpec {
    BoxSpec {
        workspace: ws.to_path_buf(),
        scratch,
        ro_binds: vec![],
        rootfs: None,
        quota_dir: None,
        env: vec![],
        net,
        bridges,
        ..Default::default()
    }
}

fn bridge(port: u16, socket: &Path) -> Vec<Bridge> {
    vec![Bridge {
        port,
        socket: socket.to_path_buf(),
        handoff: false,
    }]
}

/// A directory for Unix sockets outside `/tmp` (which the box replaces with its own) and short
/// enough for `sun_path`: the box must not see it for another reason than the bridge design.
fn socket_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("net")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
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

    fn kv(&self) -> BTreeMap<String, String> {
        self.stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

async fn run_in(b: &NsBox, argv: &[&str], timeout: Duration) -> Ran {
    let (tx, mut rx) = mpsc::channel(64);
    let start = Instant::now();
    let res = b
        .exec_argv(
            argv.iter().map(|s| s.to_string()).collect(),
            None,
            timeout,
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

async fn run(b: &NsBox, argv: &[&str]) -> Ran {
    run_in(b, argv, Duration::from_secs(30)).await
}

async fn py(b: &NsBox, code: &str) -> Ran {
    let src = format!("{}\n{code}", prelude());
    run(b, &["python3", "-c", &src]).await
}

/// A tiny HTTP/1.1 server on a host Unix socket: answers [`BODY`], echoes the request body of
/// `…/echo`, and holds `…/hold` open until the client goes away (reporting both moments).
struct UnixHttp {
    path: PathBuf,
    seen: Arc<Mutex<Vec<String>>>,
    events: mpsc::UnboundedReceiver<&'static str>,
    task: tokio::task::JoinHandle<()>,
}

impl UnixHttp {
    fn start(path: &Path) -> UnixHttp {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, events) = mpsc::unbounded_channel();
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    tokio::spawn(serve_one(s, seen.clone(), tx.clone()));
                }
            })
        };
        UnixHttp {
            path: path.to_path_buf(),
            seen,
            events,
            task,
        }
    }

    /// The request lines received so far.
    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops listening. `remove`: also removes the socket file (else it stays, refusing).
    fn stop(self, remove: bool) {
        self.task.abort();
        if remove {
            std::fs::remove_file(&self.path).unwrap();
        }
    }

    async fn event(&mut self) -> &'static str {
        tokio::time::timeout(Duration::from_secs(15), self.events.recv())
            .await
            .expect("no event from the server within 15 s")
            .expect("server gone")
    }
}

async fn serve_one(
    mut s: UnixStream,
    seen: Arc<Mutex<Vec<String>>>,
    events: mpsc::UnboundedSender<&'static str>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await;
        match read {
            Ok(Ok(n)) if n > 0 && buf.len() < 64 * 1024 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let line = head.lines().next().unwrap_or_default().to_string();
    seen.lock().unwrap().push(line.clone());
    let len: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => body.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
    let target = line.split(' ').nth(1).unwrap_or_default();
    if target.ends_with("/hold") {
        let _ = events.send("held");
        // Until the client (the relay) closes, at most 60 s.
        let closed = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        let _ = events.send(if closed.is_ok() {
            "closed"
        } else {
            "still open"
        });
        return;
    }
    let reply = if target.ends_with("/echo") {
        body
    } else {
        BODY.as_bytes().to_vec()
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.len()
    );
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(&reply).await;
    let _ = s.shutdown().await;
}

async fn allowlist_box(
    ws: &Path,
    scratch: &Path,
    socket: &Path,
    env: Vec<(String, String)>,
) -> Box<dyn SandboxBox> {
    let mut s = spec(
        ws,
        scratch.join("box"),
        Some(NetMode::Allowlist),
        bridge(PORT, socket),
    );
    s.env = env;
    backend(NetMode::Off, 0).create(s).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_carries_plain_and_proxied_http_to_the_unix_socket() {
    let ws = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let dir = socket_dir();
    let sock = dir.path().join("proxy.sock");
    let server = UnixHttp::start(&sock);
    let b = allowlist_box(ws.path(), scratch.path(), &sock, proxy_env(PORT)).await;
    let ns = b.as_ns().unwrap();
    eprintln!("{}", ns.enforced.summary());
    assert!(
        ns.enforced
            .network
            .starts_with("allowlist (egress proxy only, bridged on 127.0.0.1:3128"),
        "{:?}",
        ns.enforced
    );
    assert!(ns.enforced.namespaces.contains("net"), "{:?}", ns.enforced);
    assert_eq!(ns.net(), NetMode::Allowlist);

    // Straight to the bridge (NO_PROXY keeps loopback direct).
    let r = run(
        ns,
        &[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "http://127.0.0.1:3128/direct",
        ],
    )
    .await;
    assert_eq!(r.ok(), BODY);
    // Through the proxy variables: the Unix socket server gets an absolute-form request.
    let r = run(
        ns,
        &["curl", "-sS", "--max-time", "10", "http://anything.test/x"],
    )
    .await;
    assert_eq!(r.ok(), BODY);
    let r = run(
        ns,
        &[
            "python3",
            "-c",
            "import urllib.request\nprint(urllib.request.urlopen('http://pkgs.example.test/simple/errand/', timeout=10).read().decode(), end='')",
        ],
    )
    .await;
    assert_eq!(r.ok(), BODY);
    assert_eq!(
        server.requests(),
        [
            "GET /direct HTTP/1.1",
            "GET http://anything.test/x HTTP/1.1",
            "GET http://pkgs.example.test/simple/errand/ HTTP/1.1",
        ]
    );

    // Both directions carry data intact: 8 MiB up and back.
    let r = py(
        ns,
        r#"
import hashlib, http.client
data = os.urandom(8 << 20)
c = http.client.HTTPConnection("127.0.0.1", 3128, timeout=20)
c.request("POST", "/echo", body=data)
got = c.getresponse().read()
out("len", len(got))
out("same", got == data)
"#,
    )
    .await;
    r.ok();
    assert_eq!(r.kv()["len"], (8 << 20).to_string(), "{}", r.dump());
    assert_eq!(r.kv()["same"], "True", "{}", r.dump());

    // Many connections at once, each relayed on its own.
    let r = run(
        ns,
        &[
            "sh",
            "-c",
            "seq 1 24 | xargs -P 24 -I{} curl -sS --max-time 10 -o /dev/null -w '%{http_code}\\n' http://127.0.0.1:3128/n{}",
        ],
    )
    .await;
    let codes: Vec<&str> = r.ok().lines().collect();
    assert_eq!(codes, vec!["200"; 24], "{}", r.dump());
    let parallel = server
        .requests()
        .iter()
        .filter(|l| l.starts_with("GET /n"))
        .count();
    assert_eq!(parallel, 24);

    // `localhost` and `[::1]` too, where the box's loopback has IPv6.
    if ns.enforced.network.contains("[::1]:3128") {
        let r = run(
            ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                "10",
                "-g",
                "http://[::1]:3128/v6",
            ],
        )
        .await;
        assert_eq!(r.ok(), BODY);
        assert!(server.requests().contains(&"GET /v6 HTTP/1.1".to_string()));
    }
    b.destroy().await.unwrap();
    server.stop(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowlist_box_has_no_other_way_out() {
    let ws = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let dir = socket_dir();
    let sock = dir.path().join("proxy.sock");
    let server = UnixHttp::start(&sock);
    // A TCP server on the host's loopback, which the box must not reach.
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    host.set_nonblocking(true).unwrap();
    let host_port = host.local_addr().unwrap().port();
    let b = allowlist_box(ws.path(), scratch.path(), &sock, proxy_env(PORT)).await;
    let ns = b.as_ns().unwrap();
    let probe = format!(
        r#"
def conn(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(addr)
        return "OK"
    except OSError as e:
        return ename(e.errno) if e.errno else repr(e)
    finally:
        s.close()
out("host_loopback", conn(socket.AF_INET, ("127.0.0.1", {host_port})))
out("test_net", conn(socket.AF_INET, ("192.0.2.1", 80)))
out("private", conn(socket.AF_INET, ("10.0.0.1", 443)))
out("test_net6", conn(socket.AF_INET6, ("2001:db8::1", 80)))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out("udp_out", tryit(lambda: u.sendto(b"x", ("192.0.2.1", 53))))
out("raw", tryit(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()))
out("raw6", tryit(lambda: socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6).close()))
out("packet", tryit(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0x0300).close()))
out("vsock", tryit(lambda: socket.socket(40, socket.SOCK_STREAM).close()))
out("sctp", tryit(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132).close()))
out("seqpacket", tryit(lambda: socket.socket(socket.AF_INET6, socket.SOCK_SEQPACKET, 0).close()))
out("dccp", tryit(lambda: socket.socket(socket.AF_INET, 6, 33).close()))
out("tcp_flags", tryit(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, socket.IPPROTO_TCP).close()))
out("udp", tryit(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP).close()))
out("ping", tryit(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).close()))
out("bridge", conn(socket.AF_INET, ("127.0.0.1", {PORT})))
out("sock_visible", os.path.exists("{sock}"))
out("dir_visible", os.path.exists("{dir}"))
out("sock_in_proc_net_unix", "{sock}" in open("/proc/net/unix").read())
out("netdev", sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]))
"#,
        sock = sock.display(),
        dir = dir.path().display(),
    );
    let r = py(ns, &probe).await;
    r.ok();
    let kv = r.kv();
    let want = [
        // The box's loopback is its own: nothing listens on the host's port there.
        ("host_loopback", "ECONNREFUSED (Connection refused)"),
        ("test_net", "ENETUNREACH (Network is unreachable)"),
        ("private", "ENETUNREACH (Network is unreachable)"),
        ("test_net6", "ENETUNREACH (Network is unreachable)"),
        ("udp_out", "ENETUNREACH (Network is unreachable)"),
        ("raw", EPERM),
        ("raw6", EPERM),
        ("packet", EPERM),
        ("vsock", EPERM),
        ("sctp", EPERM),
        ("seqpacket", EPERM),
        ("dccp", EPERM),
        ("tcp_flags", OK),
        ("udp", OK),
        ("bridge", OK),
        ("sock_visible", "False"),
        ("dir_visible", "False"),
        ("sock_in_proc_net_unix", "False"),
        ("netdev", "['lo']"),
    ];
    for (k, v) in want {
        assert_eq!(kv.get(k).map(String::as_str), Some(v), "{k}\n{}", r.dump());
    }
    // Ping sockets pass the filter; the namespace's ping_group_range decides (EACCES by
    // default in a new network namespace).
    assert_ne!(
        kv.get("ping").map(String::as_str),
        Some(EPERM),
        "{}",
        r.dump()
    );
    assert!(
        matches!(host.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the host's loopback server got a connection from the box"
    );
    // DNS does not resolve (no resolver is reachable), so names only work through the proxy.
    let r = run(
        ns,
        &[
            "env",
            "-u",
            "http_proxy",
            "-u",
            "HTTP_PROXY",
            "curl",
            "-sS",
            "--max-time",
            "10",
            "http://anything.test/direct",
        ],
    )
    .await;
    assert_eq!(r.code, Some(6), "curl: could not resolve\n{}", r.dump());
    b.destroy().await.unwrap();
    server.stop(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_unix_socket_fails_fast_and_a_restarted_one_works_again() {
    let ws = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let dir = socket_dir();
    let sock = dir.path().join("proxy.sock");
    let server = UnixHttp::start(&sock);
    let b = allowlist_box(ws.path(), scratch.path(), &sock, proxy_env(PORT)).await;
    let ns = b.as_ns().unwrap();
    let curl = [
        "curl",
        "-sS",
        "--max-time",
        "20",
        "http://registry.example.test/pkg",
    ];
    assert_eq!(run(ns, &curl).await.ok(), BODY);

    // The socket file stays but nobody listens (refused), then it is gone (missing).
    server.stop(false);
    for case in ["refused", "missing"] {
        let r = run_in(ns, &curl, Duration::from_secs(20)).await;
        assert!(
            r.elapsed < Duration::from_secs(10),
            "{case}: curl took {:?}\n{}",
            r.elapsed,
            r.dump()
        );
        // The bridge resets the connection at once: curl sees it while connecting (7) or
        // right after (56); never a hang or an empty answer that looks like success.
        assert!(matches!(r.code, Some(7) | Some(56)), "{case}: {}", r.dump());
        assert!(
            r.stderr.contains("Couldn't connect") || r.stderr.contains("reset"),
            "{case}: {}",
            r.dump()
        );
        if case == "refused" {
            std::fs::remove_file(&sock).unwrap();
        }
    }

    // The proxy is back on the same path: the same box reaches it again.
    let server = UnixHttp::start(&sock);
    assert_eq!(run(ns, &curl).await.ok(), BODY);
    assert_eq!(
        server.requests(),
        ["GET http://registry.example.test/pkg HTTP/1.1"]
    );
    b.destroy().await.unwrap();
    server.stop(true);
}

/// How many IP sockets this process holds (the bridges' listeners and relayed connections are
/// the only ones in this test process).
fn ip_sockets() -> usize {
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let fds: Vec<i32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.into_iter()
        .filter(|fd| {
            let mut domain: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt writes at most `len` bytes into `domain`.
            let rc = unsafe {
                libc::getsockopt(
                    *fd,
                    libc::SOL_SOCKET,
                    libc::SO_DOMAIN,
                    (&mut domain as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            rc == 0 && (domain == libc::AF_INET || domain == libc::AF_INET6)
        })
        .count()
}

async fn ip_sockets_drop_to(n: usize) -> bool {
    for _ in 0..200 {
        if ip_sockets() == n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_bridges_shuts_the_ports_of_a_live_box() {
    let ws = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let dir = socket_dir();
    let sock = dir.path().join("proxy.sock");
    let server = UnixHttp::start(&sock);
    let before = ip_sockets();
    let b = allowlist_box(ws.path(), scratch.path(), &sock, vec![]).await;
    let ns = b.as_ns().unwrap();
    assert!(ip_sockets() > before, "the host holds no bridge listener");
    let curl = ["curl", "-sS", "--max-time", "20", "http://127.0.0.1:3128/"];
    assert_eq!(run(ns, &curl).await.ok(), BODY);
    b.close_bridges();
    assert!(
        ip_sockets_drop_to(before).await,
        "the host still holds {} IP sockets",
        ip_sockets()
    );
    // Nothing listens on the port any more: refused at once, as in an `off` box.
    let r = run(ns, &curl).await;
    assert_eq!(r.code, Some(7), "{}", r.dump());
    assert!(r.elapsed < Duration::from_secs(10), "{}", r.dump());
    assert_eq!(server.requests().len(), 1);
    b.destroy().await.unwrap();
    server.stop(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroying_the_box_cuts_its_relayed_connections() {
    let ws = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let dir = socket_dir();
    let sock = dir.path().join("proxy.sock");
    let mut server = UnixHttp::start(&sock);
    let before = ip_sockets();
    let b: Arc<Box<dyn SandboxBox>> =
        Arc::new(allowlist_box(ws.path(), scratch.path(), &sock, vec![]).await);
    let held = {
        let b = b.clone();
        tokio::spawn(async move {
            let code = "import socket, time\ns = socket.create_connection(('127.0.0.1', 3128))\ns.sendall(b'GET /hold HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\ntime.sleep(120)";
            let _ = b
                .as_ns()
                .unwrap()
                .exec_argv(
                    vec!["python3".into(), "-c".into(), code.into()],
                    None,
                    Duration::from_secs(120),
                    tokio_util::sync::CancellationToken::new(),
                    mpsc::channel(8).0,
                )
                .await;
        })
    };
    assert_eq!(server.event().await, "held");
    // The listeners and the relayed connection, on the host's side.
    assert!(ip_sockets() >= before + 2, "{} IP sockets", ip_sockets());
    b.destroy().await.unwrap();
    // The handle is still alive, but its listeners and relays are gone (the box's network
    // namespace is not kept alive by them).
    assert!(
        ip_sockets_drop_to(before).await,
        "the destroyed box's bridge sockets are still open: {}",
        ip_sockets()
    );
    assert_eq!(
        server.event().await,
        "closed",
        "the relayed connection outlived its box"
    );
    tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the command's exec did not return after destroy")
        .unwrap();
    server.stop(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridges_are_refused_outside_allowlist_and_bad_bridges_are_named() {
    let ws = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let sock = PathBuf::from("/run/errand/proxy.sock");
    let off = backend(NetMode::Off, 0);
    let err = |r: errand_sandbox::Result<Box<dyn SandboxBox>>| match r {
        Ok(_) => panic!("the box was created"),
        Err(e) => e.to_string(),
    };
    let cases: Vec<(Option<NetMode>, Vec<Bridge>, &str)> = vec![
        (None, bridge(PORT, &sock), "network 'off' has no way out"),
        (
            Some(NetMode::Off),
            bridge(PORT, &sock),
            "network 'off' has no way out",
        ),
        (
            Some(NetMode::Open),
            bridge(PORT, &sock),
            "network 'open' shares the host's network",
        ),
        (
            Some(NetMode::Allowlist),
            bridge(0, &sock),
            "has port 0; give a port from 1 to 65535",
        ),
        (
            Some(NetMode::Allowlist),
            [bridge(PORT, &sock), bridge(PORT, Path::new("/run/b.sock"))].concat(),
            "two bridges use port 3128",
        ),
        (
            Some(NetMode::Allowlist),
            bridge(PORT, Path::new("proxy.sock")),
            "is relative; give an absolute path",
        ),
        (
            Some(NetMode::Allowlist),
            bridge(PORT, &Path::new("/").join("x".repeat(120))),
            "longer than 107 bytes",
        ),
    ];
    for (net, bridges, want) in cases {
        let e = err(off
            .create(spec(ws.path(), scratch.path().join("x"), net, bridges))
            .await);
        assert!(e.contains(want), "{net:?}: {e}");
        if want.starts_with("network") {
            assert!(e.contains("bridges need network mode 'allowlist'"), "{e}");
        }
    }
    // Nothing was started for a refused box.
    assert!(!scratch.path().join("x").exists());

    // An `off` box (the default) still cannot make IP sockets, and says so.
    let b = off
        .create(spec(ws.path(), scratch.path().join("off"), None, vec![]))
        .await
        .unwrap();
    let ns = b.as_ns().unwrap();
    assert_eq!(ns.net(), NetMode::Off);
    assert!(ns.enforced.network.starts_with("off"), "{:?}", ns.enforced);
    let r = py(
        ns,
        r#"
out("inet", tryit(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()))
out("inet6", tryit(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()))
out("udp", tryit(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()))
"#,
    )
    .await;
    r.ok();
    for k in ["inet", "inet6", "udp"] {
        assert_eq!(r.kv()[k], EPERM, "{k}\n{}", r.dump());
    }
    b.destroy().await.unwrap();

    // `allowlist` is a back end default like the others; without bridges the box has
    // loopback only.
    let allow = backend(NetMode::Allowlist, 0);
    assert!(allow.description().contains("network allowlist"));
    let b = allow
        .create(spec(ws.path(), scratch.path().join("a"), None, vec![]))
        .await
        .unwrap();
    let ns = b.as_ns().unwrap();
    assert_eq!(ns.net(), NetMode::Allowlist);
    assert_eq!(
        ns.enforced.network,
        "allowlist (egress proxy only, no bridge: loopback only)"
    );
    let r = py(
        ns,
        "out('inet', tryit(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()))\nout('out', tryit(lambda: socket.create_connection(('192.0.2.1', 80), timeout=5)))",
    )
    .await;
    r.ok();
    assert_eq!(r.kv()["inet"], OK);
    assert_eq!(r.kv()["out"], "ENETUNREACH (Network is unreachable)");
    b.destroy().await.unwrap();
}

async fn wait_pool(b: &NamespaceBackend, n: usize) {
    for _ in 0..400 {
        if b.pooled() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the pool never reached {n} processes");
}

/// What a probe sees of a box's network: IP sockets allowed or not, the network namespace
/// (the host's or its own), and the seccomp filter count.
async fn net_view(ns: &NsBox) -> (String, String) {
    let r = py(
        ns,
        "out('inet', tryit(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()))\nout('netns', os.readlink('/proc/self/ns/net'))",
    )
    .await;
    r.ok();
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    let netns = if host.to_string_lossy() == r.kv()["netns"] {
        "host"
    } else {
        "own"
    };
    (r.kv()["inet"].clone(), netns.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_gives_each_mode_the_right_namespaces_and_filter() {
    let ws = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let dir = socket_dir();
    let sock = dir.path().join("proxy.sock");
    let server = UnixHttp::start(&sock);
    let mut n = 0;
    let mut next = |net: Option<NetMode>, bridges: Vec<Bridge>| {
        n += 1;
        spec(ws.path(), scratch.path().join(n.to_string()), net, bridges)
    };

    // Default `off`: the pool serves off boxes; an allowlist box may take a pooled process
    // (same namespaces) but gets the allowlist filter, and the next off box the off filter.
    let off = backend(NetMode::Off, 1);
    let first = off.create(next(None, vec![])).await.unwrap();
    first.destroy().await.unwrap();
    for (net, bridges, inet) in [
        (None, vec![], EPERM),
        (Some(NetMode::Allowlist), bridge(PORT, &sock), OK),
        (None, vec![], EPERM),
        (Some(NetMode::Off), vec![], EPERM),
    ] {
        wait_pool(&off, 1).await;
        let b = off.create(next(net, bridges.clone())).await.unwrap();
        let ns = b.as_ns().unwrap();
        assert!(ns.from_pool(), "{net:?}: not from the pool");
        assert_eq!(net_view(ns).await, (inet.to_string(), "own".to_string()));
        if !bridges.is_empty() {
            let r = run(
                ns,
                &["curl", "-sS", "--max-time", "10", "http://127.0.0.1:3128/"],
            )
            .await;
            assert_eq!(r.ok(), BODY);
        }
        b.destroy().await.unwrap();
    }

    // Default `allowlist`: an off box from its pool gets the off filter.
    let allow = backend(NetMode::Allowlist, 1);
    allow
        .create(next(None, vec![]))
        .await
        .unwrap()
        .destroy()
        .await
        .unwrap();
    wait_pool(&allow, 1).await;
    let b = allow
        .create(next(Some(NetMode::Off), vec![]))
        .await
        .unwrap();
    let ns = b.as_ns().unwrap();
    assert!(ns.from_pool());
    assert_eq!(net_view(ns).await, (EPERM.to_string(), "own".to_string()));
    b.destroy().await.unwrap();

    // Default `open`: pooled processes share the host's network namespace, so an allowlist
    // box starts a process of its own and leaves the pool to open boxes.
    let open = backend(NetMode::Open, 1);
    open.create(next(None, vec![]))
        .await
        .unwrap()
        .destroy()
        .await
        .unwrap();
    wait_pool(&open, 1).await;
    let b = open
        .create(next(Some(NetMode::Allowlist), bridge(PORT, &sock)))
        .await
        .unwrap();
    let ns = b.as_ns().unwrap();
    assert!(
        !ns.from_pool(),
        "an allowlist box took an open-mode process"
    );
    assert_eq!(net_view(ns).await, (OK.to_string(), "own".to_string()));
    let r = run(
        ns,
        &["curl", "-sS", "--max-time", "10", "http://127.0.0.1:3128/"],
    )
    .await;
    assert_eq!(r.ok(), BODY);
    b.destroy().await.unwrap();
    assert_eq!(open.pooled(), 1, "the open-mode pool was used or dropped");
    let b = open.create(next(None, vec![])).await.unwrap();
    let ns = b.as_ns().unwrap();
    assert!(ns.from_pool());
    assert_eq!(net_view(ns).await, (OK.to_string(), "host".to_string()));
    b.destroy().await.unwrap();
    server.stop(true);
}

#[test]
fn curl_and_python_are_there() {
    // The suite relies on them; say so plainly rather than failing obscurely.
    assert!(have("curl"), "the network tests need curl on the host");
    assert!(
        Path::new("/usr/bin/python3").exists() || Path::new("/usr/local/bin/python3").exists(),
        "the network tests need python3 in the system directories"
    );
}

/// A loopback HTTP server on the host that answers every request with `body`.
fn http_server(body: &'static str) -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(20) {
            let Ok(mut s) = s else { break };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// `errand sandbox run --net allowlist --allow HOST`: the egress proxy by hand. The allowed
/// host is reached by name (the proxy resolves it through the test-only map), another host is
/// denied with the reason on stderr, and a direct connection past the proxy fails.
#[test]
fn sandbox_run_allowlist_reaches_only_the_allowed_host() {
    if !have("curl") {
        return;
    }
    let port = http_server("hello through the proxy\n");
    let ws = tempfile::tempdir().unwrap();
    let script = format!(
        "curl -sS http://web.test:{port}/; \
         curl -sS -o /dev/null -w 'other=%{{http_code}}\\n' http://other.test:{port}/; \
         curl -sS --max-time 5 --noproxy '*' http://127.0.0.1:{port}/ >/dev/null 2>&1; echo direct=$?"
    );
    let out = std::process::Command::new(BIN)
        .env(
            "ERRAND_TEST_RESOLVE",
            "web.test=127.0.0.1,other.test=127.0.0.1",
        )
        .args(["sandbox", "run", "--net", "allowlist"])
        .args([
            "--allow",
            &format!("web.test:{port}"),
            "--allow",
            "127.0.0.1/32",
        ])
        .arg("--workspace")
        .arg(ws.path())
        .args(["--", "sh", "-c", &script])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("hello through the proxy"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("other=403"), "{stdout}\n{stderr}");
    assert!(stdout.contains("direct=7"), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("net ALLOWED GET web.test:{port}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("net DENIED GET other.test:{port}"))
            && stderr.contains("not in the allowlist"),
        "{stderr}"
    );
    // --allow without --net allowlist is a usage error that says what to add.
    let bad = std::process::Command::new(BIN)
        .args(["sandbox", "run", "--allow", "web.test", "--", "true"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("add --net allowlist"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
