//! State one replica's tasks share: the driver, the leader's duties, the
//! client server and the transport. Leader-only parts (heartbeats, repair
//! book, recalls) live in memory and start empty with each leadership.
//!
//! Owns: membership as last applied, staged snapshot files, the leader's
//! view of chunkserver liveness, the repair book, wanted recalls, tuning.
//! Must not touch: Raft itself or the store's write side (the driver's).

use crate::ns::ChunkserverLiveness;
use crate::repair::RepairBook;
use sparefs_proto::layout::ChunkserverState;
use sparefs_proto::{ChunkserverId, ClientId, InodeId, ReplicaId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// A chunkserver silent this long is `down`: placement skips it.
pub const CHUNKSERVER_DOWN_AFTER: Duration = Duration::from_secs(5);
/// Room a chunkserver needs for one more fragment, or it counts as full.
pub const FULL_MARGIN: u64 = sparefs_proto::limits::BLOCK_BYTES_MAX + (1 << 20);

/// The last heartbeat a chunkserver sent this leader.
#[derive(Clone, Copy)]
pub struct LastHeartbeat {
    pub at: Instant,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub errors: u64,
}

/// State shared by the driver, the server and the transport.
pub struct Shared {
    pub id: ReplicaId,
    pub address: String,
    pub members: RwLock<BTreeMap<u64, String>>,
    /// Snapshot data fetched from a leader, by index, waiting to be installed.
    pub staged_snapshots: Mutex<HashMap<u64, PathBuf>>,
    pub heartbeats: RwLock<HashMap<ChunkserverId, LastHeartbeat>>,
    pub tuning: Tuning,
    /// Mutual TLS for connections in and out; None: plaintext.
    pub tls: Option<std::sync::Arc<sparefs_wire::tls::Tls>>,
    /// When this replica last became leader (None while it is not).
    pub leader_since: RwLock<Option<Instant>>,
    /// Leader that has applied everything committed before its term: its
    /// state is complete enough to judge garbage and plan repairs.
    pub leader_ready: AtomicBool,
    pub repair: Mutex<RepairBook>,
    /// Delegated directories other clients are waiting for (leader only).
    pub recalls: Recalls,
    /// Chunkservers' inventory passes, for fsck (leader only).
    pub inventories: Mutex<crate::inventory::Ledger>,
    /// Clients whose lease the leader keeps (they hold locks or
    /// delegations, or mount): a copy of the leader's table, for fsck.
    pub clients_heard: RwLock<std::collections::HashSet<ClientId>>,
    /// How far the running fsck has come (`status` shows it).
    pub fsck_progress: crate::ns::fsck::Progress,
}

/// The directories a leader wants back from each client, and a wake-up for
/// the clients waiting to hear it (`Request::WaitRecall`).
#[derive(Default)]
pub struct Recalls {
    wanted: Mutex<HashMap<ClientId, BTreeSet<InodeId>>>,
    pub changed: tokio::sync::Notify,
}

impl Recalls {
    /// Asks `holder` for `dir` back.
    pub fn want(&self, holder: ClientId, dir: InodeId) {
        if let Ok(mut w) = self.wanted.lock() {
            if w.entry(holder).or_default().insert(dir) {
                self.changed.notify_waiters();
            }
        }
    }

    /// What `client` is asked to give back (taken: asked once per wait).
    pub fn take(&self, client: ClientId) -> Vec<InodeId> {
        match self.wanted.lock() {
            Ok(mut w) => w
                .remove(&client)
                .map(|s| s.into_iter().collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }
}

/// Times and limits of failure handling, from the command line.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// A chunkserver silent this long is `out`: its fragments are rebuilt.
    pub out_after: Duration,
    /// Fragments younger than this are never collected, and blocks
    /// allocated this long ago and never committed are forgotten.
    pub gc_grace: Duration,
    /// Fewest hosts a block may be written to while hosts are down (1
    /// lets a lone host take writes that would not survive its loss).
    pub min_hosts: usize,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            out_after: Duration::from_secs(300),
            gc_grace: Duration::from_secs(600),
            min_hosts: 2,
        }
    }
}

impl Shared {
    pub fn new(
        id: ReplicaId,
        address: String,
        members: BTreeMap<u64, String>,
        tuning: Tuning,
        tls: Option<std::sync::Arc<sparefs_wire::tls::Tls>>,
    ) -> Shared {
        Shared {
            id,
            address,
            members: RwLock::new(members),
            staged_snapshots: Mutex::new(HashMap::new()),
            heartbeats: RwLock::new(HashMap::new()),
            tuning,
            tls,
            leader_since: RwLock::new(None),
            leader_ready: AtomicBool::new(false),
            repair: Mutex::new(RepairBook::default()),
            recalls: Recalls::default(),
            inventories: Mutex::new(crate::inventory::Ledger::default()),
            clients_heard: RwLock::new(std::collections::HashSet::new()),
            fsck_progress: crate::ns::fsck::Progress::default(),
        }
    }

    pub fn inventories(&self) -> std::sync::MutexGuard<'_, crate::inventory::Ledger> {
        // Plain counters: a panic elsewhere cannot leave them torn.
        self.inventories.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Chunkservers that sent a heartbeat recently.
    pub fn chunkservers_up(&self) -> Vec<ChunkserverId> {
        self.heartbeats
            .read()
            .map(|h| {
                h.iter()
                    .filter(|(_, hb)| hb.at.elapsed() < CHUNKSERVER_DOWN_AFTER)
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn is_leader_ready(&self) -> bool {
        self.leader_ready.load(Ordering::Acquire)
    }

    /// How long this replica has led (zero while it does not).
    pub fn leading_for(&self) -> Duration {
        self.leader_since
            .read()
            .ok()
            .and_then(|t| *t)
            .map_or(Duration::ZERO, |t| t.elapsed())
    }
}

impl ChunkserverLiveness for Shared {
    fn live(&self, id: ChunkserverId) -> Option<(ChunkserverState, u64, u64)> {
        let hb = *self.heartbeats.read().ok()?.get(&id)?;
        let state = if hb.at.elapsed() > self.tuning.out_after {
            ChunkserverState::Out
        } else if hb.at.elapsed() > CHUNKSERVER_DOWN_AFTER {
            ChunkserverState::Down
        } else if hb.used_bytes + FULL_MARGIN >= hb.capacity_bytes {
            // Less room than one more fragment: full, so placement skips it.
            ChunkserverState::Full
        } else {
            ChunkserverState::Up
        };
        Some((state, hb.capacity_bytes, hb.used_bytes))
    }

    fn silent_state(&self) -> ChunkserverState {
        // Not heard from since this replica became leader (heartbeats live
        // in the leader's memory): out once that is longer than out_after.
        match self.leader_since.read().ok().and_then(|t| *t) {
            Some(t) if t.elapsed() > self.tuning.out_after => ChunkserverState::Out,
            _ => ChunkserverState::Down,
        }
    }
}
