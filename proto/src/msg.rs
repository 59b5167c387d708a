//! The RPC envelope. One TCP connection carries many calls: each request
//! frame has a call number, answered by a response frame with the same
//! number, in any order. Raft messages between replicas ride the same
//! framing as one-way `Raft` requests.

use crate::layout::{Capability, RepairDone, RepairTask};
use crate::namespace::{Caller, NsReply, ReadOp, WriteOp};
use crate::{BlockId, ChunkserverId, ReplicaId, RequestId};
use serde::{Deserialize, Serialize};

/// Longest a leader holds a `Request::WaitRecall` before answering "none".
pub const RECALL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestFrame {
    pub call: u64,
    pub body: Request,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub call: u64,
    pub body: Result<Reply, RpcError>,
}

#[derive(Clone, Debug, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum Request {
    Read {
        /// Who asks (a read in another client's delegated directory waits
        /// for it to be given back).
        client: crate::ClientId,
        caller: Caller,
        op: ReadOp,
    },
    Write {
        caller: Caller,
        id: RequestId,
        op: WriteOp,
    },
    /// A Raft message (raft-rs protobuf bytes) from another replica; no answer.
    Raft {
        from: ReplicaId,
        #[serde(with = "serde_bytes")]
        msg: Vec<u8>,
    },
    /// One piece of the snapshot at `index`, from column family `cf`, starting
    /// after key `after` (from the beginning when `None`).
    SnapshotPiece {
        index: u64,
        cf: u8,
        after: Option<Vec<u8>>,
    },
    Status,
    AddReplica {
        id: RequestId,
        replica: ReplicaId,
        address: String,
    },
    RemoveReplica {
        id: RequestId,
        replica: ReplicaId,
    },
    /// A mount is alive: renews the lease on its locks (leader memory), and
    /// says which files it has open (at most `KEEPALIVE_OPEN_MAX`): a file
    /// unlinked while open is freed only once no live mount reports it.
    KeepAlive {
        client: crate::ClientId,
        open: Vec<crate::InodeId>,
    },
    /// A mount waits (up to `RECALL_WAIT`) for the leader to ask for
    /// delegated directories back: answered with `Reply::Recall`.
    WaitRecall {
        client: crate::ClientId,
    },
    /// Ask the leader to hand leadership to `replica`.
    TransferLeader {
        replica: ReplicaId,
    },
    /// Store one fragment of a block (chunkserver); durable when answered.
    /// `table`: the block's end-to-end table (`erasure::block_table`), kept
    /// beside the fragment for readers, who check it against the block's
    /// checksum (empty for a block of one group).
    PutFragment {
        cap: Capability,
        block: BlockId,
        index: u8,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        #[serde(with = "serde_bytes")]
        table: Vec<u8>,
    },
    /// The block table kept with a fragment (chunkserver): `Reply::Bytes`,
    /// empty if it has none.
    GetBlockTable {
        cap: Capability,
        block: BlockId,
        index: u8,
    },
    /// Read `len` bytes at `offset` of a fragment (chunkserver). With
    /// `verify`, the chunkserver checks every 64 KiB span the range touches
    /// against its own checksums (and reports a mismatch as a lost
    /// fragment); without, it reads the range alone: for a reader that
    /// checks the bytes end to end itself and asks again with `verify`
    /// when they fail.
    GetFragment {
        cap: Capability,
        block: BlockId,
        index: u8,
        offset: u32,
        len: u32,
        verify: bool,
    },
    /// Checks a whole fragment where it is stored (chunkserver), for `fsck
    /// --verify-data`: its bytes do not travel. With `in_block` (a data
    /// fragment or a copy: where its bytes sit in the block), the reply
    /// (`Reply::FragmentHash`) gives what the caller needs to check them
    /// against the block's checksum itself; without (parity), the
    /// chunkserver checks every span against its own sums (and reports a
    /// mismatch as a lost fragment, as a checked read does).
    HashFragment {
        cap: Capability,
        block: BlockId,
        index: u8,
        in_block: Option<InBlock>,
    },
    /// A chunkserver's report (see `HeartbeatReport`). Answered with
    /// `Reply::Tasks`.
    Heartbeat(HeartbeatReport),
    /// One page of what a chunkserver holds: (block, slot, age in seconds)
    /// sorted, covering the keys after `after` up to the last item, or to
    /// the end when `last_page`. Answered with `Reply::Delete`: fragments
    /// no block references (garbage), to delete.
    Inventory {
        chunkserver: ChunkserverId,
        after: Option<(BlockId, u8)>,
        items: Vec<(BlockId, u8, u32)>,
        last_page: bool,
    },
    /// Repair progress (leader memory).
    RepairStatus,
    /// Checks the namespace, layouts and block table as they are now (a
    /// consistent snapshot on the leader) and reports what is wrong
    /// (`Reply::Fsck`), with the chunkservers' last inventories: with
    /// `fresh_inventories`, of their disks from now on (the leader asks
    /// and waits for them). Admins only.
    Fsck {
        fresh_inventories: bool,
    },
    /// This replica's applied index and a digest of each column family of
    /// its state there (`Reply::Digest`): replicas at the same index must
    /// agree. Answered by any replica, admins only.
    Digest,
}

