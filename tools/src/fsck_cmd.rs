//! `sparefs fsck`: asks the meta leader to check its state (a consistent
//! snapshot; the cluster keeps serving), checks suspects a second time so
//! that changes in flight are not reported as damage, applies the repairs
//! with `--repair` (each only if the damage is still as found), checks
//! again, and exits with e2fsck's bits. `--offline DIR` runs the same
//! check on a stopped replica's database, read-only.

use crate::{current_caller, split_addresses};
use anyhow::{bail, Context};
use sparefs_client::{ClientError, MetaClient};
use sparefs_proto::fsck::{Finding, FsckReport};
use sparefs_proto::msg::{Reply, Request};
use sparefs_proto::namespace::WriteOp;
use sparefs_proto::Errno;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// e2fsck's exit bits.
pub const CLEAN: i32 = 0;
pub const CORRECTED: i32 = 1;
pub const UNCORRECTED: i32 = 4;
pub const OPERATIONAL: i32 = 8;

#[derive(clap::Args)]
pub struct FsckArgs {
    /// Meta replicas to ask.
    #[arg(long, env = "SPAREFS_META")]
    pub meta: Option<String>,
    /// A directory `sparefs up` runs in (reads its cluster.json).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Check a stopped meta replica's data directory instead (read-only).
    #[arg(long, conflicts_with_all = ["meta", "data", "repair"])]
    pub offline: Option<PathBuf>,
    /// Fix what is safe to fix, then check again.
    #[arg(long)]
    pub repair: bool,
    /// Also read every fragment of every block (parity too) and check it
    /// against its chunkserver's checksums and the block's own.
    #[arg(long)]
    pub verify_data: bool,
    /// Fragment bytes read per second at most by --verify-data (K/M/G).
    #[arg(long, default_value = "200M")]
    pub rate: String,
    /// One JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Report only damage under this path.
    pub path: Option<String>,
}

pub async fn run(args: FsckArgs) -> i32 {
    match run_inner(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sparefs fsck: {e:#}");
            OPERATIONAL
        }
    }
}

