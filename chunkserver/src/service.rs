//! Fragment requests: capability check, then the store (reads) or the
//! group-commit writer (writes).

use crate::fragments::{FragmentStore, TABLE_BYTES_MAX};
use crate::writer::{WriteJob, Writer};
use sparefs_proto::layout::{Capability, ServerKey};
use sparefs_proto::limits::BLOCK_BYTES_MAX;
use sparefs_proto::msg::{Reply, Request, RpcError};
use sparefs_proto::namespace::Time;
use sparefs_proto::{BlockId, ChunkserverId};
use sparefs_wire::service::{CallFuture, Peer, Service};
use std::sync::{Arc, RwLock};
use tokio::sync::oneshot;

pub struct FragmentService {
    store: Arc<FragmentStore>,
    writer: Writer,
    /// This server's id and its own capability key, once registered.
    key: RwLock<Option<(ChunkserverId, ServerKey)>>,
    /// Fragments found bad, for the next heartbeat (shared with scrub).
    lost: crate::scrub::LostList,
}

impl FragmentService {
    pub fn new(
        store: Arc<FragmentStore>,
        writer: Writer,
        lost: crate::scrub::LostList,
    ) -> FragmentService {
        FragmentService {
            store,
            writer,
            key: RwLock::new(None),
            lost,
        }
    }

    /// A checked read that found the fragment bad drops it and reports it
    /// lost, as scrub does: the meta has it rebuilt (onto this server too,
    /// now that its slot is free), and nobody reads it again meanwhile.
    fn read_checked(
        store: &FragmentStore,
        lost: &crate::scrub::LostList,
        (block, index, offset, len, verify): (BlockId, u8, u32, u32, bool),
    ) -> Result<Vec<u8>, RpcError> {
        let r = store.read_as(block, index, offset, len, verify);
        if let Ok(bytes) = &r {
            metrics::counter!("sparefs_chunkserver_read_bytes_total").increment(bytes.len() as u64);
        }
        if verify {
            Self::drop_if_corrupt(store, lost, block, index, &r);
        }
        r
    }

    fn drop_if_corrupt<T>(
        store: &FragmentStore,
        lost: &crate::scrub::LostList,
        block: BlockId,
        index: u8,
        r: &Result<T, RpcError>,
    ) {
        if let Err(RpcError::Corrupt { detail, .. }) = r {
            tracing::error!(
                block = block.0,
                slot = index,
                "bad fragment read ({detail}); dropped"
            );
            store.discard(block, index);
            crate::scrub::report(lost, block, index);
        }
    }

    pub fn set_key(&self, me: ChunkserverId, key: ServerKey) {
        if let Ok(mut k) = self.key.write() {
            *k = Some((me, key));
        }
    }

    fn check(&self, cap: &Capability, block: BlockId, write: bool) -> Result<(), RpcError> {
        let (me, key) = self
            .key
            .read()
            .map_err(|_| RpcError::Busy)?
            .ok_or(RpcError::Busy)?;
        let now = Time::now().secs.max(0) as u64;
        if cap.allows(&key, me, block, write, now) {
            Ok(())
        } else {
            Err(RpcError::Denied)
        }
    }

    async fn handle(self: Arc<Self>, req: Request) -> Result<Reply, RpcError> {
        match req {
            Request::PutFragment {
                cap,
                block,
                index,
                data,
                table,
            } => {
                self.check(&cap, block, true)?;
                if data.is_empty() || data.len() as u64 > BLOCK_BYTES_MAX {
                    return Err(RpcError::BadRequest(format!(
                        "fragment of {} bytes",
                        data.len()
                    )));
                }
                if !table.len().is_multiple_of(32) || table.len() > TABLE_BYTES_MAX {
                    return Err(RpcError::BadRequest(format!(
                        "a block table of {} bytes",
                        table.len()
                    )));
                }
                let size = FragmentStore::stored_len(data.len(), table.len());
                self.store.reserve_room(size)?;
                let (tx, rx) = oneshot::channel();
                if self
                    .writer
                    .try_send(WriteJob {
                        block,
                        index,
                        data,
                        table,
                        reply: tx,
                    })
                    .is_err()
                {
                    self.store.release_room(size);
                    return Err(RpcError::Busy);
                }
                rx.await
                    .map_err(|_| RpcError::Storage("fragment writer stopped".into()))??;
                metrics::counter!("sparefs_chunkserver_written_bytes_total").increment(size);
                Ok(Reply::Ok)
            }
            Request::GetFragment {
                cap,
                block,
                index,
                offset,
                len,
                verify,
            } => {
                self.check(&cap, block, false)?;
                if len as u64 > BLOCK_BYTES_MAX {
                    return Err(RpcError::BadRequest(format!("read of {len} bytes")));
                }
                let what = (block, index, offset, len, verify);
                if len as usize <= INLINE_READ_BYTES_MAX {
                    // A small read is mostly a page-cache copy: cheaper than
                    // handing it to the blocking pool and back (two thread
                    // wake-ups). A read that does go to disk holds this
                    // worker alone; the others keep serving.
                    return Self::read_checked(&self.store, &self.lost, what).map(Reply::Bytes);
                }
                let (store, lost) = (self.store.clone(), self.lost.clone());
                tokio::task::spawn_blocking(move || Self::read_checked(&store, &lost, what))
                    .await
                    .map_err(|e| RpcError::Storage(e.to_string()))?
                    .map(Reply::Bytes)
            }
            Request::HashFragment {
                cap,
                block,
                index,
                in_block,
            } => {
                self.check(&cap, block, false)?;
                let (store, lost) = (self.store.clone(), self.lost.clone());
                tokio::task::spawn_blocking(move || {
                    let r = store.hash_fragment(block, index, in_block);
                    // A parity fragment failing its own sums is dropped as a
                    // checked read's would be. A data fragment's bytes are
                    // judged by the caller, who reads it checked if they fail.
                    if in_block.is_none() {
                        Self::drop_if_corrupt(&store, &lost, block, index, &r);
                    }
                    r
                })
                .await
                .map_err(|e| RpcError::Storage(e.to_string()))?
                .map(Reply::FragmentHash)
            }
            Request::GetBlockTable { cap, block, index } => {
                self.check(&cap, block, false)?;
                // A few KiB at the start of the file: served like a small read.
                self.store.read_table(block, index).map(Reply::Bytes)
            }
            _ => Err(RpcError::BadRequest(
                "a chunkserver answers fragment requests only".into(),
            )),
        }
    }
}

/// Reads up to this size are served on the connection's task.
const INLINE_READ_BYTES_MAX: usize = 64 * 1024;

impl Service for FragmentService {
    fn call(self: Arc<Self>, _peer: Peer, req: Request) -> CallFuture {
        Box::pin(self.handle(req))
    }
}
