//! `WriteOp::Delegated`: the batched changes a mount answered itself in
//! directories it holds, applied all or nothing.

use super::command::*;
use super::deleg;
use super::records::*;
use super::{NsError, NsResult};
use crate::kv::{ReadKv, StoreError, Tx};
use sparefs_proto::namespace::*;
use sparefs_proto::{Errno, InodeId};

#[allow(clippy::too_many_arguments)]
/// `WriteOp::Delegated`: the changes a mount answered in directories it
/// holds, each as its caller at the mount's clock, all or nothing (ESTALE if
/// the client no longer holds a directory, or an inode number is not from
/// its reservation); then `then`, whose failure or wait leaves them landed.
pub(super) fn apply_delegated<R: ReadKv>(
    tx: &mut Tx<R>,
    cmd: &Command,
    ops: &[DelegatedOp],
    then: Option<&WriteOp>,
) -> Result<Result<NsReply, Errno>, StoreError> {
    let mut inner = Tx::new(&*tx);
    match apply_delegated_ops(&mut inner, cmd, ops) {
        Ok(()) => {
            let writes = inner.into_writes();
            tx.absorb(writes);
        }
        Err(NsError::Errno(e)) => return Ok(Err(e)),
        Err(NsError::Store(e)) => return Err(e),
    }
    let Some(then) = then else {
        return Ok(Ok(NsReply::Done));
    };
    if matches!(then, WriteOp::Delegated { .. }) {
        return Ok(Ok(NsReply::DelegatedThen(Some(Err(Errno::EINVAL)))));
    }
    let conflict = match deleg::write_conflict(&*tx, cmd.id.client, then) {
        Ok(c) => c,
        Err(NsError::Errno(e)) => return Ok(Err(e)),
        Err(NsError::Store(e)) => return Err(e),
    };
    if conflict.is_some() {
        return Ok(Ok(NsReply::DelegatedThen(None)));
    }
    let one = Command {
        id: cmd.id,
        caller: cmd.caller.clone(),
        op: then.clone(),
        now: cmd.now,
    };
    let mut inner = Tx::new(&*tx);
    let answer = match apply_op(&mut inner, &one) {
        Ok(reply) => {
            let writes = inner.into_writes();
            tx.absorb(writes);
            Ok(Box::new(reply))
        }
        Err(NsError::Errno(e)) => Err(e),
        Err(NsError::Store(e)) => return Err(e),
    };
    Ok(Ok(NsReply::DelegatedThen(Some(answer))))
}

/// The delegated changes of a `WriteOp::Delegated`, into `tx`.
pub(super) fn apply_delegated_ops<R: ReadKv>(
    tx: &mut Tx<R>,
    cmd: &Command,
    ops: &[DelegatedOp],
) -> NsResult<()> {
    let client = cmd.id.client;
    let holds = |tx: &Tx<R>, dir: InodeId| -> NsResult<()> {
        if deleg::holder(tx, dir)? == Some(client) {
            Ok(())
        } else {
            Err(Errno::ESTALE.into())
        }
    };
    for d in ops {
        let (parent, made) = match &d.op {
            WriteOp::MkNod {
                parent,
                kind: FileKind::File,
                rdev: 0,
                ..
            } => (*parent, true),
            WriteOp::Mkdir { parent, .. } => (*parent, true),
            WriteOp::Unlink { parent, .. } => (*parent, false),
            WriteOp::Rmdir { parent, name } => {
                // The mount knew the directory empty: it held it too.
                let victim = dentry(tx, *parent, name)?.ok_or(Errno::ESTALE)?;
                holds(tx, victim.ino)?;
                (*parent, false)
            }
            // The directory's own times, mode or owner (tar sets them last).
            WriteOp::SetAttr {
                ino,
                set: SetAttr { size: None, .. },
            } => (*ino, false),
            // A file (not a directory) moved between names of directories
            // the mount holds, replacing a file or nothing.
            WriteOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                mode: RenameMode::Replace | RenameMode::NoReplace,
            } => {
                holds(tx, *new_parent)?;
                let src = dentry(tx, *parent, name)?.ok_or(Errno::ESTALE)?;
                let dst = dentry(tx, *new_parent, new_name)?;
                if src.kind == FileKind::Dir || dst.is_some_and(|d| d.kind == FileKind::Dir) {
                    return Err(Errno::EINVAL.into());
                }
                (*parent, false)
            }
            _ => return Err(Errno::EINVAL.into()),
        };
        holds(tx, parent)?;
        if made != d.ino.is_some() {
            return Err(Errno::EINVAL.into());
        }
        if let Some(ino) = d.ino {
            deleg::take_reserved(tx, client, ino)?;
        }
        let one = Command {
            id: cmd.id,
            caller: d.caller.clone(),
            op: d.op.clone(),
            now: d.now,
        };
        let reply = apply_op_at(tx, &one, d.ino)?;
        if let (WriteOp::Mkdir { .. }, Some(ino)) = (&one.op, d.ino) {
            // A directory made in a delegated one is its maker's too.
            deleg::grant(tx, client, ino);
        }
        if let Some(ino) = d.ino {
            if !matches!(&reply, NsReply::Made { attr, .. } if attr.ino == ino) {
                // open(O_CREAT) of a name that exists: the mount believed
                // it free, so its picture of the directory is wrong.
                return Err(Errno::ESTALE.into());
            }
        }
    }
    Ok(())
}
