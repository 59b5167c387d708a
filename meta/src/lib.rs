//! The sparefs metadata service: one replica of a Raft group (raft-rs
//! `RawNode`) whose log and state machine live in one RocksDB instance.
//!
//! Owns: the namespace, file layouts, the chunkserver registry and
//! placement inputs, id allocation, Raft membership. Must not touch:
//! chunkserver internals (it talks to chunkservers only through `proto`),
//! file data. `ns` (the state machine) knows nothing of Raft; `node` (the
//! Raft driver) knows nothing of inodes.

pub mod access;
pub mod inventory;
pub mod kv;
pub mod leader;
pub mod node;
pub mod ns;
pub mod placement;
pub mod raft_guard;
pub mod raftlog;
pub mod reads;
pub mod repair;
pub mod server;
pub mod shared;
pub mod snapshot;
pub mod store;
pub mod transport;

use anyhow::Context;
use kv::{Cf, Tx};
use node::{Driver, DriverConfig};
use protobuf::Message as _;
use raft::prelude::{ConfState, HardState};
use rocksdb::WriteBatch;
use shared::Shared;
use sparefs_proto::ReplicaId;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use store::{DirState, Store};

pub struct MetaConfig {
    pub id: ReplicaId,
    pub listen: String,
    /// The initial group (id -> address), this replica included. Ignored
    /// once the replica's directory holds state.
    pub peers: BTreeMap<u64, String>,
    pub data: PathBuf,
    /// Start empty and wait to be added with `sparefs admin meta add`;
    /// `peers` then names replicas of the running group to answer.
    pub join: bool,
    pub compact_after_entries: u64,
    pub compact_keep_entries: u64,
    pub tuning: shared::Tuning,
    /// Mutual TLS for every connection in and out (docs/security.md);
    /// None: plaintext.
    pub tls: Option<Arc<sparefs_wire::tls::Tls>>,
}

/// Index and term of the bootstrap point every initial replica starts from.
/// A replica that joins later has an empty log, and since entry 1 exists on
/// no one, the leader must send it a snapshot (which carries the members).
const BOOTSTRAP_INDEX: u64 = 1;

/// Creates a replica directory with the initial state (public for tests).
pub fn initialise(config: &MetaConfig) -> anyhow::Result<Store> {
    let store = Store::create(&config.data)?;
    let mut batch = WriteBatch::default();
    if !config.join {
        anyhow::ensure!(
            config.peers.contains_key(&config.id.0),
            "--peers must include this replica ({}) to start a new group; use --join to be added to a running one",
            config.id
        );
        {
            let mut tx = Tx::new(&store);
            ns::bootstrap(&mut tx)?;
            for (id, addr) in &config.peers {
                tx.put_rec(Cf::Sys, node::member_key(*id), addr);
            }
            tx.put_rec(Cf::Sys, ns::SYS_APPLIED_KEY.to_vec(), &BOOTSTRAP_INDEX);
            store.put_writes(&mut batch, tx.into_writes());
        }
        let mut cs = ConfState::default();
        cs.voters = config.peers.keys().copied().collect();
        let mut hs = HardState::default();
        hs.term = 1;
        hs.commit = BOOTSTRAP_INDEX;
        let state = store.cf(store::CF_RAFT_STATE);
        batch.put_cf(state, b"conf_state", cs.write_to_bytes()?);
        batch.put_cf(state, b"hard_state", hs.write_to_bytes()?);
        let mut trunc = kv::be(BOOTSTRAP_INDEX).to_vec();
        trunc.extend_from_slice(&kv::be(1));
        batch.put_cf(state, b"truncated", trunc);
    }
    store.write_synced(batch)?;
    store.seal(config.id)?;
    Ok(store)
}

/// Opens (or initialises) the replica and serves until the listener or the
/// driver fails.
pub async fn run(config: MetaConfig) -> anyhow::Result<()> {
    anyhow::ensure!(config.id.0 != 0, "replica id 0 is reserved");
    let store = match store::inspect_dir(&config.data, config.id)? {
        DirState::New => initialise(&config).context("initialise replica directory")?,
        DirState::Existing => Store::open(&config.data)?,
    };
    let store = Arc::new(store);
    store.start_syncer().context("start the WAL syncer")?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    let shared = Arc::new(Shared::new(
        config.id,
        config.listen.clone(),
        config.peers.clone(),
        config.tuning.clone(),
        config.tls.clone(),
    ));
    let (tx, rx) = tokio::sync::mpsc::channel(node::INPUT_QUEUE_MAX);
    let runtime = tokio::runtime::Handle::current();
    let transport = transport::Transport::new(shared.clone(), runtime.clone(), tx.clone());
    let driver = Driver::new(
        store.clone(),
        shared.clone(),
        Box::new(transport),
        runtime,
        DriverConfig {
            compact_after_entries: config.compact_after_entries,
            compact_keep_entries: config.compact_keep_entries,
        },
    )?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = done_tx.send(driver.run(rx).await);
    });
    start_repair_planner(store.clone(), shared.clone())?;
    let server = Arc::new(server::Server {
        store,
        shared,
        driver: tx,
        dir: config.data.clone(),
        fetcher: snapshot::SnapshotFetcher::new(config.data.clone()),
        chunkserver_certs: Default::default(),
        fsck_running: std::sync::atomic::AtomicBool::new(false),
    });
    tracing::info!(replica = config.id.0, listen = %config.listen, "meta replica serving");
    tokio::select! {
        r = server.serve(listener) => r,
        r = done_rx => match r {
            Ok(r) => r.context("raft driver stopped"),
            Err(_) => anyhow::bail!("raft driver thread ended"),
        },
    }
}

/// How often the leader scans the block table for repair work: every
/// second, or twice as long as a scan takes (a big table is scanned less
/// often, so planning never takes more than half a core).
pub const REPAIR_SCAN_MIN: std::time::Duration = std::time::Duration::from_secs(1);
pub const REPAIR_SCAN_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// The planner thread: while this replica leads (and has applied its
/// predecessors' entries), rescans the block table for repair work.
fn start_repair_planner(store: Arc<Store>, shared: Arc<Shared>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("repair-planner".into())
        .spawn(move || {
            let mut pause = REPAIR_SCAN_MIN;
            loop {
                std::thread::sleep(pause);
                if !shared.is_leader_ready() {
                    continue;
                }
                let started = std::time::Instant::now();
                let servers = match ns::chunkservers(&*store, &*shared) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("repair planner: {e}");
                        continue;
                    }
                };
                // Plan outside the lock (a scan of every block), then swap in.
                let mut fresh = repair::RepairBook::default();
                if let Err(e) = fresh
                    .plan(&*store, &servers)
                    .and_then(|_| fresh.plan_compactions(&*store))
                {
                    tracing::warn!("repair planner: {e}");
                    continue;
                }
                if let Ok(mut book) = shared.repair.lock() {
                    book.adopt_plan(fresh);
                }
                pause = (started.elapsed() * 2).clamp(REPAIR_SCAN_MIN, REPAIR_SCAN_MAX);
            }
        })?;
    Ok(())
}
