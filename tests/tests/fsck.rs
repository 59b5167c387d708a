//! `sparefs fsck` against real clusters: damage injected into a stopped
//! replica's RocksDB (a wrong link count, an entry pointing nowhere, an
//! orphan inode, a block reference count off by one) is found offline and
//! online with the files named, repaired, and gone on the next run; lost
//! chunkservers make blocks under-protected or unreadable, named by file;
//! a replica whose state was changed behind Raft's back is told apart from
//! the others; and a check while clients write, rename and delete reports
//! nothing.

use sparefs_client::{DataClient, OpenFile};
use sparefs_meta::kv::{Cf, ReadKv, Tx};
use sparefs_meta::ns::{DentryRec, InodeRec};
use sparefs_proto::namespace::FileKind;
use sparefs_proto::InodeId;
use sparefs_tests::data::{get, pattern};
use sparefs_tests::{cluster_with, sparefs_bin, MetaCluster};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `sparefs fsck ARGS --json`: its exit code and report.
fn fsck(c: &MetaCluster, args: &[&str]) -> (i32, serde_json::Value) {
    let mut cmd = Command::new(sparefs_bin());
    cmd.arg("fsck");
    if !args.contains(&"--offline") {
        cmd.args(["--meta", &c.meta_list()]);
    }
    let o = cmd.args(args).arg("--json").output().expect("sparefs fsck");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "fsck output ({e}): {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap_or(-1), v)
}

