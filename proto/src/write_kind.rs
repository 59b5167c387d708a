//! What kind of change each `WriteOp` is: every decision the meta and the
//! mount make by the kind of a change, in one place. Each is an exhaustive
//! match (no `_` arm), so a new operation does not compile until every
//! decision has been made for it.

use crate::namespace::{Caller, WriteOp};
use crate::InodeId;

/// Who may ask for a change. The meta maps each to the certificate roles
/// it admits (`meta::access`); without TLS every origin but `Leader` is
/// admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A user's change through a mount, a tool or the iSCSI target: the
    /// caller's uid and groups are then checked by the namespace.
    User,
    /// Placing and replacing file data: users, and chunkservers compacting
    /// a chunk.
    DataMover,
    /// Cluster administration (draining and removing chunkservers).
    Admin,
    /// A chunkserver registering itself (it gets the cluster key).
    Chunkserver,
    /// Only the leader itself, from its own housekeeping: refused when it
    /// arrives over the network.
    Leader,
    /// The state iSCSI targets keep in the meta (reservations, heartbeats):
    /// targets and admins.
    Iscsi,
}

/// What a change does to the attributes and names a mount keeps (see the
/// client's delegation cache).
#[derive(Debug)]
pub enum CacheEffect<'a> {
    /// Commits data to `ino`: its attributes change (size, times).
    Commit(InodeId),
    /// Changes the attributes of `ino`.
    Inode(InodeId),
    /// Adds a name to `ino` (its link count changes).
    Link(InodeId),
    /// Removes, replaces or may truncate what these names point at.
    Names(Vec<(InodeId, &'a [u8])>),
    /// Delegated changes were accounted for as they were answered; `then`
    /// is accounted for with its own answer.
    Delegated(Option<&'a WriteOp>),
    /// Adds new names or changes nothing a mount keeps.
    Nothing,
    /// Housekeeping whose effect a mount cannot tell: trust nothing kept.
    Unknown,
}

/// The directories a change reads or writes the entries or attributes of:
/// those another client's delegation of them makes it wait for.
#[derive(Debug, Default)]
pub struct DelegationScope<'a> {
    pub dirs: Vec<InodeId>,
    /// `(parent, name)`: the subdirectory that name is, if it is one (an
    /// rmdir's or a rename's victim: its emptiness is its holder's to know).
    pub subdirs: Vec<(InodeId, &'a [u8])>,
}

impl WriteOp {
    /// The callers a change carries besides its request's own (changes
    /// made earlier as other callers): a meta that limits whom a mount may
    /// speak for maps these as well.
    pub fn inner_callers_mut(&mut self) -> Vec<&mut Caller> {
        match self {
            WriteOp::CommitSlicesThenSetAttrs { then, .. } => {
                then.iter_mut().map(|(c, _)| c).collect()
            }
            WriteOp::Fenced { op, .. } => op.inner_callers_mut(),
            WriteOp::Delegated { ops, then } => {
                let mut all = Vec::new();
                for d in ops.iter_mut() {
                    all.push(&mut d.caller);
                    all.extend(d.op.inner_callers_mut());
                }
                if let Some(t) = then {
                    all.extend(t.inner_callers_mut());
                }
                all
            }
            WriteOp::PurgeDeleted
            | WriteOp::AbandonBlocks { .. }
            | WriteOp::RelocateFragments { .. }
            | WriteOp::LoseFragment { .. }
            | WriteOp::ExpireClient { .. }
            | WriteOp::SetClusterKey { .. }
            | WriteOp::ReapOrphans { .. }
            | WriteOp::MkNod { .. }
            | WriteOp::Mkdir { .. }
            | WriteOp::Unlink { .. }
            | WriteOp::Rmdir { .. }
            | WriteOp::Rename { .. }
            | WriteOp::Link { .. }
            | WriteOp::Symlink { .. }
            | WriteOp::SetAttr { .. }
            | WriteOp::SetXattr { .. }
            | WriteOp::RemoveXattr { .. }
            | WriteOp::SetPolicy { .. }
            | WriteOp::CommitSlices { .. }
            | WriteOp::SetLock { .. }
            | WriteOp::Sync
            | WriteOp::Delegate { .. }
            | WriteOp::ReturnDelegations { .. }
            | WriteOp::ReserveInodes { .. }
            | WriteOp::Truncate { .. }
            | WriteOp::AllocateBlocks { .. }
            | WriteOp::ReplaceSlices { .. }
            | WriteOp::DrainChunkserver { .. }
            | WriteOp::RemoveChunkserver { .. }
            | WriteOp::RegisterChunkserver { .. }
            | WriteOp::PutConfig { .. }
            | WriteOp::TakeFence { .. }
            | WriteOp::Repair { .. } => Vec::new(),
        }
    }

    /// Who may ask for it.
    pub fn origin(&self) -> Origin {
        match self {
            // Its own changes are a mount's (checked as they are applied);
            // what follows them must be something a user may send too.
            WriteOp::Delegated { then, .. } => match then.as_ref().map(|t| t.origin()) {
                None | Some(Origin::User | Origin::DataMover) => Origin::User,
                Some(Origin::Admin) => Origin::Admin,
                Some(Origin::Iscsi) => Origin::Leader,
                Some(Origin::Chunkserver | Origin::Leader) => Origin::Leader,
            },
            WriteOp::PurgeDeleted
            | WriteOp::AbandonBlocks { .. }
            | WriteOp::RelocateFragments { .. }
            | WriteOp::LoseFragment { .. }
            | WriteOp::ExpireClient { .. }
            | WriteOp::SetClusterKey { .. }
            | WriteOp::ReapOrphans { .. } => Origin::Leader,
            WriteOp::MkNod { .. }
            | WriteOp::Mkdir { .. }
            | WriteOp::Unlink { .. }
            | WriteOp::Rmdir { .. }
            | WriteOp::Rename { .. }
            | WriteOp::Link { .. }
            | WriteOp::Symlink { .. }
            | WriteOp::SetAttr { .. }
            | WriteOp::SetXattr { .. }
            | WriteOp::RemoveXattr { .. }
            | WriteOp::SetPolicy { .. }
            | WriteOp::CommitSlices { .. }
            | WriteOp::SetLock { .. }
            | WriteOp::Sync
            | WriteOp::CommitSlicesThenSetAttrs { .. }
            | WriteOp::Delegate { .. }
            | WriteOp::ReturnDelegations { .. }
            | WriteOp::ReserveInodes { .. }
            | WriteOp::Truncate { .. } => Origin::User,
            WriteOp::AllocateBlocks { .. } | WriteOp::ReplaceSlices { .. } => Origin::DataMover,
            WriteOp::DrainChunkserver { .. } | WriteOp::RemoveChunkserver { .. } => Origin::Admin,
            WriteOp::RegisterChunkserver { .. } => Origin::Chunkserver,
            // A fenced op is only ever a user's commit (the meta refuses
            // anything else inside).
            WriteOp::Fenced { op, .. } => match op.origin() {
                Origin::User => Origin::User,
                _ => Origin::Leader,
            },
            WriteOp::TakeFence { .. } => Origin::Iscsi,
            WriteOp::Repair { .. } => Origin::Admin,
            WriteOp::PutConfig { key, .. } => {
                if key.starts_with(crate::namespace::config::ISCSI_STATE) {
                    Origin::Iscsi
                } else {
                    Origin::Admin
                }
            }
        }
    }

    /// Whether the replicas must have this operation on disk (fsynced)
    /// before it is acknowledged. Namespace changes an application makes by
    /// the thousand (create, unlink, rename, chmod, ...) are acknowledged
    /// once a majority has written them to its log without waiting for the
    /// disk, like a local filesystem's metadata before fsync: they survive
    /// any process crash and the loss of a minority of hosts, and reach the
    /// disk within a few milliseconds (each replica syncs its log behind).
    /// File data (slices, on fsync/close), `Sync`, and whatever lets garbage
    /// collection delete fragments or changes membership, waits for the
    /// disk; a synced entry also makes every earlier one durable.
    pub fn must_be_durable(&self) -> bool {
        match self {
            WriteOp::Delegated { then, .. } => then.as_ref().is_some_and(|op| op.must_be_durable()),
            WriteOp::Fenced { op, .. } => op.must_be_durable(),
            // A new holder writes nothing before its fence is on disk.
            WriteOp::TakeFence { .. } => true,
            WriteOp::Repair { .. } => true,
            WriteOp::SetAttr { set, .. } => set.size.is_some(),
            WriteOp::MkNod { .. }
            | WriteOp::Mkdir { .. }
            | WriteOp::Unlink { .. }
            | WriteOp::Rmdir { .. }
            | WriteOp::Rename { .. }
            | WriteOp::Link { .. }
            | WriteOp::Symlink { .. }
            | WriteOp::SetXattr { .. }
            | WriteOp::RemoveXattr { .. }
            | WriteOp::AllocateBlocks { .. }
            | WriteOp::SetLock { .. }
            | WriteOp::ExpireClient { .. }
            | WriteOp::LoseFragment { .. }
            | WriteOp::Delegate { .. }
            | WriteOp::ReturnDelegations { .. }
            | WriteOp::ReserveInodes { .. } => false,
            WriteOp::SetPolicy { .. }
            | WriteOp::CommitSlices { .. }
            | WriteOp::PurgeDeleted
            | WriteOp::AbandonBlocks { .. }
            | WriteOp::RelocateFragments { .. }
            | WriteOp::ReplaceSlices { .. }
            | WriteOp::DrainChunkserver { .. }
            | WriteOp::RemoveChunkserver { .. }
            | WriteOp::RegisterChunkserver { .. }
            | WriteOp::SetClusterKey { .. }
            | WriteOp::PutConfig { .. }
            | WriteOp::Sync
            | WriteOp::CommitSlicesThenSetAttrs { .. }
            | WriteOp::Truncate { .. }
            | WriteOp::ReapOrphans { .. } => true,
        }
    }

    /// Whether it may travel behind a mount's delegated changes in one
    /// `Delegated` request (the leader fills in or records something for
    /// the others as they arrive, so those travel alone).
    pub fn may_follow_delegated(&self) -> bool {
        match self {
            WriteOp::MkNod { .. }
            | WriteOp::Mkdir { .. }
            | WriteOp::Symlink { .. }
            | WriteOp::Unlink { .. }
            | WriteOp::Rmdir { .. }
            | WriteOp::Rename { .. }
            | WriteOp::Link { .. }
            | WriteOp::SetAttr { .. }
            | WriteOp::Truncate { .. }
            | WriteOp::SetXattr { .. }
            | WriteOp::RemoveXattr { .. }
            | WriteOp::SetPolicy { .. }
            | WriteOp::CommitSlices { .. }
            | WriteOp::CommitSlicesThenSetAttrs { .. }
            | WriteOp::Sync
            | WriteOp::Delegate { .. }
            | WriteOp::ReturnDelegations { .. }
            | WriteOp::ReserveInodes { .. } => true,
            WriteOp::AllocateBlocks { .. }
            | WriteOp::PurgeDeleted
            | WriteOp::AbandonBlocks { .. }
            | WriteOp::RelocateFragments { .. }
            | WriteOp::ReplaceSlices { .. }
            | WriteOp::DrainChunkserver { .. }
            | WriteOp::RemoveChunkserver { .. }
            | WriteOp::LoseFragment { .. }
            | WriteOp::RegisterChunkserver { .. }
            | WriteOp::SetLock { .. }
            | WriteOp::ExpireClient { .. }
            | WriteOp::SetClusterKey { .. }
            | WriteOp::PutConfig { .. }
            | WriteOp::Delegated { .. }
            | WriteOp::TakeFence { .. }
            | WriteOp::Fenced { .. }
            | WriteOp::Repair { .. }
            | WriteOp::ReapOrphans { .. } => false,
        }
    }

    /// The directories whose names it adds or removes.
    pub fn dirs_named(&self) -> Vec<InodeId> {
        match self {
            WriteOp::MkNod { parent, .. }
            | WriteOp::Mkdir { parent, .. }
            | WriteOp::Symlink { parent, .. }
            | WriteOp::Unlink { parent, .. }
            | WriteOp::Rmdir { parent, .. } => vec![*parent],
            WriteOp::Link { new_parent, .. } => vec![*new_parent],
            WriteOp::Rename {
                parent, new_parent, ..
            } => vec![*parent, *new_parent],
            // Checked change by change as the leader applies them.
            WriteOp::Delegated { .. } => Vec::new(),
            WriteOp::SetAttr { .. }
            | WriteOp::SetXattr { .. }
            | WriteOp::RemoveXattr { .. }
            | WriteOp::SetPolicy { .. }
            | WriteOp::CommitSlices { .. }
            | WriteOp::AllocateBlocks { .. }
            | WriteOp::PurgeDeleted
            | WriteOp::AbandonBlocks { .. }
            | WriteOp::RelocateFragments { .. }
            | WriteOp::ReplaceSlices { .. }
            | WriteOp::DrainChunkserver { .. }
            | WriteOp::RemoveChunkserver { .. }
            | WriteOp::LoseFragment { .. }
            | WriteOp::RegisterChunkserver { .. }
            | WriteOp::SetLock { .. }
            | WriteOp::ExpireClient { .. }
            | WriteOp::SetClusterKey { .. }
            | WriteOp::PutConfig { .. }
            | WriteOp::Sync
            | WriteOp::CommitSlicesThenSetAttrs { .. }
            | WriteOp::Delegate { .. }
            | WriteOp::ReturnDelegations { .. }
            | WriteOp::ReserveInodes { .. }
            | WriteOp::Truncate { .. }
            | WriteOp::TakeFence { .. }
            | WriteOp::ReapOrphans { .. } => Vec::new(),
            WriteOp::Fenced { op, .. } => op.dirs_named(),
            WriteOp::Repair { fix } => match fix {
                crate::fsck::Fix::RemoveEntry { parent, .. } => vec![*parent],
                crate::fsck::Fix::SetChildren { dir, .. } => vec![*dir],
                crate::fsck::Fix::Adopt { .. } => vec![InodeId::ROOT],
                _ => Vec::new(),
            },
        }
    }

    /// The directories a delegation held by another client makes it wait
    /// for.
    pub fn delegation_scope(&self) -> DelegationScope<'_> {
        let dirs = |dirs: Vec<InodeId>| DelegationScope {
            dirs,
            subdirs: Vec::new(),
        };
        match self {
            WriteOp::MkNod { parent, .. }
            | WriteOp::Mkdir { parent, .. }
            | WriteOp::Symlink { parent, .. }
            | WriteOp::Unlink { parent, .. } => dirs(vec![*parent]),
            WriteOp::Rmdir { parent, name } => DelegationScope {
                dirs: vec![*parent],
                subdirs: vec![(*parent, name)],
            },
            WriteOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                ..
            } => DelegationScope {
                dirs: vec![*parent, *new_parent],
                subdirs: vec![(*parent, name), (*new_parent, new_name)],
            },
            WriteOp::Link { new_parent, .. } => dirs(vec![*new_parent]),
            WriteOp::SetAttr { ino, .. }
            | WriteOp::Truncate { ino, .. }
            | WriteOp::SetXattr { ino, .. }
            | WriteOp::RemoveXattr { ino, .. }
            | WriteOp::SetPolicy { ino, .. }
            | WriteOp::SetLock { ino, .. } => dirs(vec![*ino]),
            // Checked inside: its own changes are the client's, `then` apart.
            WriteOp::Delegated { .. } => DelegationScope::default(),
            // A file's data, blocks, the registry and the client's own
            // delegations: no directory's entries or attributes.
            WriteOp::CommitSlices { .. }
            | WriteOp::CommitSlicesThenSetAttrs { .. }
            | WriteOp::AllocateBlocks { .. }
            | WriteOp::PurgeDeleted
            | WriteOp::AbandonBlocks { .. }
            | WriteOp::RelocateFragments { .. }
            | WriteOp::ReplaceSlices { .. }
            | WriteOp::DrainChunkserver { .. }
            | WriteOp::RemoveChunkserver { .. }
            | WriteOp::LoseFragment { .. }
            | WriteOp::RegisterChunkserver { .. }
            | WriteOp::ExpireClient { .. }
            | WriteOp::SetClusterKey { .. }
            | WriteOp::PutConfig { .. }
            | WriteOp::Sync
            | WriteOp::Delegate { .. }
            | WriteOp::ReturnDelegations { .. }
            | WriteOp::ReserveInodes { .. }
            | WriteOp::TakeFence { .. }
            | WriteOp::ReapOrphans { .. } => DelegationScope::default(),
            // A directory another mount holds is given back first.
            WriteOp::Repair { .. } => dirs(self.dirs_named()),
            WriteOp::Fenced { op, .. } => op.delegation_scope(),
        }
    }

    /// What it does to what a mount keeps.
    pub fn cache_effect(&self) -> CacheEffect<'_> {
        match self {
            WriteOp::CommitSlices { ino, .. } | WriteOp::CommitSlicesThenSetAttrs { ino, .. } => {
                CacheEffect::Commit(*ino)
            }
            WriteOp::SetAttr { ino, .. }
            | WriteOp::Truncate { ino, .. }
            | WriteOp::SetXattr { ino, .. }
            | WriteOp::RemoveXattr { ino, .. }
            | WriteOp::SetPolicy { ino, .. }
            | WriteOp::ReplaceSlices { ino, .. } => CacheEffect::Inode(*ino),
            WriteOp::Link { ino, .. } => CacheEffect::Link(*ino),
            // A non-exclusive create of an existing file may truncate it.
            WriteOp::Unlink { parent, name }
            | WriteOp::Rmdir { parent, name }
            | WriteOp::MkNod { parent, name, .. } => CacheEffect::Names(vec![(*parent, name)]),
            WriteOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                ..
            } => CacheEffect::Names(vec![(*parent, name), (*new_parent, new_name)]),
            WriteOp::Delegated { then, .. } => CacheEffect::Delegated(then.as_deref()),
            WriteOp::Mkdir { .. }
            | WriteOp::Symlink { .. }
            | WriteOp::AllocateBlocks { .. }
            | WriteOp::SetLock { .. }
            | WriteOp::Sync
            | WriteOp::Delegate { .. }
            | WriteOp::ReturnDelegations { .. }
            | WriteOp::ReserveInodes { .. } => CacheEffect::Nothing,
            WriteOp::PurgeDeleted
            | WriteOp::AbandonBlocks { .. }
            | WriteOp::RelocateFragments { .. }
            | WriteOp::DrainChunkserver { .. }
            | WriteOp::RemoveChunkserver { .. }
            | WriteOp::LoseFragment { .. }
            | WriteOp::RegisterChunkserver { .. }
            | WriteOp::ExpireClient { .. }
            | WriteOp::SetClusterKey { .. }
            | WriteOp::PutConfig { .. }
            | WriteOp::ReapOrphans { .. } => CacheEffect::Unknown,
            WriteOp::TakeFence { .. } => CacheEffect::Nothing,
            WriteOp::Repair { .. } => CacheEffect::Unknown,
            WriteOp::Fenced { op, .. } => op.cache_effect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Policy;
    use crate::namespace::SetAttr;

    #[test]
    fn durability_follows_what_the_change_lets_go() {
        let chmod = WriteOp::SetAttr {
            ino: InodeId(5),
            set: SetAttr {
                perm: Some(0o600),
                ..SetAttr::default()
            },
        };
        assert!(!chmod.must_be_durable(), "an attribute change may lag");
        let truncate = WriteOp::SetAttr {
            ino: InodeId(5),
            set: SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        };
        assert!(truncate.must_be_durable(), "a truncate lets blocks go");
        assert!(WriteOp::Sync.must_be_durable());
        let delegated = |then: Option<WriteOp>| WriteOp::Delegated {
            ops: Vec::new(),
            then: then.map(Box::new),
        };
        assert!(!delegated(None).must_be_durable());
        assert!(delegated(Some(WriteOp::Sync)).must_be_durable());
    }

    #[test]
    fn housekeeping_is_the_leaders_alone() {
        assert_eq!(WriteOp::PurgeDeleted.origin(), Origin::Leader);
        assert_eq!(
            WriteOp::SetClusterKey { key: [0; 32] }.origin(),
            Origin::Leader
        );
        let policy = WriteOp::SetPolicy {
            ino: InodeId(1),
            policy: Policy::Rep { copies: 3 },
        };
        assert_eq!(policy.origin(), Origin::User);
        let behind = |then: WriteOp| WriteOp::Delegated {
            ops: Vec::new(),
            then: Some(Box::new(then)),
        };
        assert_eq!(
            behind(WriteOp::PurgeDeleted).origin(),
            Origin::Leader,
            "a leader-only change may not ride behind delegated ones"
        );
        assert_eq!(behind(WriteOp::Sync).origin(), Origin::User);
        let register = WriteOp::RegisterChunkserver {
            address: "127.0.0.1:1".into(),
            capacity_bytes: 1,
            token: [0; 16],
        };
        assert_eq!(register.origin(), Origin::Chunkserver);
        assert_eq!(
            behind(register).origin(),
            Origin::Leader,
            "nobody is both a user and a chunkserver"
        );
        let drain = WriteOp::DrainChunkserver {
            chunkserver: crate::ChunkserverId(1),
            drain: true,
        };
        assert_eq!(behind(drain).origin(), Origin::Admin);
    }
}
