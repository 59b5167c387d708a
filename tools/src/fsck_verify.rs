//! `sparefs fsck --verify-data`: every block of every file under a path
//! read whole (all fragments, parity included) at a bounded rate, several
//! at once, each checked by its chunkserver and end to end
//! (`DataClient::verify_block`). A bad or missing fragment is a finding
//! naming the file and byte; with `--repair` it is marked lost, the
//! cluster rebuilds it from the others, and the block is verified again.

use futures::stream::{self, StreamExt};
use sparefs_client::{DataClient, MetaClient};
use sparefs_proto::fsck::{Finding, FindingKind, Fix};
use sparefs_proto::layout::{BlockRef, Capability};
use sparefs_proto::limits::CHUNK_BYTES;
use sparefs_proto::namespace::{FileKind, WriteOp};
use sparefs_proto::{BlockId, InodeId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Blocks verified at once.
const IN_FLIGHT: usize = 16;
/// How long `--repair` waits for the cluster to rebuild what it marked lost.
const REBUILD_WAIT: Duration = Duration::from_secs(90);

#[derive(Default)]
pub struct Verified {
    pub findings: Vec<Finding>,
    pub repaired: Vec<Finding>,
    pub blocks: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// One block to verify, and who uses it (for the finding).
struct Job {
    block: BlockRef,
    cap: Capability,
    ino: InodeId,
    path: String,
    at: u64,
}

/// Every regular file under `root`: (inode, path, size).
async fn files(meta: &MetaClient, root: &str) -> anyhow::Result<Vec<(InodeId, String, u64)>> {
    let top = meta.resolve(root).await?;
    let root = root.trim_end_matches('/').to_string();
    let mut out = Vec::new();
    if top.kind == FileKind::File {
        out.push((top.ino, root, top.size));
        return Ok(out);
    }
    let mut dirs = VecDeque::from([(top.ino, root)]);
    while let Some((dir, path)) = dirs.pop_front() {
        for e in meta.readdir(dir).await? {
            let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
            match e.kind {
                FileKind::Dir => dirs.push_back((e.ino, p)),
                FileKind::File => {
                    let a = meta.getattr(e.ino).await?;
                    out.push((e.ino, p, a.size));
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The blocks of the files, each once.
async fn jobs(data: &DataClient, files: &[(InodeId, String, u64)]) -> anyhow::Result<Vec<Job>> {
    let mut seen: HashSet<BlockId> = HashSet::new();
    let mut out = Vec::new();
    for (ino, path, size) in files {
        for index in 0..size.div_ceil(CHUNK_BYTES) {
            let (slices, caps) = data.fetch_chunk(*ino, index).await?;
            for s in &slices {
                for b in &s.blocks {
                    if !seen.insert(b.id) {
                        continue;
                    }
                    let Some(cap) = caps.get(&b.id) else { continue };
                    out.push(Job {
                        block: b.clone(),
                        cap: cap.clone(),
                        ino: *ino,
                        path: path.clone(),
                        at: index * CHUNK_BYTES + s.offset as u64,
                    });
                }
            }
        }
    }
    Ok(out)
}

pub async fn verify(
    meta: Arc<MetaClient>,
    root: &str,
    rate: u64,
    repair: bool,
) -> anyhow::Result<Verified> {
    let started = Instant::now();
    let data = Arc::new(DataClient::new(meta.clone()));
    let files = files(&meta, root).await?;
    let jobs = jobs(&data, &files).await?;
    let total: u64 = jobs
        .iter()
        .map(|j| {
            (sparefs_erasure::fragment_len(j.block.policy, j.block.bytes as usize)
                * j.block.fragments.len()) as u64
        })
        .sum();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "verify-data {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            b.set_style(style);
        }
        b
    });
    let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut out = Verified::default();
    let mut last_line = Instant::now();
    let mut results = stream::iter(jobs.into_iter().map(|j| {
        let (data, read) = (data.clone(), read.clone());
        async move {
            // The rate: no block starts before the bytes read so far are due.
            let due = read.load(std::sync::atomic::Ordering::Relaxed) as f64 / rate.max(1) as f64;
            let wait = due - started.elapsed().as_secs_f64();
            if wait > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            }
            let v = data.verify_block(&j.block, &j.cap).await;
            read.fetch_add(v.bytes_read, std::sync::atomic::Ordering::Relaxed);
            (j, v)
        }
    }))
    .buffer_unordered(IN_FLIGHT);
    let mut bad: Vec<(Job, Finding)> = Vec::new();
    while let Some((j, v)) = results.next().await {
        out.blocks += 1;
        out.bytes += v.bytes_read;
        match &bar {
            Some(b) => b.set_position(out.bytes),
            None if last_line.elapsed() > Duration::from_secs(5) => {
                last_line = Instant::now();
                eprintln!("fsck: verified {} of {} bytes", out.bytes, total);
            }
            None => {}
        }
        if v.bad.is_empty() && v.readable {
            continue;
        }
        let where_ = format!("block {} at byte {}", j.block.id, j.at);
        if !v.readable {
            out.findings.push(Finding {
                kind: FindingKind::Unreadable,
                ino: Some(j.ino),
                path: Some(j.path.clone()),
                detail: format!("{where_}: no set of its fragments gives its bytes"),
                fix: None,
            });
            continue;
        }
        for &i in &v.bad {
            let server = j.block.fragments[i];
            let f = Finding {
                kind: FindingKind::BadFragment,
                ino: Some(j.ino),
                path: Some(j.path.clone()),
                detail: format!(
                    "{where_}: fragment {i} (on chunkserver {}) is bad or missing",
                    server.0
                ),
                fix: Some(Fix::LoseFragment {
                    block: j.block.id,
                    slot: j.block.slot(i),
                    server,
                }),
            };
            bad.push((j.clone_job(), f));
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if repair && !bad.is_empty() {
        let (fixed, left) = rebuild(&meta, &data, bad).await;
        out.repaired = fixed;
        out.findings.extend(left);
    } else {
        out.findings.extend(bad.into_iter().map(|(_, f)| f));
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

impl Job {
    fn clone_job(&self) -> Job {
        Job {
            block: self.block.clone(),
            cap: self.cap.clone(),
            ino: self.ino,
            path: self.path.clone(),
            at: self.at,
        }
    }
}

/// Marks each bad fragment lost and waits until the cluster rebuilt it:
/// the block verifies clean again (with its new layout).
async fn rebuild(
    meta: &MetaClient,
    data: &DataClient,
    bad: Vec<(Job, Finding)>,
) -> (Vec<Finding>, Vec<Finding>) {
    let mut waiting: HashMap<BlockId, (Job, Vec<Finding>)> = HashMap::new();
    let mut left = Vec::new();
    for (j, f) in bad {
        let Some(fix) = f.fix.clone() else { continue };
        if let Err(e) = meta.write(WriteOp::Repair { fix }).await {
            left.push(Finding {
                detail: format!("{} (marking it lost failed: {e})", f.detail),
                ..f
            });
            continue;
        }
        waiting
            .entry(j.block.id)
            .or_insert_with(|| (j, Vec::new()))
            .1
            .push(f);
    }
    let mut fixed = Vec::new();
    let start = Instant::now();
    while !waiting.is_empty() && start.elapsed() < REBUILD_WAIT {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let ids: Vec<BlockId> = waiting.keys().copied().collect();
        for id in ids {
            let Some((j, _)) = waiting.get(&id) else {
                continue;
            };
            let index = j.at / CHUNK_BYTES;
            data.invalidate(j.ino);
            let Ok((slices, caps)) = data.fetch_chunk(j.ino, index).await else {
                continue;
            };
            let now = slices
                .iter()
                .flat_map(|s| s.blocks.iter())
                .find(|b| b.id == id)
                .cloned();
            let (Some(block), Some(cap)) = (now, caps.get(&id)) else {
                continue;
            };
            let v = data.verify_block(&block, cap).await;
            if v.readable && v.bad.is_empty() {
                if let Some((_, fs)) = waiting.remove(&id) {
                    fixed.extend(fs);
                }
            }
        }
    }
    left.extend(waiting.into_values().flat_map(|(_, fs)| fs));
    (fixed, left)
}
