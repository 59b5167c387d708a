//! `sparefs chaos`: the pulled-power demo against a cluster `sparefs up`
//! runs. A workload writes files through the mount (fsyncing each) and
//! reads earlier ones back to verify them, while every few seconds a random
//! chunkserver or the meta leader loses its power (SIGKILL; with --sigstop
//! sometimes a hang instead). `up` brings killed daemons back, as a host
//! that boots again. At the end: bytes written and verified, errors the
//! application saw, and the time until every block was fully protected.

use crate::current_caller;
use anyhow::Context;
use rand::{Rng, SeedableRng};
use sparefs_proto::msg::Role;
use sparefs_proto::namespace::{NsReply, ReadOp};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ChaosArgs {
    /// The directory `sparefs up` runs in.
    #[arg(long, default_value = "/var/lib/sparefs")]
    pub(crate) data: PathBuf,
    /// Seconds between faults.
    #[arg(long, default_value_t = 10)]
    every: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seconds a SIGSTOPped daemon stays frozen.
    #[arg(long, default_value_t = 3)]
    down_for: u64,
    /// Freeze daemons (SIGSTOP, then SIGCONT) as well as killing them.
    #[arg(long)]
    sigstop: bool,
    /// Fault only chunkservers, only the meta leader, or both.
    #[arg(long, default_value = "all", value_parser = ["all", "chunkservers", "meta"])]
    targets: String,
    /// Seed of the fault and data choices (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the workload's files afterwards.
    #[arg(long)]
    keep: bool,
}

/// What the workload saw.
#[derive(Default)]
struct Tally {
    written: AtomicU64,
    verified: AtomicU64,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Tally {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_errors.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() < 10 {
            f.push(what);
        }
    }
}

fn file_bytes(seed: u64, n: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    for piece in bytes.chunks(1 << 20) {
        f.write_all(piece)?;
    }
    f.sync_all()
}

fn check_file(path: &Path, want: &[u8]) -> Result<(), String> {
    let mut got = Vec::with_capacity(want.len());
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut got))
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    if got != want {
        return Err(format!("{} differs from what was written", path.display()));
    }
    Ok(())
}

/// Writes and verifies files under `dir` until `stop`; returns the files.
fn workload(dir: &Path, seed: u64, stop: &AtomicBool, tally: &Tally) -> Vec<(u64, usize)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut files: Vec<(u64, usize)> = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let len = rng.gen_range(1..=8usize) << 20;
        let bytes = file_bytes(seed, n, len);
        let path = dir.join(format!("f{n}"));
        match write_file(&path, &bytes) {
            Ok(()) => {
                tally.written.fetch_add(len as u64, Ordering::Relaxed);
                files.push((n, len));
            }
            Err(e) => tally.error(format!("write {}: {e}", path.display())),
        }
        n += 1;
        if let Some(&(m, mlen)) = files.get(rng.gen_range(0..files.len().max(1))) {
            match check_file(&dir.join(format!("f{m}")), &file_bytes(seed, m, mlen)) {
                Ok(()) => {
                    tally.verified.fetch_add(mlen as u64, Ordering::Relaxed);
                }
                Err(e) => tally.error(e),
            }
        }
    }
    files
}

#[allow(unsafe_code)]
fn signal(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) with a pid from cluster.json; no memory is shared.
    unsafe { libc::kill(pid as i32, sig) == 0 }
}

/// The address and pid of the meta leader, by asking each replica.
async fn meta_leader(addresses: &[String], data: &Path) -> Option<(String, u32)> {
    let client = crate::meta_client(addresses.to_vec(), current_caller());
    for a in addresses {
        if let Ok(s) = client.status_of(a).await {
            if s.role == Role::Leader {
                let pid = crate::up_cmd::read_cluster_file(data)
                    .ok()?
                    .pids()
                    .get(a)
                    .copied()?;
                return Some((a.clone(), pid));
            }
        }
    }
    None
}

