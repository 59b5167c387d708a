//! The Raft driver: one task owns the `RawNode` and the store's write
//! side. Everything else talks to it through one bounded channel of `Input`.
//!
//! Each turn of the loop: take inputs (batching every proposal that arrived
//! into one entry, and every read into one ReadIndex round), tick on time,
//! then handle the `Ready` in the order raft-rs documents:
//!   1. send the leader's messages (safe before persisting);
//!   2. install a snapshot, if any (one synced batch);
//!   3. a leader applies committed entries and stores the hard state (one
//!      batch), answers their clients, then appends new entries (another);
//!      a follower appends new entries and stores the hard state (one
//!      batch), sends its persisted messages (votes, append responses), then
//!      applies. The hard state never lands after the applied index it
//!      covers. A batch is synced when it holds a durable entry
//!      (`needs_sync`) or a new term or vote; otherwise it goes to the OS and
//!      the WAL syncer thread puts it on disk a moment later (see
//!      `WriteOp::must_be_durable`);
//!   4. a leader sends its persisted messages; `advance`;
//!   5. the light ready: commit index, messages, committed entries (another
//!      batch, unsynced), `advance_apply`;
//!   6. serve reads whose ReadIndex is now applied; compact the log.
//! A storage error stops the driver (and the replica): applying on after a
//! failed write would let replicas diverge.

