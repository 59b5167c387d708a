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
    Capability, ChunkserverInfo, ChunkserverState, ClusterKey, RepairDone, RepairTask, NO_SERVER,
};
use sparefs_proto::msg::RepairProgress;
use sparefs_proto::{BlockId, ChunkserverId};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A task not reported back within this time is handed out again.
pub const TASK_TIMEOUT: Duration = Duration::from_secs(120);
/// Tasks one chunkserver runs at once (its executor asks for at most this).
pub const TASKS_PER_SERVER_MAX: usize = 4;
/// Blocks kept in the queue per scan (bounds the leader's memory).
pub const QUEUE_MAX: usize = 100_000;

#[derive(Clone, Debug)]
struct Need {
    block: BlockId,
    rec: BlockRec,
}

#[derive(Default)]
pub struct RepairBook {
    queue: VecDeque<Need>,
    in_flight: HashMap<BlockId, (ChunkserverId, Instant, u64)>,
    /// Blocks whose task finished since the last scan (the queue's view of
    /// them is stale).
    finished: HashMap<BlockId, Instant>,
    blocks_to_repair: u64,
    bytes_to_repair: u64,
    repaired_bytes: u64,
    scanned_at: Option<Instant>,
    /// (when, bytes) of recent completions, for the rate.
    recent: VecDeque<(Instant, u64)>,
}

/// Whether a fragment's host counts as holding it: lost fragments and
/// `out` hosts do not (they are rebuilt); `down` hosts do not serve it now
/// but are waited for.
fn readable(state: Option<ChunkserverState>) -> bool {
    matches!(state, Some(ChunkserverState::Up | ChunkserverState::Full))
}

fn to_rebuild(rec: &BlockRec, states: &HashMap<ChunkserverId, ChunkserverState>) -> Vec<usize> {
    rec.fragments
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            **s == NO_SERVER || matches!(states.get(s), Some(ChunkserverState::Out) | None)
        })
        .map(|(i, _)| i)
        .collect()
}

impl RepairBook {
    /// Rebuilds the queue from a scan of the block table.
    pub fn plan(&mut self, kv: &impl ReadKv, servers: &[ChunkserverInfo]) -> anyhow::Result<()> {
        let started = Instant::now();
        let states: HashMap<ChunkserverId, ChunkserverState> =
            servers.iter().map(|s| (s.id, s.state)).collect();
        let up = servers
            .iter()
            .filter(|s| s.state == ChunkserverState::Up)
            .count();
        let mut needs: Vec<(usize, Need)> = Vec::new();
        let (mut blocks, mut bytes) = (0u64, 0u64);
        let mut from = Vec::new();
        loop {
            let page = kv.scan(Cf::Blocks, &[], &from, 1024)?;
            let exhausted = page.len() < 1024;
            for (k, v) in &page {
                from = k.clone();
                from.push(0);
                let rec: BlockRec = decode(Cf::Blocks, v)?;
                if rec.refs == 0 {
                    continue;
                }
                let id = BlockId(read_be(k).unwrap_or(0));
                let lost = to_rebuild(&rec, &states);
                let below = rec.policy != rec.wanted;
                if lost.is_empty() && !below {
                    continue;
                }
                blocks += 1;
                bytes += rec.bytes as u64;
                let reencode_now = below && up >= rec.wanted.width();
                if lost.is_empty() && !reencode_now {
                    continue;
                }
                let alive = rec
                    .fragments
                    .iter()
                    .filter(|s| readable(states.get(s).copied()))
                    .count();
                let spare = alive.saturating_sub(rec.policy.needed());
                if needs.len() < QUEUE_MAX {
                    needs.push((spare, Need { block: id, rec }));
                }
            }
            if exhausted {
                break;
            }
        }
        needs.sort_by_key(|(spare, n)| (*spare, n.block));
        self.queue = needs.into_iter().map(|(_, n)| n).collect();
        self.blocks_to_repair = blocks;
        self.bytes_to_repair = bytes;
        self.scanned_at = Some(started);
        Ok(())
    }

    /// Takes the queue of a fresh plan, keeping what is in flight.
    pub fn adopt_plan(&mut self, fresh: RepairBook) {
        let Some(started) = fresh.scanned_at else {
            return;
        };
        self.queue = fresh.queue;
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
                    readable(Some(i2.state)).then(|| (i as u8, i2.address.clone()))
                })
                .collect();
            if sources.len() < rec.policy.needed() {
                continue;
            }
            let states: HashMap<ChunkserverId, ChunkserverState> =
                servers.iter().map(|s| (s.id, s.state)).collect();
            let lost = to_rebuild(rec, &states);
            let (out_policy, out_base, outputs) = if let Some(i) = lost.first() {
                if rec.fragments.contains(&server) {
                    continue;
                }
                (
                    rec.policy,
                    rec.slot_base,
                    vec![(*i as u8, server, me.address.clone())],
                )
            } else {
                // Re-encode to the wanted policy under fresh slots.
                let candidates: Vec<(ChunkserverId, u64)> = servers
                    .iter()
                    .filter(|s| s.state == ChunkserverState::Up)
                    .map(|s| (s.id, s.capacity_bytes.saturating_sub(s.used_bytes).max(1)))
                    .collect();
                let Ok(chosen) =
                    placement::choose(&candidates, rec.wanted.width(), &mut rand::thread_rng())
                else {
                    continue;
                };
                let outputs = chosen
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| Some((i as u8, *s, info.get(s)?.address.clone())))
                    .collect();
                (
                    rec.wanted,
                    rec.slot_base.wrapping_add(rec.fragments.len() as u8),
                    outputs,
                )
            };
            tasks.push(RepairTask {
                block: need.block,
                policy: rec.policy,
                bytes: rec.bytes,
                slot_base: rec.slot_base,
                sources,
                out_policy,
                out_base,
                outputs,
                cap: Capability::issue(key, need.block, true, now_secs + 600),
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
