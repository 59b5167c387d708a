//! The block table: where each block's fragments are, how it is encoded,
//! and how many slices reference it. Slices carry block ids; the table is
//! the one place locations change (repair, moves, re-encoding), and readers
//! get locations from it.
//!
//! A block is born `pending` at allocation (a row in `Pending` with its
//! time), becomes committed when a slice first references it, and leaves the
//! table when its last reference goes (overwritten, truncated, deleted) or
//! when it stays uncommitted past the grace period (its client died). Its
//! fragments are then garbage: chunkservers learn so from their inventory
//! reports (`gc_verdicts`), which compare what they hold with this table.

use super::records::{chunk_key, inode_key};
use super::NsResult;
use crate::kv::{be, decode, read_be, Cf, ReadKv, StoreError, Tx};
use serde::{Deserialize, Serialize};
use sparefs_proto::layout::{BlockRef, Policy, Slice, NO_SERVER};
use sparefs_proto::namespace::Time;
use sparefs_proto::{BlockId, ChunkserverId, Errno, InodeId};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRec {
    /// How the block is stored now.
    pub policy: Policy,
    /// The policy it should have; differs while it waits to be re-encoded
    /// (written while too few hosts were up).
    pub wanted: Policy,
    /// Bytes of the block; 0 until committed.
    pub bytes: u32,
    pub slot_base: u8,
    /// Chunkserver of each fragment; `NO_SERVER` for a lost one.
    pub fragments: Vec<ChunkserverId>,
    /// Slices referencing this block.
    pub refs: u32,
    /// Last change of its layout (allocation, commit, relocation).
    pub changed: Time,
}

impl BlockRec {
    /// The fragment index of `slot`, if the slot belongs to this layout.
    pub fn index_of(&self, slot: u8) -> Option<usize> {
        let i = slot.wrapping_sub(self.slot_base) as usize;
        (i < self.fragments.len()).then_some(i)
    }
}

pub fn block_key(id: BlockId) -> Vec<u8> {
    be(id.0).to_vec()
}

pub fn load_block(kv: &impl ReadKv, id: BlockId) -> Result<Option<BlockRec>, StoreError> {
    kv.get_rec(Cf::Blocks, &block_key(id))
}

/// Records freshly allocated blocks as pending.
pub fn allocate<R: ReadKv>(
    tx: &mut Tx<R>,
    ids: &[BlockId],
    policy: Policy,
    wanted: Policy,
    placement: &[ChunkserverId],
    now: Time,
) {
    for id in ids {
        let rec = BlockRec {
            policy,
            wanted,
            bytes: 0,
            slot_base: 0,
            fragments: placement.to_vec(),
            refs: 0,
            changed: now,
        };
        tx.put_rec(Cf::Blocks, block_key(*id), &rec);
        tx.put_rec(Cf::Pending, block_key(*id), &now);
    }
}

/// References per block in a chunk's slices (a slice counts once per block).
fn refs_of(slices: &[Slice]) -> HashMap<BlockId, (i64, Option<&BlockRef>)> {
    let mut out: HashMap<BlockId, (i64, Option<&BlockRef>)> = HashMap::new();
    for s in slices {
        let mut seen: Vec<BlockId> = Vec::with_capacity(s.blocks.len());
        for b in &s.blocks {
            if !seen.contains(&b.id) {
                seen.push(b.id);
                let e = out.entry(b.id).or_insert((0, Some(b)));
                e.0 += 1;
            }
        }
    }
    out
}

/// Replaces a chunk's slices, moving the references of the blocks they use:
/// a block gaining its first reference is committed (it must be pending or
/// live, and stored as its row says), one losing its last leaves the table.
pub fn put_chunk<R: ReadKv>(
    tx: &mut Tx<R>,
    ino: InodeId,
    index: u64,
    old: &[Slice],
    new: Vec<Slice>,
    now: Time,
) -> NsResult<()> {
    let before = refs_of(old);
    let after = refs_of(&new);
    let mut deltas: Vec<(BlockId, i64, Option<&BlockRef>)> = Vec::new();
    for (id, (n, b)) in &after {
        let was = before.get(id).map(|e| e.0).unwrap_or(0);
        if *n != was {
            deltas.push((*id, n - was, *b));
        }
    }
    for (id, (n, _)) in &before {
        if !after.contains_key(id) {
            deltas.push((*id, -n, None));
        }
    }
    deltas.sort_by_key(|d| d.0);
    for (id, delta, given) in deltas {
        let key = block_key(id);
        let Some(mut rec) = tx.get_rec::<BlockRec>(Cf::Blocks, &key)? else {
            if delta > 0 {
                // Abandoned (its client took longer than the grace period)
                // or never allocated: the write must be redone.
                return Err(Errno::ESTALE.into());
            }
            continue;
        };
        if delta > 0 && rec.refs == 0 {
            let b = given.ok_or(Errno::EINVAL)?;
            if b.policy != rec.policy || b.bytes == 0 {
                return Err(Errno::EINVAL.into());
            }
            rec.bytes = b.bytes;
            rec.changed = now;
            tx.delete(Cf::Pending, key.clone());
        }
        let refs = (rec.refs as i64 + delta).max(0);
        if refs == 0 {
            tx.delete(Cf::Blocks, key.clone());
            tx.delete(Cf::Pending, key);
        } else {
            rec.refs = refs as u32;
            tx.put_rec(Cf::Blocks, key, &rec);
        }
    }
    let key = chunk_key(ino, index);
    // Chunks with many slices wait in `Compact` for a rewrite.
    if new.len() > COMPACT_SLICES {
        if tx.get(Cf::Compact, &key)?.is_none() {
            tx.put_rec(Cf::Compact, key.clone(), &now);
        }
    } else if old.len() > COMPACT_SLICES {
        tx.delete(Cf::Compact, key.clone());
    }
    if new.is_empty() {
        tx.delete(Cf::Chunks, key);
    } else {
        tx.put_rec(Cf::Chunks, key, &new);
    }
    Ok(())
}

