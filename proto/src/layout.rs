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

    /// Fragments needed to read a block.
    pub fn needed(self) -> usize {
        match self {
            Policy::Rep { .. } => 1,
            Policy::Ec { data, .. } => data as usize,
        }
    }

    pub fn validate(self) -> Result<Policy, String> {
        let ok = match self {
            Policy::Rep { copies } => (1..=crate::limits::POLICY_FRAGMENTS_MAX).contains(&copies),
            Policy::Ec { data, parity } => {
                data >= 1
                    && parity >= 1
                    && self.width() <= crate::limits::POLICY_FRAGMENTS_MAX as usize
            }
        };
        if ok {
            Ok(self)
        } else {
            Err(format!("policy {self} is out of range"))
        }
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
            Policy::Rep {
                copies: n.parse().map_err(|_| bad())?,
            }
        } else if let Some(km) = s.strip_prefix("ec:") {
            let (k, m) = km.split_once('+').ok_or_else(bad)?;
            Policy::Ec {
                data: k.parse().map_err(|_| bad())?,
                parity: m.parse().map_err(|_| bad())?,
            }
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
    /// Fragment `i` is stored on its chunkserver as slot `slot_base + i`.
    /// Re-encoding a block writes its new fragments under fresh slots, so
    /// old and new layouts never overwrite each other.
    pub slot_base: u8,
}

impl BlockRef {
    pub fn slot(&self, index: usize) -> u8 {
        self.slot_base.wrapping_add(index as u8)
    }
}

/// In a block's fragment list: the fragment is lost (a bad or missing
/// file, reported by its chunkserver) and waits to be rebuilt.
pub const NO_SERVER: ChunkserverId = ChunkserverId(0);

/// An immutable run of bytes written in one flush at an offset in a chunk.
/// Newer slices (higher `seq`) overlay older ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    pub seq: u64,
    pub offset: u32,
    pub bytes: u32,
    pub blocks: Vec<BlockRef>,
    /// Where the slice's first byte is in its blocks (laid end to end):
    /// small slices of one flush share a packed block.
    pub block_offset: u32,
    /// Small writes carried in the Raft entry itself (then `blocks` is
    /// empty): replicated by the meta group, durable when committed.
    /// Neither blocks nor inline bytes: a hole.
    #[serde(with = "serde_bytes")]
    pub inline: Vec<u8>,
}

impl Slice {
    /// A slice with neither blocks nor inline bytes (a hole until blocks
    /// are attached); the meta assigns `seq` at commit.
    pub fn empty(offset: u32, bytes: u32) -> Slice {
        Slice {
            seq: 0,
            offset,
            bytes,
            blocks: Vec::new(),
            block_offset: 0,
            inline: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkserverState {
    Up,
    Down,
    Out,
    Full,
}

/// Work the meta leader hands a chunkserver in a heartbeat reply: read the
/// block from `sources`, then write the fragments `outputs` lists, encoded
/// as `out_policy` under slots from `out_base`. Rebuilding one lost
/// fragment, moving one, and re-encoding a whole block are all this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairTask {
    pub block: BlockId,
    pub policy: Policy,
    pub bytes: u32,
    pub slot_base: u8,
    /// (fragment index, chunkserver address) of readable fragments.
    pub sources: Vec<(u8, String)>,
    pub out_policy: Policy,
    pub out_base: u8,
    /// (fragment index, chunkserver, address) to write.
    pub outputs: Vec<(u8, ChunkserverId, String)>,
    /// A write capability for the block (it allows reads too).
    pub cap: Capability,
}

/// A finished repair task, reported in the next heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairDone {
    pub block: BlockId,
    /// The block's slot base when the task was handed out.
    pub from_base: u8,
    pub out_policy: Policy,
    pub out_base: u8,
    /// (fragment index, chunkserver) now durable; empty when it failed.
    pub written: Vec<(u8, ChunkserverId)>,
    pub bytes: u64,
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
    /// Being emptied (`sparefs node drain`): gets no new fragments.
    pub draining: bool,
}

/// Permission, signed by the meta, to read or write the fragments of one
/// block on the chunkservers it names until `expires` (Unix seconds of the
/// meta leader's clock: hosts' clocks must agree to well within
/// `CAPABILITY_SECS`). Each named chunkserver has its own MAC, under its
/// own key (`server_key`), which is all it learns of the cluster key: a
/// chunkserver can check capabilities meant for it and can make none that
/// another chunkserver accepts. Chunkservers check it on every fragment
/// request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    pub block: BlockId,
    pub write: bool,
    pub expires: u64,
    pub macs: Vec<(ChunkserverId, [u8; 32])>,
}

pub type ClusterKey = [u8; 32];

/// A chunkserver's own capability key, derived from the cluster key.
pub type ServerKey = [u8; 32];

