//! Escape suite for `errand sandbox run`: every probe asserts the specific denial (errno,
//! exit code, limit message), never just "it failed". Probes run as Python one-liners that
//! print `name=ERRNO (text)`; syscall numbers come from the `libc` crate.
//!
//! Linux only; the machine must be able to start a box (`errand sandbox check`).

#[path = "common/sandbox.rs"]
mod sandbox;

use sandbox::*;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Network

/// A loopback server on the host; returns its port and a receiver of what clients sent.
fn loopback_server() -> (u16, std::sync::mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if tx.send(buf).is_err() {
                break;
            }
        }
    });
    (port, rx)
}

fn connect_probe(port: u16, marker: &str) -> String {
    format!(
        r#"
s = None
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    out("socket", "OK")
except OSError as e:
    out("socket", ename(e.errno))
if s is not None:
    out("connect", tryit(lambda: s.connect(("127.0.0.1", {port}))))
    out("send", tryit(lambda: s.sendall(b"{marker}")))
    s.close()
out("socket6", tryit(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()))
out("udp", tryit(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()))
"#
    )
}

#[test]
fn net_off_cannot_reach_a_loopback_server_on_the_host() {
    let (port, rx) = loopback_server();
    let marker = format!("escape-{}", unique());
    let ws = tempfile::tempdir().unwrap();
    let o = py(ws.path(), &["--net", "off"], &connect_probe(port, &marker));
    o.expect_code(0);
    o.expect("socket", EPERM);
    o.expect("socket6", EPERM);
    o.expect("udp", EPERM);
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the host server got a connection from a --net off box"
    );
}

#[test]
fn net_open_reaches_the_same_server_so_the_probe_works() {
    let (port, rx) = loopback_server();
    let marker = format!("open-{}", unique());
    let ws = tempfile::tempdir().unwrap();
    let o = py(ws.path(), &["--net", "open"], &connect_probe(port, &marker));
    o.expect_code(0);
    o.expect("socket", OK);
    o.expect("connect", OK);
    o.expect("send", OK);
    assert!(
        o.stderr
            .contains("--net open gives the command the host's network"),
        "{}",
        o.dump()
    );
    let got = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("no connection");
    assert_eq!(got, marker);
}

#[test]
fn dns_resolution_fails_and_the_configured_resolver_is_unreachable() {
    let o = probe(
        r#"
try:
    socket.getaddrinfo("example.com", 80)
    out("getaddrinfo", "resolved")
except socket.gaierror as e:
    out("getaddrinfo", "%s (%s)" % (e.errno, e.strerror))
ns = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")]
out("have_nameserver", bool(ns))
def udp_to_ns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"\x00", (ns[0], 53))
out("udp_to_nameserver", tryit(udp_to_ns))
out("localhost", socket.getaddrinfo("localhost", 80, socket.AF_INET)[0][4][0])
for p in ["/run", "/var", "/var/run/nscd/socket", "/run/systemd/resolve"]:
    out("exists " + p, os.path.exists(p))
"#,
    );
    o.expect_code(0);
    o.expect("getaddrinfo", "-3 (Temporary failure in name resolution)");
    o.expect("have_nameserver", "True");
    o.expect("udp_to_nameserver", EPERM);
    o.expect("localhost", "127.0.0.1");
    for p in [
        "/run",
        "/var",
        "/var/run/nscd/socket",
        "/run/systemd/resolve",
    ] {
        o.expect(&format!("exists {p}"), "False");
    }
    if Path::new("/usr/bin/curl").exists() {
        let ws = tempfile::tempdir().unwrap();
        let c = run(
            ws.path(),
            &[],
            &["curl", "-sS", "-m", "5", "http://example.com/"],
        );
        c.expect_code(6);
        assert!(
            c.stderr.contains("Could not resolve host: example.com"),
            "{}",
            c.dump()
        );
    }
}

#[test]
fn raw_and_packet_sockets_are_denied_in_every_network_mode() {
    let code = r#"
out("raw_icmp", tryit(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()))
out("raw6", tryit(lambda: socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6).close()))
out("packet", tryit(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0x0300).close()))
out("packet_dgram", tryit(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0x0300).close()))
"#;
    // With allowlist, root of the box's user namespace would have CAP_NET_RAW in the box's
    // own network namespace: the seccomp filter denies raw sockets there.
    for net in ["off", "allowlist", "open"] {
        let ws = tempfile::tempdir().unwrap();
        let o = py(ws.path(), &["--net", net], code);
        o.expect_code(0);
        // With --net open the box is in the host's network namespace, whose owner (the
        // initial user namespace) grants the box no CAP_NET_RAW: EPERM all the same.
        o.expect("raw_icmp", EPERM);
        o.expect("raw6", EPERM);
        o.expect("packet", EPERM);
        o.expect("packet_dgram", EPERM);
    }
}

#[test]
fn only_unix_and_netlink_socket_families_are_allowed() {
    // AF_VSOCK reaches a VM's host whatever the network namespace; AF_ALG, Bluetooth, CAN,
    // XDP, PF_KEY, TIPC, RDS are kernel attack surface no command needs.
    let o = probe(
        r#"
fams = {"vsock": 40, "alg": 38, "bluetooth": 31, "can": 29, "xdp": 44, "key": 15, "tipc": 30, "rds": 21, "appletalk": 5, "x25": 9}
for name, fam in fams.items():
    out(name, tryit(lambda: socket.socket(fam, socket.SOCK_SEQPACKET).close()))
out("unix", tryit(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()))
out("netlink", tryit(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()))
out("socketpair", tryit(lambda: [x.close() for x in socket.socketpair()]))
"#,
    );
    o.expect_code(0);
    for fam in [
        "vsock",
        "alg",
        "bluetooth",
        "can",
        "xdp",
        "key",
        "tipc",
        "rds",
        "appletalk",
        "x25",
    ] {
        o.expect(fam, EPERM);
    }
    o.expect("unix", OK);
    o.expect("netlink", OK);
    o.expect("socketpair", OK);
}

