//! Failure handling with real processes: chunkservers and the meta leader
//! SIGKILLed under write workloads (nothing fsynced lost, no error seen),
//! a chunkserver `out` and its fragments rebuilt, scrub finding flipped
//! bytes and a deleted directory, a full host skipped, and garbage
//! collection giving space back.

use sparefs_client::DataClient;
use sparefs_proto::layout::ChunkserverState;
use sparefs_proto::msg::{RepairProgress, Reply, Request};
use sparefs_proto::namespace::{NsReply, ReadOp};
use sparefs_proto::InodeId;
use sparefs_tests::data::{get, pattern, put, walk};
use sparefs_tests::{poll, MetaCluster};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GIB: f64 = (1u64 << 30) as f64;

/// A cluster with fast failure handling: out after `out_after` s, garbage
/// grace 5 s, inventories every 2 s, scrub passes every second at `scrub_rate`.
async fn cluster(metas: u64, chunkservers: u64, out_after: u64, scrub_rate: &str) -> MetaCluster {
    let out = out_after.to_string();
    sparefs_tests::cluster_with(
        metas,
        chunkservers,
        "4G",
        &["--out-after", &out, "--gc-grace", "5"],
        &[
            "--inventory-every",
            "2",
            "--scrub-rate",
            scrub_rate,
            "--scrub-every",
            "1",
        ],
    )
    .await
    .expect("cluster")
}

fn data_client(c: &MetaCluster) -> Arc<DataClient> {
    Arc::new(DataClient::new(Arc::new(c.client())))
}

async fn repair_progress(c: &MetaCluster) -> RepairProgress {
    match c.client().call_leader(&Request::RepairStatus).await {
        Ok(Reply::Repair(p)) => p,
        other => panic!("repair status: {other:?}"),
    }
}

async fn lookup(data: &DataClient, name: &str) -> InodeId {
    data.meta
        .lookup(InodeId::ROOT, name.as_bytes())
        .await
        .expect("lookup")
        .ino
}

/// What a workload wrote and fsynced: the expected bytes of each file.
struct Written {
    seq: Vec<u8>,
    random: Vec<u8>,
}

const SEQ_BYTES: usize = 96 << 20;
const RANDOM_FILE: usize = 16 << 20;

/// Writes a sequential file (1 MiB writes, fsync every 4 MiB) and random
/// 4 KiB overwrites of another (fsync every 64), through the mount; counts
/// progress in `progress` (bytes). Any error fails the workload.
fn workload(mnt: &Path, progress: Arc<AtomicU64>) -> std::io::Result<Written> {
    let seq = pattern(SEQ_BYTES, 11);
    let mut random = pattern(RANDOM_FILE, 12);
    let mut rf = std::fs::File::create(mnt.join("random"))?;
    rf.write_all(&random)?;
    rf.sync_all()?;
    let mut sf = std::fs::File::create(mnt.join("seq"))?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (i, piece) in seq.chunks(1 << 20).enumerate() {
        sf.write_all(piece)?;
        if i % 4 == 3 {
            sf.sync_all()?;
        }
        // Interleave random overwrites.
        for j in 0..16 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x as usize % (RANDOM_FILE / 4096)) * 4096;
            let bytes = pattern(4096, x ^ j);
            rf.write_all_at(&bytes, off as u64)?;
            random[off..off + 4096].copy_from_slice(&bytes);
        }
        if i % 4 == 3 {
            rf.sync_all()?;
        }
        progress.fetch_add(piece.len() as u64, Ordering::Relaxed);
    }
    sf.sync_all()?;
    rf.sync_all()?;
    sf.seek(SeekFrom::Start(0))?;
    Ok(Written { seq, random })
}