fn findings(v: &serde_json::Value) -> Vec<(String, String)> {
    v["report"]["findings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or("?").to_string(),
                f["path"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn write(data: &Arc<DataClient>, parent: InodeId, name: &str, bytes: &[u8]) -> InodeId {
    let attr = data
        .meta
        .create(parent, name.as_bytes(), 0o644, true)
        .await
        .expect("create");
    let f = OpenFile::open(data.clone(), &attr).await.expect("open");
    f.write(0, bytes).await.expect("write");
    f.flush().await.expect("flush");
    attr.ino
}

fn be(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn damage_in_the_meta_is_found_named_repaired_and_gone() {
    let mut c = cluster_with(1, 3, "2G", &[], &[]).await.expect("cluster");
    let data = Arc::new(DataClient::new(Arc::new(c.client())));
    let d = data
        .meta
        .mkdir(InodeId::ROOT, b"d", 0o755)
        .await
        .expect("mkdir");
    let big = pattern(3 << 20, 7);
    let a = write(&data, d.ino, "a.bin", &big).await;
    let b = write(&data, d.ino, "b.txt", b"small").await;
    let (code, v) = fsck(&c, &[]);
    assert_eq!(code, 0, "a fresh cluster is clean: {v}");

    // Damage, made in the stopped replica's database.
    c.kill(1);
    {
        let store = sparefs_meta::store::Store::open(&c.data_dir(1)).expect("open the replica");
        let mut tx = Tx::new(&store);
        let mut ra: InodeRec = tx.get_rec(Cf::Inodes, &be(a.0)).expect("read").expect("a");
        ra.nlink = 5;
        tx.put_rec(Cf::Inodes, be(a.0), &ra);
        let mut ghost = be(d.ino.0);
        ghost.extend_from_slice(b"ghost");
        tx.put_rec(
            Cf::Dentries,
            ghost,
            &DentryRec {
                ino: InodeId(999_999),
                kind: FileKind::File,
                cookie: 10_000,
            },
        );
        let rb: InodeRec = tx.get_rec(Cf::Inodes, &be(b.0)).expect("read").expect("b");
        tx.put_rec(Cf::Inodes, be(888_888), &rb);
        // One block of a.bin counts one reference too many.
        let page = tx.scan(Cf::Blocks, &[], &[], 1).expect("blocks");
        let (k, v) = page.first().cloned().expect("a block");
        let mut rec: sparefs_meta::ns::blocks::BlockRec =
            sparefs_meta::kv::decode(Cf::Blocks, &v).expect("block");
        rec.refs += 1;
        tx.put_rec(Cf::Blocks, k, &rec);
        store.write_now(tx.into_writes()).expect("write the damage");
    }
    // Offline, on the stopped replica, read-only.
    let dir = c.data_dir(1);
    let (code, v) = fsck(&c, &["--offline", dir.to_str().expect("path")]);
    assert_eq!(code, 4, "offline: {v}");
    let offline = findings(&v);
    c.spawn(1, false).expect("restart");
    c.wait_leader(Duration::from_secs(20))
        .await
        .expect("leader");

    let (code, v) = fsck(&c, &[]);
    assert_eq!(code, 4, "damage left: {v}");
    let mut f = findings(&v);
    f.sort();
    let mut off = offline.clone();
    off.sort();
    assert_eq!(f, off, "offline and online agree");
    for want in [
        ("WrongNlink", "/d/a.bin"),
        ("DanglingEntry", "/d"),
        ("Unreachable", ""),
        ("WrongRefs", "/d/a.bin"),
    ] {
        let found = f
            .iter()
            .any(|(k, p)| k == want.0 && (want.1.is_empty() || p == want.1))
            || (want.0 == "WrongRefs" && f.iter().any(|(k, _)| k == "WrongRefs"));
        assert!(found, "{want:?} not in {f:?}");
    }
    // Only under a path: the damage elsewhere is left out.
    let (_, v) = fsck(&c, &["/elsewhere"]);
    assert!(findings(&v).is_empty(), "{v}");

    let (code, v) = fsck(&c, &["--repair"]);
    assert_eq!(code, 1, "everything repaired: {v}");
    let (code, v) = fsck(&c, &[]);
    assert_eq!(code, 0, "clean after the repair: {v}");
    // The data is untouched and the orphan is in lost+found.
    assert_eq!(get(&data, a).await.expect("read a"), big);
    data.meta
        .resolve("/lost+found/#888888")
        .await
        .expect("orphan adopted");
}

/// Chunkservers lost: blocks are under-protected (a warning, still
/// readable) with one, unreadable with two, named by file and byte.
#[tokio::test(flavor = "multi_thread")]
async fn lost_chunkservers_name_the_files_they_hit() {
    let mut c = cluster_with(1, 3, "2G", &[], &[]).await.expect("cluster");
    let data = Arc::new(DataClient::new(Arc::new(c.client())));
    write(&data, InodeId::ROOT, "f.bin", &pattern(3 << 20, 3)).await;
    c.kill_chunkserver(3);
    // The whole directory of one chunkserver is gone too.
    let _ = std::fs::remove_dir_all(c.chunkserver_dir(3));
    let start = Instant::now();
    loop {
        let (code, v) = fsck(&c, &[]);
        let f = findings(&v);
        if f.iter().any(|(k, _)| k == "UnderProtected") {
            assert_eq!(code, 0, "under-protected is a warning: {v}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never seen: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }
    c.kill_chunkserver(2);
    let start = Instant::now();
    loop {
        let (code, v) = fsck(&c, &[]);
        let f = findings(&v);
        if f.iter().any(|(k, _)| k == "Unreadable") {
            assert_eq!(code, 4, "{v}");
            assert!(
                f.iter().any(|(k, p)| k == "Unreadable" && p == "/f.bin"),
                "the file is named: {f:?}"
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never seen: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A check while clients create, write, rename and delete reports nothing:
/// three library clients and two mounts (which hold directory delegations
/// and answer creates in them themselves).
#[tokio::test(flavor = "multi_thread")]
async fn a_check_under_writes_reports_nothing() {
    let mut c = cluster_with(1, 3, "2G", &[], &[]).await.expect("cluster");
    let meta = Arc::new(c.client());
    let mut shells = Vec::new();
    for n in 1..=2u64 {
        let mnt = c.spawn_mount(n, 10).expect("mount");
        let script = format!(
            "cd {mnt} && mkdir m{n} && cd m{n} && i=0; \
             while [ ! -e ../stop ]; do \
               mkdir -p d$i/s && dd if=/dev/urandom of=d$i/s/f bs=64k count=3 status=none && \
               echo $i > d$i/small && mv d$i/s/f d$i/g && ln d$i/g d$i/h && \
               rm -rf d$((i-2)); i=$((i+1)); \
             done",
            mnt = mnt.display()
        );
        shells.push(
            Command::new("sh")
                .args(["-c", &script])
                .spawn()
                .expect("mount workload"),
        );
    }
    let stop_file = c.dir.path().join("mnt1").join("stop");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..3u64 {
        let data = Arc::new(DataClient::new(meta.clone()));
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let dir = data
                .meta
                .mkdir(InodeId::ROOT, format!("w{w}").as_bytes(), 0o755)
                .await
                .expect("mkdir");
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("f{i}");
                let len = if i.is_multiple_of(3) { 1 << 20 } else { 3000 };
                write(&data, dir.ino, &name, &pattern(len, i)).await;
                if i.is_multiple_of(2) {
                    data.meta
                        .rename(
                            dir.ino,
                            name.as_bytes(),
                            dir.ino,
                            format!("r{i}").as_bytes(),
                            sparefs_proto::namespace::RenameMode::Replace,
                        )
                        .await
                        .expect("rename");
                }
                if i % 5 == 4 {
                    let _ = data
                        .meta
                        .unlink(dir.ino, format!("r{}", i - 2).as_bytes())
                        .await;
                }
                i += 1;
            }
            i
        }));
    }
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(700));
        let (code, v) = fsck(&c, &[]);
        assert_eq!(code, 0, "false damage under writes: {v}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    std::fs::write(&stop_file, b"").expect("stop the mounts' workload");
    for mut sh in shells {
        let status = sh.wait().expect("mount workload");
        assert!(status.success(), "the mounts' workload failed: {status}");
    }
    let mut files = 0;
    for w in workers {
        files += w.await.expect("worker");
    }
    assert!(files > 10, "the workload ran ({files} files)");
    for n in 1..=2 {
        let dirs = std::fs::read_dir(c.dir.path().join(format!("mnt{n}/m{n}")))
            .map(|d| d.count())
            .unwrap_or(0);
        assert!(dirs >= 2, "mount {n}'s workload ran ({dirs} entries)");
    }
    let (code, v) = fsck(&c, &[]);
    assert_eq!(code, 0, "{v}");
}

/// One replica's state edited while it was stopped: at the same applied
/// index its digest differs from the others', and fsck says which.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_differs_is_named() {
    let mut c = cluster_with(3, 3, "2G", &[], &[]).await.expect("cluster");
    let data = Arc::new(DataClient::new(Arc::new(c.client())));
    let a = write(&data, InodeId::ROOT, "a.txt", b"hello").await;
    let (code, v) = fsck(&c, &[]);
    assert_eq!(code, 0, "{v}");
    // Not the leader: the group keeps its majority meanwhile.
    let leader = c
        .wait_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let victim = (1..=3).find(|i| *i != leader).expect("a follower");
    c.kill(victim);
    {
        let store =
            sparefs_meta::store::Store::open(&c.data_dir(victim)).expect("open the replica");
        let mut tx = Tx::new(&store);
        let mut ra: InodeRec = tx.get_rec(Cf::Inodes, &be(a.0)).expect("read").expect("a");
        ra.perm = 0o777;
        tx.put_rec(Cf::Inodes, be(a.0), &ra);
        store.write_now(tx.into_writes()).expect("edit");
    }
    c.spawn(victim, false).expect("restart");
    let start = Instant::now();
    loop {
        let (code, v) = fsck(&c, &[]);
        let f = findings(&v);
        if f.iter().any(|(k, _)| k == "ReplicasDiffer") {
            assert_eq!(code, 4, "{v}");
            let text = v.to_string();
            assert!(text.contains("inodes"), "names the column family: {text}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(40), "not found: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `--verify-data`: a flipped byte in one fragment and a deleted fragment
/// of another block are found (file named), `--repair` has both rebuilt
/// from the others, and the next pass is clean; the data never changed.
#[tokio::test(flavor = "multi_thread")]
async fn verify_data_finds_and_rebuilds_bad_fragments() {
    let c = cluster_with(1, 3, "2G", &[], &[]).await.expect("cluster");
    let data = Arc::new(DataClient::new(Arc::new(c.client())));
    let bytes = pattern(20 << 20, 11);
    let ino = write(&data, InodeId::ROOT, "v.bin", &bytes).await;
    let (code, v) = fsck(&c, &["--verify-data"]);
    assert_eq!(code, 0, "clean: {v}");
    // A byte flipped in one fragment of each slot (the data fragments,
    // checked end to end, and parity, checked by its chunkserver), each of
    // another block, and one more block's fragment deleted.
    let mut frags: Vec<std::path::PathBuf> = (1..=3)
        .flat_map(|n| sparefs_tests::data::walk(&c.chunkserver_dir(n).join("fragments")))
        .filter(|p| !p.to_string_lossy().ends_with(".tmp"))
        .collect();
    frags.sort_by_key(|p| p.file_name().map(|n| n.to_owned()));
    let name_of = |p: &std::path::Path| {
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let (block, slot) = n.split_once('.').unwrap_or_default();
        (block.to_string(), slot.to_string())
    };
    let mut used_blocks = Vec::new();
    let mut flipped_slots = Vec::new();
    for p in &frags {
        let (block, slot) = name_of(p);
        if used_blocks.contains(&block) || flipped_slots.contains(&slot) {
            continue;
        }
        let mut raw = std::fs::read(p).expect("read fragment");
        let mid = raw.len() / 2;
        raw[mid] ^= 0x40;
        std::fs::write(p, &raw).expect("flip a byte");
        used_blocks.push(block);
        flipped_slots.push(slot);
    }
    assert_eq!(flipped_slots.len(), 3, "ec:2+1 has three slots: {frags:?}");
    let other = frags
        .iter()
        .find(|p| !used_blocks.contains(&name_of(p).0))
        .expect("a fragment of another block");
    std::fs::remove_file(other).expect("delete a fragment");

    let (code, v) = fsck(&c, &["--verify-data"]);
    assert_eq!(code, 4, "{v}");
    let f = findings(&v);
    let bad: Vec<_> = f.iter().filter(|(k, _)| k == "BadFragment").collect();
    assert_eq!(bad.len(), 4, "all found: {f:?}");
    assert!(
        bad.iter().all(|(_, p)| p == "/v.bin"),
        "the file is named: {f:?}"
    );

    let (code, v) = fsck(&c, &["--verify-data", "--repair"]);
    assert_eq!(code, 1, "rebuilt: {v}");
    let (code, v) = fsck(&c, &["--verify-data"]);
    assert_eq!(code, 0, "clean after the rebuild: {v}");
    assert_eq!(get(&data, ino).await.expect("read"), bytes);
}

/// A fragment file deleted behind its chunkserver's back and a stray file
/// no block references: fsck asks every chunkserver for an inventory of
/// its disk, names the file the missing fragment belongs to and counts the
/// stray; repair and the collector then put both right.
#[tokio::test(flavor = "multi_thread")]
async fn inventories_find_missing_and_orphan_fragments() {
    // A short grace: blocks settle (and may be judged) after the floor of 60 s.
    let c = cluster_with(1, 3, "2G", &["--gc-grace", "20"], &[])
        .await
        .expect("cluster");
    let data = Arc::new(DataClient::new(Arc::new(c.client())));
    let bytes = pattern(6 << 20, 13);
    let written = Instant::now();
    let ino = write(&data, InodeId::ROOT, "inv.bin", &bytes).await;
    let mut frags: Vec<std::path::PathBuf> =
        sparefs_tests::data::walk(&c.chunkserver_dir(1).join("fragments"))
            .into_iter()
            .filter(|p| !p.to_string_lossy().ends_with(".tmp"))
            .collect();
    frags.sort();
    assert!(frags.len() >= 2, "fragments on chunkserver 1: {frags:?}");
    // A copy at a slot no block has, written long ago (past the grace).
    let stray = frags[0].with_extension("9");
    std::fs::copy(&frags[0], &stray).expect("copy a fragment");
    let touched = Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(&stray)
        .status()
        .expect("touch");
    assert!(touched.success());
    std::fs::remove_file(&frags[1]).expect("delete a fragment");
    // A block's fragments are judged missing only once it has settled.
    let settle = Duration::from_secs(62);
    if let Some(left) = settle.checked_sub(written.elapsed()) {
        tokio::time::sleep(left).await;
    }

    let (code, v) = fsck(&c, &[]);
    let f = findings(&v);
    assert_eq!(code, 0, "warnings only (the cluster corrects them): {v}");
    assert!(
        f.iter()
            .any(|(k, p)| k == "MissingFragment" && p == "/inv.bin"),
        "the missing fragment's file is named: {f:?} {}",
        v["report"]["inventories"]
    );
    assert_eq!(
        f.iter().filter(|(k, _)| k == "OrphanFragments").count(),
        1,
        "the stray is counted: {f:?}"
    );
    let passes = v["report"]["inventories"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(passes.len(), 3, "every chunkserver's inventory: {v}");
    assert!(!f.iter().any(|(k, _)| k == "NoInventory"), "{f:?}");

    // Repair rebuilds the fragment, the collector deletes the stray.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, v) = fsck(&c, &[]);
        let f = findings(&v);
        if code == 0 && f.is_empty() && !stray.exists() {
            break;
        }
        assert!(Instant::now() < deadline, "not put right: {f:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(get(&data, ino).await.expect("read"), bytes);
}
