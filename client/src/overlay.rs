//! Slice overlay resolution: which bytes of a chunk come from which block
//! (or are a hole), given the chunk's slices oldest first. Newer slices
//! cover older ones; bytes no slice covers, and hole slices, read as zeros.

use sparefs_proto::layout::{BlockRef, Slice};

/// Where a run of bytes comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source<'a> {
    Zeros,
    /// A block and the offset in it.
    Block(&'a BlockRef, u32),
    /// Bytes carried inline in the slice.
    Inline(&'a [u8]),
}

/// A run of the chunk `[start, start + len)` and where its bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    pub start: u32,
    pub len: u32,
    pub source: Source<'a>,
}

/// Pieces covering `[start, end)` of a chunk, in order, without gaps.
pub fn resolve(slices: &[Slice], start: u32, end: u32) -> Vec<Piece<'_>> {
    // (start, end, slice index and offset of `start` inside that slice)
    type Run = (u32, u32, Option<(usize, u32)>);
    let mut runs: Vec<Run> = vec![(start, end, None)];
    let mut order: Vec<usize> = (0..slices.len()).collect();
    order.sort_by_key(|i| slices[*i].seq);
    for i in order {
        let s = &slices[i];
        let (a, b) = (s.offset, s.offset.saturating_add(s.bytes));
        if b <= start || a >= end {
            continue;
        }
        let mut next = Vec::with_capacity(runs.len() + 2);
        for (rs, re, src) in runs {
            if re <= a || rs >= b {
                next.push((rs, re, src));
                continue;
            }
            if rs < a {
                next.push((rs, a, src));
            }
            let (cs, ce) = (rs.max(a), re.min(b));
            next.push((cs, ce, Some((i, cs - a))));
            if re > b {
                let shift = b - rs;
                next.push((b, re, src.map(|(j, o)| (j, o + shift))));
            }
        }
        runs = next;
    }
    let mut out = Vec::new();
    for (rs, re, src) in runs {
        match src {
            None => out.push(Piece {
                start: rs,
                len: re - rs,
                source: Source::Zeros,
            }),
            Some((i, mut off)) => {
                let s = &slices[i];
                if !s.inline.is_empty() {
                    let a = off as usize;
                    let b = (a + (re - rs) as usize).min(s.inline.len());
                    out.push(Piece {
                        start: rs,
                        len: re - rs,
                        source: Source::Inline(&s.inline[a.min(b)..b]),
                    });
                    continue;
                }
                if s.blocks.is_empty() {
                    out.push(Piece {
                        start: rs,
                        len: re - rs,
                        source: Source::Zeros,
                    });
                    continue;
                }
                // Split at block boundaries inside the slice's blocks.
                off += s.block_offset;
                let mut pos = rs;
                let mut base = 0u32;
                for b in &s.blocks {
                    let (bs, be) = (base, base + b.bytes);
                    base = be;
                    if off >= be || pos >= re {
                        continue;
                    }
                    let take = (be - off).min(re - pos);
                    out.push(Piece {
                        start: pos,
                        len: take,
                        source: Source::Block(b, off - bs),
                    });
                    pos += take;
                    off += take;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sparefs_proto::layout::Policy;
    use sparefs_proto::{BlockId, ChunkserverId};

    /// Slices whose block ids encode (slice, block) and whose bytes are
    /// implied by position: byte x of block id B at offset o is (B, o).
    fn mk(seq: u64, offset: u32, sizes: &[u32], id_base: u64) -> Slice {
        let blocks = sizes
            .iter()
            .enumerate()
            .map(|(i, b)| BlockRef {
                id: BlockId(id_base + i as u64),
                policy: Policy::Rep { copies: 1 },
                bytes: *b,
                fragments: vec![ChunkserverId(1)],
                checksum: [0; 32],
                slot_base: 0,
            })
            .collect();
        Slice {
            seq,
            offset,
            bytes: sizes.iter().sum(),
            blocks,
            block_offset: 0,
            inline: vec![],
        }
    }

    proptest! {
        #[test]
        fn matches_byte_by_byte_painting(specs in proptest::collection::vec((0u32..200, proptest::collection::vec(1u32..40, 0..4), 0u32..10), 0..8), a in 0u32..300, span in 0u32..300) {
            let slices: Vec<Slice> = specs.iter().enumerate().map(|(i, (off, sizes, skip))| {
                if sizes.is_empty() { return Slice { seq: i as u64, offset: *off, bytes: 30, blocks: vec![], block_offset: 0, inline: vec![] }; }
                let mut s = mk(i as u64, *off, sizes, 100 * i as u64);
                // Packed: the slice starts `skip` bytes into its blocks.
                let skip = (*skip).min(s.bytes - 1);
                s.block_offset = skip;
                s.bytes -= skip;
                s
            }).collect();
            let end = a + span;
            // The model: paint each byte with (block id, offset in block).
            let mut model: Vec<Option<(u64, u32)>> = vec![None; 600];
            for s in &slices {
                if s.blocks.is_empty() {
                    for x in s.offset..s.offset + s.bytes { model[x as usize] = None; }
                    continue;
                }
                // Concatenated block bytes, then the slice's window of them.
                let concat: Vec<(u64, u32)> = s.blocks.iter().flat_map(|b| (0..b.bytes).map(move |o| (b.id.0, o))).collect();
                for x in 0..s.bytes {
                    model[(s.offset + x) as usize] = Some(concat[(s.block_offset + x) as usize]);
                }
            }
            let pieces = resolve(&slices, a, end);
            let mut pos = a;
            for p in &pieces {
                prop_assert_eq!(p.start, pos);
                for x in 0..p.len {
                    let got = match p.source {
                        Source::Block(b, o) => Some((b.id.0, o + x)),
                        Source::Zeros => None,
                        Source::Inline(_) => unreachable!("no inline slices in this test"),
                    };
                    prop_assert_eq!(got, model[(p.start + x) as usize], "byte {}", p.start + x);
                }
                pos += p.len;
            }
            prop_assert_eq!(pos, end);
        }
    }
}