/// A chunk with more slices than this is rewritten in the background.
pub const COMPACT_SLICES: usize = 32;

/// Chunks dropped per `PurgeDeleted` command (bounds the entry's size).
pub const PURGE_CHUNKS_MAX: usize = 512;

/// Drops up to `PURGE_CHUNKS_MAX` chunks of deleted inodes; an inode whose
/// chunks are all gone leaves the deleted list.
pub fn purge_deleted<R: ReadKv>(tx: &mut Tx<R>, now: Time) -> NsResult<()> {
    let mut budget = PURGE_CHUNKS_MAX;
    for (k, _) in tx.scan(Cf::Deleted, &[], &[], 64)? {
        let ino = InodeId(read_be(&k).ok_or_else(|| StoreError::Invalid("deleted key".into()))?);
        let page = tx.scan(Cf::Chunks, &be(ino.0), &be(ino.0), budget)?;
        let finished = page.len() < budget;
        for (ck, v) in page {
            let slices: Vec<Slice> = decode(Cf::Chunks, &v)?;
            let index = read_be(ck.get(8..).unwrap_or_default())
                .ok_or_else(|| StoreError::Invalid("chunk key".into()))?;
            put_chunk(tx, ino, index, &slices, Vec::new(), now)?;
            budget -= 1;
        }
        if finished {
            tx.delete(Cf::Deleted, inode_key(ino));
        }
        if budget == 0 {
            break;
        }
    }
    Ok(())
}

/// Blocks forgotten per `AbandonBlocks` command.
pub const ABANDON_MAX: usize = 4096;

/// Forgets blocks allocated before `before` that no slice references.
pub fn abandon<R: ReadKv>(tx: &mut Tx<R>, before: Time) -> NsResult<()> {
    for (k, v) in tx.scan(Cf::Pending, &[], &[], ABANDON_MAX)? {
        let at: Time = decode(Cf::Pending, &v)?;
        if at >= before {
            // Ids grow with time: the rest is younger.
            break;
        }
        tx.delete(Cf::Pending, k.clone());
        if let Some(rec) = tx.get_rec::<BlockRec>(Cf::Blocks, &k)? {
            if rec.refs == 0 {
                tx.delete(Cf::Blocks, k);
            }
        }
    }
    Ok(())
}

/// Applies a finished repair task if the block still has the layout the
/// task was made for. Moving single fragments keeps the layout; a task with
/// a new policy or slot base replaces the whole layout (all fragments).
pub fn relocate<R: ReadKv>(
    tx: &mut Tx<R>,
    block: BlockId,
    from_base: u8,
    policy: Policy,
    base: u8,
    written: &[(u8, ChunkserverId)],
    now: Time,
) -> NsResult<()> {
    let key = block_key(block);
    let Some(mut rec) = tx.get_rec::<BlockRec>(Cf::Blocks, &key)? else {
        return Ok(());
    };
    if rec.slot_base != from_base || written.iter().any(|(_, s)| *s == NO_SERVER) {
        return Ok(());
    }
    if policy == rec.policy && base == rec.slot_base {
        for (i, server) in written {
            let Some(slot) = rec.fragments.get_mut(*i as usize) else {
                return Err(Errno::EINVAL.into());
            };
            *slot = *server;
        }
    } else {
        let mut fragments = vec![NO_SERVER; policy.width()];
        for (i, server) in written {
            let Some(slot) = fragments.get_mut(*i as usize) else {
                return Err(Errno::EINVAL.into());
            };
            *slot = *server;
        }
        if fragments.contains(&NO_SERVER) {
            return Err(Errno::EINVAL.into());
        }
        rec.policy = policy;
        rec.slot_base = base;
        rec.fragments = fragments;
    }
    let mut distinct = rec.fragments.clone();
    distinct.retain(|s| *s != NO_SERVER);
    distinct.sort();
    let n = distinct.len();
    distinct.dedup();
    if distinct.len() != n {
        // Two fragments on one host would not survive its loss.
        return Err(Errno::EINVAL.into());
    }
    rec.changed = now;
    tx.put_rec(Cf::Blocks, key, &rec);
    Ok(())
}

