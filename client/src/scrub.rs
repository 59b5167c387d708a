//! Verifying a block whole, for `sparefs fsck --verify-data`. The common
//! case moves no block bytes: every chunkserver hashes its fragment where
//! it is stored, the data fragments (or each copy) into the pieces of the
//! block's blake3 tree that this client joins and checks against the
//! block's checksum from the meta (end to end), the parity fragments
//! against their own span sums (hashed from the encoder's output). When
//! anything fails, every fragment is read here with every server checking
//! its spans, and decoding and re-encoding the bytes that pass tells
//! exactly which fragments are bad.
//!
//! Owns: the whole-block check. Must not touch: the read path's caches.

use crate::data::{DataClient, FRAGMENT_TIMEOUT};
use futures::future::join_all;
use sparefs_erasure::block_table::root_from_pieces;
use sparefs_proto::layout::{BlockRef, Capability, Policy, NO_SERVER};
use sparefs_proto::msg::{FragmentHash, InBlock, Reply, Request};

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
    /// Every fragment whole, its spans checked by its chunkserver (a
    /// failed one is then dropped and reported by the server).
    async fn fetch_all(&self, block: &BlockRef, cap: &Capability) -> Vec<Option<Vec<u8>>> {
        let flen = sparefs_erasure::fragment_len(block.policy, block.bytes as usize) as u32;
        join_all(
            (0..block.fragments.len())
                .map(|i| async move { self.get_fragment(block, cap, i, 0, flen, true).await.ok() }),
        )
        .await
    }

    /// Where fragment `i`'s bytes sit in the block: every copy holds all
    /// of it, an erasure-coded data fragment its share; parity none.
    fn in_block(block: &BlockRef, i: usize) -> Option<InBlock> {
        let bytes = block.bytes;
        match block.policy {
            Policy::Rep { .. } => Some(InBlock {
                offset: 0,
                len: bytes,
                block_len: bytes,
            }),
            policy @ Policy::Ec { data, .. } => (i < data as usize).then(|| {
                let flen = sparefs_erasure::fragment_len(policy, bytes as usize) as u32;
                let offset = (i as u32 * flen).min(bytes);
                InBlock {
                    offset,
                    len: flen.min(bytes - offset),
                    block_len: bytes,
                }
            }),
        }
    }

    /// Every fragment hashed where it is stored (`None`: missing, or
    /// refused, e.g. a parity fragment failing its sums).
    async fn hash_all(&self, block: &BlockRef, cap: &Capability) -> Vec<Option<FragmentHash>> {
        join_all((0..block.fragments.len()).map(|i| async move {
            let server = block.fragments[i];
            if server == NO_SERVER {
                return None;
            }
            let req = Request::HashFragment {
                cap: cap.clone(),
                block: block.id,
                index: block.slot(i),
                in_block: Self::in_block(block, i),
            };
            match self.fragment_call(server, req, FRAGMENT_TIMEOUT).await {
                Ok(Reply::FragmentHash(h)) => Some(h),
                _ => None,
            }
        }))
        .await
    }

    /// Whether every fragment was there, its padding zero, and the data
    /// fragments' pieces (each copy's) root to the block's checksum.
    fn all_good(block: &BlockRef, hashed: &[Option<FragmentHash>]) -> bool {
        let Some(all) = hashed
            .iter()
            .map(Option::as_ref)
            .collect::<Option<Vec<_>>>()
        else {
            return false;
        };
        if all.iter().any(|h| !h.padding_zero) {
            return false;
        }
        let bytes = block.bytes as usize;
        let want = Some(block.checksum);
        match block.policy {
            Policy::Rep { .. } => all
                .iter()
                .all(|h| root_from_pieces(&h.pieces, bytes) == want),
            Policy::Ec { data, .. } => {
                root_from_pieces(all[..data as usize].iter().flat_map(|h| &h.pieces), bytes) == want
            }
        }
    }

    pub async fn verify_block(&self, block: &BlockRef, cap: &Capability) -> BlockVerdict {
        let policy = block.policy;
        let n = block.fragments.len();
        let hashed = self.hash_all(block, cap).await;
        let mut bytes_read: u64 = hashed.iter().flatten().map(|h| h.bytes).sum();
        if Self::all_good(block, &hashed) {
            return BlockVerdict {
                bad: Vec::new(),
                readable: true,
                bytes_read,
            };
        }
        // Something is wrong: every fragment again, each checked by its
        // server, then the set that decodes to the block's bytes, and
        // re-encoding tells exactly which fragments are bad.
        let fetched = self.fetch_all(block, cap).await;
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
