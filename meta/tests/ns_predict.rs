//! The mount answers some attribute changes itself (`predict_setattr`) and
//! sends them later with the file's data (`CommitSlicesThenSetAttrs`): its
//! prediction must be what the state machine then does, and the combined
//! operation must apply all of itself or nothing.

mod common;

use common::{new_file, Machine};
use proptest::prelude::*;
use sparefs_proto::layout::Slice;
use sparefs_proto::namespace::*;
use sparefs_proto::{Errno, InodeId};

fn attr(r: Result<NsReply, Errno>) -> Attr {
    match r {
        Ok(NsReply::Attr(a) | NsReply::Made { attr: a, .. }) => a,
        other => panic!("expected attributes, got {other:?}"),
    }
}

fn file(m: &mut Machine, name: &str, perm: u32, uid: u32, gid: u32) -> Attr {
    m.caller = Caller::ROOT;
    let a = attr(m.apply_reply(new_file(InodeId::ROOT, name)));
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
