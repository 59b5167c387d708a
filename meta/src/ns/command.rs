//! One `Command` in, its writes into a `Tx`: exactly-once sessions and the
//! dispatch of each `WriteOp` to the module that owns it.
//!
//! Order inside every operation: validate names, load and check every record
//! and permission, and only then write. A command that fails leaves its
//! nested `Tx` unused, so nothing partial survives.

use super::attrs::*;
use super::blocks;
use super::deleg;
use super::delegated::*;
use super::entries::*;
use super::layout::*;
use super::records::*;
use super::registry::*;
use super::{NsError, NsResult};
use crate::kv::{Cf, ReadKv, StoreError, Tx};
use serde::{Deserialize, Serialize};
use sparefs_proto::namespace::*;
use sparefs_proto::{Errno, InodeId, RequestId};

/// One client request as it travels through Raft: who asked, which request,
/// what to do, and the leader's clock when it was proposed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: RequestId,
    pub caller: Caller,
    pub op: WriteOp,
    pub now: Time,
}

/// The session key holding a client's low-water mark (no request uses it).
pub(super) const SESSION_LOW_WATER: u64 = u64::MAX;

/// Most answers one command forgets (bounds the work of a jump in ack_below).
pub(super) const SESSION_FORGET_MAX: u64 = 4096;

/// The state every replica starts from: an empty root directory.
pub fn bootstrap<R: ReadKv>(tx: &mut Tx<R>) -> Result<(), StoreError> {
    if tx.get(Cf::Inodes, &inode_key(InodeId::ROOT))?.is_some() {
        return Ok(());
    }
    let root = new_inode(FileKind::Dir, 0o755, 0, 0, Time::default(), InodeId::ROOT);
    tx.put_rec(Cf::Inodes, inode_key(InodeId::ROOT), &root);
    tx.put_rec(Cf::Sys, SYS_NEXT_INODE.to_vec(), &2u64);
    tx.put_rec(Cf::Sys, SYS_FILES.to_vec(), &1u64);
    Ok(())
}

/// Applies `cmd` exactly once: a `(client, seq)` seen before returns the
/// answer recorded then. The answer is stored in the same writes.
pub fn apply_command<R: ReadKv>(
    tx: &mut Tx<R>,
    cmd: &Command,
) -> Result<Result<NsReply, Errno>, StoreError> {
    let skey = session_key(cmd.id.client.0, cmd.id.seq);
    match tx.get_rec::<Result<NsReply, Errno>>(Cf::Sessions, &skey) {
        Ok(Some(prev)) => return Ok(prev),
        Ok(None) => {}
        // An answer recorded by an earlier release in a format that has
        // changed since (capabilities gained one MAC per chunkserver): the
        // change was applied then, so its retry is told it cannot have
        // the answer, and is not applied again. Every replica decides the
        // same from the same bytes.
        Err(StoreError::Corrupt { .. }) => return Ok(Err(Errno::EIO)),
        Err(e) => return Err(e),
    }
    let reply = if let WriteOp::Delegated { ops, then } = &cmd.op {
        apply_delegated(tx, cmd, ops, then.as_deref())?
    } else {
        let result = {
            let mut inner = Tx::new(&*tx);
            match apply_op(&mut inner, cmd) {
                Ok(reply) => Ok((reply, inner.into_writes())),
                Err(NsError::Errno(e)) => Err(e),
                Err(NsError::Store(e)) => return Err(e),
            }
        };
        match result {
            Ok((reply, writes)) => {
                tx.absorb(writes);
                Ok(reply)
            }
            Err(e) => Err(e),
        }
    };
    // Forget answers the client has confirmed receiving: point deletes from
    // the client's low-water mark up to `ack_below` (a scan would have to
    // step over every earlier deletion's tombstone).
    let lw_key = session_key(cmd.id.client.0, SESSION_LOW_WATER);
    let lw: u64 = tx.get_rec(Cf::Sessions, &lw_key)?.unwrap_or(0);
    if cmd.id.ack_below > lw && cmd.id.ack_below < SESSION_LOW_WATER {
        let from = lw.max(cmd.id.ack_below.saturating_sub(SESSION_FORGET_MAX));
        for seq in from..cmd.id.ack_below {
            tx.delete(Cf::Sessions, session_key(cmd.id.client.0, seq));
        }
        tx.put_rec(Cf::Sessions, lw_key, &cmd.id.ack_below);
    }
    tx.put_rec(Cf::Sessions, skey, &reply);
    Ok(reply)
}

