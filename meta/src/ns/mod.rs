//! The namespace state machine: POSIX semantics over the `kv` view.
//!
//! Owns: inode, directory-entry, xattr, layout, chunkserver-registry and
//! session records. Must not touch: Raft, sockets, clocks (the time of a
//! change arrives inside the command, chosen by the leader), randomness.
//! The same command applied to the same state gives the same writes on every
//! replica.

pub mod acl;
pub mod blocks;
pub mod deleg;
mod locks;
pub mod orphans;
mod perm;
mod read;
mod records;
mod write;

pub use locks::lock_holders;
pub use read::{chunkservers, read, ChunkserverLiveness};
pub use records::{cluster_key, ChunkserverRec, DentryRec, InodeRec};
pub use write::{apply_command, bootstrap, Command, PARENT_WALK_MAX, REAP_ORPHANS_MAX};

use crate::kv::StoreError;
use sparefs_proto::Errno;

/// Why a command failed: a POSIX error goes back to the caller; a storage
/// error stops the replica, since applying on must not diverge.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("{0}")]
    Errno(#[from] Errno),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

pub type NsResult<T> = Result<T, NsError>;

pub use records::SYS_APPLIED as SYS_APPLIED_KEY;
