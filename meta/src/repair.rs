//! Repair planning on the leader: which blocks need work, in what order,
//! and which chunkserver does it.
//!
//! A planner thread scans the block table every few seconds (leader only)
//! and ranks the blocks that need work, least protected first: fragments
//! lost or on `out` servers are rebuilt; blocks stored below their wanted
//! policy (written while hosts were down) are re-encoded once enough hosts
//! are up. Chunkservers pull tasks in their heartbeats, a few at a time,
//! so repair runs at a bounded rate and client I/O keeps priority; they
//! report each finished task in the next heartbeat and the leader commits
//! the new layout through Raft. Nothing here is replicated: a new leader
//! scans again.

use crate::kv::{decode, read_be, Cf, ReadKv};
use crate::ns::blocks::BlockRec;
use crate::placement;
use sparefs_proto::layout::{
    Capability, ChunkserverInfo, ChunkserverState, ClusterKey, Policy, RepairDone, RepairTask,
    NO_SERVER,
};
use sparefs_proto::msg::RepairProgress;
use sparefs_proto::{BlockId, ChunkserverId, InodeId};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A task not reported back within this time is handed out again.
pub const TASK_TIMEOUT: Duration = Duration::from_secs(120);
/// Tasks one chunkserver runs at once (its executor asks for at most this).
pub const TASKS_PER_SERVER_MAX: usize = 4;
/// Blocks kept in the queue per scan (bounds the leader's memory).
pub const QUEUE_MAX: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Work {
    /// Fragments lost or on `out` (or draining) servers: rebuild one.
    Rebuild,
    /// Stored below its wanted policy: re-encode under fresh slots.
    Reencode,
    /// Balance: move fragment `index` off an over-full server.
    Move { index: usize },
}

#[derive(Clone, Debug)]
struct Need {
    block: BlockId,
    rec: BlockRec,
    work: Work,
}

#[derive(Default)]
pub struct RepairBook {
    queue: VecDeque<Need>,
    /// Block -> (server doing it, since, bytes).
    in_flight: HashMap<BlockId, (ChunkserverId, Instant, u64)>,
    /// Blocks whose task finished since the last scan (the queue's view of
    /// them is stale).
    finished: HashMap<BlockId, Instant>,
    /// Servers under the mean usage at the last scan: balance moves go there.
    receivers: Vec<ChunkserverId>,
    blocks_to_repair: u64,
    bytes_to_repair: u64,
    bytes_to_balance: u64,
    repaired_bytes: u64,
    scanned_at: Option<Instant>,
    /// (when, bytes) of recent completions, for the rate.
    recent: VecDeque<(Instant, u64)>,
    /// Chunks waiting to be compacted, and those handed out (with when).
    compactions: VecDeque<(InodeId, u64)>,
    compacting: HashMap<(InodeId, u64), Instant>,
}

/// Chunks listed per scan of the compaction list.
pub const COMPACT_QUEUE_MAX: usize = 1024;

/// Whether a fragment's host serves it: lost fragments and `out` hosts do
/// not; `down` hosts do not now but are waited for (not rebuilt).
fn readable(s: Option<&ChunkserverInfo>) -> bool {
    s.is_some_and(|s| matches!(s.state, ChunkserverState::Up | ChunkserverState::Full))
}

/// Fragment indexes that must move: lost, on `out` or unknown servers, or
/// on servers being drained.
fn to_rebuild(rec: &BlockRec, info: &HashMap<ChunkserverId, &ChunkserverInfo>) -> Vec<usize> {
    rec.fragments
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            **s == NO_SERVER
                || match info.get(s) {
                    None => true,
                    Some(i) => i.state == ChunkserverState::Out || i.draining,
                }
        })
        .map(|(i, _)| i)
        .collect()
}

/// Usage above the mean by this fraction of capacity (and at least
/// `BALANCE_MIN_BYTES`) starts balancing.
pub const BALANCE_SLACK: f64 = 0.005;
pub const BALANCE_MIN_BYTES: u64 = 4 << 20;

fn usage(s: &ChunkserverInfo) -> f64 {
    s.used_bytes as f64 / s.capacity_bytes.max(1) as f64
}

/// What a repair task writes: its policy, its first slot, and (fragment
/// index, server, address) of each fragment it writes.
type Outputs = (Policy, u8, Vec<(u8, ChunkserverId, String)>);

/// One scan of the block table: what it needs to know of the servers, and
/// the work it found, ranked (rank, spare fragments).
struct Scan<'a> {
    info: HashMap<ChunkserverId, &'a ChunkserverInfo>,
    /// Servers that take new fragments (up, not draining).
    takers: usize,
    /// Servers below the mean usage: balance moves go there.
    receivers: Vec<ChunkserverId>,
    /// Bytes each server above the mean still gives away.
    give: HashMap<ChunkserverId, u64>,
    needs: Vec<((u8, usize), Need)>,
    /// Blocks and bytes to repair, bytes to move for balance.
    blocks: u64,
    bytes: u64,
    balance: u64,
}