pub(super) fn apply_op<R: ReadKv>(tx: &mut Tx<R>, cmd: &Command) -> NsResult<NsReply> {
    apply_op_at(tx, cmd, None)
}

/// `apply_op`, a create or mkdir taking inode number `reserved` if given (a
/// delegated create: the number the mount chose from its reservation).
/// Every operation is named here, so a new one does not compile until it
/// is given a place. (Long for that reason: one short arm per operation.)
pub(super) fn apply_op_at<R: ReadKv>(
    tx: &mut Tx<R>,
    cmd: &Command,
    reserved: Option<InodeId>,
) -> NsResult<NsReply> {
    let c = &cmd.caller;
    let now = cmd.now;
    match &cmd.op {
        WriteOp::MkNod {
            parent,
            name,
            kind,
            perm,
            umask,
            rdev,
            exclusive,
        } => {
            let mode = (perm & 0o7777, *umask);
            mknod(
                tx,
                c,
                now,
                (*parent, name),
                *kind,
                mode,
                *rdev,
                *exclusive,
                reserved,
            )
        }
        WriteOp::Mkdir {
            parent,
            name,
            perm,
            umask,
        } => {
            let mode = (perm & 0o7777, *umask);
            let (kind, rdev, target, exclusive) = (FileKind::Dir, 0, Vec::new(), true);
            make(
                tx, c, now, *parent, name, kind, mode, rdev, target, exclusive, reserved,
            )
        }
        WriteOp::Symlink {
            parent,
            name,
            target,
        } => symlink(tx, c, now, *parent, name, target),
        WriteOp::Unlink { parent, name } => remove(tx, c, now, *parent, name, false),
        WriteOp::Rmdir { parent, name } => remove(tx, c, now, *parent, name, true),
        WriteOp::Rename {
            parent,
            name,
            new_parent,
            new_name,
            mode,
        } => rename(tx, c, now, *parent, name, *new_parent, new_name, *mode),
        WriteOp::Link {
            ino,
            new_parent,
            new_name,
        } => link(tx, c, now, *ino, *new_parent, new_name),
        WriteOp::SetAttr { ino, set } => setattr(tx, c, now, *ino, set, Access::Check),
        WriteOp::Truncate { ino, size } => {
            let set = SetAttr {
                size: Some(*size),
                ..SetAttr::default()
            };
            setattr(tx, c, now, *ino, &set, Access::GrantedAtOpen)
        }
        WriteOp::SetXattr {
            ino,
            name,
            value,
            mode,
        } => setxattr(tx, c, now, *ino, name, value, *mode),
        WriteOp::RemoveXattr { ino, name } => remove_xattr(tx, c, now, *ino, name),
        WriteOp::SetPolicy { ino, policy } => set_policy(tx, c, now, *ino, policy),
        WriteOp::CommitSlices {
            ino,
            slices,
            size_at_least,
        } => commit_slices(tx, c, now, *ino, slices, *size_at_least, &[]),
        WriteOp::CommitSlicesThenSetAttrs {
            ino,
            slices,
            size_at_least,
            then,
        } => commit_slices(tx, c, now, *ino, slices, *size_at_least, then),
        WriteOp::AllocateBlocks {
            count,
            policy,
            placement,
            exclude: _,
            wanted,
        } => allocate_blocks(tx, now, *count, *policy, placement, *wanted),
        WriteOp::ReplaceSlices {
            ino,
            index,
            through_seq,
            replaced,
            slices,
        } => {
            root_only(c)?;
            replace_slices(tx, now, *ino, *index, *through_seq, replaced, slices)
        }
        WriteOp::DrainChunkserver { chunkserver, drain } => {
            root_only(c)?;
            drain_chunkserver(tx, *chunkserver, *drain)
        }
        WriteOp::RemoveChunkserver { chunkserver } => {
            root_only(c)?;
            remove_chunkserver(tx, *chunkserver)
        }
        WriteOp::RegisterChunkserver {
            address,
            capacity_bytes,
            token,
        } => register_chunkserver(tx, now, address, *capacity_bytes, *token),
        WriteOp::PutConfig { key, expect, value } => {
            super::config::put_config(tx, c, key, *expect, value.as_deref().map(|v| &v[..]))
        }
        WriteOp::Repair { fix } => super::fsck::apply_fix(tx, c, now, fix),
        WriteOp::TakeFence {
            ino,
            expect,
            holder,
        } => super::fence::take_fence(tx, c, *ino, *expect, holder),
        WriteOp::Fenced { epoch, op } => {
            let Some((ino, slices, size_at_least, then)) = commit_parts(op) else {
                return Err(Errno::EINVAL.into());
            };
            super::fence::check_fence(tx, ino, *epoch)?;
            commit_slices(tx, c, now, ino, slices, size_at_least, then)
        }
        WriteOp::SetClusterKey { key } => {
            root_only(c)?;
            set_cluster_key(tx, key)
        }
        WriteOp::ReapOrphans { inos } => {
            root_only(c)?;
            reap_orphans(tx, now, inos)?;
            Ok(NsReply::Done)
        }
        WriteOp::PurgeDeleted => {
            root_only(c)?;
            blocks::purge_deleted(tx, now)?;
            Ok(NsReply::Done)
        }
        WriteOp::AbandonBlocks { before } => {
            root_only(c)?;
            blocks::abandon(tx, *before)?;
            Ok(NsReply::Done)
        }
        WriteOp::RelocateFragments {
            block,
            from_base,
            policy,
            base,
            written,
        } => {
            root_only(c)?;
            blocks::relocate(tx, *block, *from_base, *policy, *base, written, now)?;
            Ok(NsReply::Done)
        }
        WriteOp::LoseFragment {
            block,
            slot,
            server,
        } => {
            root_only(c)?;
            blocks::lose(tx, *block, *slot, *server, now)?;
            Ok(NsReply::Done)
        }
        WriteOp::SetLock { ino, lock } => {
            let inode = load(tx, *ino)?;
            if inode.is_dir() && lock.kind != LockKind::Unlock {
                return Err(Errno::EISDIR.into());
            }
            super::locks::set_lock(tx, *ino, lock)
        }
        WriteOp::ExpireClient { client } => {
            deleg::expire(tx, *client)?;
            super::locks::expire_client(tx, *client)
        }
        WriteOp::Delegate { dir } => deleg::delegate(tx, c, cmd.id.client, *dir),
        WriteOp::ReturnDelegations { dirs } => {
            deleg::give_back(tx, cmd.id.client, dirs)?;
            Ok(NsReply::Done)
        }
        WriteOp::ReserveInodes { count } => deleg::reserve(tx, cmd.id.client, *count),
        // Two steps with their own outcomes: `apply_command` runs them.
        WriteOp::Delegated { .. } => Err(Errno::EINVAL.into()),
        WriteOp::Sync => Ok(NsReply::Done),
    }
}

/// What a commit carries, for one that arrives inside a fence.
type CommitParts<'a> = (
    InodeId,
    &'a [(u64, sparefs_proto::layout::Slice)],
    u64,
    &'a [(Caller, SetAttr)],
);

fn commit_parts(op: &WriteOp) -> Option<CommitParts<'_>> {
    match op {
        WriteOp::CommitSlices {
            ino,
            slices,
            size_at_least,
        } => Some((*ino, slices, *size_at_least, &[])),
        WriteOp::CommitSlicesThenSetAttrs {
            ino,
            slices,
            size_at_least,
            then,
        } => Some((*ino, slices, *size_at_least, then)),
        _ => None,
    }
}
