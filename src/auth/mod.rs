//! etcd's v3 authentication and authorization: users, roles, key-range
//! permissions, simple tokens.
//!
//! - [`store`]: the replicated auth store and etcd's rules for changing it.
//! - [`perms`]: whether a user's permissions cover a key range.
//! - [`tokens`]: simple tokens with a TTL (in memory, replicated by Raft).
//! - [`error`]: etcd's auth errors, with its exact strings.
//!
//! [`Auth`] is what one member shares between its state machine (which applies
//! committed [`AuthRequest`](crate::pb::lcraftpb::AuthRequest)s and persists
//! the store with the data) and its API services (which resolve the caller of a
//! request and check it). How it fits: the API checks a request against the
//! auth state this member has applied and proposes it stamped with the caller
//! and that auth revision ([`AuthInfo`]); as in etcd, writes and auth changes
//! are checked again when applied if the auth store changed in between
//! ([`Auth::check_at_apply`]), so a permission revoked before a write commits
//! also stops it, whichever member received it. Reads, watches and lease
//! operations are checked by the receiving member only, against its applied
//! state.

pub mod error;
pub mod perms;
pub mod store;
pub mod tokens;

use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

pub use error::AuthError;
pub use perms::Access;
pub use store::{AuthApplied, AuthStore, TokenEffect, ROOT};
pub use tokens::Tokens;

use crate::pb::lcraftpb::auth_request::Op;
use crate::pb::lcraftpb::request::Op as Proposal;
use crate::pb::lcraftpb::{AuthInfo, AuthState};

/// etcd's default `--bcrypt-cost`.
pub const DEFAULT_BCRYPT_COST: u32 = 10;
/// etcd's default `--auth-token-ttl`, in seconds.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 300;

/// Settings of the auth subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthOptions {
    /// `--bcrypt-cost`: work factor of password hashes (4..=31).
    pub bcrypt_cost: u32,
    /// `--auth-token-ttl`: how long an unused simple token stays valid.
    pub token_ttl: Duration,
}

impl Default for AuthOptions {
    fn default() -> Self {
        AuthOptions {
            bcrypt_cost: DEFAULT_BCRYPT_COST,
            token_ttl: Duration::from_secs(DEFAULT_TOKEN_TTL_SECS),
        }
    }
}

/// One member's auth state: the applied store and the live tokens.
#[derive(Debug)]
pub struct Auth {
    store: RwLock<AuthStore>,
    tokens: Mutex<Tokens>,
    bcrypt_cost: u32,
}

