//! Coding of blocks into fragments and the fragment checksum format.
//!
//! Owns: `rep:N` (N identical fragments) and `ec:K+M` (K data shards of
//! ceil(len/K) bytes, zero-padded, and M Reed-Solomon parity shards, via
//! reed-solomon-erasure with SIMD), decoding from any K fragments (also of a
//! byte range taken at the same offset from each shard), and blake3
//! checksums per 64 KiB of a fragment. Must not touch: files, sockets.

pub mod block_table;

use reed_solomon_erasure::galois_8::ReedSolomon;
use sparefs_proto::layout::Policy;

/// Bytes covered by one checksum.
pub const CHECKSUM_SPAN: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodeError {
    #[error("only {have} of the {need} fragments needed are available")]
    TooFewFragments { have: usize, need: usize },
    #[error("fragments of unequal length")]
    UnequalLengths,
    #[error("invalid policy {0}")]
    Policy(Policy),
}

/// Length of each fragment of a block of `block_len` bytes.
pub fn fragment_len(policy: Policy, block_len: usize) -> usize {
    match policy {
        Policy::Rep { .. } => block_len,
        Policy::Ec { data, .. } => block_len.div_ceil(data as usize),
    }
}

/// Fragments needed to read a block.
pub fn needed(policy: Policy) -> usize {
    match policy {
        Policy::Rep { .. } => 1,
        Policy::Ec { data, .. } => data as usize,
    }
}

fn codec(data: u8, parity: u8) -> Result<ReedSolomon, CodeError> {
    ReedSolomon::new(data as usize, parity as usize)
        .map_err(|_| CodeError::Policy(Policy::Ec { data, parity }))
}

/// Cuts `block` into the policy's fragments, in fragment order.
pub fn encode(policy: Policy, block: &[u8]) -> Result<Vec<Vec<u8>>, CodeError> {
    match policy {
        Policy::Rep { copies } => Ok(vec![block.to_vec(); copies as usize]),
        Policy::Ec { data, parity } => {
            let len = fragment_len(policy, block.len()).max(1);
            let mut shards: Vec<Vec<u8>> = (0..policy.width())
                .map(|i| {
                    let start = (i * len).min(block.len());
                    let end = ((i + 1) * len).min(block.len());
                    let mut s = if i < data as usize {
                        block[start..end].to_vec()
                    } else {
                        Vec::new()
                    };
                    s.resize(len, 0);
                    s
                })
                .collect();
            codec(data, parity)?
                .encode(&mut shards)
                .map_err(|_| CodeError::UnequalLengths)?;
            Ok(shards)
        }
    }
}

/// Fills in the missing data fragments from any `needed(policy)` present
/// ones. Works on whole fragments or on the same byte range of each.
pub fn reconstruct(policy: Policy, fragments: &mut [Option<Vec<u8>>]) -> Result<(), CodeError> {
    let have = fragments.iter().filter(|f| f.is_some()).count();
    let need = needed(policy);
    if have < need {
        return Err(CodeError::TooFewFragments { have, need });
    }
    match policy {
        Policy::Rep { .. } => {
            let copy = fragments.iter().flatten().next().cloned();
            for f in fragments.iter_mut() {
                if f.is_none() {
                    *f = copy.clone();
                }
            }
            Ok(())
        }
        Policy::Ec { data, parity } => {
            if fragments.iter().all(|f| f.is_some()) {
                return Ok(());
            }
            if fragments.iter().flatten().all(|f| f.is_empty()) {
                for f in fragments.iter_mut() {
                    f.get_or_insert_with(Vec::new);
                }
                return Ok(());
            }
            codec(data, parity)?
                .reconstruct_data(fragments)
                .map_err(|_| CodeError::UnequalLengths)
        }
    }
}

/// The block's bytes `[0, block_len)` from its fragments (missing ones rebuilt).
pub fn decode(
    policy: Policy,
    block_len: usize,
    mut fragments: Vec<Option<Vec<u8>>>,
) -> Result<Vec<u8>, CodeError> {
    reconstruct(policy, &mut fragments)?;
    let mut out = Vec::with_capacity(block_len);
    for f in fragments.into_iter().take(needed(policy)).flatten() {
        out.extend_from_slice(&f);
    }
    out.truncate(block_len);
    Ok(out)
}

/// blake3 of each 64 KiB span of `fragment`.
pub fn checksums(fragment: &[u8]) -> Vec<[u8; 32]> {
    fragment
        .chunks(CHECKSUM_SPAN)
        .map(|c| *blake3::hash(c).as_bytes())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decodes_from_any_k_fragments(len in 0usize..20_000, k in 1u8..6, m in 1u8..4, seed: u64) {
            let policy = Policy::Ec { data: k, parity: m };
            let block: Vec<u8> = (0..len).map(|i| (i as u64).wrapping_mul(seed | 1).wrapping_add(seed >> 7) as u8).collect();
            let frags = encode(policy, &block).expect("encode");
            prop_assert_eq!(frags.len(), (k + m) as usize);
            // Drop m fragments chosen by the seed.
            let mut present: Vec<Option<Vec<u8>>> = frags.into_iter().map(Some).collect();
            let mut s = seed;
            for _ in 0..m {
                let i = (s % present.len() as u64) as usize;
                present[i] = None;
                s = s.rotate_left(13) ^ 0x9e37_79b9;
            }
            prop_assert_eq!(decode(policy, len, present).expect("decode"), block);
        }

        #[test]
        fn a_range_of_each_shard_reconstructs_that_range(len in 1usize..50_000, start in 0usize..1000, span in 1usize..1000, lost in 0usize..3) {
            let policy = Policy::Ec { data: 2, parity: 1 };
            let block: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let frags = encode(policy, &block).expect("encode");
            let flen = frags[0].len();
            let (a, b) = (start.min(flen), (start + span).min(flen));
            let mut ranges: Vec<Option<Vec<u8>>> = frags.iter().map(|f| Some(f[a..b].to_vec())).collect();
            ranges[lost] = None;
            reconstruct(policy, &mut ranges).expect("reconstruct");
            for i in 0..2 {
                prop_assert_eq!(ranges[i].as_deref(), Some(&frags[i][a..b]));
            }
        }
    }

    #[test]
    fn too_few_fragments_is_an_error() {
        let p = Policy::Ec { data: 2, parity: 1 };
        let e = decode(p, 10, vec![None, None, Some(vec![0; 5])]).expect_err("one of three");
        assert_eq!(e, CodeError::TooFewFragments { have: 1, need: 2 });
        assert_eq!(
            decode(
                Policy::Rep { copies: 2 },
                3,
                vec![None, Some(vec![1, 2, 3])]
            )
            .expect("rep"),
            vec![1, 2, 3]
        );
    }
}
