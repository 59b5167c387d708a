//! Who may ask what of a meta replica. Over mutual TLS every connection
//! names its certificate's role and id (`wire::tls`); this module decides
//! which requests and changes each role may send, and ties a chunkserver's
//! registration and reports to the chunkserver its certificate names.
//! Without TLS (a cluster started plaintext) it admits everything but the
//! leader's own housekeeping: whoever reaches the port is trusted.
//!
//! A mount's certificate may also limit which callers (uids) it speaks for
//! (`Callers`): `speak_for` maps the others to the anonymous user before
//! the namespace sees them, as an NFS server squashes a client's root.
//!
//! Owns: the role policy, the caller limits. Must not touch: the
//! namespace's permission checks on a caller's uid and groups
//! (`ns::perm`), Raft.

use crate::kv::ReadKv;
use sparefs_proto::msg::{Request, RpcError};
use sparefs_proto::namespace::Caller;
use sparefs_proto::write_kind::Origin;
use sparefs_proto::{ChunkserverId, ClientId};
use sparefs_wire::tls::{Callers, Identity, Role};
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
        Origin::Iscsi => &[Role::Iscsi, Role::Admin],
    }
}

/// The roles that may send this request. `None`: every role.
fn roles_for_request(req: &Request) -> Option<&'static [Role]> {
    match req {
        // Configuration holds CHAP secrets: for the services that use it.
        Request::Read {
            op: sparefs_proto::namespace::ReadOp::ListConfig { .. },
            ..
        } => Some(&[Role::Admin, Role::Iscsi]),
        Request::Read { .. } | Request::Status | Request::RepairStatus => None,
        // It reads every record, secrets included.
        Request::Fsck { .. } | Request::Digest => Some(&[Role::Admin]),
        Request::Write { op, .. } => Some(roles_for(op.origin())),
        Request::WaitRecall { .. } | Request::KeepAlive { .. } => Some(USERS),
        Request::Raft { .. } | Request::SnapshotPiece { .. } => Some(&[Role::Meta]),
        Request::AddReplica { .. }
        | Request::RemoveReplica { .. }
        | Request::TransferLeader { .. } => Some(&[Role::Admin]),
        Request::Heartbeat(_) | Request::Inventory { .. } => Some(&[Role::Chunkserver]),
        // Answered with an error anyway.
        Request::PutFragment { .. }
        | Request::GetFragment { .. }
        | Request::GetBlockTable { .. }
        | Request::HashFragment { .. } => None,
    }
}