impl<'a> Scan<'a> {
    /// `servers` with their usage as the block table places it. Servers
    /// above the mean usage give, those below take, by the bytes that
    /// would bring them to the mean.
    fn new(servers: &'a [ChunkserverInfo]) -> Scan<'a> {
        let info: HashMap<ChunkserverId, &ChunkserverInfo> =
            servers.iter().map(|s| (s.id, s)).collect();
        let takers: Vec<&ChunkserverInfo> = servers
            .iter()
            .filter(|s| s.state == ChunkserverState::Up && !s.draining)
            .collect();
        let live: Vec<&ChunkserverInfo> = servers
            .iter()
            .filter(|s| {
                matches!(s.state, ChunkserverState::Up | ChunkserverState::Full) && !s.draining
            })
            .collect();
        let mean = if live.is_empty() {
            0.0
        } else {
            live.iter().map(|s| s.used_bytes as f64).sum::<f64>()
                / live
                    .iter()
                    .map(|s| s.capacity_bytes.max(1) as f64)
                    .sum::<f64>()
        };
        let give = live
            .iter()
            .map(|s| {
                let excess = ((usage(s) - mean) * s.capacity_bytes as f64).max(0.0) as u64;
                (s.id, excess)
            })
            .filter(|(id, excess)| {
                let cap = info.get(id).map(|s| s.capacity_bytes).unwrap_or(0);
                *excess as f64 > (BALANCE_SLACK * cap as f64).max(BALANCE_MIN_BYTES as f64)
            })
            .collect();
        let receivers = takers
            .iter()
            .filter(|s| usage(s) < mean)
            .map(|s| s.id)
            .collect();
        Scan {
            info,
            takers: takers.len(),
            receivers,
            give,
            needs: Vec::new(),
            blocks: 0,
            bytes: 0,
            balance: 0,
        }
    }

    /// Ranks the work block `id` needs, if any: repair (rebuild before
    /// re-encode), else a balance move off a server that still gives.
    fn block(&mut self, id: BlockId, rec: BlockRec) {
        let lost = to_rebuild(&rec, &self.info);
        let below = rec.policy != rec.wanted;
        let alive = rec
            .fragments
            .iter()
            .filter(|s| readable(self.info.get(s).copied()))
            .count();
        let spare = alive.saturating_sub(rec.policy.needed());
        if !lost.is_empty() || below {
            self.blocks += 1;
            self.bytes += rec.bytes as u64;
            let work = if !lost.is_empty() {
                (0, Work::Rebuild)
            } else if self.takers >= rec.wanted.width() {
                (1, Work::Reencode)
            } else {
                return;
            };
            if self.needs.len() < QUEUE_MAX {
                let need = Need {
                    block: id,
                    rec,
                    work: work.1,
                };
                self.needs.push(((work.0, spare), need));
            }
            return;
        }
        // Only blocks some receiver holds nothing of can move there.
        let can_receive = self.receivers.iter().any(|r| !rec.fragments.contains(r));
        if !can_receive || self.needs.len() >= QUEUE_MAX {
            return;
        }
        let frag = fragment_bytes(&rec);
        let giver = rec
            .fragments
            .iter()
            .position(|s| self.give.get(s).is_some_and(|left| *left >= frag));
        if let Some(index) = giver {
            if let Some(left) = self.give.get_mut(&rec.fragments[index]) {
                *left -= frag;
            }
            self.balance += frag;
            let need = Need {
                block: id,
                rec,
                work: Work::Move { index },
            };
            self.needs.push(((2, spare), need));
        }
    }
}

impl RepairBook {
    /// Rebuilds the queue from a scan of the block table: lost fragments
    /// first (least protected first), then re-encoding, then balance moves.
    pub fn plan(&mut self, kv: &impl ReadKv, servers: &[ChunkserverInfo]) -> anyhow::Result<()> {
        let started = Instant::now();
        // Balance on the bytes the block table places on each server, not
        // on reported usage (which counts garbage not yet collected, such as
        // the old copies of fragments just moved).
        let live = live_bytes(kv)?;
        let servers: Vec<ChunkserverInfo> = servers
            .iter()
            .map(|s| ChunkserverInfo {
                used_bytes: live.get(&s.id).copied().unwrap_or(0),
                ..s.clone()
            })
            .collect();
        let mut scan = Scan::new(&servers);
        let mut from = Vec::new();
        loop {
            let page = kv.scan(Cf::Blocks, &[], &from, 1024)?;
            let exhausted = page.len() < 1024;
            for (k, v) in &page {
                from = k.clone();
                from.push(0);
                let rec: BlockRec = decode(Cf::Blocks, v)?;
                if rec.refs > 0 {
                    scan.block(BlockId(read_be(k).unwrap_or(0)), rec);
                }
            }
            if exhausted {
                break;
            }
        }
        scan.needs.sort_by_key(|(rank, n)| (*rank, n.block));
        self.queue = scan.needs.into_iter().map(|(_, n)| n).collect();
        self.receivers = scan.receivers;
        self.blocks_to_repair = scan.blocks;
        self.bytes_to_repair = scan.bytes;
        self.bytes_to_balance = scan.balance;
        self.scanned_at = Some(started);
        Ok(())
    }

