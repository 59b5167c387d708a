//! Healing benchmarks, each against a baseline measured in the same run:
//! - re-protecting 1 GiB (ec:2+1 on 4 chunkservers, one lost and `out`),
//!   as a fraction of what this machine's disk and loopback allow for the
//!   bytes the rebuild must move;
//! - meta failover: leader SIGKILLed, time until a write succeeds again;
//! - the longest stall a writer through the mount sees when a chunkserver
//!   is SIGKILLed, next to its usual gap between writes.
//!
//! Prints a table and writes it to bench/results/.

use clap::Parser;
use sparefs_client::DataClient;
use sparefs_proto::msg::{Reply, Request};
use sparefs_proto::namespace::Caller;
use sparefs_proto::InodeId;
use sparefs_tests::data::{pattern, put};
use sparefs_tests::MetaCluster;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// MiB of file data to re-protect.
    #[arg(long, default_value_t = 1024)]
    mib: usize,
    /// Repair read rate per chunkserver (the product default is 64M).
    #[arg(long, default_value = "1G")]
    repair_rate: String,
    /// Failovers to time.
    #[arg(long, default_value_t = 3)]
    failovers: usize,
    #[arg(long, default_value = "bench/results")]
    out: String,
    /// Run one part only: reprotect, failover or stall.
    #[arg(long)]
    only: Option<String>,
}

const MIB: f64 = 1048576.0;

/// Sequential write of `bytes` with fsync at the end, in MiB/s.
fn disk_write_rate(dir: &std::path::Path, bytes: usize) -> anyhow::Result<f64> {
    let path = dir.join("disk-baseline");
    let buf = pattern(4 << 20, 5);
    let start = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len());
        f.write_all(&buf[..n])?;
        left -= n;
    }
    f.sync_all()?;
    let rate = bytes as f64 / MIB / start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// TCP over loopback, one connection, 4 MiB writes, in MiB/s.
fn loopback_rate(bytes: usize) -> anyhow::Result<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 4 << 20];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    });
    let buf = pattern(4 << 20, 6);
    let start = Instant::now();
    let mut s = std::net::TcpStream::connect(addr)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len());
        s.write_all(&buf[..n])?;
        left -= n;
    }
    drop(s);
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    anyhow::ensure!(got == bytes, "loopback lost bytes");
    Ok(bytes as f64 / MIB / start.elapsed().as_secs_f64())
}

async fn reprotect(args: &Args, rows: &mut Vec<(String, String, String)>) -> anyhow::Result<()> {
    let mut c =
        MetaCluster::start_with_args(1, 20_000, 2_000, &["--out-after", "3", "--gc-grace", "30"])?;
    c.wait_leader(Duration::from_secs(20)).await?;
    c.chunkserver_args = vec![
        "--repair-rate".into(),
        args.repair_rate.clone(),
        "--scrub-rate".into(),
        "0".into(),
    ];
    for n in 1..=4 {
        c.spawn_chunkserver(n, "8G")?;
    }
    c.wait_chunkservers(4, Duration::from_secs(20)).await?;
    let data = Arc::new(DataClient::new(Arc::new(c.client())));
    put(&data, "data", &pattern(args.mib << 20, 7)).await?;
    c.wait_protected(Duration::from_secs(60)).await?;
    let disk = disk_write_rate(c.dir.path(), 1 << 30)?;
    let lo = loopback_rate(2 << 30)?;
    let id = c.chunkserver_id(4).await?;
    c.kill_chunkserver(4);
    c.wait_chunkserver_state(
        id.0,
        sparefs_proto::layout::ChunkserverState::Out,
        Duration::from_secs(30),
    )
    .await?;
    let start = Instant::now();
    c.wait_protected(Duration::from_secs(3600)).await?;
    let secs = start.elapsed().as_secs_f64();
    let Reply::Repair(p) = c.client().call_leader(&Request::RepairStatus).await? else {
        anyhow::bail!("repair status reply");
    };
    // Under ec:2+1 a rebuilt fragment is half a block: it is written once
    // to disk, and two fragments (one block) cross loopback to rebuild it.
    let blocks = p.repaired_bytes as f64 / MIB;
    let written = blocks / 2.0;
    let moved = blocks;
    let floor = (written / disk).max(moved / lo);
    rows.push((
        "disk write (fsync), MiB/s".into(),
        format!("{disk:.0}"),
        "baseline".into(),
    ));
    rows.push((
        "loopback TCP, MiB/s".into(),
        format!("{lo:.0}"),
        "baseline".into(),
    ));
    rows.push((
        format!("re-protect after losing 1 of 4 ({blocks:.0} MiB of blocks), s"),
        format!("{secs:.1}"),
        format!(
            "{:.2} of what disk+loopback allow ({floor:.1} s)",
            floor / secs
        ),
    ));
    rows.push((
        "re-protect, s per GiB of file data".into(),
        format!("{:.1}", secs / (args.mib as f64 / 1024.0)),
        format!("repair rate {} per chunkserver", args.repair_rate),
    ));
    Ok(())
}

