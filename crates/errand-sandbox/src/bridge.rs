//! Bridges: TCP ports on a box's loopback whose connections are relayed, on the host, to Unix
//! sockets (the egress proxy, the model gateway).
//!
//! The box's PID 1 creates the listening sockets in the box's network namespace before any
//! command runs and hands them to the host over the control socket. The host accepts on them
//! and relays each connection to a new connection to the bridge's Unix socket. Nothing runs
//! inside the box for this, and the Unix socket's path is never visible in it.

use crate::{Bridge, NetMode, Result, SandboxError};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Most bridges one box may have.
pub const MAX_BRIDGES: usize = 16;
/// Most relayed connections open at once per box; further connections are reset at once, so
/// that a box cannot exhaust the worker's descriptors.
pub const MAX_CONNECTIONS: usize = 256;
/// Copy buffer per direction of a relayed connection.
const BUF: usize = 64 * 1024;
/// How long a connection waits for room in a Unix socket's full backlog before it is reset.
const BACKLOG_WAIT: Duration = Duration::from_secs(2);
/// Longest Unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Checks a box's bridges against its network mode. Bridges exist only in `allowlist` mode:
/// an `off` box must have no way out, and an `open` box shares the host's loopback.
pub(crate) fn validate(net: NetMode, bridges: &[Bridge]) -> Result<()> {
    if bridges.is_empty() {
        return Ok(());
    }
    match net {
        NetMode::Allowlist => {}
        NetMode::Off => {
            return Err(SandboxError::Refused(
                "bridges need network mode 'allowlist': a box with network 'off' has no way \
                 out, so it cannot have a bridge; use allowlist, or drop the bridges"
                    .into(),
            ));
        }
        NetMode::Open => {
            return Err(SandboxError::Refused(
                "bridges need network mode 'allowlist': a box with network 'open' shares the \
                 host's network, where a bridge port would be open to every process of the \
                 host; use allowlist, or drop the bridges"
                    .into(),
            ));
        }
    }
    if bridges.len() > MAX_BRIDGES {
        return Err(SandboxError::Refused(format!(
            "{} bridges asked for; a box has at most {MAX_BRIDGES}",
            bridges.len()
        )));
    }
    let mut seen = HashSet::new();
    for b in bridges {
        if b.port == 0 {
            return Err(SandboxError::Refused(format!(
                "bridge to {} has port 0; give a port from 1 to 65535",
                b.socket.display()
            )));
        }
        if !seen.insert(b.port) {
            return Err(SandboxError::Refused(format!(
                "two bridges use port {}; each bridge needs a port of its own",
                b.port
            )));
        }
        if !b.socket.is_absolute() {
            return Err(SandboxError::Refused(format!(
                "bridge on port {}: the Unix socket path '{}' is relative; give an absolute path",
                b.port,
                b.socket.display()
            )));
        }
        if b.socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(SandboxError::Refused(format!(
                "bridge on port {}: the Unix socket path '{}' is longer than {MAX_SOCKET_PATH} \
                 bytes, which Unix sockets cannot use; put the socket in a shorter directory",
                b.port,
                b.socket.display()
            )));
        }
    }
    Ok(())
}

/// The relays of one box. Dropping it (or [`Relays::close`]) stops accepting and cuts every
/// relayed connection.
#[derive(Debug)]
pub(crate) struct Relays {
    cancel: CancellationToken,
    limit: Arc<Semaphore>,
}

