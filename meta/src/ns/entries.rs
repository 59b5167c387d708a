//! Directory entries and inode lifetimes: create, link, unlink, rename,
//! exchange, and freeing an inode once no name and no open file holds it.

use super::acl;
use super::deleg;
use super::orphans;
use super::perm::{self, S_ISGID, W, X};
use super::records::*;
use super::{NsError, NsResult};
use crate::kv::{be, Cf, ReadKv, Tx};
use sparefs_proto::limits::*;
use sparefs_proto::namespace::*;
use sparefs_proto::{Errno, InodeId};

pub(super) fn new_inode(
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
pub(super) fn insert_entry<R: ReadKv>(
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

pub(super) fn delete_entry<R: ReadKv>(
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

/// Creates `name` in `parent`: a file, node, directory or symlink, with
/// the mode, ownership and default ACL POSIX gives it; `reserved` is the
/// inode number of a delegated create. (mknod(2)'s arguments and a few.)
#[allow(clippy::too_many_arguments)]
pub(super) fn make<R: ReadKv>(
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
pub(super) fn drop_link<R: ReadKv>(
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

/// Frees an inode with no name left: its record, xattrs and writer fence
/// go, a file's chunks go on the deleted list (`PurgeDeleted` drops them).
pub(super) fn free_inode<R: ReadKv>(
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
        super::fence::forget(tx, ino)?;
    }
    if inode.kind == FileKind::File {
        tx.put_rec(Cf::Deleted, inode_key(ino), &now);
    }
    add_files(tx, -1)
}

/// Frees the orphans among `inos` that are still nameless (the leader
/// found no mount holding them open).
pub(super) fn reap_orphans<R: ReadKv>(tx: &mut Tx<R>, now: Time, inos: &[InodeId]) -> NsResult<()> {
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

pub(super) fn remove<R: ReadKv>(
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
pub(super) fn is_within<R: ReadKv>(kv: &R, mut ino: InodeId, ancestor: InodeId) -> NsResult<bool> {
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
pub(super) fn rename<R: ReadKv>(
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
    let replaced = dst.zip(dst_inode);
    let from = (parent, name, src, src_inode.is_dir());
    move_entry(tx, now, from, (new_parent, new_name), replaced)?;
    Ok(NsReply::Done)
}

/// The checked rename's changes: the target (if any) loses its name and a
/// link, and the entry moves. Directory records are re-read after each step
/// so that same-directory renames see one record.
fn move_entry<R: ReadKv>(
    tx: &mut Tx<R>,
    now: Time,
    (parent, name, src, is_dir): (InodeId, &[u8], DentryRec, bool),
    (new_parent, new_name): (InodeId, &[u8]),
    replaced: Option<(DentryRec, InodeRec)>,
) -> NsResult<()> {
    if let Some((d, mut di)) = replaced {
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
    if is_dir {
        sdir.nlink = sdir.nlink.saturating_sub(1);
    }
    sdir.mtime = now;
    sdir.ctime = now;
    store(tx, parent, &sdir);
    let mut ddir = load(tx, new_parent)?;
    insert_entry(tx, new_parent, &mut ddir, new_name, src.ino, src.kind);
    if is_dir {
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
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn exchange<R: ReadKv>(
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

pub(super) fn link<R: ReadKv>(
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

/// create(2)/mknod(2) of anything but a directory or symlink; device nodes
/// are root's.
#[allow(clippy::too_many_arguments)]
pub(super) fn mknod<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    now: Time,
    (parent, name): (InodeId, &[u8]),
    kind: FileKind,
    mode: (u32, u32),
    rdev: u32,
    exclusive: bool,
    reserved: Option<InodeId>,
) -> NsResult<NsReply> {
    if matches!(kind, FileKind::Dir | FileKind::Symlink) {
        return Err(Errno::EINVAL.into());
    }
    if matches!(kind, FileKind::CharDev | FileKind::BlockDev) && c.uid != 0 {
        return Err(Errno::EPERM.into());
    }
    let target = Vec::new();
    make(
        tx, c, now, parent, name, kind, mode, rdev, target, exclusive, reserved,
    )
}

/// symlink(2): the target must be a path (not empty, no NUL) of bounded
/// length.
pub(super) fn symlink<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    now: Time,
    parent: InodeId,
    name: &[u8],
    target: &[u8],
) -> NsResult<NsReply> {
    if target.is_empty() || target.contains(&0) {
        return Err(Errno::ENOENT.into());
    }
    if target.len() > SYMLINK_BYTES_MAX {
        return Err(Errno::ENAMETOOLONG.into());
    }
    let kind = FileKind::Symlink;
    make(
        tx,
        c,
        now,
        parent,
        name,
        kind,
        (0o777, 0),
        0,
        target.to_vec(),
        true,
        None,
    )
}
