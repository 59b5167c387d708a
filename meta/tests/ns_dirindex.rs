//! Directory listings come from the directory index alone, which keeps a
//! copy of each dentry; it must follow renames and exchanges, and records
//! written before the copy existed (name only) must still list.

mod common;

use common::{new_file, Machine};
use sparefs_meta::kv::{be, encode, Cf};
use sparefs_proto::namespace::*;
use sparefs_proto::{Errno, InodeId};

fn list(m: &Machine, dir: InodeId) -> Vec<(Vec<u8>, InodeId, FileKind, u64)> {
    match m.read(ReadOp::ReadDir {
        ino: dir,
        after_cookie: 2,
        limit: 1024,
    }) {
        Ok(NsReply::Dir(d)) => d
            .into_iter()
            .map(|e| (e.name, e.ino, e.kind, e.cookie))
            .collect(),
        other => panic!("readdir: {other:?}"),
    }
}

fn lookup(m: &Machine, dir: InodeId, name: &str) -> (InodeId, FileKind) {
    match m.read(ReadOp::Lookup {
        parent: dir,
        name: name.into(),
    }) {
        Ok(NsReply::Attr(a)) => (a.ino, a.kind),
        other => panic!("lookup {name}: {other:?}"),
    }
}

#[test]
fn listing_follows_renames_exchanges_and_reads_old_records() {
    let mut m = Machine::new(Caller::ROOT);
    let root = InodeId::ROOT;
    for name in ["a", "b"] {
        m.apply(new_file(root, name)).expect("create");
    }
    m.apply(WriteOp::Mkdir {
        parent: root,
        name: "d".into(),
        perm: 0o755,
        umask: 0,
    })
    .expect("mkdir");
    m.apply(WriteOp::Rename {
        parent: root,
        name: "a".into(),
        new_parent: root,
        new_name: "c".into(),
        mode: RenameMode::Replace,
    })
    .expect("rename");
    m.apply(WriteOp::Rename {
        parent: root,
        name: "b".into(),
        new_parent: root,
        new_name: "d".into(),
        mode: RenameMode::Exchange,
    })
    .expect("exchange");
    let listed = list(&m, root);
    assert_eq!(listed.len(), 3);
    for (name, ino, kind, _) in &listed {
        let name = String::from_utf8(name.clone()).expect("utf-8");
        assert_eq!(lookup(&m, root, &name), (*ino, *kind), "{name}");
    }
    // Rewrite every index record as an old one (the name alone).
    let cf = m.store().state_cf(Cf::DirIndex);
    for (name, _, _, cookie) in &listed {
        let mut key = be(root.0).to_vec();
        key.extend_from_slice(&be(*cookie));
        m.store()
            .db()
            .put_cf(cf, key, encode(name))
            .expect("write old record");
    }
    assert_eq!(list(&m, root), listed, "old records list the same");
}

fn list_plus(m: &Machine, dir: InodeId, after: u64) -> Result<Vec<(Vec<u8>, InodeId, u64)>, Errno> {
    match m.read(ReadOp::ReadDirPlus {
        ino: dir,
        after_cookie: after,
        limit: 128,
    })? {
        NsReply::DirPlus(d) => Ok(d
            .into_iter()
            .map(|(e, a)| {
                assert_eq!(e.ino, a.ino, "attributes of {:?} are its own", e.name);
                (e.name, e.ino, e.cookie)
            })
            .collect()),
        other => panic!("readdirplus: {other:?}"),
    }
}

#[test]
fn a_listing_with_attributes_starts_with_dot_and_dotdot_and_needs_read_permission() {
    let mut m = Machine::new(Caller::ROOT);
    let root = InodeId::ROOT;
    m.apply(WriteOp::Mkdir {
        parent: root,
        name: "d".into(),
        perm: 0o744,
        umask: 0,
    })
    .expect("mkdir");
    let (d, _) = lookup(&m, root, "d");
    m.apply(new_file(d, "f")).expect("create");
    let (f, _) = lookup(&m, d, "f");

    let names = |v: Vec<(Vec<u8>, InodeId, u64)>| -> Vec<(String, InodeId, u64)> {
        v.into_iter()
            .map(|(n, i, c)| (String::from_utf8_lossy(&n).into_owned(), i, c))
            .collect()
    };
    let from_start = names(list_plus(&m, d, 0).expect("list"));
    assert_eq!(from_start.len(), 3, "{from_start:?}");
    assert_eq!(from_start[0], (".".into(), d, 1));
    assert_eq!(from_start[1], ("..".into(), root, 2));
    assert_eq!((from_start[2].0.as_str(), from_start[2].1), ("f", f));
    let after_dot = names(list_plus(&m, d, 1).expect("list"));
    assert_eq!(after_dot[0], ("..".into(), root, 2));
    assert_eq!(after_dot.len(), 2);
    let after_dots = names(list_plus(&m, d, 2).expect("list"));
    assert_eq!(after_dots.len(), 1);
    assert_eq!(after_dots[0].1, f);

    // Read permission is what a listing takes, with attributes or without
    // (the kernel asks for the first page with them, and a directory one may
    // read but not search must still list); no read permission, neither.
    m.caller = Caller {
        uid: 1000,
        gid: 1000,
        groups: vec![1000],
    };
    assert_eq!(list_plus(&m, d, 0).expect("r--: listed").len(), 3);
    assert_eq!(list(&m, d).len(), 1);
    m.caller = Caller::ROOT;
    m.apply(WriteOp::SetAttr {
        ino: d,
        set: SetAttr {
            perm: Some(0o711),
            ..Default::default()
        },
    })
    .expect("chmod");
    m.caller = Caller {
        uid: 1000,
        gid: 1000,
        groups: vec![1000],
    };
    assert_eq!(list_plus(&m, d, 0), Err(Errno::EACCES));
}
