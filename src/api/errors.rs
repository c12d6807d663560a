//! etcd's client-facing errors: the exact strings and gRPC codes of etcd's
//! `rpctypes`, so clients that match on them (clientv3's `rpctypes.Err*`,
//! `etcdctl`'s messages, retry logic keyed on codes) behave as with etcd.

use tonic::{Code, Status};

use crate::apply::ApplyError;
use crate::auth::AuthError;
use crate::membership::MembershipError;
use crate::mvcc::MvccError;
use crate::raft::RaftError;

pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
pub const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
pub const LEASE_EXISTS: &str = "etcdserver: lease already exists";
pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
pub const NO_LEADER: &str = "etcdserver: no leader";
pub const TIMEOUT: &str = "etcdserver: request timed out";
pub const TIMEOUT_DUE_TO_LEADER_FAIL: &str =
    "etcdserver: request timed out, possibly due to previous leader failure";
pub const TIMEOUT_LEADER_TRANSFER: &str =
    "etcdserver: request timed out, leader transfer took too long";
pub const UNHEALTHY: &str = "etcdserver: unhealthy cluster";
pub const LEADER_CHANGED: &str = "etcdserver: leader changed";
pub const STOPPED: &str = "etcdserver: server stopped";
pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
pub const MEMBER_BAD_URLS: &str = "etcdserver: given member URLs are invalid";
pub const BAD_LEADER_TRANSFEREE: &str = "etcdserver: bad leader transferee";
pub const LEARNER_NOT_SUPPORTED: &str = "etcdserver: rpc not supported for learner";
pub const NOT_CAPABLE: &str = "etcdserver: not capable";
pub const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

pub fn empty_key() -> Status {
    Status::new(Code::InvalidArgument, EMPTY_KEY)
}
pub fn too_many_ops() -> Status {
    Status::new(Code::InvalidArgument, TOO_MANY_OPS)
}
pub fn key_not_found() -> Status {
    Status::new(Code::InvalidArgument, KEY_NOT_FOUND)
}
pub fn duplicate_key() -> Status {
    Status::new(Code::InvalidArgument, DUPLICATE_KEY)
}
pub fn value_provided() -> Status {
    Status::new(Code::InvalidArgument, VALUE_PROVIDED)
}
pub fn lease_provided() -> Status {
    Status::new(Code::InvalidArgument, LEASE_PROVIDED)
}
pub fn request_too_large() -> Status {
    Status::new(Code::InvalidArgument, REQUEST_TOO_LARGE)
}
pub fn no_leader() -> Status {
    Status::new(Code::Unavailable, NO_LEADER)
}
pub fn timeout() -> Status {
    Status::new(Code::Unavailable, TIMEOUT)
}
pub fn timeout_leader_transfer() -> Status {
    Status::new(Code::Unavailable, TIMEOUT_LEADER_TRANSFER)
}
pub fn timeout_due_to_leader_fail() -> Status {
    Status::new(Code::Unavailable, TIMEOUT_DUE_TO_LEADER_FAIL)
}
pub fn stopped() -> Status {
    Status::new(Code::Unavailable, STOPPED)
}
pub fn not_capable() -> Status {
    Status::new(Code::Unavailable, NOT_CAPABLE)
}
pub fn not_supported_for_learner() -> Status {
    Status::new(Code::Unavailable, LEARNER_NOT_SUPPORTED)
}
pub fn no_space() -> Status {
    Status::new(Code::ResourceExhausted, NO_SPACE)
}
pub fn member_not_found() -> Status {
    Status::new(Code::NotFound, MEMBER_NOT_FOUND)
}
pub fn bad_leader_transferee() -> Status {
    Status::new(Code::FailedPrecondition, BAD_LEADER_TRANSFEREE)
}

/// The start of tonic's message for a request message over the decoding limit.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// A status raised by the gRPC transport (reading a request) as grpc-go, and
/// so etcd, raises it: a message over the size limit is `ResourceExhausted`
/// with grpc-go's message, where tonic says `OutOfRange` (clients retry or
/// not on the code). Other statuses are returned as they are.
pub fn from_transport(s: Status) -> Status {
    if s.code() != Code::OutOfRange {
        return s;
    }
    let Some(rest) = s.message().strip_prefix(TONIC_TOO_LARGE) else {
        return s;
    };
    let numbers: Vec<&str> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .collect();
    let message = match numbers.as_slice() {
        [found, limit] => format!("grpc: received message larger than max ({found} vs. {limit})"),
        _ => "grpc: received message larger than max".to_string(),
    };
    Status::new(Code::ResourceExhausted, message)
}

