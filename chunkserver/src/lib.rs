//! The chunkserver: stores fragments under one directory of spare space,
//! within `--limit` and leaving `--reserve` free on the host filesystem;
//! checks blake3 per 64 KiB on every read; fsyncs before acknowledging
//! (one syncfs shared by a batch of fragments); registers with and
//! heartbeats to the meta; checks the meta's capability on every request.
//!
//! Owns: files under its directory. Must not touch: anything outside it,
//! the meta's state (it talks to the meta through `proto` via the client).

mod compact;
mod fragments;
mod repair;
pub mod scrub;
mod service;
mod space;
mod writer;

use anyhow::Context;
use sparefs_client::MetaClient;
use sparefs_proto::msg::{HeartbeatReport, Reply, Request};
use sparefs_proto::namespace::{Caller, NsReply, WriteOp};
use sparefs_proto::ChunkserverId;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use fragments::FragmentStore;
pub use space::{fs_space, parse_size};

pub struct ChunkserverConfig {
    pub dir: PathBuf,
    /// Most bytes of fragments this server keeps.
    pub limit_bytes: u64,
    /// Free bytes to leave on the host filesystem.
    pub reserve_bytes: u64,
    pub meta: Vec<String>,
    pub listen: String,
    /// Bytes per second the background scrub reads (0: no scrub).
    pub scrub_rate: u64,
    /// From the start of one scrub pass to the next.
    pub scrub_every: Duration,
    /// Bytes per second repair tasks read, at most.
    pub repair_rate: u64,
    /// How often the whole inventory goes to the meta (garbage collection).
    pub inventory_every: Duration,
    /// Mutual TLS for every connection in and out, with a certificate of
    /// the chunkserver role (which is then its identity: the meta ties its
    /// registration to the certificate, not to the token file).
    pub tls: Option<Arc<sparefs_wire::tls::Tls>>,
}

pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

fn token(dir: &std::path::Path) -> anyhow::Result<[u8; 16]> {
    let path = dir.join("TOKEN");
    if let Ok(bytes) = std::fs::read(&path) {
        return bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("{} is corrupt", path.display()));
    }
    let t: [u8; 16] = rand::random();
    let tmp = dir.join("TOKEN.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // Whoever reads the token can register as this chunkserver.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&t)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(t)
}

