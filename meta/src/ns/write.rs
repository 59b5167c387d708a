//! Mutations of the namespace: one `Command` in, its writes into a `Tx`.
//!
//! Order inside every operation: validate names, load and check every record
//! and permission, and only then write. A command that fails leaves its
//! nested `Tx` unused, so nothing partial survives.

use super::acl;
use super::blocks;
use super::deleg;
use super::orphans;
use super::perm::{self, R, S_ISGID, S_ISUID, S_ISVTX, W, X};
use super::records::*;
use super::{NsError, NsResult};
use crate::kv::{be, read_be, Cf, ReadKv, StoreError, Tx};
use serde::{Deserialize, Serialize};
use sparefs_proto::layout::{BlockRef, Capability, Slice};
use sparefs_proto::limits::*;
use sparefs_proto::namespace::*;
use sparefs_proto::{BlockId, ChunkserverId, Errno, InodeId, RequestId};

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
const SESSION_LOW_WATER: u64 = u64::MAX;
/// Most answers one command forgets (bounds the work of a jump in ack_below).
const SESSION_FORGET_MAX: u64 = 4096;

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
    if let Some(prev) = tx.get_rec::<Result<NsReply, Errno>>(Cf::Sessions, &skey)? {
        return Ok(prev);
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

fn apply_op<R: ReadKv>(tx: &mut Tx<R>, cmd: &Command) -> NsResult<NsReply> {
    apply_op_at(tx, cmd, None)
}

/// `apply_op`, a create or mkdir taking inode number `reserved` if given (a
/// delegated create: the number the mount chose from its reservation).
fn apply_op_at<R: ReadKv>(
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
            if matches!(kind, FileKind::Dir | FileKind::Symlink) {
                return Err(Errno::EINVAL.into());
            }
            if matches!(kind, FileKind::CharDev | FileKind::BlockDev) && c.uid != 0 {
                return Err(Errno::EPERM.into());
            }
            make(
                tx,
                c,
                now,
                *parent,
                name,
                *kind,
                (perm & 0o7777, *umask),
                *rdev,
                Vec::new(),
                *exclusive,
                reserved,
            )
        }
        WriteOp::Mkdir {
            parent,
            name,
            perm,
            umask,
        } => make(
            tx,
            c,
            now,
            *parent,
            name,
            FileKind::Dir,
            (perm & 0o7777, *umask),
            0,
            Vec::new(),
            true,
            reserved,
        ),
        WriteOp::Symlink {
            parent,
            name,
            target,
        } => {
            if target.is_empty() || target.contains(&0) {
                return Err(Errno::ENOENT.into());
            }
            if target.len() > SYMLINK_BYTES_MAX {
                return Err(Errno::ENAMETOOLONG.into());
            }
            make(
                tx,
                c,
                now,
                *parent,
                name,
                FileKind::Symlink,
                (0o777, 0),
                0,
                target.clone(),
                true,
                None,
            )
        }
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
        WriteOp::RemoveXattr { ino, name } => {
            let mut inode = load(tx, *ino)?;
            check_xattr_access(&inode, c, name, W)?;
            if let Some(slot) = acl_slot(&mut inode, name) {
                if slot.is_empty() {
                    return Err(Errno::ENODATA.into());
                }
                slot.clear();
                inode.ctime = now;
                store(tx, *ino, &inode);
                return Ok(NsReply::Done);
            }
            let key = xattr_key(*ino, name);
            if tx.get(Cf::Xattrs, &key)?.is_none() {
                return Err(Errno::ENODATA.into());
            }
            tx.delete(Cf::Xattrs, key);
            inode.ctime = now;
            store(tx, *ino, &inode);
            Ok(NsReply::Done)
        }
        WriteOp::SetPolicy { ino, policy } => {
            policy.validate().map_err(|_| Errno::EINVAL)?;
            let mut inode = load(tx, *ino)?;
            if !inode.is_dir() {
                return Err(Errno::ENOTDIR.into());
            }
            if !perm::is_owner_or_root(&inode, c) {
                return Err(Errno::EPERM.into());
            }
            inode.policy = Some(*policy);
            inode.ctime = now;
            store(tx, *ino, &inode);
            Ok(NsReply::Policy(*policy))
        }
        WriteOp::CommitSlices {
            ino,
            slices,
            size_at_least,
        } => commit_slices(tx, c, now, *ino, slices, *size_at_least),
        WriteOp::CommitSlicesThenSetAttrs {
            ino,
            slices,
            size_at_least,
            then,
        } => {
            let mut reply = commit_slices(tx, c, now, *ino, slices, *size_at_least)?;
            for (caller, set) in then {
                if set.size.is_some() {
                    // A truncate is never held back behind writes.
                    return Err(Errno::EINVAL.into());
                }
                reply = setattr(tx, caller, now, *ino, set, Access::Check)?;
            }
            Ok(reply)
        }
        WriteOp::AllocateBlocks {
            count,
            policy,
            placement,
            exclude: _,
            wanted,
        } => {
            policy.validate().map_err(|_| Errno::EINVAL)?;
            if *count == 0 || *count > 1024 || placement.len() != policy.width() {
                return Err(Errno::EINVAL.into());
            }
            let key = cluster_key(tx)?.ok_or(NsError::Errno(Errno::EAGAIN))?;
            let first = next_id(tx, SYS_NEXT_BLOCK, *count as u64)?;
            let ids: Vec<BlockId> = (0..*count as u64).map(|i| BlockId(first + i)).collect();
            blocks::allocate(tx, &ids, *policy, wanted.unwrap_or(*policy), placement, now);
            let expires = now.secs.max(0) as u64 + CAPABILITY_SECS;
            let capabilities = ids
                .iter()
                .map(|b| Capability::issue(&key, *b, true, expires))
                .collect();
            Ok(NsReply::Allocated {
                ids,
                policy: *policy,
                placement: placement.clone(),
                capabilities,
            })
        }
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
            let key = be(chunkserver.0).to_vec();
            let mut rec: ChunkserverRec =
                tx.get_rec(Cf::Chunkservers, &key)?.ok_or(Errno::ENOENT)?;
            rec.draining = *drain;
            tx.put_rec(Cf::Chunkservers, key, &rec);
            Ok(NsReply::Done)
        }
        WriteOp::RemoveChunkserver { chunkserver } => {
            root_only(c)?;
            let key = be(chunkserver.0).to_vec();
            if tx.get(Cf::Chunkservers, &key)?.is_none() {
                return Err(Errno::ENOENT.into());
            }
            if blocks::server_holds_any(tx, *chunkserver)? {
                // Its fragments would be lost with it: drain it first.
                return Err(Errno::EBUSY.into());
            }
            tx.delete(Cf::Chunkservers, key);
            Ok(NsReply::Done)
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
        WriteOp::SetClusterKey { key } => {
            if c.uid != 0 {
                return Err(Errno::EPERM.into());
            }
            // The first key wins; later proposals (a new leader that had not
            // yet applied the first) change nothing.
            if cluster_key(tx)?.is_none() {
                tx.put_rec(Cf::Sys, SYS_CLUSTER_KEY.to_vec(), key);
            }
            Ok(NsReply::Done)
        }
        WriteOp::RegisterChunkserver {
            address,
            capacity_bytes,
            token,
        } => {
            let key = cluster_key(tx)?.ok_or(NsError::Errno(Errno::EAGAIN))?;
            // A chunkserver that registers again with its token keeps its id.
            for (k, v) in tx.scan(Cf::Chunkservers, &[], &[], usize::MAX)? {
                let rec: ChunkserverRec = crate::kv::decode(Cf::Chunkservers, &v)?;
                if rec.token == *token {
                    let id = read_be(&k)
                        .ok_or_else(|| StoreError::Invalid("short chunkserver key".into()))?;
                    let rec = ChunkserverRec {
                        address: address.clone(),
                        capacity_bytes: *capacity_bytes,
                        ..rec
                    };
                    tx.put_rec(Cf::Chunkservers, k, &rec);
                    return Ok(NsReply::Registered {
                        id: ChunkserverId(id),
                        key,
                    });
                }
            }
            let id = next_id(tx, SYS_NEXT_CHUNKSERVER, 1)? + 1;
            let rec = ChunkserverRec {
                address: address.clone(),
                capacity_bytes: *capacity_bytes,
                token: *token,
                registered: now,
                draining: false,
            };
            tx.put_rec(Cf::Chunkservers, be(id).to_vec(), &rec);
            Ok(NsReply::Registered {
                id: ChunkserverId(id),
                key,
            })
        }
    }
}

