//! What `sparefs fsck` asks the meta and what it hears back: findings
//! about the namespace, layouts and blocks, each with the repair that would
//! fix it (`WriteOp::Repair`), applied only if the damage is still exactly
//! as found (a compare-and-set, so a repair never races a user's change).

use crate::{BlockId, InodeId};
use serde::{Deserialize, Serialize};

/// Findings one report lists (the rest are counted in `FsckReport::more`).
pub const FSCK_FINDINGS_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FindingKind {
    /// A record that does not decode.
    BadRecord,
    /// A directory entry naming an inode that does not exist.
    DanglingEntry,
    /// A directory entry whose kind is not its inode's.
    EntryKindMismatch,
    /// Entries under something that is not a directory (or is gone).
    EntryUnderNonDirectory,
    /// The readdir index and the entries disagree.
    IndexMismatch,
    /// `nlink` is not the number of names (directories: 2 + subdirectories).
    WrongNlink,
    /// A directory's entry count is not its entries.
    WrongChildren,
    /// A directory's `..` is not the directory holding it, or it has more
    /// than one name.
    WrongParent,
    /// An inode no name leads to (not an unlinked-but-open file).
    Unreachable,
    /// Directories that hold each other (not reachable from the root).
    Cycle,
    /// Layout of an inode that does not exist (nor waits to be purged).
    ChunkWithoutInode,
    /// A chunk past the file's size.
    ChunkBeyondSize,
    /// An extended attribute of an inode that does not exist.
    XattrWithoutInode,
    /// A slice uses a block the block table does not have.
    MissingBlock,
    /// A block's reference count is not the slices that use it.
    WrongRefs,
    /// A block nothing uses, neither referenced nor pending.
    LeakedBlock,
    /// A block missing fragments (still readable).
    UnderProtected,
    /// A block with fewer fragments on live chunkservers than it needs.
    Unreadable,
    /// Meta replicas at the same applied index hold different state.
    ReplicasDiffer,
    /// A fragment missing, failing its chunkserver's check, or not what
    /// the block's bytes encode to (`--verify-data`).
    BadFragment,
    /// Fragment files on a chunkserver that no block references, past the
    /// grace (the collector deletes them).
    OrphanFragments,
    /// A fragment the block table places on a chunkserver whose inventory
    /// lacks it (marked lost, so repair rebuilds it).
    MissingFragment,
    /// A chunkserver that sent no whole inventory of its disk in time.
    NoInventory,
    /// An ACL that is not valid, a default ACL of something not a
    /// directory, an access ACL whose bits are not the inode's mode, or an
    /// ACL kept as an xattr record.
    BadAcl,
    /// A writer fence of a file that does not exist.
    FenceWithoutInode,
    /// A directory delegation held by a client the leader no longer
    /// keeps a lease for, or of something that is not a directory.
    StaleDelegation,
}

impl FindingKind {
    /// Whether it is damage (as opposed to reduced redundancy that repair
    /// is already restoring).
    pub fn is_error(self) -> bool {
        !matches!(
            self,
            FindingKind::UnderProtected
                | FindingKind::OrphanFragments
                | FindingKind::MissingFragment
                | FindingKind::NoInventory
        )
    }
}

/// A change that fixes one finding if the state is still as found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fix {
    /// Removes the entry (and its index record) if it still names `ino`
    /// and `ino` still does not exist.
    RemoveEntry {
        parent: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        ino: InodeId,
    },
    SetNlink {
        ino: InodeId,
        from: u32,
        to: u32,
    },
    SetChildren {
        dir: InodeId,
        from: u64,
        to: u64,
    },
    SetRefs {
        block: BlockId,
        from: u32,
        to: u32,
    },
    /// Gives an unreachable inode the name `#INO` in `/lost+found` (made if
    /// missing), if it still has no name (`nlink` as found, not open).
    Adopt {
        ino: InodeId,
        nlink: u32,
    },
    /// Drops a chunk of an inode that does not exist.
    DropChunk {
        ino: InodeId,
        index: u64,
    },
    /// Drops the writer fence of `ino` if `ino` still does not exist.
    DropFence {
        ino: InodeId,
    },
    /// Drops the delegation of `dir` if `holder` still has it.
    DropDelegation {
        dir: InodeId,
        holder: crate::ClientId,
    },
    /// Ends a client the leader no longer keeps a lease for as an expired
    /// lease does: its delegations, inode reservations and locks go.
    ExpireClient {
        client: crate::ClientId,
    },
    /// Marks a fragment lost (so repair rebuilds it from the others), if
    /// it is still where it was found.
    LoseFragment {
        block: BlockId,
        slot: u8,
        server: crate::ChunkserverId,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub ino: Option<InodeId>,
    /// A path to `ino` (or to the directory holding the damage), when one
    /// is known.
    pub path: Option<String>,
    pub detail: String,
    pub fix: Option<Fix>,
}

/// One check of the meta's state at one applied index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckReport {
    /// The Raft index the checked state reflects (0 offline if unknown).
    pub applied: u64,
    pub inodes: u64,
    pub dirs: u64,
    pub files: u64,
    pub chunks: u64,
    pub slices: u64,
    pub blocks: u64,
    /// Bytes of the files (their sizes).
    pub bytes: u64,
    pub findings: Vec<Finding>,
    /// Findings past `FSCK_FINDINGS_MAX`, not listed.
    pub more: u64,
    /// Whether chunkserver liveness was known (online) or assumed (offline).
    pub liveness_known: bool,
    /// Each chunkserver's last whole inventory (online only).
    pub inventories: Vec<InventoryPass>,
}

/// What one whole inventory pass of a chunkserver found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryPass {
    pub chunkserver: crate::ChunkserverId,
    /// Seconds since it ended.
    pub age_secs: u64,
    /// Fragment files it listed.
    pub fragments: u64,
    /// Files no block references, past the grace.
    pub orphans: u64,
    /// Fragments the block table places there that it lacked (the first
    /// thousand), and how many in all.
    pub missing: Vec<(BlockId, u8)>,
    pub missing_count: u64,
}

/// A replica's state summarised: per column family, its records and a
/// blake3 over every key and value in order, at `applied`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDigest {
    pub applied: u64,
    pub cfs: Vec<(String, u64, [u8; 32])>,
}
