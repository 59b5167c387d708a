//! The namespace state machine: POSIX semantics over the `kv` view.
//!
//! Owns: inode, directory-entry, xattr, layout, chunkserver-registry and
//! session records. Must not touch: Raft, sockets, clocks (the time of a
//! change arrives inside the command, chosen by the leader), randomness.
//! The same command applied to the same state gives the same writes on every
//! replica.

pub mod acl;
mod attrs;
pub mod blocks;
mod command;
mod config;
pub mod deleg;
mod delegated;
mod entries;
mod fence;
pub mod fsck;
mod layout;
mod locks;
pub mod orphans;
mod perm;
mod read;
mod records;
pub mod registry;

pub use command::{apply_command, bootstrap, Command};
pub use entries::{PARENT_WALK_MAX, REAP_ORPHANS_MAX};
pub use locks::lock_holders;
pub use read::{chunkservers, read, ChunkserverLiveness};
pub use records::{cluster_key, session_key, ChunkserverRec, DentryRec, InodeRec};

use crate::kv::{ReadKv, StoreError, Tx};
use sparefs_proto::namespace::NsReply;
use sparefs_proto::{ClientId, Errno, InodeId};

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

/// What applying one committed command came to.
pub enum Applied {
    Answer(Result<NsReply, Errno>),
    /// It touches `dir`, which `holder` holds delegated: nothing was
    /// recorded; the client retries once the holder gives it back.
    Recall {
        dir: InodeId,
        holder: ClientId,
    },
}

/// Applies one committed command, unless it touches a directory another
/// client holds (see `deleg`). Only a storage error is an `Err`: anything
/// the command itself gets wrong is its answer, the same on every replica.
pub fn apply<R: ReadKv>(tx: &mut Tx<R>, cmd: &Command) -> Result<Applied, StoreError> {
    match deleg::write_conflict(tx, cmd.id.client, &cmd.op) {
        Ok(Some((dir, holder))) => return Ok(Applied::Recall { dir, holder }),
        Ok(None) => {}
        Err(NsError::Errno(e)) => return Ok(Applied::Answer(Err(e))),
        Err(NsError::Store(e)) => return Err(e),
    }
    Ok(Applied::Answer(apply_command(tx, cmd)?))
}
