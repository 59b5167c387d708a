//! Who may ask what of a meta replica. Over mutual TLS every connection
//! names its certificate's role and id (`wire::tls`); this module decides
//! which requests and changes each role may send, and ties a chunkserver's
//! registration and reports to the chunkserver its certificate names.
//! Without TLS (a cluster started plaintext) it admits everything but the
//! leader's own housekeeping: whoever reaches the port is trusted.
//!
//! Owns: the role policy. Must not touch: the namespace's permission
//! checks on a caller's uid and groups (`ns::perm`), Raft.

use crate::kv::ReadKv;
use sparefs_proto::msg::{Request, RpcError};
use sparefs_proto::write_kind::Origin;
use sparefs_proto::ChunkserverId;
use sparefs_wire::tls::{Identity, Role};
use std::collections::HashMap;
use std::sync::Mutex;

/// Roles that act for users: their requests carry a caller whose uid the
/// namespace checks.
const USERS: &[Role] = &[Role::Mount, Role::Admin, Role::Iscsi];

/// The roles that may send a change of this origin.
fn roles_for(origin: Origin) -> &'static [Role] {
    match origin {
        Origin::User => USERS,
        Origin::DataMover => &[Role::Mount, Role::Admin, Role::Iscsi, Role::Chunkserver],
        Origin::Admin => &[Role::Admin],
        Origin::Chunkserver => &[Role::Chunkserver],
        Origin::Leader => &[],
    }
}

/// The roles that may send this request. `None`: every role.
fn roles_for_request(req: &Request) -> Option<&'static [Role]> {
    match req {
        Request::Read { .. } | Request::Status | Request::RepairStatus => None,
        Request::Write { op, .. } => Some(roles_for(op.origin())),
        Request::WaitRecall { .. } | Request::KeepAlive { .. } => Some(USERS),
        Request::Raft { .. } | Request::SnapshotPiece { .. } => Some(&[Role::Meta]),
        Request::AddReplica { .. }
        | Request::RemoveReplica { .. }
        | Request::TransferLeader { .. } => Some(&[Role::Admin]),
        Request::Heartbeat(_) | Request::Inventory { .. } => Some(&[Role::Chunkserver]),
        // Answered with an error anyway.
        Request::PutFragment { .. } | Request::GetFragment { .. } => None,
    }
}

/// Whether `who` (the peer's certificate; `None` on a plaintext cluster)
/// may send `req` at all. Refusals say which role would be needed.
pub fn admit(who: Option<Identity>, req: &Request) -> Result<(), RpcError> {
    if let Request::Write { op, .. } = req {
        if op.origin() == Origin::Leader {
            return Err(RpcError::BadRequest(
                "that change is the leader's own housekeeping".into(),
            ));
        }
    }
    let (Some(who), Some(roles)) = (who, roles_for_request(req)) else {
        return Ok(());
    };
    if roles.contains(&who.role) {
        return Ok(());
    }
    let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
    Err(RpcError::Forbidden(format!(
        "{who} may not send that (it needs a certificate of: {})",
        names.join(", ")
    )))
}

/// A Raft message names its sender; over TLS that must be the replica the
/// certificate names.
pub fn admit_raft(who: Option<Identity>, from: u64) -> Result<(), String> {
    match who {
        None => Ok(()),
        Some(Identity {
            role: Role::Meta,
            id,
        }) if id == from => Ok(()),
        Some(who) => Err(format!("{who} sent a raft message as replica {from}")),
    }
}

/// The registration token of the chunkserver a certificate names: the
/// certificate, not a token file, is its identity, so the same certificate
/// always registers as the same chunkserver and no other can.
pub fn registration_token(certificate_id: u64) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(b"sparefs chunkserver certificate");
    h.update(&certificate_id.to_be_bytes());
    let mut token = [0u8; 16];
    token.copy_from_slice(&h.finalize().as_bytes()[..16]);
    token
}

/// Which chunkserver each chunkserver certificate registered as, learned
/// from the registry and kept (registrations never move to another id).
#[derive(Default)]
pub struct ChunkserverCerts {
    known: Mutex<HashMap<u64, ChunkserverId>>,
}