    /// Reads the list of chunks waiting for compaction.
    pub fn plan_compactions(&mut self, kv: &impl ReadKv) -> anyhow::Result<()> {
        self.compactions = kv
            .scan(Cf::Compact, &[], &[], COMPACT_QUEUE_MAX)?
            .into_iter()
            .filter_map(|(k, _)| {
                let ino = read_be(&k)?;
                let index = read_be(k.get(8..)?)?;
                Some((InodeId(ino), index))
            })
            .collect();
        Ok(())
    }

    /// One chunk for `server` to compact, if any waits.
    pub fn assign_compaction(&mut self, _server: ChunkserverId) -> Option<(InodeId, u64)> {
        let now = Instant::now();
        self.compacting
            .retain(|_, at| now.duration_since(*at) < TASK_TIMEOUT);
        while let Some(c) = self.compactions.pop_front() {
            if let std::collections::hash_map::Entry::Vacant(e) = self.compacting.entry(c) {
                e.insert(now);
                return Some(c);
            }
        }
        None
    }

    /// Takes the queue of a fresh plan, keeping what is in flight.
    pub fn adopt_plan(&mut self, fresh: RepairBook) {
        let Some(started) = fresh.scanned_at else {
            return;
        };
        self.compactions = fresh.compactions;
        self.queue = fresh.queue;
        self.receivers = fresh.receivers;
        self.bytes_to_balance = fresh.bytes_to_balance;
        self.blocks_to_repair = fresh.blocks_to_repair;
        self.bytes_to_repair = fresh.bytes_to_repair;
        self.scanned_at = Some(started);
        // Tasks finished after the scan began may be stale in its queue.
        self.finished.retain(|_, at| *at >= started);
        let now = Instant::now();
        self.in_flight
            .retain(|_, (_, at, _)| now.duration_since(*at) < TASK_TIMEOUT);
    }