async fn failover(args: &Args, rows: &mut Vec<(String, String, String)>) -> anyhow::Result<()> {
    let mut c = MetaCluster::start(3)?;
    let mut times = Vec::new();
    for i in 0..args.failovers {
        let leader = c.wait_leader(Duration::from_secs(20)).await?;
        let client =
            sparefs_client::MetaClient::new(c.addrs.values().cloned().collect(), Caller::ROOT)
                .with_deadline(Duration::from_secs(60));
        client
            .mkdir(InodeId::ROOT, format!("warm{i}").as_bytes(), 0o755)
            .await?;
        c.kill(leader);
        let start = Instant::now();
        client
            .mkdir(InodeId::ROOT, format!("after{i}").as_bytes(), 0o755)
            .await?;
        times.push(start.elapsed().as_secs_f64());
        c.spawn(leader, false)?;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    times.sort_by(|a, b| a.total_cmp(b));
    rows.push((
        format!(
            "meta failover (leader SIGKILL -> next write), s, median of {}",
            times.len()
        ),
        format!("{:.2}", times[times.len() / 2]),
        format!("election timeout 1.0-2.0 s; all: {times:.2?}"),
    ));
    Ok(())
}

async fn stall(rows: &mut Vec<(String, String, String)>) -> anyhow::Result<()> {
    let (mut c, mounts) = sparefs_tests::fs_cluster(1, 1).await?;
    let mnt = mounts[0].clone();
    let job = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<(Instant, Duration)>> {
        let mut f = std::fs::File::create(mnt.join("stall"))?;
        let piece = pattern(1 << 20, 9);
        let mut gaps = Vec::new();
        let mut last = Instant::now();
        for i in 0..400 {
            f.write_all(&piece)?;
            if i % 4 == 3 {
                f.sync_all()?;
            }
            gaps.push((Instant::now(), last.elapsed()));
            last = Instant::now();
        }
        Ok(gaps)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = Instant::now();
    c.kill_chunkserver(2);
    let gaps = job.await??;
    if std::env::var_os("SPAREFS_BENCH_LOGS").is_some() {
        let log = std::fs::read_to_string(c.dir.path().join("mount1.log")).unwrap_or_default();
        println!(
            "{}",
            log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
        println!("--- meta:\n{}", c.log_tail(1));
    }
    let before: Vec<Duration> = gaps
        .iter()
        .filter(|(t, _)| *t < killed_at)
        .map(|g| g.1)
        .collect();
    let after = gaps
        .iter()
        .filter(|(t, _)| *t >= killed_at)
        .map(|g| g.1)
        .max()
        .unwrap_or_default();
    let usual = before.iter().max().copied().unwrap_or_default();
    rows.push((
        "longest writer stall at a chunkserver SIGKILL, ms".into(),
        format!("{}", after.as_millis()),
        format!(
            "longest gap before the kill: {} ms (1 MiB writes, fsync every 4)",
            usual.as_millis()
        ),
    ));
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    let run = |part: &str| args.only.as_deref().is_none_or(|o| o == part);
    if run("reprotect") {
        reprotect(&args, &mut rows).await?;
    }
    if run("failover") {
        failover(&args, &mut rows).await?;
    }
    if run("stall") {
        stall(&mut rows).await?;
    }
    let mut table = String::from("| measure | value | against |\n|---|---|---|\n");
    for (m, v, a) in &rows {
        table.push_str(&format!("| {m} | {v} | {a} |\n"));
    }
    println!("{table}");
    sparefs_bench::write_report(&args.out, "heal", &table)?;
    Ok(())
}