impl ChunkserverCerts {
    /// Checks that a heartbeat or inventory naming `reported` comes from
    /// that chunkserver. `store` is read once per certificate.
    pub fn check_report<R: ReadKv>(
        &self,
        who: Option<Identity>,
        reported: ChunkserverId,
        store: &R,
    ) -> Result<(), RpcError> {
        let Some(who) = who else {
            return Ok(());
        };
        let cached = self.known.lock().ok().and_then(|k| k.get(&who.id).copied());
        let registered = match cached {
            Some(id) => Some(id),
            None => {
                let token = registration_token(who.id);
                let found = crate::ns::registry::chunkserver_with_token(store, &token)
                    .map_err(|e| RpcError::Storage(e.to_string()))?;
                if let (Some(id), Ok(mut k)) = (found, self.known.lock()) {
                    k.insert(who.id, id);
                }
                found
            }
        };
        match registered {
            Some(id) if id == reported => Ok(()),
            Some(id) => Err(RpcError::Forbidden(format!(
                "{who} is chunkserver {} and reported as chunkserver {}",
                id.0, reported.0
            ))),
            // Not registered yet, or this replica has not applied it.
            None => Err(RpcError::Busy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sparefs_proto::namespace::{Caller, WriteOp};

    fn write(op: WriteOp) -> Request {
        Request::Write {
            caller: Caller::ROOT,
            id: sparefs_proto::RequestId {
                client: sparefs_proto::ClientId(1),
                seq: 1,
                ack_below: 0,
            },
            op,
        }
    }

    fn as_role(role: Role) -> Option<Identity> {
        Some(Identity { role, id: 1 })
    }

    #[test]
    fn each_role_does_only_its_job() {
        let drain = write(WriteOp::DrainChunkserver {
            chunkserver: ChunkserverId(1),
            drain: true,
        });
        let register = write(WriteOp::RegisterChunkserver {
            address: "127.0.0.1:1".into(),
            capacity_bytes: 1,
            token: [0; 16],
        });
        let transfer = Request::TransferLeader {
            replica: sparefs_proto::ReplicaId(1),
        };
        for role in [Role::Mount, Role::Iscsi, Role::Chunkserver, Role::Meta] {
            assert!(admit(as_role(role), &drain).is_err(), "{role:?} drains");
            assert!(admit(as_role(role), &transfer).is_err(), "{role:?} moves");
        }
        assert!(admit(as_role(Role::Admin), &drain).is_ok());
        assert!(admit(as_role(Role::Admin), &transfer).is_ok());
        for role in [Role::Mount, Role::Iscsi, Role::Admin, Role::Meta] {
            assert!(
                admit(as_role(role), &register).is_err(),
                "{role:?} gets the cluster key"
            );
        }
        assert!(admit(as_role(Role::Chunkserver), &register).is_ok());
        let mkdir = write(WriteOp::Sync);
        assert!(admit(as_role(Role::Chunkserver), &mkdir).is_err());
        assert!(admit(as_role(Role::Mount), &mkdir).is_ok());
        let raft = Request::Raft {
            from: sparefs_proto::ReplicaId(1),
            msg: Vec::new(),
        };
        assert!(admit(as_role(Role::Mount), &raft).is_err());
        assert!(admit(as_role(Role::Meta), &raft).is_ok());
        assert!(admit_raft(as_role(Role::Meta), 2).is_err(), "meta 1 as 2");
        assert!(admit_raft(as_role(Role::Meta), 1).is_ok());
        assert!(admit_raft(as_role(Role::Admin), 1).is_err());
    }

    #[test]
    fn plaintext_admits_all_but_housekeeping() {
        let drain = write(WriteOp::DrainChunkserver {
            chunkserver: ChunkserverId(1),
            drain: true,
        });
        assert!(admit(None, &drain).is_ok());
        assert!(admit(None, &write(WriteOp::PurgeDeleted)).is_err());
        assert!(admit(as_role(Role::Admin), &write(WriteOp::PurgeDeleted)).is_err());
    }

    #[test]
    fn tokens_differ_by_certificate() {
        assert_ne!(registration_token(1), registration_token(2));
        assert_eq!(registration_token(7), registration_token(7));
    }
}