use crate::kv::{decode, encode, Cf, ReadKv, Tx, STATE_CFS};
use crate::ns::{self, ChunkserverLiveness, Command};
use crate::raftlog::{RaftLog, SnapshotDescriptor};
use crate::repair::RepairBook;
use crate::store::Store;
use protobuf::Message as _;
use raft::prelude::*;
use raft::StateRole;
use rocksdb::WriteBatch;
use sparefs_proto::layout::{ChunkserverState, Policy, RepairDone, RepairTask};
use sparefs_proto::msg::{ReplicaStatus, Role, RpcError};
use sparefs_proto::namespace::{Caller, NsReply, ReadOp, Time, WriteOp};
use sparefs_proto::{BlockId, ChunkserverId, Errno, InodeId, ReplicaId, RequestId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub const TICK_MS: u64 = 100;
pub const ELECTION_TICKS: usize = 10;
pub const INPUT_QUEUE_MAX: usize = 8192;
/// Context of an entry holding a command that must be on disk before it is
/// acknowledged (`WriteOp::must_be_durable`).
const ENTRY_DURABLE: u8 = 1;

/// Whether persisting this entry must wait for the disk: durable commands
/// and membership changes. Other entries reach the disk through the WAL
/// syncer a moment later, or with the next synced write (the WAL is one
/// sequence, so syncing an entry syncs everything before it).
fn needs_sync(e: &Entry) -> bool {
    e.get_entry_type() != EntryType::EntryNormal || e.context.first() == Some(&ENTRY_DURABLE)
}
/// Most bytes of commands packed into one Raft entry.
pub const ENTRY_BYTES_MAX: usize = 1024 * 1024;
/// A chunkserver silent for this long is `down`.
pub const CHUNKSERVER_DOWN_AFTER: Duration = Duration::from_secs(5);
/// A mount silent this long loses its locks.
pub const LOCK_LEASE: Duration = Duration::from_secs(10);
/// A chunkserver with less free room than this is `full`.
pub const FULL_MARGIN: u64 = sparefs_proto::limits::BLOCK_BYTES_MAX + (1 << 20);
/// How often the leader looks for deleted files and abandoned blocks.
pub const GC_CHECK_EVERY: Duration = Duration::from_secs(5);
/// A file unlinked while open is freed no sooner than this after its
/// unlink (mounts report their open files every 2 s).
pub const ORPHAN_QUIET: Duration = Duration::from_secs(6);
/// A mount's report of its open files counts for an unlink only if the
/// leader received it this long after the unlink.
pub const ORPHAN_REPORT_MARGIN: Duration = Duration::from_secs(1);

/// The files a mount said it has open, and when the leader heard it.
struct OpenReport {
    at: Time,
    open: std::collections::HashSet<InodeId>,
}
const STATE_WIPE_END: [u8; 512] = [0xff; 512];

pub type Reply<T> = oneshot::Sender<Result<T, RpcError>>;

pub enum Input {
    Raft(Box<Message>),
    Write {
        caller: Caller,
        id: RequestId,
        op: WriteOp,
        reply: Reply<NsReply>,
    },
    Read {
        client: sparefs_proto::ClientId,
        caller: Caller,
        op: ReadOp,
        reply: Reply<NsReply>,
    },
    ConfChange {
        id: RequestId,
        cc: ConfChange,
        address: String,
        reply: Reply<()>,
    },
    Status(oneshot::Sender<ReplicaStatus>),
    TransferLeader {
        replica: ReplicaId,
        reply: Reply<()>,
    },
    KeepAlive {
        client: sparefs_proto::ClientId,
        open: Vec<InodeId>,
        reply: Reply<()>,
    },
    SnapshotSent {
        to: u64,
        ok: bool,
    },
    Unreachable(u64),
    Heartbeat {
        chunkserver: ChunkserverId,
        capacity_bytes: u64,
        used_bytes: u64,
        errors: u64,
        done: Vec<RepairDone>,
        lost: Vec<(BlockId, u8)>,
        want_tasks: u32,
        want_compaction: bool,
        reply: Reply<(Vec<RepairTask>, Vec<(InodeId, u64)>)>,
    },
    /// A command the leader itself decided on (no one waits for it).
    Propose(WriteOp),
}

#[derive(Clone, Copy)]
pub struct Heartbeat {
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
    pub heartbeats: RwLock<HashMap<ChunkserverId, Heartbeat>>,
    pub tuning: Tuning,
    /// When this replica last became leader (None while it is not).
    pub leader_since: RwLock<Option<Instant>>,
    /// Leader that has applied everything committed before its term: its
    /// state is complete enough to judge garbage and plan repairs.
    pub leader_ready: AtomicBool,
    pub repair: Mutex<RepairBook>,
    /// Delegated directories other clients are waiting for (leader only).
    pub recalls: Recalls,
}

/// The directories a leader wants back from each client, and a wake-up for
/// the clients waiting to hear it (`Request::WaitRecall`).
#[derive(Default)]
pub struct Recalls {
    wanted: Mutex<HashMap<sparefs_proto::ClientId, BTreeSet<InodeId>>>,
    pub changed: tokio::sync::Notify,
}

impl Recalls {
    /// Asks `holder` for `dir` back.
    pub fn want(&self, holder: sparefs_proto::ClientId, dir: InodeId) {
        if let Ok(mut w) = self.wanted.lock() {
            if w.entry(holder).or_default().insert(dir) {
                self.changed.notify_waiters();
            }
        }
    }

    /// What `client` is asked to give back (taken: asked once per wait).
    pub fn take(&self, client: sparefs_proto::ClientId) -> Vec<InodeId> {
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
    ) -> Shared {
        Shared {
            id,
            address,
            members: RwLock::new(members),
            staged_snapshots: Mutex::new(HashMap::new()),
            heartbeats: RwLock::new(HashMap::new()),
            tuning,
            leader_since: RwLock::new(None),
            leader_ready: AtomicBool::new(false),
            repair: Mutex::new(RepairBook::default()),
            recalls: Recalls::default(),
        }
    }

    pub fn is_leader_ready(&self) -> bool {
        self.leader_ready.load(Ordering::Acquire)
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

pub trait Outbox: Send {
    fn send(&self, msgs: Vec<Message>);
}

pub struct DriverConfig {
    pub compact_after_entries: u64,
    pub compact_keep_entries: u64,
}

pub struct Driver {
    raw: RawNode<RaftLog>,
    store: Arc<Store>,
    shared: Arc<Shared>,
    outbox: Box<dyn Outbox>,
    runtime: tokio::runtime::Handle,
    applied: u64,
    pending_writes: Vec<Command>,
    waiters: HashMap<(u128, u64), Reply<NsReply>>,
    conf_waiters: HashMap<(u128, u64), Reply<()>>,
    pending_reads: Vec<PendingRead>,
    awaiting_reads: HashMap<u64, Vec<PendingRead>>,
    ready_reads: Vec<(u64, Vec<PendingRead>)>,
    next_read_ctx: u64,
    pending_member_reload: bool,
    /// Lock leases: when each client was last heard from (leader only).
    lease_seen: HashMap<sparefs_proto::ClientId, Instant>,
    /// Leader: the files each mount last said it has open, and when.
    open_reports: HashMap<sparefs_proto::ClientId, OpenReport>,
    internal_seq: u64,
    config: DriverConfig,
    /// Last time the leader looked for deleted files and abandoned blocks.
    last_gc_check: Instant,
}

pub fn member_key(id: u64) -> Vec<u8> {
    let mut k = b"member/".to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn load_members(store: &Store) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for (k, v) in store.scan(Cf::Sys, b"member/", b"member/", usize::MAX)? {
        let id =
            crate::kv::read_be(&k[7..]).ok_or_else(|| anyhow::anyhow!("corrupt member key"))?;
        out.insert(id, decode::<String>(Cf::Sys, &v)?);
    }
    Ok(out)
}

/// Forwards raft-rs's slog records into `tracing` (target `raft`).
struct SlogToTracing;

impl slog::Drain for SlogToTracing {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        struct Kv(String);
        impl slog::Serializer for Kv {
            fn emit_arguments(
                &mut self,
                key: slog::Key,
                val: &std::fmt::Arguments,
            ) -> slog::Result {
                self.0.push_str(&format!(" {key}={val}"));
                Ok(())
            }
        }
        let mut kv = Kv(String::new());
        let _ = slog::KV::serialize(&record.kv(), record, &mut kv);
        let _ = slog::KV::serialize(values, record, &mut kv);
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}{}", record.msg(), kv.0)
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}{}", record.msg(), kv.0),
            slog::Level::Info => tracing::info!(target: "raft", "{}{}", record.msg(), kv.0),
            _ => tracing::debug!(target: "raft", "{}{}", record.msg(), kv.0),
        }
        Ok(())
    }
}

