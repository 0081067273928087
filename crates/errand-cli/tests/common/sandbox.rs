//! Helpers for the `errand sandbox run` suites: run the real binary on a temp workspace, run
//! Python probes that print `name=ERRNO (text)` lines, and scan the host's /proc.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const BIN: &str = env!("CARGO_BIN_EXE_errand");

pub const EPERM: &str = "EPERM (Operation not permitted)";
pub const EACCES: &str = "EACCES (Permission denied)";
pub const ENOENT: &str = "ENOENT (No such file or directory)";
pub const EROFS: &str = "EROFS (Read-only file system)";
pub const ESRCH: &str = "ESRCH (No such process)";
pub const EINVAL: &str = "EINVAL (Invalid argument)";
pub const ENOSYS: &str = "ENOSYS (Function not implemented)";
pub const EBADF: &str = "EBADF (Bad file descriptor)";
pub const EAGAIN: &str = "EAGAIN (Resource temporarily unavailable)";
pub const EFBIG: &str = "EFBIG (File too large)";
pub const OK: &str = "OK";

/// What a box run produced.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Out {
    /// Every `key=value` line of stdout.
    pub fn kv(&self) -> BTreeMap<String, String> {
        self.stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }

    /// The value a probe printed as `key=value`; panics with the whole output if absent.
    pub fn get(&self, key: &str) -> String {
        self.kv()
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("probe {key:?} printed nothing\n{}", self.dump()))
    }

    /// Asserts that probe `key` printed exactly `want`.
    pub fn expect(&self, key: &str, want: &str) {
        let got = self.get(key);
        assert_eq!(got, want, "probe {key:?}\n{}", self.dump());
    }

    pub fn expect_code(&self, code: i32) {
        assert_eq!(self.code, Some(code), "exit code\n{}", self.dump());
    }

    pub fn dump(&self) -> String {
        format!(
            "exit: {:?} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// `errand sandbox run --workspace WS OPTS -- CMD…`, with a 30 s timeout unless OPTS sets one.
pub fn sandbox_cmd(ws: &Path, opts: &[&str], cmd: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["sandbox", "run", "--workspace"]).arg(ws);
    if !opts.contains(&"--timeout") {
        c.args(["--timeout", "30s"]);
    }
    c.args(opts)
        .arg("--")
        .args(cmd)
        .env("ERRAND_LOG", "warn")
        .stdin(Stdio::null());
    c
}

pub fn output(mut c: Command) -> Out {
    let start = Instant::now();
    let o = c.output().expect("run errand sandbox run");
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

pub fn run(ws: &Path, opts: &[&str], cmd: &[&str]) -> Out {
    output(sandbox_cmd(ws, opts, cmd))
}

pub fn sh(ws: &Path, opts: &[&str], script: &str) -> Out {
    run(ws, opts, &["sh", "-c", script])
}

/// Runs a Python probe (with [`prelude`] in front) in the box.
pub fn py(ws: &Path, opts: &[&str], code: &str) -> Out {
    let src = format!("{}\n{code}", prelude());
    run(ws, opts, &["python3", "-c", &src])
}

/// A fresh workspace plus a Python probe in it, default limits.
pub fn probe(code: &str) -> Out {
    let ws = tempfile::tempdir().unwrap();
    py(ws.path(), &[], code)
}

/// Python helpers: `sc(nr, *args)` makes a raw syscall and returns `OK` or `ENAME (text)`;
/// `tryit(fn)` does the same for a callable raising `OSError`; `out(k, v)` prints `k=v`.
/// Syscall numbers come from the `libc` crate, so they match the architecture.
pub fn prelude() -> String {
    let mut s = String::from(
        r#"import ctypes, errno, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def _arg(a):
    if a is None: return ctypes.c_void_p(None)
    if isinstance(a, bytes): return ctypes.c_char_p(a)
    if isinstance(a, int): return ctypes.c_long(a)
    return a
def ename(e):
    return "%s (%s)" % (errno.errorcode.get(e, str(e)), os.strerror(e))
def sc(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[_arg(a) for a in args])
    return "OK" if r != -1 else ename(ctypes.get_errno())
def tryit(fn):
    try:
        fn()
        return "OK"
    except OSError as e:
        return ename(e.errno) if e.errno else repr(e)
def out(k, v):
    print("%s=%s" % (k, v), flush=True)
"#,
    );
    let nrs: &[(&str, i64)] = &[
        ("ptrace", libc::SYS_ptrace),
        ("process_vm_readv", libc::SYS_process_vm_readv),
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("pivot_root", libc::SYS_pivot_root),
        ("fsopen", libc::SYS_fsopen),
        ("open_tree", libc::SYS_open_tree),
        ("move_mount", libc::SYS_move_mount),
        ("mount_setattr", libc::SYS_mount_setattr),
        ("kexec_load", libc::SYS_kexec_load),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("bpf", libc::SYS_bpf),
        ("keyctl", libc::SYS_keyctl),
        ("add_key", libc::SYS_add_key),
        ("request_key", libc::SYS_request_key),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("delete_module", libc::SYS_delete_module),
        ("swapon", libc::SYS_swapon),
        ("swapoff", libc::SYS_swapoff),
        ("reboot", libc::SYS_reboot),
        ("setns", libc::SYS_setns),
        ("unshare", libc::SYS_unshare),
        ("clone", libc::SYS_clone),
        ("clone3", libc::SYS_clone3),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("io_uring_enter", libc::SYS_io_uring_enter),
        ("io_uring_register", libc::SYS_io_uring_register),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("name_to_handle_at", libc::SYS_name_to_handle_at),
        ("pidfd_open", libc::SYS_pidfd_open),
        ("pidfd_getfd", libc::SYS_pidfd_getfd),
        ("syslog", libc::SYS_syslog),
        ("mknodat", libc::SYS_mknodat),
    ];
    for (name, nr) in nrs {
        s.push_str(&format!("SYS_{name} = {nr}\n"));
    }
    s
}

/// A string unique to this test run, for markers.
pub fn unique() -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}{:09}", std::process::id(), n % 1_000_000_000)
}

/// A `sleep` duration no other process uses: `PREFIX` followed by unique digits.
pub fn unique_sleep(prefix: &str) -> String {
    format!("{prefix}{}", unique())
}

/// Host processes whose argv is exactly `sleep ARG` (after `exec`, as nohup/setsid do).
pub fn host_sleeps(arg: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if argv.len() == 2 && argv[0].ends_with("sleep") && argv[1] == arg {
            found.push(format!("{name}: {}", argv.join(" ")));
        }
    }
    found
}

/// Waits up to `limit` for `f` to hold.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Asserts that no `sleep ARG` is left on the host within ~2 s (the kernel reaps).
pub fn assert_none_left(args: &[&str]) {
    for a in args {
        let gone = eventually(Duration::from_secs(3), || host_sleeps(a).is_empty());
        assert!(gone, "survivors of the box: {:?}", host_sleeps(a));
    }
}

/// Asserts that every `sleep ARG` shows up on the host (proves the /proc scan sees box
/// processes before we rely on it seeing none).
pub fn assert_all_running(args: &[&str]) {
    for a in args {
        let seen = eventually(Duration::from_secs(10), || !host_sleeps(a).is_empty());
        assert!(seen, "`sleep {a}` never appeared in the host's /proc");
    }
}

/// Waits for a child with a deadline; kills it if it overruns.
pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("errand sandbox run did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn read_all(r: Option<impl Read>) -> String {
    let mut s = String::new();
    if let Some(mut r) = r {
        let _ = r.read_to_string(&mut s);
    }
    s
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