/// Marks a fragment lost, if it is still where the report says.
pub fn lose<R: ReadKv>(
    tx: &mut Tx<R>,
    block: BlockId,
    slot: u8,
    server: ChunkserverId,
    now: Time,
) -> NsResult<()> {
    let key = block_key(block);
    let Some(mut rec) = tx.get_rec::<BlockRec>(Cf::Blocks, &key)? else {
        return Ok(());
    };
    let Some(i) = rec.index_of(slot) else {
        return Ok(());
    };
    if rec.fragments[i] == server {
        rec.fragments[i] = NO_SERVER;
        rec.changed = now;
        tx.put_rec(Cf::Blocks, key, &rec);
    }
    Ok(())
}

/// Whether any block keeps a fragment on `server` (a scan of the table:
/// for the rare removal of a chunkserver).
pub fn server_holds_any(kv: &impl ReadKv, server: ChunkserverId) -> Result<bool, StoreError> {
    let mut from = Vec::new();
    loop {
        let page = kv.scan(Cf::Blocks, &[], &from, 1024)?;
        for (k, v) in &page {
            let rec: BlockRec = decode(Cf::Blocks, v)?;
            if rec.fragments.contains(&server) {
                return Ok(true);
            }
            from = k.clone();
            from.push(0);
        }
        if page.len() < 1024 {
            return Ok(false);
        }
    }
}

/// Gives each block of `slices` its current layout from the table.
pub fn fill_layouts(kv: &impl ReadKv, slices: &mut [Slice]) -> Result<(), StoreError> {
    let mut cache: HashMap<BlockId, Option<BlockRec>> = HashMap::new();
    for s in slices.iter_mut() {
        for b in s.blocks.iter_mut() {
            if let std::collections::hash_map::Entry::Vacant(e) = cache.entry(b.id) {
                e.insert(load_block(kv, b.id)?);
            }
            if let Some(Some(rec)) = cache.get(&b.id) {
                b.policy = rec.policy;
                b.slot_base = rec.slot_base;
                b.fragments = rec.fragments.clone();
            }
        }
    }
    Ok(())
}

/// What a chunkserver's inventory page means: fragments to delete (no
/// block has them at that slot on that server, and they are older than
/// `grace_secs`), and fragments the table places there that the page lacks
/// (lost), for blocks whose layout is older than `settle`.
pub struct Verdicts {
    pub delete: Vec<(BlockId, u8)>,
    pub missing: Vec<(BlockId, u8)>,
}

pub fn gc_verdicts(
    kv: &impl ReadKv,
    server: ChunkserverId,
    after: Option<(BlockId, u8)>,
    items: &[(BlockId, u8, u32)],
    last_page: bool,
    grace_secs: u32,
    settled_before: Time,
) -> Result<Verdicts, StoreError> {
    let next_block = super::records::sys_u64(kv, super::records::SYS_NEXT_BLOCK)?;
    let mut delete = Vec::new();
    let held: std::collections::HashSet<(BlockId, u8)> =
        items.iter().map(|(b, s, _)| (*b, *s)).collect();
    for (block, slot, age) in items {
        if *age < grace_secs || block.0 >= next_block {
            continue;
        }
        let keep = match load_block(kv, *block)? {
            Some(rec) => rec
                .index_of(*slot)
                .is_some_and(|i| rec.fragments[i] == server),
            None => false,
        };
        if !keep {
            delete.push((*block, *slot));
        }
    }
    // Blocks in the page's key range that should have a fragment here.
    let start = after.map(|(b, _)| b.0).unwrap_or(0);
    let end = if last_page {
        u64::MAX
    } else {
        items.last().map(|(b, _, _)| b.0).unwrap_or(start)
    };
    let mut missing = Vec::new();
    let mut from = be(start).to_vec();
    'scan: loop {
        let page = kv.scan(Cf::Blocks, &[], &from, 1024)?;
        let exhausted = page.len() < 1024;
        for (k, v) in &page {
            let id = read_be(k).ok_or_else(|| StoreError::Invalid("block key".into()))?;
            if id > end {
                break 'scan;
            }
            let rec: BlockRec = decode(Cf::Blocks, v)?;
            if rec.refs == 0 || rec.changed >= settled_before {
                continue;
            }
            for (i, s) in rec.fragments.iter().enumerate() {
                let slot = rec.slot_base.wrapping_add(i as u8);
                let in_range = after.is_none_or(|a| (BlockId(id), slot) > a)
                    && (last_page
                        || (id, slot) <= items.last().map(|(b, s, _)| (b.0, *s)).unwrap_or((0, 0)));
                if *s == server && in_range && !held.contains(&(BlockId(id), slot)) {
                    missing.push((BlockId(id), slot));
                }
            }
            from = k.clone();
            from.push(0);
        }
        if exhausted {
            break;
        }
    }
    Ok(Verdicts { delete, missing })
}
