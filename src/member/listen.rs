//! The member's listeners: bound with std before anything else happens (so a
//! taken port fails the start before the data dir is touched), or handed in
//! already bound (the embedded cluster binds port 0), then given to tokio.
//!
//! The peer listeners are only reserved at first ([`reserve`]: bound, not
//! listening, so a peer that dials is refused at once) and listen once the
//! member knows who it is ([`listen`]): a new member asks the others whether
//! it already belongs to their cluster, and members that start together
//! must not wait for each other's answer meanwhile.

use super::MemberError;
use crate::config::EtcdUrl;

/// The address a listen URL binds.
fn address_of(u: &EtcdUrl) -> Result<std::net::SocketAddr, MemberError> {
    u.bind_addr()
        .map_err(|e| MemberError::Config(format!("cannot listen on {u}: {e}")))
}

/// Binds the listeners of `urls` with std (so a taken port fails the start
/// before the data dir is touched), unless they were bound in advance.
pub(super) fn bind_std(
    urls: &[EtcdUrl],
    given: Vec<std::net::TcpListener>,
) -> Result<Vec<std::net::TcpListener>, MemberError> {
    if !given.is_empty() {
        return Ok(given);
    }
    urls.iter()
        .map(|u| {
            std::net::TcpListener::bind(address_of(u)?).map_err(|e| MemberError::Bind {
                url: u.to_string(),
                source: e,
            })
        })
        .collect()
}

/// Hands std listeners to the current tokio runtime.
pub(super) fn to_tokio(
    listeners: Vec<std::net::TcpListener>,
) -> Result<Vec<tokio::net::TcpListener>, MemberError> {
    listeners
        .into_iter()
        .map(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l).map_err(MemberError::from)
        })
        .collect()
}

/// A peer listener's address, bound but not listening yet (or a listener
/// handed in, already listening).
pub(super) enum Reserved {
    Bound {
        socket: socket2::Socket,
        url: String,
    },
    Listening(std::net::TcpListener),
}

/// Binds the addresses of `urls` without listening on them (see the module
/// doc), unless listeners were handed in.
pub(super) fn reserve(
    urls: &[EtcdUrl],
    given: Vec<std::net::TcpListener>,
) -> Result<Vec<Reserved>, MemberError> {
    if !given.is_empty() {
        return Ok(given.into_iter().map(Reserved::Listening).collect());
    }
    urls.iter()
        .map(|u| {
            let addr = address_of(u)?;
            let socket = bind_unlistened(addr).map_err(|source| MemberError::Bind {
                url: u.to_string(),
                source,
            })?;
            Ok(Reserved::Bound {
                socket,
                url: u.to_string(),
            })
        })
        .collect()
}

/// Binds `addr` without listening on it: dials are refused, and the port is
/// taken for whoever listens on the socket later ([`start_listening`]).
pub(crate) fn bind_unlistened(addr: std::net::SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    // As std's listeners: a restart may reuse a port in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Starts listening on a socket bound by [`bind_unlistened`].
pub(crate) fn start_listening(socket: socket2::Socket) -> std::io::Result<std::net::TcpListener> {
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Starts listening on reserved addresses.
pub(super) fn listen(reserved: Vec<Reserved>) -> Result<Vec<std::net::TcpListener>, MemberError> {
    reserved
        .into_iter()
        .map(|r| match r {
            Reserved::Listening(l) => Ok(l),
            Reserved::Bound { socket, url } => {
                start_listening(socket).map_err(|source| MemberError::Bind { url, source })
            }
        })
        .collect()
}
