//! Reads answered from this replica's applied state (after the driver has
//! confirmed its ReadIndex, or at once for reads that may be stale).
//!
//! Owns: turning namespace errors into RPC errors and asking delegation
//! holders for what a read needs. Must not touch: Raft, the store's writes.

use crate::ns;
use crate::shared::Shared;
use crate::store::Store;
use sparefs_proto::msg::RpcError;
use sparefs_proto::namespace::{Caller, NsReply, ReadOp, Time};

/// Answers a read from this replica's applied state, as of now.
pub fn read_now(
    store: &Store,
    shared: &Shared,
    client: sparefs_proto::ClientId,
    caller: &Caller,
    op: &ReadOp,
) -> Result<NsReply, RpcError> {
    let storage = |e| match e {
        ns::NsError::Errno(e) => RpcError::Errno(e),
        ns::NsError::Store(e) => RpcError::Storage(e.to_string()),
    };
    // Another client alone knows a directory this read asks about, or its
    // answer would show: ask for it back and have the reader come again.
    let recall = |(dir, holder)| {
        shared.recalls.want(holder, dir);
        Err(RpcError::Busy)
    };
    if let Some(conflict) = ns::deleg::read_conflict(store, client, op).map_err(storage)? {
        return recall(conflict);
    }
    let now = Time::now().secs.max(0) as u64;
    let reply = ns::read(store, caller, op, shared, now).map_err(storage)?;
    if let Some(conflict) = ns::deleg::reply_conflict(store, client, &reply).map_err(storage)? {
        return recall(conflict);
    }
    Ok(reply)
}