/// An MVCC error as etcd reports it.
pub fn from_mvcc(e: MvccError) -> Status {
    match e {
        MvccError::Compacted => Status::new(Code::OutOfRange, COMPACTED),
        MvccError::FutureRevision => Status::new(Code::OutOfRange, FUTURE_REV),
        MvccError::KeyNotFound => Status::new(Code::InvalidArgument, KEY_NOT_FOUND),
        // Clients fail over to another member on `Unavailable`.
        MvccError::Failed => Status::new(
            Code::Unavailable,
            format!("etcdserver: {e_failed}", e_failed = MvccError::Failed),
        ),
        other => Status::new(Code::Internal, format!("etcdserver: {other}")),
    }
}

/// An apply-time error as etcd reports it.
pub fn from_apply(e: ApplyError) -> Status {
    match e {
        ApplyError::Mvcc(m) => from_mvcc(m),
        ApplyError::KeyNotFound => Status::new(Code::InvalidArgument, KEY_NOT_FOUND),
        ApplyError::LeaseNotFound => Status::new(Code::NotFound, LEASE_NOT_FOUND),
        ApplyError::LeaseExists => Status::new(Code::FailedPrecondition, LEASE_EXISTS),
        ApplyError::Membership(m) => from_membership(m),
        ApplyError::Auth(a) => from_auth(a),
    }
}

/// A refused configuration change as etcd's gRPC API reports it.
pub fn from_membership(e: MembershipError) -> Status {
    let code = match e {
        MembershipError::IdRemoved | MembershipError::IdNotFound => Code::NotFound,
        MembershipError::IdExists
        | MembershipError::PeerUrlExists
        | MembershipError::NotLearner
        | MembershipError::TooManyLearners => Code::FailedPrecondition,
    };
    Status::new(code, format!("etcdserver: {e}"))
}

/// An auth error with etcd's gRPC code (its message is already etcd's).
pub fn from_auth(e: AuthError) -> Status {
    let code = match e {
        AuthError::UserEmpty
        | AuthError::RoleEmpty
        | AuthError::AuthFailed
        | AuthError::InvalidAuthMgmt
        | AuthError::PermissionNotGiven => Code::InvalidArgument,
        AuthError::PermissionDenied => Code::PermissionDenied,
        AuthError::InvalidAuthToken => Code::Unauthenticated,
        AuthError::Hash(_) => Code::Internal,
        AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::UserAlreadyExist
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExist
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::AuthNotEnabled => Code::FailedPrecondition,
    };
    Status::new(code, e.to_string())
}

/// A consensus-layer failure as etcd reports it.
pub fn from_raft(e: RaftError) -> Status {
    match e {
        RaftError::Stopped => stopped(),
        RaftError::LeaderChanged => Status::new(Code::Unavailable, LEADER_CHANGED),
        RaftError::Raft(raft::Error::ProposalDropped) => no_leader(),
        other => Status::new(Code::Internal, format!("etcdserver: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_errors_carry_etcds_strings_and_codes() {
        let s = from_auth(AuthError::PermissionDenied);
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(s.message(), "etcdserver: permission denied");
        let s = from_auth(AuthError::UserEmpty);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "etcdserver: user name is empty");
        let s = from_auth(AuthError::InvalidAuthToken);
        assert_eq!(s.code(), Code::Unauthenticated);
        assert_eq!(s.message(), "etcdserver: invalid auth token");
        let s = from_auth(AuthError::RootRoleNotExist);
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.message(), "etcdserver: root user does not have root role");
    }

    #[test]
    fn an_oversized_message_is_refused_as_grpc_go_refuses_it() {
        let tonic = Status::out_of_range(
            "Error, decoded message length too large: found 3145740 bytes, the limit is: 2097152 bytes",
        );
        let s = from_transport(tonic);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.message(),
            "grpc: received message larger than max (3145740 vs. 2097152)"
        );
        // Anything else passes unchanged, etcd's own OutOfRange errors included.
        let s = from_transport(from_mvcc(MvccError::FutureRevision));
        assert_eq!((s.code(), s.message()), (Code::OutOfRange, FUTURE_REV));
        let s = from_transport(Status::internal("failed to decode Protobuf message"));
        assert_eq!(s.code(), Code::Internal);
    }

    #[test]
    fn mvcc_errors_carry_etcds_strings_and_codes() {
        let s = from_mvcc(MvccError::Compacted);
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = from_mvcc(MvccError::FutureRevision);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision is a future revision"
        );
        // A member whose store failed sends clients to another member.
        assert_eq!(from_mvcc(MvccError::Failed).code(), Code::Unavailable);
    }
}
