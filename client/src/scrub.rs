//! Verifying a block whole, for `sparefs fsck --verify-data`: every
//! fragment read from its chunkserver with the server's own span checks
//! (which cover parity fragments, that reads never touch), the block
//! decoded from fragments that pass its end-to-end checksum and, when some
//! fragment failed, each compared with what re-encoding those bytes gives,
//! to tell exactly which are bad.
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
    pub async fn verify_block(&self, block: &BlockRef, cap: &Capability) -> BlockVerdict {
        let policy = block.policy;
        let n = block.fragments.len();
        let flen = sparefs_erasure::fragment_len(policy, block.bytes as usize) as u32;
        let fetched: Vec<Option<Vec<u8>>> = join_all((0..n).map(|i| async move {
            // The chunkserver checks its spans (and reports a bad one).
            self.get_fragment(block, cap, i, 0, flen, true).await.ok()
        }))
        .await;
        let bytes_read = fetched.iter().flatten().map(|f| f.len() as u64).sum();
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
            if left_out.is_empty() && fetched.iter().all(|f| f.is_some()) {
                // Every fragment passed its chunkserver's span checks and
                // the data fragments give the block's bytes: the parity
                // fragments are what was written (their spans were hashed
                // from the encoder's output), no need to encode again.
                return BlockVerdict {
                    bad: Vec::new(),
                    readable: true,
                    bytes_read,
                };
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
