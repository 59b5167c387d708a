//! Verifying a block whole, for `sparefs fsck --verify-data`: every
//! fragment read from its chunkserver, the data fragments checked end to
//! end against the block's checksum and the parity fragments (which reads
//! never touch) by their chunkservers' span checks; when anything fails,
//! everything is read again with every server checking, and re-encoding
//! the bytes that pass tells exactly which fragments are bad.
//!
//! Owns: the whole-block check. Must not touch: the read path's caches.

use crate::data::DataClient;
use futures::future::join_all;
use sparefs_proto::layout::{BlockRef, Capability};

/// What verifying one block found.
#[derive(Debug, Default)]
pub struct BlockVerdict {
    /// Fragment indexes that are missing, unreadable or not what the
    /// block's bytes encode to.
    pub bad: Vec<usize>,
    /// Whether the block's bytes could be recovered at all.
    pub readable: bool,
    /// Fragment bytes read.
    pub bytes_read: u64,
}

impl DataClient {
    /// Every fragment whole; `checked(i)`: whether its chunkserver checks
    /// its spans (a failed one is then dropped and reported by the server).
    async fn fetch_all(
        &self,
        block: &BlockRef,
        cap: &Capability,
        checked: impl Fn(usize) -> bool,
    ) -> Vec<Option<Vec<u8>>> {
        let flen = sparefs_erasure::fragment_len(block.policy, block.bytes as usize) as u32;
        let checked = &checked;
        join_all((0..block.fragments.len()).map(|i| async move {
            self.get_fragment(block, cap, i, 0, flen, checked(i))
                .await
                .ok()
        }))
        .await
    }

    /// The common case, cheaply: every fragment there, the bytes the data
    /// fragments give pass the block's checksum (so no server need hash
    /// them again), and the parity fragments pass their servers' span
    /// checks (their spans were hashed from the encoder's output). Copies
    /// of a replicated block are each hashed against the checksum.
    fn all_good(block: &BlockRef, fetched: &[Option<Vec<u8>>]) -> bool {
        if fetched.iter().any(|f| f.is_none()) {
            return false;
        }
        let bytes = block.bytes as usize;
        match block.policy {
            sparefs_proto::layout::Policy::Rep { .. } => fetched.iter().flatten().all(|c| {
                c.len() >= bytes && *blake3::hash(&c[..bytes]).as_bytes() == block.checksum
            }),
            policy @ sparefs_proto::layout::Policy::Ec { .. } => {
                sparefs_erasure::decode(policy, bytes, fetched.to_vec())
                    .is_ok_and(|d| *blake3::hash(&d).as_bytes() == block.checksum)
            }
        }
    }

    pub async fn verify_block(&self, block: &BlockRef, cap: &Capability) -> BlockVerdict {
        let policy = block.policy;
        let n = block.fragments.len();
        let data_count = match policy {
            sparefs_proto::layout::Policy::Rep { .. } => n,
            sparefs_proto::layout::Policy::Ec { data, .. } => data as usize,
        };
        let quick = self.fetch_all(block, cap, |i| i >= data_count).await;
        let mut bytes_read: u64 = quick.iter().flatten().map(|f| f.len() as u64).sum();
        if Self::all_good(block, &quick) {
            return BlockVerdict {
                bad: Vec::new(),
                readable: true,
                bytes_read,
            };
        }
        // Something is wrong: every fragment again, each checked by its
        // server, then the set that decodes to the block's bytes, and
        // re-encoding tells exactly which fragments are bad.
        let fetched = self.fetch_all(block, cap, |_| true).await;
        bytes_read += fetched
            .iter()
            .flatten()
            .map(|f| f.len() as u64)
            .sum::<u64>();
        let spare = policy.width().saturating_sub(policy.needed());
        for left_out in crate::data::leave_out_sets(n, spare) {
            let mut attempt = fetched.clone();
            for &i in &left_out {
                attempt[i] = None;
            }
            let Ok(data) = sparefs_erasure::decode(policy, block.bytes as usize, attempt) else {
                continue;
            };
            if *blake3::hash(&data).as_bytes() != block.checksum {
                continue;
            }
            let Ok(expect) = sparefs_erasure::encode(policy, &data) else {
                break;
            };
            let bad = (0..n)
                .filter(|&i| fetched[i].as_deref() != expect.get(i).map(|e| &e[..]))
                .collect();
            return BlockVerdict {
                bad,
                readable: true,
                bytes_read,
            };
        }
        BlockVerdict {
            bad: (0..n).filter(|&i| fetched[i].is_none()).collect(),
            readable: false,
            bytes_read,
        }
    }
}
