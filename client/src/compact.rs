//! Compaction of one chunk: its slices (many, after random overwrites) are
//! read as one consistent map, the bytes they resolve to are written as a
//! few new slices, and the meta swaps them in with `ReplaceSlices`, under
//! any slice written meanwhile. Readers see the same bytes throughout; the
//! old blocks lose their references and are collected.

use crate::data::DataClient;
use crate::meta::{ClientError, Result};
use crate::overlay::{resolve, Source};
use futures::future::join_all;
use sparefs_proto::layout::Slice;
use sparefs_proto::limits::CHUNK_BYTES;
use sparefs_proto::namespace::WriteOp;
use sparefs_proto::InodeId;

/// What one compaction did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    pub slices_before: usize,
    pub slices_after: usize,
    pub bytes_rewritten: u64,
}

impl DataClient {
    /// Rewrites chunk `index` of `ino` into as few slices as its data runs.
    pub async fn compact_chunk(&self, ino: InodeId, index: u64) -> Result<Compacted> {
        let (slices, caps) = self.fetch_chunk(ino, index).await?;
        if slices.len() < 2 {
            return Ok(Compacted {
                slices_before: slices.len(),
                slices_after: slices.len(),
                bytes_rewritten: 0,
            });
        }
        let through_seq = slices.iter().map(|s| s.seq).max().unwrap_or(0);
        let replaced: Vec<u64> = slices.iter().map(|s| s.seq).collect();
        // Runs of bytes that hold data (holes and unwritten ranges need no
        // slice: a chunk reads zeros where nothing covers it).
        let pieces = resolve(&slices, 0, CHUNK_BYTES as u32);
        let mut runs: Vec<(u32, Vec<u8>)> = Vec::new();
        let reads = pieces.iter().map(|p| {
            let caps = &caps;
            async move {
                let bytes = match p.source {
                    Source::Zeros => return Ok(None),
                    Source::Inline(b) => b.to_vec(),
                    Source::Block(block, boff) => {
                        let cap = caps.get(&block.id).ok_or_else(|| {
                            ClientError::Protocol(format!("no capability for block {}", block.id))
                        })?;
                        self.read_block_range(block, cap, boff, p.len).await?
                    }
                };
                Ok::<_, ClientError>(Some((p.start, bytes)))
            }
        });
        for r in join_all(reads).await {
            let Some((start, bytes)) = r? else {
                continue;
            };
            match runs.last_mut() {
                Some((s, b)) if *s as usize + b.len() == start as usize => b.extend(bytes),
                _ => runs.push((start, bytes)),
            }
        }
        let bytes_rewritten: u64 = runs.iter().map(|(_, b)| b.len() as u64).sum();
        let base = index * CHUNK_BYTES;
        let extents: Vec<(u64, Vec<u8>)> = runs
            .into_iter()
            .map(|(s, b)| (base + s as u64, b))
            .collect();
        let policy = self.policy_of(ino).await?;
        let (new, _) = self.store_extents(policy, &extents).await?;
        let new: Vec<Slice> = new.into_iter().map(|(_, s)| s).collect();
        let slices_after = new.len();
        self.meta
            .write(WriteOp::ReplaceSlices {
                ino,
                index,
                through_seq,
                replaced,
                slices: new,
            })
            .await?;
        self.invalidate(ino);
        Ok(Compacted {
            slices_before: slices.len(),
            slices_after,
            bytes_rewritten,
        })
    }
}
