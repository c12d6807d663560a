//! systemd's readiness protocol (`sd_notify`): under a `Type=notify` unit,
//! systemd sets `NOTIFY_SOCKET` and waits for `READY=1` on that unix datagram
//! socket before it considers the service started. A member sends it once it
//! serves clients, the moment it logs `ready to serve client requests`, as
//! etcd does.
//!
//! Hand-written (a few lines over std) because the protocol needs abstract
//! socket names (`@name`, as systemd uses by default for some units), which
//! the small crates implementing it do not support. Only the binary calls it:
//! an embedded member never announces itself for the process it lives in.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// The environment variable systemd passes the socket in.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (e.g. `READY=1`) to the notification socket `socket`: a
/// filesystem path, or an abstract name written `@name`.
pub fn notify(socket: &OsStr, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = socket.as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.connect_addr(&addr)?;
        }
        None => sock.connect(socket)?,
    }
    let sent = sock.send(state.as_bytes())?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "incomplete notification",
        ));
    }
    Ok(())
}

/// Tells systemd the service is ready, if it asked (`NOTIFY_SOCKET` is set in
/// `env`). `Ok(false)` when nobody asked.
pub fn notify_ready(notify_socket: Option<&OsStr>) -> io::Result<bool> {
    match notify_socket.filter(|s| !s.is_empty()) {
        Some(socket) => notify(socket, "READY=1").map(|()| true),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        assert!(notify_ready(Some(path.as_os_str())).unwrap());
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn ready_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("localcluster-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let socket = format!("@{name}");
        assert!(notify_ready(Some(OsStr::new(&socket))).unwrap());
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn nothing_is_sent_when_not_asked() {
        assert!(!notify_ready(None).unwrap());
        assert!(!notify_ready(Some(OsStr::new(""))).unwrap());
    }
}
