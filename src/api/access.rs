//! Who is calling, and may they: etcd's auth rules applied to a request, in
//! one helper every service uses.
//!
//! A caller is named by a simple token in the `token` gRPC metadata (what
//! clientv3 and `etcdctl --user` send), or else, with `--client-cert-auth`, by
//! the common name of its verified client certificate (the TLS listener
//! records it in the connection's [`ClientAddr`], which axum's `ConnectInfo`
//! puts into every request's extensions). While auth is
//! disabled every check passes and tokens are ignored, as in etcd.
//!
//! Checks run on the member that receives the request, against the auth state
//! it has applied (see [`crate::auth`] for the race this leaves).

use tonic::{Request, Status};

use axum::extract::ConnectInfo;

use super::errors::from_auth;
use super::listener::ClientAddr;
use super::Core;
use crate::auth::Access;
use crate::pb::etcdserverpb::request_op::Request as TxnOp;
use crate::pb::etcdserverpb::TxnRequest;

/// The gRPC metadata key carrying a simple token (etcd's `TokenFieldNameGRPC`).
pub const TOKEN_METADATA: &str = "token";

/// What a request presents about its caller.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    token: Option<String>,
    cert_name: Option<String>,
}

impl Credentials {
    /// The token and certificate name of `req`.
    pub fn of<T>(req: &Request<T>) -> Credentials {
        Credentials {
            token: req
                .metadata()
                .get(TOKEN_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            cert_name: req
                .extensions()
                .get::<ConnectInfo<ClientAddr>>()
                .and_then(|c| c.0.cert_name.clone()),
        }
    }
}

impl Core {
    /// The user a request acts as; empty when it names none (checks then fail
    /// with `user name is empty` while auth is enabled).
    pub fn caller(&self, creds: &Credentials) -> Result<String, Status> {
        if !self.auth.enabled() {
            return Ok(String::new());
        }
        if let Some(token) = &creds.token {
            return self.auth.user_of_token(token).map_err(from_auth);
        }
        if self.client_cert_auth {
            if let Some(cn) = &creds.cert_name {
                return Ok(cn.clone());
            }
        }
        Ok(String::new())
    }

    /// The caller of `req`, refused unless it holds the root role.
    pub fn authorize_admin<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let user = self.caller(&Credentials::of(req))?;
        self.auth.store().check_admin(&user).map_err(from_auth)?;
        Ok(user)
    }

    /// The caller of `req`, refused unless it may `access` every key of
    /// `[key, range_end)`.
    pub fn authorize_range<T>(
        &self,
        req: &Request<T>,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<String, Status> {
        let user = self.caller(&Credentials::of(req))?;
        self.require_range(&user, key, range_end, access)?;
        Ok(user)
    }

    /// [`Core::authorize_range`] over every key under `prefix` (the lock and
    /// election recipes' keys).
    pub fn authorize_prefix<T>(
        &self,
        req: &Request<T>,
        prefix: &[u8],
        access: Access,
    ) -> Result<String, Status> {
        self.authorize_range(req, prefix, &super::recipes::prefix_end(prefix), access)
    }

    /// Refuses `user` unless it may `access` every key of `[key, range_end)`.
    pub fn require_range(
        &self,
        user: &str,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), Status> {
        self.auth
            .store()
            .check_range(user, key, range_end, access)
            .map_err(from_auth)
    }

    /// Refuses `user` unless it may run every part of `txn` that could run:
    /// read the compared keys, and each operation of both branches (etcd's
    /// `checkTxnAuth`).
    pub fn require_txn(&self, user: &str, txn: &TxnRequest) -> Result<(), Status> {
        for c in &txn.compare {
            self.require_range(user, &c.key, &c.range_end, Access::Read)?;
        }
        for op in txn.success.iter().chain(txn.failure.iter()) {
            match &op.request {
                Some(TxnOp::RequestRange(r)) => {
                    self.require_range(user, &r.key, &r.range_end, Access::Read)?
                }
                Some(TxnOp::RequestPut(p)) => {
                    self.require_range(user, &p.key, &[], Access::Write)?;
                    if p.prev_kv {
                        self.require_range(user, &p.key, &[], Access::Read)?;
                    }
                }
                Some(TxnOp::RequestDeleteRange(d)) => {
                    self.require_range(user, &d.key, &d.range_end, Access::Write)?;
                    if d.prev_kv {
                        self.require_range(user, &d.key, &d.range_end, Access::Read)?;
                    }
                }
                Some(TxnOp::RequestTxn(t)) => self.require_txn(user, t)?,
                None => {}
            }
        }
        Ok(())
    }
}
