//! The chunkserver: stores fragments under one directory of spare space,
//! within `--limit` and leaving `--reserve` free on the host filesystem;
//! checks blake3 per 64 KiB on every read; fsyncs before acknowledging
//! (one syncfs shared by a batch of fragments); registers with and
//! heartbeats to the meta; checks the meta's capability on every request.
//!
//! Owns: files under its directory. Must not touch: anything outside it,
//! the meta's state (it talks to the meta through `proto` via the client).

mod fragments;
mod service;
mod space;
mod writer;

use anyhow::Context;
use sparefs_client::MetaClient;
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
    std::fs::write(&tmp, t)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(t)
}

pub async fn run(config: ChunkserverConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.dir)
        .with_context(|| format!("create {}", config.dir.display()))?;
    let store = Arc::new(FragmentStore::open(
        &config.dir,
        config.limit_bytes,
        config.reserve_bytes,
    )?);
    let token = token(&config.dir).context("read or create the chunkserver token")?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    let meta = Arc::new(
        MetaClient::new(config.meta.clone(), Caller::ROOT).with_deadline(Duration::from_secs(10)),
    );
    let writer = writer::start(store.clone());
    let svc = Arc::new(service::FragmentService::new(store.clone(), writer));
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
    svc.set_key(key);
    tracing::info!(chunkserver = id.0, listen = %config.listen, dir = %config.dir.display(), "chunkserver serving");
    tokio::spawn(heartbeats(meta, store, id));
    sparefs_proto::service::serve(listener, svc).await?;
    Ok(())
}

async fn heartbeats(meta: Arc<MetaClient>, store: Arc<FragmentStore>, id: ChunkserverId) {
    loop {
        if let Err(e) = meta
            .heartbeat(
                id,
                store.capacity_bytes(),
                store.used_bytes(),
                store.errors(),
            )
            .await
        {
            tracing::warn!("heartbeat: {e}");
        }
        tokio::time::sleep(HEARTBEAT_INTERVAL).await;
    }
}