async fn run_inner(args: FsckArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    if let Some(dir) = &args.offline {
        let store = sparefs_meta::store::ReadOnlyStore::open(dir)
            .with_context(|| format!("opening {} read-only", dir.display()))?;
        let counter = std::sync::Arc::new(sparefs_meta::ns::fsck::Progress::default());
        let progress = Progress::start(args.json, Source::Local(counter.clone()));
        let checked = tokio::task::spawn_blocking(move || {
            sparefs_meta::ns::fsck::check(&store, None, &counter)
        })
        .await;
        progress.done();
        let report = checked.context("the check stopped")??;
        let report = within(report, args.path.as_deref());
        return Ok(finish(&args, &report, &Repairs::default(), started));
    }
    let addresses = match (&args.meta, &args.data) {
        (Some(m), _) => split_addresses(m),
        (None, Some(d)) => crate::up_cmd::read_cluster_file(d)?.meta_addresses(),
        (None, None) => bail!("give --meta ADDRS, --data DIR or --offline DIR"),
    };
    // A check of millions of files takes longer than one ordinary request
    // may: one attempt is given half an hour.
    let mut client =
        crate::meta_client(addresses.clone(), current_caller()).with_deadline(CHECK_TIMEOUT);
    client.attempt_timeout = CHECK_TIMEOUT;
    let watch = Source::Leader(std::sync::Arc::new(crate::meta_client(
        addresses.clone(),
        current_caller(),
    )));
    let first = confirmed(&client, args.json, &watch).await?;
    let mut first = within(first, args.path.as_deref());
    // Replica disagreement is not repairable here: it is reported as found.
    let replicas = compare_replicas(&client, &addresses).await;
    first.findings.extend(replicas.iter().cloned());
    let mut data_repairs = Vec::new();
    let mut data_left: Vec<Finding> = Vec::new();
    let mut verified = None;
    if args.verify_data {
        let rate = sparefs_chunkserver::parse_size(&args.rate, 0).map_err(anyhow::Error::msg)?;
        let root = args.path.clone().unwrap_or_else(|| "/".into());
        let client = std::sync::Arc::new(crate::meta_client(addresses.clone(), current_caller()));
        let v = crate::fsck_verify::verify(client, &root, rate, args.repair).await?;
        if !args.json {
            eprintln!(
                "fsck: verified {} blocks ({} fragment bytes) in {:.1} s ({:.0} MB/s)",
                v.blocks,
                v.bytes,
                v.seconds,
                v.bytes as f64 / v.seconds.max(0.001) / 1e6
            );
        }
        // With --repair these were repaired (or waited for) already.
        verified = Some((v.blocks, v.bytes, v.seconds));
        data_left = v.findings;
        if args.repair {
            for f in data_left.iter_mut() {
                f.fix = None;
            }
        }
        first.findings.extend(data_left.iter().cloned());
        data_repairs = v.repaired;
    }
    let data_fixed = Repairs {
        done: data_repairs,
        verified,
        ..Repairs::default()
    };
    if !args.repair || first.findings.iter().all(|f| f.fix.is_none()) {
        return Ok(finish(&args, &first, &data_fixed, started));
    }
    // Rounds: a repair can change what the next one must do (removing a
    // dangling entry changes its directory's entry count), so check again
    // after each round until nothing repairable is left or nothing changes.
    let mut all = data_fixed;
    let mut report = first;
    for _ in 0..REPAIR_ROUNDS_MAX {
        if report.findings.iter().all(|f| f.fix.is_none()) {
            break;
        }
        let round = repair(&client, &report).await;
        let progress = !round.done.is_empty();
        all.done.extend(round.done);
        all.failed.extend(round.failed);
        all.stale = round.stale;
        report = within(
            confirmed(&client, args.json, &watch).await?,
            args.path.as_deref(),
        );
        if !progress {
            break;
        }
    }
    report.findings.extend(replicas);
    report.findings.extend(data_left);
    Ok(finish(&args, &report, &all, started))
}

/// Longest the meta leader may take over one check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1800);

/// Repair rounds at most (each: repair, then check again).
const REPAIR_ROUNDS_MAX: usize = 4;

/// What `--repair` did (and what `--verify-data` read).
#[derive(Default)]
struct Repairs {
    /// `--verify-data`: blocks, fragment bytes, seconds.
    verified: Option<(u64, u64, f64)>,
    done: Vec<Finding>,
    /// Changed since the check (in the last round: left to the next run).
    stale: usize,
    failed: Vec<(Finding, String)>,
}

async fn repair(client: &MetaClient, report: &FsckReport) -> Repairs {
    let mut r = Repairs::default();
    for f in &report.findings {
        let Some(fix) = f.fix.clone() else { continue };
        match client.write(WriteOp::Repair { fix }).await {
            Ok(_) => r.done.push(f.clone()),
            Err(ClientError::Errno(Errno::ESTALE)) => r.stale += 1,
            Err(e) => r.failed.push((f.clone(), e.to_string())),
        }
    }
    r
}

/// One check; `fresh_inventories`: of the chunkservers' disks from now on
/// (else their last inventories).
async fn check_once(client: &MetaClient, fresh_inventories: bool) -> anyhow::Result<FsckReport> {
    match client
        .call_leader(&Request::Fsck { fresh_inventories })
        .await
    {
        Ok(Reply::Fsck(r)) => Ok(r),
        Ok(other) => bail!("unexpected answer to fsck: {other:?}"),
        Err(e) => Err(e).context("asking the meta leader to check"),
    }
}