// ---------------------------------------------------------------------------------------------
// Host files

#[test]
fn host_secrets_and_data_dirs_are_not_visible() {
    let host = tempfile::tempdir().unwrap();
    let data = host.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("errand.db"), "secret-db").unwrap();
    std::fs::write(data.join("secret.txt"), "sk-live-host-secret").unwrap();
    let ssh = host.path().join("home/user/.ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(
        ssh.join("id_rsa"),
        "-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n",
    )
    .unwrap();
    let ws = tempfile::tempdir().unwrap();
    let paths = [
        data.join("secret.txt"),
        data.join("errand.db"),
        ssh.join("id_rsa"),
        host.path().to_path_buf(),
    ];
    let mut code = String::new();
    for (i, p) in paths.iter().enumerate() {
        code.push_str(&format!(
            "out('host{i}', tryit(lambda: open({:?}, 'rb').read()))\n",
            p.display().to_string()
        ));
    }
    code.push_str(&format!(
        r#"
out("root", tryit(lambda: os.listdir("/root")))
out("root_ssh", tryit(lambda: open("/root/.ssh/id_rsa").read()))
out("home", ",".join(sorted(os.listdir("/home"))))
out("home_agent", ",".join(sorted(os.listdir("/home/agent"))))
out("shadow", repr(open("/etc/shadow").read()))
out("gshadow", repr(open("/etc/gshadow").read()))
out("etc_ssh", ",".join(os.listdir("/etc/ssh")) if os.path.isdir("/etc/ssh") else "absent")
out("docker_sock", tryit(lambda: os.stat("/var/run/docker.sock")))
out("run_docker_sock", tryit(lambda: os.stat("/run/docker.sock")))
out("test_pid_in_proc", os.path.exists("/proc/{pid}"))
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out("pids", pids)
out("few_pids", len(pids) <= 4 and pids[0] == 1)
"#,
        pid = std::process::id()
    ));
    let o = py(ws.path(), &[], &code);
    o.expect_code(0);
    for i in 0..paths.len() {
        o.expect(&format!("host{i}"), ENOENT);
    }
    o.expect("root", ENOENT);
    o.expect("root_ssh", ENOENT);
    o.expect("home", "agent");
    o.expect("home_agent", "");
    o.expect("shadow", "''");
    o.expect("gshadow", "''");
    if Path::new("/etc/ssh").is_dir() {
        o.expect("etc_ssh", "");
    }
    o.expect("docker_sock", ENOENT);
    o.expect("run_docker_sock", ENOENT);
    o.expect("test_pid_in_proc", "False");
    o.expect("few_pids", "True");
    assert!(!o.stdout.contains("sk-live-host-secret"), "{}", o.dump());
}

#[test]
fn writes_outside_the_workspace_hit_a_read_only_file_system() {
    let ws = tempfile::tempdir().unwrap();
    let marker = format!("ws-{}", unique());
    let tmp_name = format!("errand-escape-{}", unique());
    let o = py(
        ws.path(),
        &[],
        &format!(
            r#"
for p in ["/usr/evil", "/usr/bin/evil", "/etc/evil", "/etc/passwd", "/evil", "/opt/evil", "/bin/evil", "/lib/evil"]:
    out("write " + p, tryit(lambda: open(p, "a").write("x")))
out("mkdir /evil", tryit(lambda: os.mkdir("/evil")))
out("chmod /usr/bin/env", tryit(lambda: os.chmod("/usr/bin/env", 0o777)))
out("unlink /etc/hostname", tryit(lambda: os.unlink("/etc/hostname")))
out("rename /etc/passwd", tryit(lambda: os.rename("/etc/passwd", "/etc/passwd2")))
out("write /workspace", tryit(lambda: open("/workspace/out.txt", "w").write("{marker}")))
out("write /tmp", tryit(lambda: open("/tmp/{tmp_name}", "w").write("x")))
out("write /home/agent", tryit(lambda: open("/home/agent/.bashrc", "w").write("x")))
out("write /dev/shm", tryit(lambda: open("/dev/shm/x", "w").write("x")))
out("write /dev/null", tryit(lambda: open("/dev/null", "w").write("x")))
"#
        ),
    );
    o.expect_code(0);
    for p in [
        "/usr/evil",
        "/usr/bin/evil",
        "/etc/evil",
        "/etc/passwd",
        "/evil",
        "/opt/evil",
        "/bin/evil",
        "/lib/evil",
    ] {
        o.expect(&format!("write {p}"), EROFS);
    }
    o.expect("mkdir /evil", EROFS);
    o.expect("chmod /usr/bin/env", EROFS);
    o.expect("unlink /etc/hostname", EROFS);
    o.expect("rename /etc/passwd", EROFS);
    for p in ["/workspace", "/tmp", "/home/agent", "/dev/shm", "/dev/null"] {
        o.expect(&format!("write {p}"), OK);
    }
    assert_eq!(
        std::fs::read_to_string(ws.path().join("out.txt")).unwrap(),
        marker
    );
    // The box's /tmp is its own.
    assert!(!Path::new("/tmp").join(&tmp_name).exists());
    assert!(!Path::new("/usr/evil").exists() && !Path::new("/evil").exists());
}

