//! The Auth service: enable/disable auth, authenticate, and manage users,
//! roles and permissions, as etcd's `etcdserverpb.Auth`.
//!
//! Changes are proposals (an `lcraftpb::AuthRequest`) applied by every member
//! ([`crate::auth::AuthStore::apply`]); passwords are hashed (bcrypt, at
//! `--bcrypt-cost`) here, before proposing, so the log never holds a clear-text
//! password. `Authenticate` checks the password here too, then proposes the
//! new token so every member accepts it. Reads answer from this member's
//! applied store after a ReadIndex barrier. Who may do what follows etcd: every
//! change, list and status needs the root role once auth is enabled; a user may
//! read itself and the roles it holds.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::access::{Caller, Credentials};
use super::errors::from_auth;
use super::Core;
use crate::apply::Applied;
use crate::auth::{AuthApplied, AuthError, Tokens};
use crate::pb::etcdserverpb::auth_server::Auth;
use crate::pb::etcdserverpb::*;
use crate::pb::lcraftpb::auth_request::Op as AuthOp;
use crate::pb::lcraftpb::request::Op;
use crate::pb::lcraftpb::{AuthRequest, AuthTokenGrant};

/// The Auth service of one member.
pub struct AuthService {
    core: Arc<Core>,
}

impl AuthService {
    pub fn new(core: Arc<Core>) -> Self {
        AuthService { core }
    }

    /// Proposes one auth change by `caller` (`None`: Authenticate, which
    /// anyone may ask for); the store revision it applied at.
    async fn change(
        &self,
        op: AuthOp,
        caller: Option<&Caller>,
    ) -> Result<(AuthApplied, i64), Status> {
        let req = Op::Auth(AuthRequest { op: Some(op) });
        let applied = match caller {
            Some(caller) => self.core.propose_as(req, caller).await?,
            None => self.core.propose(req).await?,
        };
        match applied {
            (Applied::Auth(applied), rev) => Ok((applied, rev)),
            _ => Err(Status::internal("unexpected apply result")),
        }
    }

    /// Proposes an admin-only change and answers with just a header.
    async fn admin_change<T>(
        &self,
        req: &Request<T>,
        op: AuthOp,
    ) -> Result<Option<ResponseHeader>, Status> {
        let caller = self.core.authorize_admin(req)?;
        let (_, rev) = self.change(op, Some(&caller)).await?;
        Ok(self.core.header(rev))
    }

    /// A header as of now, after a linearizable barrier.
    async fn read_header(&self) -> Result<Option<ResponseHeader>, Status> {
        self.core.read_barrier().await?;
        Ok(self.core.header(self.core.store.current_revision()))
    }

    /// bcrypt off the async threads.
    async fn hash(&self, password: String) -> Result<String, Status> {
        let auth = self.core.auth.clone();
        tokio::task::spawn_blocking(move || auth.hash_password(&password))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(from_auth)
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let header = self
            .admin_change(&request, AuthOp::Enable(AuthEnableRequest {}))
            .await?;
        tracing::info!("enabled authentication");
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let header = self
            .admin_change(&request, AuthOp::Disable(AuthDisableRequest {}))
            .await?;
        tracing::info!("disabled authentication");
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        // etcd 3.5 counts AuthStatus among the admin requests.
        self.core.authorize_admin(&request)?;
        let header = self.read_header().await?;
        let store = self.core.auth.store();
        Ok(Response::new(AuthStatusResponse {
            header,
            enabled: store.enabled(),
            auth_revision: store.revision(),
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let req = request.into_inner();
        if !self.core.auth.enabled() {
            return Err(from_auth(AuthError::AuthNotEnabled));
        }
        let auth = self.core.auth.clone();
        let (name, password) = (req.name.clone(), req.password);
        tokio::task::spawn_blocking(move || auth.check_password(&name, &password))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(from_auth)?;
        let token = Tokens::generate(self.core.ids.next());
        let grant = AuthTokenGrant {
            name: req.name,
            token,
        };
        match self.change(AuthOp::Authenticate(grant), None).await? {
            (AuthApplied::Token(token), rev) => Ok(Response::new(AuthenticateResponse {
                header: self.core.header(rev),
                token,
            })),
            _ => Err(Status::internal("unexpected apply result")),
        }
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let caller = self.core.authorize_admin(&request)?;
        let mut req = request.into_inner();
        if req.name.is_empty() {
            return Err(from_auth(AuthError::UserEmpty));
        }
        let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
        if !no_password && req.hashed_password.is_empty() {
            req.hashed_password = self.hash(std::mem::take(&mut req.password)).await?;
        }
        req.password.clear();
        let (_, rev) = self.change(AuthOp::UserAdd(req), Some(&caller)).await?;
        Ok(Response::new(AuthUserAddResponse {
            header: self.core.header(rev),
        }))
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let caller = self.core.caller(&Credentials::of(&request))?;
        let req = request.into_inner();
        let header = self.read_header().await?;
        let store = self.core.auth.store();
        if let Err(e) = store.check_admin(&caller.user) {
            if caller.user.is_empty() || caller.user != req.name {
                return Err(from_auth(e));
            }
        }
        let user = store
            .user(&req.name)
            .ok_or_else(|| from_auth(AuthError::UserNotFound))?;
        Ok(Response::new(AuthUserGetResponse {
            header,
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.core.authorize_admin(&request)?;
        let header = self.read_header().await?;
        Ok(Response::new(AuthUserListResponse {
            header,
            users: self.core.auth.store().user_names(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let op = AuthOp::UserDelete(request.get_ref().clone());
        let header = self.admin_change(&request, op).await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let caller = self.core.authorize_admin(&request)?;
        let mut req = request.into_inner();
        if self.core.auth.store().user(&req.name).is_none() {
            return Err(from_auth(AuthError::UserNotFound));
        }
        if req.hashed_password.is_empty() {
            req.hashed_password = self.hash(std::mem::take(&mut req.password)).await?;
        }
        req.password.clear();
        let (_, rev) = self
            .change(AuthOp::UserChangePassword(req), Some(&caller))
            .await?;
        Ok(Response::new(AuthUserChangePasswordResponse {
            header: self.core.header(rev),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let op = AuthOp::UserGrantRole(request.get_ref().clone());
        let header = self.admin_change(&request, op).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let op = AuthOp::UserRevokeRole(request.get_ref().clone());
        let header = self.admin_change(&request, op).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let op = AuthOp::RoleAdd(request.get_ref().clone());
        let header = self.admin_change(&request, op).await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let caller = self.core.caller(&Credentials::of(&request))?;
        let req = request.into_inner();
        let header = self.read_header().await?;
        let store = self.core.auth.store();
        if let Err(e) = store.check_admin(&caller.user) {
            if caller.user.is_empty() || !store.has_role(&caller.user, &req.role) {
                return Err(from_auth(e));
            }
        }
        let perm = store.role_perms(&req.role).map_err(from_auth)?;
        Ok(Response::new(AuthRoleGetResponse { header, perm }))
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.core.authorize_admin(&request)?;
        let header = self.read_header().await?;
        Ok(Response::new(AuthRoleListResponse {
            header,
            roles: self.core.auth.store().role_names(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let op = AuthOp::RoleDelete(request.get_ref().clone());
        let header = self.admin_change(&request, op).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let op = AuthOp::RoleGrantPermission(request.get_ref().clone());
        let header = self.admin_change(&request, op).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let op = AuthOp::RoleRevokePermission(request.get_ref().clone());
        let header = self.admin_change(&request, op).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}