/// A check whose findings held in a second check a moment later: a change
/// in flight seen half-done is not damage. The second judges the same
/// inventories: what they found was acted on (a missing fragment marked
/// lost) and is no longer there to find again.
async fn confirmed(client: &MetaClient, quiet: bool, watch: &Source) -> anyhow::Result<FsckReport> {
    let progress = Progress::start(quiet, watch.clone());
    let first = check_once(client, true).await?;
    if first.findings.is_empty() {
        progress.done();
        return Ok(first);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut second = check_once(client, false).await?;
    progress.done();
    let key = |f: &Finding| (f.kind, f.ino, f.detail.clone());
    let seen: std::collections::HashSet<_> = first.findings.iter().map(key).collect();
    second.findings.retain(|f| seen.contains(&key(f)));
    Ok(second)
}

/// Every replica's state digest at one applied index: they must agree.
/// Asked a few times until every replica reports the same index (a busy
/// cluster moves on between two questions); a replica that does not
/// answer is skipped (`status` reports it).
async fn compare_replicas(client: &MetaClient, seeds: &[String]) -> Vec<Finding> {
    let mut members: Vec<String> = seeds.to_vec();
    if let Some(a) = seeds.first() {
        if let Ok(s) = client.status_of(a).await {
            for (_, m) in s.members {
                if !members.contains(&m) {
                    members.push(m);
                }
            }
        }
    }
    for _ in 0..20 {
        let mut got = Vec::new();
        for m in &members {
            if let Ok(d) = client.digest_of(m).await {
                got.push((m.clone(), d));
            }
        }
        if got.len() < 2 {
            return Vec::new();
        }
        if got.iter().any(|(_, d)| d.applied != got[0].1.applied) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        let (first, base) = &got[0];
        let mut out = Vec::new();
        for (m, d) in &got[1..] {
            let differ: Vec<&str> = base
                .cfs
                .iter()
                .zip(&d.cfs)
                .filter(|(a, b)| a != b)
                .map(|(a, _)| a.0.as_str())
                .collect();
            if !differ.is_empty() {
                out.push(Finding {
                    kind: sparefs_proto::fsck::FindingKind::ReplicasDiffer,
                    ino: None,
                    path: None,
                    detail: format!(
                        "at index {}, {m} and {first} differ in {}",
                        base.applied,
                        differ.join(", ")
                    ),
                    fix: None,
                });
            }
        }
        return out;
    }
    eprintln!("fsck: the replicas kept applying entries; their states were not compared");
    Vec::new()
}

/// Keeps the findings under `path` (all without one).
fn within(mut r: FsckReport, path: Option<&str>) -> FsckReport {
    if let Some(p) = path {
        let p = p.trim_end_matches('/');
        r.findings.retain(|f| {
            f.path
                .as_deref()
                .is_some_and(|fp| fp == p || fp.starts_with(&format!("{p}/")) || p.is_empty())
        });
    }
    r
}

/// Where a running check's progress is read: the meta leader's status,
/// or this process's own offline check.
#[derive(Clone)]
enum Source {
    Leader(std::sync::Arc<MetaClient>),
    Local(std::sync::Arc<sparefs_meta::ns::fsck::Progress>),
}

impl Source {
    /// (records read, records estimated), while a check runs.
    async fn get(&self) -> Option<(u64, u64)> {
        match self {
            Source::Leader(c) => {
                let asked = c.call_leader(&Request::Status);
                match tokio::time::timeout(Duration::from_secs(2), asked).await {
                    Ok(Ok(Reply::Status(s))) => s.fsck,
                    _ => None,
                }
            }
            Source::Local(p) => p.get(),
        }
    }
}

/// While a check runs: on a terminal, a bar of records read against the
/// estimate with an ETA; otherwise a line every five seconds.
struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(quiet: bool, source: Source) -> Progress {
        if quiet {
            return Progress { task: None };
        }
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let task = tokio::spawn(async move {
            let began = Instant::now();
            let bar = tty.then(|| {
                let b =
                    indicatif::ProgressBar::new(0).with_finish(indicatif::ProgressFinish::AndClear);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "checking {wide_bar} {human_pos}/~{human_len} records, ETA {eta}",
                ) {
                    b.set_style(style);
                }
                b
            });
            let mut last_line = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = source.get().await;
                if let (Some(b), Some((done, total))) = (&bar, now) {
                    b.set_length(total);
                    b.set_position(done);
                }
                if bar.is_none() && last_line.elapsed() >= Duration::from_secs(5) {
                    last_line = Instant::now();
                    let secs = began.elapsed().as_secs_f64();
                    match now {
                        Some((done, total)) if done > 0 => eprintln!(
                            "fsck: {done} of about {total} records ({:.0}%), about {:.0} s left",
                            100.0 * done as f64 / total as f64,
                            secs * total.saturating_sub(done) as f64 / done as f64
                        ),
                        _ => eprintln!("fsck: still checking ({secs:.0} s)"),
                    }
                }
            }
        });
        Progress { task: Some(task) }
    }

    fn done(self) {
        if let Some(t) = self.task {
            t.abort();
        }
    }
}