fn root_only(c: &Caller) -> NsResult<()> {
    if c.uid != 0 {
        return Err(Errno::EPERM.into());
    }
    Ok(())
}

/// Checks a name component for creation or lookup.
pub fn valid_name(name: &[u8]) -> Result<(), Errno> {
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

pub fn load<R: ReadKv>(kv: &R, ino: InodeId) -> NsResult<InodeRec> {
    kv.get_rec::<InodeRec>(Cf::Inodes, &inode_key(ino))?
        .ok_or(NsError::Errno(Errno::ENOENT))
}

fn store<R: ReadKv>(tx: &mut Tx<R>, ino: InodeId, rec: &InodeRec) {
    tx.put_rec(Cf::Inodes, inode_key(ino), rec);
}

pub fn load_dir<R: ReadKv>(kv: &R, ino: InodeId) -> NsResult<InodeRec> {
    let d = load(kv, ino)?;
    if !d.is_dir() {
        return Err(Errno::ENOTDIR.into());
    }
    Ok(d)
}

fn dentry<R: ReadKv>(kv: &R, parent: InodeId, name: &[u8]) -> NsResult<Option<DentryRec>> {
    Ok(kv.get_rec(Cf::Dentries, &dentry_key(parent, name))?)
}

/// Returns the first of `count` fresh ids from the counter `key`.
fn next_id<R: ReadKv>(tx: &mut Tx<R>, key: &[u8], count: u64) -> NsResult<u64> {
    let first = sys_u64(tx, key)?;
    tx.put_rec(Cf::Sys, key.to_vec(), &(first + count));
    Ok(first)
}

fn add_files<R: ReadKv>(tx: &mut Tx<R>, delta: i64) -> NsResult<()> {
    let n = sys_u64(tx, SYS_FILES)? as i64 + delta;
    tx.put_rec(Cf::Sys, SYS_FILES.to_vec(), &(n.max(0) as u64));
    Ok(())
}

fn new_inode(
    kind: FileKind,
    perm: u32,
    uid: u32,
    gid: u32,
    now: Time,
    parent: InodeId,
) -> InodeRec {
    let dir = kind == FileKind::Dir;
    InodeRec {
        kind,
        perm,
        uid,
        gid,
        size: 0,
        nlink: if dir { 2 } else { 1 },
        rdev: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        parent: if dir { parent } else { InodeId(0) },
        children: 0,
        next_cookie: FIRST_COOKIE,
        policy: None,
        target: Vec::new(),
        acl: Vec::new(),
        default_acl: Vec::new(),
    }
}

/// Adds `name -> ino` to directory `parent` (record `dir`, saved by the caller).
fn insert_entry<R: ReadKv>(
    tx: &mut Tx<R>,
    parent: InodeId,
    dir: &mut InodeRec,
    name: &[u8],
    ino: InodeId,
    kind: FileKind,
) {
    let cookie = dir.next_cookie;
    dir.next_cookie += 1;
    dir.children += 1;
    tx.put_rec(
        Cf::Dentries,
        dentry_key(parent, name),
        &DentryRec { ino, kind, cookie },
    );
    tx.put_rec(
        Cf::DirIndex,
        dirindex_key(parent, cookie),
        &DirIndexRec {
            name: name.to_vec(),
            ino,
            kind,
        },
    );
}

fn delete_entry<R: ReadKv>(
    tx: &mut Tx<R>,
    parent: InodeId,
    dir: &mut InodeRec,
    name: &[u8],
    entry: &DentryRec,
) {
    dir.children = dir.children.saturating_sub(1);
    tx.delete(Cf::Dentries, dentry_key(parent, name));
    tx.delete(Cf::DirIndex, dirindex_key(parent, entry.cookie));
}

#[allow(clippy::too_many_arguments)]
/// `WriteOp::Delegated`: the changes a mount answered in directories it
/// holds, each as its caller at the mount's clock, all or nothing (ESTALE if
/// the client no longer holds a directory, or an inode number is not from
/// its reservation); then `then`, whose failure or wait leaves them landed.
fn apply_delegated<R: ReadKv>(
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
fn apply_delegated_ops<R: ReadKv>(
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

fn make<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    now: Time,
    parent: InodeId,
    name: &[u8],
    kind: FileKind,
    (perm, umask): (u32, u32),
    rdev: u32,
    target: Vec<u8>,
    exclusive: bool,
    reserved: Option<InodeId>,
) -> NsResult<NsReply> {
    valid_name(name)?;
    let mut dir = load_dir(tx, parent)?;
    if is_dot(name) {
        return Err(Errno::EEXIST.into());
    }
    if let Some(existing) = dentry(tx, parent, name)? {
        // open(O_CREAT) without O_EXCL on an existing file opens it.
        if !exclusive && kind == FileKind::File {
            perm::check(&dir, c, X)?;
            return Ok(NsReply::Attr(load(tx, existing.ino)?.attr(existing.ino)));
        }
        return Err(Errno::EEXIST.into());
    }
    perm::check(&dir, c, W | X)?;
    if dir.nlink == 0 {
        return Err(Errno::ENOENT.into());
    }
    let ino = match reserved {
        // A delegated create: the number the mount chose from its reservation.
        Some(ino) => ino,
        None => InodeId(next_id(tx, SYS_NEXT_INODE, 1)?),
    };
    // A default ACL on the directory replaces the umask (acl(5)).
    let (acl, perm) = if !dir.default_acl.is_empty() && kind != FileKind::Symlink {
        acl::inherit(&dir.default_acl, perm)
    } else {
        (Vec::new(), perm & !umask)
    };
    // In a set-gid directory children take the directory's group, and
    // subdirectories keep the bit.
    let (gid, mut perm) = if dir.perm & S_ISGID != 0 {
        (
            dir.gid,
            if kind == FileKind::Dir {
                perm | S_ISGID
            } else {
                perm
            },
        )
    } else {
        (c.gid, perm)
    };
    if kind != FileKind::Dir && perm & S_ISGID != 0 && c.uid != 0 && !c.in_group(gid) {
        perm &= !S_ISGID;
    }
    let mut inode = new_inode(kind, perm, c.uid, gid, now, parent);
    inode.acl = acl;
    if kind == FileKind::Dir {
        inode.default_acl = dir.default_acl.clone();
    }
    inode.rdev = rdev;
    inode.size = target.len() as u64;
    inode.target = target;
    // Children carry their directory's policy (files keep it for writing).
    inode.policy = dir.policy;
    if kind == FileKind::Dir {
        dir.nlink += 1;
    }
    insert_entry(tx, parent, &mut dir, name, ino, kind);
    dir.mtime = now;
    dir.ctime = now;
    store(tx, parent, &dir);
    store(tx, ino, &inode);
    add_files(tx, 1)?;
    Ok(NsReply::Made {
        attr: inode.attr(ino),
        parent: dir.attr(parent),
    })
}

/// Drops one link of `ino`; at zero the inode goes to the deleted list,
/// where garbage collection finds its chunks.
fn drop_link<R: ReadKv>(
    tx: &mut Tx<R>,
    now: Time,
    ino: InodeId,
    inode: &mut InodeRec,
) -> NsResult<()> {
    let gone = if inode.is_dir() {
        true
    } else {
        inode.nlink = inode.nlink.saturating_sub(1);
        inode.nlink == 0
    };
    if gone && inode.kind == FileKind::File {
        // A descriptor may still have it open: nameless until reaped.
        inode.ctime = now;
        store(tx, ino, inode);
        orphans::adopt(tx, ino, now);
    } else if gone {
        if inode.is_dir() {
            deleg::forget_dir(tx, ino)?;
        }
        free_inode(tx, now, ino, inode)?;
    } else {
        inode.ctime = now;
        store(tx, ino, inode);
    }
    Ok(())
}

/// Frees an inode with no name left: its record and xattrs go, a file's
/// chunks go on the deleted list (`PurgeDeleted` drops them).
fn free_inode<R: ReadKv>(
    tx: &mut Tx<R>,
    now: Time,
    ino: InodeId,
    inode: &InodeRec,
) -> NsResult<()> {
    tx.delete(Cf::Inodes, inode_key(ino));
    for (k, _) in tx.scan(Cf::Xattrs, &be(ino.0), &be(ino.0), usize::MAX)? {
        tx.delete(Cf::Xattrs, k);
    }
    if inode.kind == FileKind::File {
        tx.put_rec(Cf::Deleted, inode_key(ino), &now);
    }
    add_files(tx, -1)
}

/// Frees the orphans among `inos` that are still nameless (the leader
/// found no mount holding them open).
fn reap_orphans<R: ReadKv>(tx: &mut Tx<R>, now: Time, inos: &[InodeId]) -> NsResult<()> {
    if inos.len() > REAP_ORPHANS_MAX {
        return Err(Errno::EINVAL.into());
    }
    for &ino in inos {
        if !orphans::is_orphan(tx, ino)? {
            continue;
        }
        orphans::forget(tx, ino);
        match tx.get_rec::<InodeRec>(Cf::Inodes, &inode_key(ino))? {
            Some(inode) if inode.nlink == 0 => free_inode(tx, now, ino, &inode)?,
            _ => {}
        }
    }
    Ok(())
}

/// Most inodes one `ReapOrphans` frees (bounds the entry and its apply).
pub const REAP_ORPHANS_MAX: usize = 1024;

fn remove<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    now: Time,
    parent: InodeId,
    name: &[u8],
    want_dir: bool,
) -> NsResult<NsReply> {
    valid_name(name)?;
    let mut dir = load_dir(tx, parent)?;
    if is_dot(name) {
        return Err(match (want_dir, name) {
            (true, b".") => Errno::EINVAL,
            (true, _) => Errno::ENOTEMPTY,
            (false, _) => Errno::EISDIR,
        }
        .into());
    }
    perm::check(&dir, c, X)?;
    let entry = dentry(tx, parent, name)?.ok_or(NsError::Errno(Errno::ENOENT))?;
    let mut victim = load(tx, entry.ino)?;
    match (want_dir, victim.is_dir()) {
        (true, false) => return Err(Errno::ENOTDIR.into()),
        (false, true) => return Err(Errno::EISDIR.into()),
        _ => {}
    }
    perm::check(&dir, c, W)?;
    perm::check_sticky(&dir, &victim, c)?;
    if want_dir {
        if entry.ino == InodeId::ROOT {
            return Err(Errno::EBUSY.into());
        }
        if victim.children > 0 {
            return Err(Errno::ENOTEMPTY.into());
        }
        dir.nlink = dir.nlink.saturating_sub(1);
    }
    delete_entry(tx, parent, &mut dir, name, &entry);
    dir.mtime = now;
    dir.ctime = now;
    store(tx, parent, &dir);
    drop_link(tx, now, entry.ino, &mut victim)?;
    // The directory's attributes after the change (as for `Made`).
    Ok(NsReply::Attr(dir.attr(parent)))
}

/// Most parents a rename walks up to learn whether a directory would move
/// below itself; a rename into a deeper directory is refused with ELOOP.
pub const PARENT_WALK_MAX: usize = 100_000;

/// True if directory `ino` is `ancestor` or lies below it.
fn is_within<R: ReadKv>(kv: &R, mut ino: InodeId, ancestor: InodeId) -> NsResult<bool> {
    // Bounded walk: a corrupt parent chain must not loop forever.
    for _ in 0..PARENT_WALK_MAX {
        if ino == ancestor {
            return Ok(true);
        }
        if ino == InodeId::ROOT {
            return Ok(false);
        }
        ino = load(kv, ino)?.parent;
    }
    // Deeper than the walk goes (or a chain that never reaches the root):
    // the same answer on every replica, so an errno for the caller, not a
    // storage error that would stop every replica applying this entry.
    Err(Errno::ELOOP.into())
}

#[allow(clippy::too_many_arguments)]
fn rename<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    now: Time,
    parent: InodeId,
    name: &[u8],
    new_parent: InodeId,
    new_name: &[u8],
    mode: RenameMode,
) -> NsResult<NsReply> {
    valid_name(name)?;
    valid_name(new_name)?;
    let src_dir = load_dir(tx, parent)?;
    let dst_dir = load_dir(tx, new_parent)?;
    if is_dot(name) || is_dot(new_name) {
        return Err(Errno::EINVAL.into());
    }
    perm::check(&src_dir, c, X)?;
    perm::check(&dst_dir, c, X)?;
    let src = dentry(tx, parent, name)?.ok_or(NsError::Errno(Errno::ENOENT))?;
    let dst = dentry(tx, new_parent, new_name)?;
    match (mode, &dst) {
        (RenameMode::NoReplace, Some(_)) => return Err(Errno::EEXIST.into()),
        (RenameMode::Exchange, None) => return Err(Errno::ENOENT.into()),
        _ => {}
    }
    perm::check(&src_dir, c, W)?;
    perm::check(&dst_dir, c, W)?;
    let src_inode = load(tx, src.ino)?;
    perm::check_sticky(&src_dir, &src_inode, c)?;
    let dst_inode = match &dst {
        Some(d) => {
            let i = load(tx, d.ino)?;
            perm::check_sticky(&dst_dir, &i, c)?;
            Some(i)
        }
        None => None,
    };
    // Moving a directory to a new parent rewrites its "..": it needs write
    // permission on itself, and must not land inside itself.
    if src_inode.is_dir() && parent != new_parent {
        perm::check(&src_inode, c, W)?;
        if is_within(tx, new_parent, src.ino)? {
            return Err(Errno::EINVAL.into());
        }
    }
    if mode == RenameMode::Exchange {
        let (dst, dst_inode) = match (dst, dst_inode) {
            (Some(d), Some(i)) => (d, i),
            _ => return Err(Errno::ENOENT.into()),
        };
        if dst_inode.is_dir() && parent != new_parent {
            perm::check(&dst_inode, c, W)?;
            if is_within(tx, parent, dst.ino)? {
                return Err(Errno::EINVAL.into());
            }
        }
        return exchange(
            tx, now, parent, name, src, src_inode, new_parent, new_name, dst, dst_inode,
        );
    }
    if let (Some(d), Some(di)) = (&dst, &dst_inode) {
        if d.ino == src.ino {
            // Two names of one inode: POSIX says do nothing.
            return Ok(NsReply::Done);
        }
        match (src_inode.is_dir(), di.is_dir()) {
            (true, false) => return Err(Errno::ENOTDIR.into()),
            (false, true) => return Err(Errno::EISDIR.into()),
            (true, true) if di.children > 0 => return Err(Errno::ENOTEMPTY.into()),
            _ => {}
        }
    }
    // Remove the target first, then move the entry. Directory records are
    // re-read after each step so that same-directory renames see one record.
    if let (Some(d), Some(mut di)) = (dst, dst_inode) {
        let mut ddir = load(tx, new_parent)?;
        delete_entry(tx, new_parent, &mut ddir, new_name, &d);
        if di.is_dir() {
            ddir.nlink = ddir.nlink.saturating_sub(1);
        }
        store(tx, new_parent, &ddir);
        drop_link(tx, now, d.ino, &mut di)?;
    }
    let mut sdir = load(tx, parent)?;
    delete_entry(tx, parent, &mut sdir, name, &src);
    if src_inode.is_dir() {
        sdir.nlink = sdir.nlink.saturating_sub(1);
    }
    sdir.mtime = now;
    sdir.ctime = now;
    store(tx, parent, &sdir);
    let mut ddir = load(tx, new_parent)?;
    insert_entry(tx, new_parent, &mut ddir, new_name, src.ino, src.kind);
    if src_inode.is_dir() {
        ddir.nlink += 1;
    }
    ddir.mtime = now;
    ddir.ctime = now;
    store(tx, new_parent, &ddir);
    let mut moved = load(tx, src.ino)?;
    if moved.is_dir() {
        moved.parent = new_parent;
    }
    moved.ctime = now;
    store(tx, src.ino, &moved);
    Ok(NsReply::Done)
}

