//! Data helpers shared by cluster tests: seeded byte patterns, whole-file
//! writes and reads through the client library (no kernel cache between
//! the test and the cluster), and walking fragment directories.

use sparefs_client::{ClientError, DataClient, OpenFile};
use sparefs_proto::InodeId;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `len` bytes from a xorshift seeded with `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Creates `name` in the root and writes `bytes` in unaligned pieces.
pub async fn put(data: &Arc<DataClient>, name: &str, bytes: &[u8]) -> Result<InodeId, ClientError> {
    let attr = data
        .meta
        .create(InodeId::ROOT, name.as_bytes(), 0o644, true)
        .await?;
    let f = OpenFile::open(data.clone(), &attr).await?;
    // Unaligned pieces, to exercise extent merging and block cutting.
    for (i, piece) in bytes.chunks(1_000_003).enumerate() {
        f.write(i as u64 * 1_000_003, piece).await?;
    }
    f.flush().await?;
    Ok(attr.ino)
}

/// The whole file, read past any cached chunk map.
pub async fn get(data: &DataClient, ino: InodeId) -> Result<Vec<u8>, ClientError> {
    let attr = data.meta.getattr(ino).await?;
    data.invalidate(ino);
    data.read(ino, attr.size, 0, attr.size as usize).await
}

/// Every file under `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
