//! The auth store: users, roles, their permissions and the enabled flag, with
//! etcd's rules for changing them (`server/auth/store.go`).
//!
//! The store is replicated state: every change arrives as a committed Raft
//! entry and [`AuthStore::apply`] runs it on every member in log order, so all
//! members hold the same store. Password hashes are computed by the proposer;
//! the store never sees a clear-text password. It is persisted as one
//! `lcraftpb::AuthState` record in the MVCC store's meta table, atomically
//! with the rest of the applied batch, and so travels in snapshots.
//!
//! Invariants: user and role names are unique; a user's roles are sorted and
//! name existing roles (or `root`); when auth is enabled the `root` user
//! exists and holds the `root` role (it cannot be deleted or lose the role).

use std::collections::BTreeMap;

use super::error::AuthError;
use super::perms::{covers, Access};
use crate::pb::authpb::{Permission, Role, User, UserAddOptions};
use crate::pb::etcdserverpb::request_op::Request as TxnOp;
use crate::pb::etcdserverpb::{DeleteRangeRequest, PutRequest, TxnRequest};
use crate::pb::lcraftpb::auth_request::Op;
use crate::pb::lcraftpb::request::Op as Proposal;
use crate::pb::lcraftpb::AuthState;

/// etcd's root user and role names.
pub const ROOT: &str = "root";

/// What an applied auth change produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthApplied {
    Done,
    /// Authenticate: the token now valid on every member.
    Token(String),
}

/// Users, roles and the enabled flag.
#[derive(Debug, Clone, Default)]
pub struct AuthStore {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

/// Side effects of an applied change on the (unreplicated) token table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenEffect {
    None,
    /// Tokens of this user are no longer valid.
    InvalidateUser(String),
    /// No token is valid any more.
    ClearAll,
    /// A new token for a user.
    Grant {
        user: String,
        token: String,
    },
}

