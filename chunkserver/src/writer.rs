//! Group commit of fragment writes. One thread takes every write queued
//! while it was busy, writes their `.tmp` files, makes them durable with
//! ONE syncfs, renames them into place, syncs again (for the renames), and
//! only then answers all of them. A fragment is acknowledged only when it
//! would survive a power cut.

use crate::fragments::FragmentStore;
use crate::space::syncfs;
use sparefs_proto::msg::RpcError;
use sparefs_proto::BlockId;
use std::collections::HashSet;
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
    /// The block's end-to-end table, kept in the fragment's header.
    pub table: Vec<u8>,
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
        let mut in_batch = std::collections::HashSet::new();
        for job in batch {
            let size = FragmentStore::stored_len(job.data.len(), job.table.len());
            let r = match answer_without_writing(&store, &mut in_batch, &job) {
                Some(r) => r,
                None => match store.write_tmp(job.block, job.index, &job.data, &job.table) {
                    Ok(tmp) => {
                        written.push((job, tmp, size));
                        continue;
                    }
                    Err(e) => Err(RpcError::Storage(format!("write fragment: {e}"))),
                },
            };
            store.release_room(size);
            let _ = job.reply.send(r);
        }
        // One flush for the data of every file in the batch, then the renames,
        // then one more flush so the new names are durable too.
        let sync_started = std::time::Instant::now();
        let synced = syncfs(&root).and_then(|_| {
            for (job, tmp, size) in &written {
                store.publish(job.block, job.index, tmp, *size)?;
            }
            syncfs(&root)
        });
        metrics::histogram!("sparefs_chunkserver_sync_seconds")
            .record(sync_started.elapsed().as_secs_f64());
        metrics::histogram!("sparefs_chunkserver_sync_batch_fragments")
            .record(written.len() as f64);
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

/// The answer to a write that must not be written: a fragment already
/// stored is never overwritten (a committed block's bytes cannot change
/// under its readers, whoever holds a write capability for it), and a
/// retry of a write that landed is answered as done. A second write of
/// the same fragment in one batch waits for the next (Busy: the client
/// tries again, and then finds the first one stored).
fn answer_without_writing(
    store: &FragmentStore,
    in_batch: &mut HashSet<(BlockId, u8)>,
    job: &WriteJob,
) -> Option<Result<(), RpcError>> {
    if !in_batch.insert((job.block, job.index)) {
        return Some(Err(RpcError::Busy));
    }
    match store.stored_as(job.block, job.index, &job.data, &job.table) {
        Ok(None) => None,
        Ok(Some(true)) => Some(Ok(())),
        Ok(Some(false)) => Some(Err(RpcError::BadRequest(format!(
            "fragment {} of block {} is stored with other bytes; a stored fragment is never overwritten",
            job.index, job.block
        )))),
        Err(e) => Some(Err(RpcError::Storage(format!(
            "read fragment {} of block {}: {e}",
            job.index, job.block
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: [u8; 64] = [5; 64];

    fn put(store: &Arc<FragmentStore>, writer: &Writer, data: &[u8]) -> Result<(), RpcError> {
        put_with(store, writer, data, &TABLE)
    }

    fn put_with(
        store: &Arc<FragmentStore>,
        writer: &Writer,
        data: &[u8],
        table: &[u8],
    ) -> Result<(), RpcError> {
        store
            .reserve_room(FragmentStore::stored_len(data.len(), table.len()))
            .expect("room");
        let (reply, answer) = oneshot::channel();
        let job = WriteJob {
            block: BlockId(7),
            index: 2,
            data: data.to_vec(),
            table: table.to_vec(),
            reply,
        };
        writer.send(job).expect("writer running");
        answer.blocking_recv().expect("answered")
    }

    /// Whoever holds a write capability for a block cannot change a
    /// fragment of it once stored; the same bytes again are a retry.
    #[test]
    fn a_stored_fragment_is_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(FragmentStore::open(dir.path(), 1 << 30, 0).expect("open"));
        let writer = start(store.clone());
        let first = vec![1u8; 100_000];
        put(&store, &writer, &first).expect("first write");
        put(&store, &writer, &first).expect("a retry with the same bytes is done");
        let mut other = first.clone();
        other[99_999] = 2;
        assert!(matches!(
            put(&store, &writer, &other),
            Err(RpcError::BadRequest(_))
        ));
        assert!(matches!(
            put(&store, &writer, &first[..50_000]),
            Err(RpcError::BadRequest(_))
        ));
        assert!(
            matches!(
                put_with(&store, &writer, &first, &[6; 64]),
                Err(RpcError::BadRequest(_))
            ),
            "the block table is kept as first written too"
        );
        assert_eq!(
            store.read(BlockId(7), 2, 0, 100_000).expect("read"),
            first,
            "the stored bytes are the first write's"
        );
        assert_eq!(store.read_table(BlockId(7), 2).expect("table"), TABLE);
        assert_eq!(
            store.used_bytes(),
            FragmentStore::stored_len(first.len(), TABLE.len())
        );
    }
}