fn raft_logger() -> slog::Logger {
    slog::Logger::root(SlogToTracing, slog::o!())
}

impl Driver {
    pub fn new(
        store: Arc<Store>,
        shared: Arc<Shared>,
        outbox: Box<dyn Outbox>,
        runtime: tokio::runtime::Handle,
        config: DriverConfig,
    ) -> anyhow::Result<Driver> {
        let mut log = RaftLog::load(store.clone())?;
        log.address = shared.address.clone();
        let applied = crate::raftlog::ns_applied(&store)?;
        let raft_config = Config {
            id: shared.id.0,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: 1,
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            // Reads are served on the leader's lease (check_quorum keeps it
            // honest): no heartbeat round per read. Safe while clocks drift
            // less than the election timeout between replicas.
            read_only_option: raft::ReadOnlyOption::LeaseBased,
            // Followers learn a new commit index with the next append or
            // heartbeat (100 ms) instead of from a message of its own: a
            // send and a wake-up less per write on every replica, and only
            // the leader answers clients.
            skip_bcast_commit: true,
            ..Default::default()
        };
        raft_config.validate()?;
        let raw = RawNode::new(&raft_config, log, &raft_logger())?;
        // A replica that joined and has not yet installed a snapshot knows
        // the group only from its command line (already in `shared`).
        let stored = load_members(&store)?;
        if !stored.is_empty() {
            *shared
                .members
                .write()
                .map_err(|_| anyhow::anyhow!("members lock poisoned"))? = stored;
        }
        Ok(Driver {
            raw,
            store,
            shared,
            outbox,
            runtime,
            applied,
            pending_writes: Vec::new(),
            waiters: HashMap::new(),
            conf_waiters: HashMap::new(),
            pending_reads: Vec::new(),
            awaiting_reads: HashMap::new(),
            ready_reads: Vec::new(),
            next_read_ctx: 1,
            pending_member_reload: false,
            lease_seen: HashMap::new(),
            open_reports: HashMap::new(),
            internal_seq: 0,
            config,
            last_gc_check: Instant::now(),
        })
    }

