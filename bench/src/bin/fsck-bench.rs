//! `sparefs fsck` at scale: the time to check a namespace of N files (one
//! replica, 64 clients create them), and `--verify-data`'s rate as a
//! fraction of the disks' own read bandwidth measured in the same run
//! (every fragment file of every chunkserver read back, caches dropped
//! before each). Writes bench/results/fsck-DATE.md.

use clap::Parser;
use sparefs_client::{DataClient, MetaClient, OpenFile};
use sparefs_proto::namespace::Caller;
use sparefs_proto::InodeId;
use sparefs_tests::{cluster_with, sparefs_bin, MetaCluster};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Files in the namespace to check.
    #[arg(long, default_value_t = 1_000_000)]
    files: u64,
    /// MiB of file data for the verification rate.
    #[arg(long, default_value_t = 2048)]
    data_mib: u64,
    #[arg(long, default_value = "bench/results")]
    out: String,
}

fn drop_caches() {
    // Root only; without it both reads come from the page cache alike.
    let _ = std::process::Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Reads every file under the chunkservers' directories, one thread per
/// directory: bytes per second.
fn disk_read_rate(c: &MetaCluster, servers: u64) -> (u64, f64) {
    drop_caches();
    let started = Instant::now();
    let threads: Vec<_> = (1..=servers)
        .map(|n| {
            let dir = c.chunkserver_dir(n).join("fragments");
            std::thread::spawn(move || {
                let mut total = 0u64;
                for p in sparefs_tests::data::walk(&dir) {
                    if let Ok(b) = std::fs::read(&p) {
                        total += b.len() as u64;
                    }
                }
                total
            })
        })
        .collect();
    let bytes: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    (bytes, bytes as f64 / started.elapsed().as_secs_f64())
}

fn fsck(c: &MetaCluster, extra: &[&str]) -> anyhow::Result<(f64, serde_json::Value)> {
    let started = Instant::now();
    let o = std::process::Command::new(sparefs_bin())
        .args(["fsck", "--meta", &c.meta_list(), "--json"])
        .args(extra)
        .output()?;
    let secs = started.elapsed().as_secs_f64();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    Ok((secs, v))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let c = cluster_with(1, 3, "100%", &[], &[]).await?;
    let pid = c.pid(1).unwrap_or(0);
    // The namespace: 64 clients, a directory each.
    let created = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..64u64 {
        let client = MetaClient::new(c.addrs.values().cloned().collect(), Caller::ROOT);
        let created = created.clone();
        let target = args.files;
        workers.push(tokio::spawn(async move {
            let dir = client
                .mkdir(InodeId::ROOT, format!("d{w}").as_bytes(), 0o755)
                .await?
                .ino;
            let mut i = 0;
            while created.fetch_add(1, Ordering::Relaxed) < target {
                client
                    .create(dir, format!("file-{i:08}").as_bytes(), 0o644, true)
                    .await?;
                i += 1;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let create_secs = started.elapsed().as_secs_f64();
    println!("{} files created in {create_secs:.0} s", args.files);
    // File data for the verification: 64 MiB files.
    let data = Arc::new(DataClient::new(Arc::new(c.client())));
    let dir = data.meta.mkdir(InodeId::ROOT, b"data", 0o755).await?;
    let piece = sparefs_tests::data::pattern(64 << 20, 5);
    for i in 0..args.data_mib.div_ceil(64) {
        let a = data
            .meta
            .create(dir.ino, format!("f{i}").as_bytes(), 0o644, true)
            .await?;
        let f = OpenFile::open(data.clone(), &a).await?;
        f.write(0, &piece).await?;
        f.flush().await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let rss_before = rss_kib(pid);
    let (check_secs, v) = fsck(&c, &[])?;
    let rss_after = rss_kib(pid);
    let exit = v["exit"].as_i64().unwrap_or(-1);
    let inodes = v["report"]["inodes"].as_u64().unwrap_or(0);
    println!("check: {inodes} inodes in {check_secs:.1} s (exit {exit})");

    let (disk_bytes, disk_rate) = disk_read_rate(&c, 3);
    drop_caches();
    let (_, vv) = fsck(&c, &["--verify-data", "--rate", "100G", "/data"])?;
    let vbytes = vv["verified"]["bytes"].as_u64().unwrap_or(0);
    let vsecs = vv["verified"]["seconds"].as_f64().unwrap_or(f64::NAN);
    let vrate = vbytes as f64 / vsecs;
    let ratio = vrate / disk_rate;
    println!(
        "verify-data: {vbytes} bytes in {vsecs:.1} s = {:.0} MB/s; the disks: {disk_bytes} bytes at {:.0} MB/s; ratio {ratio:.2}",
        vrate / 1e6,
        disk_rate / 1e6
    );
    let report = format!(
        "# fsck benchmark\n\n\
         `cargo run --release -p sparefs-bench --bin fsck-bench -- --files {files} --data-mib {mib}` \
         on {cores} cores: one meta replica, three chunkservers (ec:2+1), plaintext.\n\n\
         | measure | value | goal |\n|---|---|---|\n\
         | namespace and layout check of {inodes} inodes (`sparefs fsck`, exit {exit}) | {check_secs:.1} s | |\n\
         | (for scale) creating the {files} files, 64 clients | {create_secs:.0} s | |\n\
         | meta replica RSS before / after the check | {b:.0} / {a:.0} MiB | |\n\
         | `--verify-data` (every fragment, parity included) | {vr:.0} MB/s | |\n\
         | the chunkservers' fragment files read back, same run | {dr:.0} MB/s | |\n\
         | ratio | {ratio:.2} | >= 0.7 |\n\n\
         Caches dropped before both reads; the verification's data is {vbytes} fragment bytes, \
         the disks' read {disk_bytes} (the namespace's empty files add none).\n",
        files = args.files,
        mib = args.data_mib,
        cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        b = rss_before as f64 / 1024.0,
        a = rss_after as f64 / 1024.0,
        vr = vrate / 1e6,
        dr = disk_rate / 1e6,
    );
    sparefs_bench::write_report(&args.out, "fsck", &report)?;
    print!("{report}");
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
