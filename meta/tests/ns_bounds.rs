//! Commands whose failure depends only on the state they meet must fail
//! with an errno for their caller, never with a storage error: the driver
//! stops a replica on a storage error, and every replica applying the same
//! committed entry would stop on it again after each restart.

mod common;
use common::Machine;
use sparefs_meta::ns::PARENT_WALK_MAX;
use sparefs_proto::namespace::*;
use sparefs_proto::{Errno, InodeId};

fn mkdir(m: &mut Machine, parent: InodeId, name: &str) -> InodeId {
    let r = m
        .apply_command(
            WriteOp::Mkdir {
                parent,
                name: name.into(),
                perm: 0o755,
                umask: 0,
            },
            false,
        )
        .expect("no storage error");
    match r {
        Ok(NsReply::Made { attr, .. }) => attr.ino,
        other => panic!("mkdir {name}: {other:?}"),
    }
}

#[test]
fn a_rename_into_a_chain_deeper_than_the_walk_answers_eloop() {
    let mut m = Machine::new(Caller::ROOT);
    let moved = mkdir(&mut m, InodeId::ROOT, "moved");
    let mut deepest = mkdir(&mut m, InodeId::ROOT, "chain");
    for _ in 0..PARENT_WALK_MAX + 2 {
        deepest = mkdir(&mut m, deepest, "d");
    }
    let rename = WriteOp::Rename {
        parent: InodeId::ROOT,
        name: b"moved".to_vec(),
        new_parent: deepest,
        new_name: b"here".to_vec(),
        mode: RenameMode::Replace,
    };
    let r = m.apply_command(rename.clone(), true);
    assert!(
        matches!(r, Ok(Err(Errno::ELOOP))),
        "a rename the walk cannot judge must be refused with ELOOP, got {r:?}"
    );
    // The state is unchanged and the next command applies.
    assert!(m
        .read(ReadOp::Lookup {
            parent: InodeId::ROOT,
            name: b"moved".to_vec()
        })
        .is_ok());
    let r = m.apply_command(
        WriteOp::Rename {
            parent: InodeId::ROOT,
            name: b"moved".to_vec(),
            new_parent: InodeId::ROOT,
            new_name: b"kept".to_vec(),
            mode: RenameMode::Replace,
        },
        true,
    );
    assert!(matches!(r, Ok(Ok(_))), "{r:?}");
    let _ = moved;
}

/// An answer recorded in a format this release cannot read (written by an
/// earlier one) answers the retry EIO: not a storage error that would stop
/// every replica, and not the change applied a second time.
#[test]
fn a_retry_whose_recorded_answer_cannot_be_read_is_eio_and_not_applied_again() {
    let mut m = Machine::new(Caller::ROOT);
    let op = || WriteOp::Mkdir {
        parent: InodeId::ROOT,
        name: "once".into(),
        perm: 0o755,
        umask: 0,
    };
    m.apply_reply(op()).expect("mkdir");
    let seq = m.seq();
    let mut batch = rocksdb::WriteBatch::default();
    let mut tx = sparefs_meta::kv::Tx::new(m.store());
    tx.put(
        sparefs_meta::kv::Cf::Sessions,
        sparefs_meta::ns::session_key(m.client.0, seq),
        vec![sparefs_meta::kv::RECORD_VERSION, 0, 0xff, 0xff, 0xff],
    );
    m.store().put_writes(&mut batch, tx.into_writes());
    m.store().write_synced(batch).expect("write");
    assert_eq!(m.apply_same_seq(op()), Err(Errno::EIO));
    let names: Vec<_> = m
        .tree()
        .into_iter()
        .filter(|(n, _, _)| n.contains("once"))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}
