//! The chunkserver registry and the cluster key: registration (a server
//! that comes back with its token keeps its id), draining and removal.

use super::blocks;
use super::records::*;
use super::{NsError, NsResult};
use crate::kv::{be, read_be, Cf, ReadKv, StoreError, Tx};
use sparefs_proto::layout::{Capability, ClusterKey};
use sparefs_proto::namespace::*;
use sparefs_proto::{ChunkserverId, Errno};

/// Registers a chunkserver, or updates one that registers again with its
/// token; answers its id and its own key to check capabilities with
/// (derived from the cluster key, which it never learns).
pub(super) fn register_chunkserver<R: ReadKv>(
    tx: &mut Tx<R>,
    now: Time,
    address: &str,
    capacity_bytes: u64,
    token: [u8; 16],
) -> NsResult<NsReply> {
    let key = cluster_key(tx)?.ok_or(NsError::Errno(Errno::EAGAIN))?;
    for (k, v) in tx.scan(Cf::Chunkservers, &[], &[], usize::MAX)? {
        let rec: ChunkserverRec = crate::kv::decode(Cf::Chunkservers, &v)?;
        if rec.token == token {
            let id =
                read_be(&k).ok_or_else(|| StoreError::Invalid("short chunkserver key".into()))?;
            let rec = ChunkserverRec {
                address: address.to_string(),
                capacity_bytes,
                ..rec
            };
            tx.put_rec(Cf::Chunkservers, k, &rec);
            return Ok(NsReply::Registered {
                id: ChunkserverId(id),
                key: Capability::server_key(&key, ChunkserverId(id)),
            });
        }
    }
    let id = next_id(tx, SYS_NEXT_CHUNKSERVER, 1)? + 1;
    let rec = ChunkserverRec {
        address: address.to_string(),
        capacity_bytes,
        token,
        registered: now,
        draining: false,
    };
    tx.put_rec(Cf::Chunkservers, be(id).to_vec(), &rec);
    Ok(NsReply::Registered {
        id: ChunkserverId(id),
        key: Capability::server_key(&key, ChunkserverId(id)),
    })
}

/// The chunkserver registered with `token`, if any (a scan: the registry
/// is small, and callers keep what they find).
pub fn chunkserver_with_token<R: ReadKv>(
    kv: &R,
    token: &[u8; 16],
) -> Result<Option<ChunkserverId>, StoreError> {
    for (k, v) in kv.scan(Cf::Chunkservers, &[], &[], usize::MAX)? {
        let rec: ChunkserverRec = crate::kv::decode(Cf::Chunkservers, &v)?;
        if &rec.token == token {
            let id =
                read_be(&k).ok_or_else(|| StoreError::Invalid("short chunkserver key".into()))?;
            return Ok(Some(ChunkserverId(id)));
        }
    }
    Ok(None)
}

/// Marks a chunkserver draining (no new blocks; repair moves its
/// fragments away) or not.
pub(super) fn drain_chunkserver<R: ReadKv>(
    tx: &mut Tx<R>,
    chunkserver: ChunkserverId,
    drain: bool,
) -> NsResult<NsReply> {
    let key = be(chunkserver.0).to_vec();
    let mut rec: ChunkserverRec = tx.get_rec(Cf::Chunkservers, &key)?.ok_or(Errno::ENOENT)?;
    rec.draining = drain;
    tx.put_rec(Cf::Chunkservers, key, &rec);
    Ok(NsReply::Done)
}

/// Forgets a chunkserver that holds no fragment (EBUSY: drain it first).
pub(super) fn remove_chunkserver<R: ReadKv>(
    tx: &mut Tx<R>,
    chunkserver: ChunkserverId,
) -> NsResult<NsReply> {
    let key = be(chunkserver.0).to_vec();
    if tx.get(Cf::Chunkservers, &key)?.is_none() {
        return Err(Errno::ENOENT.into());
    }
    if blocks::server_holds_any(tx, chunkserver)? {
        // Its fragments would be lost with it.
        return Err(Errno::EBUSY.into());
    }
    tx.delete(Cf::Chunkservers, key);
    Ok(NsReply::Done)
}

/// The key capabilities are signed with. The first key wins; later
/// proposals (a new leader that had not yet applied the first) change
/// nothing.
pub(super) fn set_cluster_key<R: ReadKv>(tx: &mut Tx<R>, key: &ClusterKey) -> NsResult<NsReply> {
    if cluster_key(tx)?.is_none() {
        tx.put_rec(Cf::Sys, SYS_CLUSTER_KEY.to_vec(), key);
    }
    Ok(NsReply::Done)
}
