//! The member's listeners: bound with std before anything else happens (so a
//! taken port fails the start before the data dir is touched), or handed in
//! already bound (the embedded cluster binds port 0), then given to tokio.

use super::MemberError;
use crate::config::EtcdUrl;

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
            let addr = u
                .bind_addr()
                .map_err(|e| MemberError::Config(format!("cannot listen on {u}: {e}")))?;
            std::net::TcpListener::bind(addr).map_err(|e| MemberError::Bind {
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