    /// Hands `server` up to `want` tasks it can do.
    pub fn assign(
        &mut self,
        server: ChunkserverId,
        want: usize,
        servers: &[ChunkserverInfo],
        key: &ClusterKey,
        now_secs: u64,
    ) -> Vec<RepairTask> {
        let mut tasks = Vec::new();
        let info: HashMap<ChunkserverId, &ChunkserverInfo> =
            servers.iter().map(|s| (s.id, s)).collect();
        let Some(me) = info.get(&server) else {
            return tasks;
        };
        if me.state != ChunkserverState::Up {
            return tasks;
        }
        let mine = self
            .in_flight
            .values()
            .filter(|(s, _, _)| *s == server)
            .count();
        let want = want.min(TASKS_PER_SERVER_MAX.saturating_sub(mine));
        if me.draining {
            return tasks;
        }
        let mut taken = Vec::new();
        for (pos, need) in self.queue.iter().enumerate() {
            if tasks.len() >= want {
                break;
            }
            if self.in_flight.contains_key(&need.block) || self.finished.contains_key(&need.block) {
                continue;
            }
            let rec = &need.rec;
            let sources: Vec<(u8, String)> = rec
                .fragments
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let i2 = info.get(s)?;
                    readable(Some(i2)).then(|| (i as u8, i2.address.clone()))
                })
                .collect();
            if sources.len() < rec.policy.needed() {
                continue;
            }
            let Some((out_policy, out_base, outputs)) =
                self.outputs(need, (server, &me.address), servers, &info)
            else {
                continue;
            };
            // Good at the sources it reads and the servers it writes.
            let holders: Vec<ChunkserverId> = rec
                .fragments
                .iter()
                .copied()
                .chain(outputs.iter().map(|(_, s, _)| *s))
                .collect();
            tasks.push(RepairTask {
                block: need.block,
                policy: rec.policy,
                bytes: rec.bytes,
                slot_base: rec.slot_base,
                sources,
                out_policy,
                out_base,
                outputs,
                // A task may wait for its pace before it starts.
                cap: Capability::issue(key, need.block, true, now_secs + 600, &holders),
            });
            taken.push(pos);
        }
        let now = Instant::now();
        for task in &tasks {
            self.in_flight
                .insert(task.block, (server, now, task.bytes as u64));
        }
        // Handed-out work leaves the queue; a failure is found by the next scan.
        for pos in taken.into_iter().rev() {
            self.queue.remove(pos);
        }
        tasks
    }

    /// Where `server` would write what `need` produces: (policy, first
    /// slot, (fragment index, server, address) of each output), or None if
    /// it cannot take this task (it holds a fragment of the block, is no
    /// receiver of balance moves, or no placement is possible).
    fn outputs(
        &self,
        need: &Need,
        (server, address): (ChunkserverId, &String),
        servers: &[ChunkserverInfo],
        info: &HashMap<ChunkserverId, &ChunkserverInfo>,
    ) -> Option<Outputs> {
        let rec = &need.rec;
        let single = |i: usize| {
            (
                rec.policy,
                rec.slot_base,
                vec![(i as u8, server, address.clone())],
            )
        };
        match &need.work {
            Work::Rebuild => {
                let lost = to_rebuild(rec, info);
                let i = lost.first()?;
                (!rec.fragments.contains(&server)).then(|| single(*i))
            }
            Work::Move { index } => {
                let takes = !rec.fragments.contains(&server) && self.receivers.contains(&server);
                takes.then(|| single(*index))
            }
            Work::Reencode => {
                // Re-encode to the wanted policy under fresh slots.
                let candidates: Vec<(ChunkserverId, u64)> = servers
                    .iter()
                    .filter(|s| s.state == ChunkserverState::Up && !s.draining)
                    .map(|s| (s.id, s.capacity_bytes.saturating_sub(s.used_bytes).max(1)))
                    .collect();
                let chosen =
                    placement::choose(&candidates, rec.wanted.width(), &mut rand::thread_rng())
                        .ok()?;
                let outputs = chosen
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| Some((i as u8, *s, info.get(s)?.address.clone())))
                    .collect();
                let base = rec.slot_base.wrapping_add(rec.fragments.len() as u8);
                Some((rec.wanted, base, outputs))
            }
        }
    }

    /// Records a finished task; true when it produced fragments to commit.
    pub fn finish(&mut self, done: &RepairDone) -> bool {
        self.in_flight.remove(&done.block);
        self.finished.insert(done.block, Instant::now());
        if done.written.is_empty() {
            return false;
        }
        self.repaired_bytes += done.bytes;
        let now = Instant::now();
        self.recent.push_back((now, done.bytes));
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(30))
        {
            self.recent.pop_front();
        }
        self.blocks_to_repair = self.blocks_to_repair.saturating_sub(1);
        true
    }

    pub fn progress(&self) -> RepairProgress {
        let now = Instant::now();
        let window: u64 = self.recent.iter().map(|(_, b)| *b).sum();
        let span = self
            .recent
            .front()
            .map(|(t, _)| now.duration_since(*t).as_secs_f64().max(1.0))
            .unwrap_or(1.0);
        let rate = window as f64 / span;
        let remaining = self.bytes_to_repair.saturating_sub(window);
        let eta_secs = if self.blocks_to_repair == 0 {
            Some(0.0)
        } else if rate > 0.0 {
            Some(remaining as f64 / rate)
        } else {
            None
        };
        RepairProgress {
            blocks_to_repair: self.blocks_to_repair,
            bytes_to_repair: self.bytes_to_repair,
            bytes_to_balance: self.bytes_to_balance,
            in_flight: self.in_flight.len() as u64,
            repaired_bytes: self.repaired_bytes,
            rate_bytes_per_sec: rate,
            eta_secs,
            scanned_secs_ago: self.scanned_at.map(|t| t.elapsed().as_secs_f64()),
        }
    }

    /// A new leader starts from nothing.
    pub fn reset(&mut self) {
        *self = RepairBook::default();
    }
}

/// Bytes one fragment of the block takes.
fn fragment_bytes(rec: &BlockRec) -> u64 {
    match rec.policy {
        sparefs_proto::layout::Policy::Rep { .. } => rec.bytes as u64,
        sparefs_proto::layout::Policy::Ec { data, .. } => (rec.bytes as u64).div_ceil(data as u64),
    }
}

/// Bytes of fragments the block table places on each server.
fn live_bytes(kv: &impl ReadKv) -> anyhow::Result<HashMap<ChunkserverId, u64>> {
    let mut live: HashMap<ChunkserverId, u64> = HashMap::new();
    let mut from = Vec::new();
    loop {
        let page = kv.scan(Cf::Blocks, &[], &from, 1024)?;
        for (k, v) in &page {
            from = k.clone();
            from.push(0);
            let rec: BlockRec = decode(Cf::Blocks, v)?;
            let frag = fragment_bytes(&rec);
            for s in &rec.fragments {
                *live.entry(*s).or_insert(0) += frag;
            }
        }
        if page.len() < 1024 {
            return Ok(live);
        }
    }
}
