//! Directory delegations in the state machine: who may hold what, which of
//! another client's requests must wait, and the delegated changes a mount
//! sends later (made exactly as it predicted them, or not at all).

mod common;

use common::{new_file, Machine};
use sparefs_meta::ns::deleg;
use sparefs_proto::namespace::*;
use sparefs_proto::posix_rules::*;
use sparefs_proto::{ClientId, Errno, InodeId};

const A: ClientId = ClientId(7);
const B: ClientId = ClientId(8);

fn mkdir(m: &mut Machine, parent: InodeId, name: &str) -> Attr {
    match m.apply_reply(WriteOp::Mkdir {
        parent,
        name: name.into(),
        perm: 0o755,
        umask: 0o022,
    }) {
        Ok(NsReply::Made { attr, .. }) => attr,
        other => panic!("mkdir {name}: {other:?}"),
    }
}

fn lookup(m: &Machine, parent: InodeId, name: &str) -> Result<Attr, Errno> {
    match m.read(ReadOp::Lookup {
        parent,
        name: name.into(),
    })? {
        NsReply::Attr(a) => Ok(a),
        other => panic!("lookup: {other:?}"),
    }
}

fn reserve(m: &mut Machine, count: u32) -> u64 {
    match m.apply_reply(WriteOp::ReserveInodes { count }) {
        Ok(NsReply::Inodes { first, .. }) => first,
        other => panic!("reserve: {other:?}"),
    }
}

fn delegated(caller: &Caller, now: i64, ino: Option<u64>, op: WriteOp) -> DelegatedOp {
    DelegatedOp {
        caller: caller.clone(),
        now: Time {
            secs: now,
            nanos: 0,
        },
        ino: ino.map(InodeId),
        op,
    }
}

fn create_op(parent: InodeId, name: &str) -> WriteOp {
    WriteOp::MkNod {
        parent,
        name: name.into(),
        kind: FileKind::File,
        perm: 0o666,
        umask: 0o022,
        rdev: 0,
        exclusive: true,
    }
}

#[test]
fn only_an_empty_directory_goes_to_one_client_at_a_time() {
    let mut m = Machine::new(Caller::ROOT);
    let d = mkdir(&mut m, InodeId::ROOT, "d");
    let full = mkdir(&mut m, InodeId::ROOT, "full");
    m.apply(new_file(full.ino, "x")).expect("create");

    assert!(matches!(
        m.apply_reply(WriteOp::Delegate { dir: d.ino }),
        Ok(NsReply::Granted { attr, next_cookie: FIRST_COOKIE }) if attr.ino == d.ino
    ));
    // Asking again is harmless; another client is refused.
    m.apply(WriteOp::Delegate { dir: d.ino }).expect("again");
    m.client = B;
    assert_eq!(m.apply(WriteOp::Delegate { dir: d.ino }), Err(Errno::EBUSY));
    assert_eq!(
        m.apply(WriteOp::Delegate { dir: full.ino }),
        Err(Errno::ENOTEMPTY)
    );
    assert_eq!(deleg::holder(m.store(), d.ino).expect("read"), Some(A));

    // Given back, it is free for the other client.
    m.client = A;
    m.apply(WriteOp::ReturnDelegations { dirs: vec![d.ino] })
        .expect("return");
    m.client = B;
    m.apply(WriteOp::Delegate { dir: d.ino }).expect("now B's");
}

