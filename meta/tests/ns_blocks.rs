//! The block table against a real RocksDB store: references follow slices
//! through commits, overwrites, truncates and deletes; uncommitted blocks
//! are abandoned; inventories are judged (garbage, kept, missing).

mod common;

use common::{new_file, Machine};
use sparefs_meta::kv::{Cf, ReadKv};
use sparefs_meta::ns::blocks::{gc_verdicts, load_block};
use sparefs_proto::layout::{BlockRef, Policy, Slice, NO_SERVER};
use sparefs_proto::namespace::*;
use sparefs_proto::{BlockId, ChunkserverId, Errno, InodeId};

const EC21: Policy = Policy::Ec { data: 2, parity: 1 };

fn setup() -> (Machine, InodeId) {
    let mut m = Machine::new(Caller::ROOT);
    m.apply(WriteOp::SetClusterKey { key: [1; 32] })
        .expect("key");
    let reply = m.apply_reply(new_file(InodeId::ROOT, "f")).expect("create");
    let NsReply::Made { attr: a, .. } = reply else {
        panic!("unexpected reply: {reply:?}")
    };
    (m, a.ino)
}

fn allocate(m: &mut Machine, count: u32) -> Vec<BlockId> {
    let reply = m
        .apply_reply(WriteOp::AllocateBlocks {
            count,
            policy: EC21,
            placement: vec![ChunkserverId(1), ChunkserverId(2), ChunkserverId(3)],
            exclude: vec![],
            wanted: None,
        })
        .expect("allocate");
    let NsReply::Allocated { ids, .. } = reply else {
        panic!("unexpected reply: {reply:?}")
    };
    ids
}

fn slice(offset: u32, bytes: u32, block: BlockId) -> Slice {
    Slice {
        seq: 0,
        offset,
        bytes,
        blocks: vec![BlockRef {
            id: block,
            policy: EC21,
            bytes,
            fragments: vec![ChunkserverId(1), ChunkserverId(2), ChunkserverId(3)],
            checksum: [0; 32],
            slot_base: 0,
        }],
        block_offset: 0,
        inline: vec![],
    }
}

fn commit(m: &mut Machine, ino: InodeId, slices: Vec<(u64, Slice)>) -> Result<(), Errno> {
    let size_at_least = slices
        .iter()
        .map(|(i, s)| i * sparefs_proto::limits::CHUNK_BYTES + (s.offset + s.bytes) as u64)
        .max()
        .unwrap_or(0);
    m.apply(WriteOp::CommitSlices {
        ino,
        slices,
        size_at_least,
    })
}

fn refs(m: &Machine, b: BlockId) -> Option<u32> {
    load_block(m.store(), b).expect("load").map(|r| r.refs)
}

#[test]
fn references_follow_slices() {
    let (mut m, ino) = setup();
    let ids = allocate(&mut m, 3);
    assert_eq!(refs(&m, ids[0]), Some(0), "pending");
    commit(
        &mut m,
        ino,
        vec![(0, slice(0, 1000, ids[0])), (1, slice(0, 1000, ids[1]))],
    )
    .expect("commit");
    assert_eq!(refs(&m, ids[0]), Some(1));
    // A partial overwrite keeps the old block; a full one drops it.
    commit(&mut m, ino, vec![(0, slice(0, 500, ids[2]))]).expect("partial");
    assert_eq!(refs(&m, ids[0]), Some(1));
    let more = allocate(&mut m, 1);
    commit(&mut m, ino, vec![(0, slice(0, 1000, more[0]))]).expect("full");
    assert_eq!(refs(&m, ids[0]), None, "hidden block left the table");
    assert_eq!(refs(&m, ids[2]), None);
    // Truncate to zero drops every chunk's blocks.
    m.apply(WriteOp::SetAttr {
        ino,
        set: SetAttr {
            size: Some(0),
            ..Default::default()
        },
    })
    .expect("truncate");
    assert_eq!(refs(&m, more[0]), None);
    assert_eq!(refs(&m, ids[1]), None);
}

