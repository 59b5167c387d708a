//! A block's end-to-end check: the blake3 hash of its bytes (the
//! `checksum` the meta keeps), and the table that lets a reader check any
//! 16 KiB group of the block on its own against that hash.
//!
//! blake3 is itself a tree of 1 KiB chunks. The table holds the chaining
//! value of every aligned 16 KiB subtree ("group") of a block; merging
//! them up the tree gives exactly `blake3::hash(block)`. A reader that has
//! checked the table against the hash once can then check each group it
//! reads by hashing that group alone (at its offset), with no need to read
//! the rest of the block. Blocks of one group or less have no table: their
//! whole bytes are checked against the hash.

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use sparefs_proto::msg::{BlockPiece, InBlock};

/// Bytes per group: a power of two of blake3 chunks, so that every aligned
/// group is one subtree of blake3's tree.
pub const GROUP: usize = 16 * 1024;

/// The chaining value of the group that starts at `offset` in its block
/// and holds `bytes` (a whole group, or the block's last, shorter one),
/// for a block longer than one group.
pub fn group_cv(offset: usize, bytes: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset as u64);
    h.update(bytes);
    h.finalize_non_root()
}

/// The table of a block: the chaining value of each group, in order
/// (empty for a block of one group or less).
pub fn table_of(block: &[u8]) -> Vec<ChainingValue> {
    if block.len() <= GROUP {
        return Vec::new();
    }
    block
        .chunks(GROUP)
        .enumerate()
        .map(|(i, g)| group_cv(i * GROUP, g))
        .collect()
}

/// The blake3 hash of a block of `len` bytes whose table is `table`, or
/// `None` if the table has the wrong number of groups for that length.
pub fn root_of(table: &[ChainingValue], len: usize) -> Option<[u8; 32]> {
    if len <= GROUP || table.len() != len.div_ceil(GROUP) {
        return None;
    }
    let left = left_subtree_len(len as u64) as usize;
    let l = subtree(table, 0, left);
    let r = subtree(table, left, len - left);
    Some(*merge_subtrees_root(&l, &r, Mode::Hash).as_bytes())
}

/// The chaining value of the subtree of `len` bytes at `offset` (a multiple
/// of GROUP; `len` a power-of-two number of groups, or the block's tail).
fn subtree(table: &[ChainingValue], offset: usize, len: usize) -> ChainingValue {
    if len <= GROUP {
        return table[offset / GROUP];
    }
    let left = left_subtree_len(len as u64) as usize;
    let l = subtree(table, offset, left);
    let r = subtree(table, offset + left, len - left);
    merge_subtrees_non_root(&l, &r, Mode::Hash)
}

/// The table as stored and sent: 32 bytes per group.
pub fn table_bytes(table: &[ChainingValue]) -> Vec<u8> {
    table.iter().flatten().copied().collect()
}

/// A table read back from bytes (`None` if not a whole number of values).
pub fn table_from_bytes(bytes: &[u8]) -> Option<Vec<ChainingValue>> {
    if !bytes.len().is_multiple_of(32) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(32)
            .map(|c| {
                let mut cv = [0u8; 32];
                cv.copy_from_slice(c);
                cv
            })
            .collect(),
    )
}

/// The pieces of its block that a fragment's `bytes` (the block's
/// `[at.offset, at.offset + bytes.len())`) make, for a check where the
/// fragment is stored: a chaining value per group it holds whole, the bytes
/// of a group it holds only part of (the caller joins them with the
/// neighbouring fragment's), and all of a block of one group or less.
pub fn pieces_of(bytes: &[u8], at: InBlock) -> Vec<BlockPiece> {
    let (start, block_len) = (at.offset as usize, at.block_len as usize);
    let end = start + bytes.len();
    if bytes.is_empty() {
        return Vec::new();
    }
    if block_len <= GROUP {
        return vec![BlockPiece::Bytes(bytes.to_vec())];
    }
    let mut pieces = Vec::new();
    let mut pos = start;
    while pos < end {
        let group_start = pos / GROUP * GROUP;
        let group_end = (group_start + GROUP).min(block_len);
        let piece_end = group_end.min(end);
        let piece = &bytes[pos - start..piece_end - start];
        pieces.push(if pos == group_start && piece_end == group_end {
            BlockPiece::Group(group_cv(group_start, piece))
        } else {
            BlockPiece::Bytes(piece.to_vec())
        });
        pos = piece_end;
    }
    pieces
}

