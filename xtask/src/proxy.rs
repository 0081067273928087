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
}

pub struct Transfer {
    pub upload: bool,
    pub direct: Vec<Duration>,
    pub proxied: Vec<Duration>,
    /// CPU time of the direct transfers (client and server threads).
    pub direct_cpu: Duration,
    /// CPU time of the proxied transfers: client and server threads, and the proxy's.
    pub proxied_cpu: Duration,
    pub proxy_cpu: Duration,
}

/// CPU time used so far by this process's threads, by whether their name starts with
/// `bench-proxy` (the proxy's runtime) or not. Read per thread through its CPU-time clock.
fn cpu_split() -> (Duration, Duration) {
    let (mut proxy, mut other) = (Duration::ZERO, Duration::ZERO);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (proxy, other);
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
            proxy += d;
        } else {
            other += d;
        }
    }
    (proxy, other)
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
async fn transfer_server(l: TcpListener) {
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
        head.starts_with(b"HTTP/1.1 200"),
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

    // Throughput.
    let mut transfers = Vec::new();
    for upload in [false, true] {
        let mut t = Transfer {
            upload,
            direct: Vec::new(),
            proxied: Vec::new(),
            direct_cpu: Duration::ZERO,
            proxied_cpu: Duration::ZERO,
            proxy_cpu: Duration::ZERO,
        };
        let warm = (plan.bytes / 16).max(1 << 20);
        let s = TcpStream::connect(direct_t).await?;
        s.set_nodelay(true)?;
        transfer(s, warm, upload).await?;
        transfer(
            tunnel(proxy, &format!("src.test:{tport}")).await?,
            warm,
            upload,
        )
        .await?;
        for run in 0..plan.runs {
            let (p0, o0) = cpu_split();
            let s = TcpStream::connect(direct_t).await?;
            s.set_nodelay(true)?;
            let d = transfer(s, plan.bytes, upload).await?;
            let (p1, o1) = cpu_split();
            let s = tunnel(proxy, &format!("src.test:{tport}")).await?;
            let p = transfer(s, plan.bytes, upload).await?;
            let (p2, o2) = cpu_split();
            t.direct_cpu += (o1 + p1).saturating_sub(o0 + p0);
            t.proxied_cpu += o2.saturating_sub(o1);
            t.proxy_cpu += p2.saturating_sub(p1);
            eprintln!(
                "bench:   {} run {}: direct {:.0} MiB/s, through the tunnel {:.0} MiB/s \
                 (CPU: direct {:.0} ms, proxied {:.0} ms + proxy {:.0} ms)",
                if upload { "upload" } else { "download" },
                run + 1,
                mib_s(plan.bytes, d),
                mib_s(plan.bytes, p),
                ((o1 + p1).saturating_sub(o0 + p0)).as_secs_f64() * 1e3,
                o2.saturating_sub(o1).as_secs_f64() * 1e3,
                p2.saturating_sub(p1).as_secs_f64() * 1e3,
            );
            t.direct.push(d);
            t.proxied.push(p);
        }
        transfers.push(t);
    }

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
         {} runs per way after a warm-up transfer each: the median, and the best run (noise from \
         other work only ever slows a run down). CPU: the time the threads used per GiB moved, \
         read from each thread's CPU clock (loopback TCP's receive work is charged to the \
         sending thread).\n\n",
        fmt_int(r.records as f64),
        fmt_bytes(r.bytes),
        r.transfers.first().map_or(0, |t| t.direct.len()),
    );
    s += "| direction | direct, median (MiB/s) | tunnel, median (MiB/s) | ratio | direct, best (MiB/s) | tunnel, best (MiB/s) | ratio | goal ≥ 80 % (median) | CPU per GiB, direct (ms) | CPU per GiB through the tunnel: client + server, proxy (ms) |\n";
    s += "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|\n";
    let mib = r.bytes as f64 / (1024.0 * 1024.0);
    for t in &r.transfers {
        let (d, p) = (Summary::new(&t.direct), Summary::new(&t.proxied));
        // Durations in ms: the median run, and the fastest.
        let (dm, pm) = (mib / (d.median() / 1e3), mib / (p.median() / 1e3));
        let (db, pb) = (mib / (d.min() / 1e3), mib / (p.min() / 1e3));
        let gib = (r.bytes as f64 * t.direct.len() as f64) / (1u64 << 30) as f64;
        let per_gib = |d: Duration| d.as_secs_f64() * 1e3 / gib;
        s += &format!(
            "| {} | {} | {} | {:.0} % | {} | {} | {:.0} % | {} | {:.0} | {:.0} + {:.0} |\n",
            if t.upload {
                "upload (client → server)"
            } else {
                "download (server → client)"
            },
            fmt_int(dm),
            fmt_int(pm),
            pm / dm * 100.0,
            fmt_int(db),
            fmt_int(pb),
            pb / db * 100.0,
            if pm / dm >= 0.8 { "met" } else { "**not met**" },
            per_gib(t.direct_cpu),
            per_gib(t.proxied_cpu),
            per_gib(t.proxy_cpu),
        );
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
