//! Permission checks with the caller's uid, gid and groups, as POSIX and
//! Linux apply them (owner/group/other, ACLs, root, sticky directories).

use super::records::InodeRec;
use sparefs_proto::namespace::Caller;
use sparefs_proto::posix_rules::mode_bits_allow;
use sparefs_proto::Errno;

pub const R: u32 = 4;
pub const W: u32 = 2;
pub const X: u32 = 1;

pub const S_ISUID: u32 = 0o4000;
pub const S_ISGID: u32 = 0o2000;
pub const S_ISVTX: u32 = 0o1000;

/// Whether `caller` may access `inode` with `mask` (R/W/X bits).
/// Mode bits as `proto::namespace::mode_bits_allow` checks them (a mount
/// answering in a delegated directory checks the same way), or the ACL.
pub fn allowed(inode: &InodeRec, caller: &Caller, mask: u32) -> bool {
    if caller.uid != 0 && !inode.acl.is_empty() {
        return super::acl::allowed(&inode.acl, inode.uid, inode.gid, caller, mask);
    }
    mode_bits_allow(inode.kind, inode.perm, (inode.uid, inode.gid), caller, mask)
}

pub fn check(inode: &InodeRec, caller: &Caller, mask: u32) -> Result<(), Errno> {
    if allowed(inode, caller, mask) {
        Ok(())
    } else {
        Err(Errno::EACCES)
    }
}

/// In a sticky directory only the owner of the entry, the owner of the
/// directory, or root may remove or rename an entry.
pub fn check_sticky(dir: &InodeRec, victim: &InodeRec, caller: &Caller) -> Result<(), Errno> {
    if dir.perm & S_ISVTX != 0
        && caller.uid != 0
        && caller.uid != dir.uid
        && caller.uid != victim.uid
    {
        return Err(Errno::EPERM);
    }
    Ok(())
}

pub fn is_owner_or_root(inode: &InodeRec, caller: &Caller) -> bool {
    caller.uid == 0 || caller.uid == inode.uid
}
