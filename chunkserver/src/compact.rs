//! Runs the chunk compactions the meta leader hands out, one at a time
//! (each reads and rewrites up to a chunk, 64 MiB), through the client
//! library's data path.

use sparefs_client::{DataClient, MetaClient};
use sparefs_proto::InodeId;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct Compactor {
    data: Arc<DataClient>,
    busy: Arc<AtomicBool>,
}

impl Compactor {
    pub fn new(meta: Arc<MetaClient>) -> Compactor {
        Compactor {
            data: Arc::new(DataClient::new(meta)),
            busy: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn idle(&self) -> bool {
        !self.busy.load(Ordering::Acquire)
    }

    pub fn start(&self, ino: InodeId, index: u64) {
        if self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let (data, busy) = (self.data.clone(), self.busy.clone());
        tokio::spawn(async move {
            match data.compact_chunk(ino, index).await {
                Ok(c) => tracing::info!(
                    ino = ino.0,
                    index,
                    before = c.slices_before,
                    after = c.slices_after,
                    bytes = c.bytes_rewritten,
                    "chunk compacted"
                ),
                Err(e) => tracing::warn!(ino = ino.0, index, "compaction: {e}"),
            }
            busy.store(false, Ordering::Release);
        });
    }
}