#[test]
fn kernel_knobs_in_proc_and_device_nodes_are_out_of_reach() {
    let o = probe(
        r#"
out("core_pattern", tryit(lambda: os.close(os.open("/proc/sys/kernel/core_pattern", os.O_WRONLY))))
out("sysrq", tryit(lambda: os.close(os.open("/proc/sysrq-trigger", os.O_WRONLY))))
out("proc_sys_vm", tryit(lambda: os.close(os.open("/proc/sys/vm/drop_caches", os.O_WRONLY))))
out("mknod_mem", tryit(lambda: os.mknod("/tmp/mem", 0o600 | 0o020000, os.makedev(1, 1))))
out("mknod_sda", tryit(lambda: os.mknod("/workspace/sda", 0o600 | 0o060000, os.makedev(8, 0))))
out("dev_create", tryit(lambda: open("/dev/evil", "w")))
out("proc_keys", repr(open("/proc/keys").read()))
"#,
    );
    o.expect_code(0);
    // Landlock: /proc is read-only for the box even though its files belong to "root".
    o.expect("core_pattern", EACCES);
    o.expect("proc_sys_vm", EACCES);
    o.expect("sysrq", ENOENT);
    o.expect("mknod_mem", EPERM);
    o.expect("mknod_sda", EPERM);
    o.expect("dev_create", EACCES);
    // The host user's keyrings are masked.
    o.expect("proc_keys", "''");
}

#[test]
fn proc_root_links_lead_only_to_the_box() {
    let o = probe(
        r#"
root = sorted(os.listdir("/"))
out("self_root_same", sorted(os.listdir("/proc/self/root")) == root)
kid = os.fork()
if kid == 0:
    time.sleep(10)
    os._exit(0)
out("child_root_same", sorted(os.listdir("/proc/%d/root" % kid)) == root)
out("child_root_root", tryit(lambda: os.listdir("/proc/%d/root/root" % kid)))
os.kill(kid, 9)
os.waitpid(kid, 0)
out("self_root_root", tryit(lambda: os.listdir("/proc/self/root/root")))
out("self_root_shadow", repr(open("/proc/self/root/etc/shadow").read()))
out("self_root_home", ",".join(os.listdir("/proc/self/root/home")))
# PID 1 (the box's init) is not dumpable: its root, fds and environment are closed to commands.
out("pid1_root", tryit(lambda: os.listdir("/proc/1/root/")))
out("pid1_shadow", tryit(lambda: open("/proc/1/root/etc/shadow").read()))
out("pid1_cwd", tryit(lambda: os.readlink("/proc/1/cwd")))
out("has_root_dir", "root" in root)
"#,
    );
    o.expect_code(0);
    o.expect("self_root_same", "True");
    o.expect("child_root_same", "True");
    o.expect("child_root_root", ENOENT);
    o.expect("self_root_root", ENOENT);
    o.expect("self_root_shadow", "''");
    o.expect("self_root_home", "agent");
    o.expect("pid1_root", EACCES);
    o.expect("pid1_shadow", EACCES);
    o.expect("pid1_cwd", EACCES);
    o.expect("has_root_dir", "False");
}

#[test]
fn chroot_breakout_only_reaches_the_box_root() {
    let o = probe(
        r#"
before = sorted(os.listdir("/"))
os.makedirs("/tmp/jail/a/b", exist_ok=True)
fd = os.open("/", os.O_RDONLY)
os.chroot("/tmp/jail/a/b")
os.fchdir(fd)
for _ in range(64):
    os.chdir("..")
os.chroot(".")
out("same_root", sorted(os.listdir("/")) == before)
out("root_dir", tryit(lambda: os.listdir("/root")))
out("shadow", repr(open("/etc/shadow").read()))
"#,
    );
    o.expect_code(0);
    o.expect("same_root", "True");
    o.expect("root_dir", ENOENT);
    o.expect("shadow", "''");
}

// ---------------------------------------------------------------------------------------------
// Denied system calls

#[test]
fn ptrace_of_a_child_is_denied() {
    let o = probe(
        r#"
pid = os.fork()
if pid == 0:
    time.sleep(10)
    os._exit(0)
out("attach", sc(SYS_ptrace, 16, pid, 0, 0))        # PTRACE_ATTACH
out("seize", sc(SYS_ptrace, 0x4206, pid, 0, 0))     # PTRACE_SEIZE
out("vm_readv", sc(SYS_process_vm_readv, pid, None, 0, None, 0, 0))
out("pidfd_getfd_child", sc(SYS_pidfd_getfd, os.pidfd_open(pid), 0, 0))
os.kill(pid, 9)
os.waitpid(pid, 0)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(w, sc(SYS_ptrace, 0, 0, 0, 0).encode())  # PTRACE_TRACEME
    os._exit(0)
os.waitpid(pid, 0)
out("traceme", os.read(r, 200).decode())
"#,
    );
    o.expect_code(0);
    o.expect("attach", EPERM);
    o.expect("seize", EPERM);
    o.expect("vm_readv", EPERM);
    o.expect("pidfd_getfd_child", EPERM);
    o.expect("traceme", EPERM);
    if Path::new("/usr/bin/strace").exists() {
        let ws = tempfile::tempdir().unwrap();
        let s = run(ws.path(), &[], &["strace", "-o", "/dev/null", "true"]);
        assert_ne!(s.code, Some(0), "{}", s.dump());
        assert!(s.stderr.contains("Operation not permitted"), "{}", s.dump());
    }
}

