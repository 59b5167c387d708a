//! The erasure-coded data path against real meta and chunkserver
//! processes: round trips, degraded reads with a chunkserver SIGKILLed,
//! flipped bytes in a fragment file, and ENOSPC at the cluster's limit.

use sparefs_client::{DataClient, OpenFile};
use sparefs_proto::namespace::{NsReply, ReadOp};
use sparefs_proto::{Errno, InodeId};
use sparefs_tests::data::{pattern, put, walk};

async fn get(data: &DataClient, ino: InodeId) -> Vec<u8> {
    sparefs_tests::data::get(data, ino).await.expect("read")
}
use sparefs_tests::MetaCluster;
use std::sync::Arc;
use std::time::Duration;

async fn cluster(limit: &str) -> (MetaCluster, Arc<DataClient>) {
    let mut c = MetaCluster::start(1).expect("start meta");
    c.wait_leader(Duration::from_secs(15))
        .await
        .expect("leader");
    for n in 1..=3 {
        c.spawn_chunkserver(n, limit).expect("chunkserver");
    }
    c.wait_chunkservers(3, Duration::from_secs(15))
        .await
        .expect("chunkservers up");
    let data = Arc::new(DataClient::new(Arc::new(c.client())));
    (c, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn degraded_reads_survive_a_killed_chunkserver_and_flipped_bytes() {
    let (mut c, data) = cluster("1G").await;
    let big = pattern(9 * 1024 * 1024 + 12345, 1);
    let small = pattern(3000, 2);
    let ino_big = put(&data, "big", &big).await.expect("put big");
    let ino_small = put(&data, "small", &small).await.expect("put small");
    assert_eq!(get(&data, ino_big).await, big);
    assert_eq!(get(&data, ino_small).await, small);
    // Ranges across block and shard boundaries.
    for (off, len) in [
        (0usize, 10usize),
        (4 * 1024 * 1024 - 5, 10),
        (2 * 1024 * 1024 - 1, 3),
        (9 * 1024 * 1024, 12345),
    ] {
        let got = data
            .read(ino_big, big.len() as u64, off as u64, len)
            .await
            .expect("range");
        assert_eq!(got, big[off..off + len].to_vec(), "range {off}+{len}");
    }

    c.kill_chunkserver(2);
    assert_eq!(
        get(&data, ino_big).await,
        big,
        "degraded read with one of three chunkservers killed"
    );
    assert_eq!(get(&data, ino_small).await, small);

    c.spawn_chunkserver(2, "1G").expect("restart");
    // Its old heartbeat may still read as up: wait until it really serves
    // (listening, and registered a moment later).
    let addr = c.chunkserver_address(2);
    let start = std::time::Instant::now();
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "restarted chunkserver never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.wait_chunkservers(3, Duration::from_secs(15))
        .await
        .expect("back");
    // Flip a byte in fragment 0 of every block (a data shard, or the first
    // copy), wherever it lives: every read must notice and decode around it.
    let mut flipped = 0;
    let files: Vec<_> = (1..=3)
        .flat_map(|n| walk(&c.chunkserver_dir(n).join("fragments")))
        .filter(|p| p.extension().is_some_and(|e| e == "0"))
        .collect();
    for entry in files {
        let mut bytes = std::fs::read(&entry).expect("read fragment");
        let at = bytes.len() - 100;
        bytes[at] ^= 0x5a;
        std::fs::write(&entry, bytes).expect("write fragment");
        flipped += 1;
    }
    assert!(flipped > 0);
    assert_eq!(
        get(&data, ino_big).await,
        big,
        "read with flipped bytes on one chunkserver"
    );
    assert_eq!(get(&data, ino_small).await, small);
    assert!(
        data.bad_fragments
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "bad fragments were reported"
    );
}

/// Rewrites bytes of a fragment file's data the way a lying or broken
/// chunkserver would serve them: with its own span checksums made to
/// match, so that only the end-to-end check can notice. With `table`, also
/// changes the block table kept in the header. Returns whether it did.
fn forge(path: &std::path::Path, table: bool) -> bool {
    let mut f = std::fs::read(path).expect("read fragment");
    if f.len() < 32 || &f[..8] != b"SPFRAG02" {
        return false;
    }
    let field =
        |f: &[u8], a: usize| u32::from_be_bytes([f[a], f[a + 1], f[a + 2], f[a + 3]]) as usize;
    let (data_len, n_sums, table_len) = (field(&f, 20), field(&f, 24), field(&f, 28));
    let sums_at = 32 + table_len;
    let data_at = sums_at + 32 * n_sums;
    const SPAN: usize = 64 * 1024;
    for pos in [10, data_len / 2, data_len - 1] {
        f[data_at + pos] ^= 0x5a;
        let span = pos / SPAN;
        let end = ((span + 1) * SPAN).min(data_len);
        let sum = *blake3::hash(&f[data_at + span * SPAN..data_at + end]).as_bytes();
        f[sums_at + 32 * span..sums_at + 32 * span + 32].copy_from_slice(&sum);
    }
    if table && table_len > 0 {
        f[32] ^= 1;
    }
    std::fs::write(path, f).expect("write fragment");
    true
}

/// Bytes that a chunkserver serves as good but that are not the block's
/// (its own checksums agree with them) are caught by the client's
/// end-to-end check and never returned: the client decodes around them,
/// in whole reads and in ranges, and also when a fragment's block table
/// is forged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytes_served_wrong_with_good_chunkserver_checksums_are_never_returned() {
    let (c, data) = cluster("1G").await;
    let big = pattern(9 * 1024 * 1024 + 12345, 3);
    let ino_big = put(&data, "big", &big).await.expect("put big");
    // Small flushes: inline in the meta until the chunk holds 1 MiB of
    // them, then blocks of 60,000 bytes, stored as copies.
    let small = pattern(30 * 60_000, 4);
    let attr = data
        .meta
        .create(InodeId::ROOT, b"small", 0o644, true)
        .await
        .expect("create");
    let f = OpenFile::open(data.clone(), &attr).await.expect("open");
    for (i, piece) in small.chunks(60_000).enumerate() {
        f.write(i as u64 * 60_000, piece).await.expect("write");
        f.flush().await.expect("flush");
    }
    let ino_small = attr.ino;
    // Fragment 0 of every block (a data shard, or the first copy) made
    // wrong; of some, the table too.
    let files: Vec<_> = (1..=3)
        .flat_map(|n| walk(&c.chunkserver_dir(n).join("fragments")))
        .filter(|p| p.extension().is_some_and(|e| e == "0"))
        .collect();
    let forged = files
        .iter()
        .enumerate()
        .filter(|(i, p)| forge(p, i % 2 == 0))
        .count();
    assert!(forged >= 6, "forged {forged} fragments");
    println!("forged {forged} fragments");
    let fresh = Arc::new(DataClient::new(data.meta.clone()));
    for client in [&data, &fresh] {
        for (off, len) in [
            (0usize, 10usize),
            (5, 4096),
            (1024 * 1024 - 3, 100_000),
            (2 * 1024 * 1024 - 1, 3),
            (4 * 1024 * 1024 - 5, 10),
            (9 * 1024 * 1024, 12345),
        ] {
            let got = client
                .read(ino_big, big.len() as u64, off as u64, len)
                .await
                .expect("range");
            assert!(got == big[off..off + len], "range {off}+{len}: other bytes");
        }
        assert!(get(client, ino_big).await == big, "whole file: other bytes");
        let end = small.len() - 100;
        let got = client
            .read(ino_small, small.len() as u64, end as u64 - 20_000, 20_000)
            .await
            .expect("small range");
        assert!(
            got == small[end - 20_000..end],
            "small file range: other bytes"
        );
        assert!(get(client, ino_small).await == small);
        assert!(
            client
                .bad_fragments
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0,
            "the bad bytes were reported"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writing_past_capacity_is_enospc_and_damages_nothing() {
    let (_c, data) = cluster("24M").await;
    let keep = pattern(6 * 1024 * 1024, 3);
    let ino = put(&data, "keep", &keep).await.expect("first file fits");
    let mut hit_enospc = false;
    for i in 0..10 {
        match put(
            &data,
            &format!("fill{i}"),
            &pattern(8 * 1024 * 1024, 10 + i),
        )
        .await
        {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.errno(), Errno::ENOSPC, "{e}");
                hit_enospc = true;
                break;
            }
        }
    }
    assert!(hit_enospc, "never ran out of space at a 3 x 24 MiB limit");
    assert_eq!(
        get(&data, ino).await,
        keep,
        "data written before the cluster filled is intact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reserve_keeps_host_space_free() {
    // Chunkservers told to leave (nearly) the whole host filesystem free
    // report themselves full: writes fail with ENOSPC, nothing else breaks.
    let mut c = MetaCluster::start(1).expect("start meta");
    c.wait_leader(Duration::from_secs(15))
        .await
        .expect("leader");
    for n in 1..=3 {
        c.spawn_chunkserver_with(n, "100%", "100%")
            .expect("chunkserver");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let data = Arc::new(DataClient::new(Arc::new(c.client())));
    let e = put(&data, "big", &pattern(8 * 1024 * 1024, 4))
        .await
        .expect_err("a write into reserved space");
    assert_eq!(e.errno(), Errno::ENOSPC, "{e}");
    let reply = data
        .meta
        .read(ReadOp::ListChunkservers)
        .await
        .expect("list");
    let NsReply::Chunkservers(list) = reply else {
        panic!("unexpected reply: {reply:?}")
    };
    assert!(
        list.iter()
            .all(|s| s.state == sparefs_proto::layout::ChunkserverState::Full),
        "{list:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn background_flushes_commit_in_order_and_reads_see_the_newest_bytes() {
    let (_c, data) = cluster("2G").await;
    let attr = data
        .meta
        .create(InodeId::ROOT, b"pipelined", 0o644, true)
        .await
        .expect("create");
    let f = OpenFile::open(data.clone(), &attr).await.expect("open");
    let mut model = pattern(50 * 1024 * 1024, 7);
    // 50 MiB in 1 MiB writes: several flushes run in the background.
    for (i, piece) in model.chunks(1024 * 1024).enumerate() {
        f.write(i as u64 * 1024 * 1024, piece).await.expect("write");
    }
    // Overwrite ranges that earlier background flushes carry: the later
    // bytes must win once everything is committed.
    for (off, seed) in [(1_000_000usize, 11u64), (17_000_000, 12), (33_554_000, 13)] {
        let patch = pattern(3_000_000, seed);
        f.write(off as u64, &patch).await.expect("overwrite");
        model[off..off + patch.len()].copy_from_slice(&patch);
    }
    // A read overlapping in-flight data waits for it and sees the newest bytes.
    let got = f.read(16_999_000, 10_000, 0).await.expect("read in flight");
    assert_eq!(got, model[16_999_000..17_009_000].to_vec());
    f.flush().await.expect("flush");
    assert_eq!(get(&data, attr.ino).await, model);
}