fn name_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl AuthStore {
    /// The store as persisted.
    pub fn from_state(state: AuthState) -> AuthStore {
        AuthStore {
            enabled: state.enabled,
            revision: state.revision,
            users: state
                .users
                .into_iter()
                .map(|u| (name_of(&u.name), u))
                .collect(),
            roles: state
                .roles
                .into_iter()
                .map(|r| (name_of(&r.name), r))
                .collect(),
        }
    }

    /// The record to persist.
    pub fn to_state(&self) -> AuthState {
        AuthState {
            enabled: self.enabled,
            revision: self.revision,
            users: self.users.values().cloned().collect(),
            roles: self.roles.values().cloned().collect(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// etcd's auth revision: bumped by every change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Applies one committed change. `Ok` with [`TokenEffect`] on success; a
    /// refused change leaves the store as it was.
    pub fn apply(&mut self, op: Op) -> Result<(AuthApplied, TokenEffect), AuthError> {
        let mut effect = TokenEffect::None;
        match op {
            Op::Enable(_) => {
                if self.enabled {
                    return Ok((AuthApplied::Done, TokenEffect::None));
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
                effect = TokenEffect::ClearAll;
            }
            Op::Disable(_) => {
                if !self.enabled {
                    return Ok((AuthApplied::Done, TokenEffect::None));
                }
                self.enabled = false;
                effect = TokenEffect::ClearAll;
            }
            Op::Authenticate(g) => {
                if !self.enabled {
                    return Err(AuthError::AuthNotEnabled);
                }
                if !self.users.contains_key(&g.name) {
                    return Err(AuthError::AuthFailed);
                }
                // Handing out a token changes nothing replicated: no new revision.
                return Ok((
                    AuthApplied::Token(g.token.clone()),
                    TokenEffect::Grant {
                        user: g.name,
                        token: g.token,
                    },
                ));
            }
            Op::UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(&r.name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
                let user = User {
                    name: r.name.clone().into_bytes(),
                    password: if no_password {
                        Vec::new()
                    } else {
                        r.hashed_password.into_bytes()
                    },
                    roles: Vec::new(),
                    options: Some(UserAddOptions { no_password }),
                };
                self.users.insert(r.name, user);
            }
            Op::UserDelete(r) => {
                if self.enabled && r.name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if self.users.remove(&r.name).is_none() {
                    return Err(AuthError::UserNotFound);
                }
                effect = TokenEffect::InvalidateUser(r.name);
            }
            Op::UserChangePassword(r) => {
                let user = self.users.get_mut(&r.name).ok_or(AuthError::UserNotFound)?;
                user.password = r.hashed_password.into_bytes();
                effect = TokenEffect::InvalidateUser(r.name);
            }
            Op::UserGrantRole(r) => {
                if !self.users.contains_key(&r.user) {
                    return Err(AuthError::UserNotFound);
                }
                if r.role != ROOT && !self.roles.contains_key(&r.role) {
                    return Err(AuthError::RoleNotFound);
                }
                let user = self.users.get_mut(&r.user).ok_or(AuthError::UserNotFound)?;
                match user.roles.binary_search(&r.role) {
                    Ok(_) => return Ok((AuthApplied::Done, TokenEffect::None)),
                    Err(at) => user.roles.insert(at, r.role),
                }
            }
            Op::UserRevokeRole(r) => {
                if self.enabled && r.name == ROOT && r.role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let user = self.users.get_mut(&r.name).ok_or(AuthError::UserNotFound)?;
                let at = user
                    .roles
                    .iter()
                    .position(|x| *x == r.role)
                    .ok_or(AuthError::RoleNotGranted)?;
                user.roles.remove(at);
            }
            Op::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(&r.name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                let role = Role {
                    name: r.name.clone().into_bytes(),
                    key_permission: Vec::new(),
                };
                self.roles.insert(r.name, role);
            }
            Op::RoleDelete(r) => {
                if self.enabled && r.role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if self.roles.remove(&r.role).is_none() {
                    return Err(AuthError::RoleNotFound);
                }
                for user in self.users.values_mut() {
                    user.roles.retain(|x| *x != r.role);
                }
            }
            Op::RoleGrantPermission(r) => {
                let perm = r.perm.ok_or(AuthError::PermissionNotGiven)?;
                let role = self.roles.get_mut(&r.name).ok_or(AuthError::RoleNotFound)?;
                let same = role
                    .key_permission
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.range_end == perm.range_end);
                match same {
                    Some(p) => p.perm_type = perm.perm_type,
                    None => {
                        let at = role.key_permission.partition_point(|p| {
                            (&p.key, &p.range_end) < (&perm.key, &perm.range_end)
                        });
                        role.key_permission.insert(at, perm);
                    }
                }
            }
            Op::RoleRevokePermission(r) => {
                let role = self.roles.get_mut(&r.role).ok_or(AuthError::RoleNotFound)?;
                let at = role
                    .key_permission
                    .iter()
                    .position(|p| p.key == r.key && p.range_end == r.range_end)
                    .ok_or(AuthError::PermissionNotGranted)?;
                role.key_permission.remove(at);
            }
        }
        self.revision += 1;
        Ok((AuthApplied::Done, effect))
    }

    /// A user's record.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Sorted user names.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Sorted role names.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// A role's permissions.
    pub fn role_perms(&self, name: &str) -> Result<Vec<Permission>, AuthError> {
        self.roles
            .get(name)
            .map(|r| r.key_permission.clone())
            .ok_or(AuthError::RoleNotFound)
    }

    fn has_root_role(user: &User) -> bool {
        user.roles.iter().any(|r| r == ROOT)
    }

    /// etcd's `IsAdminPermitted`: anyone while auth is disabled, else a user
    /// holding the root role.
    pub fn check_admin(&self, user: &str) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let u = self.users.get(user).ok_or(AuthError::UserNotFound)?;
        if Self::has_root_role(u) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// etcd's `isOpPermitted`: whether `user` may `access` every key of
    /// `[key, range_end)`.
    pub fn check_range(
        &self,
        user: &str,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let u = self.users.get(user).ok_or(AuthError::PermissionDenied)?;
        if Self::has_root_role(u) {
            return Ok(());
        }
        let perms = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.key_permission.iter())
            .filter(|p| access.granted_by(p.perm_type));
        if covers(perms, key, range_end) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// A put: write on the key, and read too when it returns the previous value.
    pub fn check_put(&self, user: &str, p: &PutRequest) -> Result<(), AuthError> {
        self.check_range(user, &p.key, &[], Access::Write)?;
        if p.prev_kv {
            self.check_range(user, &p.key, &[], Access::Read)?;
        }
        Ok(())
    }

    /// A delete: write on the range, and read too when it returns what it deleted.
    pub fn check_delete(&self, user: &str, d: &DeleteRangeRequest) -> Result<(), AuthError> {
        self.check_range(user, &d.key, &d.range_end, Access::Write)?;
        if d.prev_kv {
            self.check_range(user, &d.key, &d.range_end, Access::Read)?;
        }
        Ok(())
    }

    /// A txn: read on every compared key, and every operation of both branches
    /// (either may run), nested txns included (etcd's `checkTxnAuth`).
    pub fn check_txn(&self, user: &str, txn: &TxnRequest) -> Result<(), AuthError> {
        for c in &txn.compare {
            self.check_range(user, &c.key, &c.range_end, Access::Read)?;
        }
        for op in txn.success.iter().chain(txn.failure.iter()) {
            match &op.request {
                Some(TxnOp::RequestRange(r)) => {
                    self.check_range(user, &r.key, &r.range_end, Access::Read)?
                }
                Some(TxnOp::RequestPut(p)) => self.check_put(user, p)?,
                Some(TxnOp::RequestDeleteRange(d)) => self.check_delete(user, d)?,
                Some(TxnOp::RequestTxn(t)) => self.check_txn(user, t)?,
                None => {}
            }
        }
        Ok(())
    }

    /// The check of a proposed request, repeated when it is applied: writes
    /// against the keys they touch, auth changes against the root role. Other
    /// requests are checked by the member that received them only.
    pub fn check_proposal(&self, user: &str, op: &Proposal) -> Result<(), AuthError> {
        match op {
            Proposal::Put(p) => self.check_put(user, p),
            Proposal::DeleteRange(d) => self.check_delete(user, d),
            Proposal::Txn(t) => self.check_txn(user, t),
            Proposal::Auth(a) if !matches!(a.op, Some(Op::Authenticate(_))) => {
                self.check_admin(user)
            }
            _ => Ok(()),
        }
    }

    /// Whether `user` holds `role` (a user may read its own roles).
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::authpb::permission::Type as PermType;
    use crate::pb::etcdserverpb::*;

    fn user_add(name: &str) -> Op {
        Op::UserAdd(AuthUserAddRequest {
            name: name.into(),
            hashed_password: "h".into(),
            ..Default::default()
        })
    }

    fn grant(user: &str, role: &str) -> Op {
        Op::UserGrantRole(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
    }

    fn enabled_store() -> AuthStore {
        let mut s = AuthStore::default();
        s.apply(user_add("root")).unwrap();
        s.apply(Op::RoleAdd(AuthRoleAddRequest {
            name: "root".into(),
        }))
        .unwrap();
        s.apply(grant("root", "root")).unwrap();
        s.apply(Op::Enable(AuthEnableRequest {})).unwrap();
        s
    }

    #[test]
    fn enabling_needs_a_root_user_with_the_root_role() {
        let mut s = AuthStore::default();
        assert_eq!(
            s.apply(Op::Enable(AuthEnableRequest {})).unwrap_err(),
            AuthError::RootUserNotExist
        );
        s.apply(user_add("root")).unwrap();
        assert_eq!(
            s.apply(Op::Enable(AuthEnableRequest {})).unwrap_err(),
            AuthError::RootRoleNotExist
        );
        s.apply(Op::RoleAdd(AuthRoleAddRequest {
            name: "root".into(),
        }))
        .unwrap();
        s.apply(grant("root", "root")).unwrap();
        s.apply(Op::Enable(AuthEnableRequest {})).unwrap();
        assert!(s.enabled());
    }

    #[test]
    fn root_cannot_be_deleted_or_demoted_while_auth_is_enabled() {
        let mut s = enabled_store();
        let del = Op::UserDelete(AuthUserDeleteRequest {
            name: "root".into(),
        });
        assert_eq!(s.apply(del).unwrap_err(), AuthError::InvalidAuthMgmt);
        let revoke = Op::UserRevokeRole(AuthUserRevokeRoleRequest {
            name: "root".into(),
            role: "root".into(),
        });
        assert_eq!(s.apply(revoke).unwrap_err(), AuthError::InvalidAuthMgmt);
    }

    #[test]
    fn duplicate_and_missing_names_get_etcds_errors() {
        let mut s = AuthStore::default();
        s.apply(user_add("u")).unwrap();
        assert_eq!(
            s.apply(user_add("u")).unwrap_err(),
            AuthError::UserAlreadyExist
        );
        assert_eq!(s.apply(user_add("")).unwrap_err(), AuthError::UserEmpty);
        assert_eq!(
            s.apply(grant("u", "nope")).unwrap_err(),
            AuthError::RoleNotFound
        );
        assert_eq!(
            s.apply(grant("x", "root")).unwrap_err(),
            AuthError::UserNotFound
        );
        let add = |n: &str| Op::RoleAdd(AuthRoleAddRequest { name: n.into() });
        s.apply(add("r")).unwrap();
        assert_eq!(s.apply(add("r")).unwrap_err(), AuthError::RoleAlreadyExist);
        assert_eq!(s.apply(add("")).unwrap_err(), AuthError::RoleEmpty);
    }

    #[test]
    fn a_role_on_a_prefix_permits_only_keys_under_it() {
        let mut s = enabled_store();
        s.apply(user_add("alice")).unwrap();
        s.apply(Op::RoleAdd(AuthRoleAddRequest { name: "app".into() }))
            .unwrap();
        s.apply(Op::RoleGrantPermission(AuthRoleGrantPermissionRequest {
            name: "app".into(),
            perm: Some(Permission {
                perm_type: PermType::Readwrite as i32,
                key: b"app/".to_vec(),
                range_end: b"app0".to_vec(),
            }),
        }))
        .unwrap();
        s.apply(grant("alice", "app")).unwrap();
        assert!(s.check_range("alice", b"app/x", b"", Access::Write).is_ok());
        assert_eq!(
            s.check_range("alice", b"other", b"", Access::Read)
                .unwrap_err(),
            AuthError::PermissionDenied
        );
        assert_eq!(
            s.check_range("", b"app/x", b"", Access::Read).unwrap_err(),
            AuthError::UserEmpty
        );
        assert_eq!(
            s.check_admin("alice").unwrap_err(),
            AuthError::PermissionDenied
        );
        assert!(s.check_admin("root").is_ok());
        assert!(s.check_range("root", b"", b"\0", Access::Write).is_ok());
    }

    #[test]
    fn deleting_a_role_takes_it_from_every_user() {
        let mut s = AuthStore::default();
        s.apply(user_add("u")).unwrap();
        s.apply(Op::RoleAdd(AuthRoleAddRequest { name: "r".into() }))
            .unwrap();
        s.apply(grant("u", "r")).unwrap();
        s.apply(Op::RoleDelete(AuthRoleDeleteRequest { role: "r".into() }))
            .unwrap();
        assert!(s.user("u").unwrap().roles.is_empty());
    }

    #[test]
    fn the_store_round_trips_through_its_persisted_record() {
        let s = enabled_store();
        let back = AuthStore::from_state(s.to_state());
        assert!(back.enabled());
        assert_eq!(back.revision(), s.revision());
        assert!(back.check_admin("root").is_ok());
    }
}
