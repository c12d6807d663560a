//! Who is calling, and may they: etcd's auth rules applied to a request, in
//! one helper every service uses.
//!
//! A caller is named by a simple token in the `token` gRPC metadata (what
//! clientv3 and `etcdctl --user` send), or else, with `--client-cert-auth`, by
//! the common name of its verified client certificate (the TLS listener
//! records it in the connection's [`ClientAddr`], which
//! [`super::server::serve`] puts into every request's extensions as axum's
//! `ConnectInfo`). While auth is
//! disabled every check passes and tokens are ignored, as in etcd.
//!
//! Checks run on the member that receives the request, against the auth state
//! it has applied; writes are proposed with their [`Caller`]
//! ([`Core::propose_as`]) and checked again at apply time if the auth store
//! changed meanwhile (see [`crate::auth`]).

use tonic::{Request, Status};

use axum::extract::ConnectInfo;

use super::errors::from_auth;
use super::listener::ClientAddr;
use super::Core;
use crate::auth::Access;
use crate::pb::lcraftpb::request::Op as Proposal;

/// The gRPC metadata key carrying a simple token (etcd's `TokenFieldNameGRPC`).
pub const TOKEN_METADATA: &str = "token";
/// The other key etcd accepts (`TokenFieldNameSwagger`): the JSON gateway
/// passes the HTTP `Authorization` header on under it.
pub const TOKEN_METADATA_GATEWAY: &str = "authorization";

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
            token: [TOKEN_METADATA, TOKEN_METADATA_GATEWAY]
                .into_iter()
                .find_map(|key| req.metadata().get(key))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            cert_name: req
                .extensions()
                .get::<ConnectInfo<ClientAddr>>()
                .and_then(|c| c.0.cert_name.clone()),
        }
    }
}

/// The caller of a request as the auth rules see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// Empty when the request names no user (checks then fail with `user
    /// name is empty` while auth is enabled).
    pub user: String,
    /// The auth revision the caller was resolved at; checks made after it
    /// see this revision or a later one (see [`crate::auth::Auth::check_at_apply`]).
    pub revision: u64,
}

impl Core {
    /// The caller of a request with `creds`.
    pub fn caller(&self, creds: &Credentials) -> Result<Caller, Status> {
        let (enabled, revision) = {
            let store = self.auth.store();
            (store.enabled(), store.revision())
        };
        let user = if !enabled {
            String::new()
        } else if let Some(token) = &creds.token {
            self.auth.user_of_token(token).map_err(from_auth)?
        } else {
            match (&creds.cert_name, self.client_cert_auth) {
                (Some(cn), true) => cn.clone(),
                _ => String::new(),
            }
        };
        Ok(Caller { user, revision })
    }

    /// The caller of `req`, refused unless it holds the root role.
    pub fn authorize_admin<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let caller = self.caller(&Credentials::of(req))?;
        self.auth
            .store()
            .check_admin(&caller.user)
            .map_err(from_auth)?;
        Ok(caller)
    }

    /// The caller of `req`, refused unless it may `access` every key of
    /// `[key, range_end)`.
    pub fn authorize_range<T>(
        &self,
        req: &Request<T>,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<Caller, Status> {
        let caller = self.caller(&Credentials::of(req))?;
        self.require_range(&caller, key, range_end, access)?;
        Ok(caller)
    }

    /// [`Core::authorize_range`] over every key under `prefix` (the lock and
    /// election recipes' keys).
    pub fn authorize_prefix<T>(
        &self,
        req: &Request<T>,
        prefix: &[u8],
        access: Access,
    ) -> Result<Caller, Status> {
        self.authorize_range(req, prefix, &super::recipes::prefix_end(prefix), access)
    }

    /// Refuses `caller` unless it may `access` every key of `[key, range_end)`.
    pub fn require_range(
        &self,
        caller: &Caller,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), Status> {
        self.auth
            .store()
            .check_range(&caller.user, key, range_end, access)
            .map_err(from_auth)
    }

    /// Refuses `caller` unless it may make the write `op` (a put, delete or
    /// txn); the same check runs again at apply time if the auth store changes
    /// in between.
    pub fn require_write(&self, caller: &Caller, op: &Proposal) -> Result<(), Status> {
        self.auth
            .store()
            .check_proposal(&caller.user, op)
            .map_err(from_auth)
    }
}
