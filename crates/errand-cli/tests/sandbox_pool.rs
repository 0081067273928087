//! The box pool (`NsOptions::pool`): a box whose process came from the pool is isolated like
//! a box started from scratch, and pooled processes never outlive their owner.
//!
//! Linux only; the machine must be able to start a box (`errand sandbox check`).

#[path = "common/sandbox.rs"]
mod sandbox;

use errand_sandbox::ns::{NamespaceBackend, NsBox, NsOptions};
use errand_sandbox::{BoxSpec, SandboxBackend, Stream};
use sandbox::{BIN, EPERM, EROFS, eventually, prelude};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn backend(pool: usize) -> NamespaceBackend {
    NamespaceBackend::new(NsOptions {
        exe: Some(BIN.into()),
        pool,
        ..Default::default()
    })
    .unwrap()
}

fn spec(ws: &Path, scratch: PathBuf) -> BoxSpec {
    BoxSpec {
        workspace: ws.to_path_buf(),
        scratch,
        ro_binds: vec![],
        rootfs: None,
        quota_dir: None,
        env: vec![],
        ..Default::default()
    }
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

/// Runs `argv` in the box; returns its exit code and stdout (stderr is appended on failure).
async fn run(b: &NsBox, argv: &[&str]) -> (Option<i32>, String) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let res = b
        .exec_argv(
            argv.iter().map(|s| s.to_string()).collect(),
            None,
            Duration::from_secs(30),
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
    let mut text = String::from_utf8_lossy(&out).into_owned();
    if res.exit_code != Some(0) {
        text.push_str(&String::from_utf8_lossy(&err));
    }
    (res.exit_code, text)
}

/// What a command in the box sees of its own isolation, as `key=value` lines. Values that
/// differ between any two boxes (namespace ids, cgroup names) are normalised or compared to
/// the host's by the caller.
const PROBE: &str = r#"
import re, resource
for f in ("uid_map", "gid_map", "setgroups"):
    out(f, " ".join(open("/proc/self/" + f).read().split()))
st = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
for k in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
          "NoNewPrivs", "Seccomp", "Seccomp_filters"):
    out("status_" + k, " ".join(st.get(k, "").split()))
for n in ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup"):
    out("ns_" + n, os.readlink("/proc/self/ns/" + n))
out("hostname", socket.gethostname())
out("pid", os.getpid())
out("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
mounts = []
for line in open("/proc/self/mountinfo"):
    f = line.split()
    sep = f.index("-")
    mounts.append(" ".join([f[4], f[5]] + f[sep + 1:]))
out("mounts", "|".join(mounts))
out("root", sorted(os.listdir("/")))
out("dev", sorted(os.listdir("/dev")))
out("netdev", sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]))
for r in ("RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_CORE"):
    out(r, resource.getrlimit(getattr(resource, r)))
out("cgroup", sorted(re.sub(r"box-\d+-\d+", "box-N", l)
                     for l in open("/proc/self/cgroup").read().splitlines()))
out("fds", sorted(os.listdir("/proc/self/fd")))
out("env", sorted(os.environ))
out("cwd", os.getcwd())
out("sys_mount", sc(SYS_mount, b"none", b"/tmp", b"tmpfs", 0, None))
out("sys_unshare_user", sc(SYS_unshare, 0x10000000))
out("sys_ptrace", sc(SYS_ptrace, 0, 0, 0, 0))
out("sys_keyctl", sc(SYS_keyctl, 0))
out("sys_bpf", sc(SYS_bpf, 0, None, 0))
out("sys_clone3", sc(SYS_clone3, None, 0))
out("sys_io_uring", sc(SYS_io_uring_setup, 1, None))
out("sys_pidfd_getfd", sc(SYS_pidfd_getfd, 1, 3, 0))
out("sock_inet", tryit(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()))
out("sock_packet", tryit(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()))
out("sock_unix", tryit(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()))
out("write_usr", tryit(lambda: open("/usr/errand-probe", "w").close()))
out("write_etc", tryit(lambda: open("/etc/errand-probe", "w").close()))
out("write_root", tryit(lambda: os.mkdir("/errand-probe")))
out("write_proc", tryit(lambda: open("/proc/sys/kernel/hostname", "w").write("x")))
out("shadow", repr(open("/etc/shadow").read()))
out("write_tmp", tryit(lambda: open("/tmp/errand-probe", "w").close()))
out("write_home", tryit(lambda: open(os.environ["HOME"] + "/errand-probe", "w").close()))
out("write_ws", tryit(lambda: open("/workspace/errand-probe", "w").close()))
os.unlink("/workspace/errand-probe")
out("pid1_root", tryit(lambda: os.listdir("/proc/1/root/")))
out("pid1_environ", tryit(lambda: open("/proc/1/environ").read()))
"#;

