//! `sparefs meta` and `sparefs chunkserver`: their flags, and turning them
//! into the daemons' configurations. Owns: parsing and checking a daemon's
//! flags. Must not hold daemon logic (that is in the meta and chunkserver
//! crates).

use anyhow::Context;
use sparefs_proto::ReplicaId;
use sparefs_wire::tls::Role;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct MetaArgs {
    /// Serve Prometheus metrics over HTTP on this address (e.g. 0.0.0.0:9101).
    #[arg(long)]
    pub metrics: Option<String>,
    #[arg(long)]
    pub id: u64,
    #[arg(long)]
    pub listen: String,
    /// The initial group: ID=ADDR,... (this replica included); with
    /// --join, replicas of the running group.
    #[arg(long, default_value = "")]
    pub peers: String,
    #[arg(long)]
    pub data: PathBuf,
    /// Start empty and wait to be added with `sparefs admin meta add`.
    #[arg(long)]
    pub join: bool,
    /// Compact the Raft log once this many applied entries are in it.
    #[arg(long, default_value_t = 20_000)]
    pub compact_after: u64,
    #[arg(long, default_value_t = 2_000)]
    pub compact_keep: u64,
    /// Seconds without a heartbeat before a chunkserver is `out` and
    /// its fragments are rebuilt elsewhere (it is `down` after 5).
    #[arg(long, default_value_t = 300)]
    pub out_after: u64,
    /// Seconds a fragment is safe from garbage collection after it is
    /// written, and an uncommitted block is kept for its writer.
    #[arg(long, default_value_t = 600)]
    pub gc_grace: u64,
    /// Fewest hosts new blocks may be written to while hosts are down
    /// (1 lets a lone host accept writes that would not survive it).
    #[arg(long, default_value_t = 2)]
    pub min_hosts: usize,
}

#[derive(clap::Args)]
pub struct ChunkserverArgs {
    /// Serve Prometheus metrics over HTTP on this address (e.g. 0.0.0.0:9101).
    #[arg(long)]
    pub metrics: Option<String>,
    #[arg(long)]
    pub dir: PathBuf,
    /// Most space to use: bytes, K/M/G/T, or a percentage of the filesystem.
    #[arg(long, default_value = "100%")]
    pub limit: String,
    /// Space to leave free on the host filesystem (same units).
    #[arg(long, default_value = "5%")]
    pub reserve: String,
    #[arg(long, env = "SPAREFS_META")]
    pub meta: String,
    #[arg(long)]
    pub listen: String,
    /// Background scrub rate (bytes per second, K/M/G; 0 turns it off).
    #[arg(long, default_value = "16M")]
    pub scrub_rate: String,
    /// Seconds from the start of one scrub pass to the next (a pass
    /// that takes longer is followed by the next at once).
    #[arg(long, default_value_t = 86_400)]
    pub scrub_every: u64,
    /// Most bytes per second read by repair tasks on this server.
    #[arg(long, default_value = "64M")]
    pub repair_rate: String,
    /// Seconds between inventory reports to the meta (garbage collection).
    #[arg(long, default_value_t = 60)]
    pub inventory_every: u64,
}

pub async fn run_meta(a: MetaArgs, tls: Option<PathBuf>) -> anyhow::Result<i32> {
    crate::metrics_http::serve(a.metrics.as_deref(), "meta")?;
    let peers = crate::parse_peers(&a.peers)?;
    let tls = match tls {
        Some(dir) => Some(crate::load_tls_reloading(&dir, Role::Meta, Some(a.id))?),
        None => None,
    };
    sparefs_meta::run(sparefs_meta::MetaConfig {
        id: ReplicaId(a.id),
        listen: a.listen,
        peers,
        data: a.data,
        join: a.join,
        compact_after_entries: a.compact_after,
        compact_keep_entries: a.compact_keep,
        tuning: sparefs_meta::shared::Tuning {
            out_after: Duration::from_secs(a.out_after),
            gc_grace: Duration::from_secs(a.gc_grace),
            min_hosts: a.min_hosts,
        },
        tls,
    })
    .await?;
    Ok(0)
}

pub async fn run_chunkserver(a: ChunkserverArgs, tls: Option<PathBuf>) -> anyhow::Result<i32> {
    crate::metrics_http::serve(a.metrics.as_deref(), "chunkserver")?;
    let tls = match tls {
        Some(dir) => Some(crate::load_tls_reloading(&dir, Role::Chunkserver, None)?),
        None => None,
    };
    let dir = a.dir;
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let (fs_bytes, _) = sparefs_chunkserver::fs_space(&dir)
        .with_context(|| format!("statvfs {}", dir.display()))?;
    let size = |text: &str, whole: u64| {
        sparefs_chunkserver::parse_size(text, whole).map_err(anyhow::Error::msg)
    };
    sparefs_chunkserver::run(sparefs_chunkserver::ChunkserverConfig {
        limit_bytes: size(&a.limit, fs_bytes)?,
        reserve_bytes: size(&a.reserve, fs_bytes)?,
        dir,
        meta: crate::split_addresses(&a.meta),
        listen: a.listen,
        scrub_rate: size(&a.scrub_rate, 0)?,
        scrub_every: Duration::from_secs(a.scrub_every.max(1)),
        repair_rate: size(&a.repair_rate, 0)?,
        inventory_every: Duration::from_secs(a.inventory_every.max(1)),
        tls,
    })
    .await?;
    Ok(0)
}
