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
//!
//! A storage error stops the driver (and the replica): applying on after a
//! failed write would let replicas diverge.

use crate::kv::{decode, encode, Cf, ReadKv, Tx, STATE_CFS};
use crate::leader::LeaderDuties;
use crate::ns::{self, Applied, Command};
use crate::raftlog::{RaftLog, SnapshotDescriptor};
use crate::shared::Shared;
use crate::store::Store;
use protobuf::Message as _;
use raft::prelude::*;
use raft::StateRole;
use rocksdb::WriteBatch;
use sparefs_proto::msg::{HeartbeatReport, ReplicaStatus, Role, RpcError};
use sparefs_proto::namespace::{Caller, NsReply, ReadOp, Time, WriteOp};
use sparefs_proto::{InodeId, ReplicaId, RequestId, RequestKey};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
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
/// Past every key of the state column families (a snapshot wipes them).
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
        report: HeartbeatReport,
        reply: Reply<crate::leader::Work>,
    },
    /// A command the leader itself decided on (no one waits for it).
    Propose(WriteOp),
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
    waiters: HashMap<RequestKey, Reply<NsReply>>,
    conf_waiters: HashMap<RequestKey, Reply<()>>,
    pending_reads: Vec<PendingRead>,
    awaiting_reads: HashMap<u64, Vec<PendingRead>>,
    ready_reads: Vec<(u64, Vec<PendingRead>)>,
    next_read_ctx: u64,
    pending_member_reload: bool,
    /// Heartbeats, placement, repair, GC, leases (used while leader).
    leader: LeaderDuties,
    internal_seq: u64,
    config: DriverConfig,
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
        let leader = LeaderDuties::new(store.clone(), shared.clone());
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
            leader,
            internal_seq: 0,
            config,
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
                if self.is_leader() {
                    self.leader.tick()?;
                }
                self.publish_metrics();
            }
            self.propose_leader_decisions();
            self.flush_writes();
            self.flush_reads();
            self.on_ready().await?;
        }
    }

    /// Raft's numbers, the log's size and (on the leader) repair's, as
    /// gauges (nothing unless the process serves metrics).
    fn publish_metrics(&self) {
        let raft = &self.raw.raft;
        metrics::gauge!("sparefs_raft_term").set(raft.term as f64);
        metrics::gauge!("sparefs_raft_commit_index").set(raft.raft_log.committed as f64);
        metrics::gauge!("sparefs_raft_applied_index").set(self.applied as f64);
        metrics::gauge!("sparefs_raft_is_leader").set(if self.is_leader() { 1.0 } else { 0.0 });
        metrics::gauge!("sparefs_raft_leader_id").set(raft.leader_id as f64);
        let store = self.raw.store();
        metrics::gauge!("sparefs_raft_log_entries")
            .set(store.last().saturating_sub(store.first()) as f64);
        if self.is_leader() {
            if let Ok(book) = self.shared.repair.lock() {
                let p = book.progress();
                metrics::gauge!("sparefs_repair_blocks_to_repair").set(p.blocks_to_repair as f64);
                metrics::gauge!("sparefs_repair_bytes_to_repair").set(p.bytes_to_repair as f64);
                metrics::gauge!("sparefs_rebalance_bytes").set(p.bytes_to_balance as f64);
                metrics::gauge!("sparefs_repair_in_flight").set(p.in_flight as f64);
                metrics::gauge!("sparefs_repair_rate_bytes_per_second").set(p.rate_bytes_per_sec);
                metrics::counter!("sparefs_repaired_bytes_total").absolute(p.repaired_bytes);
            }
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

    /// Takes one input. (Long: one arm per `Input` kind, each checking
    /// leadership and handing the work on.)
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
                match &op {
                    WriteOp::SetLock { lock, .. } => self.leader.heard_from(lock.client),
                    // A delegation lives by its holder's lease from the start:
                    // a holder that never speaks again must lose it.
                    WriteOp::Delegate { .. } | WriteOp::ReserveInodes { .. } => {
                        self.leader.heard_from(id.client)
                    }
                    _ => {}
                }
                if let Err(e) = self.leader.place_allocation(&mut op) {
                    let _ = reply.send(Err(e));
                    return;
                }
                self.waiters.insert(id.key(), reply);
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
                        self.conf_waiters.insert(id.key(), reply);
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
                self.leader.keepalive(client, open);
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
            Input::Heartbeat { report, reply } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                let _ = reply.send(Ok(self.leader.heartbeat(report)));
            }
            Input::Propose(op) => {
                if self.is_leader() {
                    self.propose_internal(op);
                }
            }
        }
    }

    /// Queues what the leader's duties decided to change.
    fn propose_leader_decisions(&mut self) {
        for op in self.leader.take_proposals() {
            self.propose_internal(op);
        }
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

    fn next_internal_seq(&mut self) -> u64 {
        // Unique per leader term and proposal: term in the high bits.
        self.internal_seq += 1;
        (self.raw.raft.term << 32) | (self.internal_seq & 0xffff_ffff)
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
            fsck: self.shared.fsck_progress.get(),
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
                    if let Some(w) = self.waiters.remove(&cmd.id.key()) {
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

    /// Handles one `Ready` in the order the module doc lists. (Long on
    /// purpose: the order of sends, writes and applies is the durability
    /// argument, and it is checked best read top to bottom in one place.)
    async fn on_ready(&mut self) -> anyhow::Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if let Some(ss) = ready.ss() {
            let leader = ss.raft_state == StateRole::Leader;
            self.leader.role_changed(leader)?;
            if !leader {
                self.fail_waiters();
            }
            self.propose_leader_decisions();
            tracing::info!(replica = self.shared.id.0, role = ?ss.raft_state, leader = ss.leader_id, "raft role");
            metrics::counter!("sparefs_raft_role_changes_total").increment(1);
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
    ) -> anyhow::Result<Vec<(RequestKey, Applied)>> {
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
                    for cmd in cmds {
                        let key = cmd.id.key();
                        results.push((key, ns::apply(&mut tx, &cmd)?));
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
                    if let Some(w) = self.conf_waiters.remove(&id.key()) {
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

    fn deliver(&mut self, results: Vec<(RequestKey, Applied)>) {
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
                    let _ = reply.send(crate::reads::read_now(
                        &store, &shared, client, &caller, &op,
                    ));
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
        for (cf, k, v) in crate::snapshot::read_staged(&mut file)? {
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

/// A read waiting for its ReadIndex: who asks, as whom, what, and where
/// the answer goes.
type PendingRead = (sparefs_proto::ClientId, Caller, ReadOp, Reply<NsReply>);

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