#[test]
fn mount_umount_and_the_new_mount_api_are_denied() {
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("still-here"), "1").unwrap();
    let o = py(
        ws.path(),
        &[],
        r#"
os.makedirs("/tmp/m", exist_ok=True)
out("mount_tmpfs", sc(SYS_mount, b"tmpfs", b"/tmp/m", b"tmpfs", 0, None))
out("mount_bind", sc(SYS_mount, b"/workspace", b"/tmp/m", None, 4096 | 16384, None))   # MS_BIND|MS_REC
out("remount_rw", sc(SYS_mount, None, b"/usr", None, 32 | 4096, None))                  # MS_REMOUNT|MS_BIND
out("mount_proc", sc(SYS_mount, b"proc", b"/tmp/m", b"proc", 0, None))
out("umount_workspace", sc(SYS_umount2, b"/workspace", 2))                              # MNT_DETACH
out("umount_etc_shadow", sc(SYS_umount2, b"/etc/shadow", 2))
out("umount_proc", sc(SYS_umount2, b"/proc", 0))
out("pivot_root", sc(SYS_pivot_root, b"/tmp", b"/tmp/m"))
out("fsopen", sc(SYS_fsopen, b"tmpfs", 0))
out("open_tree", sc(SYS_open_tree, -100, b"/", 1))                                      # OPEN_TREE_CLONE
out("move_mount", sc(SYS_move_mount, -100, b"/tmp", -100, b"/tmp/m", 0))
out("mount_setattr", sc(SYS_mount_setattr, -100, b"/usr", 0, None, 0))
out("still_here", os.path.exists("/workspace/still-here"))
out("shadow", repr(open("/etc/shadow").read()))
"#,
    );
    o.expect_code(0);
    for k in [
        "mount_tmpfs",
        "mount_bind",
        "remount_rw",
        "mount_proc",
        "umount_workspace",
        "umount_etc_shadow",
        "umount_proc",
        "pivot_root",
        "fsopen",
        "open_tree",
        "move_mount",
        "mount_setattr",
    ] {
        o.expect(k, EPERM);
    }
    o.expect("still_here", "True");
    o.expect("shadow", "''");
}

#[test]
fn kernel_keyring_is_denied() {
    let o = probe(
        r#"
out("keyctl_get_session", sc(SYS_keyctl, 0, -3, 1))           # KEYCTL_GET_KEYRING_ID, session
out("keyctl_join", sc(SYS_keyctl, 1, b"errand-escape"))       # KEYCTL_JOIN_SESSION_KEYRING
out("add_key", sc(SYS_add_key, b"user", b"errand", b"secret", 6, -3))
out("request_key", sc(SYS_request_key, b"user", b"errand", None, 0))
"#,
    );
    o.expect_code(0);
    for k in [
        "keyctl_get_session",
        "keyctl_join",
        "add_key",
        "request_key",
    ] {
        o.expect(k, EPERM);
    }
}

#[test]
fn loading_or_removing_kernel_modules_is_denied() {
    // On a kernel without module support the bare calls give ENOSYS; EPERM is seccomp.
    let o = probe(
        r#"
img = b"\x7fELF" + b"\x00" * 60
out("init_module", sc(SYS_init_module, img, len(img), b""))
fd = os.open("/dev/null", os.O_RDONLY)
out("finit_module", sc(SYS_finit_module, fd, b"", 0))
out("delete_module", sc(SYS_delete_module, b"loop", 0))
"#,
    );
    o.expect_code(0);
    o.expect("init_module", EPERM);
    o.expect("finit_module", EPERM);
    o.expect("delete_module", EPERM);
}

#[test]
fn new_namespaces_are_denied() {
    let o = probe(
        r#"
for name, flag in [("user", 0x10000000), ("mnt", 0x00020000), ("net", 0x40000000), ("pid", 0x20000000), ("ipc", 0x08000000), ("uts", 0x04000000), ("cgroup", 0x02000000)]:
    out("unshare_" + name, sc(SYS_unshare, flag))
def raw_clone(flags):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(SYS_clone), ctypes.c_long(flags | 17), None, None, None, None)
    if r == 0:
        os._exit(0)
    if r > 0:
        os.waitpid(r, 0)
        return "OK"
    return ename(ctypes.get_errno())
out("clone_newuser", raw_clone(0x10000000))
out("clone_newns", raw_clone(0x00020000))
out("clone_newnet", raw_clone(0x40000000))
out("clone_plain", raw_clone(0))
out("clone3", sc(SYS_clone3, None, 0))
fd = os.open("/proc/self/ns/net", os.O_RDONLY)
out("setns_net", sc(SYS_setns, fd, 0))
fd = os.open("/proc/self/ns/mnt", os.O_RDONLY)
out("setns_mnt", sc(SYS_setns, fd, 0))
"#,
    );
    o.expect_code(0);
    for ns in ["user", "mnt", "net", "pid", "ipc", "uts", "cgroup"] {
        o.expect(&format!("unshare_{ns}"), EPERM);
    }
    o.expect("clone_newuser", EPERM);
    o.expect("clone_newns", EPERM);
    o.expect("clone_newnet", EPERM);
    o.expect("clone_plain", OK);
    o.expect("clone3", ENOSYS);
    o.expect("setns_net", EPERM);
    o.expect("setns_mnt", EPERM);
    let ws = tempfile::tempdir().unwrap();
    let u = run(ws.path(), &[], &["unshare", "-U", "true"]);
    u.expect_code(1);
    assert!(
        u.stderr.contains("unshare failed: Operation not permitted"),
        "{}",
        u.dump()
    );
}

#[test]
fn bpf_perf_userfaultfd_and_io_uring_are_denied() {
    let o = probe(
        r#"
attr = ctypes.create_string_buffer(128)
out("bpf_map_create", sc(SYS_bpf, 0, attr, 128))
out("bpf_prog_load", sc(SYS_bpf, 5, attr, 128))
out("perf_event_open", sc(SYS_perf_event_open, attr, 0, -1, -1, 0))
out("userfaultfd", sc(SYS_userfaultfd, 0))
params = ctypes.create_string_buffer(120)
out("io_uring_setup", sc(SYS_io_uring_setup, 8, params))
out("io_uring_enter", sc(SYS_io_uring_enter, 0, 0, 0, 0, None, 0))
out("io_uring_register", sc(SYS_io_uring_register, 0, 0, None, 0))
"#,
    );
    o.expect_code(0);
    for k in [
        "bpf_map_create",
        "bpf_prog_load",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
    ] {
        o.expect(k, EPERM);
    }
}

