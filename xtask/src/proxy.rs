//! The egress proxy (`errand-proxy`) next to a direct connection, all on loopback: throughput
//! of a large transfer through a CONNECT tunnel, and the latency the proxy adds to small HTTP
//! requests (plain HTTP in absolute form on a kept connection, and a CONNECT set-up per
//! request).
//!
//! The proxy runs in its own tokio runtime (2 worker threads, like a worker process), the
//! servers in another (1 thread), the client in the bench's runtime. Direct and proxied
//! samples are interleaved, so that a change in the machine's load affects both alike.

use crate::stats::{Summary, fmt_int};
use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use errand_proxy::{MapResolver, NetRecord, Policy, Proxy, ProxyConfig};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Plan {
    /// Bytes per transfer.
    pub bytes: u64,
    /// Transfers per way and direction.
    pub runs: usize,
    /// Timed requests per way.
    pub requests: usize,
    /// Also measure other relays (tinyproxy, Squid, socat where installed, and a bare splice
    /// relay) on the same transfers.
    pub baselines: bool,
}

/// How a transfer reaches the transfer server.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Way {
    /// Straight to the server.
    Direct,
    /// Through `errand_proxy::Proxy`'s CONNECT tunnel.
    Errand,
    /// Through tinyproxy's CONNECT tunnel (Debian package `tinyproxy-bin`), when installed.
    Tinyproxy,
    /// Through Squid's CONNECT tunnel (Debian package `squid`), when installed.
    Squid,
    /// Through `socat TCP-LISTEN,fork TCP:server` (no HTTP at all), when installed.
    Socat,
    /// Through the bench's own relay: one thread per direction, blocking `splice(2)` through
    /// a pipe, no HTTP, no policy, no event loop: about the least CPU any relay can use.
    BareSplice,
}

impl Way {
    pub fn label(self) -> &'static str {
        match self {
            Way::Direct => "direct",
            Way::Errand => "**errand proxy, CONNECT tunnel**",
            Way::Tinyproxy => "tinyproxy 1.11, CONNECT tunnel",
            Way::Squid => "Squid, CONNECT tunnel",
            Way::Socat => "socat TCP relay (no HTTP)",
            Way::BareSplice => "bare splice relay (no HTTP; the floor)",
        }
    }
}

pub struct WayRuns {
    pub way: Way,
    pub runs: Vec<Duration>,
    /// CPU time of the client and server threads.
    pub endpoints_cpu: Duration,
    /// CPU time of the relay: the proxy's threads, or the external process.
    pub relay_cpu: Duration,
}

pub struct Transfer {
    pub upload: bool,
    /// `Way::Direct` first.
    pub ways: Vec<WayRuns>,
}

/// CPU time used so far by this process's threads: the proxy's runtime (`bench-proxy*`),
/// the bare relay's threads (`bench-relay*`), and the others (client, servers). Read per
/// thread through its CPU-time clock.
#[derive(Clone, Copy, Default)]
struct Cpu {
    proxy: Duration,
    relay: Duration,
    other: Duration,
}

fn cpu_split() -> Cpu {
    let mut cpu = Cpu::default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return cpu;
    };
    for t in tasks.flatten() {
        let Some(tid) = t
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        // The clock of one thread: MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED).
        let clock = ((!tid) << 3) | 6;
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into `ts`; an invalid clock (thread gone) is an error.
        if unsafe { libc::clock_gettime(clock as libc::clockid_t, &mut ts) } != 0 {
            continue;
        }
        let d = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        if comm.starts_with("bench-proxy") {
            cpu.proxy += d;
        } else if comm.starts_with("bench-relay") {
            cpu.relay += d;
        } else {
            cpu.other += d;
        }
    }
    cpu
}

