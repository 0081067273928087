//! Real work runs inside `errand sandbox run`: a Python package's tests, a Makefile project,
//! git, a C build, and files that come back to the host as the host user's.

#[path = "common/sandbox.rs"]
mod sandbox;

use sandbox::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn a_python_package_passes_its_unittest_suite() {
    let ws = tempfile::tempdir().unwrap();
    write(
        ws.path(),
        "calc/__init__.py",
        "from .ops import add, mean\n__all__ = ['add', 'mean']\n",
    );
    write(
        ws.path(),
        "calc/ops.py",
        "def add(a, b):\n    return a + b\n\n\ndef mean(xs):\n    if not xs:\n        raise ValueError('empty')\n    return sum(xs) / len(xs)\n",
    );
    write(ws.path(), "tests/__init__.py", "");
    write(
        ws.path(),
        "tests/test_ops.py",
        r#"import os
import tempfile
import unittest

from calc import add, mean


class OpsTest(unittest.TestCase):
    def test_add(self):
        self.assertEqual(add(2, 3), 5)

    def test_mean(self):
        self.assertEqual(mean([1, 2, 3, 4]), 2.5)

    def test_mean_empty(self):
        with self.assertRaises(ValueError):
            mean([])

    def test_scratch_files(self):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "x")
            with open(p, "w") as f:
                f.write("ok")
            self.assertEqual(open(p).read(), "ok")


if __name__ == "__main__":
    unittest.main()
"#,
    );
    let o = run(
        ws.path(),
        &[],
        &[
            "python3", "-m", "unittest", "discover", "-v", "-s", "tests", "-t", ".",
        ],
    );
    o.expect_code(0);
    assert!(o.stderr.contains("Ran 4 tests"), "{}", o.dump());
    assert!(o.stderr.contains("\nOK"), "{}", o.dump());
    // Bytecode caches were written into the workspace, on the host.
    assert!(ws.path().join("calc/__pycache__").is_dir());

    // A failing test fails the command with unittest's exit code.
    write(
        ws.path(),
        "tests/test_fail.py",
        "import unittest\n\nclass F(unittest.TestCase):\n    def test_no(self):\n        self.assertEqual(1, 2)\n",
    );
    let f = run(
        ws.path(),
        &[],
        &[
            "python3", "-m", "unittest", "discover", "-s", "tests", "-t", ".",
        ],
    );
    f.expect_code(1);
    assert!(f.stderr.contains("FAILED (failures=1)"), "{}", f.dump());
}

#[test]
fn a_shell_project_builds_and_tests_with_make() {
    let ws = tempfile::tempdir().unwrap();
    write(
        ws.path(),
        "Makefile",
        "all: build/greeting.txt\n\nbuild/greeting.txt: src/name.txt\n\tmkdir -p build\n\tprintf 'hello, %s\\n' \"$$(cat src/name.txt)\" > $@\n\ntest: all\n\tsh tests/run.sh\n\nclean:\n\trm -rf build\n\n.PHONY: all test clean\n",
    );
    write(ws.path(), "src/name.txt", "box\n");
    write(
        ws.path(),
        "tests/run.sh",
        "set -eu\nfail=0\ncheck() { if [ \"$2\" = \"$3\" ]; then echo \"ok - $1\"; else echo \"not ok - $1: '$2' != '$3'\"; fail=1; fi; }\ncheck greeting \"$(cat build/greeting.txt)\" 'hello, box'\ncheck cwd \"$(pwd)\" /workspace\ncheck home \"$HOME\" /home/agent\nexit $fail\n",
    );
    let o = run(ws.path(), &[], &["make", "test"]);
    o.expect_code(0);
    for line in ["ok - greeting", "ok - cwd", "ok - home"] {
        assert!(o.stdout.contains(line), "{}", o.dump());
    }
    assert_eq!(
        std::fs::read_to_string(ws.path().join("build/greeting.txt")).unwrap(),
        "hello, box\n"
    );
    // Make's incremental build works across boxes (timestamps survive).
    let again = run(ws.path(), &[], &["make"]);
    again.expect_code(0);
    assert!(
        again.stdout.contains("Nothing to be done for 'all'"),
        "{}",
        again.dump()
    );
}

#[test]
fn git_works_in_the_workspace() {
    let ws = tempfile::tempdir().unwrap();
    write(ws.path(), "README.md", "# boxed\n");
    let o = sh(
        ws.path(),
        &[],
        "set -e
git init -q -b main .
git add README.md
git -c user.name=Box -c user.email=box@example.invalid -c commit.gpgsign=false commit -q -m 'first from the box'
echo more >> README.md
git -c user.name=Box -c user.email=box@example.invalid -c commit.gpgsign=false commit -q -am 'second from the box'
git log --format='%an|%s'
git status --porcelain
echo status-done",
    );
    o.expect_code(0);
    assert_eq!(
        o.stdout,
        "Box|second from the box\nBox|first from the box\nstatus-done\n",
        "{}",
        o.dump()
    );
    // The host sees the same repository.
    let host = std::process::Command::new("git")
        .args(["-c", "safe.directory=*", "log", "--format=%s"])
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert!(host.status.success(), "{:?}", host);
    assert_eq!(
        String::from_utf8_lossy(&host.stdout),
        "second from the box\nfirst from the box\n"
    );
}

