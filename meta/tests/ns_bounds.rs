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