fn kv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The probe's view, with namespace ids replaced by whether they are the host's.
async fn isolation(b: &NsBox) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let src = format!("{}\n{PROBE}", prelude());
    let (code, text) = run(b, &["python3", "-c", &src]).await;
    assert_eq!(code, Some(0), "probe failed:\n{text}");
    let raw = kv(&text);
    let mut view = raw.clone();
    for (k, v) in view.iter_mut() {
        if let Some(ns) = k.strip_prefix("ns_") {
            let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
            *v = if host.to_string_lossy() == *v {
                "host".into()
            } else {
                "own".into()
            };
        }
    }
    (view, raw)
}

/// The v1/v2 box cgroups `pid` is in, as host directories.
fn box_cgroups(pid: u32) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctl, path) = (p.next()?, p.next()?, p.next()?);
            if !path.contains("/errand/box-") {
                return None;
            }
            let ctl = ctl.split(',').find(|c| *c == "memory" || *c == "pids");
            Some(match ctl {
                Some(c) => PathBuf::from(format!("/sys/fs/cgroup/{c}{path}")),
                None => PathBuf::from(format!("/sys/fs/cgroup{path}")),
            })
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state is `Z`.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_box_is_isolated_like_a_fresh_one() {
    let ws = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let backend = backend(1);
    let fresh = backend
        .create(spec(ws.path(), scratch.path().join("a")))
        .await
        .unwrap();
    let fresh_ns = fresh.as_ns().unwrap();
    assert!(
        !fresh_ns.from_pool(),
        "the first box cannot come from the pool"
    );
    let (a, a_raw) = isolation(fresh_ns).await;
    let a_cgroups = box_cgroups(fresh_ns.pid().unwrap());

    wait_pool(&backend, 1).await;
    let pooled = backend
        .create(spec(ws.path(), scratch.path().join("b")))
        .await
        .unwrap();
    let pooled_ns = pooled.as_ns().unwrap();
    assert!(
        pooled_ns.from_pool(),
        "the second box should come from the pool"
    );
    let (b, b_raw) = isolation(pooled_ns).await;
    let b_cgroups = box_cgroups(pooled_ns.pid().unwrap());
    let without_cgroups = |e: &errand_sandbox::ns::Enforced| {
        let mut e = e.clone();
        e.cgroups.clear();
        e
    };
    assert_eq!(
        without_cgroups(&pooled_ns.enforced),
        without_cgroups(&fresh_ns.enforced)
    );
    assert_eq!(pooled_ns.enforced.cgroups.len(), b_cgroups.len());
    // Both are alive: namespace ids cannot have been reused.
    assert!(a_cgroups.iter().all(|d| !b_cgroups.contains(d)));
    pooled.destroy().await.unwrap();
    fresh.destroy().await.unwrap();

    for (k, v) in &a {
        assert_eq!(
            b.get(k),
            Some(v),
            "{k} differs between a fresh and a pooled box"
        );
    }
    assert_eq!(a.len(), b.len(), "fresh: {a:#?}\npooled: {b:#?}");
    // Each box has namespaces of its own, not shared with the host or with each other.
    for ns in ["user", "mnt", "pid", "net", "ipc", "uts"] {
        let k = format!("ns_{ns}");
        assert_eq!(b[&k], "own", "{k}");
        assert_ne!(a_raw[&k], b_raw[&k], "{k} is shared between two boxes");
    }
    // The probe really ran under the box's restrictions.
    assert_eq!(b["status_NoNewPrivs"], "1");
    assert_eq!(b["status_Seccomp"], "2");
    assert_eq!(b["sys_mount"], EPERM);
    assert_eq!(b["sys_unshare_user"], EPERM);
    assert_eq!(b["sock_inet"], EPERM);
    assert_eq!(b["write_usr"], EROFS);
    assert_eq!(b["shadow"], "''");
    assert_eq!(b["write_ws"], "OK");
    // Both boxes were put in cgroups of the same kinds (when the host delegates any), and
    // the commands in them are inside those cgroups.
    assert_eq!(a_cgroups.len(), b_cgroups.len());
    if !b_cgroups.is_empty() {
        assert!(b["cgroup"].contains("box-N"), "{}", b["cgroup"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pooled_process_is_replaced_not_used() {
    let ws = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let backend = backend(1);
    let first = backend
        .create(spec(ws.path(), scratch.path().join("a")))
        .await
        .unwrap();
    first.destroy().await.unwrap();
    wait_pool(&backend, 1).await;
    for pid in backend.pool_pids() {
        // SAFETY: signals a process this test's back end started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let b = backend
        .create(spec(ws.path(), scratch.path().join("b")))
        .await
        .unwrap();
    let ns = b.as_ns().unwrap();
    assert!(!ns.from_pool());
    let (code, out) = run(ns, &["sh", "-c", "echo ok"]).await;
    assert_eq!((code, out.as_str()), (Some(0), "ok\n"));
    b.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_back_end_kills_its_pool_and_frees_its_cgroups() {
    let ws = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let backend = backend(2);
    let b = backend
        .create(spec(ws.path(), scratch.path().join("a")))
        .await
        .unwrap();
    b.destroy().await.unwrap();
    wait_pool(&backend, 2).await;
    let pids = backend.pool_pids();
    assert_eq!(pids.len(), 2);
    let cgroups: Vec<PathBuf> = pids.iter().flat_map(|p| box_cgroups(*p)).collect();
    assert!(pids.iter().all(|p| alive(*p)));
    drop(backend);
    for p in &pids {
        assert!(!alive(*p), "pooled process {p} outlived its back end");
    }
    // Their empty cgroups went to the process-wide cgroup pool, which a process releases
    // before it exits.
    errand_sandbox::ns::release_pooled_cgroups();
    for d in &cgroups {
        assert!(!d.exists(), "{} is left behind", d.display());
    }
}

/// Not a test on its own: with `ERRAND_POOL_OWNER` set, fills a pool, prints its processes'
/// pids and waits to be killed (see the next test).
#[test]
fn pool_owner_helper() {
    if std::env::var_os("ERRAND_POOL_OWNER").is_none() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ws = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let backend = backend(2);
        let b = backend
            .create(spec(ws.path(), scratch.path().join("a")))
            .await
            .unwrap();
        b.destroy().await.unwrap();
        wait_pool(&backend, 2).await;
        let pids: Vec<String> = backend.pool_pids().iter().map(|p| p.to_string()).collect();
        println!("POOL_PIDS={}", pids.join(","));
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

#[test]
fn pooled_processes_die_with_their_owner() {
    let mut owner = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "pool_owner_helper",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("ERRAND_POOL_OWNER", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let owner_pid = owner.id();
    let stdout = owner.stdout.take().unwrap();
    let mut pids: Vec<u32> = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // libtest prints `test NAME ... ` before the test's own output, on the same line.
        if let Some((_, list)) = line.split_once("POOL_PIDS=") {
            pids = list.split(',').filter_map(|p| p.parse().ok()).collect();
            break;
        }
    }
    assert_eq!(pids.len(), 2, "the owner did not report its pool");
    let cgroups: Vec<PathBuf> = pids.iter().flat_map(|p| box_cgroups(*p)).collect();
    for p in &pids {
        assert!(alive(*p));
        let exe = std::fs::read_link(format!("/proc/{p}/exe")).unwrap();
        assert_eq!(exe, Path::new(BIN).canonicalize().unwrap());
    }
    owner.kill().unwrap();
    owner.wait().unwrap();
    let gone = eventually(Duration::from_secs(3), || !pids.iter().any(|p| alive(*p)));
    assert!(
        gone,
        "pooled processes {pids:?} outlived their killed owner"
    );
    // The owner could not clean up; its cgroups are empty, and the sweep at the next start
    // removes them.
    errand_sandbox::ns::sweep_stale_cgroups();
    for d in &cgroups {
        assert!(
            !d.exists(),
            "{} of dead owner {owner_pid} is left behind",
            d.display()
        );
    }
}

/// Not a test on its own: run by the next test in a user and mount namespace of its own.
/// Fills a pool, then mounts a tmpfs on the workspace and reads it from a pooled box.
#[test]
fn pool_mount_helper() {
    let Some(ws) = std::env::var_os("ERRAND_POOL_MOUNT") else {
        return;
    };
    let ws = PathBuf::from(ws);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let scratch = tempfile::tempdir().unwrap();
        let backend = backend(1);
        let b = backend
            .create(spec(&ws, scratch.path().join("a")))
            .await
            .unwrap();
        b.destroy().await.unwrap();
        wait_pool(&backend, 1).await;
        // Mounted after the pooled process started.
        let target = std::ffi::CString::new(ws.as_os_str().as_encoded_bytes()).unwrap();
        let tmpfs = std::ffi::CString::new("tmpfs").unwrap();
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                tmpfs.as_ptr(),
                target.as_ptr(),
                tmpfs.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "mount: {}", std::io::Error::last_os_error());
        std::fs::write(ws.join("marker"), "mounted-later").unwrap();
        let b = backend
            .create(spec(&ws, scratch.path().join("b")))
            .await
            .unwrap();
        let ns = b.as_ns().unwrap();
        assert!(ns.from_pool());
        let (_, out) = run(ns, &["cat", "/workspace/marker"]).await;
        println!("SEEN={}", out.trim());
        b.destroy().await.unwrap();
        // SAFETY: as above.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    });
}

#[test]
fn a_pooled_box_sees_mounts_made_after_it_was_pooled() {
    if !sandbox::have("unshare") {
        eprintln!("skipped: no unshare (util-linux)");
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "pool_mount_helper",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("ERRAND_POOL_MOUNT", ws.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("SEEN=mounted-later"),
        "the pooled box did not see the workspace mount:\n{stdout}\n{stderr}"
    );
}