impl Default for Relays {
    fn default() -> Self {
        Relays {
            cancel: CancellationToken::new(),
            limit: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

impl Relays {
    /// Relays every connection accepted on `listener` to the bridge's Unix socket (or hands
    /// it over, see [`Bridge::handoff`]), until closed. Must be called within a tokio runtime.
    pub(crate) fn serve(&self, listener: TcpListener, bridge: &Bridge) {
        let cancel = self.cancel.clone();
        let limit = self.limit.clone();
        let (port, handoff) = (bridge.port, bridge.handoff);
        let socket: Arc<Path> = bridge.socket.clone().into();
        let warned = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = listener.accept() => r,
                };
                let tcp = match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // Out of descriptors or similar: wait a little rather than spin.
                        tracing::warn!(port, "bridge: accepting a connection: {e}");
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                        }
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    tracing::warn!(
                        port,
                        "bridge: {MAX_CONNECTIONS} connections already open; resetting a new one"
                    );
                    reset(tcp);
                    continue;
                };
                let (cancel, socket, warned) = (cancel.clone(), socket.clone(), warned.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = relay(tcp, port, &socket, handoff, &warned) => {}
                    }
                    drop(permit);
                });
            }
        });
    }

    /// Stops accepting on every bridge and cuts the connections being relayed. Idempotent.
    pub(crate) fn close(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Closes a connection with a reset: the client fails at once instead of reading an empty
/// answer.
fn reset(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

async fn relay(tcp: TcpStream, port: u16, socket: &Path, handoff: bool, warned: &AtomicBool) {
    let mut unix = match connect(socket).await {
        Ok(u) => {
            warned.store(false, Ordering::Relaxed);
            u
        }
        Err(e) => {
            // Once per outage at warn level: a tool retrying in a loop must not flood the log.
            if !warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    port,
                    socket = %socket.display(),
                    "bridge: the Unix socket does not answer ({e}); resetting connections until it does"
                );
            } else {
                tracing::debug!(port, "bridge: the Unix socket does not answer ({e})");
            }
            reset(tcp);
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    if handoff {
        // The server now owns the connection; ours is closed when `tcp` drops here.
        if let Err(e) = hand_over(&unix, &tcp).await {
            tracing::debug!(port, "bridge: handing a connection over: {e}");
            reset(tcp);
        }
        return;
    }
    let mut tcp = tcp;
    if let Err(e) = tokio::io::copy_bidirectional_with_sizes(&mut tcp, &mut unix, BUF, BUF).await {
        tracing::debug!(port, "bridge: relayed connection ended: {e}");
    }
}

/// Sends `tcp` itself to the server over `unix`: one message of [`crate::HANDOFF_BYTE`] with
/// the socket attached.
async fn hand_over(unix: &UnixStream, tcp: &TcpStream) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    let fds = [tcp.as_raw_fd()];
    let byte = [crate::HANDOFF_BYTE];
    let deadline = tokio::time::Instant::now() + BACKLOG_WAIT;
    loop {
        tokio::time::timeout_at(deadline, unix.writable())
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let sent = unix.try_io(tokio::io::Interest::WRITABLE, || {
            let iov = [IoSlice::new(&byte)];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(unix.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                .map_err(std::io::Error::from)
        });
        match sent {
            Ok(1) => return Ok(()),
            Ok(_) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Connects to the Unix socket; waits (bounded) while its backlog is full, fails at once when
/// it is missing or refuses.
async fn connect(socket: &Path) -> std::io::Result<UnixStream> {
    let deadline = Instant::now() + BACKLOG_WAIT;
    loop {
        match UnixStream::connect(socket).await {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            r => return r,
        }
    }
}

/// `HTTP_PROXY`, `HTTPS_PROXY`, their lower-case forms and `NO_PROXY`/`no_proxy` for a box
/// whose egress proxy is bridged on `127.0.0.1:port`. Loopback stays direct (other bridges,
/// such as the model gateway, and servers the commands start themselves).
pub fn proxy_env(port: u16) -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{port}");
    let no_proxy = "localhost,127.0.0.1,::1".to_string();
    vec![
        ("HTTP_PROXY".into(), url.clone()),
        ("HTTPS_PROXY".into(), url.clone()),
        ("http_proxy".into(), url.clone()),
        ("https_proxy".into(), url),
        ("NO_PROXY".into(), no_proxy.clone()),
        ("no_proxy".into(), no_proxy),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(port: u16, socket: &str) -> Bridge {
        Bridge {
            handoff: false,
            port,
            socket: socket.into(),
        }
    }

    fn refused(net: NetMode, bridges: &[Bridge]) -> String {
        match validate(net, bridges) {
            Ok(()) => panic!("accepted {bridges:?} in {net:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bridges_only_in_allowlist_and_well_formed() {
        assert!(validate(NetMode::Off, &[]).is_ok());
        assert!(validate(NetMode::Open, &[]).is_ok());
        assert!(
            validate(
                NetMode::Allowlist,
                &[b(3128, "/run/p.sock"), b(4000, "/run/g.sock")]
            )
            .is_ok()
        );
        assert!(refused(NetMode::Off, &[b(3128, "/run/p.sock")]).contains("has no way out"));
        assert!(
            refused(NetMode::Open, &[b(3128, "/run/p.sock")]).contains("shares the host's network")
        );
        assert!(refused(NetMode::Allowlist, &[b(0, "/run/p.sock")]).contains("port 0"));
        assert!(
            refused(NetMode::Allowlist, &[b(1, "/a"), b(1, "/b")])
                .contains("two bridges use port 1")
        );
        assert!(refused(NetMode::Allowlist, &[b(1, "p.sock")]).contains("relative"));
        let long = format!("/{}", "x".repeat(107));
        assert!(refused(NetMode::Allowlist, &[b(1, &long)]).contains("longer than 107"));
        let ok = format!("/{}", "x".repeat(106));
        assert!(validate(NetMode::Allowlist, &[b(1, &ok)]).is_ok());
        let many: Vec<Bridge> = (1..=17).map(|p| b(p, "/run/p.sock")).collect();
        assert!(refused(NetMode::Allowlist, &many).contains("at most 16"));
    }

    #[test]
    fn proxy_env_points_every_spelling_at_the_bridge() {
        let env: std::collections::HashMap<String, String> = proxy_env(3128).into_iter().collect();
        for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            assert_eq!(env[k], "http://127.0.0.1:3128", "{k}");
        }
        for k in ["NO_PROXY", "no_proxy"] {
            assert_eq!(env[k], "localhost,127.0.0.1,::1", "{k}");
        }
        assert_eq!(env.len(), 6);
    }
}