/// CPU time of a process and its waited-for children, from `/proc/PID/stat`.
fn process_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14-17 of the line: 12-15 after the name.
    let ticks: u64 = (12..16)
        .filter_map(|i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// A relay beside the proxy for comparison: another proxy or plain relay as an external
/// process, or the bench's own bare splice relay.
struct Relay {
    way: Way,
    addr: SocketAddr,
    child: Option<std::process::Child>,
    _dir: Option<tempfile::TempDir>,
}

/// CPU time of the bare relay's threads that have ended (each adds its own when it ends).
static BARE_RELAY_NS: AtomicU64 = AtomicU64::new(0);

impl Relay {
    fn cpu(&self, now: &Cpu) -> Duration {
        match &self.child {
            Some(c) => process_cpu(c.id()),
            None => now.relay + Duration::from_nanos(BARE_RELAY_NS.load(Ordering::Relaxed)),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn find_tool(name: &str) -> Option<std::path::PathBuf> {
    ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts an external relay if its tool is installed and starts; otherwise says why not.
async fn external(way: Way, server_port: u16) -> Result<Relay, String> {
    external_inner(way, server_port)
        .await
        .map_err(|e| format!("{}: not measured ({e:#})", way.label()))
}

async fn external_inner(way: Way, server_port: u16) -> Result<Relay> {
    use std::process::{Command, Stdio};
    let tool = match way {
        Way::Tinyproxy => "tinyproxy",
        Way::Squid => "squid",
        Way::Socat => "socat",
        _ => bail!("not an external relay: {way:?}"),
    };
    let Some(bin) = find_tool(tool) else {
        bail!("{tool} is not installed");
    };
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let d = dir.path().display().to_string();
    let mut cmd = Command::new(&bin);
    match way {
        Way::Tinyproxy => {
            let conf = dir.path().join("tinyproxy.conf");
            // No ConnectPort line: CONNECT to any port, as the bench's server port needs.
            std::fs::write(
                &conf,
                format!(
                    "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 100\n\
                     Allow 127.0.0.1\nLogLevel Critical\nPidFile \"{d}/tinyproxy.pid\"\n"
                ),
            )?;
            cmd.arg("-d").arg("-c").arg(&conf);
        }
        Way::Squid => {
            let conf = dir.path().join("squid.conf");
            std::fs::write(
                &conf,
                format!(
                    "http_port 127.0.0.1:{port}\nhttp_access allow all\ncache deny all\n\
                     cache_mem 8 MB\naccess_log none\ncache_store_log none\n\
                     cache_log {d}/cache.log\npid_filename {d}/squid.pid\ncoredump_dir {d}\n\
                     logfile_rotate 0\nshutdown_lifetime 0 seconds\npinger_enable off\n"
                ),
            )?;
            cmd.arg("-N").arg("-f").arg(&conf);
        }
        _ => {
            cmd.arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
                .arg(format!("TCP:127.0.0.1:{server_port}"));
        }
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let relay = Relay {
        way,
        addr: ([127, 0, 0, 1], port).into(),
        child: Some(child),
        _dir: Some(dir),
    };
    let mut relay = relay;
    let limit = Duration::from_secs(20);
    let end = Instant::now() + limit;
    loop {
        if TcpStream::connect(relay.addr).await.is_ok() {
            return Ok(relay);
        }
        if let Some(Ok(Some(status))) = relay.child.as_mut().map(|c| c.try_wait()) {
            bail!(
                "{tool} exited at start ({status}){}",
                if way == Way::Squid {
                    "; Squid cannot switch to its own user inside the bench's private user \
                     namespace"
                } else {
                    ""
                }
            );
        }
        ensure!(
            Instant::now() < end,
            "{tool} did not listen on {} within {limit:?}",
            relay.addr
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bench's own relay: blocking `splice(2)` both ways, a thread per direction.
fn bare_splice(server: SocketAddr) -> Result<Relay> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::Builder::new()
        .name("bench-relay-accept".into())
        .spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                let Ok(u) = std::net::TcpStream::connect(server) else {
                    continue;
                };
                let _ = (c.set_nodelay(true), u.set_nodelay(true));
                let (Ok(c2), Ok(u2)) = (c.try_clone(), u.try_clone()) else {
                    continue;
                };
                let _ = std::thread::Builder::new()
                    .name("bench-relay".into())
                    .spawn(move || splice_one_way(&c, &u));
                let _ = std::thread::Builder::new()
                    .name("bench-relay".into())
                    .spawn(move || splice_one_way(&u2, &c2));
            }
        })?;
    Ok(Relay {
        way: Way::BareSplice,
        addr,
        child: None,
        _dir: None,
    })
}

fn splice_one_way(from: &std::net::TcpStream, to: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors; they are closed below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return;
    }
    // SAFETY: plain calls on descriptors owned here (the pipe) or by the streams.
    unsafe {
        libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 1 << 20);
        loop {
            let n = libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                fds[1],
                std::ptr::null_mut(),
                1 << 20,
                libc::SPLICE_F_MOVE,
            );
            if n <= 0 {
                break;
            }
            let mut left = n;
            while left > 0 {
                let m = libc::splice(
                    fds[0],
                    std::ptr::null_mut(),
                    to.as_raw_fd(),
                    std::ptr::null_mut(),
                    left as usize,
                    libc::SPLICE_F_MOVE,
                );
                if m <= 0 {
                    break;
                }
                left -= m;
            }
            if left > 0 {
                break;
            }
        }
        libc::shutdown(to.as_raw_fd(), libc::SHUT_WR);
        libc::close(fds[0]);
        libc::close(fds[1]);
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) == 0 {
            let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
            BARE_RELAY_NS.fetch_add(ns, Ordering::Relaxed);
        }
    }
}

pub struct Latency {
    pub what: &'static str,
    pub direct: Summary,
    pub proxied: Summary,
}

pub struct ProxyResult {
    pub bytes: u64,
    pub transfers: Vec<Transfer>,
    pub latency: Vec<Latency>,
    pub records: usize,
    pub requests: usize,
    /// Baselines that could not be measured, and why.
    pub skipped: Vec<String>,
}

const CHUNK: usize = 256 * 1024;
const SMALL_BODY: &[u8] = b"ok: a small response body of about one hundred bytes, like a registry's metadata answer....\n";

/// A runtime of its own, with `threads` worker threads named `name`.
fn runtime(name: &str, threads: usize) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()?)
}