/// The blake3 hash of a block of `block_len` bytes from the pieces of
/// its fragments in block order (`pieces_of` each), or `None` if they do
/// not cover the block exactly.
pub fn root_from_pieces<'a>(
    pieces: impl IntoIterator<Item = &'a BlockPiece>,
    block_len: usize,
) -> Option<[u8; 32]> {
    if block_len <= GROUP {
        let mut all = Vec::with_capacity(block_len);
        for p in pieces {
            match p {
                BlockPiece::Bytes(b) if all.len() + b.len() <= block_len => all.extend(b),
                _ => return None,
            }
        }
        return (all.len() == block_len).then(|| *blake3::hash(&all).as_bytes());
    }
    let groups = block_len.div_ceil(GROUP);
    let mut table = Vec::with_capacity(groups);
    // Bytes of the group after the table's last, gathered from pieces.
    let mut pending: Vec<u8> = Vec::new();
    for p in pieces {
        if table.len() == groups {
            return None;
        }
        let group_start = table.len() * GROUP;
        let group_len = GROUP.min(block_len - group_start);
        match p {
            BlockPiece::Group(cv) if pending.is_empty() => table.push(*cv),
            BlockPiece::Group(_) => return None,
            BlockPiece::Bytes(b) => {
                if pending.len() + b.len() > group_len {
                    return None;
                }
                pending.extend(b);
                if pending.len() == group_len {
                    table.push(group_cv(group_start, &pending));
                    pending.clear();
                }
            }
        }
    }
    if !pending.is_empty() {
        return None;
    }
    root_of(&table, block_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn the_root_is_blake3_of_the_block_at_every_edge() {
        let k = blake3::CHUNK_LEN;
        for len in [
            GROUP + 1,
            GROUP + k,
            2 * GROUP,
            2 * GROUP + 1,
            3 * GROUP - 1,
            5 * GROUP + 7,
            64 * GROUP,
            64 * GROUP + 1,
            4 * 1024 * 1024,
            2 * 1024 * 1024 + 3 * k + 5,
        ] {
            let b = bytes(len, 7);
            let t = table_of(&b);
            assert_eq!(
                root_of(&t, len),
                Some(*blake3::hash(&b).as_bytes()),
                "len {len}"
            );
        }
    }

    #[test]
    fn a_changed_byte_changes_its_group_only_and_the_root() {
        let mut b = bytes(9 * GROUP + 100, 1);
        let t = table_of(&b);
        b[4 * GROUP + 17] ^= 1;
        let t2 = table_of(&b);
        let differ: Vec<usize> = (0..t.len()).filter(|&i| t[i] != t2[i]).collect();
        assert_eq!(differ, vec![4]);
        assert_ne!(root_of(&t, b.len()), root_of(&t2, b.len()));
    }

    #[test]
    fn a_table_of_the_wrong_size_or_a_small_block_has_no_root() {
        let b = bytes(3 * GROUP, 2);
        let t = table_of(&b);
        assert_eq!(root_of(&t[..2], b.len()), None);
        assert_eq!(root_of(&t, 4 * GROUP), None);
        assert!(table_of(&b[..GROUP]).is_empty());
        assert_eq!(table_from_bytes(&table_bytes(&t)).as_deref(), Some(&t[..]));
        assert_eq!(table_from_bytes(&[0; 33]), None);
    }

    /// The pieces of `block` cut at `cuts` (fragment boundaries), in order.
    fn cut_pieces(block: &[u8], cuts: &[usize]) -> Vec<BlockPiece> {
        let mut bounds = vec![0];
        bounds.extend(cuts.iter().map(|&c| c.min(block.len())));
        bounds.push(block.len());
        bounds.sort_unstable();
        bounds
            .windows(2)
            .flat_map(|w| {
                pieces_of(
                    &block[w[0]..w[1]],
                    InBlock {
                        offset: w[0] as u32,
                        len: (w[1] - w[0]) as u32,
                        block_len: block.len() as u32,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn pieces_of_fragments_root_to_blake3_and_a_changed_byte_does_not() {
        for (len, cuts) in [
            (10, vec![5]),
            (GROUP, vec![GROUP / 2]),
            (GROUP + 1, vec![(GROUP + 1).div_ceil(2)]),
            (4 << 20, vec![2 << 20]),
            (3 * GROUP + 5, vec![100, 2 * GROUP + 3]),
            (5 * GROUP, vec![GROUP + 7, GROUP + 9, 3 * GROUP]),
        ] {
            let mut b = bytes(len, 3);
            let pieces = cut_pieces(&b, &cuts);
            assert_eq!(
                root_from_pieces(&pieces, len),
                Some(*blake3::hash(&b).as_bytes()),
                "len {len} cuts {cuts:?}"
            );
            b[len / 3] ^= 0x10;
            assert_ne!(
                root_from_pieces(&cut_pieces(&b, &cuts), len),
                Some(*blake3::hash(&bytes(len, 3)).as_bytes())
            );
            // A piece missing or one too many: no root.
            assert_eq!(root_from_pieces(&pieces[1..], len), None);
            let mut more = pieces.clone();
            more.push(BlockPiece::Bytes(vec![0]));
            assert_eq!(root_from_pieces(&more, len), None);
        }
    }

    proptest! {
        #[test]
        fn pieces_at_any_cuts_root_to_blake3(
            len in 1usize..(12 * GROUP),
            cuts in proptest::collection::vec(0usize..(12 * GROUP), 0..4),
            seed in any::<u8>(),
        ) {
            let b = bytes(len, seed);
            prop_assert_eq!(
                root_from_pieces(&cut_pieces(&b, &cuts), len),
                Some(*blake3::hash(&b).as_bytes())
            );
        }

        #[test]
        fn any_length_roots_to_blake3(len in (GROUP + 1)..(40 * GROUP), seed in any::<u8>()) {
            let b = bytes(len, seed);
            prop_assert_eq!(root_of(&table_of(&b), len), Some(*blake3::hash(&b).as_bytes()));
        }
    }
}