#[test]
fn swap_reboot_kexec_and_syslog_are_denied() {
    let o = probe(
        r#"
open("/workspace/swapfile", "wb").write(b"\0" * 65536)
out("swapon", sc(SYS_swapon, b"/workspace/swapfile", 0))
out("swapoff", sc(SYS_swapoff, b"/workspace/swapfile"))
# LINUX_REBOOT_CMD_CAD_OFF: harmless even where it is allowed (EINVAL in a PID namespace).
out("reboot", sc(SYS_reboot, 0xfee1dead, 672274793, 0, None))
out("kexec_load", sc(SYS_kexec_load, 0, 0, None, 0))
out("kexec_file_load", sc(SYS_kexec_file_load, -1, -1, 0, None, 0))
out("syslog_size", sc(SYS_syslog, 10, None, 0))
buf = ctypes.create_string_buffer(4096)
out("syslog_read", sc(SYS_syslog, 3, buf, 4096))
out("open_by_handle_at", sc(SYS_open_by_handle_at, -100, buf, 0))
out("name_to_handle_at", sc(SYS_name_to_handle_at, -100, b"/", buf, buf, 0))
"#,
    );
    o.expect_code(0);
    for k in [
        "swapon",
        "swapoff",
        "reboot",
        "kexec_load",
        "kexec_file_load",
        "syslog_size",
        "syslog_read",
        "open_by_handle_at",
        "name_to_handle_at",
    ] {
        o.expect(k, EPERM);
    }
}

#[test]
fn tiocsti_terminal_injection_is_denied() {
    // Without the filter TIOCSTI on a non-terminal is ENOTTY.
    let o = probe(
        r#"
import fcntl, termios
out("tiocsti_stdin", tryit(lambda: fcntl.ioctl(0, termios.TIOCSTI, b"x")))
out("tiocsti_stdout", tryit(lambda: fcntl.ioctl(1, termios.TIOCSTI, b"x")))
out("tty_open", tryit(lambda: os.open("/dev/tty", os.O_RDWR)))
# stdout is a pipe: TIOCSTI on it would be ENOTTY without the filter, like TCGETS is.
out("tcgets_pipe", tryit(lambda: fcntl.ioctl(1, termios.TCGETS, b"\0" * 64)))
# Landlock also denies ioctls on device files (stdin is /dev/null).
out("tcgets_dev", tryit(lambda: fcntl.ioctl(0, termios.TCGETS, b"\0" * 64)))
"#,
    );
    o.expect_code(0);
    o.expect("tiocsti_stdin", EPERM);
    o.expect("tiocsti_stdout", EPERM);
    // No controlling terminal in the box, and other ioctls still reach the kernel.
    o.expect("tty_open", "ENXIO (No such device or address)");
    o.expect("tcgets_pipe", "ENOTTY (Inappropriate ioctl for device)");
    o.expect("tcgets_dev", EACCES);
}

#[test]
fn i386_system_calls_kill_the_process() {
    // The filter checks the architecture: an `int $0x80` system call (which would otherwise
    // bypass a deny list keyed on x86-64 numbers) kills the process with SIGSYS.
    if !cfg!(target_arch = "x86_64") || !Path::new("/usr/bin/gcc").exists() {
        eprintln!("skipped: needs x86-64 and gcc");
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(
        ws.path().join("int80.c"),
        r#"#include <stdio.h>
int main(void) {
    long r;
    /* i386 ptrace(PTRACE_TRACEME) */
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(26L), "b"(0L), "c"(0L), "d"(0L) : "memory");
    printf("returned %ld\n", r);
    return 0;
}
"#,
    )
    .unwrap();
    let o = sh(
        ws.path(),
        &[],
        "gcc -O0 -o /tmp/int80 int80.c && exec /tmp/int80",
    );
    // 128 + SIGSYS (31).
    o.expect_code(159);
    assert!(!o.stdout.contains("returned"), "{}", o.dump());
}

// ---------------------------------------------------------------------------------------------
// Privilege

#[test]
fn setuid_binaries_gain_nothing() {
    let ws = tempfile::tempdir().unwrap();
    // A setuid copy of `id` owned by an unmapped user: on the host (as root) it runs as 65534;
    // in the box the bit is ignored (no_new_privs, and the owner has no mapping).
    let suid = ws.path().join("suid-id");
    std::fs::copy("/usr/bin/id", &suid).unwrap();
    let as_root = host_is_root();
    if as_root {
        let st = Command::new("chown")
            .args(["65534:65534"])
            .arg(&suid)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let st = Command::new("chmod")
        .arg("6755")
        .arg(&suid)
        .status()
        .unwrap();
    assert!(st.success());
    if as_root {
        let host = Command::new(&suid).arg("-u").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&host.stdout).trim(), "65534");
    }
    let o = py(
        ws.path(),
        &[],
        r#"
import subprocess
status = open("/proc/self/status").read()
out("nnp", [l.split()[1] for l in status.splitlines() if l.startswith("NoNewPrivs:")][0])
out("uid_map_lines", len(open("/proc/self/uid_map").read().strip().splitlines()))
out("setgroups_file", open("/proc/self/setgroups").read().strip())
out("setuid_1000", tryit(lambda: os.setuid(1000)))
out("setgroups", tryit(lambda: os.setgroups([0])))
out("euid", os.geteuid())
out("suid_euid", subprocess.run(["/workspace/suid-id", "-u"], capture_output=True, text=True).stdout.strip())
r = subprocess.run(["su", "nobody", "-s", "/bin/sh", "-c", "id -u"], capture_output=True, text=True)
out("su_code", r.returncode)
out("su_err", r.stderr.strip())
"#,
    );
    o.expect_code(0);
    o.expect("nnp", "1");
    o.expect("uid_map_lines", "1");
    o.expect("setgroups_file", "deny");
    o.expect("setuid_1000", EINVAL);
    o.expect("setgroups", EPERM);
    o.expect("euid", "0");
    o.expect("suid_euid", "0");
    o.expect("su_code", "1");
    o.expect("su_err", "su: cannot set groups: Operation not permitted");
}

