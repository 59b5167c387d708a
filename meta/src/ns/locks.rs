//! POSIX byte-range locks (and flock, as whole-file ranges) held in the
//! meta, so that two hosts see each other's locks. Per inode, one record
//! lists every lock; `lock_owners` indexes (client, inode) so that the locks
//! of a client whose lease expired can be dropped without a scan.

use super::{NsError, NsResult};
use crate::kv::{be, Cf, ReadKv, Tx};
use sparefs_proto::namespace::{LockKind, LockSpec, NsReply};
use sparefs_proto::{ClientId, Errno, InodeId};

fn locks_key(ino: InodeId) -> Vec<u8> {
    be(ino.0).to_vec()
}

fn owner_key(client: ClientId, ino: InodeId) -> Vec<u8> {
    let mut k = client.0.to_be_bytes().to_vec();
    k.extend_from_slice(&be(ino.0));
    k
}

fn overlaps(a: &LockSpec, start: u64, end: u64) -> bool {
    a.start <= end && start <= a.end
}

fn same_owner(a: &LockSpec, b: &LockSpec) -> bool {
    a.client == b.client && a.owner == b.owner
}

/// The first lock of another owner that conflicts with `want`.
pub fn conflict(held: &[LockSpec], want: &LockSpec) -> Option<LockSpec> {
    held.iter()
        .find(|h| {
            !same_owner(h, want)
                && overlaps(h, want.start, want.end)
                && (h.kind == LockKind::Write || want.kind == LockKind::Write)
        })
        .copied()
}

pub fn get_lock<K: ReadKv>(kv: &K, ino: InodeId, want: &LockSpec) -> NsResult<NsReply> {
    let held: Vec<LockSpec> = kv.get_rec(Cf::Locks, &locks_key(ino))?.unwrap_or_default();
    Ok(NsReply::Lock(conflict(&held, want)))
}

pub fn set_lock<R: ReadKv>(tx: &mut Tx<R>, ino: InodeId, want: &LockSpec) -> NsResult<NsReply> {
    if want.start > want.end {
        return Err(NsError::Errno(Errno::EINVAL));
    }
    let held: Vec<LockSpec> = tx.get_rec(Cf::Locks, &locks_key(ino))?.unwrap_or_default();
    if want.kind != LockKind::Unlock {
        if let Some(_c) = conflict(&held, want) {
            return Err(NsError::Errno(Errno::EAGAIN));
        }
    }
    // The owner's own locks in the range are replaced (split at its edges).
    let mut next = Vec::with_capacity(held.len() + 2);
    for h in held {
        if !same_owner(&h, want) || !overlaps(&h, want.start, want.end) {
            next.push(h);
            continue;
        }
        if h.start < want.start {
            next.push(LockSpec {
                end: want.start - 1,
                ..h
            });
        }
        if h.end > want.end {
            next.push(LockSpec {
                start: want.end + 1,
                ..h
            });
        }
    }
    if want.kind != LockKind::Unlock {
        next.push(*want);
    }
    let client_still_holds = next.iter().any(|h| h.client == want.client);
    if next.is_empty() {
        tx.delete(Cf::Locks, locks_key(ino));
    } else {
        tx.put_rec(Cf::Locks, locks_key(ino), &next);
    }
    if client_still_holds {
        tx.put_rec(Cf::LockOwners, owner_key(want.client, ino), &());
    } else {
        tx.delete(Cf::LockOwners, owner_key(want.client, ino));
    }
    Ok(NsReply::Done)
}

pub fn expire_client<R: ReadKv>(tx: &mut Tx<R>, client: ClientId) -> NsResult<NsReply> {
    let prefix = client.0.to_be_bytes();
    for (k, _) in tx.scan(Cf::LockOwners, &prefix, &prefix, usize::MAX)? {
        let Some(ino) = crate::kv::read_be(&k[16..]) else {
            continue;
        };
        let ino = InodeId(ino);
        let held: Vec<LockSpec> = tx.get_rec(Cf::Locks, &locks_key(ino))?.unwrap_or_default();
        let kept: Vec<LockSpec> = held.into_iter().filter(|h| h.client != client).collect();
        if kept.is_empty() {
            tx.delete(Cf::Locks, locks_key(ino));
        } else {
            tx.put_rec(Cf::Locks, locks_key(ino), &kept);
        }
        tx.delete(Cf::LockOwners, k);
    }
    Ok(NsReply::Done)
}

/// Every client that holds a lock (a new leader starts their leases).
pub fn lock_holders<K: ReadKv>(kv: &K) -> NsResult<Vec<ClientId>> {
    let mut out: Vec<ClientId> = Vec::new();
    for (k, _) in kv.scan(Cf::LockOwners, &[], &[], usize::MAX)? {
        let Ok(bytes) = <[u8; 16]>::try_from(&k[..16.min(k.len())]) else {
            continue;
        };
        let c = ClientId(u128::from_be_bytes(bytes));
        if out.last() != Some(&c) {
            out.push(c);
        }
    }
    Ok(out)
}