#[test]
fn a_c_program_builds_and_runs() {
    if !Path::new("/usr/bin/gcc").exists() && !Path::new("/usr/bin/cc").exists() {
        eprintln!("skipped: no C compiler on this host");
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    write(
        ws.path(),
        "hello.c",
        r#"#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long sum = 0;
    for (int i = 1; i < argc; i++) sum += strtol(argv[i], NULL, 10);
    char host[64];
    gethostname(host, sizeof host);
    printf("sum=%ld host=%s pid1=%d\n", sum, host, getpid() > 1);
    return sum == 6 ? 0 : 1;
}
"#,
    );
    let o = sh(
        ws.path(),
        &[],
        "cc -O2 -Wall -Werror -o hello hello.c && ./hello 1 2 3",
    );
    o.expect_code(0);
    assert_eq!(o.stdout, "sum=6 host=errand-box pid1=1\n", "{}", o.dump());
    assert!(ws.path().join("hello").is_file());
}

#[test]
fn files_made_in_the_box_belong_to_the_host_user() {
    let ws = tempfile::tempdir().unwrap();
    let marker = unique();
    let o = sh(
        ws.path(),
        &[],
        &format!(
            "set -e; mkdir -p out/deep; echo {marker} > out/deep/f.txt; ln -s deep/f.txt out/link; \
             chmod 0640 out/deep/f.txt; touch /tmp/not-shared; id -u"
        ),
    );
    o.expect_code(0);
    // The box's root is the host user (mapped to 0 inside).
    assert_eq!(o.stdout.trim(), "0", "{}", o.dump());
    let host_uid = std::fs::metadata(ws.path()).unwrap().uid();
    // SAFETY: getuid/getgid have no preconditions.
    let (me, my_gid) = unsafe { (libc::getuid(), libc::getgid()) };
    assert_eq!(host_uid, me);
    for rel in ["out", "out/deep", "out/deep/f.txt"] {
        let m = std::fs::metadata(ws.path().join(rel)).unwrap();
        assert_eq!(m.uid(), me, "{rel}");
        assert_eq!(m.gid(), my_gid, "{rel}");
    }
    let f = ws.path().join("out/deep/f.txt");
    assert_eq!(std::fs::read_to_string(&f).unwrap().trim(), marker);
    assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o640);
    assert_eq!(
        std::fs::read_link(ws.path().join("out/link")).unwrap(),
        Path::new("deep/f.txt")
    );
    // And the host can change and delete them.
    std::fs::write(&f, "host edit").unwrap();
    std::fs::remove_dir_all(ws.path().join("out")).unwrap();
}

#[test]
fn loopback_works_inside_a_net_off_box() {
    // Servers and clients inside the same box talk over its own loopback (Unix sockets; IP
    // sockets are off): a test suite that starts a local service still runs.
    let o = probe(
        r#"
import threading
path = "/tmp/svc.sock"
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(1)
def serve():
    c, _ = srv.accept()
    c.sendall(c.recv(100).upper())
    c.close()
t = threading.Thread(target=serve)
t.start()
cl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
cl.connect(path)
cl.sendall(b"ping")
out("reply", cl.recv(100).decode())
t.join()
"#,
    );
    o.expect_code(0);
    o.expect("reply", "PING");
}

#[test]
fn exit_codes_and_output_pass_through() {
    let ws = tempfile::tempdir().unwrap();
    let o = sh(
        ws.path(),
        &[],
        "echo to-stdout; echo to-stderr >&2; exit 42",
    );
    o.expect_code(42);
    assert_eq!(o.stdout, "to-stdout\n");
    assert_eq!(o.stderr, "to-stderr\n");
    let k = sh(ws.path(), &[], "kill -TERM $$");
    // 128 + SIGTERM.
    k.expect_code(143);
}

/// An environment's `rootfs` replaces the host's system directories: the box sees the rootfs'
/// /etc (with its marker) and not the host's.
#[test]
fn a_rootfs_folder_replaces_the_host_system() {
    let ws = tempfile::tempdir().unwrap();
    let rootfs = tempfile::tempdir().unwrap();
    let r = rootfs.path();
    std::fs::create_dir_all(r.join("usr/lib")).unwrap();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    // Hard links: a cheap copy of what bash, env and cat need.
    for d in ["bin", "lib64", "lib/x86_64-linux-gnu"] {
        let src = Path::new("/usr").join(d);
        if src.exists() {
            let ok = std::process::Command::new("cp")
                .arg("-al")
                .arg(&src)
                .arg(r.join("usr").join(d))
                .status()
                .unwrap();
            assert!(ok.success());
        }
    }
    for l in ["bin", "lib", "lib64"] {
        std::os::unix::fs::symlink(format!("usr/{l}"), r.join(l)).unwrap();
    }
    write(r, "etc/errand-rootfs-marker", "from the rootfs\n");
    let rootfs_arg = r.display().to_string();
    let out = sh(
        ws.path(),
        &["--rootfs", &rootfs_arg],
        "cat /etc/errand-rootfs-marker; test -e /etc/passwd && echo host-etc || echo no-host-etc",
    );
    out.expect_code(0);
    assert_eq!(
        out.stdout,
        "from the rootfs\nno-host-etc\n",
        "{}",
        out.dump()
    );
    let bad = run(ws.path(), &["--rootfs", "/nonexistent-rootfs"], &["true"]);
    assert_eq!(bad.code, Some(1), "{}", bad.dump());
    assert!(
        bad.stderr.contains("has no usr/ directory"),
        "{}",
        bad.dump()
    );
}

/// `errand sandbox run` leaves no box cgroups behind when it exits.
#[test]
fn sandbox_run_leaves_no_cgroups_behind() {
    let ws = tempfile::tempdir().unwrap();
    let mut cmd = sandbox_cmd(ws.path(), &[], &["true"]);
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    for parent in [
        "/sys/fs/cgroup/pids/errand",
        "/sys/fs/cgroup/memory/errand",
        "/sys/fs/cgroup/errand",
    ] {
        if let Ok(rd) = std::fs::read_dir(parent) {
            let left: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("box-{pid}-")))
                .collect();
            assert!(left.is_empty(), "left behind in {parent}: {left:?}");
        }
    }
}