fn host_is_root() -> bool {
    let o = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim() == "0"
}

#[test]
fn signals_cannot_reach_host_processes() {
    let mut victim = Command::new("sleep").arg("300").spawn().unwrap();
    let pid = victim.id();
    let ws = tempfile::tempdir().unwrap();
    let o = py(
        ws.path(),
        &[],
        &format!(
            r#"
out("kill9", tryit(lambda: os.kill({pid}, 9)))
out("kill0", tryit(lambda: os.kill({pid}, 0)))
out("pidfd_open", sc(SYS_pidfd_open, {pid}, 0))
out("kill_host_init", tryit(lambda: os.kill(1, 0)))
"#
        ),
    );
    let k = sh(ws.path(), &[], &format!("kill -9 {pid}"));
    let alive = victim.try_wait().unwrap().is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    o.expect_code(0);
    o.expect("kill9", ESRCH);
    o.expect("kill0", ESRCH);
    o.expect("pidfd_open", ESRCH);
    // PID 1 here is the box's own init.
    o.expect("kill_host_init", OK);
    assert_ne!(k.code, Some(0), "{}", k.dump());
    assert!(k.stderr.contains("No such process"), "{}", k.dump());
    assert!(alive, "the host's sleep died");
}

#[test]
fn the_environment_of_the_caller_does_not_leak_in() {
    let secret = format!("sk-errand-test-{}", unique());
    let ws = tempfile::tempdir().unwrap();
    let mut c = sandbox_cmd(ws.path(), &[], &["env"]);
    c.env("ERRAND_TEST_SECRET", &secret)
        .env("AWS_SECRET_ACCESS_KEY", &secret)
        .env("SSH_AUTH_SOCK", "/tmp/ssh-agent.sock");
    let o = output(c);
    o.expect_code(0);
    assert!(!o.stdout.contains(&secret), "{}", o.dump());
    let names: Vec<&str> = o
        .stdout
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    let allowed = [
        "PATH",
        "HOME",
        "TMPDIR",
        "TERM",
        "LANG",
        "USER",
        "ERRAND_SANDBOX",
        "GIT_TERMINAL_PROMPT",
    ];
    for n in &names {
        assert!(
            allowed.contains(n),
            "unexpected variable {n} in the box:\n{}",
            o.dump()
        );
    }
    assert!(names.contains(&"HOME") && names.contains(&"PATH"));
    // Nor through PID 1's original environment block.
    let mut c = sandbox_cmd(
        ws.path(),
        &[],
        &[
            "python3",
            "-c",
            &format!(
                "{}\nout('pid1_environ', tryit(lambda: open('/proc/1/environ','rb').read()))\nout('self', b'{secret}' in open('/proc/self/environ','rb').read())",
                prelude()
            ),
        ],
    );
    c.env("ERRAND_TEST_SECRET", &secret);
    let p = output(c);
    p.expect_code(0);
    p.expect("pid1_environ", EACCES);
    p.expect("self", "False");
}

#[test]
fn the_control_socket_and_inherited_descriptors_do_not_reach_commands() {
    // The caller leaves fd 7 open on a host file (no close-on-exec); the box must not get it,
    // nor the control socket to the host side, which would let a command forge its own exit.
    let host = tempfile::tempdir().unwrap();
    let leak = host.path().join("leak.txt");
    std::fs::write(&leak, "").unwrap();
    let ws = tempfile::tempdir().unwrap();
    let code = format!(
        r#"{}
fds = {{}}
for n in os.listdir("/proc/self/fd"):
    try:
        fds[int(n)] = os.readlink("/proc/self/fd/" + n)
    except OSError:
        pass
out("fds", sorted(k for k, v in fds.items() if not v.startswith("/proc/")))
out("fd1", fds[1].split(":")[0])
out("write_fd3", tryit(lambda: os.write(3, b'{{"op":"exited","id":1,"code":0,"signal":null}}')))
out("write_fd7", tryit(lambda: os.write(7, b"escaped")))
pfd = os.pidfd_open(1)
out("pidfd_getfd_pid1_ctl", sc(SYS_pidfd_getfd, pfd, 3, 0))
out("pidfd_getfd_pid1_stderr", sc(SYS_pidfd_getfd, pfd, 2, 0))
out("pid1_fd2", tryit(lambda: open("/proc/1/fd/2", "w").write("INJECTED")))
out("pid1_mem", tryit(lambda: open("/proc/1/mem", "rb").read(1)))
sys.exit(7)
"#,
        prelude()
    );
    let script = "exec 7>>\"$LEAK\"; exec \"$BIN\" sandbox run --timeout 30s --workspace \"$WS\" -- python3 -c \"$CODE\"";
    let o = output({
        let mut c = Command::new("bash");
        c.args(["-c", script])
            .env("LEAK", &leak)
            .env("BIN", BIN)
            .env("WS", ws.path())
            .env("CODE", &code)
            .stdin(Stdio::null());
        c
    });
    // The real exit code, not a forged 0.
    o.expect_code(7);
    o.expect("fds", "[0, 1, 2]");
    o.expect("fd1", "pipe");
    o.expect("write_fd3", EBADF);
    o.expect("write_fd7", EBADF);
    o.expect("pidfd_getfd_pid1_ctl", EPERM);
    o.expect("pidfd_getfd_pid1_stderr", EPERM);
    o.expect("pid1_fd2", EACCES);
    o.expect("pid1_mem", EACCES);
    assert_eq!(std::fs::read_to_string(&leak).unwrap(), "");
    assert!(!o.stderr.contains("INJECTED"), "{}", o.dump());
}