#[allow(clippy::too_many_arguments)]
fn exchange<R: ReadKv>(
    tx: &mut Tx<R>,
    now: Time,
    parent: InodeId,
    name: &[u8],
    src: DentryRec,
    src_inode: InodeRec,
    new_parent: InodeId,
    new_name: &[u8],
    dst: DentryRec,
    dst_inode: InodeRec,
) -> NsResult<NsReply> {
    if src.ino == dst.ino {
        return Ok(NsReply::Done);
    }
    // Each name keeps its cookie and now points at the other inode.
    tx.put_rec(
        Cf::Dentries,
        dentry_key(parent, name),
        &DentryRec {
            ino: dst.ino,
            kind: dst.kind,
            cookie: src.cookie,
        },
    );
    tx.put_rec(
        Cf::Dentries,
        dentry_key(new_parent, new_name),
        &DentryRec {
            ino: src.ino,
            kind: src.kind,
            cookie: dst.cookie,
        },
    );
    // The directory indexes keep a copy of each dentry.
    tx.put_rec(
        Cf::DirIndex,
        dirindex_key(parent, src.cookie),
        &DirIndexRec {
            name: name.to_vec(),
            ino: dst.ino,
            kind: dst.kind,
        },
    );
    tx.put_rec(
        Cf::DirIndex,
        dirindex_key(new_parent, dst.cookie),
        &DirIndexRec {
            name: new_name.to_vec(),
            ino: src.ino,
            kind: src.kind,
        },
    );
    if parent != new_parent {
        let dirs_delta = src_inode.is_dir() as i64 - dst_inode.is_dir() as i64;
        let mut sdir = load(tx, parent)?;
        sdir.nlink = (sdir.nlink as i64 - dirs_delta) as u32;
        sdir.mtime = now;
        sdir.ctime = now;
        store(tx, parent, &sdir);
        let mut ddir = load(tx, new_parent)?;
        ddir.nlink = (ddir.nlink as i64 + dirs_delta) as u32;
        ddir.mtime = now;
        ddir.ctime = now;
        store(tx, new_parent, &ddir);
    } else {
        let mut d = load(tx, parent)?;
        d.mtime = now;
        d.ctime = now;
        store(tx, parent, &d);
    }
    let mut a = src_inode;
    let mut b = dst_inode;
    if a.is_dir() {
        a.parent = new_parent;
    }
    if b.is_dir() {
        b.parent = parent;
    }
    a.ctime = now;
    b.ctime = now;
    store(tx, src.ino, &a);
    store(tx, dst.ino, &b);
    Ok(NsReply::Done)
}

