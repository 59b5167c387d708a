//! POSIX rules the meta and the mount must apply alike: the mode-bit
//! permission check, and what a create, removal or attribute change makes
//! of the attributes. The meta's state machine uses them to decide; a mount
//! uses them to answer in directories delegated to it without asking, and a
//! property test in the meta (meta/tests/ns_predict.rs) holds the two
//! together.

use crate::namespace::{Attr, Caller, FileKind, SetAttr, Time, TimeSet};
use crate::InodeId;

/// S_ISUID and S_ISGID.
const SET_ID_BITS: (u32, u32) = (0o4000, 0o2000);

/// The mode-bit permission check of a file without an ACL (`mask`: 4 read,
/// 2 write, 1 execute or search), as the meta makes it: root passes every
/// check but execute, which needs some x bit on a non-directory.
pub fn mode_bits_allow(
    kind: FileKind,
    perm: u32,
    (uid, gid): (u32, u32),
    c: &Caller,
    mask: u32,
) -> bool {
    if c.uid == 0 {
        return mask & 1 == 0 || kind == FileKind::Dir || perm & 0o111 != 0;
    }
    let bits = if c.uid == uid {
        (perm >> 6) & 7
    } else if c.in_group(gid) {
        (perm >> 3) & 7
    } else {
        perm & 7
    };
    bits & mask == mask
}

/// `mode_bits_allow` for a file with attributes `a`.
pub fn mode_allows(a: &Attr, c: &Caller, mask: u32) -> bool {
    mode_bits_allow(a.kind, a.perm, (a.uid, a.gid), c, mask)
}

/// What the meta's create (a regular file) or mkdir by `c` in directory
/// `dir`, which has no default ACL, makes at `now`: the new inode's
/// attributes and the directory's after. Mirrors the meta's `make` (a test
/// there holds them together).
pub fn predict_make(
    dir: &Attr,
    c: &Caller,
    kind: FileKind,
    (perm, umask): (u32, u32),
    ino: InodeId,
    now: Time,
) -> (Attr, Attr) {
    let (_, sgid) = SET_ID_BITS;
    let is_dir = kind == FileKind::Dir;
    let perm = perm & 0o7777 & !umask;
    let (gid, mut perm) = if dir.perm & sgid != 0 {
        (dir.gid, if is_dir { perm | sgid } else { perm })
    } else {
        (c.gid, perm)
    };
    if !is_dir && perm & sgid != 0 && c.uid != 0 && !c.in_group(gid) {
        perm &= !sgid;
    }
    let made = Attr {
        ino,
        kind,
        perm,
        uid: c.uid,
        gid,
        size: 0,
        nlink: if is_dir { 2 } else { 1 },
        rdev: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
    };
    let mut after = dir.clone();
    if is_dir {
        after.nlink += 1;
    }
    after.mtime = now;
    after.ctime = now;
    (made, after)
}

/// Directory `dir`'s attributes after the meta removes an entry (a
/// directory if `is_dir`) at `now`. Mirrors the meta's `remove`.
pub fn predict_remove(dir: &Attr, is_dir: bool, now: Time) -> Attr {
    let mut after = dir.clone();
    if is_dir {
        after.nlink = after.nlink.saturating_sub(1);
    }
    after.mtime = now;
    after.ctime = now;
    after
}

/// The attributes a regular file will have once the meta applies `set`
/// for `c` to one with attributes `a`, if that is certain without asking
/// it: the change is permitted whatever else the meta knows, and its
/// result is exact but for `ctime`, stamped `now` here. `None`: ask.
/// Mirrors the meta's setattr (a test there holds them together).
pub fn predict_setattr(a: &Attr, c: &Caller, set: &SetAttr, now: Time) -> Option<Attr> {
    if a.kind != FileKind::File {
        return None;
    }
    predict(a, c, set, now, false)
}

/// `predict_setattr` for a directory delegated to the mount, whose change
/// the meta applies at the mount's clock `now` (so UTIME_NOW is known too).
pub fn predict_dir_setattr(a: &Attr, c: &Caller, set: &SetAttr, now: Time) -> Option<Attr> {
    if a.kind != FileKind::Dir {
        return None;
    }
    predict(a, c, set, now, true)
}

fn predict(a: &Attr, c: &Caller, set: &SetAttr, now: Time, clock_known: bool) -> Option<Attr> {
    let (suid, sgid) = SET_ID_BITS;
    let root = c.uid == 0;
    if set.size.is_some() || !(root || c.uid == a.uid) {
        return None;
    }
    let mut out = a.clone();
    if set.uid.is_some() || set.gid.is_some() {
        if !root {
            return None;
        }
        // chown clears set-uid (and set-gid with group execute) of files.
        if a.kind != FileKind::Dir {
            if out.perm & 0o010 != 0 {
                out.perm &= !(suid | sgid);
            } else {
                out.perm &= !suid;
            }
        }
        out.uid = set.uid.unwrap_or(out.uid);
        out.gid = set.gid.unwrap_or(out.gid);
    }
    if let Some(mode) = set.perm {
        // An owner outside the file's group loses set-gid: not known here.
        if !root && mode & sgid != 0 {
            return None;
        }
        out.perm = mode & 0o7777;
    }
    for (value, field) in [(set.atime, &mut out.atime), (set.mtime, &mut out.mtime)] {
        match value {
            None => {}
            Some(TimeSet::At(t)) => *field = t,
            Some(TimeSet::Now) if clock_known => *field = now,
            // The meta's clock decides.
            Some(TimeSet::Now) => return None,
        }
    }
    if *set != SetAttr::default() {
        out.ctime = now;
    }
    Some(out)
}
