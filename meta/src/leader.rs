//! The leader's duties beside Raft: chunkserver heartbeats, placement of new
//! blocks, repair and compaction hand-out, garbage collection, lock leases
//! and the reaping of files unlinked while open. Each duty decides; what it
//! decides to change is a `WriteOp` it queues for the driver to propose
//! (`take_proposals`), so every change still goes through the log.
//!
//! Owns: the leader's memory of clients (lease times, open-file reports)
//! and its timers. Must not touch: Raft or the store's write side (the
//! driver's); it reads applied state only.

use crate::kv::{decode, Cf, ReadKv};
use crate::ns;
use crate::shared::{LastHeartbeat, Shared, CHUNKSERVER_DOWN_AFTER};
use crate::store::Store;
use sparefs_proto::layout::{ChunkserverState, Policy, RepairDone, RepairTask};
use sparefs_proto::msg::{HeartbeatReport, RpcError};
use sparefs_proto::namespace::{Time, WriteOp};
use sparefs_proto::{BlockId, ChunkserverId, ClientId, Errno, InodeId};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client silent this long loses its locks (and its open-file report).
pub const LOCK_LEASE: Duration = Duration::from_secs(10);
/// How often the leader looks for deleted files and abandoned blocks.
pub const GC_CHECK_EVERY: Duration = Duration::from_secs(5);
/// A file unlinked while open is freed no sooner than this after the
/// unlink, and a new leader waits this long to hear every mount's opens.
pub const ORPHAN_QUIET: Duration = Duration::from_secs(6);
/// An open on its way when a file was unlinked shows up in the mount's
/// reports within this margin.
pub const ORPHAN_REPORT_MARGIN: Duration = Duration::from_secs(1);

/// The files a mount last said it has open, and when.
struct OpenReport {
    at: Time,
    open: HashSet<InodeId>,
}

/// Repair tasks and chunks to compact, for one chunkserver's heartbeat.
pub type Work = (Vec<RepairTask>, Vec<(InodeId, u64)>);

pub struct LeaderDuties {
    store: Arc<Store>,
    shared: Arc<Shared>,
    /// Lock leases: when each client was last heard from.
    lease_seen: HashMap<ClientId, Instant>,
    open_reports: HashMap<ClientId, OpenReport>,
    last_gc_check: Instant,
    proposals: Vec<WriteOp>,
}

impl LeaderDuties {
    pub fn new(store: Arc<Store>, shared: Arc<Shared>) -> LeaderDuties {
        LeaderDuties {
            store,
            shared,
            lease_seen: HashMap::new(),
            open_reports: HashMap::new(),
            last_gc_check: Instant::now(),
            proposals: Vec::new(),
        }
    }

    /// What the duties decided since the last call, to be proposed.
    pub fn take_proposals(&mut self) -> Vec<WriteOp> {
        std::mem::take(&mut self.proposals)
    }

    /// This replica's role changed. Everything the leader kept in memory
    /// (heartbeats, repair book, leases) belongs to one term: a new leader
    /// starts afresh, giving every lock and delegation holder a full lease.
    pub fn role_changed(&mut self, leader: bool) -> anyhow::Result<()> {
        if let Ok(mut b) = self.shared.repair.lock() {
            b.reset();
        }
        if let Ok(mut t) = self.shared.leader_since.write() {
            *t = leader.then(Instant::now);
        }
        // Heartbeats from an earlier term would make every chunkserver
        // look down or out.
        if let Ok(mut hb) = self.shared.heartbeats.write() {
            hb.clear();
        }
        self.lease_seen.clear();
        self.open_reports.clear();
        self.proposals.clear();
        if !leader {
            return Ok(());
        }
        self.ensure_cluster_key()?;
        for c in ns::lock_holders(&*self.store)? {
            self.lease_seen.insert(c, Instant::now());
        }
        for c in ns::deleg::holders(&*self.store)? {
            self.lease_seen.insert(c, Instant::now());
        }
        Ok(())
    }

    /// A client spoke (a lock request): its lease starts again.
    pub fn heard_from(&mut self, client: ClientId) {
        self.lease_seen.insert(client, Instant::now());
    }

    /// A mount's keep-alive: its lease starts again, and `open` is every
    /// file it has open now.
    pub fn keepalive(&mut self, client: ClientId, open: Vec<InodeId>) {
        self.heard_from(client);
        self.open_reports.insert(
            client,
            OpenReport {
                at: Time::now(),
                open: open.into_iter().collect(),
            },
        );
    }

