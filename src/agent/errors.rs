//! The API's errors: one JSON shape (`{"kind", "message"}`, plus the failed command and its
//! stderr for LVM failures), a stable `kind` per cause and the HTTP status that fits. Engine
//! errors are mapped in ONE function, [`from_engine`], whose match has no catch-all: a new
//! engine error must be given its kind and status here.

use super::domains::OpenError;
use crate::error::Error;
use crate::lock::{LeaseError, LockError};
use crate::lvm::{Failure, LvmError};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An API error as it goes to the client.
#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    /// The failed LVM (or qemu-img) command, when one failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
}

/// The kind of the error a response carries, for the metrics (a response extension).
#[derive(Debug, Clone, Copy)]
pub struct ErrorKind(pub &'static str);

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            command: None,
            stderr: None,
        }
    }

    /// Bad input in the request itself (body, path, query).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn with_failure(mut self, f: Option<&Failure>) -> ApiError {
        if let Some(f) = f {
            self.command = Some(f.argv.clone());
            self.stderr = Some(f.stderr.clone());
        }
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = ErrorKind(self.kind);
        let mut r = (self.status, axum::Json(&self)).into_response();
        r.extensions_mut().insert(kind);
        r
    }
}

impl From<OpenError> for ApiError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::NotServed(vg) => ApiError::new(
                StatusCode::NOT_FOUND,
                "domain_not_served",
                format!("domain {vg} is not served by this agent"),
            ),
            OpenError::BadName(e) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", e.to_string())
            }
            OpenError::Engine(e) => from_engine(&e),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        from_engine(&e)
    }
}

/// The failed LVM command inside an engine error, when there is one.
fn lvm_failure(e: &Error) -> Option<&Failure> {
    match e {
        Error::Lvm(l) | Error::WipeActivation { source: l } => l.failure(),
        Error::NoSpace { source, .. } => source.failure(),
        Error::RollbackFailed { original, .. }
        | Error::OutcomeUnknown { original, .. }
        | Error::LeftForGc { original } => lvm_failure(original),
        _ => None,
    }
}

