//! End-to-end checks of the bytes a client reads: every range handed to
//! a caller was checked against the block's checksum, the blake3 of its
//! bytes that the writer recorded in the meta at commit. A range is
//! checked group by group against the block's table (kept with every
//! fragment, itself checked against the checksum once and then cached), or
//! as the whole block when the block is small or has no table (written
//! before tables). Owns: which bytes to read for a check, and the check.
//! Must not touch: sockets (data.rs fetches).

use sparefs_erasure::block_table::{self, GROUP};
use sparefs_proto::layout::BlockRef;
use sparefs_proto::BlockId;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

pub type Table = Arc<Vec<blake3::hazmat::ChainingValue>>;

/// How a range of a block is checked: the bytes `[start, end)` of the block
/// to read (the asked range widened to whole groups, or to the whole
/// block), and what they must hash to.
pub struct Check {
    pub start: u32,
    pub end: u32,
    table: Option<Table>,
    checksum: [u8; 32],
}

impl Check {
    /// The check of `[boff, boff + len)` of `block`, given its verified
    /// table if it has one.
    pub fn of(block: &BlockRef, boff: u32, len: u32, table: Option<Table>) -> Check {
        let group = GROUP as u32;
        match table {
            Some(table) => Check {
                start: boff / group * group,
                end: ((boff + len).div_ceil(group) * group).min(block.bytes),
                table: Some(table),
                checksum: block.checksum,
            },
            None => Check {
                start: 0,
                end: block.bytes,
                table: None,
                checksum: block.checksum,
            },
        }
    }

    /// Whether `bytes` (the block's `[start, end)`) are the block's.
    pub fn passes(&self, bytes: &[u8]) -> bool {
        if bytes.len() != (self.end - self.start) as usize {
            return false;
        }
        match &self.table {
            None => blake3::hash(bytes).as_bytes() == &self.checksum,
            Some(table) => {
                let first = self.start as usize / GROUP;
                bytes.chunks(GROUP).enumerate().all(|(i, g)| {
                    table.get(first + i) == Some(&block_table::group_cv((first + i) * GROUP, g))
                })
            }
        }
    }
}

/// Verified tables of recently read blocks, bounded by count (a table is
/// at most 8 KiB: 2,048 of them hold at most 16 MiB).
pub struct Tables {
    cache: Mutex<(HashMap<BlockId, Table>, VecDeque<BlockId>)>,
}

const TABLES_MAX: usize = 2048;

impl Default for Tables {
    fn default() -> Tables {
        Tables {
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }
}

impl Tables {
    pub fn get(&self, block: BlockId) -> Option<Table> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.0.get(&block).cloned()
    }

    /// Keeps `bytes` as `block`'s table if it is one whose root is the
    /// block's checksum; the table, or `None` if it is not.
    pub fn admit(&self, block: &BlockRef, bytes: &[u8]) -> Option<Table> {
        let table = block_table::table_from_bytes(bytes)?;
        if block_table::root_of(&table, block.bytes as usize)? != block.checksum {
            return None;
        }
        let table = Arc::new(table);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *cache;
        if map.insert(block.id, table.clone()).is_none() {
            order.push_back(block.id);
            while order.len() > TABLES_MAX {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
        Some(table)
    }
}

/// Whether a block this size is checked through a table (larger than one
/// group) rather than whole.
pub fn has_table(block: &BlockRef) -> bool {
    block.bytes as usize > GROUP
}

#[cfg(test)]
mod tests {
    use super::*;
    use sparefs_proto::layout::Policy;

    fn block_of(bytes: &[u8]) -> BlockRef {
        BlockRef {
            id: BlockId(1),
            policy: Policy::Rep { copies: 1 },
            bytes: bytes.len() as u32,
            fragments: Vec::new(),
            checksum: *blake3::hash(bytes).as_bytes(),
            slot_base: 0,
        }
    }

    #[test]
    fn a_range_is_widened_to_groups_and_checked_there() {
        let data: Vec<u8> = (0..(5 * GROUP + 300))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let block = block_of(&data);
        let tables = Tables::default();
        let table = tables
            .admit(
                &block,
                &block_table::table_bytes(&block_table::table_of(&data)),
            )
            .expect("the table's root is the checksum");
        let c = Check::of(&block, GROUP as u32 + 10, 100, Some(table.clone()));
        assert_eq!((c.start, c.end), (GROUP as u32, 2 * GROUP as u32));
        assert!(c.passes(&data[GROUP..2 * GROUP]));
        let mut bad = data[GROUP..2 * GROUP].to_vec();
        bad[5] ^= 1;
        assert!(!c.passes(&bad));
        // The last, short group.
        let c = Check::of(&block, 5 * GROUP as u32, 300, Some(table));
        assert_eq!(c.end, data.len() as u32);
        assert!(c.passes(&data[5 * GROUP..]));
        // Without a table: the whole block.
        let c = Check::of(&block, 10, 10, None);
        assert_eq!((c.start, c.end), (0, data.len() as u32));
        assert!(c.passes(&data));
    }

    #[test]
    fn a_table_that_does_not_root_to_the_checksum_is_refused() {
        let data = vec![3u8; 3 * GROUP];
        let block = block_of(&data);
        let mut table = block_table::table_of(&data);
        table[1][0] ^= 1;
        let tables = Tables::default();
        assert!(tables
            .admit(&block, &block_table::table_bytes(&table))
            .is_none());
        assert!(tables.get(block.id).is_none());
        assert!(tables.admit(&block, &[1, 2, 3]).is_none());
    }
}
