//! The box's seccomp filter: a deny list (socket families, and the types and protocols of IP
//! sockets: allow lists). Denied calls fail
//! with `EPERM` (`clone3` with `ENOSYS`, so that libc falls back to `clone`, whose flags can
//! be checked).

use super::NetMode;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// System calls no command in a box needs.
const DENIED: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    // Would copy PID 1's descriptors (its control socket, the host's stderr) into a command.
    libc::SYS_pidfd_getfd,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_bpf,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_lookup_dcookie,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_vhangup,
];

fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, len, op, value).map_err(|e| e.to_string())
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conds).map_err(|e| e.to_string())
}

fn arch() -> Result<TargetArch, String> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err("seccomp: unsupported CPU architecture".into())
    }
}

/// Protocols an IP socket may ask for: the default, TCP, UDP, ICMP and ICMPv6 (ping).
const IP_PROTOCOLS: [u64; 5] = [
    0,
    libc::IPPROTO_TCP as u64,
    libc::IPPROTO_UDP as u64,
    libc::IPPROTO_ICMP as u64,
    libc::IPPROTO_ICMPV6 as u64,
];

/// Socket types an IP socket may have: stream and datagram, with or without
/// `SOCK_NONBLOCK` and `SOCK_CLOEXEC`.
fn ip_types() -> Vec<u64> {
    let mut v = Vec::new();
    for t in [libc::SOCK_STREAM, libc::SOCK_DGRAM] {
        for f in [
            0,
            libc::SOCK_NONBLOCK,
            libc::SOCK_CLOEXEC,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        ] {
            v.push((t | f) as u64);
        }
    }
    v
}

/// Matches `socket(fam, …)` whose argument `arg` is none of `allowed`.
fn ip_rule(fam: i32, arg: u8, allowed: &[u64]) -> Result<SeccompRule, String> {
    let mut conds = vec![cond(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        fam as u64,
    )?];
    for v in allowed {
        conds.push(cond(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *v)?);
    }
    rule(conds)
}

fn deny_filter(net: NetMode) -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for sys in DENIED {
        rules.insert(*sys, vec![]);
    }
    // Sockets: an allow list of families. Unix and netlink always; IP unless the network is
    // off. Everything else (packet, vsock — which reaches a VM's host whatever the network
    // namespace —, AF_ALG, Bluetooth, CAN, XDP, …) is denied: a socket() whose family is
    // none of the allowed ones matches the rule (conditions are ANDed) and fails with EPERM.
    let ip = net != NetMode::Off;
    let mut allowed = vec![libc::AF_UNIX, libc::AF_NETLINK];
    if ip {
        allowed.extend([libc::AF_INET, libc::AF_INET6]);
    }
    let not_allowed = allowed
        .into_iter()
        .map(|f| cond(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, f as u64))
        .collect::<Result<Vec<_>, _>>()?;
    let mut socket_rules = vec![rule(not_allowed)?];
    if ip {
        // IP sockets: TCP, UDP and ping only. Raw and packet-like types, and protocols such
        // as SCTP or DCCP (kernel modules a socket() call would load), are denied.
        for fam in [libc::AF_INET, libc::AF_INET6] {
            socket_rules.push(ip_rule(fam, 1, &ip_types())?);
            socket_rules.push(ip_rule(fam, 2, &IP_PROTOCOLS)?);
        }
    }
    rules.insert(libc::SYS_socket, socket_rules);
    // New namespaces through clone flags.
    let ns_flags = [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWCGROUP,
    ];
    let clone_rules = ns_flags
        .into_iter()
        .map(|f| {
            cond(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(f as u64),
                f as u64,
            )
            .and_then(|c| rule(vec![c]))
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    // Faking terminal input.
    rules.insert(
        libc::SYS_ioctl,
        vec![rule(vec![cond(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::TIOCSTI,
        )?])?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch()?,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

fn clone3_filter() -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    rules.insert(libc::SYS_clone3, vec![]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// The box's filters, compiled (before the box's configuration arrives).
pub fn build(net: NetMode) -> Result<Vec<BpfProgram>, String> {
    Ok(vec![clone3_filter()?, deny_filter(net)?])
}

/// Installs the filters on the calling thread (inherited by every child). Requires
/// `no_new_privs`.
pub fn install(filters: &[BpfProgram]) -> Result<(), String> {
    for prog in filters {
        seccompiler::apply_filter(prog)
            .map_err(|e| format!("installing the seccomp filter: {e}"))?;
    }
    Ok(())
}
