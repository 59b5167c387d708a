//! Permission rules of the state machine with non-root callers: owner/group/
//! other bits, sticky and set-gid directories, chmod/chown/utimes rights,
//! exactly-once retries.

mod common;

use common::Machine;
use sparefs_proto::namespace::*;
use sparefs_proto::{Errno, InodeId};

fn user(uid: u32, gid: u32) -> Caller {
    Caller {
        uid,
        gid,
        groups: vec![],
    }
}

fn attr(r: Result<NsReply, Errno>) -> Attr {
    match r {
        Ok(NsReply::Attr(a) | NsReply::Made { attr: a, .. }) => a,
        other => panic!("expected attributes, got {other:?}"),
    }
}

fn mkdir(m: &mut Machine, parent: InodeId, name: &str, perm: u32) -> InodeId {
    attr(m.apply_reply(WriteOp::Mkdir {
        parent,
        name: name.into(),
        perm,
        umask: 0,
    }))
    .ino
}

fn create(m: &mut Machine, parent: InodeId, name: &str) -> Result<NsReply, Errno> {
    m.apply_reply(WriteOp::MkNod {
        parent,
        name: name.into(),
        kind: FileKind::File,
        perm: 0o2755,
        umask: 0o022,
        rdev: 0,
        exclusive: true,
    })
}

#[test]
fn sticky_directory_protects_other_users_entries() {
    let mut m = Machine::new(Caller::ROOT);
    let tmp = mkdir(&mut m, InodeId::ROOT, "tmp", 0o1777);
    m.caller = user(1000, 1000);
    create(&mut m, tmp, "mine").expect("create as 1000");
    m.caller = user(1001, 1001);
    assert_eq!(
        m.apply(WriteOp::Unlink {
            parent: tmp,
            name: "mine".into()
        }),
        Err(Errno::EPERM)
    );
    let rename = WriteOp::Rename {
        parent: tmp,
        name: "mine".into(),
        new_parent: tmp,
        new_name: "x".into(),
        mode: RenameMode::Replace,
    };
    assert_eq!(m.apply(rename), Err(Errno::EPERM));
    m.caller = user(1000, 1000);
    m.apply(WriteOp::Unlink {
        parent: tmp,
        name: "mine".into(),
    })
    .expect("owner removes");
}

#[test]
fn permission_bits_and_umask() {
    let mut m = Machine::new(Caller::ROOT);
    let d = mkdir(&mut m, InodeId::ROOT, "d", 0o755);
    m.caller = user(1000, 1000);
    assert_eq!(
        create(&mut m, d, "f").map(|_| ()),
        Err(Errno::EACCES),
        "no write permission in a root-owned 0755 dir"
    );
    assert_eq!(
        m.read(ReadOp::ReadDir {
            ino: d,
            after_cookie: 0,
            limit: 10
        })
        .map(|_| ()),
        Ok(())
    );
    m.caller = Caller::ROOT;
    let secret = mkdir(&mut m, InodeId::ROOT, "secret", 0o700);
    m.caller = user(1000, 1000);
    assert_eq!(
        m.read(ReadOp::Lookup {
            parent: secret,
            name: "x".into()
        })
        .map(|_| ()),
        Err(Errno::EACCES)
    );
    let home = {
        m.caller = Caller::ROOT;
        let h = mkdir(&mut m, InodeId::ROOT, "home", 0o777);
        m.caller = user(1000, 1000);
        h
    };
    let f = attr(create(&mut m, home, "f"));
    // umask 022 on 02755; the caller is in the file's group so set-gid stays.
    assert_eq!(f.perm, 0o2755);
    assert_eq!((f.uid, f.gid), (1000, 1000));
    // Another user may not chmod, chown or set explicit times.
    m.caller = user(1001, 1001);
    let chmod = WriteOp::SetAttr {
        ino: f.ino,
        set: SetAttr {
            perm: Some(0o777),
            ..Default::default()
        },
    };
    assert_eq!(m.apply(chmod.clone()), Err(Errno::EPERM));
    let touch = WriteOp::SetAttr {
        ino: f.ino,
        set: SetAttr {
            mtime: Some(TimeSet::At(Time { secs: 5, nanos: 0 })),
            ..Default::default()
        },
    };
    assert_eq!(m.apply(touch), Err(Errno::EPERM));
    let now = WriteOp::SetAttr {
        ino: f.ino,
        set: SetAttr {
            mtime: Some(TimeSet::Now),
            ..Default::default()
        },
    };
    assert_eq!(
        m.apply(now),
        Err(Errno::EACCES),
        "UTIME_NOW needs write permission"
    );
    // The owner may not give the file away, but root may; chown clears set-id bits.
    m.caller = user(1000, 1000);
    let give = WriteOp::SetAttr {
        ino: f.ino,
        set: SetAttr {
            uid: Some(1001),
            ..Default::default()
        },
    };
    assert_eq!(m.apply(give.clone()), Err(Errno::EPERM));
    m.caller = Caller::ROOT;
    let a = attr(m.apply_reply(give));
    assert_eq!(a.uid, 1001);
    assert_eq!(
        a.perm & 0o6000,
        0,
        "chown cleared set-gid on a group-executable file"
    );
}

