//! The mount answers some attribute changes itself (`predict_setattr`) and
//! sends them later with the file's data (`CommitSlicesThenSetAttrs`), and
//! creates, removals and renames of files in directories delegated to it
//! (`predict_make`, `predict_remove`): its prediction must be what the state machine then
//! does, and the combined operation must apply all of itself or nothing.

mod common;

use common::{new_file, Machine};
use proptest::prelude::*;
use sparefs_proto::layout::Slice;
use sparefs_proto::namespace::*;
use sparefs_proto::posix_rules::*;
use sparefs_proto::{Errno, InodeId};

fn attr(r: Result<NsReply, Errno>) -> Attr {
    match r {
        Ok(NsReply::Attr(a) | NsReply::Made { attr: a, .. }) => a,
        other => panic!("expected attributes, got {other:?}"),
    }
}

/// `make` (as root) in the root, then given the mode and owners.
fn owned(m: &mut Machine, make: WriteOp, perm: u32, uid: u32, gid: u32) -> Attr {
    m.caller = Caller::ROOT;
    let a = attr(m.apply_reply(make));
    let set = |set| WriteOp::SetAttr { ino: a.ino, set };
    m.apply(set(SetAttr {
        uid: Some(uid),
        gid: Some(gid),
        ..SetAttr::default()
    }))
    .expect("chown");
    attr(m.apply_reply(set(SetAttr {
        perm: Some(perm),
        ..SetAttr::default()
    })))
}

fn file(m: &mut Machine, name: &str, perm: u32, uid: u32, gid: u32) -> Attr {
    owned(m, new_file(InodeId::ROOT, name), perm, uid, gid)
}

/// Directory "d" in the root, with the given mode and owners.
fn dir(m: &mut Machine, perm: u32, uid: u32, gid: u32) -> Attr {
    let mkdir = WriteOp::Mkdir {
        parent: InodeId::ROOT,
        name: "d".into(),
        perm: 0o755,
        umask: 0,
    };
    owned(m, mkdir, perm, uid, gid)
}

fn time_set() -> impl Strategy<Value = Option<TimeSet>> {
    prop_oneof![
        Just(None),
        Just(Some(TimeSet::Now)),
        (0i64..1 << 40, 0u32..1_000_000_000)
            .prop_map(|(secs, nanos)| Some(TimeSet::At(Time { secs, nanos }))),
    ]
}

fn set_attr() -> impl Strategy<Value = SetAttr> {
    (
        proptest::option::of(0u32..0o10000),
        proptest::option::of(prop_oneof![Just(0u32), Just(1000), Just(1001)]),
        proptest::option::of(prop_oneof![Just(0u32), Just(100), Just(200)]),
        time_set(),
        time_set(),
    )
        .prop_map(|(perm, uid, gid, atime, mtime)| SetAttr {
            perm,
            uid,
            gid,
            size: None,
            atime,
            mtime,
        })
}