/// The client a request acts as (its session, locks, leases and
/// delegations), if it names one.
fn client_of(req: &Request) -> Option<ClientId> {
    match req {
        Request::Read { client, .. }
        | Request::WaitRecall { client }
        | Request::KeepAlive { client, .. } => Some(*client),
        Request::Write { id, .. }
        | Request::AddReplica { id, .. }
        | Request::RemoveReplica { id, .. } => Some(id.client),
        Request::Raft { .. }
        | Request::SnapshotPiece { .. }
        | Request::TransferLeader { .. }
        | Request::Heartbeat(_)
        | Request::Inventory { .. }
        | Request::Status
        | Request::RepairStatus
        | Request::Fsck { .. }
        | Request::Digest
        | Request::PutFragment { .. }
        | Request::GetFragment { .. }
        | Request::GetBlockTable { .. }
        | Request::HashFragment { .. } => None,
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
    let Some(who) = who else {
        return Ok(());
    };
    if let Some(client) = client_of(req) {
        if !who.owns_client_id(client.0) {
            return Err(RpcError::Forbidden(format!(
                "{who} may not act as client {:x}: a certificate's client ids are its own",
                client.0
            )));
        }
    }
    let Some(roles) = roles_for_request(req) else {
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

/// The user and group a caller a certificate may not speak for becomes
/// (Debian's `nobody` and `nogroup`).
pub const ANONYMOUS: u32 = 65534;

/// `caller` as the meta believes it from a peer limited to `callers`.
fn squash(callers: Callers, caller: &mut Caller) {
    let anonymous = || Caller {
        uid: ANONYMOUS,
        gid: ANONYMOUS,
        groups: Vec::new(),
    };
    match callers {
        Callers::Any => {}
        Callers::SquashRoot => {
            if caller.uid == 0 {
                caller.uid = ANONYMOUS;
            }
            if caller.gid == 0 {
                caller.gid = ANONYMOUS;
            }
            for g in caller.groups.iter_mut().filter(|g| **g == 0) {
                *g = ANONYMOUS;
            }
        }
        Callers::Uids { first, last } => {
            if !(first..=last).contains(&caller.uid) {
                *caller = anonymous();
            }
        }
    }
}

/// Maps every caller `req` names (the request's own and those of changes
/// it carries) by what the peer's certificate lets it speak for.
pub fn speak_for(callers: Callers, req: &mut Request) {
    if callers == Callers::Any {
        return;
    }
    match req {
        Request::Read { caller, .. } => squash(callers, caller),
        Request::Write { caller, op, .. } => {
            squash(callers, caller);
            for c in op.inner_callers_mut() {
                squash(callers, c);
            }
        }
        // No caller: the role decides (`admit`).
        Request::WaitRecall { .. }
        | Request::KeepAlive { .. }
        | Request::Raft { .. }
        | Request::SnapshotPiece { .. }
        | Request::AddReplica { .. }
        | Request::RemoveReplica { .. }
        | Request::TransferLeader { .. }
        | Request::Heartbeat(_)
        | Request::Inventory { .. }
        | Request::Status
        | Request::RepairStatus
        | Request::Fsck { .. }
        | Request::Digest
        | Request::PutFragment { .. }
        | Request::GetFragment { .. }
        | Request::GetBlockTable { .. }
        | Request::HashFragment { .. } => {}
    }
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

    /// Whether `role` (id 1) may send `req` as one of its own clients.
    fn admits(role: Role, req: &Request) -> bool {
        let who = Identity { role, id: 1 };
        let mut req = req.clone();
        if let Request::Write { id, .. } = &mut req {
            id.client = ClientId(who.client_id(7));
        }
        admit(Some(who), &req).is_ok()
    }

    #[test]
    fn a_certificate_acts_only_as_its_own_clients() {
        let mine = Identity::new(Role::Mount, 1);
        let theirs = Identity::new(Role::Mount, 2);
        let keepalive = |client| Request::KeepAlive {
            client: ClientId(client),
            open: Vec::new(),
        };
        assert!(admit(Some(mine), &keepalive(mine.client_id(3))).is_ok());
        assert!(matches!(
            admit(Some(mine), &keepalive(theirs.client_id(3))),
            Err(RpcError::Forbidden(_))
        ));
        let mut sync = write(WriteOp::Sync);
        if let Request::Write { id, .. } = &mut sync {
            id.client = ClientId(theirs.client_id(9));
        }
        assert!(admit(Some(mine), &sync).is_err(), "a write as their client");
        assert!(
            admit(None, &sync).is_ok(),
            "plaintext: no certificate to bind"
        );
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
            assert!(!admits(role, &drain), "{role:?} drains");
            assert!(!admits(role, &transfer), "{role:?} moves");
        }
        assert!(admits(Role::Admin, &drain));
        assert!(admits(Role::Admin, &transfer));
        for role in [Role::Mount, Role::Iscsi, Role::Admin, Role::Meta] {
            assert!(!admits(role, &register), "{role:?} gets the cluster key");
        }
        assert!(admits(Role::Chunkserver, &register));
        let mkdir = write(WriteOp::Sync);
        assert!(!admits(Role::Chunkserver, &mkdir));
        assert!(admits(Role::Mount, &mkdir));
        let raft = Request::Raft {
            from: sparefs_proto::ReplicaId(1),
            msg: Vec::new(),
        };
        assert!(!admits(Role::Mount, &raft));
        assert!(admits(Role::Meta, &raft));
        assert!(admit_raft(as_role(Role::Meta), 2).is_err(), "meta 1 as 2");
        assert!(admit_raft(as_role(Role::Meta), 1).is_ok());
        assert!(admit_raft(as_role(Role::Admin), 1).is_err());
        // fsck reads everything and repairs: admins only.
        let repair = write(WriteOp::Repair {
            fix: sparefs_proto::fsck::Fix::SetNlink {
                ino: sparefs_proto::InodeId(2),
                from: 1,
                to: 2,
            },
        });
        for req in [
            &Request::Fsck {
                fresh_inventories: false,
            },
            &Request::Digest,
            &repair,
        ] {
            for role in [Role::Mount, Role::Iscsi, Role::Chunkserver, Role::Meta] {
                assert!(!admits(role, req), "{role:?} may {req:?}");
            }
            assert!(admits(Role::Admin, req));
        }
        // Writer fences are the iSCSI targets' (and admins').
        let take = write(WriteOp::TakeFence {
            ino: sparefs_proto::InodeId(2),
            expect: 0,
            holder: "a#1".into(),
        });
        for role in [Role::Mount, Role::Chunkserver, Role::Meta] {
            assert!(!admits(role, &take), "{role:?} takes a fence");
        }
        assert!(admits(Role::Iscsi, &take) && admits(Role::Admin, &take));
        // A fence cannot smuggle an admin's or the leader's change.
        let smuggled = write(WriteOp::Fenced {
            epoch: 1,
            op: Box::new(WriteOp::DrainChunkserver {
                chunkserver: ChunkserverId(1),
                drain: true,
            }),
        });
        for role in [Role::Mount, Role::Iscsi, Role::Admin, Role::Chunkserver] {
            assert!(!admits(role, &smuggled), "{role:?} drains inside a fence");
        }
    }

    #[test]
    fn a_limited_certificate_speaks_only_for_its_callers() {
        use sparefs_proto::namespace::{DelegatedOp, SetAttr, Time};
        let user = |uid: u32, gid: u32| Caller {
            uid,
            gid,
            groups: vec![0, 7],
        };
        let delegated = |uid| WriteOp::Delegated {
            ops: vec![DelegatedOp {
                caller: user(uid, uid),
                now: Time::default(),
                ino: None,
                op: WriteOp::Sync,
            }],
            then: Some(Box::new(WriteOp::CommitSlicesThenSetAttrs {
                ino: sparefs_proto::InodeId(5),
                slices: Vec::new(),
                size_at_least: 0,
                then: vec![(user(uid, uid), SetAttr::default())],
            })),
        };
        let callers_of = |req: &Request| -> Vec<Caller> {
            let mut req = req.clone();
            let Request::Write { caller, op, .. } = &mut req else {
                panic!("a write");
            };
            let mut all = vec![caller.clone()];
            all.extend(op.inner_callers_mut().into_iter().map(|c| c.clone()));
            all
        };
        let nobody = Caller {
            uid: ANONYMOUS,
            gid: ANONYMOUS,
            groups: Vec::new(),
        };
        let mut root = write(delegated(0));
        if let Request::Write { caller, .. } = &mut root {
            *caller = user(0, 0);
        }
        let mut squashed = root.clone();
        speak_for(Callers::SquashRoot, &mut squashed);
        for c in callers_of(&squashed) {
            assert_eq!(c.uid, ANONYMOUS);
            assert_eq!(c.gid, ANONYMOUS);
            assert_eq!(c.groups, vec![ANONYMOUS, 7]);
        }
        let mut unchanged = root.clone();
        speak_for(Callers::Any, &mut unchanged);
        assert_eq!(callers_of(&unchanged), callers_of(&root));
        let range = Callers::Uids {
            first: 1000,
            last: 1999,
        };
        let mut inside = write(delegated(1500));
        if let Request::Write { caller, .. } = &mut inside {
            *caller = user(1500, 1500);
        }
        let before = callers_of(&inside);
        speak_for(range, &mut inside);
        assert_eq!(
            callers_of(&inside),
            before,
            "a uid in the range is believed"
        );
        let mut outside = root;
        speak_for(range, &mut outside);
        assert!(callers_of(&outside).iter().all(|c| *c == nobody));
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