/// What a chunkserver tells the leader every few seconds: capacity and
/// usage (kept in the leader's memory, not in Raft), the repair tasks
/// finished since the last report, fragments found bad or missing, and how
/// much more work it takes now.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeartbeatReport {
    pub chunkserver: ChunkserverId,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub errors: u64,
    pub done: Vec<RepairDone>,
    pub lost: Vec<(BlockId, u8)>,
    pub want_tasks: u32,
    /// Whether it can take a chunk to compact now.
    pub want_compaction: bool,
}

impl Request {
    /// What it asks, for metrics and logs: the namespace operation of a
    /// read or write, else the request's own kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Read { op, .. } => op.into(),
            Request::Write { op, .. } => op.into(),
            other => other.into(),
        }
    }
}

impl HeartbeatReport {
    /// Usage alone: no repair reports, no work wanted.
    pub fn usage(
        chunkserver: ChunkserverId,
        capacity_bytes: u64,
        used_bytes: u64,
        errors: u64,
    ) -> HeartbeatReport {
        HeartbeatReport {
            chunkserver,
            capacity_bytes,
            used_bytes,
            errors,
            done: Vec::new(),
            lost: Vec::new(),
            want_tasks: 0,
            want_compaction: false,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    Ns(NsReply),
    Status(ReplicaStatus),
    SnapshotPiece {
        items: Vec<(Vec<u8>, Vec<u8>)>,
        done: bool,
    },
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    Ok,
    Tasks {
        repairs: Vec<RepairTask>,
        /// Chunks (inode, index) with many slices, to rewrite.
        compactions: Vec<(crate::InodeId, u64)>,
        /// Send an inventory of the disk now (an fsck wants a fresh one).
        inventory_now: bool,
    },
    Delete(Vec<(BlockId, u8)>),
    Repair(RepairProgress),
    Fsck(crate::fsck::FsckReport),
    Digest(crate::fsck::StateDigest),
    /// Directories the leader wants back from the client (maybe none).
    Recall(Vec<crate::InodeId>),
    FragmentHash(FragmentHash),
}

/// Where a fragment's bytes sit in its block: the first `len` bytes of the
/// fragment are the block's `[offset, offset + len)` of `block_len`; any
/// after them are padding, zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InBlock {
    pub offset: u32,
    pub len: u32,
    pub block_len: u32,
}

/// A piece of a block as a fragment holds it, in order: the chaining value
/// of a whole group (`erasure::block_table::GROUP` bytes at a group
/// boundary, or the block's short last group), or the bytes of a group
/// that the fragment holds only part of (or of a block of one group).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockPiece {
    Group([u8; 32]),
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// What hashing a fragment where it is found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentHash {
    /// The fragment's bytes read.
    pub bytes: u64,
    /// The block's bytes it holds, as pieces (empty for parity).
    pub pieces: Vec<BlockPiece>,
    /// Whether the padding after them is all zero.
    pub padding_zero: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RepairProgress {
    /// Blocks with a fragment lost or on an `out` server, or stored below
    /// their policy, at the last scan.
    pub blocks_to_repair: u64,
    pub bytes_to_repair: u64,
    /// Bytes of fragments to move to even out usage, at the last scan.
    pub bytes_to_balance: u64,
    pub in_flight: u64,
    /// Bytes rebuilt since this leader started, and the recent rate.
    pub repaired_bytes: u64,
    pub rate_bytes_per_sec: f64,
    pub eta_secs: Option<f64>,
    /// Seconds since the last scan of the block table.
    pub scanned_secs_ago: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub id: ReplicaId,
    pub address: String,
    pub role: Role,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub leader: Option<ReplicaId>,
    pub pid: u32,
    /// Every replica this one knows: id and address.
    pub members: Vec<(ReplicaId, String)>,
    pub first_log_index: u64,
    pub last_log_index: u64,
    /// While an fsck runs here: records read, records estimated in all.
    pub fsck: Option<(u64, u64)>,
}

#[derive(
    Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, strum::IntoStaticStr,
)]
pub enum RpcError {
    #[error("{}", .0)]
    Errno(crate::Errno),
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(ReplicaId, String)> },
    #[error("server busy, retry later")]
    Busy,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("snapshot {0} is not available")]
    SnapshotGone(u64),
    #[error("storage error on the server: {0}")]
    Storage(String),
    #[error("fragment {block}.{index} is corrupt: {detail}")]
    Corrupt {
        block: BlockId,
        index: u8,
        detail: String,
    },
    #[error("fragment {block}.{index} not found")]
    NoFragment { block: BlockId, index: u8 },
    #[error("capability refused")]
    Denied,
    /// The caller's certificate does not allow this request.
    #[error("forbidden: {0}")]
    Forbidden(String),
}

impl From<crate::Errno> for RpcError {
    fn from(e: crate::Errno) -> Self {
        RpcError::Errno(e)
    }
}
