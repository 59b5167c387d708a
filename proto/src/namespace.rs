//! The POSIX namespace on the wire: attributes, callers, the operations the
//! meta answers, and their replies.

use crate::layout::{BlockRef, Capability, ChunkserverInfo, ClusterKey, Policy, Slice};
use crate::{BlockId, ChunkserverId, ClientId, Errno, InodeId};
use serde::{Deserialize, Serialize};

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl Time {
    pub fn now() -> Time {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }

    /// This time plus `d` (saturating).
    pub fn plus(self, d: std::time::Duration) -> Time {
        let nanos = self.nanos as u64 + d.subsec_nanos() as u64;
        Time {
            secs: self
                .secs
                .saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .saturating_add((nanos / 1_000_000_000) as i64),
            nanos: (nanos % 1_000_000_000) as u32,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl FileKind {
    /// The S_IFMT bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => 0o100000,
            FileKind::Dir => 0o040000,
            FileKind::Symlink => 0o120000,
            FileKind::Fifo => 0o010000,
            FileKind::Socket => 0o140000,
            FileKind::CharDev => 0o020000,
            FileKind::BlockDev => 0o060000,
        }
    }
}

/// Who is asking: permission checks use these, never the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Caller {
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
    };
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub ino: InodeId,
    pub kind: FileKind,
    /// Permission bits with set-uid, set-gid and sticky (0o7777).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub rdev: u32,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub crtime: Time,
}

/// A time to set: a given value or the server's clock (UTIME_NOW).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeSet {
    Now,
    At(Time),
}

/// What setattr changes; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub ino: InodeId,
    pub kind: FileKind,
    /// Pass back as `after_cookie` to continue after this entry. Cookies grow
    /// with each entry made in a directory and are never reused, so they stay
    /// valid while the directory changes.
    pub cookie: u64,
}

/// A directory's first entry cookie; 1 and 2 are "." and "..". Each name
/// made in a directory takes its `next_cookie`, counting up from here (a
/// mount holding a directory's delegation counts along: docs/delegation.md).
pub const FIRST_COOKIE: u64 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenameMode {
    /// Replace an existing target (rename(2)).
    Replace,
    /// Fail with EEXIST if the target exists (RENAME_NOREPLACE).
    NoReplace,
    /// Swap source and target atomically; both must exist (RENAME_EXCHANGE).
    Exchange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum XattrMode {
    /// Create or replace.
    Any,
    /// XATTR_CREATE: fail with EEXIST if present.
    Create,
    /// XATTR_REPLACE: fail with ENODATA if absent.
    Replace,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub files: u64,
    pub block_bytes: u32,
    pub name_bytes_max: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    Read,
    Write,
    Unlock,
}

/// A byte-range lock: `[start, end]` inclusive, held by `owner` (the
/// kernel's lock owner) of mount `client`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockSpec {
    pub client: ClientId,
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    pub kind: LockKind,
    pub pid: u32,
}

/// What an open asks to do with the file (`ReadOp::Open`): the access
/// bits of access(2), checked by the meta as open(2) checks them.
pub const OPEN_READ: u32 = 4;
pub const OPEN_WRITE: u32 = 2;
/// An open for exec(2): execute permission, not read.
pub const OPEN_EXEC: u32 = 1;