#[test]
fn setgid_directory_passes_group_to_children() {
    let mut m = Machine::new(Caller::ROOT);
    let shared = mkdir(&mut m, InodeId::ROOT, "shared", 0o2777);
    m.apply(WriteOp::SetAttr {
        ino: shared,
        set: SetAttr {
            gid: Some(500),
            ..Default::default()
        },
    })
    .expect("chgrp");
    m.apply(WriteOp::SetAttr {
        ino: shared,
        set: SetAttr {
            perm: Some(0o2777),
            ..Default::default()
        },
    })
    .expect("chmod");
    m.caller = user(1000, 1000);
    let sub = attr(m.apply_reply(WriteOp::Mkdir {
        parent: shared,
        name: "sub".into(),
        perm: 0o755,
        umask: 0,
    }));
    assert_eq!(sub.gid, 500);
    assert_ne!(sub.perm & 0o2000, 0, "subdirectory keeps set-gid");
    let f = attr(create(&mut m, shared, "f"));
    assert_eq!(f.gid, 500);
    assert_eq!(f.perm & 0o2000, 0, "a non-member's file loses set-gid");
}

#[test]
fn retried_request_applies_once() {
    let mut m = Machine::new(Caller::ROOT);
    let op = WriteOp::Mkdir {
        parent: InodeId::ROOT,
        name: "once".into(),
        perm: 0o755,
        umask: 0,
    };
    let first = m.apply_reply(op.clone()).expect("first");
    let again = m.apply_same_seq(op).expect("retry");
    assert_eq!(first, again, "a retry returns the first answer, not EEXIST");
}

fn mknod(m: &mut Machine, name: &str, perm: u32, gid: u32) -> InodeId {
    let ino = attr(m.apply_reply(WriteOp::MkNod {
        parent: InodeId::ROOT,
        name: name.into(),
        kind: FileKind::File,
        perm,
        umask: 0,
        rdev: 0,
        exclusive: true,
    }))
    .ino;
    attr(m.apply_reply(WriteOp::SetAttr {
        ino,
        set: SetAttr {
            gid: Some(gid),
            perm: Some(perm),
            ..SetAttr::default()
        },
    }));
    ino
}

#[test]
fn a_write_clears_set_id_bits_as_linux_does() {
    let mut m = Machine::new(Caller::ROOT);
    let commit = |ino| WriteOp::CommitSlices {
        ino,
        slices: Vec::new(),
        size_at_least: 0,
    };
    let exec = mknod(&mut m, "exec", 0o6777, 0);
    let plain_other = mknod(&mut m, "plain-other", 0o6666, 0);
    let plain_member = mknod(&mut m, "plain-member", 0o6666, 1000);
    let rooted = mknod(&mut m, "rooted", 0o6777, 0);
    m.caller = user(1000, 1000);
    assert_eq!(attr(m.apply_reply(commit(exec))).perm, 0o0777);
    assert_eq!(attr(m.apply_reply(commit(plain_other))).perm, 0o0666);
    assert_eq!(attr(m.apply_reply(commit(plain_member))).perm, 0o2666);
    m.caller = Caller::ROOT;
    assert_eq!(attr(m.apply_reply(commit(rooted))).perm, 0o6777);
}

#[test]
fn a_descriptor_truncates_with_the_access_granted_at_open() {
    let mut m = Machine::new(Caller::ROOT);
    let f = mknod(&mut m, "mode0", 0, 0);
    m.caller = user(1000, 1000);
    let truncate = SetAttr {
        size: Some(10),
        ..SetAttr::default()
    };
    assert_eq!(
        m.apply_reply(WriteOp::SetAttr {
            ino: f,
            set: truncate
        }),
        Err(Errno::EACCES),
        "truncate(2) by path is checked"
    );
    assert_eq!(
        attr(m.apply_reply(WriteOp::Truncate { ino: f, size: 10 })).size,
        10,
        "ftruncate(2) through a descriptor is not"
    );
    assert_eq!(
        attr(m.apply_reply(WriteOp::CommitSlices {
            ino: f,
            slices: Vec::new(),
            size_at_least: 20,
        }))
        .size,
        20,
        "nor a write through one"
    );
}

/// open(2) is checked as the kernel checks it, and chunk maps (whose
/// capabilities read the bytes) need read permission: `sparefs fs cat` of
/// another user's private file must not work.
#[test]
fn open_and_chunk_maps_need_the_files_permissions() {
    let mut m = Machine::new(Caller::ROOT);
    let private = mknod(&mut m, "private", 0o600, 0);
    let readable = mknod(&mut m, "readable", 0o644, 0);
    let program = mknod(&mut m, "program", 0o711, 0);
    let open = |ino, access| ReadOp::Open { ino, access };
    let chunk = |ino| ReadOp::ReadChunk { ino, index: 0 };
    m.caller = user(1000, 1000);
    assert_eq!(m.read(open(private, OPEN_READ)), Err(Errno::EACCES));
    assert_eq!(m.read(chunk(private)), Err(Errno::EACCES));
    assert!(m.read(open(readable, OPEN_READ)).is_ok());
    assert_eq!(
        m.read(open(readable, OPEN_READ | OPEN_WRITE)),
        Err(Errno::EACCES)
    );
    assert!(m.read(chunk(readable)).is_ok());
    // Executable, not readable: exec opens it (and its mount reads the
    // pages for the kernel), but no caller reads its bytes.
    assert!(m.read(open(program, OPEN_EXEC)).is_ok());
    assert_eq!(m.read(open(program, OPEN_READ)), Err(Errno::EACCES));
    assert_eq!(m.read(chunk(program)), Err(Errno::EACCES));
    assert_eq!(m.read(open(readable, 0o10)), Err(Errno::EINVAL));
    m.caller = Caller::ROOT;
    assert!(m.read(open(private, OPEN_READ | OPEN_WRITE)).is_ok());
    assert!(m.read(chunk(private)).is_ok());
}