impl Capability {
    /// The key chunkserver `server` checks its capabilities with.
    pub fn server_key(cluster: &ClusterKey, server: ChunkserverId) -> ServerKey {
        let mut msg = Vec::with_capacity(40);
        msg.extend_from_slice(b"sparefs chunkserver key\0");
        msg.extend_from_slice(&server.0.to_be_bytes());
        *blake3::keyed_hash(cluster, &msg).as_bytes()
    }

    fn mac_of(key: &ServerKey, block: BlockId, write: bool, expires: u64) -> [u8; 32] {
        let mut msg = [0u8; 17];
        msg[..8].copy_from_slice(&block.0.to_be_bytes());
        msg[8] = write as u8;
        msg[9..].copy_from_slice(&expires.to_be_bytes());
        *blake3::keyed_hash(key, &msg).as_bytes()
    }

    /// A capability for `block` good at each of `servers` (each once).
    pub fn issue(
        cluster: &ClusterKey,
        block: BlockId,
        write: bool,
        expires: u64,
        servers: &[ChunkserverId],
    ) -> Capability {
        let mut macs: Vec<(ChunkserverId, [u8; 32])> = Vec::with_capacity(servers.len());
        for &s in servers {
            if s != NO_SERVER && !macs.iter().any(|(t, _)| *t == s) {
                let key = Self::server_key(cluster, s);
                macs.push((s, Self::mac_of(&key, block, write, expires)));
            }
        }
        Capability {
            block,
            write,
            expires,
            macs,
        }
    }

    /// Whether this capability allows chunkserver `me`, whose key is `key`,
    /// a `write` (or a read) of `block` at `now`.
    pub fn allows(
        &self,
        key: &ServerKey,
        me: ChunkserverId,
        block: BlockId,
        write: bool,
        now: u64,
    ) -> bool {
        let right = self.write || !write;
        let Some((_, mac)) = self.macs.iter().find(|(s, _)| *s == me) else {
            return false;
        };
        right
            && self.block == block
            && now <= self.expires
            && Self::mac_of(key, self.block, self.write, self.expires) == *mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte fields are encoded as byte strings (one copy, not a visit per
    /// byte), which postcard lays out exactly as it did a `Vec<u8>`
    /// sequence: slices stored before the change still decode.
    #[test]
    fn byte_fields_keep_their_encoding() {
        #[derive(Serialize)]
        struct OldSlice {
            seq: u64,
            offset: u32,
            bytes: u32,
            blocks: Vec<BlockRef>,
            block_offset: u32,
            inline: Vec<u8>,
        }
        let inline: Vec<u8> = (0..=255u8).chain(0..=255).collect();
        let old = postcard::to_stdvec(&OldSlice {
            seq: 3,
            offset: 5,
            bytes: inline.len() as u32,
            blocks: Vec::new(),
            block_offset: 0,
            inline: inline.clone(),
        })
        .expect("encode");
        let new = Slice {
            seq: 3,
            inline,
            ..Slice::empty(5, 512)
        };
        assert_eq!(postcard::to_stdvec(&new).expect("encode"), old);
        assert_eq!(postcard::from_bytes::<Slice>(&old).expect("decode"), new);
    }

    #[test]
    fn capability_checks_server_block_right_expiry_and_key() {
        let cluster = [7u8; 32];
        let (one, two, three) = (ChunkserverId(1), ChunkserverId(2), ChunkserverId(3));
        let key = |s| Capability::server_key(&cluster, s);
        let c = Capability::issue(&cluster, BlockId(9), false, 100, &[one, two, NO_SERVER]);
        assert_eq!(c.macs.len(), 2, "one MAC per named server");
        assert!(c.allows(&key(one), one, BlockId(9), false, 100));
        assert!(c.allows(&key(two), two, BlockId(9), false, 100));
        assert!(
            !c.allows(&key(three), three, BlockId(9), false, 50),
            "a server it does not name"
        );
        assert!(
            !c.allows(&key(one), two, BlockId(9), false, 50),
            "one server's key does not check another's MAC"
        );
        assert!(
            !c.allows(&key(one), one, BlockId(9), true, 50),
            "a read capability does not allow writes"
        );
        assert!(
            !c.allows(&key(one), one, BlockId(8), false, 50),
            "another block"
        );
        assert!(!c.allows(&key(one), one, BlockId(9), false, 101), "expired");
        assert!(
            !c.allows(&cluster, one, BlockId(9), false, 50),
            "the cluster key is not a server's key"
        );
        // A server's key makes no capability another server accepts.
        let minted = Capability::issue(&key(one), BlockId(9), true, 100, &[two]);
        assert!(!minted.allows(&key(two), two, BlockId(9), true, 50));
        let mut forged = c.clone();
        forged.write = true;
        assert!(
            !forged.allows(&key(one), one, BlockId(9), true, 50),
            "rights cannot be raised"
        );
        assert!(
            Capability::issue(&cluster, BlockId(9), true, 100, &[one]).allows(
                &key(one),
                one,
                BlockId(9),
                false,
                10
            ),
            "write implies read"
        );
    }
}