    /// Runs until every sender of `rx` is gone or storage fails. It is a
    /// task on the replica's single-threaded runtime, beside the connections
    /// that feed it: a message handed between them costs a queue push, not
    /// a thread wake-up (on a small shared host, context switches were most
    /// of a write's cost). Its RocksDB writes block that thread briefly.
    pub async fn run(mut self, mut rx: InputReceiver) -> anyhow::Result<()> {
        let tick = Duration::from_millis(TICK_MS);
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(input)) => {
                    self.handle(input);
                    for _ in 0..INPUT_QUEUE_MAX {
                        match rx.try_recv() {
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                }
                Err(_elapsed) => {}
                Ok(None) => return Ok(()),
            }
            if Instant::now() >= next_tick {
                // Ticks missed while the process was frozen (SIGSTOP, a
                // stalled VM) are made up, so a leader's lease runs out in
                // real time and it steps down instead of serving stale reads.
                let missed = (Instant::now() - next_tick).as_millis() as u64 / TICK_MS;
                for _ in 0..=missed.min(4 * ELECTION_TICKS as u64) {
                    self.raw.tick();
                }
                next_tick = Instant::now() + tick;
                self.expire_leases();
                self.collect_garbage()?;
            }
            self.flush_writes();
            self.flush_reads();
            self.on_ready().await?;
        }
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn not_leader(&self) -> RpcError {
        let leader = self.raw.raft.leader_id;
        let address = self
            .shared
            .members
            .read()
            .ok()
            .and_then(|m| m.get(&leader).cloned());
        RpcError::NotLeader {
            leader: address.map(|a| (ReplicaId(leader), a)),
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Raft(mut msg) => {
                let log = &self.raw.raft.raft_log;
                let prs = self.raw.raft.prs();
                let term = |i: u64| log.term(i).ok();
                let is_member = |id: u64| prs.get(id).is_some();
                let view = crate::raft_guard::LogView {
                    last_index: log.last_index(),
                    committed: log.committed,
                    term: &term,
                    is_member: &is_member,
                    configured: prs.iter().next().is_some(),
                };
                if let Err(e) = crate::raft_guard::admit_to_log(&mut msg, &view) {
                    tracing::warn!(from = msg.from, "dropped a raft message: {e}");
                    return;
                }
                if let Err(e) = self.raw.step(*msg) {
                    tracing::debug!("raft step: {e}");
                }
            }
            Input::Write {
                caller,
                id,
                mut op,
                reply,
            } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                if let WriteOp::SetLock { lock, .. } = &op {
                    self.lease_seen.insert(lock.client, Instant::now());
                }
                if let WriteOp::AllocateBlocks {
                    policy,
                    placement,
                    exclude,
                    wanted,
                    ..
                } = &mut op
                {
                    // The policy came from the network: placement does
                    // arithmetic on it (ec:255+255 would wrap).
                    if let Err(e) = policy.validate() {
                        let _ = reply.send(Err(RpcError::BadRequest(e)));
                        return;
                    }
                    match self.place(*policy, exclude) {
                        Ok((p, chosen)) => {
                            if p != *policy {
                                *wanted = Some(*policy);
                                *policy = p;
                            } else {
                                *wanted = None;
                            }
                            *placement = chosen;
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            return;
                        }
                    }
                }
                self.waiters.insert((id.client.0, id.seq), reply);
                self.pending_writes.push(Command {
                    id,
                    caller,
                    op,
                    now: Time::now(),
                });
            }
            Input::Read {
                client,
                caller,
                op,
                reply,
            } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                self.pending_reads.push((client, caller, op, reply));
            }
            Input::ConfChange {
                id,
                cc,
                address,
                reply,
            } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                let context = encode(&(id, address));
                match self.raw.propose_conf_change(context, cc) {
                    Ok(()) => {
                        self.conf_waiters.insert((id.client.0, id.seq), reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RpcError::BadRequest(format!(
                            "configuration change refused: {e}"
                        ))));
                    }
                }
            }
            Input::KeepAlive {
                client,
                open,
                reply,
            } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                self.lease_seen.insert(client, Instant::now());
                self.open_reports.insert(
                    client,
                    OpenReport {
                        at: Time::now(),
                        open: open.into_iter().collect(),
                    },
                );
                let _ = reply.send(Ok(()));
            }
            Input::TransferLeader { replica, reply } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                self.raw.transfer_leader(replica.0);
                let _ = reply.send(Ok(()));
            }
            Input::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Input::SnapshotSent { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Input::Unreachable(to) => self.raw.report_unreachable(to),
            Input::Heartbeat {
                chunkserver,
                capacity_bytes,
                used_bytes,
                errors,
                done,
                lost,
                want_tasks,
                want_compaction,
                reply,
            } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                if let Ok(mut hb) = self.shared.heartbeats.write() {
                    hb.insert(
                        chunkserver,
                        Heartbeat {
                            at: Instant::now(),
                            capacity_bytes,
                            used_bytes,
                            errors,
                        },
                    );
                }
                let repairs = self.repair_turn(chunkserver, done, lost, want_tasks);
                let compactions = match (want_compaction, self.shared.repair.lock()) {
                    (true, Ok(mut book)) if self.shared.is_leader_ready() => {
                        book.assign_compaction(chunkserver).into_iter().collect()
                    }
                    _ => Vec::new(),
                };
                let _ = reply.send(Ok((repairs, compactions)));
            }
            Input::Propose(op) => {
                if self.is_leader() {
                    self.propose_internal(op);
                }
            }
        }
    }

    /// Commits what a chunkserver finished and found lost, and hands it
    /// new repair tasks.
    fn repair_turn(
        &mut self,
        server: ChunkserverId,
        done: Vec<RepairDone>,
        lost: Vec<(BlockId, u8)>,
        want: u32,
    ) -> Vec<RepairTask> {
        let mut commits = Vec::new();
        let tasks = {
            let Ok(mut book) = self.shared.repair.lock() else {
                return Vec::new();
            };
            for d in done {
                if book.finish(&d) {
                    commits.push(WriteOp::RelocateFragments {
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
        for op in commits {
            self.propose_internal(op);
        }
        for (block, slot) in lost {
            tracing::warn!(
                block = block.0,
                slot,
                chunkserver = server.0,
                "fragment reported lost"
            );
            self.propose_internal(WriteOp::LoseFragment {
                block,
                slot,
                server,
            });
        }
        tasks
    }

    fn propose_internal(&mut self, op: WriteOp) {
        let id = RequestId {
            client: sparefs_proto::ClientId(u128::MAX - self.shared.id.0 as u128),
            seq: self.next_internal_seq(),
            ack_below: 0,
        };
        self.pending_writes.push(Command {
            id,
            caller: Caller::ROOT,
            op,
            now: Time::now(),
        });
    }

    /// Leader housekeeping every few seconds: drop chunks of deleted files,
    /// forget blocks allocated long ago and never committed.
    fn collect_garbage(&mut self) -> anyhow::Result<()> {
        if !self.shared.is_leader_ready() || self.last_gc_check.elapsed() < GC_CHECK_EVERY {
            return Ok(());
        }
        self.last_gc_check = Instant::now();
        if !self.store.scan(Cf::Deleted, &[], &[], 1)?.is_empty() {
            self.propose_internal(WriteOp::PurgeDeleted);
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
                self.propose_internal(WriteOp::AbandonBlocks { before });
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
        let leading_for = self
            .shared
            .leader_since
            .read()
            .ok()
            .and_then(|t| *t)
            .map_or(Duration::ZERO, |t| t.elapsed());
        if leading_for < ORPHAN_QUIET {
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
            self.propose_internal(WriteOp::ReapOrphans { inos: reap });
        }
        Ok(())
    }

    /// Proposes to drop the locks of clients silent for `LOCK_LEASE`.
    fn expire_leases(&mut self) {
        if !self.is_leader() {
            return;
        }
        let expired: Vec<sparefs_proto::ClientId> = self
            .lease_seen
            .iter()
            .filter(|(_, t)| t.elapsed() > LOCK_LEASE)
            .map(|(c, _)| *c)
            .collect();
        for client in expired {
            self.lease_seen.remove(&client);
            self.open_reports.remove(&client);
            tracing::info!(client = %client, "lock lease expired; releasing its locks");
            self.propose_internal(WriteOp::ExpireClient { client });
        }
    }

    fn next_internal_seq(&mut self) -> u64 {
        // Unique per leader term and proposal: term in the high bits.
        self.internal_seq += 1;
        (self.raw.raft.term << 32) | (self.internal_seq & 0xffff_ffff)
    }

    /// A new group has no cluster key yet: its first leader proposes one.
    fn ensure_cluster_key(&mut self) -> anyhow::Result<()> {
        if ns::cluster_key(&*self.store)?.is_some() {
            return Ok(());
        }
        let key: [u8; 32] = rand::random();
        self.propose_internal(WriteOp::SetClusterKey { key });
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

    pub fn status(&self) -> ReplicaStatus {
        let role = match self.raw.raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower => Role::Follower,
        };
        let leader = self.raw.raft.leader_id;
        ReplicaStatus {
            id: self.shared.id,
            address: self.shared.address.clone(),
            role,
            term: self.raw.raft.term,
            commit: self.raw.raft.raft_log.committed,
            applied: self.applied,
            leader: (leader != 0).then_some(ReplicaId(leader)),
            pid: std::process::id(),
            members: self
                .shared
                .members
                .read()
                .map(|m| {
                    m.iter()
                        .map(|(id, a)| (ReplicaId(*id), a.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            first_log_index: self.raw.store().first(),
            last_log_index: self.raw.store().last(),
        }
    }

    /// Packs every waiting command into as few entries as fit.
    fn flush_writes(&mut self) {
        if self.pending_writes.is_empty() {
            return;
        }
        let cmds = std::mem::take(&mut self.pending_writes);
        let mut batch: Vec<Command> = Vec::new();
        let mut bytes = 0;
        let mut entries = Vec::new();
        for cmd in cmds {
            let size = encode(&cmd).len();
            if !batch.is_empty() && bytes + size > ENTRY_BYTES_MAX {
                entries.push(std::mem::take(&mut batch));
                bytes = 0;
            }
            bytes += size;
            batch.push(cmd);
        }
        entries.push(batch);
        for cmds in entries {
            let context = if cmds.iter().any(|c| c.op.must_be_durable()) {
                vec![ENTRY_DURABLE]
            } else {
                Vec::new()
            };
            if let Err(e) = self.raw.propose(context, encode(&cmds)) {
                tracing::debug!("proposal dropped: {e}");
                let err = self.not_leader();
                for cmd in &cmds {
                    if let Some(w) = self.waiters.remove(&(cmd.id.client.0, cmd.id.seq)) {
                        let _ = w.send(Err(err.clone()));
                    }
                }
            }
        }
    }

    fn flush_reads(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.awaiting_reads
            .insert(ctx, std::mem::take(&mut self.pending_reads));
        self.raw.read_index(ctx.to_be_bytes().to_vec());
    }

    /// Leadership lost: everyone waiting here retries at the new leader
    /// (with the same request id, so nothing applies twice).
    fn fail_waiters(&mut self) {
        let err = self.not_leader();
        for (_, w) in self.waiters.drain() {
            let _ = w.send(Err(err.clone()));
        }
        for (_, w) in self.conf_waiters.drain() {
            let _ = w.send(Err(err.clone()));
        }
        let reads: Vec<_> = self
            .awaiting_reads
            .drain()
            .flat_map(|(_, r)| r)
            .chain(self.ready_reads.drain(..).flat_map(|(_, r)| r))
            .collect();
        for (_, _, _, w) in reads {
            let _ = w.send(Err(err.clone()));
        }
    }

    async fn on_ready(&mut self) -> anyhow::Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if let Some(ss) = ready.ss() {
            if let Ok(mut b) = self.shared.repair.lock() {
                b.reset();
            }
            if let Ok(mut t) = self.shared.leader_since.write() {
                *t = (ss.raft_state == StateRole::Leader).then(Instant::now);
            }
            // Heartbeats from an earlier term would make every chunkserver
            // look down or out: a new leader starts with none.
            if let Ok(mut hb) = self.shared.heartbeats.write() {
                hb.clear();
            }
            if ss.raft_state != StateRole::Leader {
                self.fail_waiters();
            } else {
                self.ensure_cluster_key()?;
                // A new leader starts every lock holder's lease afresh, and
                // hears again which files mounts have open.
                self.lease_seen.clear();
                self.open_reports.clear();
                for c in ns::lock_holders(&*self.store)? {
                    self.lease_seen.insert(c, Instant::now());
                }
                for c in ns::deleg::holders(&*self.store)? {
                    self.lease_seen.insert(c, Instant::now());
                }
            }
            tracing::info!(replica = self.shared.id.0, role = ?ss.raft_state, leader = ss.leader_id, "raft role");
        }
        let msgs = ready.take_messages();
        if !msgs.is_empty() {
            self.outbox.send(msgs);
            // Let the connection tasks put them on the wire before this
            // replica stores anything: a leader's appends may go out before
            // its own copy is written, so followers store in parallel.
            tokio::task::yield_now().await;
        }
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.install_snapshot(&snap)?;
        }
        for rs in ready.read_states() {
            let ctx = crate::kv::read_be(&rs.request_ctx).unwrap_or(0);
            if let Some(reads) = self.awaiting_reads.remove(&ctx) {
                self.ready_reads.push((rs.index, reads));
            }
        }
        // A leader applies (and answers) what is committed before it stores
        // new entries, so those answers do not wait for an fsync; a follower
        // first stores and acknowledges the new entries, so the leader's
        // commit does not wait for this replica's apply. Either way the
        // hard state (with the commit index) lands no later than the applied
        // index it covers: a restart must never find applied > committed.
        let committed = ready.take_committed_entries();
        let hs = ready.hs().cloned();
        let hs_sync = hs.as_ref().is_some_and(|hs| {
            // A term or vote must never be forgotten (two votes in a term
            // would allow two leaders); a commit index may lag.
            let old = self.raw.store().hard_state();
            hs.term != old.term || hs.vote != old.vote
        });
        let entries_sync = ready.entries().iter().any(needs_sync);
        let store = self.store.clone();
        if self.is_leader() {
            let mut batch = WriteBatch::default();
            let results = self.apply_entries(&mut batch, committed)?;
            if let Some(hs) = hs {
                self.raw.mut_store().set_hard_state(&mut batch, hs)?;
            }
            Self::write(&store, batch, hs_sync).await?;
            self.deliver(results);
            let mut batch = WriteBatch::default();
            self.raw.mut_store().append(&mut batch, ready.entries())?;
            Self::write(&store, batch, entries_sync).await?;
            self.outbox.send(ready.take_persisted_messages());
        } else {
            let mut batch = WriteBatch::default();
            self.raw.mut_store().append(&mut batch, ready.entries())?;
            if let Some(hs) = hs {
                self.raw.mut_store().set_hard_state(&mut batch, hs)?;
            }
            Self::write(&store, batch, entries_sync || hs_sync).await?;
            let acks = ready.take_persisted_messages();
            if !acks.is_empty() {
                self.outbox.send(acks);
                if !committed.is_empty() {
                    // The acknowledgement goes out before this replica
                    // applies: the leader's commit waits for it, not for that.
                    tokio::task::yield_now().await;
                }
            }
            let mut batch = WriteBatch::default();
            let results = self.apply_entries(&mut batch, committed)?;
            Self::write(&store, batch, false).await?;
            self.deliver(results);
        }
        let mut light = self.raw.advance(ready);
        let mut batch = WriteBatch::default();
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(&mut batch, commit)?;
        }
        self.outbox.send(light.take_messages());
        let results = self.apply_entries(&mut batch, light.take_committed_entries())?;
        if !batch.is_empty() {
            // Not synced: it holds only the commit index and applied state,
            // both derivable again from the synced log of a majority; they
            // land atomically together, so a crash loses both or neither.
            self.store.write_unsynced(batch)?;
        }
        self.deliver(results);
        self.raw.advance_apply();
        let ready = self.is_leader()
            && self.raw.raft.commit_to_current_term()
            && self.applied >= self.raw.raft.raft_log.committed;
        self.shared.leader_ready.store(ready, Ordering::Release);
        self.serve_ready_reads();
        self.maybe_compact()?;
        Ok(())
    }

    /// Writes a batch, synced (after letting the connection tasks put this
    /// replica's messages on the wire, so followers sync in parallel with
    /// this fsync: they share this thread, which the fsync blocks) or not
    /// (in the OS now, on disk within `WAL_SYNC_EVERY`).
    async fn write(store: &Store, batch: WriteBatch, sync: bool) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if sync {
            tokio::task::yield_now().await;
            store.write_synced(batch)?;
        } else {
            store.write_unsynced(batch)?;
        }
        Ok(())
    }

    fn apply_entries(
        &mut self,
        batch: &mut WriteBatch,
        entries: Vec<Entry>,
    ) -> anyhow::Result<Vec<((u128, u64), Applied)>> {
        let mut results = Vec::new();
        if entries.is_empty() {
            return Ok(results);
        }
        let store = self.store.clone();
        let mut tx = Tx::new(&*store);
        let mut changed_members = false;
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    // An entry this group's leaders did not encode (one
                    // forged onto the log) is skipped, the same way on every
                    // replica: failing on it would stop each of them again
                    // at every restart.
                    let cmds: Vec<Command> = match decode(Cf::Sys, &e.data) {
                        Ok(cmds) => cmds,
                        Err(_) if e.data.is_empty() => Vec::new(),
                        Err(err) => {
                            tracing::error!(
                                "skipped committed entry {}: it does not decode: {err}",
                                e.index
                            );
                            Vec::new()
                        }
                    };
                    {
                        for cmd in cmds {
                            let key = (cmd.id.client.0, cmd.id.seq);
                            // Another client's delegated directory: nothing
                            // is recorded, the client retries once it is back.
                            if let Some((dir, holder)) =
                                ns::deleg::write_conflict(&tx, cmd.id.client, &cmd.op)?
                            {
                                results.push((key, Applied::Recall { dir, holder }));
                                continue;
                            }
                            let r = ns::apply_command(&mut tx, &cmd)?;
                            results.push((key, Applied::Answer(r)));
                        }
                    }
                }
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    let context = decode::<(RequestId, String)>(Cf::Sys, &e.context);
                    let (Ok(()), Ok((id, address))) = (cc.merge_from_bytes(&e.data), context)
                    else {
                        // As for normal entries: never a reason to stop.
                        tracing::error!(
                            "skipped committed configuration change {}: it does not decode",
                            e.index
                        );
                        self.applied = e.index;
                        continue;
                    };
                    let outcome = match self.raw.apply_conf_change(&cc) {
                        Ok(cs) => {
                            self.raw.mut_store().set_conf_state(batch, cs)?;
                            match cc.get_change_type() {
                                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                                    tx.put_rec(Cf::Sys, member_key(cc.node_id), &address)
                                }
                                ConfChangeType::RemoveNode => {
                                    tx.delete(Cf::Sys, member_key(cc.node_id))
                                }
                            }
                            changed_members = true;
                            Ok(())
                        }
                        Err(err) => Err(RpcError::BadRequest(format!(
                            "configuration change failed: {err}"
                        ))),
                    };
                    if let Some(w) = self.conf_waiters.remove(&(id.client.0, id.seq)) {
                        let _ = w.send(outcome);
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    // Never proposed here (joint consensus is not used).
                    tracing::error!(
                        "skipped committed entry {}: joint consensus changes are not used",
                        e.index
                    );
                }
            }
            self.applied = e.index;
        }
        tx.put_rec(Cf::Sys, ns::SYS_APPLIED_KEY.to_vec(), &self.applied);
        let writes = tx.into_writes();
        self.store.put_writes(batch, writes);
        if changed_members {
            // Members written in this batch become visible to the transport
            // after it lands; merging them now is harmless since only
            // committed configuration reaches here.
            self.pending_member_reload = true;
        }
        Ok(results)
    }

    fn deliver(&mut self, results: Vec<((u128, u64), Applied)>) {
        if self.pending_member_reload {
            self.pending_member_reload = false;
            match load_members(&self.store) {
                Ok(m) => {
                    if let Ok(mut members) = self.shared.members.write() {
                        *members = m;
                    }
                }
                Err(e) => tracing::error!("reload members: {e:#}"),
            }
        }
        for (key, r) in results {
            let w = self.waiters.remove(&key);
            let r = match r {
                Applied::Answer(r) => r.map_err(RpcError::Errno),
                Applied::Recall { dir, holder } => {
                    if self.is_leader() {
                        self.shared.recalls.want(holder, dir);
                    }
                    Err(RpcError::Busy)
                }
            };
            if let Some(w) = w {
                let _ = w.send(r);
            }
        }
    }

    fn serve_ready_reads(&mut self) {
        let applied = self.applied;
        let (now, later): (Vec<_>, Vec<_>) = self
            .ready_reads
            .drain(..)
            .partition(|(idx, _)| *idx <= applied);
        self.ready_reads = later;
        for (_, reads) in now {
            let store = self.store.clone();
            let shared = self.shared.clone();
            self.runtime.spawn_blocking(move || {
                for (client, caller, op, reply) in reads {
                    let _ = reply.send(read_now(&store, &shared, client, &caller, &op));
                }
            });
        }
    }

    fn maybe_compact(&mut self) -> anyhow::Result<()> {
        let first = self.raw.store().first();
        if self.applied < first + self.config.compact_after_entries {
            return Ok(());
        }
        let upto = self
            .applied
            .saturating_sub(self.config.compact_keep_entries);
        let mut batch = WriteBatch::default();
        self.raw.mut_store().compact(&mut batch, upto)?;
        self.store.write_synced(batch)?;
        tracing::info!(replica = self.shared.id.0, upto, "raft log compacted");
        Ok(())
    }

    /// Replaces the state with a snapshot fetched earlier into a staging
    /// file, and the log with an empty one truncated at its index, in one
    /// synced batch: a crash leaves either the old state or the new one.
    fn install_snapshot(&mut self, snap: &Snapshot) -> anyhow::Result<()> {
        let desc: SnapshotDescriptor = decode(Cf::Sys, &snap.data)?;
        let path = self
            .shared
            .staged_snapshots
            .lock()
            .map_err(|_| anyhow::anyhow!("staging lock poisoned"))?
            .remove(&desc.index)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "snapshot {} was not staged before raft accepted it",
                    desc.index
                )
            })?;
        let mut batch = WriteBatch::default();
        for cf in STATE_CFS {
            batch.delete_range_cf(self.store.state_cf(cf), &[][..], &STATE_WIPE_END[..]);
        }
        let mut file = std::io::BufReader::new(std::fs::File::open(&path)?);
        for (cf, k, v) in read_staged(&mut file)? {
            batch.put_cf(self.store.state_cf(cf), k, v);
        }
        self.raw
            .mut_store()
            .reset_to_snapshot(&mut batch, snap.get_metadata())?;
        self.store.write_synced(batch)?;
        self.applied = snap.get_metadata().index;
        let _ = std::fs::remove_file(&path);
        let members = load_members(&self.store)?;
        if let Ok(mut m) = self.shared.members.write() {
            *m = members;
        }
        tracing::info!(
            replica = self.shared.id.0,
            index = self.applied,
            "installed snapshot"
        );
        Ok(())
    }
}

