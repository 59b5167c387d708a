//! Writer fences of files: an epoch per file that grows at every new
//! holder (`WriteOp::TakeFence`, a compare-and-set), and the check a fenced
//! commit (`WriteOp::Fenced`) passes only while its epoch is the newest.
//! Slices become visible only at commit, so a writer whose fence was taken
//! over can store blocks but never make them part of the file: fencing the
//! commit fences the data (iSCSI failover, docs/iscsi.md).
//!
//! Owns: the `Fences` column family. Must not touch: layouts (the commit
//! itself is `layout::commit_slices`'s), which role may take a fence
//! (`access`).

use super::records::{load, root_only};
use super::NsResult;
use crate::kv::{be, Cf, ReadKv, Tx};
use serde::{Deserialize, Serialize};
use sparefs_proto::limits::FENCE_HOLDER_BYTES_MAX;
use sparefs_proto::namespace::{Caller, FileKind, NsReply};
use sparefs_proto::{Errno, InodeId};

#[derive(Serialize, Deserialize, Default)]
struct FenceRec {
    epoch: u64,
    holder: String,
}

fn current(kv: &impl ReadKv, ino: InodeId) -> NsResult<FenceRec> {
    Ok(kv
        .get_rec::<FenceRec>(Cf::Fences, &be(ino.0))?
        .unwrap_or_default())
}

/// Forgets the fence of a file that is gone (inode numbers are never
/// used again, so nothing can need it); whether there was one.
pub(super) fn forget<R: ReadKv>(tx: &mut Tx<R>, ino: InodeId) -> NsResult<bool> {
    let key = be(ino.0).to_vec();
    if tx.get(Cf::Fences, &key)?.is_none() {
        return Ok(false);
    }
    tx.delete(Cf::Fences, key);
    Ok(true)
}

pub(super) fn take_fence<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    ino: InodeId,
    expect: u64,
    holder: &str,
) -> NsResult<NsReply> {
    root_only(c)?;
    if holder.is_empty() || holder.len() > FENCE_HOLDER_BYTES_MAX {
        return Err(Errno::EINVAL.into());
    }
    if load(tx, ino)?.kind != FileKind::File {
        return Err(Errno::EINVAL.into());
    }
    let now = current(tx, ino)?;
    if now.epoch != expect {
        return Err(Errno::ESTALE.into());
    }
    let Some(epoch) = expect.checked_add(1) else {
        return Err(Errno::ERANGE.into());
    };
    let rec = FenceRec {
        epoch,
        holder: holder.to_string(),
    };
    tx.put_rec(Cf::Fences, be(ino.0).to_vec(), &rec);
    Ok(NsReply::Fence {
        epoch,
        holder: rec.holder,
    })
}

/// A fenced commit at `epoch` may land: no newer holder took the file.
pub(super) fn check_fence(kv: &impl ReadKv, ino: InodeId, epoch: u64) -> NsResult<()> {
    if current(kv, ino)?.epoch > epoch {
        return Err(Errno::EKEYREVOKED.into());
    }
    Ok(())
}

pub(super) fn get_fence(kv: &impl ReadKv, ino: InodeId) -> NsResult<NsReply> {
    let f = current(kv, ino)?;
    Ok(NsReply::Fence {
        epoch: f.epoch,
        holder: f.holder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::command::{apply_op, bootstrap, Command};
    use crate::store::Store;
    use sparefs_proto::layout::Slice;
    use sparefs_proto::namespace::{Time, WriteOp};
    use sparefs_proto::{ClientId, RequestId};

    fn run<R: ReadKv>(tx: &mut Tx<R>, caller: &Caller, op: WriteOp) -> NsResult<NsReply> {
        let cmd = Command {
            id: RequestId {
                client: ClientId(7),
                seq: 1,
                ack_below: 0,
            },
            caller: caller.clone(),
            op,
            now: Time::default(),
        };
        apply_op(tx, &cmd)
    }

    fn commit(ino: InodeId, byte: u8) -> WriteOp {
        WriteOp::CommitSlices {
            ino,
            slices: vec![(
                0,
                Slice {
                    inline: vec![byte; 4],
                    ..Slice::empty(0, 4)
                },
            )],
            size_at_least: 4,
        }
    }

    #[test]
    fn each_holder_gets_a_new_epoch_and_older_commits_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = Store::create(dir.path()).expect("store");
        let mut tx = Tx::new(&base);
        bootstrap(&mut tx).expect("bootstrap");
        let root = Caller::ROOT;
        // Only files are fenced.
        assert!(take_fence(&mut tx, &root, InodeId::ROOT, 0, "a").is_err());
        let made = run(
            &mut tx,
            &root,
            WriteOp::MkNod {
                parent: InodeId::ROOT,
                name: b"img".to_vec(),
                kind: FileKind::File,
                perm: 0o644,
                umask: 0,
                rdev: 0,
                exclusive: true,
            },
        );
        let ino = match made {
            Ok(NsReply::Made { attr, .. }) => attr.ino,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            take_fence(&mut tx, &root, ino, 0, "a#1"),
            Ok(NsReply::Fence { epoch: 1, .. })
        ));
        let fenced = |epoch| WriteOp::Fenced {
            epoch,
            op: Box::new(commit(ino, epoch as u8)),
        };
        assert!(run(&mut tx, &root, fenced(1)).is_ok());
        // A second taker that saw epoch 0 loses the race.
        assert!(take_fence(&mut tx, &root, ino, 0, "b#1").is_err());
        assert!(matches!(
            take_fence(&mut tx, &root, ino, 1, "b#1"),
            Ok(NsReply::Fence { epoch: 2, .. })
        ));
        // The old holder's commits are refused from now on; the new one's land.
        assert!(matches!(
            run(&mut tx, &root, fenced(1)),
            Err(super::super::NsError::Errno(Errno::EKEYREVOKED))
        ));
        assert!(run(&mut tx, &root, fenced(2)).is_ok());
        assert!(matches!(
            get_fence(&tx, ino),
            Ok(NsReply::Fence { epoch: 2, ref holder }) if holder == "b#1"
        ));
        // Only commits ride in a fence.
        let sneaky = WriteOp::Fenced {
            epoch: 2,
            op: Box::new(WriteOp::Sync),
        };
        assert!(run(&mut tx, &root, sneaky).is_err());
        // Not root: refused.
        let user = Caller {
            uid: 1000,
            ..Caller::ROOT
        };
        assert!(take_fence(&mut tx, &user, ino, 2, "c#1").is_err());
    }
}