/// Runs the workload on `mnt`, calling `fault` once a third is written.
async fn workload_with_fault(mnt: PathBuf, fault: impl FnOnce() + Send) -> (Written, Duration) {
    let progress = Arc::new(AtomicU64::new(0));
    let p = progress.clone();
    let job = tokio::task::spawn_blocking(move || workload(&mnt, p));
    while progress.load(Ordering::Relaxed) < (SEQ_BYTES / 3) as u64 {
        assert!(!job.is_finished(), "workload ended early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fault();
    let started = Instant::now();
    // The longest stall: progress samples after the fault.
    let mut longest = Duration::ZERO;
    let mut last = (Instant::now(), progress.load(Ordering::Relaxed));
    while !job.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = progress.load(Ordering::Relaxed);
        if now != last.1 {
            longest = longest.max(last.0.elapsed());
            last = (Instant::now(), now);
        }
    }
    let _ = started;
    let written = job
        .await
        .expect("workload thread")
        .expect("the application saw an error");
    (written, longest)
}

async fn verify(data: &DataClient, w: &Written) {
    let seq = get(data, lookup(data, "seq").await)
        .await
        .expect("read seq");
    assert!(seq == w.seq, "sequential file differs");
    let random = get(data, lookup(data, "random").await)
        .await
        .expect("read random");
    assert!(random == w.random, "random-write file differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunkserver_sigkill_under_writes_loses_nothing_and_reencodes_when_back() {
    let mut c = cluster(1, 3, 600, "0").await;
    let mnt = c.spawn_mount(1, 60).expect("mount");
    let killed = std::sync::Mutex::new(&mut c);
    let (written, stall) = workload_with_fault(mnt, || {
        killed.lock().expect("lock").kill_chunkserver(2);
    })
    .await;
    println!("longest stall after a chunkserver SIGKILL: {stall:?}");
    let data = data_client(&c);
    verify(&data, &written).await;
    // Written with one of three hosts gone: stored as two replicas, below
    // ec:2+1, until the host is back; then re-encoded.
    let (_, degraded, unreadable) = c.health().await.expect("health");
    assert_eq!(unreadable, 0);
    assert!(degraded > 0, "blocks with a fragment on the dead host");
    c.spawn_chunkserver(2, "4G").expect("restart");
    let secs = c
        .wait_protected(Duration::from_secs(180))
        .await
        .expect("full protection after the host returned");
    println!("fully protected {secs:.1} s after the chunkserver returned");
    // Every block survives the loss of any one host again.
    c.kill_chunkserver(1);
    data.invalidate(lookup(&data, "seq").await);
    verify(&data, &written).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn meta_leader_sigkill_under_writes_loses_nothing() {
    let mut c = cluster(3, 3, 600, "0").await;
    let mnt = c.spawn_mount(1, 60).expect("mount");
    let leader = c
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let cell = std::sync::Mutex::new(&mut c);
    let (written, stall) = workload_with_fault(mnt, || {
        cell.lock().expect("lock").kill(leader);
    })
    .await;
    println!("longest stall after a meta leader SIGKILL: {stall:?}");
    let data = data_client(&c);
    verify(&data, &written).await;
    c.spawn(leader, false).expect("restart replica");
    c.wait_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    verify(&data, &written).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_chunkserver_is_rebuilt_and_its_garbage_deleted_on_return() {
    let mut c = cluster(1, 4, 4, "0").await;
    let data = data_client(&c);
    let bytes = pattern(192 << 20, 21);
    let ino = put(&data, "big", &bytes).await.expect("write");
    c.wait_protected(Duration::from_secs(30))
        .await
        .expect("protected");
    let id4 = c.chunkserver_id(4).await.expect("id");
    let held: Vec<PathBuf> = walk(&c.chunkserver_dir(4).join("fragments"));
    assert!(!held.is_empty(), "chunkserver 4 holds fragments");
    c.kill_chunkserver(4);
    c.wait_chunkserver_state(id4.0, ChunkserverState::Out, Duration::from_secs(30))
        .await
        .expect("out");
    let start = Instant::now();
    c.wait_protected(Duration::from_secs(300))
        .await
        .expect("rebuilt");
    let secs = start.elapsed().as_secs_f64();
    let progress = repair_progress(&c).await;
    let rebuilt = progress.repaired_bytes as f64;
    assert!(rebuilt > 0.0, "{progress:?}");
    println!(
        "re-protected {:.0} MiB of blocks in {secs:.1} s after `out`: {:.1} s per GiB",
        rebuilt / 1048576.0,
        secs / (rebuilt / GIB)
    );
    // Another host lost: everything still reads (the rebuilt fragments are good).
    c.kill_chunkserver(1);
    assert!(get(&data, ino).await.expect("read") == bytes);
    c.spawn_chunkserver(1, "4G").expect("restart 1");
    // The returning host's fragments were rebuilt elsewhere: garbage. (It
    // may receive fresh fragments by rebalancing meanwhile: only files from
    // before its return count.)
    let returned = std::time::SystemTime::now();
    c.spawn_chunkserver(4, "4G").expect("restart 4");
    let start = Instant::now();
    loop {
        let stale: Vec<&PathBuf> = held
            .iter()
            .filter(|p| {
                std::fs::metadata(p)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < returned)
            })
            .collect();
        if stale.is_empty() {
            println!(
                "returned chunkserver's {} stale fragments deleted in {:.1} s",
                held.len(),
                start.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "returned chunkserver still holds {} of its {} stale fragments",
            stale.len(),
            held.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(get(&data, ino).await.expect("read") == bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrub_finds_flipped_bytes_and_a_deleted_directory() {
    let mut c = cluster(1, 3, 600, "512M").await;
    let data = data_client(&c);
    let bytes = pattern(24 << 20, 31);
    let ino = put(&data, "f", &bytes).await.expect("write");
    c.wait_protected(Duration::from_secs(30))
        .await
        .expect("protected");
    // Flip a byte in every fragment file of chunkserver 1.
    let files = walk(&c.chunkserver_dir(1).join("fragments"));
    assert!(!files.is_empty());
    for f in &files {
        let mut b = std::fs::read(f).expect("read fragment");
        let at = b.len() - 7;
        b[at] ^= 0x81;
        std::fs::write(f, b).expect("write fragment");
    }
    wait_degraded(&c, Duration::from_secs(60)).await;
    c.wait_protected(Duration::from_secs(120))
        .await
        .expect("rebuilt after scrub");
    c.kill_chunkserver(2);
    assert!(
        get(&data, ino).await.expect("read") == bytes,
        "rebuilt fragments decode"
    );
    c.spawn_chunkserver(2, "4G").expect("restart");
    c.wait_chunkservers(3, Duration::from_secs(20))
        .await
        .expect("up");
    // A chunkserver's directory removed while it runs.
    std::fs::remove_dir_all(c.chunkserver_dir(3).join("fragments")).expect("rm");
    wait_degraded(&c, Duration::from_secs(30)).await;
    c.wait_protected(Duration::from_secs(120))
        .await
        .expect("rebuilt after the directory vanished");
    c.kill_chunkserver(1);
    assert!(get(&data, ino).await.expect("read") == bytes);
}

async fn wait_degraded(c: &MetaCluster, timeout: Duration) {
    let start = Instant::now();
    loop {
        if let Ok((_, degraded, _)) = c.health().await {
            if degraded > 0 {
                return;
            }
        }
        assert!(start.elapsed() < timeout, "damage never noticed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_host_is_skipped_and_space_comes_back() {
    let mut c = cluster(1, 2, 600, "0").await;
    // A third host with little room: ec:2+1 needs it for every block until
    // it is full; then writes go to the other two (as rep:2).
    c.spawn_chunkserver(3, "100M").expect("small chunkserver");
    c.wait_chunkservers(3, Duration::from_secs(20))
        .await
        .expect("up");
    let data = data_client(&c);
    let id3 = c.chunkserver_id(3).await.expect("id");
    let big = pattern(1 << 30, 41);
    let ino = put(&data, "big", &big).await.expect("write 1 GiB");
    c.wait_chunkserver_state(id3.0, ChunkserverState::Full, Duration::from_secs(10))
        .await
        .expect("small host reports full");
    assert!(get(&data, ino).await.expect("read") == big);
    drop(big);
    let before: u64 = c.chunkserver_usage().values().sum();
    assert!(before as f64 > 1.4 * GIB, "ec:2+1 stores 1.5x: {before}");
    // Overwrite 256 MiB of it, then delete it: the space comes back.
    let attr = data.meta.getattr(ino).await.expect("attr");
    let f = sparefs_client::OpenFile::open(data.clone(), &attr)
        .await
        .expect("open");
    f.write(0, &pattern(256 << 20, 42))
        .await
        .expect("overwrite");
    f.flush().await.expect("flush");
    let start = Instant::now();
    let grace_plus_a_minute = Duration::from_secs(5 + 60);
    loop {
        let now: u64 = c.chunkserver_usage().values().sum();
        if (now as f64) < before as f64 + 0.05 * GIB {
            break;
        }
        assert!(
            start.elapsed() < grace_plus_a_minute,
            "overwritten space not reclaimed: {now} vs {before}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    data.meta
        .unlink(InodeId::ROOT, b"big")
        .await
        .expect("unlink");
    let start = Instant::now();
    loop {
        let now: u64 = c.chunkserver_usage().values().sum();
        if (now as f64) < 0.05 * GIB {
            println!(
                "1 GiB file deleted: usage {before} -> {now} bytes in {:.1} s",
                start.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            start.elapsed() < grace_plus_a_minute,
            "deleted space not reclaimed: {now} bytes left"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let NsReply::Health { protected, .. } = c.client().read(ReadOp::Health).await.expect("health")
    else {
        panic!("health")
    };
    assert_eq!(protected, 0, "no block left in the table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_host_is_filled_and_drained_host_removed() {
    let mut c = sparefs_tests::cluster_with(
        1,
        3,
        "1G",
        &["--gc-grace", "5"],
        &["--inventory-every", "2"],
    )
    .await
    .expect("cluster");
    let data = data_client(&c);
    let bytes = pattern(256 << 20, 51);
    let ino = put(&data, "f", &bytes).await.expect("write");
    // A fourth host joins empty: rebalancing moves fragments to it.
    c.spawn_chunkserver(4, "1G").expect("new chunkserver");
    c.wait_chunkservers(4, Duration::from_secs(20))
        .await
        .expect("up");
    // Even: its share of the 1.5 x 256 MiB stored comes within a quarter of
    // the mean (the others' old copies are garbage, collected later).
    let mean = (256u64 << 20) * 3 / 2 / 4;
    let cr = &c;
    let (filled, secs) = poll(
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async move {
            let usage = cr.chunkserver_usage();
            if usage[&4] * 4 >= mean * 3 {
                Ok(usage[&4])
            } else {
                Err(format!("new host not filled: {usage:?}"))
            }
        },
    )
    .await;
    println!(
        "new host filled to {} MiB (mean {} MiB) in {secs:.1} s",
        filled >> 20,
        mean >> 20
    );
    // Drain host 1 and remove it; everything still survives one more loss.
    let id1 = c.chunkserver_id(1).await.expect("id");
    let out = sparefs_tests::run_ok(
        std::process::Command::new(sparefs_tests::sparefs_bin()).args([
            "node",
            "--meta",
            &c.meta_list(),
            "drain",
            &id1.0.to_string(),
            "--wait",
        ]),
        "sparefs node drain",
    );
    println!("{}", out.trim());
    c.kill_chunkserver(1);
    c.wait_protected(Duration::from_secs(30))
        .await
        .expect("protected");
    c.kill_chunkserver(2);
    assert!(get(&data, ino).await.expect("read") == bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocks_a_dead_client_never_committed_are_collected() {
    let c = cluster(1, 3, 600, "0").await;
    let data = data_client(&c);
    // Fragments stored, commit never sent: the client "died" in between.
    let (slices, _) = data
        .store_extents(
            sparefs_proto::layout::Policy::Ec { data: 2, parity: 1 },
            &[(0, pattern(32 << 20, 81))],
        )
        .await
        .expect("store blocks");
    assert!(!slices.is_empty());
    drop(data);
    let stored: u64 = c.chunkserver_usage().values().sum();
    assert!(stored > 32 << 20, "fragments on disk: {stored}");
    // Abandoned after the grace period (5 s), then collected.
    let cr = &c;
    let ((), secs) = poll(
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async move {
            let now: u64 = cr.chunkserver_usage().values().sum();
            match now {
                0 => Ok(()),
                _ => Err(format!("uncommitted blocks still take {now} bytes")),
            }
        },
    )
    .await;
    println!("uncommitted blocks collected in {secs:.1} s");
}