#[test]
fn deleted_files_are_purged_and_stale_commits_refused() {
    let (mut m, ino) = setup();
    let ids = allocate(&mut m, 2);
    commit(&mut m, ino, vec![(0, slice(0, 100, ids[0]))]).expect("commit");
    m.apply(WriteOp::Unlink {
        parent: InodeId::ROOT,
        name: b"f".to_vec(),
    })
    .expect("unlink");
    // Nameless but kept while a descriptor may hold it open (an orphan):
    // readable, and purging leaves it alone.
    let orphan = m.read(ReadOp::GetAttr { ino }).expect("orphan getattr");
    assert!(
        matches!(orphan, NsReply::Attr(ref a) if a.nlink == 0),
        "{orphan:?}"
    );
    m.apply(WriteOp::PurgeDeleted).expect("purge");
    assert_eq!(refs(&m, ids[0]), Some(1), "an orphan keeps its blocks");
    // Reaped (no mount has it open), then purged.
    m.apply(WriteOp::ReapOrphans { inos: vec![ino] })
        .expect("reap");
    assert_eq!(m.read(ReadOp::GetAttr { ino }), Err(Errno::ENOENT));
    assert_eq!(refs(&m, ids[0]), Some(1), "kept until purged");
    m.apply(WriteOp::PurgeDeleted).expect("purge");
    assert_eq!(refs(&m, ids[0]), None);
    assert!(m
        .store()
        .scan(Cf::Deleted, &[], &[], 10)
        .expect("scan")
        .is_empty());
    // ids[1] was never committed: abandoned once older than `before`.
    m.apply(WriteOp::AbandonBlocks {
        before: Time {
            secs: 1_000_000,
            nanos: 0,
        },
    })
    .expect("abandon");
    assert_eq!(refs(&m, ids[1]), None);
    let (mut m2, ino2) = setup();
    let late = allocate(&mut m2, 1);
    m2.apply(WriteOp::AbandonBlocks {
        before: Time {
            secs: 1_000_000,
            nanos: 0,
        },
    })
    .expect("abandon");
    assert_eq!(
        commit(&mut m2, ino2, vec![(0, slice(0, 100, late[0]))]),
        Err(Errno::ESTALE),
        "a commit after its blocks were abandoned must be redone"
    );
}

#[test]
fn inventory_verdicts_and_relocation() {
    let (mut m, ino) = setup();
    let ids = allocate(&mut m, 2);
    commit(&mut m, ino, vec![(0, slice(0, 100, ids[0]))]).expect("commit");
    let s2 = ChunkserverId(2);
    let settled = Time {
        secs: i64::MAX,
        nanos: 0,
    };
    // Server 2 holds slot 1 of ids[0] (live), slot 0 of ids[0] (not its
    // fragment), an unknown old block below next_block, and a young orphan.
    let items = vec![
        (BlockId(0), 0, 1000),
        (ids[0], 0, 1000),
        (ids[0], 1, 1000),
        (ids[1], 1, 1000),
    ];
    let v = gc_verdicts(m.store(), s2, None, &items, true, 60, settled).expect("verdicts");
    assert!(v.delete.contains(&(ids[0], 0)), "{:?}", v.delete);
    assert!(!v.delete.contains(&(ids[0], 1)), "live fragment kept");
    assert!(
        !v.delete.contains(&(ids[1], 1)),
        "pending block's fragment kept"
    );
    assert!(v.missing.is_empty(), "{:?}", v.missing);
    let young = vec![(ids[0], 0, 5)];
    let v = gc_verdicts(m.store(), s2, None, &young, true, 60, settled).expect("verdicts");
    assert!(v.delete.is_empty(), "young fragments are never collected");
    assert_eq!(
        v.missing,
        vec![(ids[0], 1)],
        "live fragment absent from the page"
    );
    // A lost fragment, rebuilt on server 4.
    m.apply(WriteOp::LoseFragment {
        block: ids[0],
        slot: 1,
        server: s2,
    })
    .expect("lose");
    let rec = load_block(m.store(), ids[0]).expect("load").expect("rec");
    assert_eq!(rec.fragments[1], NO_SERVER);
    m.apply(WriteOp::RelocateFragments {
        block: ids[0],
        from_base: 0,
        policy: EC21,
        base: 0,
        written: vec![(1, ChunkserverId(4))],
    })
    .expect("relocate");
    // Re-encode to rep:2 under fresh slots; a stale task (old base) is ignored.
    m.apply(WriteOp::RelocateFragments {
        block: ids[0],
        from_base: 0,
        policy: Policy::Rep { copies: 2 },
        base: 3,
        written: vec![(0, ChunkserverId(1)), (1, ChunkserverId(5))],
    })
    .expect("re-encode");
    m.apply(WriteOp::RelocateFragments {
        block: ids[0],
        from_base: 0,
        policy: EC21,
        base: 0,
        written: vec![(2, ChunkserverId(6))],
    })
    .expect("stale");
    let rec = load_block(m.store(), ids[0]).expect("load").expect("rec");
    assert_eq!(rec.policy, Policy::Rep { copies: 2 });
    assert_eq!(rec.slot_base, 3);
    assert_eq!(rec.fragments, vec![ChunkserverId(1), ChunkserverId(5)]);
    // Readers see the table's layout.
    let reply = m
        .read(ReadOp::ReadChunk { ino, index: 0 })
        .expect("read chunk");
    let NsReply::Chunk { slices, .. } = reply else {
        panic!("unexpected reply: {reply:?}")
    };
    assert_eq!(slices[0].blocks[0].slot_base, 3);
    assert_eq!(slices[0].blocks[0].fragments, rec.fragments);
    // Old slots on server 1 are garbage now; slot 3 is not.
    let v = gc_verdicts(
        m.store(),
        ChunkserverId(1),
        None,
        &[(ids[0], 0, 1000), (ids[0], 3, 1000)],
        true,
        60,
        settled,
    )
    .expect("verdicts");
    assert_eq!(v.delete, vec![(ids[0], 0)]);
}