fn finish(args: &FsckArgs, report: &FsckReport, repairs: &Repairs, started: Instant) -> i32 {
    let errors = report.findings.iter().filter(|f| f.kind.is_error()).count() as u64 + report.more;
    let code = if errors > 0 || !repairs.failed.is_empty() {
        UNCORRECTED
    } else if !repairs.done.is_empty() {
        CORRECTED
    } else {
        CLEAN
    };
    if args.json {
        let v = serde_json::json!({
            "report": report,
            "repaired": repairs.done,
            "repairs_stale": repairs.stale,
            "repairs_failed": repairs.failed.iter().map(|(f, e)| serde_json::json!({"finding": f, "error": e})).collect::<Vec<_>>(),
            "errors": errors,
            "verified": repairs.verified.map(|(blocks, bytes, seconds)| serde_json::json!({"blocks": blocks, "bytes": bytes, "seconds": seconds})),
            "exit": code,
            "seconds": started.elapsed().as_secs_f64(),
        });
        println!("{v}");
        return code;
    }
    for f in &repairs.done {
        println!("repaired: {:?} {}: {}", f.kind, where_(f), f.detail);
    }
    for (f, e) in &repairs.failed {
        println!(
            "repair failed: {:?} {}: {} ({e})",
            f.kind,
            where_(f),
            f.detail
        );
    }
    if repairs.stale > 0 {
        println!("{} repairs skipped: changed since the check", repairs.stale);
    }
    for f in &report.findings {
        let fix = if f.fix.is_some() {
            " [--repair fixes]"
        } else {
            ""
        };
        println!("{:?} {}: {}{fix}", f.kind, where_(f), f.detail);
    }
    if report.more > 0 {
        println!("... and {} more findings", report.more);
    }
    for pass in &report.inventories {
        println!(
            "chunkserver {}: {} fragment files, {} orphans, {} missing (inventory of {} s ago)",
            pass.chunkserver, pass.fragments, pass.orphans, pass.missing_count, pass.age_secs
        );
    }
    let liveness = if report.liveness_known {
        ""
    } else {
        " (offline: every chunkserver counted as up)"
    };
    println!(
        "fsck: {} inodes ({} directories, {} files, {} bytes), {} chunks, {} slices, {} blocks \
         at index {}; {errors} errors, {} warnings, {} repaired, in {:.1} s{liveness}",
        report.inodes,
        report.dirs,
        report.files,
        report.bytes,
        report.chunks,
        report.slices,
        report.blocks,
        report.applied,
        report.findings.len() as u64 - errors.min(report.findings.len() as u64),
        repairs.done.len(),
        started.elapsed().as_secs_f64()
    );
    code
}

fn where_(f: &Finding) -> String {
    match (&f.path, f.ino) {
        (Some(p), Some(i)) => format!("{p} (inode {})", i.0),
        (None, Some(i)) => format!("inode {}", i.0),
        (Some(p), None) => p.clone(),
        (None, None) => "-".into(),
    }
}
