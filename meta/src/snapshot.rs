//! Moving a snapshot from the leader to a follower, out of band from Raft's
//! messages: the leader's `snapshot()` makes a RocksDB checkpoint; the
//! follower, on receiving the snapshot message, pulls the checkpoint's state
//! column families piece by piece into a staging file, syncs it, and only
//! then hands the message to Raft, which installs it.

use crate::kv::{Cf, STATE_CFS};
use crate::node::{Input, InputSender};
use crate::raftlog::SnapshotDescriptor;
use crate::shared::Shared;
use crate::store::scan_db;
use raft::prelude::Message;
use sparefs_proto::limits::SNAPSHOT_PIECE_BYTES_MAX;
use sparefs_proto::msg::{Reply, Request, RpcError};
use sparefs_wire::conn::{CallError, Conn, CONNECT_TIMEOUT};
use sparefs_wire::tls::{Identity, Role, Tls};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One piece of a checkpoint's column family, after key `after`.
pub fn serve_piece(
    dir: &Path,
    index: u64,
    cf: u8,
    after: Option<Vec<u8>>,
) -> Result<Reply, RpcError> {
    let cf =
        Cf::from_index(cf).ok_or_else(|| RpcError::BadRequest(format!("no column family {cf}")))?;
    let path = dir.join("snapshots").join(format!("{index:020}"));
    if !path.exists() {
        return Err(RpcError::SnapshotGone(index));
    }
    let mut names = vec![crate::store::CF_RAFT_LOG, crate::store::CF_RAFT_STATE];
    names.extend(STATE_CFS.iter().map(|c| c.name()));
    let db = rocksdb::DB::open_cf_for_read_only(&rocksdb::Options::default(), &path, names, false)
        .map_err(|e| RpcError::Storage(format!("open checkpoint {index}: {e}")))?;
    let handle = db
        .cf_handle(cf.name())
        .ok_or_else(|| RpcError::Storage("checkpoint lacks a column family".into()))?;
    let start = match after {
        Some(mut k) => {
            k.push(0);
            k
        }
        None => Vec::new(),
    };
    let mut items = Vec::new();
    let mut bytes = 0;
    let mut from = start;
    loop {
        let page =
            scan_db(&db, handle, &[], &from, 1024).map_err(|e| RpcError::Storage(e.to_string()))?;
        let exhausted = page.len() < 1024;
        for (k, v) in page {
            bytes += k.len() + v.len() + 16;
            from = k.clone();
            from.push(0);
            items.push((k, v));
            if bytes >= SNAPSHOT_PIECE_BYTES_MAX {
                return Ok(Reply::SnapshotPiece { items, done: false });
            }
        }
        if exhausted {
            return Ok(Reply::SnapshotPiece { items, done: true });
        }
    }
}

/// Longest wait for one piece of a snapshot.
const PIECE_TIMEOUT: Duration = Duration::from_secs(60);

/// Copies snapshot `index` from replica `from` at `address` into `staging`.
async fn fetch(
    (from, address): (u64, &str),
    index: u64,
    staging: &Path,
    tls: Option<&Tls>,
) -> anyhow::Result<()> {
    let conn = Conn::open_with(address, CONNECT_TIMEOUT, tls).await?;
    let leader = Identity::new(Role::Meta, from);
    if let Some(who) = conn.peer().filter(|who| *who != leader) {
        anyhow::bail!("expected {leader} at {address}, its certificate names {who}");
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(staging)?);
    for cf in STATE_CFS {
        let mut after = None;
        loop {
            let piece = Request::SnapshotPiece {
                index,
                cf: cf.index(),
                after: after.clone(),
            };
            let reply = match conn.call(piece, PIECE_TIMEOUT).await {
                Ok(r) => r,
                Err(CallError::Rpc(e)) => return Err(e.into()),
                Err(CallError::Transport(e)) => anyhow::bail!("{address}: {e}"),
            };
            let Reply::SnapshotPiece { items, done } = reply else {
                anyhow::bail!("unexpected reply to a snapshot piece")
            };
            for (k, v) in &items {
                write_staged(&mut file, cf, k, v)?;
            }
            if done {
                break;
            }
            after = items.last().map(|(k, _)| k.clone());
        }
    }
    file.flush()?;
    file.get_ref().sync_all()?;
    Ok(())
}

