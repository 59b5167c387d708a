//! A file's layout: committing written slices, truncating, compaction's
//! replacement of slices.

use super::attrs::*;
use super::blocks;
use super::records::*;
use super::{NsError, NsResult};
use crate::kv::{be, read_be, Cf, ReadKv, StoreError, Tx};
use sparefs_proto::layout::{BlockRef, Capability, Policy, Slice};
use sparefs_proto::limits::*;
use sparefs_proto::namespace::*;
use sparefs_proto::{BlockId, ChunkserverId, Errno, InodeId};

/// Shrinking a file: chunks wholly past the new end go; the chunk holding
/// the new end gets a hole slice over its tail, so a later extension reads
/// zeros there.
pub(super) fn truncate_layout<R: ReadKv>(
    tx: &mut Tx<R>,
    ino: InodeId,
    size: u64,
    old_size: u64,
    now: Time,
) -> NsResult<()> {
    let keep_chunks = size.div_ceil(CHUNK_BYTES);
    let prefix = be(ino.0);
    let start = chunk_key(ino, keep_chunks);
    loop {
        let page = tx.scan(Cf::Chunks, &prefix, &start, 256)?;
        if page.is_empty() {
            break;
        }
        for (k, v) in page {
            let slices: Vec<Slice> = crate::kv::decode(Cf::Chunks, &v)?;
            let index = read_be(k.get(8..).unwrap_or_default())
                .ok_or_else(|| StoreError::Invalid("chunk key".into()))?;
            blocks::put_chunk(tx, ino, index, &slices, Vec::new(), now)?;
        }
    }
    let within = size % CHUNK_BYTES;
    if within != 0 && old_size > size {
        let index = size / CHUNK_BYTES;
        let key = chunk_key(ino, index);
        if let Some(old) = tx.get_rec::<Vec<Slice>>(Cf::Chunks, &key)? {
            let seq = next_id(tx, SYS_NEXT_SLICE, 1)?;
            let mut slices = old.clone();
            slices.push(Slice {
                seq,
                offset: within as u32,
                bytes: (CHUNK_BYTES - within) as u32,
                blocks: Vec::new(),
                block_offset: 0,
                inline: Vec::new(),
            });
            blocks::put_chunk(tx, ino, index, &old, drop_hidden_slices(slices), now)?;
        }
    }
    Ok(())
}

/// Commits slices, then the attribute changes that were held back behind
/// them (`then`: chmod, chown, utimes, never a truncate), each as its own
/// caller.
pub(super) fn commit_slices<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    now: Time,
    ino: InodeId,
    slices: &[(u64, Slice)],
    size_at_least: u64,
    then: &[(Caller, SetAttr)],
) -> NsResult<NsReply> {
    let mut inode = load(tx, ino)?;
    if inode.kind != FileKind::File {
        return Err(Errno::EINVAL.into());
    }
    // Writes come through a descriptor, whose access was granted at open
    // (`Access`): a file created with mode 0 is written through the
    // descriptor that created it. The caller still decides the set-id bits.
    if size_at_least > FILE_BYTES_MAX {
        return Err(Errno::EFBIG.into());
    }
    for (index, slice) in slices {
        check_slice(*index, slice)?;
    }
    // One read, prune and write of each chunk record, however many slices
    // a flush brings (a random-write flush brings thousands).
    let mut by_chunk: std::collections::BTreeMap<u64, Vec<&Slice>> =
        std::collections::BTreeMap::new();
    for (index, slice) in slices {
        by_chunk.entry(*index).or_default().push(slice);
    }
    for (index, new) in by_chunk {
        let key = chunk_key(ino, index);
        let old: Vec<Slice> = tx.get_rec(Cf::Chunks, &key)?.unwrap_or_default();
        let mut existing = old.clone();
        let first = next_id(tx, SYS_NEXT_SLICE, new.len() as u64)?;
        let any_inline = new.iter().any(|s| !s.inline.is_empty());
        for (i, s) in new.into_iter().enumerate() {
            existing.push(Slice {
                seq: first + i as u64,
                ..s.clone()
            });
        }
        let existing = drop_hidden_slices(existing);
        let inline_bytes: usize = existing.iter().map(|s| s.inline.len()).sum();
        if any_inline && inline_bytes > INLINE_CHUNK_BYTES_MAX {
            // Enough small writes live in this chunk's record: the client
            // writes these as blocks instead.
            return Err(Errno::EFBIG.into());
        }
        blocks::put_chunk(tx, ino, index, &old, existing, now)?;
    }
    if size_at_least > inode.size {
        inode.size = size_at_least;
    }
    kill_suid(&mut inode, c);
    inode.mtime = now;
    inode.ctime = now;
    store(tx, ino, &inode);
    let mut reply = NsReply::Attr(inode.attr(ino));
    for (caller, set) in then {
        if set.size.is_some() {
            // A truncate is never held back behind writes.
            return Err(Errno::EINVAL.into());
        }
        reply = setattr(tx, caller, now, ino, set, Access::Check)?;
    }
    Ok(reply)
}