    /// Records a chunkserver's heartbeat, commits what it finished and
    /// found lost, and hands it new repair and compaction work.
    pub fn heartbeat(&mut self, report: HeartbeatReport) -> Work {
        let server = report.chunkserver;
        if let Ok(mut hb) = self.shared.heartbeats.write() {
            hb.insert(
                server,
                LastHeartbeat {
                    at: Instant::now(),
                    capacity_bytes: report.capacity_bytes,
                    used_bytes: report.used_bytes,
                    errors: report.errors,
                },
            );
        }
        let repairs = self.repair_turn(server, report.done, report.lost, report.want_tasks);
        let compactions = match (report.want_compaction, self.shared.repair.lock()) {
            (true, Ok(mut book)) if self.shared.is_leader_ready() => {
                book.assign_compaction(server).into_iter().collect()
            }
            _ => Vec::new(),
        };
        (repairs, compactions)
    }

    fn repair_turn(
        &mut self,
        server: ChunkserverId,
        done: Vec<RepairDone>,
        lost: Vec<(BlockId, u8)>,
        want: u32,
    ) -> Vec<RepairTask> {
        let tasks = {
            let Ok(mut book) = self.shared.repair.lock() else {
                return Vec::new();
            };
            for d in done {
                if book.finish(&d) {
                    self.proposals.push(WriteOp::RelocateFragments {
                        block: d.block,
                        from_base: d.from_base,
                        policy: d.out_policy,
                        base: d.out_base,
                        written: d.written,
                    });
                }
            }
            let ready = self.shared.is_leader_ready();
            match (ready, want, ns::cluster_key(&*self.store)) {
                (true, 1.., Ok(Some(key))) => match ns::chunkservers(&*self.store, &*self.shared) {
                    Ok(servers) => book.assign(
                        server,
                        want as usize,
                        &servers,
                        &key,
                        Time::now().secs.max(0) as u64,
                    ),
                    Err(e) => {
                        tracing::warn!("list chunkservers for repair: {e}");
                        Vec::new()
                    }
                },
                _ => Vec::new(),
            }
        };
        for (block, slot) in lost {
            tracing::warn!(
                block = block.0,
                slot,
                chunkserver = server.0,
                "fragment reported lost"
            );
            self.proposals.push(WriteOp::LoseFragment {
                block,
                slot,
                server,
            });
        }
        tasks
    }

    /// Fills in where the blocks of an `AllocateBlocks` go (any other
    /// operation passes untouched). The policy came from the network:
    /// placement does arithmetic on it, so it is validated first.
    pub fn place_allocation(&self, op: &mut WriteOp) -> Result<(), RpcError> {
        let WriteOp::AllocateBlocks {
            policy,
            placement,
            exclude,
            wanted,
            ..
        } = op
        else {
            return Ok(());
        };
        policy.validate().map_err(RpcError::BadRequest)?;
        let (p, chosen) = self.place(*policy, exclude)?;
        *wanted = (p != *policy).then_some(*policy);
        *policy = p;
        *placement = chosen;
        Ok(())
    }

    /// Chooses chunkservers for new blocks from the registry and this
    /// leader's heartbeat view: only `up` servers not excluded, weighted by
    /// free space. With fewer than the policy needs, a lowered policy that
    /// still survives one more lost host (see `placement::degraded`).
    fn place(
        &self,
        policy: Policy,
        exclude: &[ChunkserverId],
    ) -> Result<(Policy, Vec<ChunkserverId>), RpcError> {
        use crate::ns::ChunkserverLiveness as _;
        let servers = ns::chunkservers(&*self.store, &*self.shared)
            .map_err(|e| RpcError::Storage(e.to_string()))?;
        let candidates: Vec<(ChunkserverId, u64)> = servers
            .iter()
            .filter(|s| s.state == ChunkserverState::Up && !s.draining && !exclude.contains(&s.id))
            .map(|s| (s.id, s.capacity_bytes.saturating_sub(s.used_bytes)))
            .filter(|(_, free)| *free > 0)
            .collect();
        let fresh_leader = self
            .shared
            .leader_since
            .read()
            .ok()
            .and_then(|t| *t)
            .is_some_and(|t| t.elapsed() < CHUNKSERVER_DOWN_AFTER);
        let unheard = servers
            .iter()
            .any(|s| !exclude.contains(&s.id) && self.shared.live(s.id).is_none());
        if fresh_leader && unheard && candidates.len() < policy.width() {
            // A new leader has not heard every chunkserver's heartbeat yet:
            // ask the client to retry rather than lower the policy or fail.
            return Err(RpcError::Busy);
        }
        let Some(p) =
            crate::placement::degraded(policy, candidates.len(), self.shared.tuning.min_hosts)
        else {
            tracing::warn!(
                %policy,
                hosts = candidates.len(),
                min_hosts = self.shared.tuning.min_hosts,
                "write refused: too few chunkservers up with free space"
            );
            return Err(RpcError::Errno(Errno::ENOSPC));
        };
        let chosen = crate::placement::choose(&candidates, p.width(), &mut rand::thread_rng())
            .map_err(RpcError::Errno)?;
        Ok((p, chosen))
    }