/// Staged snapshot records: `[cf u8][key len u32][key][value len u32][value]`.
pub fn read_staged(r: &mut impl Read) -> anyhow::Result<Vec<(Cf, Vec<u8>, Vec<u8>)>> {
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

/// Answers a read from this replica's applied state, as of now.
pub fn read_now(
    store: &Store,
    shared: &Shared,
    client: sparefs_proto::ClientId,
    caller: &Caller,
    op: &ReadOp,
) -> Result<NsReply, RpcError> {
    let storage = |e| match e {
        ns::NsError::Errno(e) => RpcError::Errno(e),
        ns::NsError::Store(e) => RpcError::Storage(e.to_string()),
    };
    // Another client alone knows a directory this read asks about, or its
    // answer would show: ask for it back and have the reader come again.
    let recall = |(dir, holder)| {
        shared.recalls.want(holder, dir);
        Err(RpcError::Busy)
    };
    if let Some(conflict) = ns::deleg::read_conflict(store, client, op).map_err(storage)? {
        return recall(conflict);
    }
    let now = Time::now().secs.max(0) as u64;
    let reply = ns::read(store, caller, op, shared, now).map_err(storage)?;
    if let Some(conflict) = ns::deleg::reply_conflict(store, client, &reply).map_err(storage)? {
        return recall(conflict);
    }
    Ok(reply)
}

/// A read waiting for its ReadIndex: who asks, as whom, what, and where
/// the answer goes.
type PendingRead = (sparefs_proto::ClientId, Caller, ReadOp, Reply<NsReply>);

/// What applying one command came to.
pub enum Applied {
    Answer(Result<NsReply, Errno>),
    /// It touches `dir`, which `holder` holds: not applied.
    Recall {
        dir: InodeId,
        holder: sparefs_proto::ClientId,
    },
}

pub type InputSender = tokio::sync::mpsc::Sender<Input>;
pub type InputReceiver = tokio::sync::mpsc::Receiver<Input>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_entries_wait_for_the_disk() {
        let mut plain = Entry::default();
        plain.data = vec![1, 2, 3].into();
        assert!(
            !needs_sync(&plain),
            "namespace changes reach the disk later"
        );
        let mut durable = plain.clone();
        durable.context = vec![ENTRY_DURABLE].into();
        assert!(needs_sync(&durable));
        let mut conf = Entry::default();
        conf.set_entry_type(EntryType::EntryConfChange);
        assert!(needs_sync(&conf), "membership changes are synced");
    }
}