/// The transfer server: reads `u8 mode` (0 = send, 1 = receive) and a `u64` length, then
/// sends that many bytes and closes, or reads them and answers one byte.
pub(crate) async fn transfer_server(l: TcpListener) {
    let buf = Arc::new(vec![0x5au8; CHUNK]);
    while let Ok((mut io, _)) = l.accept().await {
        let _ = io.set_nodelay(true);
        let buf = buf.clone();
        tokio::spawn(async move {
            let mut hdr = [0u8; 9];
            if io.read_exact(&mut hdr).await.is_err() {
                return;
            }
            let mut left = u64::from_le_bytes(hdr[1..].try_into().unwrap_or([0; 8]));
            if hdr[0] == 0 {
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                let _ = io.shutdown().await;
            } else {
                let mut rbuf = vec![0u8; CHUNK];
                while left > 0 {
                    match io.read(&mut rbuf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => left = left.saturating_sub(n as u64),
                    }
                }
                let _ = io.write_all(&[1]).await;
            }
        });
    }
}

async fn http_server(l: TcpListener) {
    while let Ok((io, _)) = l.accept().await {
        let _ = io.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req: hyper::Request<Incoming>| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                    SMALL_BODY,
                ))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), svc)
                .await;
        });
    }
}

/// Opens a tunnel to `target` through the proxy.
async fn tunnel(proxy: SocketAddr, target: &str) -> Result<TcpStream> {
    let mut s = TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await?;
    // Read the response head byte by byte: nothing after it may be consumed.
    let mut head = Vec::with_capacity(128);
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 {
            bail!("the proxy closed the connection during CONNECT");
        }
        head.push(b[0]);
        ensure!(head.len() < 8192, "CONNECT response head too long");
    }
    ensure!(
        head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"),
        "CONNECT {target} refused: {}",
        String::from_utf8_lossy(&head)
    );
    Ok(s)
}

/// One transfer over `s`: the time from the request to the last byte (or the ack).
async fn transfer(mut s: TcpStream, bytes: u64, upload: bool) -> Result<Duration> {
    let mut hdr = [0u8; 9];
    hdr[0] = u8::from(upload);
    hdr[1..].copy_from_slice(&bytes.to_le_bytes());
    let mut buf = vec![0xa5u8; CHUNK];
    let start = Instant::now();
    s.write_all(&hdr).await?;
    if upload {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            s.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack).await?;
    } else {
        let mut got = 0u64;
        loop {
            match s.read(&mut buf).await? {
                0 => break,
                n => got += n as u64,
            }
        }
        ensure!(got == bytes, "received {got} bytes, expected {bytes}");
    }
    Ok(start.elapsed())
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn http_client(s: TcpStream) -> Result<Sender> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One GET on `sender`; the time until the whole body is read.
async fn get(sender: &mut Sender, uri: &str, host: &str) -> Result<Duration> {
    let req = hyper::Request::builder()
        .uri(uri)
        .header(hyper::header::HOST, host)
        .body(Empty::new())?;
    let start = Instant::now();
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    ensure!(resp.status() == 200, "GET {uri}: {}", resp.status());
    let body = resp.into_body().collect().await?.to_bytes();
    let t = start.elapsed();
    ensure!(body.len() == SMALL_BODY.len(), "short body");
    Ok(t)
}