/// THE mapping of engine errors to API errors: kind and status.
pub fn from_engine(e: &Error) -> ApiError {
    use StatusCode as S;
    let (status, kind) = match e {
        Error::InvalidInput(_) => (S::BAD_REQUEST, "invalid_input"),
        Error::VgNotFound { .. } => (S::NOT_FOUND, "domain_not_found"),
        Error::NotADomain { .. } => (S::NOT_FOUND, "not_a_domain"),
        Error::VolumeNotFound { .. } => (S::NOT_FOUND, "volume_not_found"),
        Error::ImageNotFound { .. } => (S::NOT_FOUND, "image_not_found"),
        Error::AlreadyDomain { .. } => (S::CONFLICT, "already_a_domain"),
        Error::VgNotEmpty { .. } => (S::CONFLICT, "vg_not_empty"),
        Error::HostsJoined { .. } => (S::CONFLICT, "hosts_joined"),
        Error::DomainNotEmpty { .. } => (S::CONFLICT, "domain_not_empty"),
        Error::VolumeExists { .. } => (S::CONFLICT, "volume_exists"),
        Error::ImageExists { .. } => (S::CONFLICT, "image_exists"),
        Error::NotALeaf { .. } => (S::CONFLICT, "not_a_leaf"),
        Error::PendingMark { .. } => (S::CONFLICT, "pending_mark"),
        Error::Illegal { .. } => (S::CONFLICT, "illegal"),
        Error::IllegalMember { .. } => (S::CONFLICT, "illegal_member"),
        Error::InUse { .. } => (S::CONFLICT, "in_use"),
        Error::NeedsAgent { .. } => (S::CONFLICT, "needs_agent"),
        Error::ResizeInUse { .. } => (S::LOCKED, "prepared"),
        Error::WrongGeneration { .. } => (S::CONFLICT, "wrong_generation"),
        Error::WrongLockManager { .. } => (S::CONFLICT, "wrong_lock_manager"),
        Error::UnsupportedFormat { .. } => (S::CONFLICT, "unsupported_format"),
        Error::Unclean { .. } => (S::CONFLICT, "unclean"),
        Error::NoFreeSlot { .. } => (S::INSUFFICIENT_STORAGE, "no_free_slot"),
        Error::NoSpace { .. } => (S::INSUFFICIENT_STORAGE, "no_space"),
        Error::Lock(l) => match l {
            LockError::Busy { .. } => (S::CONFLICT, "busy"),
            LockError::NotJoined { .. } => (S::CONFLICT, "not_joined"),
            LockError::NoHosts { .. } => (S::BAD_REQUEST, "invalid_input"),
            LockError::HostIdOutOfRange { .. } | LockError::NameTooLong { .. } => {
                (S::BAD_REQUEST, "invalid_input")
            }
            LockError::JoinedAs { .. } => (S::CONFLICT, "joined_as"),
            LockError::SameLockspaceElsewhere { .. } => (S::CONFLICT, "same_lockspace_elsewhere"),
            LockError::Io { .. } | LockError::Sanlock { .. } | LockError::HostIdFile { .. } => {
                (S::INTERNAL_SERVER_ERROR, "lock")
            }
        },
        Error::Lease(l) => match l {
            LeaseError::Held { .. } => (S::LOCKED, "lease_held"),
            LeaseError::Prepared { .. } => (S::LOCKED, "prepared"),
            LeaseError::NoLockspace { .. } => (S::CONFLICT, "not_joined"),
            LeaseError::NoDaemon { .. } => (S::SERVICE_UNAVAILABLE, "no_lock_daemon"),
            LeaseError::Io { .. } | LeaseError::Sanlock { .. } => {
                (S::INTERNAL_SERVER_ERROR, "lease")
            }
        },
        Error::Lvm(l) => match l {
            LvmError::Timeout(_) => (S::INTERNAL_SERVER_ERROR, "lvm_timeout"),
            _ => (S::INTERNAL_SERVER_ERROR, "lvm"),
        },
        Error::BadDomainTag { .. } => (S::INTERNAL_SERVER_ERROR, "bad_domain_tag"),
        Error::Metadata { .. } | Error::Slot(_) => (S::INTERNAL_SERVER_ERROR, "metadata"),
        Error::BrokenChain { .. } => (S::INTERNAL_SERVER_ERROR, "broken_chain"),
        Error::Qemu(_) => (S::INTERNAL_SERVER_ERROR, "qemu"),
        Error::Io { .. } => (S::INTERNAL_SERVER_ERROR, "io"),
        Error::RollbackFailed { .. } => (S::INTERNAL_SERVER_ERROR, "rollback_failed"),
        Error::Wipe { .. } | Error::WipeShort { .. } | Error::WipeActivation { .. } => {
            (S::INTERNAL_SERVER_ERROR, "wipe")
        }
        Error::OutcomeUnknown { .. } => (S::INTERNAL_SERVER_ERROR, "outcome_unknown"),
        Error::LeftForGc { .. } => (S::INTERNAL_SERVER_ERROR, "left_for_gc"),
        Error::OutputClosed => (S::INTERNAL_SERVER_ERROR, "internal"),
    };
    let mut api = ApiError::new(status, kind, e.to_string()).with_failure(lvm_failure(e));
    if let Error::Qemu(crate::qemu::QemuError::Failed { argv, stderr, .. }) = e {
        api.command = Some(argv.clone());
        api.stderr = Some(stderr.clone());
    }
    api
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ids::VolumeId;

    #[test]
    fn engine_errors_get_their_kind_and_status() {
        let id = VolumeId::random();
        let cases = [
            (Error::InvalidInput("x".into()), 400, "invalid_input"),
            (
                Error::VolumeNotFound {
                    vg: "vg".into(),
                    id,
                },
                404,
                "volume_not_found",
            ),
            (
                Error::NotALeaf {
                    id,
                    what: "w".into(),
                },
                409,
                "not_a_leaf",
            ),
            (
                Error::Lock(LockError::Busy {
                    vg: "vg".into(),
                    waited: std::time::Duration::from_secs(1),
                }),
                409,
                "busy",
            ),
            (
                Error::Lease(LeaseError::Held {
                    volume: id,
                    holder: "h".into(),
                }),
                423,
                "lease_held",
            ),
        ];
        for (e, status, kind) in cases {
            let api = from_engine(&e);
            assert_eq!((api.status.as_u16(), api.kind), (status, kind), "{e}");
            assert_eq!(api.message, e.to_string());
        }
    }

    #[test]
    fn lvm_failures_carry_the_command_and_its_stderr() {
        let failure = Failure {
            argv: "lvm lvcreate vg".into(),
            code: Some(5),
            stderr: "  boom\n".into(),
        };
        let e = Error::RollbackFailed {
            original: Box::new(Error::Lvm(LvmError::Failed {
                failure: failure.clone(),
            })),
            rollback: Box::new(Error::InvalidInput("r".into())),
        };
        let api = from_engine(&e);
        assert_eq!((api.status.as_u16(), api.kind), (500, "rollback_failed"));
        assert_eq!(api.command.as_deref(), Some("lvm lvcreate vg"));
        assert_eq!(api.stderr.as_deref(), Some("  boom\n"));
        let json = serde_json::to_value(&api).unwrap_or_default();
        assert_eq!(json["kind"], "rollback_failed");
        assert!(json.get("status").is_none());
    }
}