#[test]
fn another_clients_requests_in_a_delegated_directory_wait() {
    let mut m = Machine::new(Caller::ROOT);
    let d = mkdir(&mut m, InodeId::ROOT, "d");
    let other = mkdir(&mut m, InodeId::ROOT, "other");
    m.apply(new_file(other.ino, "f")).expect("create");
    m.apply(WriteOp::Delegate { dir: d.ino }).expect("delegate");
    let store = m.store();

    let waits = |client: ClientId, op: &WriteOp| -> bool {
        deleg::write_conflict(store, client, op)
            .expect("read")
            .is_some()
    };
    let reads_wait = |client: ClientId, op: &ReadOp| -> bool {
        deleg::read_conflict(store, client, op)
            .expect("read")
            .is_some()
    };
    let in_d = [
        create_op(d.ino, "f"),
        WriteOp::Unlink {
            parent: d.ino,
            name: "f".into(),
        },
        WriteOp::SetAttr {
            ino: d.ino,
            set: SetAttr {
                perm: Some(0o700),
                ..Default::default()
            },
        },
        // Removing or moving the directory itself: its emptiness is A's.
        WriteOp::Rmdir {
            parent: InodeId::ROOT,
            name: "d".into(),
        },
        WriteOp::Rename {
            parent: InodeId::ROOT,
            name: "d".into(),
            new_parent: other.ino,
            new_name: "d2".into(),
            mode: RenameMode::Replace,
        },
        WriteOp::Rename {
            parent: other.ino,
            name: "f".into(),
            new_parent: d.ino,
            new_name: "f".into(),
            mode: RenameMode::Replace,
        },
    ];
    for op in &in_d {
        assert!(waits(B, op), "B must wait: {op:?}");
        assert!(!waits(A, op), "A holds it: {op:?}");
    }
    assert!(!waits(B, &create_op(other.ino, "g")));
    for op in [
        ReadOp::Lookup {
            parent: d.ino,
            name: "f".into(),
        },
        ReadOp::GetAttr { ino: d.ino },
        ReadOp::ReadDir {
            ino: d.ino,
            after_cookie: 0,
            limit: 10,
        },
    ] {
        assert!(reads_wait(B, &op), "B must wait: {op:?}");
        assert!(!reads_wait(A, &op));
    }
    assert!(!reads_wait(
        B,
        &ReadOp::Lookup {
            parent: InodeId::ROOT,
            name: "d".into(),
        }
    ));
}

#[test]
fn delegated_changes_land_as_the_mount_predicted_them() {
    let mut m = Machine::new(Caller::ROOT);
    let d = mkdir(&mut m, InodeId::ROOT, "d");
    // A name that came and went: the grant says which cookie comes next.
    m.apply(new_file(d.ino, "gone")).expect("create");
    m.apply(WriteOp::Unlink {
        parent: d.ino,
        name: "gone".into(),
    })
    .expect("unlink");
    let (granted, next_cookie) = match m.apply_reply(WriteOp::Delegate { dir: d.ino }) {
        Ok(NsReply::Granted { attr, next_cookie }) => (attr, next_cookie),
        other => panic!("delegate: {other:?}"),
    };
    assert_eq!(next_cookie, FIRST_COOKIE + 1);
    let first = reserve(&mut m, 16);
    let user = Caller {
        uid: 0,
        gid: 0,
        groups: vec![],
    };
    // What the mount answered: create f, mkdir s, create s/g, unlink f.
    let (f, d1) = predict_make(
        &granted,
        &user,
        FileKind::File,
        (0o666, 0o022),
        InodeId(first),
        Time {
            secs: 100,
            nanos: 0,
        },
    );
    let (s, d2) = predict_make(
        &d1,
        &user,
        FileKind::Dir,
        (0o777, 0o022),
        InodeId(first + 1),
        Time {
            secs: 101,
            nanos: 0,
        },
    );
    let (g, _) = predict_make(
        &s,
        &user,
        FileKind::File,
        (0o640, 0),
        InodeId(first + 2),
        Time {
            secs: 102,
            nanos: 0,
        },
    );
    let d3 = predict_remove(
        &d2,
        false,
        Time {
            secs: 103,
            nanos: 0,
        },
    );
    let ops = vec![
        delegated(&user, 100, Some(first), create_op(d.ino, "f")),
        delegated(
            &user,
            101,
            Some(first + 1),
            WriteOp::Mkdir {
                parent: d.ino,
                name: "s".into(),
                perm: 0o777,
                umask: 0o022,
            },
        ),
        delegated(
            &user,
            102,
            Some(first + 2),
            WriteOp::MkNod {
                parent: s.ino,
                name: "g".into(),
                kind: FileKind::File,
                perm: 0o640,
                umask: 0,
                rdev: 0,
                exclusive: true,
            },
        ),
        delegated(
            &user,
            103,
            None,
            WriteOp::Unlink {
                parent: d.ino,
                name: "f".into(),
            },
        ),
    ];
    assert_eq!(
        m.apply_reply(WriteOp::Delegated { ops, then: None }),
        Ok(NsReply::Done)
    );
    assert_eq!(lookup(&m, d.ino, "f"), Err(Errno::ENOENT));
    let mut got_s = lookup(&m, d.ino, "s").expect("s");
    let got_g = lookup(&m, s.ino, "g").expect("g");
    assert_eq!(got_g, g);
    // s gained g: only its times changed since the prediction of s alone.
    got_s.mtime = s.mtime;
    got_s.ctime = s.ctime;
    assert_eq!(got_s, s);
    let got_d = match m.read(ReadOp::GetAttr { ino: d.ino }) {
        Ok(NsReply::Attr(a)) => a,
        other => panic!("getattr: {other:?}"),
    };
    assert_eq!(got_d, d3);
    assert!(f.ino.0 == first);
    // Each name took the next cookie, as the mount counts them to list
    // the directory itself: f the granted one, s the one after; g the
    // first of the new directory.
    let cookies = |m: &Machine, dir: InodeId| match m.read(ReadOp::ReadDir {
        ino: dir,
        after_cookie: 0,
        limit: 100,
    }) {
        Ok(NsReply::Dir(entries)) => entries
            .into_iter()
            .map(|e| (String::from_utf8_lossy(&e.name).into_owned(), e.cookie))
            .collect::<Vec<_>>(),
        other => panic!("readdir: {other:?}"),
    };
    assert_eq!(cookies(&m, d.ino), vec![("s".to_string(), next_cookie + 1)]);
    assert_eq!(cookies(&m, s.ino), vec![("g".to_string(), FIRST_COOKIE)]);
    // A directory made in a delegated one is delegated too.
    assert_eq!(deleg::holder(m.store(), s.ino).expect("read"), Some(A));
}