pub async fn run(plan: &Plan) -> Result<ProxyResult> {
    let servers = runtime("bench-servers", 1)?;
    let proxy_rt = runtime("bench-proxy", 2)?;
    let result = measure(plan, &servers, &proxy_rt).await;
    servers.shutdown_background();
    proxy_rt.shutdown_background();
    result
}

async fn measure(
    plan: &Plan,
    servers: &tokio::runtime::Runtime,
    proxy_rt: &tokio::runtime::Runtime,
) -> Result<ProxyResult> {
    let (tl, hl) = (listener()?, listener()?);
    let (tport, hport) = (tl.local_addr()?.port(), hl.local_addr()?.port());
    // Listeners register with the runtime they are converted in: the servers'.
    servers.spawn(async move {
        if let Ok(l) = TcpListener::from_std(tl) {
            transfer_server(l).await
        }
    });
    servers.spawn(async move {
        if let Ok(l) = TcpListener::from_std(hl) {
            http_server(l).await
        }
    });

    let records = Arc::new(AtomicUsize::new(0));
    let tunnel_down = Arc::new(AtomicU64::new(0));
    let tunnel_up = Arc::new(AtomicU64::new(0));
    let on_event: Arc<dyn Fn(NetRecord) + Send + Sync> = {
        let (records, down, up) = (records.clone(), tunnel_down.clone(), tunnel_up.clone());
        Arc::new(move |r: NetRecord| {
            records.fetch_add(1, Ordering::Relaxed);
            if r.host == "src.test" {
                down.fetch_add(r.bytes_down, Ordering::Relaxed);
                up.fetch_add(r.bytes_up, Ordering::Relaxed);
            }
        })
    };
    let policy = Policy::parse(
        &["src.test:*".into(), "web.test:*".into(), "127.0.0.1".into()],
        &[],
    )?;
    let resolver = MapResolver::from_spec("src.test=127.0.0.1,web.test=127.0.0.1")?;
    let cfg = ProxyConfig::new(Arc::new(policy), Arc::new(resolver), on_event);
    let pl = listener()?;
    let handle = proxy_rt
        .spawn(async move { TcpListener::from_std(pl).map(|l| Proxy::serve(l, cfg)) })
        .await??;
    let proxy = handle.local_addr().context("the proxy has no address")?;
    let direct_t: SocketAddr = ([127, 0, 0, 1], tport).into();
    let direct_h: SocketAddr = ([127, 0, 0, 1], hport).into();

    // Throughput: every way in turn within each run, so that load changes hit all alike.
    let (mut relays, mut skipped) = (Vec::new(), Vec::new());
    for way in [Way::Tinyproxy, Way::Squid, Way::Socat] {
        if plan.baselines {
            match external(way, tport).await {
                Ok(r) => relays.push(r),
                Err(why) => {
                    eprintln!("bench:   {why}");
                    skipped.push(why);
                }
            }
        }
    }
    if plan.baselines {
        relays.push(bare_splice(direct_t)?);
    }
    let mut ways = vec![Way::Direct, Way::Errand];
    ways.extend(relays.iter().map(|r| r.way));
    let connect = |way: Way| {
        let relay = relays.iter().find(|r| r.way == way).map(|r| r.addr);
        async move {
            let s = match (way, relay) {
                (Way::Direct, _) => connect_nodelay(direct_t).await?,
                (Way::Errand, _) => tunnel(proxy, &format!("src.test:{tport}")).await?,
                (Way::Tinyproxy | Way::Squid, Some(a)) => {
                    tunnel(a, &format!("127.0.0.1:{tport}")).await?
                }
                (_, Some(a)) => connect_nodelay(a).await?,
                (w, None) => bail!("no relay for {w:?}"),
            };
            Ok::<_, anyhow::Error>(s)
        }
    };
    let mut transfers = Vec::new();
    for upload in [false, true] {
        let mut t = Transfer {
            upload,
            ways: ways
                .iter()
                .map(|&way| WayRuns {
                    way,
                    runs: Vec::new(),
                    endpoints_cpu: Duration::ZERO,
                    relay_cpu: Duration::ZERO,
                })
                .collect(),
        };
        let warm = (plan.bytes / 16).max(1 << 20);
        for &way in &ways {
            transfer(connect(way).await?, warm, upload).await?;
        }
        for run in 0..plan.runs {
            let mut line = Vec::new();
            for w in t.ways.iter_mut() {
                let relay = relays.iter().find(|r| r.way == w.way);
                let c0 = cpu_split();
                let r0 = relay.map(|r| r.cpu(&c0));
                let s = connect(w.way).await?;
                let d = transfer(s, plan.bytes, upload).await?;
                // Relay threads and processes of the transfer end (and are reaped) shortly
                // after its last byte; their CPU is read after that.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let c1 = cpu_split();
                let r1 = relay.map(|r| r.cpu(&c1));
                w.endpoints_cpu += c1.other.saturating_sub(c0.other);
                w.relay_cpu += match (r0, r1) {
                    (Some(a), Some(b)) => b.saturating_sub(a),
                    _ => c1.proxy.saturating_sub(c0.proxy),
                };
                w.runs.push(d);
                line.push(format!("{:?} {:.0}", w.way, mib_s(plan.bytes, d)));
            }
            eprintln!(
                "bench:   {} run {} (MiB/s): {}",
                if upload { "upload" } else { "download" },
                run + 1,
                line.join(", ")
            );
        }
        transfers.push(t);
    }
    drop(relays);

    // Latency: a kept connection, plain HTTP (absolute form through the proxy).
    let warmup = (plan.requests / 20).max(5);
    let mut direct = http_client(connect_nodelay(direct_h).await?).await?;
    let mut via = http_client(connect_nodelay(proxy).await?).await?;
    let path = "/small";
    let abs = format!("http://web.test:{hport}{path}");
    let host = format!("web.test:{hport}");
    let (mut d_ms, mut p_ms) = (Vec::new(), Vec::new());
    for i in 0..warmup + plan.requests {
        let d = get(&mut direct, path, &host).await?;
        let p = get(&mut via, &abs, &host).await?;
        if i >= warmup {
            d_ms.push(d);
            p_ms.push(p);
        }
    }
    let mut latency = vec![Latency {
        what: "GET on a kept connection (plain HTTP, absolute form)",
        direct: Summary::new(&d_ms),
        proxied: Summary::new(&p_ms),
    }];

    // Latency: a new connection per request; through the proxy a CONNECT tunnel first.
    let (mut d_ms, mut p_ms) = (Vec::new(), Vec::new());
    for i in 0..warmup + plan.requests {
        let start = Instant::now();
        let mut c = http_client(connect_nodelay(direct_h).await?).await?;
        get(&mut c, path, &host).await?;
        let d = start.elapsed();
        drop(c);
        let start = Instant::now();
        let s = tunnel(proxy, &host).await?;
        let mut c = http_client(s).await?;
        get(&mut c, path, &host).await?;
        let p = start.elapsed();
        drop(c);
        if i >= warmup {
            d_ms.push(d);
            p_ms.push(p);
        }
    }
    latency.push(Latency {
        what: "new connection + GET (through the proxy: CONNECT, then GET in the tunnel)",
        direct: Summary::new(&d_ms),
        proxied: Summary::new(&p_ms),
    });
    drop((direct, via));

    handle.shutdown().await;
    let expected_down = plan.bytes * plan.runs as u64 + (plan.bytes / 16).max(1 << 20);
    ensure!(
        tunnel_down.load(Ordering::Relaxed) >= expected_down
            && tunnel_up.load(Ordering::Relaxed) >= expected_down,
        "the proxy's records do not add up to the bytes transferred"
    );
    Ok(ProxyResult {
        bytes: plan.bytes,
        transfers,
        latency,
        records: records.load(Ordering::Relaxed),
        requests: plan.requests,
        skipped,
    })
}

