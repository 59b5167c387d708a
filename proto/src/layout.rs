//! File layout records (chunks, slices, blocks, fragment placements),
//! redundancy policies and the chunkserver registry, as DESIGN.md describes.

use crate::{BlockId, ChunkserverId};
use serde::{Deserialize, Serialize};

/// How a block is stored: N full copies, or K data + M parity fragments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Policy {
    Rep { copies: u8 },
    Ec { data: u8, parity: u8 },
}

impl Policy {
    /// Fragments per block (one per host).
    pub fn width(self) -> usize {
        match self {
            Policy::Rep { copies } => copies as usize,
            Policy::Ec { data, parity } => data as usize + parity as usize,
        }
    }

    pub fn validate(self) -> Result<Policy, String> {
        let ok = match self {
            Policy::Rep { copies } => (1..=crate::limits::POLICY_FRAGMENTS_MAX).contains(&copies),
            Policy::Ec { data, parity } => {
                data >= 1 && parity >= 1 && (data as usize + parity as usize) <= crate::limits::POLICY_FRAGMENTS_MAX as usize
            }
        };
        if ok { Ok(self) } else { Err(format!("policy {self} is out of range")) }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Policy::Rep { copies } => write!(f, "rep:{copies}"),
            Policy::Ec { data, parity } => write!(f, "ec:{data}+{parity}"),
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        let bad = || format!("policy {s:?} is neither rep:N nor ec:K+M");
        let policy = if let Some(n) = s.strip_prefix("rep:") {
            Policy::Rep { copies: n.parse().map_err(|_| bad())? }
        } else if let Some(km) = s.strip_prefix("ec:") {
            let (k, m) = km.split_once('+').ok_or_else(bad)?;
            Policy::Ec { data: k.parse().map_err(|_| bad())?, parity: m.parse().map_err(|_| bad())? }
        } else {
            return Err(bad());
        };
        policy.validate()
    }
}

/// One stored block: its fragments, in fragment order, on distinct chunkservers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    pub id: BlockId,
    pub policy: Policy,
    pub bytes: u32,
    pub fragments: Vec<ChunkserverId>,
    /// blake3 of the block's bytes, for end-to-end checks.
    pub checksum: [u8; 32],
}

/// An immutable run of bytes written in one flush at an offset in a chunk.
/// Newer slices (higher `seq`) overlay older ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    pub seq: u64,
    pub offset: u32,
    pub bytes: u32,
    pub blocks: Vec<BlockRef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkserverState {
    Up,
    Down,
    Out,
    Full,
}

impl ChunkserverState {
    pub fn name(self) -> &'static str {
        match self {
            ChunkserverState::Up => "up",
            ChunkserverState::Down => "down",
            ChunkserverState::Out => "out",
            ChunkserverState::Full => "full",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkserverInfo {
    pub id: ChunkserverId,
    pub address: String,
    pub state: ChunkserverState,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
}