impl Auth {
    pub fn new(opts: &AuthOptions) -> Auth {
        Auth {
            store: RwLock::new(AuthStore::default()),
            tokens: Mutex::new(Tokens::new(opts.token_ttl)),
            bcrypt_cost: opts.bcrypt_cost,
        }
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The applied store, for reading.
    pub fn store(&self) -> RwLockReadGuard<'_, AuthStore> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the store with a persisted one (at start, or from a leader's
    /// snapshot). Tokens of users that still exist stay valid while auth stays
    /// enabled; the others are forgotten.
    pub fn load(&self, state: AuthState) {
        let store = AuthStore::from_state(state);
        {
            let mut tokens = self.tokens();
            if store.enabled() {
                tokens.retain_users(|u| store.user(u).is_some());
            } else {
                tokens.clear();
            }
        }
        *self.store.write().unwrap_or_else(|e| e.into_inner()) = store;
    }

    /// Applies one committed change on this member.
    pub fn apply(&self, op: Op) -> Result<AuthApplied, AuthError> {
        let (applied, effect) = self
            .store
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(op)?;
        match effect {
            TokenEffect::None => {}
            TokenEffect::InvalidateUser(u) => self.tokens().invalidate_user(&u),
            TokenEffect::ClearAll => self.tokens().clear(),
            TokenEffect::Grant { user, token } => self.tokens().insert(token, user, Instant::now()),
        }
        Ok(applied)
    }

    /// The record to persist.
    pub fn state(&self) -> AuthState {
        self.store().to_state()
    }

    pub fn enabled(&self) -> bool {
        self.store().enabled()
    }

    /// The apply-time check of a client request: while auth is enabled, a
    /// request whose proposer checked it at another auth revision than the one
    /// now applied is checked again against the applied store. Every member
    /// applies the same entries in the same order, so all decide alike.
    pub fn check_at_apply(&self, info: &AuthInfo, op: &Proposal) -> Result<(), AuthError> {
        let store = self.store();
        if !store.enabled() || info.revision == store.revision() {
            return Ok(());
        }
        store.check_proposal(&info.user, op)
    }

    /// The user a simple token stands for.
    pub fn user_of_token(&self, token: &str) -> Result<String, AuthError> {
        self.tokens()
            .user(token, Instant::now())
            .ok_or(AuthError::InvalidAuthToken)
    }

    /// Hashes a new password with bcrypt at `--bcrypt-cost` (slow by design:
    /// call it off the async threads).
    pub fn hash_password(&self, password: &str) -> Result<String, AuthError> {
        bcrypt::hash(password, self.bcrypt_cost).map_err(|e| AuthError::Hash(e.to_string()))
    }

    /// Checks `name`'s password (slow by design: call it off the async threads).
    pub fn check_password(&self, name: &str, password: &str) -> Result<(), AuthError> {
        let hash = {
            let store = self.store();
            let user = store.user(name).ok_or(AuthError::AuthFailed)?;
            if user.options.as_ref().is_some_and(|o| o.no_password) || user.password.is_empty() {
                return Err(AuthError::AuthFailed);
            }
            String::from_utf8_lossy(&user.password).into_owned()
        };
        match bcrypt::verify(password, &hash) {
            Ok(true) => Ok(()),
            _ => Err(AuthError::AuthFailed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::*;
    use crate::pb::lcraftpb::AuthTokenGrant;

    fn auth_with_root() -> Auth {
        let auth = Auth::new(&AuthOptions {
            bcrypt_cost: 4,
            ..Default::default()
        });
        let hash = auth.hash_password("pw").unwrap();
        auth.apply(Op::UserAdd(AuthUserAddRequest {
            name: "root".into(),
            hashed_password: hash,
            ..Default::default()
        }))
        .unwrap();
        auth.apply(Op::RoleAdd(AuthRoleAddRequest {
            name: "root".into(),
        }))
        .unwrap();
        auth.apply(Op::UserGrantRole(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        }))
        .unwrap();
        auth.apply(Op::Enable(AuthEnableRequest {})).unwrap();
        auth
    }

    #[test]
    fn a_write_checked_before_a_revocation_is_refused_when_applied_after_it() {
        use crate::pb::authpb::{permission::Type, Permission};
        let auth = auth_with_root();
        auth.apply(Op::UserAdd(AuthUserAddRequest {
            name: "alice".into(),
            hashed_password: "h".into(),
            ..Default::default()
        }))
        .unwrap();
        auth.apply(Op::RoleAdd(AuthRoleAddRequest { name: "app".into() }))
            .unwrap();
        auth.apply(Op::RoleGrantPermission(AuthRoleGrantPermissionRequest {
            name: "app".into(),
            perm: Some(Permission {
                perm_type: Type::Readwrite as i32,
                key: b"app/".to_vec(),
                range_end: b"app0".to_vec(),
            }),
        }))
        .unwrap();
        auth.apply(Op::UserGrantRole(AuthUserGrantRoleRequest {
            user: "alice".into(),
            role: "app".into(),
        }))
        .unwrap();
        let put = Proposal::Put(PutRequest {
            key: b"app/x".to_vec().into(),
            ..Default::default()
        });
        let checked_at = AuthInfo {
            user: "alice".into(),
            revision: auth.store().revision(),
        };
        // Nothing changed since the proposer's check: no second check needed.
        assert!(auth.check_at_apply(&checked_at, &put).is_ok());
        auth.apply(Op::RoleRevokePermission(AuthRoleRevokePermissionRequest {
            role: "app".into(),
            key: b"app/".to_vec(),
            range_end: b"app0".to_vec(),
        }))
        .unwrap();
        assert_eq!(
            auth.check_at_apply(&checked_at, &put).unwrap_err(),
            AuthError::PermissionDenied
        );
        // An auth change proposed by a user who lost the root role meanwhile.
        let by_alice = AuthInfo {
            user: "alice".into(),
            revision: 1,
        };
        let add = Proposal::Auth(crate::pb::lcraftpb::AuthRequest {
            op: Some(Op::RoleAdd(AuthRoleAddRequest { name: "x".into() })),
        });
        assert_eq!(
            auth.check_at_apply(&by_alice, &add).unwrap_err(),
            AuthError::PermissionDenied
        );
    }

    #[test]
    fn passwords_are_checked_against_their_bcrypt_hash() {
        let auth = auth_with_root();
        assert!(auth.check_password("root", "pw").is_ok());
        assert_eq!(
            auth.check_password("root", "no").unwrap_err(),
            AuthError::AuthFailed
        );
        assert_eq!(
            auth.check_password("ghost", "pw").unwrap_err(),
            AuthError::AuthFailed
        );
    }

    #[test]
    fn an_applied_token_names_its_user_until_the_password_changes() {
        let auth = auth_with_root();
        auth.apply(Op::Authenticate(AuthTokenGrant {
            name: "root".into(),
            token: "abc.1".into(),
        }))
        .unwrap();
        assert_eq!(auth.user_of_token("abc.1").unwrap(), "root");
        auth.apply(Op::UserChangePassword(AuthUserChangePasswordRequest {
            name: "root".into(),
            hashed_password: "x".into(),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(
            auth.user_of_token("abc.1").unwrap_err(),
            AuthError::InvalidAuthToken
        );
    }
}