fn link<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    now: Time,
    ino: InodeId,
    new_parent: InodeId,
    new_name: &[u8],
) -> NsResult<NsReply> {
    valid_name(new_name)?;
    let mut inode = load(tx, ino)?;
    if inode.nlink == 0 {
        // Unlinked, kept only for open descriptors: gone for names.
        return Err(Errno::ENOENT.into());
    }
    let mut dir = load_dir(tx, new_parent)?;
    if inode.is_dir() {
        return Err(Errno::EPERM.into());
    }
    if is_dot(new_name) || dentry(tx, new_parent, new_name)?.is_some() {
        return Err(Errno::EEXIST.into());
    }
    perm::check(&dir, c, W | X)?;
    if inode.nlink >= 65_000 {
        return Err(Errno::EMLINK.into());
    }
    inode.nlink += 1;
    inode.ctime = now;
    insert_entry(tx, new_parent, &mut dir, new_name, ino, inode.kind);
    dir.mtime = now;
    dir.ctime = now;
    store(tx, new_parent, &dir);
    store(tx, ino, &inode);
    Ok(NsReply::Made {
        attr: inode.attr(ino),
        parent: dir.attr(new_parent),
    })
}

/// Whether a change made through a descriptor is checked against the
/// file's permissions again: no, since POSIX grants a descriptor's access
/// once, when it is opened (the kernel checks it then, and `sparefs fs put`
/// truncates through `SetAttr`, which checks).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Check,
    GrantedAtOpen,
}