/// A slice a client asks to commit: inside its chunk, not empty, and its
/// blocks (or inline bytes) cover it.
pub(super) fn check_slice(index: u64, slice: &Slice) -> NsResult<()> {
    let end = slice.offset as u64 + slice.bytes as u64;
    let blocks_bytes: u64 = slice.blocks.iter().map(|b| b.bytes as u64).sum();
    let blocks_ok = slice.blocks.iter().all(valid_block);
    // A slice without blocks is a hole (fallocate punch hole) or inline.
    let inline = !slice.inline.is_empty();
    let hole = slice.blocks.is_empty() && !inline;
    let inline_ok = !inline
        || (slice.blocks.is_empty()
            && slice.inline.len() == slice.bytes as usize
            && slice.inline.len() <= INLINE_SLICE_BYTES_MAX);
    let blocks_cover = blocks_bytes >= slice.block_offset as u64 + slice.bytes as u64;
    if end > CHUNK_BYTES
        || slice.bytes == 0
        || (!hole && !inline && !blocks_cover)
        || !blocks_ok
        || !inline_ok
    {
        return Err(Errno::EINVAL.into());
    }
    if index.saturating_mul(CHUNK_BYTES) > FILE_BYTES_MAX {
        return Err(Errno::EFBIG.into());
    }
    Ok(())
}

/// Swaps a chunk's older slices for their compacted rewrite (see
/// `WriteOp::ReplaceSlices`). Readers see the same bytes before and after.
pub(super) fn replace_slices<R: ReadKv>(
    tx: &mut Tx<R>,
    now: Time,
    ino: InodeId,
    index: u64,
    through_seq: u64,
    replaced: &[u64],
    slices: &[Slice],
) -> NsResult<NsReply> {
    let key = chunk_key(ino, index);
    let old: Vec<Slice> = tx.get_rec(Cf::Chunks, &key)?.ok_or(Errno::ESTALE)?;
    let replaced: std::collections::HashSet<u64> = replaced.iter().copied().collect();
    let older: Vec<&Slice> = old.iter().filter(|s| s.seq <= through_seq).collect();
    if older.is_empty() || older.iter().any(|s| !replaced.contains(&s.seq)) {
        return Err(Errno::ESTALE.into());
    }
    for s in slices {
        check_slice(index, s)?;
    }
    let mut new: Vec<Slice> = slices
        .iter()
        .map(|s| Slice {
            seq: through_seq,
            ..s.clone()
        })
        .collect();
    new.extend(old.iter().filter(|s| s.seq > through_seq).cloned());
    blocks::put_chunk(tx, ino, index, &old, drop_hidden_slices(new), now)?;
    Ok(NsReply::Done)
}

