//! Placement of a new block's fragments: distinct chunkservers, chosen at
//! random with weights proportional to free space, among those that are up.
//! Pure: the leader calls it with its heartbeat view and a random source,
//! then proposes the result, so replicas never disagree about it.

use rand::Rng;
use sparefs_proto::layout::Policy;
use sparefs_proto::{ChunkserverId, Errno};

/// Picks `width` distinct servers from `(id, free_bytes)`; servers with no
/// free space are never picked. ENOSPC when fewer than `width` qualify.
pub fn choose(
    servers: &[(ChunkserverId, u64)],
    width: usize,
    rng: &mut impl Rng,
) -> Result<Vec<ChunkserverId>, Errno> {
    let mut pool: Vec<(ChunkserverId, u64)> = servers
        .iter()
        .copied()
        .filter(|(_, free)| *free > 0)
        .collect();
    if pool.len() < width {
        return Err(Errno::ENOSPC);
    }
    let mut out = Vec::with_capacity(width);
    for _ in 0..width {
        let total: u128 = pool.iter().map(|(_, f)| *f as u128).sum();
        let mut pick = rng.gen_range(0..total);
        let idx = pool
            .iter()
            .position(|(_, f)| {
                if pick < *f as u128 {
                    true
                } else {
                    pick -= *f as u128;
                    false
                }
            })
            .expect("pick < total lands in some server");
        out.push(pool.swap_remove(idx).0);
    }
    Ok(out)
}

/// The policy to write new blocks under when only `hosts` servers can take
/// fragments: the wanted one when it fits; otherwise the strongest one that
/// fits and still survives the loss of one more host (`ec:K+M` keeps K data
/// fragments with fewer parity, or falls back to replicas: `ec:2+1` on two
/// hosts writes `rep:2`). Below `min_hosts` hosts (default 2), nothing: a
/// lone host's writes would not survive its loss unless the operator said
/// they may (`min_hosts` 1).
pub fn degraded(wanted: Policy, hosts: usize, min_hosts: usize) -> Option<Policy> {
    if wanted.width() <= hosts {
        return Some(wanted);
    }
    if hosts < min_hosts.max(1) {
        return None;
    }
    let lowered = match wanted {
        Policy::Ec { data, .. } if hosts > data as usize => Policy::Ec {
            data,
            parity: (hosts - data as usize) as u8,
        },
        Policy::Ec { parity, .. } => Policy::Rep {
            copies: (hosts as u8).min(parity.saturating_add(1)),
        },
        Policy::Rep { .. } => Policy::Rep {
            copies: hosts as u8,
        },
    };
    Some(lowered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degraded_policies_survive_one_more_loss() {
        let ec21 = Policy::Ec { data: 2, parity: 1 };
        assert_eq!(degraded(ec21, 3, 2), Some(ec21));
        assert_eq!(degraded(ec21, 2, 2), Some(Policy::Rep { copies: 2 }));
        assert_eq!(degraded(ec21, 1, 2), None, "one host: refused");
        assert_eq!(degraded(ec21, 1, 1), Some(Policy::Rep { copies: 1 }));
        assert_eq!(degraded(ec21, 0, 1), None);
        let ec42 = Policy::Ec { data: 4, parity: 2 };
        assert_eq!(
            degraded(ec42, 5, 2),
            Some(Policy::Ec { data: 4, parity: 1 })
        );
        assert_eq!(degraded(ec42, 3, 2), Some(Policy::Rep { copies: 3 }));
        assert_eq!(
            degraded(Policy::Rep { copies: 3 }, 2, 2),
            Some(Policy::Rep { copies: 2 })
        );
    }
    use proptest::prelude::*;
    use rand::SeedableRng;

    proptest! {
        #[test]
        fn distinct_and_only_servers_with_space(frees in proptest::collection::vec(0u64..1000, 0..12), width in 1usize..6, seed: u64) {
            let servers: Vec<_> = frees.iter().enumerate().map(|(i, f)| (ChunkserverId(i as u64 + 1), *f)).collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let eligible = frees.iter().filter(|f| **f > 0).count();
            match choose(&servers, width, &mut rng) {
                Ok(picked) => {
                    prop_assert_eq!(picked.len(), width);
                    let mut d = picked.clone();
                    d.sort();
                    d.dedup();
                    prop_assert_eq!(d.len(), width);
                    for p in picked {
                        prop_assert!(frees[(p.0 - 1) as usize] > 0);
                    }
                }
                Err(e) => {
                    prop_assert_eq!(e, Errno::ENOSPC);
                    prop_assert!(eligible < width);
                }
            }
        }
    }

    #[test]
    fn weighted_by_free_space() {
        let servers = [(ChunkserverId(1), 900), (ChunkserverId(2), 100)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let firsts = (0..10_000)
            .filter(|_| choose(&servers, 1, &mut rng).expect("room")[0] == ChunkserverId(1))
            .count();
        assert!(
            (8_700..9_300).contains(&firsts),
            "server with 90% of the space picked {firsts}/10000 times"
        );
    }
}