fn setattr<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    now: Time,
    ino: InodeId,
    set: &SetAttr,
    access: Access,
) -> NsResult<NsReply> {
    let mut inode = load(tx, ino)?;
    let owner = perm::is_owner_or_root(&inode, c);
    let mut changed = false;
    if let Some(size) = set.size {
        if inode.is_dir() {
            return Err(Errno::EISDIR.into());
        }
        if inode.kind != FileKind::File {
            return Err(Errno::EINVAL.into());
        }
        if size > FILE_BYTES_MAX {
            return Err(Errno::EFBIG.into());
        }
        if access == Access::Check {
            perm::check(&inode, c, W)?;
        }
        if size < inode.size {
            truncate_layout(tx, ino, size, inode.size, now)?;
        }
        if size != inode.size {
            inode.mtime = now;
        }
        inode.size = size;
        kill_suid(&mut inode, c);
        changed = true;
    }
    if set.uid.is_some() || set.gid.is_some() {
        let new_uid = set.uid.unwrap_or(inode.uid);
        let new_gid = set.gid.unwrap_or(inode.gid);
        if c.uid != 0 {
            // Only root gives a file away; an owner may move it to one of
            // their own groups.
            if new_uid != inode.uid
                || c.uid != inode.uid
                || (new_gid != inode.gid && !c.in_group(new_gid))
            {
                return Err(Errno::EPERM.into());
            }
        }
        if inode.kind != FileKind::Dir && (set.uid.is_some() || set.gid.is_some()) {
            // chown clears set-uid, and set-gid when it means "set group id"
            // (group execute set), as Linux does.
            if inode.perm & 0o010 != 0 {
                inode.perm &= !(S_ISUID | S_ISGID);
            } else {
                inode.perm &= !S_ISUID;
            }
        }
        inode.uid = new_uid;
        inode.gid = new_gid;
        changed = true;
    }
    if let Some(mode) = set.perm {
        if !owner {
            return Err(Errno::EPERM.into());
        }
        let mut mode = mode & 0o7777;
        if c.uid != 0 && !c.in_group(inode.gid) {
            mode &= !S_ISGID;
        }
        inode.perm = mode;
        acl::apply_mode(&mut inode.acl, mode);
        changed = true;
    }
    for (which, value) in [(0, set.atime), (1, set.mtime)] {
        let Some(value) = value else { continue };
        match value {
            TimeSet::Now => {
                if !owner && !perm::allowed(&inode, c, W) {
                    return Err(Errno::EACCES.into());
                }
            }
            TimeSet::At(_) => {
                if !owner {
                    return Err(Errno::EPERM.into());
                }
            }
        }
        let t = match value {
            TimeSet::Now => now,
            TimeSet::At(t) => t,
        };
        if which == 0 {
            inode.atime = t
        } else {
            inode.mtime = t
        }
        changed = true;
    }
    if changed {
        inode.ctime = now;
        store(tx, ino, &inode);
    }
    Ok(NsReply::Attr(inode.attr(ino)))
}