/// Drops slices that newer slices cover entirely: no read can see them, so
/// keeping them would only grow the chunk record with every overwrite
/// (their blocks become garbage for the collector). Order is kept.
pub fn drop_hidden_slices(slices: Vec<Slice>) -> Vec<Slice> {
    let mut order: Vec<usize> = (0..slices.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse(slices[*i].seq));
    // Disjoint, non-adjacent covered intervals: start -> end (exclusive).
    let mut covered: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    let mut keep = vec![false; slices.len()];
    for i in order {
        let (a, b) = (
            slices[i].offset as u64,
            slices[i].offset as u64 + slices[i].bytes as u64,
        );
        let hidden = covered
            .range(..=a)
            .next_back()
            .is_some_and(|(_, end)| *end >= b);
        keep[i] = !hidden;
        if !hidden {
            // Insert [a, b) and merge every interval it touches.
            let (mut start, mut end) = (a, b);
            if let Some((s, e)) = covered.range(..=a).next_back().map(|(s, e)| (*s, *e)) {
                if e >= a {
                    start = s;
                    end = end.max(e);
                }
            }
            let inside: Vec<u64> = covered.range(start..=end).map(|(s, _)| *s).collect();
            for s in inside {
                if let Some(e) = covered.remove(&s) {
                    end = end.max(e);
                }
            }
            covered.insert(start, end);
        }
    }
    slices
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(s, _)| s)
        .collect()
}

pub(super) fn valid_block(b: &BlockRef) -> bool {
    let width_ok = b.policy.validate().is_ok() && b.fragments.len() == b.policy.width();
    let mut hosts = b.fragments.clone();
    hosts.sort();
    hosts.dedup();
    width_ok && hosts.len() == b.fragments.len() && b.bytes as u64 <= BLOCK_BYTES_MAX && b.bytes > 0
}

/// New block ids for `count` blocks placed on `placement` (chosen by the
/// leader), with write capabilities; pending until a commit names them.
pub(super) fn allocate_blocks<R: ReadKv>(
    tx: &mut Tx<R>,
    now: Time,
    count: u32,
    policy: Policy,
    placement: &[ChunkserverId],
    wanted: Option<Policy>,
) -> NsResult<NsReply> {
    policy.validate().map_err(|_| Errno::EINVAL)?;
    if count == 0 || count > 1024 || placement.len() != policy.width() {
        return Err(Errno::EINVAL.into());
    }
    let key = cluster_key(tx)?.ok_or(NsError::Errno(Errno::EAGAIN))?;
    let first = next_id(tx, SYS_NEXT_BLOCK, count as u64)?;
    let ids: Vec<BlockId> = (0..count as u64).map(|i| BlockId(first + i)).collect();
    blocks::allocate(tx, &ids, policy, wanted.unwrap_or(policy), placement, now);
    let expires = now.secs.max(0) as u64 + CAPABILITY_SECS;
    let capabilities = ids
        .iter()
        .map(|b| Capability::issue(&key, *b, true, expires, placement))
        .collect();
    Ok(NsReply::Allocated {
        ids,
        policy,
        placement: placement.to_vec(),
        capabilities,
    })
}

#[cfg(test)]
mod tests {
    use super::drop_hidden_slices;
    use sparefs_proto::layout::Slice;

    fn s(seq: u64, offset: u32, bytes: u32) -> Slice {
        Slice {
            seq,
            offset,
            bytes,
            blocks: vec![],
            block_offset: 0,
            inline: vec![],
        }
    }

    #[test]
    fn hidden_slices_go_visible_ones_stay() {
        let out = drop_hidden_slices(vec![s(1, 0, 100), s(2, 50, 10), s(3, 0, 40), s(4, 40, 60)]);
        // 1 is covered by 3 ∪ 4; 2 by 4; 3 and 4 stay.
        assert_eq!(out.iter().map(|x| x.seq).collect::<Vec<_>>(), vec![3, 4]);
        let out = drop_hidden_slices(vec![s(1, 0, 100), s(2, 10, 10)]);
        assert_eq!(out.len(), 2, "a partly covered slice stays");
    }
}