/// Waits until cluster.json names a new pid for `address` (`up` restarted it).
async fn wait_restarted(data: &Path, address: &str, old: u32) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(f) = crate::up_cmd::read_cluster_file(data) {
            if f.pids().get(address).is_some_and(|p| *p != old) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Every `args.every` seconds for `args.duration`, kills (or stops) the
/// meta leader or a chunkserver, chosen by `seed`. Returns the faults made.
async fn inject_faults(args: &ChaosArgs, metas: &[String], seed: u64) -> anyhow::Result<u32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.rotate_left(17));
    let start = Instant::now();
    let mut faults = 0;
    while start.elapsed() < Duration::from_secs(args.duration) {
        tokio::time::sleep(Duration::from_secs(args.every)).await;
        if start.elapsed() >= Duration::from_secs(args.duration) {
            break;
        }
        let current = crate::up_cmd::read_cluster_file(&args.data)?;
        let hit_meta = match args.targets.as_str() {
            "meta" => true,
            "chunkservers" => false,
            _ => rng.gen_bool(0.3),
        };
        let target = if hit_meta {
            meta_leader(metas, &args.data)
                .await
                .map(|(a, p)| (format!("meta leader {a}"), a, p))
        } else {
            let cs: Vec<_> = current
                .chunkservers
                .iter()
                .filter_map(|(id, a, p)| p.map(|p| (format!("chunkserver {id} {a}"), a.clone(), p)))
                .collect();
            (!cs.is_empty()).then(|| cs[rng.gen_range(0..cs.len())].clone())
        };
        let Some((what, address, pid)) = target else {
            println!(
                "chaos: {:>5.1}s no target found (no leader?)",
                start.elapsed().as_secs_f64()
            );
            continue;
        };
        faults += 1;
        if args.sigstop && rng.gen_bool(0.5) {
            println!(
                "chaos: {:>5.1}s SIGSTOP {what} for {} s",
                start.elapsed().as_secs_f64(),
                args.down_for
            );
            signal(pid, libc::SIGSTOP);
            tokio::time::sleep(Duration::from_secs(args.down_for)).await;
            signal(pid, libc::SIGCONT);
        } else {
            println!(
                "chaos: {:>5.1}s SIGKILL {what}",
                start.elapsed().as_secs_f64()
            );
            signal(pid, libc::SIGKILL);
            if !wait_restarted(&args.data, &address, pid).await {
                println!("chaos: {what} did not come back within 30 s");
            }
        }
    }
    Ok(faults)
}

/// How long until the meta reports every block fully protected, if within
/// 600 s.
async fn protected_again(metas: &[String]) -> Option<Duration> {
    let client = crate::meta_client(metas.to_vec(), current_caller());
    let healed = Instant::now();
    while healed.elapsed() < Duration::from_secs(600) {
        if let Ok(NsReply::Health {
            degraded,
            unreadable,
            ..
        }) = client.read(ReadOp::Health).await
        {
            if degraded == 0 && unreadable == 0 {
                return Some(healed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// Prints the run's summary; returns the errors the application saw.
fn report(
    faults: u32,
    ran: Duration,
    tally: &Tally,
    files: usize,
    protected_after: Option<Duration>,
) -> u64 {
    let errors = tally.errors.load(Ordering::Relaxed);
    println!("chaos: {faults} faults in {:.0} s", ran.as_secs_f64());
    println!(
        "chaos: {} MiB written (fsynced), {} MiB verified, {} files",
        tally.written.load(Ordering::Relaxed) >> 20,
        tally.verified.load(Ordering::Relaxed) >> 20,
        files
    );
    println!("chaos: {errors} errors seen by the application");
    for e in tally
        .first_errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        println!("chaos:   {e}");
    }
    match protected_after {
        Some(t) => println!(
            "chaos: fully protected again {:.1} s after the last fault",
            t.as_secs_f64()
        ),
        None => println!("chaos: NOT fully protected 600 s after the last fault"),
    }
    errors
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<i32> {
    let cluster = crate::up_cmd::read_cluster_file(&args.data)
        .context("chaos runs against a cluster that `sparefs up` started")?;
    let mount = cluster
        .mount
        .clone()
        .context("cluster.json names no mount")?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let dir = mount.join(format!(".chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    println!(
        "chaos: seed {seed}, a fault every {} s for {} s, workload in {}",
        args.every,
        args.duration,
        dir.display()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let worker = {
        let (dir, stop, tally) = (dir.clone(), stop.clone(), tally.clone());
        std::thread::spawn(move || workload(&dir, seed, &stop, &tally))
    };
    let start = Instant::now();
    let metas = cluster.meta_addresses();
    let faults = inject_faults(&args, &metas, seed).await?;
    stop.store(true, Ordering::Relaxed);
    let files = worker
        .join()
        .map_err(|_| anyhow::anyhow!("workload thread panicked"))?;
    // Every file written and fsynced must read back whole.
    for (n, len) in &files {
        match check_file(&dir.join(format!("f{n}")), &file_bytes(seed, *n, *len)) {
            Ok(()) => {
                tally.verified.fetch_add(*len as u64, Ordering::Relaxed);
            }
            Err(e) => tally.error(e),
        }
    }
    let ran = start.elapsed();
    // Time until every block is fully protected again.
    let protected_after = protected_again(&metas).await;
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let errors = report(faults, ran, &tally, files.len(), protected_after);
    Ok(if errors == 0 && protected_after.is_some() {
        0
    } else {
        1
    })
}
