//! Compaction with real processes: a chunk made of many slices by random
//! overwrites is rewritten in the background into a few; readers running
//! meanwhile always see the right bytes, and the old blocks' space returns.

use sparefs_client::{DataClient, OpenFile};
use sparefs_proto::namespace::{NsReply, ReadOp};
use sparefs_proto::InodeId;
use sparefs_tests::data::{get, pattern, put};
use sparefs_tests::poll;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

async fn slice_count(data: &DataClient, ino: InodeId) -> usize {
    match data.meta.read(ReadOp::ReadChunk { ino, index: 0 }).await {
        Ok(NsReply::Chunk { slices, .. }) => slices.len(),
        other => panic!("read chunk: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_slices_are_compacted_while_reads_stay_right() {
    let c = sparefs_tests::cluster_with(
        1,
        3,
        "2G",
        &["--gc-grace", "5"],
        &["--inventory-every", "2"],
    )
    .await
    .expect("cluster");
    let data = Arc::new(DataClient::new(Arc::new(c.client())));
    const SIZE: usize = 8 << 20;
    let mut model = pattern(SIZE, 61);
    let ino = put(&data, "image", &model).await.expect("write");
    let attr = data.meta.getattr(ino).await.expect("attr");
    let f = OpenFile::open(data.clone(), &attr).await.expect("open");
    // Random 128 KiB overwrites, each its own flush: one slice each. (On
    // a slow machine compaction may start before the last one: the most
    // slices seen at once is what shows it had work to do.)
    let mut most = 0;
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for i in 0..120u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x as usize % (SIZE - (128 << 10))) & !4095;
        let bytes = pattern(128 << 10, i + 1000);
        f.write(off as u64, &bytes).await.expect("overwrite");
        f.flush().await.expect("flush");
        model[off..off + bytes.len()].copy_from_slice(&bytes);
        if i >= 30 {
            most = most.max(slice_count(&data, ino).await);
        }
    }
    let before = most;
    assert!(before > 32, "at most {before} slices");
    // Readers check random ranges while the chunk is rewritten.
    let stop = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicU64::new(0));
    let model = Arc::new(model);
    let reader = {
        let (data, stop, checked, model) =
            (data.clone(), stop.clone(), checked.clone(), model.clone());
        tokio::spawn(async move {
            let mut y: u64 = 99;
            while !stop.load(Ordering::Relaxed) {
                y ^= y << 13;
                y ^= y >> 7;
                y ^= y << 17;
                let off = y as usize % SIZE;
                let len = (y as usize >> 32) % (1 << 20) + 1;
                let len = len.min(SIZE - off);
                data.invalidate(ino);
                let got = data
                    .read(ino, SIZE as u64, off as u64, len)
                    .await
                    .expect("read during compaction");
                assert!(got == model[off..off + len], "wrong bytes at {off}+{len}");
                checked.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let usage_before: u64 = c.chunkserver_usage().values().sum();
    let dr = &data;
    let (n, secs) = poll(
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async move {
            let n = slice_count(dr, ino).await;
            if n <= 4 {
                Ok(n)
            } else {
                Err(format!("still {n} slices"))
            }
        },
    )
    .await;
    println!("compacted {before} slices into {n} in {secs:.1} s");
    // Keep reading a moment past the swap.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    reader.await.expect("reader");
    assert!(checked.load(Ordering::Relaxed) > 0);
    assert!(get(&data, ino).await.expect("read") == *model);
    // The replaced blocks are collected: usage falls to about 1.5x the file.
    let cr = &c;
    let (now, _) = poll(
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async move {
            let now: u64 = cr.chunkserver_usage().values().sum();
            if (now as f64) < 1.5 * SIZE as f64 * 1.1 {
                Ok(now)
            } else {
                Err(format!(
                    "space not reclaimed: {now} bytes (was {usage_before})"
                ))
            }
        },
    )
    .await;
    println!("usage {usage_before} -> {now} bytes after compaction");
}