/// What a write or truncate by `c` does to the set-id bits, as Linux does
/// it (`should_remove_suid`, `setattr_should_drop_sgid`): a caller without
/// CAP_FSETID (here: not root) clears S_ISUID, and S_ISGID when group
/// execute is set or the caller is not in the file's group. The mount
/// negotiates FUSE_HANDLE_KILLPRIV, so this is the only place it happens.
fn kill_suid(inode: &mut InodeRec, c: &Caller) {
    if c.uid == 0 {
        return;
    }
    inode.perm &= !S_ISUID;
    if inode.perm & 0o010 != 0 || !c.in_group(inode.gid) {
        inode.perm &= !S_ISGID;
    }
}

/// Shrinking a file: chunks wholly past the new end go; the chunk holding
/// the new end gets a hole slice over its tail, so a later extension reads
/// zeros there.
fn truncate_layout<R: ReadKv>(
    tx: &mut Tx<R>,
    ino: InodeId,
    size: u64,
    old_size: u64,
    now: Time,
) -> NsResult<()> {
    let keep_chunks = size.div_ceil(CHUNK_BYTES);
    let prefix = be(ino.0);
    let start = chunk_key(ino, keep_chunks);
    loop {
        let page = tx.scan(Cf::Chunks, &prefix, &start, 256)?;
        if page.is_empty() {
            break;
        }
        for (k, v) in page {
            let slices: Vec<Slice> = crate::kv::decode(Cf::Chunks, &v)?;
            let index = read_be(k.get(8..).unwrap_or_default())
                .ok_or_else(|| StoreError::Invalid("chunk key".into()))?;
            blocks::put_chunk(tx, ino, index, &slices, Vec::new(), now)?;
        }
    }
    let within = size % CHUNK_BYTES;
    if within != 0 && old_size > size {
        let index = size / CHUNK_BYTES;
        let key = chunk_key(ino, index);
        if let Some(old) = tx.get_rec::<Vec<Slice>>(Cf::Chunks, &key)? {
            let seq = next_id(tx, SYS_NEXT_SLICE, 1)?;
            let mut slices = old.clone();
            slices.push(Slice {
                seq,
                offset: within as u32,
                bytes: (CHUNK_BYTES - within) as u32,
                blocks: Vec::new(),
                block_offset: 0,
                inline: Vec::new(),
            });
            blocks::put_chunk(tx, ino, index, &old, drop_hidden_slices(slices), now)?;
        }
    }
    Ok(())
}

