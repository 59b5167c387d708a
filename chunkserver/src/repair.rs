//! Repair tasks from the meta leader: read a block's fragments from other
//! chunkservers, decode it, encode the fragments asked for and write them
//! where the task says. A few at a time and under a byte rate, so repair
//! never starves client I/O.

use sparefs_proto::layout::{RepairDone, RepairTask};
use sparefs_proto::msg::{Reply, Request};
use sparefs_wire::conn::{CallError, ConnPool};
use sparefs_wire::tls::{Role, Tls};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Tasks run at once.
pub const CONCURRENT_TASKS: usize = 4;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Repairer {
    slots: Arc<Semaphore>,
    done: Mutex<Vec<RepairDone>>,
    conns: ConnPool,
    /// Bytes per second read for repairs, at most.
    rate: u64,
    /// When the next task may start (a token bucket of one).
    next_start: tokio::sync::Mutex<Instant>,
    /// Woken when a task finishes, so its report (and the request for
    /// more work) goes out without waiting for the next heartbeat.
    pub finished: tokio::sync::Notify,
}

impl Repairer {
    /// With `tls`, fragments are read from and written to chunkservers'
    /// certificates only.
    pub fn new(rate_bytes_per_sec: u64, tls: Option<Arc<Tls>>) -> Arc<Repairer> {
        let conns = match tls {
            Some(tls) => ConnPool::with_tls(tls).expecting(Role::Chunkserver),
            None => ConnPool::default(),
        };
        Arc::new(Repairer {
            slots: Arc::new(Semaphore::new(CONCURRENT_TASKS)),
            done: Mutex::new(Vec::new()),
            conns,
            rate: rate_bytes_per_sec.max(1 << 20),
            next_start: tokio::sync::Mutex::new(Instant::now()),
            finished: tokio::sync::Notify::new(),
        })
    }

    /// How many more tasks to ask for.
    pub fn free(&self) -> u32 {
        self.slots.available_permits() as u32
    }

    /// Reports of tasks finished since the last call.
    pub fn take_done(&self) -> Vec<RepairDone> {
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts reports back (the heartbeat carrying them failed).
    pub fn restore_done(&self, mut back: Vec<RepairDone>) {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        back.append(&mut done);
        *done = back;
    }

    pub fn start(self: &Arc<Self>, task: RepairTask) {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            tracing::warn!(block = task.block.0, "repair task refused: executor full");
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            me.pace(task.bytes as u64).await;
            let block = task.block;
            let result = me.run(&task).await;
            let written = match result {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(block = block.0, "repair task failed: {e}");
                    Vec::new()
                }
            };
            let report = RepairDone {
                block,
                from_base: task.slot_base,
                out_policy: task.out_policy,
                out_base: task.out_base,
                written,
                bytes: task.bytes as u64,
            };
            me.done
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(report);
            drop(permit);
            me.finished.notify_one();
        });
    }

    /// Waits until starting a task of `bytes` keeps the average rate.
    async fn pace(&self, bytes: u64) {
        let mut next = self.next_start.lock().await;
        let now = Instant::now();
        if *next > now {
            tokio::time::sleep(*next - now).await;
        }
        *next =
            Instant::now().max(*next) + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
    }

    async fn call(&self, address: &str, req: Request) -> Result<Reply, String> {
        let c = self.conns.get(address).await?;
        c.call(req, CALL_TIMEOUT).await.map_err(|e| match e {
            CallError::Rpc(e) => format!("{address}: {e}"),
            CallError::Transport(e) => format!("{address}: {e}"),
        })
    }

    /// Does the task; the fragments written, by (index, chunkserver).
    async fn run(&self, t: &RepairTask) -> Result<Vec<(u8, sparefs_proto::ChunkserverId)>, String> {
        let width = t.policy.width();
        let need = t.policy.needed();
        let frag_len = sparefs_erasure::fragment_len(t.policy, t.bytes as usize) as u32;
        // Read every source at once; keep the first `need` that answer.
        let reads = t.sources.iter().map(|(i, address)| async move {
            let req = Request::GetFragment {
                cap: t.cap.clone(),
                block: t.block,
                index: t.slot_base.wrapping_add(*i),
                offset: 0,
                len: frag_len,
                verify: true,
            };
            (*i, self.call(address, req).await)
        });
        let mut fragments: Vec<Option<Vec<u8>>> = vec![None; width];
        let mut have = 0;
        let mut errors = Vec::new();
        for (i, r) in futures::future::join_all(reads).await {
            match r {
                Ok(Reply::Bytes(b)) if b.len() == frag_len as usize && (i as usize) < width => {
                    if have < need {
                        fragments[i as usize] = Some(b);
                        have += 1;
                    }
                }
                Ok(_) => errors.push(format!("fragment {i}: bad reply")),
                Err(e) => errors.push(format!("fragment {i}: {e}")),
            }
        }
        if have < need {
            return Err(format!(
                "only {have} of {need} fragments readable: {}",
                errors.join("; ")
            ));
        }
        let block = sparefs_erasure::decode(t.policy, t.bytes as usize, fragments)
            .map_err(|e| e.to_string())?;
        let out = sparefs_erasure::encode(t.out_policy, &block).map_err(|e| e.to_string())?;
        // The rebuilt fragments keep the block's table, made again from the
        // decoded bytes (readers check it against the block's checksum).
        let table = sparefs_erasure::block_table::table_bytes(
            &sparefs_erasure::block_table::table_of(&block),
        );
        let puts = t.outputs.iter().map(|(i, server, address)| {
            let data = out.get(*i as usize).cloned();
            let table = table.clone();
            async move {
                let data = data.ok_or_else(|| format!("no fragment {i} in {}", t.out_policy))?;
                let req = Request::PutFragment {
                    cap: t.cap.clone(),
                    block: t.block,
                    index: t.out_base.wrapping_add(*i),
                    data,
                    table,
                };
                match self.call(address, req).await? {
                    Reply::Ok => Ok((*i, *server)),
                    _ => Err(format!("{address}: bad reply")),
                }
            }
        });
        let mut written = Vec::new();
        for r in futures::future::join_all(puts).await {
            written.push(r?);
        }
        Ok(written)
    }
}
