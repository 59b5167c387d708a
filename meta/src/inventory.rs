//! The leader's record of chunkserver inventory passes, for `sparefs
//! fsck`: per chunkserver, what its last whole pass found (fragments that
//! nothing references, past the grace, which the collector deletes; and
//! fragments the block table expects there that it lacks, which are marked
//! lost and rebuilt), and a request for a fresh pass that heartbeat replies
//! carry to the chunkservers.
//!
//! Owns: pass bookkeeping in leader memory (empty at each leadership).
//! Must not touch: the verdicts themselves (`ns::blocks::gc_verdicts`) or
//! the store.

use sparefs_proto::fsck::InventoryPass;
use sparefs_proto::{BlockId, ChunkserverId};
use std::collections::HashMap;
use std::time::Instant;

/// Missing fragments one pass keeps by name (the rest are counted).
const MISSING_KEPT: usize = 1000;

#[derive(Clone, Default)]
struct Pass {
    started: Option<Instant>,
    finished: Option<Instant>,
    fragments: u64,
    orphans: u64,
    missing: Vec<(BlockId, u8)>,
    missing_count: u64,
}

#[derive(Default)]
struct Server {
    current: Option<Pass>,
    last: Option<Pass>,
}

#[derive(Default)]
pub struct Ledger {
    servers: HashMap<ChunkserverId, Server>,
    /// Passes that start after this are fresh enough for the fsck asking.
    wanted_after: Option<Instant>,
}

impl Ledger {
    /// Records one judged page: `first` (a page from the start of the
    /// key space) begins a pass, `last_page` ends it. A page of a pass this
    /// leader did not see begin counts for nothing.
    pub fn page(
        &mut self,
        server: ChunkserverId,
        first: bool,
        listed: usize,
        orphans: usize,
        missing: &[(BlockId, u8)],
        last_page: bool,
    ) {
        let s = self.servers.entry(server).or_default();
        if first {
            s.current = Some(Pass {
                started: Some(Instant::now()),
                ..Pass::default()
            });
        }
        let Some(pass) = s.current.as_mut() else {
            return;
        };
        pass.fragments += listed as u64;
        pass.orphans += orphans as u64;
        pass.missing_count += missing.len() as u64;
        let room = MISSING_KEPT.saturating_sub(pass.missing.len());
        pass.missing.extend(missing.iter().take(room));
        if last_page {
            if let Some(mut done) = s.current.take() {
                done.finished = Some(Instant::now());
                s.last = Some(done);
            }
        }
    }

    /// Asks every chunkserver for a pass that starts from now on; the
    /// moment asked.
    pub fn want_fresh(&mut self) -> Instant {
        let now = Instant::now();
        self.wanted_after = Some(now);
        now
    }

    /// Whether `server`'s next heartbeat reply should ask it for a pass:
    /// one is wanted and none has started since.
    pub fn should_send(&self, server: ChunkserverId) -> bool {
        let Some(after) = self.wanted_after else {
            return false;
        };
        let s = self.servers.get(&server);
        let started = |p: &Option<Pass>| p.as_ref().and_then(|p| p.started);
        let latest = s.and_then(|s| started(&s.current).or(started(&s.last)));
        latest.is_none_or(|t| t < after)
    }

    /// Whether `server` finished a pass that started at or after `after`.
    pub fn done_since(&self, server: ChunkserverId, after: Instant) -> bool {
        self.servers
            .get(&server)
            .and_then(|s| s.last.as_ref())
            .and_then(|p| p.started)
            .is_some_and(|t| t >= after)
    }

    /// Every chunkserver's last whole pass (the ones this leader saw).
    pub fn results(&self) -> Vec<InventoryPass> {
        let mut out: Vec<InventoryPass> = self
            .servers
            .iter()
            .filter_map(|(id, s)| {
                let p = s.last.as_ref()?;
                Some(InventoryPass {
                    chunkserver: *id,
                    age_secs: p.finished.map_or(0, |t| t.elapsed().as_secs()),
                    fragments: p.fragments,
                    orphans: p.orphans,
                    missing: p.missing.clone(),
                    missing_count: p.missing_count,
                })
            })
            .collect();
        out.sort_by_key(|p| p.chunkserver);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_counts_from_its_first_page_to_its_last() {
        let mut l = Ledger::default();
        let cs = ChunkserverId(3);
        // A pass already under way when this leader started: not counted.
        l.page(cs, false, 10, 1, &[], true);
        assert!(l.results().is_empty());
        let asked = l.want_fresh();
        assert!(l.should_send(cs));
        l.page(cs, true, 100, 2, &[(BlockId(5), 1)], false);
        assert!(!l.should_send(cs), "a pass started since");
        assert!(!l.done_since(cs, asked));
        l.page(cs, false, 50, 1, &[(BlockId(9), 0)], true);
        assert!(l.done_since(cs, asked));
        let r = l.results();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].fragments, r[0].orphans, r[0].missing_count),
            (150, 3, 2)
        );
        assert_eq!(r[0].missing, vec![(BlockId(5), 1), (BlockId(9), 0)]);
        // Asked again: the finished pass is older than the ask.
        let again = l.want_fresh();
        assert!(l.should_send(cs));
        assert!(!l.done_since(cs, again));
    }
}