pub async fn run(config: ChunkserverConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.dir)
        .with_context(|| format!("create {}", config.dir.display()))?;
    // Fragments are file contents, the token an identity: only this
    // daemon's user enters the directory (also one made with looser modes).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("make {} private", config.dir.display()))?;
    }
    let store = Arc::new(FragmentStore::open(
        &config.dir,
        config.limit_bytes,
        config.reserve_bytes,
    )?);
    let token = token(&config.dir).context("read or create the chunkserver token")?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    let mut meta =
        MetaClient::new(config.meta.clone(), Caller::ROOT).with_deadline(Duration::from_secs(10));
    if let Some(tls) = &config.tls {
        meta = meta.with_tls(tls.clone());
    }
    let meta = Arc::new(meta);
    let writer = writer::start(store.clone());
    let lost: scrub::LostList = Default::default();
    let svc = Arc::new(service::FragmentService::new(
        store.clone(),
        writer,
        lost.clone(),
    ));
    // Register (retrying until a meta leader answers), then heartbeat.
    let (id, key) = loop {
        let op = WriteOp::RegisterChunkserver {
            address: config.listen.clone(),
            capacity_bytes: store.capacity_bytes(),
            token,
        };
        match meta.write(op).await {
            Ok(NsReply::Registered { id, key }) => break (id, key),
            Ok(other) => anyhow::bail!("unexpected registration reply {other:?}"),
            Err(e) => {
                tracing::warn!("register with the meta: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    svc.set_key(id, key);
    // Counters a dashboard draws exist from the start (at zero), not from
    // their first event.
    for name in [
        "sparefs_chunkserver_read_bytes_total",
        "sparefs_chunkserver_written_bytes_total",
        "sparefs_scrub_passes_total",
        "sparefs_scrub_fragments_checked_total",
        "sparefs_scrub_bad_fragments_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    tracing::info!(chunkserver = id.0, listen = %config.listen, dir = %config.dir.display(), "chunkserver serving");
    scrub::start(
        store.clone(),
        config.scrub_rate,
        config.scrub_every,
        lost.clone(),
    );
    let repairer = repair::Repairer::new(config.repair_rate, config.tls.clone());
    let compactor = Arc::new(compact::Compactor::new(meta.clone()));
    let inventory_wanted = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(heartbeats(
        meta.clone(),
        store.clone(),
        id,
        (repairer, compactor),
        lost,
        inventory_wanted.clone(),
    ));
    tokio::spawn(inventories(
        meta,
        store,
        id,
        config.inventory_every,
        inventory_wanted,
    ));
    sparefs_wire::service::serve(listener, svc, config.tls).await?;
    Ok(())
}

/// Heartbeats: usage, finished repairs and lost fragments up; repair
/// tasks down.
async fn heartbeats(
    meta: Arc<MetaClient>,
    store: Arc<FragmentStore>,
    id: ChunkserverId,
    (repairer, compactor): (Arc<repair::Repairer>, Arc<compact::Compactor>),
    lost: scrub::LostList,
    inventory_wanted: Arc<tokio::sync::Notify>,
) {
    loop {
        let vanished = store.check_root();
        if !vanished.is_empty() {
            lost.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(vanished);
        }
        metrics::gauge!("sparefs_chunkserver_capacity_bytes").set(store.capacity_bytes() as f64);
        metrics::gauge!("sparefs_chunkserver_used_bytes").set(store.used_bytes() as f64);
        metrics::gauge!("sparefs_chunkserver_fragments").set(store.fragment_count() as f64);
        metrics::gauge!("sparefs_chunkserver_errors").set(store.errors() as f64);
        let done = repairer.take_done();
        let gone: Vec<_> = std::mem::take(&mut *lost.lock().unwrap_or_else(|p| p.into_inner()));
        let req = Request::Heartbeat(HeartbeatReport {
            chunkserver: id,
            capacity_bytes: store.capacity_bytes(),
            used_bytes: store.used_bytes(),
            errors: store.errors(),
            done: done.clone(),
            lost: gone.clone(),
            want_tasks: repairer.free(),
            want_compaction: compactor.idle(),
        });
        match meta.call_leader(&req).await {
            Ok(Reply::Tasks {
                repairs,
                compactions,
                inventory_now,
            }) => {
                if inventory_now {
                    inventory_wanted.notify_one();
                }
                for t in repairs {
                    repairer.start(t);
                }
                for (ino, index) in compactions {
                    compactor.start(ino, index);
                }
            }
            Ok(other) => tracing::warn!("heartbeat: unexpected reply {other:?}"),
            Err(e) => {
                tracing::warn!("heartbeat: {e}");
                repairer.restore_done(done);
                lost.lock().unwrap_or_else(|p| p.into_inner()).extend(gone);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
            _ = repairer.finished.notified() => {}
        }
    }
}

/// Garbage is deleted this long after the meta names it.
pub const DELETE_DELAY: Duration = Duration::from_secs(10);

/// Fragments listed per inventory page.
pub const INVENTORY_PAGE: usize = 16_384;

/// Sends the whole inventory to the meta leader every `every`, a page at a
/// time, and deletes the fragments it calls garbage. One the meta asks for
/// (`wanted`) goes at once and is of the disk: the index is reconciled
/// with the directory first (a walk of every file, too dear for every pass).
async fn inventories(
    meta: Arc<MetaClient>,
    store: Arc<FragmentStore>,
    id: ChunkserverId,
    every: Duration,
    wanted: Arc<tokio::sync::Notify>,
) {
    let mut of_disk = false;
    loop {
        if of_disk {
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.reconcile()).await {
                Ok(Ok((0, 0))) => {}
                Ok(Ok((forgotten, added))) => tracing::warn!(
                    forgotten,
                    added,
                    "the fragment index differed from the directory"
                ),
                Ok(Err(e)) => tracing::warn!("reconcile the fragment index: {e}"),
                Err(e) => tracing::warn!("reconcile the fragment index: {e}"),
            }
        }
        match send_inventory(&meta, &store, id).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "garbage fragments deleted"),
            Err(e) => tracing::warn!("inventory: {e}"),
        }
        of_disk = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = wanted.notified() => true,
        };
    }
}

async fn send_inventory(
    meta: &MetaClient,
    store: &Arc<FragmentStore>,
    id: ChunkserverId,
) -> anyhow::Result<usize> {
    let mut after = None;
    let mut deleted = 0;
    loop {
        let (items, last_page) = store.inventory_page(after, INVENTORY_PAGE);
        let next = items.last().map(|(b, s, _)| (*b, *s));
        let req = Request::Inventory {
            chunkserver: id,
            after,
            items,
            last_page,
        };
        match meta.call_leader(&req).await? {
            Reply::Delete(list) => {
                deleted += list.len();
                // Deleted a little later: a reader that fetched a chunk map
                // just before the block was dropped may still be reading.
                let store = store.clone();
                let decided = std::time::SystemTime::now();
                tokio::spawn(async move {
                    tokio::time::sleep(DELETE_DELAY).await;
                    let _ = tokio::task::spawn_blocking(move || {
                        for (block, slot) in list {
                            if let Err(e) = store.delete_unless_newer(block, slot, decided) {
                                tracing::warn!(
                                    block = block.0,
                                    slot,
                                    "delete garbage fragment: {e}"
                                );
                            }
                        }
                    })
                    .await;
                });
            }
            other => anyhow::bail!("unexpected inventory reply {other:?}"),
        }
        if last_page || next.is_none() {
            return Ok(deleted);
        }
        after = next;
    }
}
