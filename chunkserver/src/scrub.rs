//! Background scrub: re-reads every fragment and checks its blake3 sums, at
//! a bounded byte rate, one pass every `--scrub-every` (a day by default:
//! passes back to back kept a host's disk reading all the time, slowing
//! everything else on it). A bad or vanished fragment is dropped from the
//! store and reported lost to the meta (which has it rebuilt elsewhere).

use crate::fragments::FragmentStore;
use sparefs_proto::msg::RpcError;
use sparefs_proto::BlockId;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shortest pause between passes.
const PASS_PAUSE: Duration = Duration::from_secs(1);
const PAGE: usize = 1024;

pub type LostList = Arc<Mutex<Vec<(BlockId, u8)>>>;

pub fn start(store: Arc<FragmentStore>, rate_bytes_per_sec: u64, every: Duration, lost: LostList) {
    if rate_bytes_per_sec == 0 {
        tracing::info!("scrub disabled");
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("scrub".into())
        .spawn(move || loop {
            let started = Instant::now();
            let (checked, bad) = pass(&store, rate_bytes_per_sec, &lost);
            tracing::debug!(checked, bad, "scrub pass finished");
            metrics::counter!("sparefs_scrub_fragments_checked_total").increment(checked);
            metrics::counter!("sparefs_scrub_bad_fragments_total").increment(bad);
            metrics::counter!("sparefs_scrub_passes_total").increment(1);
            std::thread::sleep(every.saturating_sub(started.elapsed()).max(PASS_PAUSE));
        });
    if let Err(e) = spawned {
        tracing::error!("start scrub: {e}");
    }
}

/// One pass over every fragment: (checked, bad).
pub fn pass(store: &FragmentStore, rate: u64, lost: &LostList) -> (u64, u64) {
    let (mut checked, mut bad) = (0u64, 0u64);
    let mut after = None;
    let started = Instant::now();
    let mut bytes = 0u64;
    loop {
        let (page, last) = store.inventory_page(after, PAGE);
        for (block, slot, _) in &page {
            after = Some((*block, *slot));
            match store.verify(*block, *slot) {
                Ok(len) => bytes += len,
                Err(RpcError::Corrupt { detail, .. }) => {
                    tracing::error!(
                        block = block.0,
                        slot,
                        "scrub: bad fragment ({detail}); dropped"
                    );
                    store.discard(*block, *slot);
                    report(lost, *block, *slot);
                    bad += 1;
                }
                Err(RpcError::NoFragment { .. }) => {
                    tracing::error!(block = block.0, slot, "scrub: fragment file vanished");
                    store.discard(*block, *slot);
                    report(lost, *block, *slot);
                    bad += 1;
                }
                Err(e) => tracing::warn!(block = block.0, slot, "scrub: {e}"),
            }
            checked += 1;
            // Keep the average at `rate`: sleep off any lead.
            let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
            let spent = started.elapsed();
            if due > spent {
                std::thread::sleep(due - spent);
            }
        }
        if last || page.is_empty() {
            break;
        }
    }
    (checked, bad)
}

pub(crate) fn report(lost: &LostList, block: BlockId, slot: u8) {
    let mut l = lost.lock().unwrap_or_else(|p| p.into_inner());
    // Bounded: past this, the inventory's missing check finds the rest.
    if l.len() < 65_536 {
        l.push((block, slot));
    }
}