// ---------------------------------------------------------------------------------------------
// Host identity and devices

#[test]
fn hostname_is_the_boxs_own() {
    let host_before = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let name = format!("evil-{}", unique());
    let o = probe(&format!(
        r#"
out("before", os.uname().nodename)
out("sethostname", tryit(lambda: socket.sethostname("{name}")))
out("after", os.uname().nodename)
"#
    ));
    o.expect_code(0);
    o.expect("before", "errand-box");
    // Allowed: the box has its own UTS namespace…
    o.expect("sethostname", OK);
    o.expect("after", &name);
    // …and the host's name is unchanged.
    let host_after = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(host_before, host_after);
    assert_ne!(host_after.trim(), name);
}

#[test]
fn sys_is_absent_and_dev_has_only_the_listed_devices() {
    let o = probe(
        r#"
out("sys", tryit(lambda: os.listdir("/sys")))
out("cgroup", tryit(lambda: os.listdir("/sys/fs/cgroup")))
out("dev", ",".join(sorted(os.listdir("/dev"))))
for d in ["sda", "vda", "mem", "kmem", "kmsg", "port", "ptmx", "fuse", "net/tun", "kvm", "loop0", "loop-control", "console"]:
    out("dev_" + d, tryit(lambda: os.stat("/dev/" + d)))
out("urandom", len(open("/dev/urandom", "rb").read(16)))
out("zero", open("/dev/zero", "rb").read(4) == b"\0\0\0\0")
"#,
    );
    o.expect_code(0);
    o.expect("sys", ENOENT);
    o.expect("cgroup", ENOENT);
    let mut want: Vec<&str> = ["full", "null", "random", "tty", "urandom", "zero"]
        .into_iter()
        .filter(|d| Path::new("/dev").join(d).exists())
        .collect();
    want.extend(["fd", "shm", "stderr", "stdin", "stdout"]);
    want.sort();
    o.expect("dev", &want.join(","));
    for d in [
        "sda",
        "vda",
        "mem",
        "kmem",
        "kmsg",
        "port",
        "ptmx",
        "fuse",
        "net/tun",
        "kvm",
        "loop0",
        "loop-control",
        "console",
    ] {
        o.expect(&format!("dev_{d}"), ENOENT);
    }
    o.expect("urandom", "16");
    o.expect("zero", "True");
}

// ---------------------------------------------------------------------------------------------
// Resource limits

#[test]
fn fork_bomb_is_contained_by_the_pids_limit() {
    let ws = tempfile::tempdir().unwrap();
    let o = py(
        ws.path(),
        &["--pids", "64"],
        r#"
kids = []
err = None
try:
    while len(kids) < 10000:
        p = os.fork()
        if p == 0:
            time.sleep(20)
            os._exit(0)
        kids.append(p)
except OSError as e:
    err = e.errno
out("fork", ename(err) if err else "never failed")
out("forked", len(kids))
for k in kids:
    os.kill(k, 9)
for k in kids:
    os.waitpid(k, 0)
"#,
    );
    o.expect_code(0);
    o.expect("fork", EAGAIN);
    let forked: usize = o.get("forked").parse().unwrap();
    assert!(forked < 64, "forked {forked} processes under --pids 64");
    assert!(o.elapsed < Duration::from_secs(15), "{}", o.dump());
    // The host can still start processes.
    let st = Command::new("true").status().unwrap();
    assert!(st.success());
}

#[test]
fn classic_shell_fork_bomb_ends_at_the_timeout_and_the_host_is_fine() {
    let ws = tempfile::tempdir().unwrap();
    let o = run(
        ws.path(),
        &["--pids", "64", "--timeout", "2s"],
        &["bash", "-c", "b() { b | b; }; b"],
    );
    o.expect_code(124);
    assert!(
        o.stderr
            .contains("fork: retry: Resource temporarily unavailable"),
        "{}",
        o.dump()
    );
    assert!(
        o.stderr
            .contains("errand: command killed: it ran past --timeout 2s [limit: timeout]"),
        "{}",
        o.dump()
    );
    assert!(o.elapsed < Duration::from_secs(15), "{}", o.dump());
    for _ in 0..5 {
        let st = Command::new("true").status().unwrap();
        assert!(st.success());
    }
}

#[test]
fn memory_bomb_is_killed_by_the_memory_limit() {
    let ws = tempfile::tempdir().unwrap();
    let o = run(
        ws.path(),
        &["--memory", "256M"],
        &[
            "python3",
            "-c",
            "b = bytearray(1 << 30); b[::4096] = b'x' * len(b[::4096]); print('allocated')",
        ],
    );
    o.expect_code(125);
    assert!(!o.stdout.contains("allocated"), "{}", o.dump());
    assert!(
        o.stderr.contains(
            "errand: command killed: it went over the box's memory limit (--memory) [limit: memory]"
        ),
        "{}",
        o.dump()
    );
}

#[test]
fn file_size_bomb_stops_at_the_limit() {
    let ws = tempfile::tempdir().unwrap();
    // dd takes SIGXFSZ: the box reports the limit.
    let o = run(
        ws.path(),
        &["--max-file-size", "1M"],
        &[
            "dd",
            "if=/dev/zero",
            "of=/workspace/big",
            "bs=1M",
            "count=10",
        ],
    );
    o.expect_code(122);
    assert!(
        o.stderr.contains(
            "errand: command killed: it wrote a file larger than --max-file-size [limit: file_size]"
        ),
        "{}",
        o.dump()
    );
    assert_eq!(
        std::fs::metadata(ws.path().join("big")).unwrap().len(),
        1 << 20
    );
    // Python ignores SIGXFSZ, so it sees the error itself.
    let p = py(
        ws.path(),
        &["--max-file-size", "1M"],
        r#"
def write():
    with open("/workspace/big2", "wb") as f:
        f.write(b"x" * (10 << 20))
out("write", tryit(write))
"#,
    );
    p.expect_code(0);
    p.expect("write", EFBIG);
    assert_eq!(
        std::fs::metadata(ws.path().join("big2")).unwrap().len(),
        1 << 20
    );
}