fn listener() -> Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.set_nonblocking(true)?;
    Ok(l)
}

async fn connect_nodelay(a: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect(a).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

pub fn report(r: &ProxyResult) -> String {
    let mut s = format!(
        "### 9. Egress proxy: goals ≥ 80 % of direct throughput through CONNECT, < 1 ms added at p50\n\n\
         `errand_proxy::Proxy` on a loopback TCP listener, in its own tokio runtime (2 worker \
         threads); the servers in another runtime (1 thread); the client in the bench's. The \
         policy allows the test names, which a `MapResolver` maps to 127.0.0.1, so every \
         request goes through the full check (name, resolution, address guard) and produces a \
         record ({} records in all). Direct and proxied samples alternate.\n\n\
         **Throughput**: {} per transfer over one TCP connection (256 KiB reads and writes), \
         {} runs per way after a warm-up transfer each, every way in turn within a run: the \
         median, and the best run (noise from other work only ever slows a run down). Beside \
         the errand proxy, as baselines on the same server and client: tinyproxy and Squid \
         (CONNECT tunnels, Debian's packages, minimal loopback configurations), socat (a plain \
         TCP relay, `fork`, default buffer) and the bench's bare relay (a thread per direction, \
         blocking `splice(2)`, no HTTP: about the least CPU a user-space relay can spend). \
         CPU: the time used per GiB moved, read from each thread's CPU clock for the bench's \
         threads and from `/proc/PID/stat` for the external relays (loopback TCP's receive \
         work is charged to the sending side).\n\n",
        fmt_int(r.records as f64),
        fmt_bytes(r.bytes),
        r.transfers
            .first()
            .map_or(0, |t| t.ways.first().map_or(0, |w| w.runs.len())),
    );
    s += "| direction | way | median (MiB/s) | of direct | best (MiB/s) | of direct | CPU per GiB: client + server, relay (ms) | goal ≥ 80 % (median) |\n";
    s += "|---|---|---:|---:|---:|---:|---:|---|\n";
    let mib = r.bytes as f64 / (1024.0 * 1024.0);
    for t in &r.transfers {
        let Some(direct) = t.ways.iter().find(|w| w.way == Way::Direct) else {
            continue;
        };
        let d = Summary::new(&direct.runs);
        // Durations in ms: the median run, and the fastest.
        let (dm, db) = (mib / (d.median() / 1e3), mib / (d.min() / 1e3));
        for w in &t.ways {
            let p = Summary::new(&w.runs);
            let (pm, pb) = (mib / (p.median() / 1e3), mib / (p.min() / 1e3));
            let gib = (r.bytes as f64 * w.runs.len() as f64) / (1u64 << 30) as f64;
            let per_gib = |d: Duration| d.as_secs_f64() * 1e3 / gib;
            let goal = match w.way {
                Way::Errand if pm / dm >= 0.8 => "met",
                Way::Errand => "**not met**",
                _ => "",
            };
            s += &format!(
                "| {} | {} | {} | {:.0} % | {} | {:.0} % | {:.0} + {:.0} | {} |\n",
                if t.upload { "upload" } else { "download" },
                w.way.label(),
                fmt_int(pm),
                pm / dm * 100.0,
                fmt_int(pb),
                pb / db * 100.0,
                per_gib(w.endpoints_cpu),
                per_gib(w.relay_cpu),
                goal,
            );
        }
    }
    for why in &r.skipped {
        s += &format!("\n- {why}");
    }
    if !r.skipped.is_empty() {
        s += "\n";
    }
    s += &format!(
        "\n**Latency**: {} timed requests per way (after {} warm-up ones), a ~100-byte response \
         from a hyper server.\n\n",
        fmt_int(r.requests as f64),
        (r.requests / 20).max(5)
    );
    s += "| request | direct p50 (ms) | proxied p50 (ms) | added p50 (ms) | direct p99 (ms) | proxied p99 (ms) | added p99 (ms) | goal < 1 ms added at p50 |\n";
    s += "|---|---:|---:|---:|---:|---:|---:|---|\n";
    for l in &r.latency {
        let add50 = l.proxied.pct(50.0) - l.direct.pct(50.0);
        let add99 = l.proxied.pct(99.0) - l.direct.pct(99.0);
        s += &format!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} |\n",
            l.what,
            l.direct.pct(50.0),
            l.proxied.pct(50.0),
            add50,
            l.direct.pct(99.0),
            l.proxied.pct(99.0),
            add99,
            if add50 < 1.0 { "met" } else { "**not met**" }
        );
    }
    s
}

fn fmt_bytes(b: u64) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{} GiB", b >> 30)
    } else {
        format!("{} MiB", b >> 20)
    }
}
