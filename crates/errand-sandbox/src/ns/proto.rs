//! The box's control protocol: JSON messages over a `SOCK_SEQPACKET` Unix socket pair, with
//! file descriptors (a command's stdout and stderr pipes) passed as `SCM_RIGHTS`.

use serde::{Deserialize, Serialize};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Largest control message (a command line and its environment fit easily).
pub const MAX_MSG: usize = 256 * 1024;
/// Most descriptors one message carries (`Ready` with two listeners per bridge).
pub const MAX_FDS: usize = 2 * crate::MAX_BRIDGES;

/// Host → box.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Run a command; two fds (stdout, stderr write ends) travel with this message.
    Exec {
        id: u64,
        argv: Vec<String>,
        /// Absolute path inside the box.
        cwd: String,
        env: Vec<(String, String)>,
    },
    /// Kill a command's process group.
    Kill { id: u64 },
    /// Kill every process of the box but PID 1 and wait until they are gone; answered with
    /// `Swept` carrying the same id.
    Sweep { id: u64 },
    /// Sent once to stage 1 after the host has put it in the box's cgroups: the box's
    /// configuration, with rlimit fallbacks filled in where no cgroup could be made.
    Go { config: Box<super::BoxConfig> },
}

/// Box → host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply {
    /// The box is set up; what it enforces. One listening TCP socket per entry of `bridges`
    /// (its port) travels with this message, in that order.
    Ready {
        report: super::Enforced,
        #[serde(default)]
        bridges: Vec<u16>,
    },
    /// Setting the box up failed (the box exits after this).
    SetupFailed {
        error: String,
    },
    Started {
        id: u64,
        pid: i32,
    },
    SpawnFailed {
        id: u64,
        error: String,
    },
    Exited {
        id: u64,
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// What a `Sweep` found running and killed.
    Swept {
        id: u64,
        stopped: crate::Stopped,
    },
}

/// Sends one message with optional fds.
pub fn send(sock: RawFd, msg: &impl Serialize, fds: &[RawFd]) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let iov = [IoSlice::new(&bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(std::io::Error::from(e)),
        }
    }
}

/// Receives one message and the fds that came with it. `Ok(None)` at end of stream.
pub fn recv(sock: RawFd, buf: &mut [u8]) -> std::io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let res = recvmsg::<()>(
            sock,
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        );
        let msg = match res {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(std::io::Error::from(e)),
        };
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: the kernel just installed these descriptors for us.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        let n = msg.bytes;
        if n == 0 && fds.is_empty() {
            return Ok(None);
        }
        return Ok(Some((buf[..n].to_vec(), fds)));
    }
}

/// A `SOCK_SEQPACKET` pair, close-on-exec.
pub fn socket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(std::io::Error::from)
}

pub fn raw(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}
