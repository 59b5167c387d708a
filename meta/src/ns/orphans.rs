//! Files unlinked while open (POSIX: a file lives until its last close).
//! The last unlink of a regular file does not free it: the inode stays,
//! with no name and `nlink` 0, and is listed here with the time of the
//! unlink. Everything a descriptor does goes by inode number, so reads,
//! writes, fstat and ftruncate through descriptors opened before go on.
//! The leader proposes `ReapOrphans` for those no live mount reports open
//! (`leader::LeaderDuties`); reaping frees them as an unlink used to.
//!
//! Keys: `Cf::Sys`, `orphan/` + inode (big-endian) -> `Time` of the unlink.

use super::NsResult;
use crate::kv::{be, read_be, Cf, ReadKv, Tx};
use sparefs_proto::namespace::Time;
use sparefs_proto::InodeId;

const PREFIX: &[u8] = b"orphan/";

fn key(ino: InodeId) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(&be(ino.0));
    k
}

/// Lists `ino` (a regular file whose last name just went) as an orphan.
pub fn adopt<R: ReadKv>(tx: &mut Tx<R>, ino: InodeId, now: Time) {
    tx.put_rec(Cf::Sys, key(ino), &now);
}

/// Up to `limit` orphans, oldest inode numbers first, with their unlink times.
pub fn list<R: ReadKv>(kv: &R, limit: usize) -> NsResult<Vec<(InodeId, Time)>> {
    let mut out = Vec::new();
    for (k, v) in kv.scan(Cf::Sys, PREFIX, PREFIX, limit)? {
        let Some(ino) = k.get(PREFIX.len()..).and_then(read_be) else {
            continue;
        };
        out.push((InodeId(ino), crate::kv::decode::<Time>(Cf::Sys, &v)?));
    }
    Ok(out)
}

/// Whether `ino` is an orphan.
pub fn is_orphan<R: ReadKv>(kv: &R, ino: InodeId) -> NsResult<bool> {
    Ok(kv.get(Cf::Sys, &key(ino))?.is_some())
}

/// Forgets `ino` as an orphan (it is being freed); the caller frees it.
pub fn forget<R: ReadKv>(tx: &mut Tx<R>, ino: InodeId) {
    tx.delete(Cf::Sys, key(ino));
}