#[test]
fn the_quota_counts_what_commands_write_not_what_the_workspace_held() {
    // A checkout bigger than the quota: commands run; what they add is what counts.
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("checkout.bin"), vec![7u8; 8 << 20]).unwrap();
    let small = py(
        ws.path(),
        &["--disk", "5M", "--timeout", "30s"],
        r#"
with open("/workspace/small", "wb") as f:
    f.write(os.urandom(1 << 20))
    f.flush()
    os.fsync(f.fileno())
time.sleep(2.5)
print("finished", flush=True)
"#,
    );
    small.expect_code(0);
    assert!(small.stdout.contains("finished"), "{}", small.dump());
    assert!(!small.stderr.contains("disk quota"), "{}", small.dump());
    let big = py(
        ws.path(),
        &["--disk", "5M", "--timeout", "30s"],
        r#"
with open("/workspace/fill", "wb") as f:
    for i in range(40):
        f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
        time.sleep(0.2)
print("finished", flush=True)
"#,
    );
    big.expect_code(123);
    assert!(
        big.stderr.contains("went over its disk quota"),
        "{}",
        big.dump()
    );
}

#[test]
fn filling_the_workspace_past_the_quota_is_killed() {
    let ws = tempfile::tempdir().unwrap();
    let o = py(
        ws.path(),
        &["--disk", "5M", "--timeout", "30s"],
        r#"
with open("/workspace/fill", "wb") as f:
    for i in range(40):
        f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
        print("chunk", i, flush=True)
        time.sleep(0.2)
print("finished", flush=True)
"#,
    );
    o.expect_code(123);
    assert!(
        o.stderr.contains(
            "errand: command killed: the workspace went over its disk quota (--disk) [limit: disk_quota]"
        ),
        "{}",
        o.dump()
    );
    assert!(!o.stdout.contains("finished"), "{}", o.dump());
    let size = std::fs::metadata(ws.path().join("fill")).unwrap().len();
    assert!(
        size > 5 << 20 && size < 40 << 20,
        "size {size}\n{}",
        o.dump()
    );
}

// ---------------------------------------------------------------------------------------------
// Nothing survives the box

#[test]
fn background_processes_die_when_the_command_exits() {
    let d = unique_sleep("987.1");
    let ws = tempfile::tempdir().unwrap();
    let mut child = sandbox_cmd(
        ws.path(),
        &[],
        &[
            "sh",
            "-c",
            &format!("sleep {d} & echo started; sleep 1; exit 3"),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "started");
    assert_all_running(&[&d]);
    let code = wait_with_deadline(&mut child, Duration::from_secs(20));
    assert_eq!(code, Some(3), "{}", read_all(child.stderr.take()));
    assert_none_left(&[&d]);
}

#[test]
fn setsid_and_nohup_processes_die_at_the_timeout() {
    let a = unique_sleep("987.2");
    let b = unique_sleep("987.21");
    let c = unique_sleep("987.22");
    let ws = tempfile::tempdir().unwrap();
    let script = format!(
        "( setsid sleep {a} & ) ; nohup sleep {b} >/dev/null 2>&1 & \
         setsid sh -c 'sleep {c} & wait' >/dev/null 2>&1 & echo started; sleep 60"
    );
    let mut child = sandbox_cmd(ws.path(), &["--timeout", "1s"], &["sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "started");
    assert_all_running(&[&a, &b, &c]);
    let code = wait_with_deadline(&mut child, Duration::from_secs(20));
    let err = read_all(child.stderr.take());
    assert_eq!(code, Some(124), "{err}");
    assert!(
        err.contains("errand: command killed: it ran past --timeout 1s [limit: timeout]"),
        "{err}"
    );
    assert_none_left(&[&a, &b, &c]);
}

#[test]
fn sigint_cancels_the_box_and_nothing_survives() {
    let d = unique_sleep("987.3");
    let d2 = unique_sleep("987.31");
    let ws = tempfile::tempdir().unwrap();
    let mut child = sandbox_cmd(
        ws.path(),
        &[],
        &["sh", "-c", &format!("setsid sleep {d2} & exec sleep {d}")],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    assert_all_running(&[&d, &d2]);
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0);
    let code = wait_with_deadline(&mut child, Duration::from_secs(20));
    let err = read_all(child.stderr.take());
    assert_eq!(code, Some(130), "{err}");
    assert!(
        err.contains("errand: command killed: interrupted [limit: cancelled]"),
        "{err}"
    );
    assert_none_left(&[&d, &d2]);
}

#[test]
fn sigkill_of_the_errand_process_takes_the_box_down() {
    let d = unique_sleep("987.4");
    let d2 = unique_sleep("987.41");
    let ws = tempfile::tempdir().unwrap();
    let mut child = sandbox_cmd(
        ws.path(),
        &[],
        &["sh", "-c", &format!("setsid sleep {d2} & exec sleep {d}")],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    assert_all_running(&[&d, &d2]);
    let pid = child.id();
    child.kill().unwrap();
    let _ = child.wait();
    assert_none_left(&[&d, &d2]);
    // Its cgroups are left behind (nobody ran destroy) but empty; remove them.
    for kind in ["pids", "memory"] {
        let Ok(rd) = std::fs::read_dir(format!("/sys/fs/cgroup/{kind}/errand")) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("box-{pid}-"))
            {
                let tasks = e.path().join("tasks");
                let empty = eventually(Duration::from_secs(3), || {
                    std::fs::read_to_string(&tasks)
                        .unwrap_or_default()
                        .is_empty()
                });
                assert!(empty, "processes left in {}", e.path().display());
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}