#[test]
fn delegated_changes_are_refused_whole_once_the_client_no_longer_holds_the_directory() {
    let mut m = Machine::new(Caller::ROOT);
    let d = mkdir(&mut m, InodeId::ROOT, "d");
    m.apply(WriteOp::Delegate { dir: d.ino }).expect("delegate");
    let first = reserve(&mut m, 4);
    let user = Caller::ROOT;
    let batch = |names: &[&str], from: u64| WriteOp::Delegated {
        ops: names
            .iter()
            .enumerate()
            .map(|(i, n)| delegated(&user, 5, Some(from + i as u64), create_op(d.ino, n)))
            .collect(),
        then: None,
    };
    // An inode number outside the reservation: nothing lands.
    assert_eq!(m.apply(batch(&["a", "b"], first + 10)), Err(Errno::ESTALE));
    assert_eq!(lookup(&m, d.ino, "a"), Err(Errno::ENOENT));
    // Each number once.
    m.apply(batch(&["a"], first)).expect("a");
    assert_eq!(m.apply(batch(&["b"], first)), Err(Errno::ESTALE));
    // The lease ran out: the leader expires the client.
    m.apply(WriteOp::ExpireClient { client: A })
        .expect("expire");
    assert_eq!(deleg::holder(m.store(), d.ino).expect("read"), None);
    assert_eq!(m.apply(batch(&["b"], first + 1)), Err(Errno::ESTALE));
    assert_eq!(lookup(&m, d.ino, "b"), Err(Errno::ENOENT));
    assert!(lookup(&m, d.ino, "a").is_ok());
}

