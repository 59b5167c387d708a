//! The key-value view the state machine works on: column families, versioned
//! value encoding, and `Tx`, an overlay of uncommitted writes over a reader.
//!
//! The state machine only sees `ReadKv` and `Tx`; it never touches RocksDB or
//! Raft. Applying one command writes into its own `Tx`; on success the writes
//! join the entry's `Tx`, on an error they are dropped, so a failed command
//! leaves no partial change behind.

use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;

/// Column families of the replicated state. Raft's own log and hard state
/// live in `raft_log` / `raft_state`, which are not part of this list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    Inodes,
    Dentries,
    DirIndex,
    Xattrs,
    Chunks,
    Chunkservers,
    Sessions,
    Sys,
    Deleted,
    Locks,
    LockOwners,
    Blocks,
    Pending,
    Compact,
    /// Cluster configuration records (`ns::config`).
    Config,
    /// Writer fences of files (`ns::fence`).
    Fences,
}

pub const STATE_CFS: [Cf; 16] = [
    Cf::Inodes,
    Cf::Dentries,
    Cf::DirIndex,
    Cf::Xattrs,
    Cf::Chunks,
    Cf::Chunkservers,
    Cf::Sessions,
    Cf::Sys,
    Cf::Deleted,
    Cf::Locks,
    Cf::LockOwners,
    Cf::Blocks,
    Cf::Pending,
    Cf::Compact,
    Cf::Config,
    Cf::Fences,
];

impl Cf {
    pub fn name(self) -> &'static str {
        match self {
            Cf::Inodes => "inodes",
            Cf::Dentries => "dentries",
            Cf::DirIndex => "dirindex",
            Cf::Xattrs => "xattrs",
            Cf::Chunks => "chunks",
            Cf::Chunkservers => "chunkservers",
            Cf::Sessions => "sessions",
            Cf::Sys => "sys",
            Cf::Deleted => "deleted",
            Cf::Locks => "locks",
            Cf::LockOwners => "lock_owners",
            Cf::Blocks => "blocks",
            Cf::Pending => "pending",
            Cf::Compact => "compact",
            Cf::Config => "config",
            Cf::Fences => "fences",
        }
    }

    pub fn index(self) -> u8 {
        STATE_CFS
            .iter()
            .position(|c| *c == self)
            .expect("every Cf is in STATE_CFS") as u8
    }

    pub fn from_index(i: u8) -> Option<Cf> {
        STATE_CFS.get(i as usize).copied()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt record in {cf}: {reason}")]
    Corrupt { cf: &'static str, reason: String },
    #[error("unsupported record version {version} in {cf}")]
    Version { cf: &'static str, version: u8 },
    #[error("{0}")]
    Invalid(String),
}

/// Every stored value starts with this version byte.
pub const RECORD_VERSION: u8 = 1;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    // Serializing our own plain structs into a Vec cannot fail.
    out.extend(postcard::to_stdvec(value).expect("postcard encodes owned structs"));
    out
}

pub fn decode<T: DeserializeOwned>(cf: Cf, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.first() {
        Some(&RECORD_VERSION) => {
            postcard::from_bytes(&bytes[1..]).map_err(|e| StoreError::Corrupt {
                cf: cf.name(),
                reason: e.to_string(),
            })
        }
        Some(&v) => Err(StoreError::Version {
            cf: cf.name(),
            version: v,
        }),
        None => Err(StoreError::Corrupt {
            cf: cf.name(),
            reason: "empty value".into(),
        }),
    }
}

pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

pub trait ReadKv {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Up to `limit` pairs whose keys start with `prefix` and are >= `start`,
    /// in key order.
    fn scan(&self, cf: Cf, prefix: &[u8], start: &[u8], limit: usize) -> Result<Pairs, StoreError>;

    fn get_rec<T: DeserializeOwned>(&self, cf: Cf, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.get(cf, key)? {
            Some(v) => Ok(Some(decode(cf, &v)?)),
            None => Ok(None),
        }
    }
}

/// Uncommitted writes over a reader. `None` marks a deletion.
pub struct Tx<'a, R: ReadKv> {
    base: &'a R,
    writes: BTreeMap<(Cf, Vec<u8>), Option<Vec<u8>>>,
}

impl<'a, R: ReadKv> Tx<'a, R> {
    pub fn new(base: &'a R) -> Self {
        Tx {
            base,
            writes: BTreeMap::new(),
        }
    }

    pub fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert((cf, key), Some(value));
    }

    pub fn put_rec<T: Serialize>(&mut self, cf: Cf, key: Vec<u8>, value: &T) {
        self.put(cf, key, encode(value));
    }

    pub fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.writes.insert((cf, key), None);
    }

    pub fn into_writes(self) -> BTreeMap<(Cf, Vec<u8>), Option<Vec<u8>>> {
        self.writes
    }

    /// Takes on the writes of a nested transaction that succeeded.
    pub fn absorb(&mut self, writes: BTreeMap<(Cf, Vec<u8>), Option<Vec<u8>>>) {
        self.writes.extend(writes);
    }
}

impl<R: ReadKv> ReadKv for Tx<'_, R> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(&(cf, key.to_vec())) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(cf, key),
        }
    }

    fn scan(&self, cf: Cf, prefix: &[u8], start: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        // Pull base pages until `limit` live pairs are found past the overlay's
        // deletions, or the base runs out.
        let mut from = start.to_vec();
        let mut exhausted;
        loop {
            let page = self.base.scan(cf, prefix, &from, limit.max(16))?;
            exhausted = page.len() < limit.max(16);
            if let Some((last, _)) = page.last() {
                from = last.clone();
                from.push(0);
            }
            for (k, v) in page {
                merged.insert(k, Some(v));
            }
            let live = merged
                .keys()
                .filter(|k| !matches!(self.writes.get(&(cf, (*k).clone())), Some(None)))
                .count();
            if exhausted || live >= limit {
                break;
            }
        }
        let upper = if !exhausted {
            merged.keys().next_back().cloned()
        } else {
            None
        };
        for ((wcf, k), v) in self.writes.range((cf, start.to_vec())..) {
            if *wcf != cf || !k.starts_with(prefix) {
                if *wcf != cf {
                    break;
                }
                continue;
            }
            if let Some(u) = &upper {
                if k > u {
                    break;
                }
            }
            merged.insert(k.clone(), v.clone());
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .take(limit)
            .collect())
    }
}

/// Big-endian u64 keys sort numerically.
pub fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn read_be(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}