/// Operations that read the namespace. Served after a ReadIndex round, so
/// they see every write acknowledged before they were sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum ReadOp {
    Lookup {
        parent: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    GetAttr {
        ino: InodeId,
    },
    ReadDir {
        ino: InodeId,
        after_cookie: u64,
        limit: u32,
    },
    ReadLink {
        ino: InodeId,
    },
    GetXattr {
        ino: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    ListXattr {
        ino: InodeId,
    },
    /// access(2): `mask` of R_OK 4, W_OK 2, X_OK 1 (0 checks existence).
    Access {
        ino: InodeId,
        mask: u32,
    },
    StatFs,
    GetPolicy {
        ino: InodeId,
    },
    /// A chunk's map and the capabilities to read its fragments: for a
    /// caller allowed to read or execute the file.
    ReadChunk {
        ino: InodeId,
        index: u64,
    },
    ListChunkservers,
    /// The first lock that would conflict with the described one, if any.
    GetLock {
        ino: InodeId,
        lock: LockSpec,
    },
    /// Counts of blocks by protection: every fragment on an `up` server,
    /// readable but missing some, or fewer than needed to read.
    Health,
    /// open(2): the attributes (close-to-open: fresh at every open) and, for
    /// a file of at most `limits::OPEN_CHUNK_BYTES_MAX`, its first chunk's
    /// map too, so reading a small file needs no second round trip. The
    /// caller must be allowed `access` (`OPEN_READ`, `OPEN_WRITE`,
    /// `OPEN_EXEC`, or'ed) on the file.
    Open {
        ino: InodeId,
        access: u32,
    },
    /// A page of entries with each one's attributes (the kernel's
    /// READDIRPLUS: entries it can use without a LOOKUP each), at most
    /// `limits::READDIRPLUS_ENTRIES_MAX`. From the start (`after_cookie`
    /// 0 or 1) the page begins with "." (cookie 1) and ".." (cookie 2).
    /// Needs read and search permission on the directory.
    ReadDirPlus {
        ino: InodeId,
        after_cookie: u64,
        limit: u32,
    },
    /// Cluster configuration records whose keys start with `prefix`
    /// (`WriteOp::PutConfig`), at most `limits::CONFIG_LIST_MAX`, keys from
    /// `after` (exclusive) on. Only the admin and iSCSI roles may read them
    /// (they hold CHAP secrets).
    ListConfig {
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
        #[serde(with = "serde_bytes")]
        after: Vec<u8>,
    },
    /// The writer fence of `ino` (`WriteOp::TakeFence`), answered with
    /// `NsReply::Fence` (epoch 0 and no holder if nobody ever took it).
    GetFence {
        ino: InodeId,
    },
}

/// Operations that change state. Each goes through Raft and is applied once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum WriteOp {
    /// create(2)/mknod(2) of anything but a directory or symlink.
    MkNod {
        parent: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        kind: FileKind,
        perm: u32,
        umask: u32,
        rdev: u32,
        exclusive: bool,
    },
    Mkdir {
        parent: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        perm: u32,
        umask: u32,
    },
    Unlink {
        parent: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    Rmdir {
        parent: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    Rename {
        parent: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        new_parent: InodeId,
        #[serde(with = "serde_bytes")]
        new_name: Vec<u8>,
        mode: RenameMode,
    },
    Link {
        ino: InodeId,
        new_parent: InodeId,
        #[serde(with = "serde_bytes")]
        new_name: Vec<u8>,
    },
    Symlink {
        parent: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    SetAttr {
        ino: InodeId,
        set: SetAttr,
    },
    SetXattr {
        ino: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        mode: XattrMode,
    },
    RemoveXattr {
        ino: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    SetPolicy {
        ino: InodeId,
        policy: Policy,
    },
    /// Commit slices written to chunkservers: they become visible atomically,
    /// and the file grows to `size_at_least` if it is smaller.
    CommitSlices {
        ino: InodeId,
        slices: Vec<(u64, Slice)>,
        size_at_least: u64,
    },
    /// Allocate ids for new blocks. Clients send an empty `placement`; the
    /// leader fills it (distinct chunkservers that are up, weighted by free
    /// space) before proposing, so every replica applies the same choice.
    AllocateBlocks {
        count: u32,
        policy: Policy,
        placement: Vec<ChunkserverId>,
        /// Chunkservers a retry must avoid (a write to them just failed).
        exclude: Vec<ChunkserverId>,
        /// Set by the leader: the policy the client asked for, when fewer
        /// servers are up than it needs and `policy` was lowered to one
        /// that still survives the loss of one more host.
        wanted: Option<Policy>,
    },
    /// Final step of deleting files: drops chunks of deleted inodes (a
    /// bounded number per command) so their blocks lose their references.
    PurgeDeleted,
    /// Forgets blocks allocated before `before` and never committed (their
    /// client died or gave up); their fragments become garbage.
    AbandonBlocks {
        before: Time,
    },
    /// A repair task finished: the block's fragments listed in `written`
    /// now live there (re-encoded when `policy`/`base` differ). Applied only
    /// if the block still has slot base `from_base`.
    RelocateFragments {
        block: BlockId,
        from_base: u8,
        policy: Policy,
        base: u8,
        written: Vec<(u8, ChunkserverId)>,
    },
    /// Compaction: the chunk's slices up to `through_seq` (their seqs in
    /// `replaced`) are rewritten as `slices`, which take their place under
    /// any newer ones. ESTALE if the chunk changed underneath in a way the
    /// rewrite does not cover (a slice it did not read, or none left).
    ReplaceSlices {
        ino: InodeId,
        index: u64,
        through_seq: u64,
        replaced: Vec<u64>,
        slices: Vec<Slice>,
    },
    /// Starts (or stops) moving everything off a chunkserver; it gets no
    /// new fragments meanwhile.
    DrainChunkserver {
        chunkserver: ChunkserverId,
        drain: bool,
    },
    /// Forgets a chunkserver; EBUSY while any block has a fragment on it.
    RemoveChunkserver {
        chunkserver: ChunkserverId,
    },
    /// A chunkserver reported a fragment bad or missing.
    LoseFragment {
        block: BlockId,
        slot: u8,
        server: ChunkserverId,
    },
    RegisterChunkserver {
        address: String,
        capacity_bytes: u64,
        token: [u8; 16],
    },
    /// Takes, changes or releases a POSIX byte-range (or flock, as a
    /// whole-file range) lock; EAGAIN if another owner holds a conflicting one.
    SetLock {
        ino: InodeId,
        lock: LockSpec,
    },
    /// Releases every lock of a client whose lease expired (the leader
    /// proposes it) or that unmounted.
    ExpireClient {
        client: ClientId,
    },
    /// Sets the cluster key if none is set (the first leader proposes it).
    SetClusterKey {
        key: ClusterKey,
    },
    /// Changes nothing; answered once it, and so every change before it, is
    /// on disk on a majority of replicas (fsync of a clean file, fsyncdir).
    Sync,
    /// `CommitSlices`, then attribute changes a mount made to the file
    /// after those writes (tar: write, futimens, fchown, fchmod, close), each
    /// as its caller, in order, in one entry: all of it or nothing.
    CommitSlicesThenSetAttrs {
        ino: InodeId,
        slices: Vec<(u64, Slice)>,
        size_at_least: u64,
        then: Vec<(Caller, SetAttr)>,
    },
    /// Makes the calling client the only one that changes directory `dir`
    /// (docs/delegation.md): granted if it is empty, has no ACL and no other
    /// client holds it; answered with its attributes.
    Delegate {
        dir: InodeId,
    },
    /// Gives delegated directories back (asked to, or done with them).
    ReturnDelegations {
        dirs: Vec<InodeId>,
    },
    /// Reserves `count` inode numbers for the creates this client answers
    /// in its delegated directories (`NsReply::Inodes`); replaces its
    /// earlier reservation.
    ReserveInodes {
        count: u32,
    },
    /// Changes a mount answered itself in its delegated directories, in
    /// the order it answered them, all or nothing; then `then`, an
    /// ordinary change of the same caller (one round trip for both). If
    /// `then` fails or must wait for another client's delegation, the
    /// delegated changes still land (`NsReply::DelegatedThen`).
    Delegated {
        ops: Vec<DelegatedOp>,
        #[serde(deserialize_with = "crate::nested::deserialize")]
        then: Option<Box<WriteOp>>,
    },
    /// A size change through a descriptor open for writing (ftruncate,
    /// fallocate): as `SetAttr { size }`, but with the access granted when
    /// the descriptor was opened, not checked again (a file created with
    /// mode 0 can be truncated through the descriptor that created it).
    Truncate {
        ino: InodeId,
        size: u64,
    },
    /// Frees files unlinked while open that no mount holds open any more
    /// (proposed by the leader; root only).
    ReapOrphans {
        inos: Vec<InodeId>,
    },
    /// Sets (`value` Some) or removes (None) a cluster configuration
    /// record: iSCSI exports, reservations, target heartbeats. With
    /// `expect`, only if the record's version is that (0: absent), else
    /// ESTALE: a compare-and-set, so two writers never lose each other's
    /// change. Answered with `NsReply::ConfigVersion` (the new version, 0
    /// once removed). Keys under `config::ISCSI_STATE` are the iSCSI
    /// targets'; all others only an admin's.
    PutConfig {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        expect: Option<u64>,
        value: Option<serde_bytes::ByteBuf>,
    },
    /// Makes `holder` the only writer of `ino` that fenced commits accept:
    /// if the inode's fence epoch is `expect`, it becomes `expect + 1`
    /// with this holder; otherwise ESTALE (someone else took it first).
    /// Answered with `NsReply::Fence`. For iSCSI targets taking over an
    /// image (docs/iscsi.md, failover).
    TakeFence {
        ino: InodeId,
        expect: u64,
        holder: String,
    },
    /// `op` (a commit of data to one file) applied only if the file's
    /// fence epoch is not above `epoch`: a writer that lost its fence to a
    /// newer holder can land nothing more (slices become visible only at
    /// commit, so fencing the commit fences the data). Refused with
    /// EKEYREVOKED.
    Fenced {
        epoch: u64,
        #[serde(deserialize_with = "crate::nested::deserialize")]
        op: Box<WriteOp>,
    },
    /// A repair `sparefs fsck --repair` found: applied only if the damage
    /// is still exactly as found (else ESTALE). Admins only.
    Repair {
        fix: crate::fsck::Fix,
    },
}

/// One cluster configuration record (`WriteOp::PutConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEntry {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Grows by one at every change; never 0 for a record that exists.
    pub version: u64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// Prefixes of configuration keys.
pub mod config {
    /// Records iSCSI target processes change themselves (persistent
    /// reservations, target heartbeats and sessions).
    pub const ISCSI_STATE: &[u8] = b"iscsi/state/";
    /// Exports (admin only).
    pub const ISCSI_EXPORT: &[u8] = b"iscsi/export/";
}

/// A change a mount answered in a directory delegated to it: made by
/// `caller` at the mount's clock `now`; a create takes inode `ino` from the
/// client's reservation. Only `MkNod` (regular files), `Mkdir`, `Unlink`,
/// `Rmdir`, and `SetAttr` (no size) of a delegated directory itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegatedOp {
    pub caller: Caller,
    pub now: Time,
    pub ino: Option<InodeId>,
    #[serde(deserialize_with = "crate::nested::deserialize")]
    pub op: WriteOp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsReply {
    Attr(Attr),
    Dir(Vec<DirEntry>),
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    Names(Vec<Vec<u8>>),
    StatFs(StatFs),
    Policy(Policy),
    /// A chunk's slices, oldest first, with a read capability per block.
    Chunk {
        slices: Vec<Slice>,
        capabilities: Vec<Capability>,
    },
    Chunkservers(Vec<ChunkserverInfo>),
    Blocks(Vec<BlockRef>),
    /// The chunkserver's id and the key capabilities are signed with.
    Registered {
        id: ChunkserverId,
        key: ClusterKey,
    },
    /// Exchange and replace renames report nothing more.
    Done,
    Health {
        protected: u64,
        degraded: u64,
        unreadable: u64,
    },
    Lock(Option<LockSpec>),
    /// New block ids and the chunkservers their fragments go to, in order.
    Allocated {
        ids: Vec<BlockId>,
        /// The policy to store these blocks under (lowered while hosts are down).
        policy: Policy,
        placement: Vec<ChunkserverId>,
        capabilities: Vec<Capability>,
    },
    /// A new name (create, mkdir, symlink, link): its inode's attributes
    /// and its directory's after the change, so a client need not ask for
    /// the directory's again (the kernel does after each change).
    Made {
        attr: Attr,
        parent: Attr,
    },
    /// The answer to `ReadOp::Open`: attributes and, for a small file, its
    /// first chunk (as `Chunk` carries it).
    Opened {
        attr: Attr,
        chunk: Option<(Vec<Slice>, Vec<Capability>)>,
    },
    /// The answer to `ReadOp::ReadDirPlus`.
    DirPlus(Vec<(DirEntry, Attr)>),
    /// Inode numbers `first..first + count` reserved for the client.
    Inodes {
        first: u64,
        count: u32,
    },
    /// `WriteOp::Delegated` with `then`: the delegated changes landed, and
    /// `then` answered this (`None`: it did not run, another client's
    /// delegation is being recalled: send it again).
    DelegatedThen(
        #[serde(deserialize_with = "crate::nested::deserialize")]
        Option<Result<Box<NsReply>, Errno>>,
    ),
    /// `WriteOp::Delegate`: the directory's attributes, and the cookie its
    /// next name will take.
    Granted {
        attr: Attr,
        next_cookie: u64,
    },
    /// `ReadOp::ListConfig`: records in key order; `more` if the list was
    /// cut at the limit.
    Config {
        entries: Vec<ConfigEntry>,
        more: bool,
    },
    /// `WriteOp::PutConfig`: the record's version now (0: removed).
    ConfigVersion(u64),
    /// `ReadOp::GetFence`, `WriteOp::TakeFence`: a file's writer fence.
    Fence {
        epoch: u64,
        holder: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Policy;
    use crate::{BlockId, ChunkserverId};

    /// What waits for the disk: data, the barrier, and whatever lets
    /// fragments be deleted or changes who stores what; not the namespace
    /// changes applications make by the thousand.
    #[test]
    fn durable_operations() {
        let ino = InodeId(5);
        let durable = [
            WriteOp::CommitSlices {
                ino,
                slices: Vec::new(),
                size_at_least: 0,
            },
            WriteOp::Sync,
            WriteOp::CommitSlicesThenSetAttrs {
                ino,
                slices: Vec::new(),
                size_at_least: 0,
                then: Vec::new(),
            },
            WriteOp::PurgeDeleted,
            WriteOp::SetAttr {
                ino,
                set: SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                },
            },
            WriteOp::ReplaceSlices {
                ino,
                index: 0,
                through_seq: 1,
                replaced: Vec::new(),
                slices: Vec::new(),
            },
            WriteOp::RelocateFragments {
                block: BlockId(1),
                from_base: 0,
                policy: Policy::Rep { copies: 2 },
                base: 0,
                written: Vec::new(),
            },
            WriteOp::RemoveChunkserver {
                chunkserver: ChunkserverId(1),
            },
        ];
        for op in &durable {
            assert!(op.must_be_durable(), "{op:?}");
        }
        let written = [
            WriteOp::MkNod {
                parent: ino,
                name: b"f".to_vec(),
                kind: FileKind::File,
                perm: 0o644,
                umask: 0,
                rdev: 0,
                exclusive: true,
            },
            WriteOp::Unlink {
                parent: ino,
                name: b"f".to_vec(),
            },
            WriteOp::SetAttr {
                ino,
                set: SetAttr {
                    perm: Some(0o600),
                    ..SetAttr::default()
                },
            },
        ];
        for op in &written {
            assert!(!op.must_be_durable(), "{op:?}");
        }
    }
}