fn commit_slices<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    now: Time,
    ino: InodeId,
    slices: &[(u64, Slice)],
    size_at_least: u64,
) -> NsResult<NsReply> {
    let mut inode = load(tx, ino)?;
    if inode.kind != FileKind::File {
        return Err(Errno::EINVAL.into());
    }
    // Writes come through a descriptor, whose access was granted at open
    // (`Access`): a file created with mode 0 is written through the
    // descriptor that created it. The caller still decides the set-id bits.
    if size_at_least > FILE_BYTES_MAX {
        return Err(Errno::EFBIG.into());
    }
    for (index, slice) in slices {
        check_slice(*index, slice)?;
    }
    // One read, prune and write of each chunk record, however many slices
    // a flush brings (a random-write flush brings thousands).
    let mut by_chunk: std::collections::BTreeMap<u64, Vec<&Slice>> =
        std::collections::BTreeMap::new();
    for (index, slice) in slices {
        by_chunk.entry(*index).or_default().push(slice);
    }
    for (index, new) in by_chunk {
        let key = chunk_key(ino, index);
        let old: Vec<Slice> = tx.get_rec(Cf::Chunks, &key)?.unwrap_or_default();
        let mut existing = old.clone();
        let first = next_id(tx, SYS_NEXT_SLICE, new.len() as u64)?;
        let any_inline = new.iter().any(|s| !s.inline.is_empty());
        for (i, s) in new.into_iter().enumerate() {
            existing.push(Slice {
                seq: first + i as u64,
                ..s.clone()
            });
        }
        let existing = drop_hidden_slices(existing);
        let inline_bytes: usize = existing.iter().map(|s| s.inline.len()).sum();
        if any_inline && inline_bytes > INLINE_CHUNK_BYTES_MAX {
            // Enough small writes live in this chunk's record: the client
            // writes these as blocks instead.
            return Err(Errno::EFBIG.into());
        }
        blocks::put_chunk(tx, ino, index, &old, existing, now)?;
    }
    if size_at_least > inode.size {
        inode.size = size_at_least;
    }
    kill_suid(&mut inode, c);
    inode.mtime = now;
    inode.ctime = now;
    store(tx, ino, &inode);
    Ok(NsReply::Attr(inode.attr(ino)))
}

/// A slice a client asks to commit: inside its chunk, not empty, and its
/// blocks (or inline bytes) cover it.
fn check_slice(index: u64, slice: &Slice) -> NsResult<()> {
    let end = slice.offset as u64 + slice.bytes as u64;
    let blocks_bytes: u64 = slice.blocks.iter().map(|b| b.bytes as u64).sum();
    let blocks_ok = slice.blocks.iter().all(valid_block);
    // A slice without blocks is a hole (fallocate punch hole) or inline.
    let inline = !slice.inline.is_empty();
    let hole = slice.blocks.is_empty() && !inline;
    let inline_ok = !inline
        || (slice.blocks.is_empty()
            && slice.inline.len() == slice.bytes as usize
            && slice.inline.len() <= INLINE_SLICE_BYTES_MAX);
    let blocks_cover = blocks_bytes >= slice.block_offset as u64 + slice.bytes as u64;
    if end > CHUNK_BYTES
        || slice.bytes == 0
        || (!hole && !inline && !blocks_cover)
        || !blocks_ok
        || !inline_ok
    {
        return Err(Errno::EINVAL.into());
    }
    if index.saturating_mul(CHUNK_BYTES) > FILE_BYTES_MAX {
        return Err(Errno::EFBIG.into());
    }
    Ok(())
}

/// Swaps a chunk's older slices for their compacted rewrite (see
/// `WriteOp::ReplaceSlices`). Readers see the same bytes before and after.
fn replace_slices<R: ReadKv>(
    tx: &mut Tx<R>,
    now: Time,
    ino: InodeId,
    index: u64,
    through_seq: u64,
    replaced: &[u64],
    slices: &[Slice],
) -> NsResult<NsReply> {
    let key = chunk_key(ino, index);
    let old: Vec<Slice> = tx.get_rec(Cf::Chunks, &key)?.ok_or(Errno::ESTALE)?;
    let replaced: std::collections::HashSet<u64> = replaced.iter().copied().collect();
    let older: Vec<&Slice> = old.iter().filter(|s| s.seq <= through_seq).collect();
    if older.is_empty() || older.iter().any(|s| !replaced.contains(&s.seq)) {
        return Err(Errno::ESTALE.into());
    }
    for s in slices {
        check_slice(index, s)?;
    }
    let mut new: Vec<Slice> = slices
        .iter()
        .map(|s| Slice {
            seq: through_seq,
            ..s.clone()
        })
        .collect();
    new.extend(old.iter().filter(|s| s.seq > through_seq).cloned());
    blocks::put_chunk(tx, ino, index, &old, drop_hidden_slices(new), now)?;
    Ok(NsReply::Done)
}

/// Drops slices that newer slices cover entirely: no read can see them, so
/// keeping them would only grow the chunk record with every overwrite
/// (their blocks become garbage for the collector). Order is kept.
pub fn drop_hidden_slices(slices: Vec<Slice>) -> Vec<Slice> {
    let mut order: Vec<usize> = (0..slices.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse(slices[*i].seq));
    // Disjoint, non-adjacent covered intervals: start -> end (exclusive).
    let mut covered: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    let mut keep = vec![false; slices.len()];
    for i in order {
        let (a, b) = (
            slices[i].offset as u64,
            slices[i].offset as u64 + slices[i].bytes as u64,
        );
        let hidden = covered
            .range(..=a)
            .next_back()
            .is_some_and(|(_, end)| *end >= b);
        keep[i] = !hidden;
        if !hidden {
            // Insert [a, b) and merge every interval it touches.
            let (mut start, mut end) = (a, b);
            if let Some((s, e)) = covered.range(..=a).next_back().map(|(s, e)| (*s, *e)) {
                if e >= a {
                    start = s;
                    end = end.max(e);
                }
            }
            let inside: Vec<u64> = covered.range(start..=end).map(|(s, _)| *s).collect();
            for s in inside {
                if let Some(e) = covered.remove(&s) {
                    end = end.max(e);
                }
            }
            covered.insert(start, end);
        }
    }
    slices
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(s, _)| s)
        .collect()
}

