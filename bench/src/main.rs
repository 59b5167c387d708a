//! Metadata benchmarks: creates/s, stats/s and a mixed namespace workload
//! against 1 and 3 real replicas from 1, 8 and 64 concurrent clients, and a
//! replica's resident memory as the number of files grows. Prints a table
//! and writes it to bench/results/.

use clap::Parser;
use sparefs_client::MetaClient;
use sparefs_proto::namespace::{Caller, RenameMode, SetAttr, TimeSet};
use sparefs_proto::InodeId;
use sparefs_tests::MetaCluster;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Files to create for the memory measurement.
    #[arg(long, default_value_t = 1_000_000)]
    rss_files: u64,
    /// Where to write the table.
    #[arg(long, default_value = "bench/results")]
    out: String,
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

#[derive(Clone, Copy)]
enum Phase {
    Create,
    Stat,
    Mixed,
}

/// Runs `clients` tasks for `secs`; returns operations per second.
async fn phase(
    cluster: &MetaCluster,
    clients: usize,
    secs: u64,
    which: Phase,
    round: u64,
) -> anyhow::Result<f64> {
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = Arc::new(MetaClient::new(
            cluster.addrs.values().cloned().collect(),
            Caller::ROOT,
        ));
        let name = format!("r{round}-c{c}");
        let dir = match client.lookup(InodeId::ROOT, name.as_bytes()).await {
            Ok(a) => a.ino,
            Err(_) => {
                client
                    .mkdir(InodeId::ROOT, name.as_bytes(), 0o755)
                    .await?
                    .ino
            }
        };
        let ops = ops.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            let mut made: Vec<InodeId> = Vec::new();
            while Instant::now() < stop {
                let r = match which {
                    Phase::Create => client
                        .create(dir, format!("f{i}").as_bytes(), 0o644, true)
                        .await
                        .map(|a| made.push(a.ino)),
                    Phase::Stat => client
                        .lookup(dir, format!("f{}", i % 1000).as_bytes())
                        .await
                        .map(|_| ())
                        .or(Ok(())),
                    Phase::Mixed => match i % 10 {
                        0..=4 => client
                            .lookup(dir, format!("m{}", i.saturating_sub(3)).as_bytes())
                            .await
                            .map(|_| ())
                            .or(Ok(())),
                        5 | 6 => client
                            .create(dir, format!("m{i}").as_bytes(), 0o644, true)
                            .await
                            .map(|_| ()),
                        7 => client
                            .setattr(
                                dir,
                                SetAttr {
                                    mtime: Some(TimeSet::Now),
                                    ..Default::default()
                                },
                            )
                            .await
                            .map(|_| ()),
                        8 => client
                            .rename(
                                dir,
                                format!("m{}", i - 3).as_bytes(),
                                dir,
                                format!("n{i}").as_bytes(),
                                RenameMode::Replace,
                            )
                            .await
                            .or(Ok(())),
                        _ => client
                            .unlink(dir, format!("n{}", i - 1).as_bytes())
                            .await
                            .or(Ok(())),
                    },
                };
                if let Err(e) = r {
                    return Err(anyhow::anyhow!("{e}"));
                }
                ops.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok(())
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await??;
    }
    Ok(ops.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64().max(secs as f64))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut table = String::from(
        "| replicas | clients | creates/s | stats/s | mixed ops/s |\n|---|---|---|---|---|\n",
    );
    let mut round = 0;
    for replicas in [1u64, 3] {
        let cluster = MetaCluster::start(replicas)?;
        cluster.wait_leader(Duration::from_secs(20)).await?;
        for clients in [1usize, 8, 64] {
            round += 1;
            let c = phase(&cluster, clients, args.seconds, Phase::Create, round).await?;
            let s = phase(&cluster, clients, args.seconds, Phase::Stat, round).await?;
            let m = phase(&cluster, clients, args.seconds, Phase::Mixed, round).await?;
            let row = format!("| {replicas} | {clients} | {c:.0} | {s:.0} | {m:.0} |\n");
            print!("{row}");
            table.push_str(&row);
        }
    }

    // Memory: one replica, files created by 64 clients in batches.
    let cluster = MetaCluster::start(1)?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let pid = cluster.pid(1).ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let mut mem = String::from("\n| files | replica RSS MiB |\n|---|---|\n");
    let created = Arc::new(AtomicU64::new(0));
    let target = args.rss_files;
    let mut checkpoints = vec![0u64, target / 10, target / 2, target];
    checkpoints.dedup();
    let started = Instant::now();
    let mut workers = Vec::new();
    for c in 0..64u64 {
        let client = MetaClient::new(cluster.addrs.values().cloned().collect(), Caller::ROOT);
        let created = created.clone();
        workers.push(tokio::spawn(async move {
            let dir = client
                .mkdir(InodeId::ROOT, format!("rss{c}").as_bytes(), 0o755)
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
    let mut next = 0;
    while next < checkpoints.len() {
        let done = created.load(Ordering::Relaxed).min(target);
        if done >= checkpoints[next] {
            let row = format!(
                "| {} | {:.0} |\n",
                checkpoints[next],
                rss_kib(pid) as f64 / 1024.0
            );
            print!("{row}");
            mem.push_str(&row);
            next += 1;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for w in workers {
        w.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let row = format!(
        "\n{target} files created in {secs:.0}s ({:.0}/s, 64 clients, 1 replica)\n",
        target as f64 / secs
    );
    print!("{row}");
    mem.push_str(&row);
    sparefs_bench::write_report(
        &args.out,
        "meta",
        &format!(
            "# meta benchmark ({}s phases)\n\n{table}{mem}",
            args.seconds
        ),
    )?;
    Ok(())
}
