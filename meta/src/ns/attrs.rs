//! Attributes, extended attributes and ACLs of one inode.

use super::acl;
use super::layout::*;
use super::perm::{self, R, S_ISGID, S_ISUID, S_ISVTX, W};
use super::records::*;
use super::NsResult;
use crate::kv::{Cf, ReadKv, Tx};
use sparefs_proto::layout::Policy;
use sparefs_proto::limits::*;
use sparefs_proto::namespace::*;
use sparefs_proto::{Errno, InodeId};

/// Whether a change made through a descriptor is checked against the
/// file's permissions again: no, since POSIX grants a descriptor's access
/// once, when it is opened (the kernel checks it then, and `sparefs fs put`
/// truncates through `SetAttr`, which checks).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Check,
    GrantedAtOpen,
}

/// Applies `set` to `ino`, each part checked in the order Linux checks
/// them (size, owner, mode, times); ctime moves if anything changed.
pub(super) fn setattr<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    now: Time,
    ino: InodeId,
    set: &SetAttr,
    access: Access,
) -> NsResult<NsReply> {
    let mut inode = load(tx, ino)?;
    // Whether the caller owns the file as it was before this change.
    let owner = perm::is_owner_or_root(&inode, c);
    let mut changed = false;
    if let Some(size) = set.size {
        set_size(tx, c, now, (ino, &mut inode), size, access)?;
        changed = true;
    }
    if set.uid.is_some() || set.gid.is_some() {
        set_owner(c, &mut inode, set.uid, set.gid)?;
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
    changed |= set_times(c, now, &mut inode, owner, (set.atime, set.mtime))?;
    if changed {
        inode.ctime = now;
        store(tx, ino, &inode);
    }
    Ok(NsReply::Attr(inode.attr(ino)))
}

/// truncate: a regular file's size, its layout cut if it shrinks.
fn set_size<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    now: Time,
    (ino, inode): (InodeId, &mut InodeRec),
    size: u64,
    access: Access,
) -> NsResult<()> {
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
        perm::check(inode, c, W)?;
    }
    if size < inode.size {
        truncate_layout(tx, ino, size, inode.size, now)?;
    }
    if size != inode.size {
        inode.mtime = now;
    }
    inode.size = size;
    kill_suid(inode, c);
    Ok(())
}

/// chown: only root gives a file away; an owner may move it to one of
/// their own groups.
fn set_owner(c: &Caller, inode: &mut InodeRec, uid: Option<u32>, gid: Option<u32>) -> NsResult<()> {
    let new_uid = uid.unwrap_or(inode.uid);
    let new_gid = gid.unwrap_or(inode.gid);
    if c.uid != 0
        && (new_uid != inode.uid
            || c.uid != inode.uid
            || (new_gid != inode.gid && !c.in_group(new_gid)))
    {
        return Err(Errno::EPERM.into());
    }
    if inode.kind != FileKind::Dir {
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
    Ok(())
}

/// utimensat: "now" needs ownership or write access, an explicit time
/// ownership. True if a time was set.
fn set_times(
    c: &Caller,
    now: Time,
    inode: &mut InodeRec,
    owner: bool,
    (atime, mtime): (Option<TimeSet>, Option<TimeSet>),
) -> NsResult<bool> {
    let mut changed = false;
    for (which, value) in [(0, atime), (1, mtime)] {
        let Some(value) = value else { continue };
        let t = match value {
            TimeSet::Now => {
                if !owner && !perm::allowed(inode, c, W) {
                    return Err(Errno::EACCES.into());
                }
                now
            }
            TimeSet::At(t) => {
                if !owner {
                    return Err(Errno::EPERM.into());
                }
                t
            }
        };
        if which == 0 {
            inode.atime = t
        } else {
            inode.mtime = t
        }
        changed = true;
    }
    Ok(changed)
}

/// What a write or truncate by `c` does to the set-id bits, as Linux does
/// it (`should_remove_suid`, `setattr_should_drop_sgid`): a caller without
/// CAP_FSETID (here: not root) clears S_ISUID, and S_ISGID when group
/// execute is set or the caller is not in the file's group. The mount
/// negotiates FUSE_HANDLE_KILLPRIV, so this is the only place it happens.
pub(super) fn kill_suid(inode: &mut InodeRec, c: &Caller) {
    if c.uid == 0 {
        return;
    }
    inode.perm &= !S_ISUID;
    if inode.perm & 0o010 != 0 || !c.in_group(inode.gid) {
        inode.perm &= !S_ISGID;
    }
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
pub(super) fn set_acl<R: ReadKv>(
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
pub(super) fn setxattr<R: ReadKv>(
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

/// removexattr(2), ACLs included.
pub(super) fn remove_xattr<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    now: Time,
    ino: InodeId,
    name: &[u8],
) -> NsResult<NsReply> {
    let mut inode = load(tx, ino)?;
    check_xattr_access(&inode, c, name, W)?;
    if let Some(slot) = acl_slot(&mut inode, name) {
        if slot.is_empty() {
            return Err(Errno::ENODATA.into());
        }
        slot.clear();
        inode.ctime = now;
        store(tx, ino, &inode);
        return Ok(NsReply::Done);
    }
    let key = xattr_key(ino, name);
    if tx.get(Cf::Xattrs, &key)?.is_none() {
        return Err(Errno::ENODATA.into());
    }
    tx.delete(Cf::Xattrs, key);
    inode.ctime = now;
    store(tx, ino, &inode);
    Ok(NsReply::Done)
}

/// A directory's redundancy policy, for files created below it: its
/// owner's (or root's) to set.
pub(super) fn set_policy<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    now: Time,
    ino: InodeId,
    policy: &Policy,
) -> NsResult<NsReply> {
    policy.validate().map_err(|_| Errno::EINVAL)?;
    let mut inode = load(tx, ino)?;
    if !inode.is_dir() {
        return Err(Errno::ENOTDIR.into());
    }
    if !perm::is_owner_or_root(&inode, c) {
        return Err(Errno::EPERM.into());
    }
    inode.policy = Some(*policy);
    inode.ctime = now;
    store(tx, ino, &inode);
    Ok(NsReply::Policy(*policy))
}