fn valid_block(b: &BlockRef) -> bool {
    let width_ok = b.policy.validate().is_ok() && b.fragments.len() == b.policy.width();
    let mut hosts = b.fragments.clone();
    hosts.sort();
    hosts.dedup();
    width_ok && hosts.len() == b.fragments.len() && b.bytes as u64 <= BLOCK_BYTES_MAX && b.bytes > 0
}

/// xattr namespaces: `user.` follows file permissions and exists only on
/// regular files and directories; `trusted.` is root's; `security.` and
/// `system.` need ownership to change.
pub fn check_xattr_access(
    inode: &InodeRec,
    c: &Caller,
    name: &[u8],
    mask: u32,
) -> Result<(), Errno> {
    if name.is_empty() || name.len() > XATTR_NAME_BYTES_MAX || name.contains(&0) {
        return Err(if name.len() > XATTR_NAME_BYTES_MAX {
            Errno::ERANGE
        } else {
            Errno::EINVAL
        });
    }
    if name.starts_with(b"user.") {
        if !matches!(inode.kind, FileKind::File | FileKind::Dir) {
            return Err(if mask == R {
                Errno::ENODATA
            } else {
                Errno::EPERM
            });
        }
        if mask == W
            && inode.is_dir()
            && inode.perm & S_ISVTX != 0
            && !perm::is_owner_or_root(inode, c)
        {
            return Err(Errno::EPERM);
        }
        return perm::check(inode, c, mask);
    }
    if name.starts_with(b"trusted.") {
        return if c.uid == 0 {
            Ok(())
        } else {
            Err(Errno::EPERM)
        };
    }
    if name.starts_with(b"security.") || name.starts_with(b"system.") {
        return if mask == R || perm::is_owner_or_root(inode, c) {
            Ok(())
        } else {
            Err(Errno::EPERM)
        };
    }
    Err(Errno::ENOTSUP)
}

/// The stored ACL an xattr name stands for, if it names one.
pub fn acl_slot<'a>(inode: &'a mut InodeRec, name: &[u8]) -> Option<&'a mut acl::Acl> {
    if name == acl::ACCESS {
        Some(&mut inode.acl)
    } else if name == acl::DEFAULT {
        Some(&mut inode.default_acl)
    } else {
        None
    }
}

/// setfacl: an access ACL sets the mode bits it implies (and is dropped
/// when the mode says it all); a default ACL only goes on directories.
fn set_acl<R: ReadKv>(
    tx: &mut Tx<R>,
    now: Time,
    ino: InodeId,
    mut inode: InodeRec,
    name: &[u8],
    value: &[u8],
    mode: XattrMode,
) -> NsResult<NsReply> {
    let parsed = acl::parse(value)?;
    let is_access = name == acl::ACCESS;
    if !is_access && !inode.is_dir() {
        return Err(Errno::EACCES.into());
    }
    if inode.kind == FileKind::Symlink {
        return Err(Errno::ENOTSUP.into());
    }
    let exists = if is_access {
        !inode.acl.is_empty()
    } else {
        !inode.default_acl.is_empty()
    };
    match (mode, exists) {
        (XattrMode::Create, true) => return Err(Errno::EEXIST.into()),
        (XattrMode::Replace, false) => return Err(Errno::ENODATA.into()),
        _ => {}
    }
    if is_access {
        inode.perm = (inode.perm & !0o777) | acl::mode_of(&parsed);
        inode.acl = if acl::is_minimal(&parsed) {
            Vec::new()
        } else {
            parsed
        };
    } else {
        inode.default_acl = parsed;
    }
    inode.ctime = now;
    store(tx, ino, &inode);
    Ok(NsReply::Done)
}

#[allow(clippy::too_many_arguments)]
fn setxattr<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    now: Time,
    ino: InodeId,
    name: &[u8],
    value: &[u8],
    mode: XattrMode,
) -> NsResult<NsReply> {
    let mut inode = load(tx, ino)?;
    check_xattr_access(&inode, c, name, W)?;
    if value.len() > XATTR_VALUE_BYTES_MAX {
        return Err(Errno::ERANGE.into());
    }
    if name == acl::ACCESS || name == acl::DEFAULT {
        return set_acl(tx, now, ino, inode, name, value, mode);
    }
    let key = xattr_key(ino, name);
    let exists = tx.get(Cf::Xattrs, &key)?.is_some();
    match (mode, exists) {
        (XattrMode::Create, true) => return Err(Errno::EEXIST.into()),
        (XattrMode::Replace, false) => return Err(Errno::ENODATA.into()),
        _ => {}
    }
    tx.put_rec(Cf::Xattrs, key, &value.to_vec());
    inode.ctime = now;
    store(tx, ino, &inode);
    Ok(NsReply::Done)
}

#[cfg(test)]
mod tests {
    use super::drop_hidden_slices;
    use sparefs_proto::layout::Slice;

    fn s(seq: u64, offset: u32, bytes: u32) -> Slice {
        Slice {
            seq,
            offset,
            bytes,
            blocks: vec![],
            block_offset: 0,
            inline: vec![],
        }
    }

    #[test]
    fn hidden_slices_go_visible_ones_stay() {
        let out = drop_hidden_slices(vec![s(1, 0, 100), s(2, 50, 10), s(3, 0, 40), s(4, 40, 60)]);
        // 1 is covered by 3 ∪ 4; 2 by 4; 3 and 4 stay.
        assert_eq!(out.iter().map(|x| x.seq).collect::<Vec<_>>(), vec![3, 4]);
        let out = drop_hidden_slices(vec![s(1, 0, 100), s(2, 10, 10)]);
        assert_eq!(out.len(), 2, "a partly covered slice stays");
    }
}