    /// Housekeeping on each tick: expire leases; every few seconds, drop
    /// chunks of deleted files, free orphans no mount holds, and forget
    /// blocks allocated long ago and never committed.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        self.expire_leases();
        if let Ok(mut heard) = self.shared.clients_heard.write() {
            if heard.len() != self.lease_seen.len()
                || !self.lease_seen.keys().all(|c| heard.contains(c))
            {
                *heard = self.lease_seen.keys().copied().collect();
            }
        }
        if !self.shared.is_leader_ready() || self.last_gc_check.elapsed() < GC_CHECK_EVERY {
            return Ok(());
        }
        self.last_gc_check = Instant::now();
        if !self.store.scan(Cf::Deleted, &[], &[], 1)?.is_empty() {
            self.proposals.push(WriteOp::PurgeDeleted);
        }
        self.reap_orphans()?;
        let grace = self.shared.tuning.gc_grace;
        let now = Time::now();
        let before = Time {
            secs: now.secs - grace.as_secs() as i64,
            nanos: now.nanos,
        };
        if let Some((_, v)) = self.store.scan(Cf::Pending, &[], &[], 1)?.first() {
            let at: Time = decode(Cf::Pending, v)?;
            if at < before {
                self.proposals.push(WriteOp::AbandonBlocks { before });
            }
        }
        Ok(())
    }

    /// Proposes to free files unlinked while open (`ns::orphans`) once no
    /// live mount can hold them: unlinked at least `ORPHAN_QUIET` ago, and
    /// every mount whose lease lives has reported its open files since
    /// (`ORPHAN_REPORT_MARGIN` after the unlink, for an open that was on its
    /// way then) without this one. A new leader first waits `ORPHAN_QUIET`
    /// to hear from every mount.
    fn reap_orphans(&mut self) -> anyhow::Result<()> {
        if self.shared.leading_for() < ORPHAN_QUIET {
            return Ok(());
        }
        let orphans = ns::orphans::list(&*self.store, ns::REAP_ORPHANS_MAX)?;
        if orphans.is_empty() {
            return Ok(());
        }
        let now = Time::now();
        let live: Vec<Option<&OpenReport>> = self
            .lease_seen
            .iter()
            .filter(|(_, t)| t.elapsed() <= LOCK_LEASE)
            .map(|(c, _)| self.open_reports.get(c))
            .collect();
        let reap: Vec<InodeId> = orphans
            .into_iter()
            .filter(|(ino, at)| {
                let settled = at.plus(ORPHAN_REPORT_MARGIN);
                at.plus(ORPHAN_QUIET) <= now
                    && live
                        .iter()
                        .all(|r| r.is_some_and(|r| r.at >= settled && !r.open.contains(ino)))
            })
            .map(|(ino, _)| ino)
            .collect();
        if !reap.is_empty() {
            self.proposals.push(WriteOp::ReapOrphans { inos: reap });
        }
        Ok(())
    }

    /// Proposes to drop the locks of clients silent for `LOCK_LEASE`.
    fn expire_leases(&mut self) {
        let expired: Vec<ClientId> = self
            .lease_seen
            .iter()
            .filter(|(_, t)| t.elapsed() > LOCK_LEASE)
            .map(|(c, _)| *c)
            .collect();
        for client in expired {
            self.lease_seen.remove(&client);
            self.open_reports.remove(&client);
            tracing::info!(client = %client, "lock lease expired; releasing its locks");
            self.proposals.push(WriteOp::ExpireClient { client });
        }
    }

    /// A new group has no cluster key yet: its first leader proposes one.
    fn ensure_cluster_key(&mut self) -> anyhow::Result<()> {
        if ns::cluster_key(&*self.store)?.is_some() {
            return Ok(());
        }
        let key: [u8; 32] = rand::random();
        self.proposals.push(WriteOp::SetClusterKey { key });
        Ok(())
    }
}