fn caller() -> impl Strategy<Value = Caller> {
    (
        prop_oneof![Just(0u32), Just(1000), Just(1001)],
        prop_oneof![Just(0u32), Just(100), Just(200)],
        proptest::collection::vec(prop_oneof![Just(100u32), Just(200)], 0..2),
    )
        .prop_map(|(uid, gid, groups)| Caller { uid, gid, groups })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn a_prediction_is_what_the_meta_does(
        perm in 0u32..0o10000,
        owner in prop_oneof![Just(0u32), Just(1000), Just(1001)],
        group in prop_oneof![Just(0u32), Just(100), Just(200)],
        who in caller(),
        set in set_attr(),
    ) {
        let mut m = Machine::new(Caller::ROOT);
        let before = file(&mut m, "f", perm, owner, group);
        let predicted = predict_setattr(&before, &who, &set, Time { secs: 0, nanos: 0 });
        m.caller = who.clone();
        let r = m.apply_reply(WriteOp::SetAttr { ino: before.ino, set: set.clone() });
        if let Some(mut p) = predicted {
            let after = attr(r);
            // ctime is the meta's clock; the rest must match exactly.
            prop_assert_eq!(after.ctime != before.ctime, set != SetAttr::default());
            p.ctime = after.ctime;
            prop_assert_eq!(p, after);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn a_predicted_create_or_mkdir_is_what_the_meta_makes(
        dir_perm in 0u32..0o10000,
        owner in prop_oneof![Just(0u32), Just(1000), Just(1001)],
        group in prop_oneof![Just(0u32), Just(100), Just(200)],
        who in caller(),
        is_dir in any::<bool>(),
        perm in 0u32..0o10000,
        umask in prop_oneof![Just(0u32), Just(0o022), Just(0o077), 0u32..0o1000],
        secs in 1i64..1 << 40,
    ) {
        let mut m = Machine::new(Caller::ROOT);
        let dir = dir(&mut m, dir_perm, owner, group);
        let first = match m.apply_reply(WriteOp::ReserveInodes { count: 2 }) {
            Ok(NsReply::Inodes { first, .. }) => first,
            other => panic!("reserve: {other:?}"),
        };
        m.apply(WriteOp::Delegate { dir: dir.ino }).expect("delegate");
        let now = Time { secs, nanos: 7 };
        let (kind, op) = if is_dir {
            (FileKind::Dir, WriteOp::Mkdir { parent: dir.ino, name: "x".into(), perm, umask })
        } else {
            (FileKind::File, WriteOp::MkNod {
                parent: dir.ino, name: "x".into(), kind: FileKind::File, perm, umask, rdev: 0,
                exclusive: true,
            })
        };
        let (p_made, p_dir) = predict_make(&dir, &who, kind, (perm, umask), InodeId(first), now);
        let batch = |op| WriteOp::Delegated {
            ops: vec![DelegatedOp { caller: who.clone(), now, ino: op_ino(&op, first), op }],
            then: None,
        };
        let r = m.apply_reply(batch(op));
        // The mount answers only what the mode bits allow (else it asks).
        if mode_allows(&dir, &who, 2 | 1) {
            prop_assert_eq!(r, Ok(NsReply::Done));
            let got = attr(m.read(ReadOp::Lookup { parent: dir.ino, name: "x".into() }));
            prop_assert_eq!(got, p_made);
            let got_dir = attr(m.read(ReadOp::GetAttr { ino: dir.ino }));
            prop_assert_eq!(&got_dir, &p_dir);
            // And the removal.
            let later = Time { secs: secs + 1, nanos: 0 };
            let rm = if is_dir {
                WriteOp::Rmdir { parent: dir.ino, name: "x".into() }
            } else {
                WriteOp::Unlink { parent: dir.ino, name: "x".into() }
            };
            let r = m.apply_reply(WriteOp::Delegated {
                ops: vec![DelegatedOp { caller: who.clone(), now: later, ino: None, op: rm }],
                then: None,
            });
            let sticky = got_dir.perm & 0o1000 != 0 && who.uid != 0 && who.uid != got_dir.uid;
            if !sticky {
                prop_assert_eq!(r, Ok(NsReply::Done));
                let after = attr(m.read(ReadOp::GetAttr { ino: dir.ino }));
                prop_assert_eq!(after, predict_remove(&got_dir, is_dir, later));
            }
        } else {
            prop_assert_eq!(r, Err(Errno::EACCES));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn a_predicted_change_of_a_delegated_directory_is_what_the_meta_does(
        perm in 0u32..0o10000,
        owner in prop_oneof![Just(0u32), Just(1000), Just(1001)],
        group in prop_oneof![Just(0u32), Just(100), Just(200)],
        who in caller(),
        set in set_attr(),
        secs in 1i64..1 << 40,
    ) {
        let mut m = Machine::new(Caller::ROOT);
        let dir = dir(&mut m, perm, owner, group);
        let change = |set| WriteOp::SetAttr { ino: dir.ino, set };
        m.apply(WriteOp::Delegate { dir: dir.ino }).expect("delegate");
        let now = Time { secs, nanos: 3 };
        if let Some(p) = predict_dir_setattr(&dir, &who, &set, now) {
            let r = m.apply_reply(WriteOp::Delegated {
                ops: vec![DelegatedOp { caller: who.clone(), now, ino: None, op: change(set) }],
                then: None,
            });
            prop_assert_eq!(r, Ok(NsReply::Done));
            prop_assert_eq!(attr(m.read(ReadOp::GetAttr { ino: dir.ino })), p);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    /// A rename of a file between directories a mount holds, answered by
    /// the mount when the mode bits allow it and neither directory is
    /// sticky (client/src/deleg.rs): the meta does it, and the directories'
    /// attributes are what the mount predicts.
    #[test]
    fn a_rename_answered_by_the_mount_is_what_the_meta_does(
        perms in (0u32..0o10000, 0u32..0o10000),
        owner in prop_oneof![Just(0u32), Just(1000), Just(1001)],
        group in prop_oneof![Just(0u32), Just(100), Just(200)],
        who in caller(),
        two_dirs in any::<bool>(),
        victim in any::<bool>(),
        no_replace in any::<bool>(),
        secs in 1i64..1 << 40,
    ) {
        let mut m = Machine::new(Caller::ROOT);
        let from = dir(&mut m, perms.0, owner, group);
        let to = if two_dirs {
            let mkdir = WriteOp::Mkdir { parent: InodeId::ROOT, name: "e".into(), perm: 0o755, umask: 0 };
            owned(&mut m, mkdir, perms.1, owner, group)
        } else {
            from.clone()
        };
        let first = match m.apply_reply(WriteOp::ReserveInodes { count: 2 }) {
            Ok(NsReply::Inodes { first, .. }) => first,
            other => panic!("reserve: {other:?}"),
        };
        for d in [from.ino, to.ino] {
            m.apply(WriteOp::Delegate { dir: d }).expect("delegate");
        }
        let create = |parent, name: &str, ino| DelegatedOp {
            caller: Caller::ROOT,
            now: Time { secs: 1, nanos: 0 },
            ino: Some(InodeId(ino)),
            op: new_file(parent, name),
        };
        let mut ops = vec![create(from.ino, "src", first)];
        if victim {
            ops.push(create(to.ino, "dst", first + 1));
        }
        m.apply(WriteOp::Delegated { ops, then: None }).expect("files");
        let (from, to) = (
            attr(m.read(ReadOp::GetAttr { ino: from.ino })),
            attr(m.read(ReadOp::GetAttr { ino: to.ino })),
        );
        let answered = |d: &Attr| mode_allows(d, &who, 2 | 1) && (d.perm & 0o1000 == 0 || who.uid == 0);
        if answered(&from) && answered(&to) && !(victim && no_replace) {
            let now = Time { secs, nanos: 11 };
            let mode = if no_replace { RenameMode::NoReplace } else { RenameMode::Replace };
            let op = WriteOp::Rename {
                parent: from.ino,
                name: "src".into(),
                new_parent: to.ino,
                new_name: "dst".into(),
                mode,
            };
            let r = m.apply_reply(WriteOp::Delegated {
                ops: vec![DelegatedOp { caller: who.clone(), now, ino: None, op }],
                then: None,
            });
            prop_assert_eq!(r, Ok(NsReply::Done));
            let moved = attr(m.read(ReadOp::Lookup { parent: to.ino, name: "dst".into() }));
            prop_assert_eq!((moved.ino, moved.ctime), (InodeId(first), now));
            let from_after = predict_remove(&from, false, now);
            prop_assert_eq!(attr(m.read(ReadOp::GetAttr { ino: from.ino })), from_after);
            if two_dirs {
                prop_assert_eq!(
                    attr(m.read(ReadOp::GetAttr { ino: to.ino })),
                    predict_remove(&to, false, now)
                );
            }
        }
    }
}

fn op_ino(op: &WriteOp, first: u64) -> Option<InodeId> {
    matches!(op, WriteOp::Mkdir { .. } | WriteOp::MkNod { .. }).then_some(InodeId(first))
}

#[test]
fn commit_then_setattrs_is_all_or_nothing() {
    let mut m = Machine::new(Caller::ROOT);
    let f = file(&mut m, "f", 0o644, 1000, 100);
    let data = |n: usize| {
        vec![(
            0u64,
            Slice {
                inline: vec![7; n],
                ..Slice::empty(0, n as u32)
            },
        )]
    };
    let user = Caller {
        uid: 1000,
        gid: 100,
        groups: vec![],
    };
    let times = SetAttr {
        mtime: Some(TimeSet::At(Time { secs: 5, nanos: 6 })),
        ..SetAttr::default()
    };
    let chown = SetAttr {
        uid: Some(0),
        ..SetAttr::default()
    };
    // The owner may set times but not give the file away: nothing lands.
    m.caller = Caller::ROOT;
    let r = m.apply_reply(WriteOp::CommitSlicesThenSetAttrs {
        ino: f.ino,
        slices: data(10),
        size_at_least: 10,
        then: vec![(user.clone(), times.clone()), (user.clone(), chown)],
    });
    assert_eq!(r, Err(Errno::EPERM));
    let now = attr(m.read(ReadOp::GetAttr { ino: f.ino }));
    assert_eq!((now.size, now.mtime), (f.size, f.mtime), "nothing applied");
    // Allowed: the data lands, then the explicit time wins over the commit's.
    let a = attr(m.apply_reply(WriteOp::CommitSlicesThenSetAttrs {
        ino: f.ino,
        slices: data(10),
        size_at_least: 10,
        then: vec![(user, times)],
    }));
    assert_eq!((a.size, a.mtime), (10, Time { secs: 5, nanos: 6 }));
}
