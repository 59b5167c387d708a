//! Group commit of fragment writes. One thread takes every write queued
//! while it was busy, writes their `.tmp` files, makes them durable with
//! ONE syncfs, renames them into place, syncs again (for the renames), and
//! only then answers all of them. A fragment is acknowledged only when it
//! would survive a power cut.

use crate::fragments::FragmentStore;
use crate::space::syncfs;
use sparefs_proto::msg::RpcError;
use sparefs_proto::BlockId;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Writes queued at most; more wait in their connections (back-pressure).
pub const WRITE_QUEUE_MAX: usize = 256;
/// Most bytes written per sync round.
pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

pub struct WriteJob {
    pub block: BlockId,
    pub index: u8,
    pub data: Vec<u8>,
    pub reply: oneshot::Sender<Result<(), RpcError>>,
}

pub type Writer = SyncSender<WriteJob>;

pub fn start(store: Arc<FragmentStore>) -> Writer {
    let (tx, rx) = sync_channel(WRITE_QUEUE_MAX);
    let spawned = std::thread::Builder::new()
        .name("fragment-writer".into())
        .spawn(move || run(store, rx));
    if let Err(e) = spawned {
        tracing::error!("start the fragment writer: {e}");
    }
    tx
}

fn run(store: Arc<FragmentStore>, rx: Receiver<WriteJob>) {
    let root = match std::fs::File::open(store.root()) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("open {}: {e}", store.root().display());
            return;
        }
    };
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let mut bytes = batch[0].data.len();
        while bytes < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(j) => {
                    bytes += j.data.len();
                    batch.push(j);
                }
                Err(_) => break,
            }
        }
        let mut written = Vec::with_capacity(batch.len());
        for job in batch {
            let size = FragmentStore::stored_len(job.data.len());
            match store.write_tmp(job.block, job.index, &job.data) {
                Ok(tmp) => written.push((job, tmp, size)),
                Err(e) => {
                    store.release_room(size);
                    let _ = job
                        .reply
                        .send(Err(RpcError::Storage(format!("write fragment: {e}"))));
                }
            }
        }
        // One flush for the data of every file in the batch, then the renames,
        // then one more flush so the new names are durable too.
        let synced = syncfs(&root).and_then(|_| {
            for (job, tmp, size) in &written {
                store.publish(job.block, job.index, tmp, *size)?;
            }
            syncfs(&root)
        });
        for (job, tmp, size) in written {
            store.release_room(size);
            let r = match &synced {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    Err(RpcError::Storage(format!("sync fragments: {e}")))
                }
            };
            let _ = job.reply.send(r);
        }
    }
}