#[test]
fn a_delegated_rename_moves_files_between_held_directories_only() {
    let mut m = Machine::new(Caller::ROOT);
    let d = mkdir(&mut m, InodeId::ROOT, "d");
    let e = mkdir(&mut m, InodeId::ROOT, "e");
    let open = mkdir(&mut m, InodeId::ROOT, "open");
    for dir in [d.ino, e.ino] {
        m.apply(WriteOp::Delegate { dir }).expect("delegate");
    }
    let first = reserve(&mut m, 4);
    let user = Caller::ROOT;
    let mkdir_op = WriteOp::Mkdir {
        parent: d.ino,
        name: "sub".into(),
        perm: 0o755,
        umask: 0,
    };
    m.apply(WriteOp::Delegated {
        ops: vec![
            delegated(&user, 5, Some(first), create_op(d.ino, "f")),
            delegated(&user, 5, Some(first + 1), create_op(e.ino, "old")),
            delegated(&user, 5, Some(first + 2), mkdir_op),
        ],
        then: None,
    })
    .expect("made");
    let rename =
        |parent: InodeId, name: &str, new_parent: InodeId, new_name: &str| WriteOp::Delegated {
            ops: vec![delegated(
                &user,
                6,
                None,
                WriteOp::Rename {
                    parent,
                    name: name.into(),
                    new_parent,
                    new_name: new_name.into(),
                    mode: RenameMode::Replace,
                },
            )],
            then: None,
        };
    // Out of the held directories, or a directory moved: the meta's to do.
    let refused = [
        ((d.ino, "f"), (open.ino, "f"), Errno::ESTALE),
        ((d.ino, "sub"), (e.ino, "sub"), Errno::EINVAL),
        ((e.ino, "old"), (d.ino, "sub"), Errno::EINVAL),
        ((d.ino, "nothing"), (e.ino, "x"), Errno::ESTALE),
    ];
    for ((from, name), (to, new_name), why) in refused {
        assert_eq!(
            m.apply(rename(from, name, to, new_name)),
            Err(why),
            "{name}"
        );
    }
    // A file over a file, between held directories.
    m.apply(rename(d.ino, "f", e.ino, "old")).expect("rename");
    assert_eq!(lookup(&m, d.ino, "f"), Err(Errno::ENOENT));
    assert_eq!(lookup(&m, e.ino, "old").expect("moved").ino, InodeId(first));
    assert!(
        matches!(
            m.read(ReadOp::GetAttr {
                ino: InodeId(first + 1)
            }),
            Ok(NsReply::Attr(Attr { nlink: 0, .. }))
        ),
        "the replaced file has no name (kept, as an orphan, for its descriptors)"
    );
}

#[test]
fn the_change_sent_behind_delegated_ones_fails_or_waits_alone() {
    let mut m = Machine::new(Caller::ROOT);
    let d = mkdir(&mut m, InodeId::ROOT, "d");
    let theirs = mkdir(&mut m, InodeId::ROOT, "theirs");
    m.client = B;
    m.apply(WriteOp::Delegate { dir: theirs.ino }).expect("B's");
    m.client = A;
    m.apply(WriteOp::Delegate { dir: d.ino }).expect("A's");
    let first = reserve(&mut m, 4);
    let op = |name: &str, ino: u64| delegated(&Caller::ROOT, 9, Some(ino), create_op(d.ino, name));

    // `then` in B's directory: A's changes land, `then` must come again.
    let r = m.apply_reply(WriteOp::Delegated {
        ops: vec![op("a", first)],
        then: Some(Box::new(create_op(theirs.ino, "x"))),
    });
    assert_eq!(r, Ok(NsReply::DelegatedThen(None)));
    assert!(lookup(&m, d.ino, "a").is_ok());

    // `then` fails: A's changes land all the same.
    let r = m.apply_reply(WriteOp::Delegated {
        ops: vec![op("b", first + 1)],
        then: Some(Box::new(WriteOp::Unlink {
            parent: InodeId::ROOT,
            name: "nothing".into(),
        })),
    });
    assert_eq!(r, Ok(NsReply::DelegatedThen(Some(Err(Errno::ENOENT)))));
    assert!(lookup(&m, d.ino, "b").is_ok());

    // `then` succeeds: its answer comes back.
    let r = m.apply_reply(WriteOp::Delegated {
        ops: vec![op("c", first + 2)],
        then: Some(Box::new(create_op(InodeId::ROOT, "top"))),
    });
    assert!(
        matches!(&r, Ok(NsReply::DelegatedThen(Some(Ok(reply)))) if matches!(**reply, NsReply::Made { .. })),
        "{r:?}"
    );
    assert!(lookup(&m, InodeId::ROOT, "top").is_ok());
}
