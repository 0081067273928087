//! Bridge benchmarks: what the relay between a box's loopback and a host Unix socket costs.
//! A 1 GiB transfer from inside an `allowlist` box through the bridge into a sink on a host
//! Unix socket, next to the same transfer from the host straight into the socket (and into
//! the same server over the host's TCP loopback); and small request/response round trips (a
//! new connection each, and on one open connection) through the bridge and straight.

use crate::stats::Summary;
use anyhow::{Context, Result, bail};
use errand_sandbox::ns::{NamespaceBackend, NetMode, NsOptions};
use errand_sandbox::{BoxSpec, Bridge, SandboxBackend, SandboxBox, Stream};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

const PORT: u16 = 3128;
const MIB: u64 = 1 << 20;
/// One client run may take this long (1 GiB at 10 MB/s would still fit).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);
const MSG: usize = 64;

/// The client, run with the same Python inside the box (TCP to the bridge) and on the host
/// (the Unix socket itself). The first byte it sends picks the server's mode: `S` sink (reads
/// to the end, answers the byte count), `E` echo (answers every 64-byte message).
const CLIENT: &str = r#"
import socket, sys, time
kind, addr, what, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def conn():
    if kind == "tcp":
        s = socket.create_connection(("127.0.0.1", int(addr)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(addr)
    return s
def recv_exact(s, k):
    got = b""
    while len(got) < k:
        d = s.recv(k - len(got))
        if not d:
            raise SystemExit("connection closed early")
        got += d
    return got
msg = b"x" * 64
if what == "bulk":
    buf = bytes(1 << 20)
    s = conn()
    t = time.perf_counter()
    s.sendall(b"S")
    for _ in range(n):
        s.sendall(buf)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        d = s.recv(64)
        if not d:
            break
        got += d
    print("bytes=%s secs=%.6f" % (got.decode().strip(), time.perf_counter() - t))
elif what == "connect":
    lat = []
    for _ in range(n):
        t = time.perf_counter_ns()
        s = conn()
        s.sendall(b"E" + msg)
        recv_exact(s, 64)
        s.close()
        lat.append(time.perf_counter_ns() - t)
    print("lat=" + ",".join(map(str, lat)))
else:
    s = conn()
    s.sendall(b"E")
    lat = []
    for _ in range(n):
        t = time.perf_counter_ns()
        s.sendall(msg)
        recv_exact(s, 64)
        lat.append(time.perf_counter_ns() - t)
    print("lat=" + ",".join(map(str, lat)))
"#;

/// A download client for the egress path: straight to the server (`-` as the proxy port), or
/// through the egress proxy on the box's loopback with `CONNECT`. Speaks the proxy bench's
/// transfer protocol (mode byte 0 = send me, then the length).
const DL_CLIENT: &str = r#"
import socket, struct, sys, time
proxy, target, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
host, port = target.rsplit(":", 1)
t = time.perf_counter()
if proxy == "-":
    s = socket.create_connection((host, int(port)))
else:
    s = socket.create_connection(("127.0.0.1", int(proxy)))
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        d = s.recv(1)
        if not d:
            raise SystemExit("the proxy closed the connection")
        head += d
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit("CONNECT refused: %r" % head)
s.sendall(b"\x00" + struct.pack("<Q", n))
buf = bytearray(1 << 20)
view = memoryview(buf)
got = 0
while True:
    k = s.recv_into(view)
    if not k:
        break
    got += k
print("bytes=%d secs=%.6f" % (got, time.perf_counter() - t))
"#;

pub struct Plan {
    /// GiB-sized transfers per way.
    pub transfers: usize,
    pub transfer_mib: u64,
    /// Round trips per way.
    pub round_trips: usize,
}

pub struct BridgeResult {
    plan_mib: u64,
    /// MB/s of each transfer.
    bridge_mbps: Vec<f64>,
    direct_mbps: Vec<f64>,
    host_tcp_mbps: Vec<f64>,
    connect_bridge: Summary,
    connect_direct: Summary,
    connect_tcp: Summary,
    ping_bridge: Summary,
    ping_direct: Summary,
    ping_tcp: Summary,
    enforced: String,
    python: String,
    /// MB/s of each download through the egress path, by way.
    egress: Vec<(&'static str, Vec<f64>)>,
}

/// The sink/echo server on a host Unix socket.
async fn server(listener: UnixListener, stop: CancellationToken) {
    loop {
        let s = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        tokio::spawn(serve(s));
    }
}

/// The same server on the host's TCP loopback, for comparison.
async fn tcp_server(listener: TcpListener, stop: CancellationToken) {
    loop {
        let s = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(serve(s));
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut mode = [0u8; 1];
    if s.read_exact(&mut mode).await.is_err() {
        return;
    }
    if mode[0] == b'S' {
        let mut buf = vec![0u8; 256 * 1024];
        let mut total: u64 = 0;
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        let _ = s.write_all(format!("{total}\n").as_bytes()).await;
        let _ = s.shutdown().await;
        return;
    }
    let mut msg = [0u8; MSG];
    while s.read_exact(&mut msg).await.is_ok() {
        if s.write_all(&msg).await.is_err() {
            return;
        }
    }
}

fn parse_bulk(out: &str, want: u64) -> Result<f64> {
    let kv: std::collections::HashMap<&str, &str> = out
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    let bytes: u64 = kv
        .get("bytes")
        .and_then(|b| b.parse().ok())
        .with_context(|| format!("no byte count in {out:?}"))?;
    let secs: f64 = kv
        .get("secs")
        .and_then(|b| b.parse().ok())
        .with_context(|| format!("no duration in {out:?}"))?;
    if bytes != want {
        bail!("the sink got {bytes} bytes, not {want}");
    }
    Ok(bytes as f64 / 1e6 / secs)
}

fn parse_lat(out: &str) -> Result<Summary> {
    let list = out
        .lines()
        .find_map(|l| l.strip_prefix("lat="))
        .with_context(|| format!("no latencies in {out:?}"))?;
    let ms: Vec<f64> = list
        .split(',')
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|ns| ns / 1e6)
        .collect();
    Ok(Summary::from_ms(&ms))
}

/// Runs the client in the box; returns its stdout.
async fn in_box(b: &dyn SandboxBox, python: &str, args: &[String]) -> Result<String> {
    in_box_run(b, python, CLIENT, args).await
}

async fn in_box_run(
    b: &dyn SandboxBox,
    python: &str,
    script: &str,
    args: &[String],
) -> Result<String> {
    let ns = b.as_ns().context("not a namespace box")?;
    let mut argv = vec![python.to_string(), "-c".into(), script.into()];
    argv.extend(args.iter().cloned());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<errand_sandbox::OutputChunk>(64);
    let collect = tokio::spawn(async move {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(c) = rx.recv().await {
            match c.stream {
                Stream::Stdout => out.extend(c.data),
                Stream::Stderr => err.extend(c.data),
            }
        }
        (out, err)
    });
    let r = ns
        .exec_argv(argv, None, CLIENT_TIMEOUT, CancellationToken::new(), tx)
        .await
        .context("running the client in the box")?;
    let (out, err) = collect.await.unwrap_or_default();
    if !r.success() {
        bail!(
            "the client in the box failed ({r:?}): {}",
            String::from_utf8_lossy(&err)
        );
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Runs the client on the host; returns its stdout.
async fn on_host(python: &str, args: &[String]) -> Result<String> {
    on_host_run(python, CLIENT, args).await
}

async fn on_host_run(python: &str, script: &str, args: &[String]) -> Result<String> {
    let mut c = tokio::process::Command::new(python);
    c.arg("-c").arg(script).args(args).kill_on_drop(true);
    let o = tokio::time::timeout(CLIENT_TIMEOUT, c.output())
        .await
        .context("the host client did not finish in time")?
        .context("running the host client")?;
    if !o.status.success() {
        bail!(
            "the host client failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The system Python both sides run (the box sees only the system directories).
fn python() -> Result<String> {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if Path::new(p).is_file() {
            return Ok(p.into());
        }
    }
    bail!("the bridge bench needs python3 in /usr/bin or /usr/local/bin")
}

pub async fn run(bin: &Path, plan: &Plan) -> Result<BridgeResult> {
    let python = python()?;
    let tmp = tempfile::Builder::new()
        .prefix("errand-bench-bridge-")
        .tempdir()?;
    let root = tmp.path().canonicalize()?;
    let ws = root.join("ws");
    std::fs::create_dir_all(&ws)?;
    let sock: PathBuf = root.join("sink.sock");
    let listener = UnixListener::bind(&sock).context("binding the sink's Unix socket")?;
    let stop = CancellationToken::new();
    let srv = tokio::spawn(server(listener, stop.clone()));
    let tcp_listener = TcpListener::bind("127.0.0.1:0").await?;
    let tcp_port = tcp_listener.local_addr()?.port();
    let tcp_srv = tokio::spawn(tcp_server(tcp_listener, stop.clone()));

    let backend = NamespaceBackend::new(NsOptions {
        exe: Some(bin.to_path_buf()),
        net: NetMode::Allowlist,
        pool: 0,
        ..Default::default()
    })?;
    let spec = BoxSpec {
        workspace: ws.clone(),
        scratch: root.join("scratch"),
        ro_binds: vec![],
        rootfs: None,
        quota_dir: None,
        env: vec![],
        net: Some(NetMode::Allowlist),
        bridges: vec![Bridge {
            port: PORT,
            socket: sock.clone(),
            handoff: false,
        }],
        ..Default::default()
    };
    let b = backend.create(spec).await.context("starting the box")?;
    let enforced = b.as_ns().map(|n| n.enforced.summary()).unwrap_or_default();
    let result = async {
        let tcp = |what: &str, n: u64| {
            vec![
                "tcp".to_string(),
                PORT.to_string(),
                what.to_string(),
                n.to_string(),
            ]
        };
        let host_tcp = |what: &str, n: u64| {
            vec![
                "tcp".to_string(),
                tcp_port.to_string(),
                what.to_string(),
                n.to_string(),
            ]
        };
        let unix = |what: &str, n: u64| {
            vec![
                "unix".to_string(),
                sock.display().to_string(),
                what.to_string(),
                n.to_string(),
            ]
        };
        let want = plan.transfer_mib * MIB;
        let (mut bridge_mbps, mut direct_mbps, mut host_tcp_mbps) =
            (Vec::new(), Vec::new(), Vec::new());
        // Ways take turns, so that a change of load hits both.
        for i in 0..plan.transfers {
            eprintln!("bench:   transfer {}/{}", i + 1, plan.transfers);
            let out = in_box(b.as_ref(), &python, &tcp("bulk", plan.transfer_mib)).await?;
            bridge_mbps.push(parse_bulk(&out, want)?);
            let out = on_host(&python, &unix("bulk", plan.transfer_mib)).await?;
            direct_mbps.push(parse_bulk(&out, want)?);
            let out = on_host(&python, &host_tcp("bulk", plan.transfer_mib)).await?;
            host_tcp_mbps.push(parse_bulk(&out, want)?);
        }
        let n = plan.round_trips as u64;
        eprintln!("bench:   round trips");
        let connect_bridge = parse_lat(&in_box(b.as_ref(), &python, &tcp("connect", n)).await?)?;
        let connect_direct = parse_lat(&on_host(&python, &unix("connect", n)).await?)?;
        let connect_tcp = parse_lat(&on_host(&python, &host_tcp("connect", n)).await?)?;
        let ping_bridge = parse_lat(&in_box(b.as_ref(), &python, &tcp("ping", n)).await?)?;
        let ping_direct = parse_lat(&on_host(&python, &unix("ping", n)).await?)?;
        let ping_tcp = parse_lat(&on_host(&python, &host_tcp("ping", n)).await?)?;
        anyhow::Ok(BridgeResult {
            plan_mib: plan.transfer_mib,
            bridge_mbps,
            direct_mbps,
            host_tcp_mbps,
            connect_bridge,
            connect_direct,
            connect_tcp,
            ping_bridge,
            ping_direct,
            ping_tcp,
            enforced,
            python: python.clone(),
            egress: Vec::new(),
        })
    }
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(30), b.destroy()).await;
    let result = match result {
        Ok(mut r) => {
            r.egress = egress_path(&backend, &root, &python, plan).await?;
            Ok(r)
        }
        Err(e) => Err(e),
    };
    stop.cancel();
    let _ = srv.await;
    let _ = tcp_srv.await;
    result
}

/// Downloads from a host server into a box: from an `open` box straight to the server, and
/// from `allowlist` boxes through the egress proxy's `CONNECT` tunnel, with the bridge handing
/// the box's connection to the proxy (as the worker does) or relaying its bytes (as before).
async fn egress_path(
    backend: &NamespaceBackend,
    root: &Path,
    python: &str,
    plan: &Plan,
) -> Result<Vec<(&'static str, Vec<f64>)>> {
    use errand_proxy::{MapResolver, Policy, Proxy, ProxyConfig};
    use std::sync::Arc;
    eprintln!("bench:   downloads through the egress proxy");
    let server = TcpListener::bind("127.0.0.1:0").await?;
    let sport = server.local_addr()?.port();
    let srv = tokio::spawn(crate::proxy::transfer_server(server));
    let policy = Policy::parse(&["src.test:*".into(), "127.0.0.1".into()], &[])?;
    let resolver = MapResolver::from_spec("src.test=127.0.0.1")?;
    let cfg = ProxyConfig::new(Arc::new(policy), Arc::new(resolver), Arc::new(|_| {}));
    let (hand_sock, relay_sock) = (root.join("egress-h.sock"), root.join("egress-r.sock"));
    let hand_proxy = Proxy::serve_unix(&hand_sock, cfg.clone())?;
    let relay_proxy = Proxy::serve_unix(&relay_sock, cfg)?;
    let mk = |name: &str, net: NetMode, bridge: Option<(&Path, bool)>| {
        let ws = root.join(format!("ws-{name}"));
        let spec = BoxSpec {
            workspace: ws.clone(),
            scratch: root.join(format!("scratch-{name}")),
            net: Some(net),
            env: vec![],
            bridges: bridge
                .map(|(sock, handoff)| {
                    vec![Bridge {
                        port: PORT,
                        socket: sock.to_path_buf(),
                        handoff,
                    }]
                })
                .unwrap_or_default(),
            ..Default::default()
        };
        (ws, spec)
    };
    let mut boxes = Vec::new();
    for (name, net, bridge) in [
        ("open", NetMode::Open, None),
        (
            "hand",
            NetMode::Allowlist,
            Some((hand_sock.as_path(), true)),
        ),
        (
            "relay",
            NetMode::Allowlist,
            Some((relay_sock.as_path(), false)),
        ),
    ] {
        let (ws, spec) = mk(name, net, bridge);
        std::fs::create_dir_all(&ws)?;
        boxes.push(
            backend
                .create(spec)
                .await
                .with_context(|| format!("starting the {name} box"))?,
        );
    }
    let bytes = plan.transfer_mib * MIB;
    let target_direct = format!("127.0.0.1:{sport}");
    let target_proxy = format!("src.test:{sport}");
    let mut ways: Vec<(&'static str, Vec<f64>)> = vec![
        ("host → server (no box)", Vec::new()),
        ("`open` box → server", Vec::new()),
        (
            "**`allowlist` box → bridge, handed over → errand proxy → server**",
            Vec::new(),
        ),
        (
            "`allowlist` box → bridge relay → Unix socket → errand proxy → server",
            Vec::new(),
        ),
    ];
    let result = async {
        for i in 0..plan.transfers {
            eprintln!("bench:     download {}/{}", i + 1, plan.transfers);
            let args = |proxy: &str, target: &str| {
                vec![proxy.to_string(), target.to_string(), bytes.to_string()]
            };
            let out = on_host_run(python, DL_CLIENT, &args("-", &target_direct)).await?;
            ways[0].1.push(parse_bulk(&out, bytes)?);
            let out = in_box_run(
                boxes[0].as_ref(),
                python,
                DL_CLIENT,
                &args("-", &target_direct),
            )
            .await?;
            ways[1].1.push(parse_bulk(&out, bytes)?);
            let port = PORT.to_string();
            for (w, b) in [(2, 1), (3, 2)] {
                let out = in_box_run(
                    boxes[b].as_ref(),
                    python,
                    DL_CLIENT,
                    &args(&port, &target_proxy),
                )
                .await?;
                ways[w].1.push(parse_bulk(&out, bytes)?);
            }
        }
        anyhow::Ok(())
    }
    .await;
    for b in boxes {
        let _ = tokio::time::timeout(Duration::from_secs(30), b.destroy()).await;
    }
    hand_proxy.shutdown().await;
    relay_proxy.shutdown().await;
    srv.abort();
    result.map(|_| ways)
}

fn mbps(v: &[f64]) -> String {
    let s = Summary::from_ms(v);
    format!("{:.0} ({:.0}–{:.0})", s.median(), s.min(), s.max())
}

/// Microseconds from a summary in ms.
fn us(v: f64) -> String {
    format!("{:.0}", v * 1e3)
}

pub fn report(r: &BridgeResult) -> String {
    let mut s = format!(
        "### Bridge: a box's loopback relayed to a host Unix socket\n\n\
         An `allowlist` box with a bridge on 127.0.0.1:{PORT} to a sink on a host Unix socket. \
         The client is the same Python (`{}`) in the box (TCP to the bridge) and on the host \
         (the Unix socket itself, or the same server on the host's TCP loopback); it times \
         itself.\n\n\
         Box: {}\n\n\
         | transfer of {} MiB (1 MiB writes) | MB/s, median (min–max) of {} |\n| --- | ---: |\n",
        r.python,
        r.enforced,
        r.plan_mib,
        r.bridge_mbps.len()
    );
    for (label, v, bold) in [
        ("box → bridge → Unix socket sink", &r.bridge_mbps, true),
        ("host → Unix socket sink directly", &r.direct_mbps, false),
        (
            "host → TCP loopback → the same sink",
            &r.host_tcp_mbps,
            false,
        ),
    ] {
        let v = mbps(v);
        let v = if bold { format!("**{v}**") } else { v };
        s += &format!("| {label} | {v} |\n");
    }
    s += &format!(
        "\n| 64-byte request, 64-byte answer ({} round trips) | p50 µs | p99 µs | max µs |\n| --- | ---: | ---: | ---: |\n",
        r.connect_bridge.values().len()
    );
    for (label, v) in [
        (
            "new connection each: box → bridge → Unix socket",
            &r.connect_bridge,
        ),
        ("new connection each: host → Unix socket", &r.connect_direct),
        ("new connection each: host → TCP loopback", &r.connect_tcp),
        (
            "one open connection: box → bridge → Unix socket",
            &r.ping_bridge,
        ),
        ("one open connection: host → Unix socket", &r.ping_direct),
        ("one open connection: host → TCP loopback", &r.ping_tcp),
    ] {
        s += &format!(
            "| {label} | {} | {} | {} |\n",
            us(v.pct(50.0)),
            us(v.pct(99.0)),
            us(v.max())
        );
    }
    s += &format!(
        "\nAdded by the bridge (against the Unix socket directly): p50 {} µs, p99 {} µs per new \
         connection; p50 {} µs, p99 {} µs per round trip on an open connection.\n",
        us(r.connect_bridge.pct(50.0) - r.connect_direct.pct(50.0)),
        us(r.connect_bridge.pct(99.0) - r.connect_direct.pct(99.0)),
        us(r.ping_bridge.pct(50.0) - r.ping_direct.pct(50.0)),
        us(r.ping_bridge.pct(99.0) - r.ping_direct.pct(99.0)),
    );
    if let Some((_, open)) = r.egress.get(1) {
        let open = Summary::from_ms(open).median();
        s += &format!(
            "\n**Downloads into a box through the egress proxy** ({} MiB each, the proxy bench's \
             transfer server on the host's loopback, Python's `recv_into` with a 1 MiB buffer as \
             the client; MB/s, median (min–max) of {}; ratio of the medians to the `open` box):\n\n\
             | way | MB/s | of the `open` box |\n| --- | ---: | ---: |\n",
            r.plan_mib,
            r.egress[0].1.len()
        );
        for (label, v) in &r.egress {
            let m = Summary::from_ms(v).median();
            s += &format!("| {label} | {} | {:.0} % |\n", mbps(v), m / open * 100.0);
        }
    }
    s
}