/// Fetches the snapshot a leader announced, then passes its message on.
pub struct SnapshotFetcher {
    in_progress: Mutex<HashSet<u64>>,
    dir: PathBuf,
}

impl SnapshotFetcher {
    pub fn new(dir: PathBuf) -> Arc<SnapshotFetcher> {
        Arc::new(SnapshotFetcher {
            in_progress: Mutex::new(HashSet::new()),
            dir,
        })
    }

    pub fn start(self: &Arc<Self>, msg: Message, shared: Arc<Shared>, driver: InputSender) {
        let Ok(desc) = crate::kv::decode::<SnapshotDescriptor>(Cf::Sys, &msg.get_snapshot().data)
        else {
            tracing::warn!("snapshot message with an unreadable descriptor dropped");
            return;
        };
        let index = desc.index;
        let (from, address) = (msg.from, desc.address.clone());
        let fresh = self
            .in_progress
            .lock()
            .map(|mut p| p.insert(index))
            .unwrap_or(false);
        if !fresh {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let staging = this.dir.join(format!("incoming-{index:020}"));
            let started = std::time::Instant::now();
            let tls = shared.tls.clone();
            match fetch((from, &address), index, &staging, tls.as_deref()).await {
                Ok(()) => {
                    tracing::info!(
                        index,
                        secs = started.elapsed().as_secs_f64(),
                        "snapshot fetched"
                    );
                    if let Ok(mut staged) = shared.staged_snapshots.lock() {
                        staged.insert(index, staging);
                    }
                    let _ = driver.try_send(Input::Raft(Box::new(msg)));
                }
                Err(e) => tracing::warn!(index, "fetch snapshot from {address}: {e:#}"),
            }
            if let Ok(mut p) = this.in_progress.lock() {
                p.remove(&index);
            }
        });
    }
}

/// One record of a state column family: (family, key, value).
pub type StagedRecord = (Cf, Vec<u8>, Vec<u8>);

/// Staged snapshot records: `[cf u8][key len u32][key][value len u32][value]`.
pub fn read_staged(r: &mut impl Read) -> anyhow::Result<Vec<StagedRecord>> {
    let mut out = Vec::new();
    loop {
        let mut cf = [0u8; 1];
        match r.read_exact(&mut cf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(out),
            Err(e) => return Err(e.into()),
        }
        let cf = Cf::from_index(cf[0]).ok_or_else(|| {
            anyhow::anyhow!("staged snapshot names unknown column family {}", cf[0])
        })?;
        let read_bytes = |r: &mut dyn Read| -> anyhow::Result<Vec<u8>> {
            let mut len = [0u8; 4];
            r.read_exact(&mut len)?;
            let len = u32::from_be_bytes(len) as usize;
            anyhow::ensure!(
                len <= sparefs_proto::limits::FRAME_BYTES_MAX,
                "staged record too long"
            );
            let mut buf = vec![0u8; len];
            r.read_exact(&mut buf)?;
            Ok(buf)
        };
        let k = read_bytes(r)?;
        let v = read_bytes(r)?;
        out.push((cf, k, v));
    }
}

pub fn write_staged(
    w: &mut impl std::io::Write,
    cf: Cf,
    k: &[u8],
    v: &[u8],
) -> std::io::Result<()> {
    w.write_all(&[cf.index()])?;
    w.write_all(&(k.len() as u32).to_be_bytes())?;
    w.write_all(k)?;
    w.write_all(&(v.len() as u32).to_be_bytes())?;
    w.write_all(v)
}
