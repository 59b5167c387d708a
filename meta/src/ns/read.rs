//! Queries of the namespace. They read the store after a ReadIndex round and
//! never write.

use super::attrs::check_xattr_access;
use super::perm::{self, R, W, X};
use super::records::*;
use super::{NsError, NsResult};
use crate::kv::{be, decode, read_be, Cf, ReadKv, StoreError};
use sparefs_proto::layout::{Capability, ChunkserverInfo, ChunkserverState, Policy, Slice};
use sparefs_proto::limits::*;
use sparefs_proto::namespace::*;
use sparefs_proto::{ChunkserverId, Errno, InodeId};

/// Live facts about chunkservers that are not in the replicated state
/// (heartbeats stay in the leader's memory).
pub trait ChunkserverLiveness {
    fn live(&self, id: ChunkserverId) -> Option<(ChunkserverState, u64, u64)>;
    /// State of a server not heard from at all.
    fn silent_state(&self) -> ChunkserverState {
        ChunkserverState::Down
    }
}

impl ChunkserverLiveness for () {
    fn live(&self, _: ChunkserverId) -> Option<(ChunkserverState, u64, u64)> {
        None
    }
}

/// `now` (Unix seconds) dates the capabilities handed out with layouts.
/// A chunk's visible slices with their blocks' locations, and a read
/// capability for each block.
fn chunk_map<K: ReadKv>(
    kv: &K,
    ino: InodeId,
    index: u64,
    now: u64,
) -> NsResult<(Vec<Slice>, Vec<Capability>)> {
    let mut slices: Vec<Slice> = kv
        .get_rec(Cf::Chunks, &chunk_key(ino, index))?
        .unwrap_or_default();
    super::blocks::fill_layouts(kv, &mut slices)?;
    let mut capabilities = Vec::new();
    if slices.iter().any(|s| !s.blocks.is_empty()) {
        let key = cluster_key(kv)?.ok_or(NsError::Errno(Errno::EAGAIN))?;
        for b in slices.iter().flat_map(|s| s.blocks.iter()) {
            let expires = now + CAPABILITY_SECS;
            capabilities.push(Capability::issue(&key, b.id, false, expires, &b.fragments));
        }
    }
    Ok((slices, capabilities))
}

/// Answers one read from the applied state. (Long: one short arm per
/// `ReadOp`, an exhaustive dispatch that reads best in one place.)
pub fn read<K: ReadKv>(
    kv: &K,
    c: &Caller,
    op: &ReadOp,
    live: &dyn ChunkserverLiveness,
    now: u64,
) -> NsResult<NsReply> {
    match op {
        ReadOp::Lookup { parent, name } => {
            let dir = load_dir(kv, *parent)?;
            perm::check(&dir, c, X)?;
            let ino = match name.as_slice() {
                b"." => *parent,
                b".." => dir.parent,
                _ => {
                    valid_name(name)?;
                    kv.get_rec::<DentryRec>(Cf::Dentries, &dentry_key(*parent, name))?
                        .ok_or(NsError::Errno(Errno::ENOENT))?
                        .ino
                }
            };
            Ok(NsReply::Attr(load(kv, ino)?.attr(ino)))
        }
        ReadOp::GetAttr { ino } => Ok(NsReply::Attr(load(kv, *ino)?.attr(*ino))),
        ReadOp::ReadDir {
            ino,
            after_cookie,
            limit,
        } => Ok(NsReply::Dir(list_dir(kv, c, *ino, *after_cookie, *limit)?)),
        ReadOp::ReadDirPlus {
            ino,
            after_cookie,
            limit,
        } => {
            let limit = (*limit).min(READDIRPLUS_ENTRIES_MAX);
            // Read permission, as a plain listing (list_dir checks it). The
            // attributes are for the kernel's caches: a caller without search
            // permission cannot reach them there (the mount runs with
            // `default_permissions`, so the kernel checks search permission
            // on every path walk), and refusing would leave such a directory
            // unlistable, since the kernel reads a first page with them.
            let dir = load_dir(kv, *ino)?;
            let mut out = Vec::new();
            // From the start, "." (cookie 1) and ".." (cookie 2) come first:
            // the kernel's format wants their attributes, and a mount asking
            // for them apart would pay two more round trips per listing.
            if *after_cookie < 1 {
                let e = DirEntry {
                    name: b".".to_vec(),
                    ino: *ino,
                    kind: FileKind::Dir,
                    cookie: 1,
                };
                out.push((e, dir.attr(*ino)));
            }
            if *after_cookie < 2 {
                let e = DirEntry {
                    name: b"..".to_vec(),
                    ino: dir.parent,
                    kind: FileKind::Dir,
                    cookie: 2,
                };
                out.push((e, load(kv, dir.parent)?.attr(dir.parent)));
            }
            for e in list_dir(kv, c, *ino, (*after_cookie).max(2), limit)? {
                let attr = load(kv, e.ino)?.attr(e.ino);
                out.push((e, attr));
            }
            Ok(NsReply::DirPlus(out))
        }
        ReadOp::ReadLink { ino } => {
            let inode = load(kv, *ino)?;
            if inode.kind != FileKind::Symlink {
                return Err(Errno::EINVAL.into());
            }
            Ok(NsReply::Bytes(inode.target))
        }
        ReadOp::GetXattr { ino, name } => {
            let mut inode = load(kv, *ino)?;
            check_xattr_access(&inode, c, name, R)?;
            if let Some(acl) = super::attrs::acl_slot(&mut inode, name) {
                if acl.is_empty() {
                    return Err(Errno::ENODATA.into());
                }
                return Ok(NsReply::Bytes(super::acl::encode(acl)));
            }
            let value: Vec<u8> = kv
                .get_rec(Cf::Xattrs, &xattr_key(*ino, name))?
                .ok_or(NsError::Errno(Errno::ENODATA))?;
            Ok(NsReply::Bytes(value))
        }
        ReadOp::ListXattr { ino } => {
            let inode = load(kv, *ino)?;
            let prefix = be(ino.0);
            let mut names = Vec::new();
            if !inode.acl.is_empty() {
                names.push(super::acl::ACCESS.to_vec());
            }
            if !inode.default_acl.is_empty() {
                names.push(super::acl::DEFAULT.to_vec());
            }
            for (k, _) in kv.scan(Cf::Xattrs, &prefix, &prefix, usize::MAX)? {
                let name = k[8..].to_vec();
                // user.* names are listed only for those who may read them;
                // trusted.* only for root.
                if check_xattr_access(&inode, c, &name, R).is_ok()
                    || name.starts_with(b"user.") && c.uid == 0
                {
                    names.push(name);
                }
            }
            Ok(NsReply::Names(names))
        }
        ReadOp::Access { ino, mask } => {
            let inode = load(kv, *ino)?;
            if mask & !(R | W | X) != 0 {
                return Err(Errno::EINVAL.into());
            }
            perm::check(&inode, c, *mask)?;
            Ok(NsReply::Done)
        }
        ReadOp::StatFs => {
            let (mut capacity, mut used) = (0u64, 0u64);
            for server in chunkservers(kv, live)? {
                capacity += server.capacity_bytes;
                used += server.used_bytes;
            }
            Ok(NsReply::StatFs(StatFs {
                capacity_bytes: capacity,
                free_bytes: capacity.saturating_sub(used),
                files: sys_u64(kv, SYS_FILES)?,
                block_bytes: 4096,
                name_bytes_max: NAME_BYTES_MAX as u32,
            }))
        }
        ReadOp::GetPolicy { ino } => {
            // Children copy their directory's policy when made, so the
            // inode's own is the effective one; none means the cluster default.
            let inode = load(kv, *ino)?;
            match inode.policy {
                Some(p) => Ok(NsReply::Policy(p)),
                None => Ok(NsReply::Policy(default_policy(
                    chunkservers(kv, live)?.len(),
                ))),
            }
        }
        ReadOp::ReadChunk { ino, index } => {
            let inode = load(kv, *ino)?;
            if inode.kind != FileKind::File {
                return Err(Errno::EINVAL.into());
            }
            // The map's capabilities read the file's bytes: for callers who
            // may read it. (A mount reads for the handles the kernel let it
            // open, an exec's among them, as root.)
            perm::check(&inode, c, R)?;
            let (slices, capabilities) = chunk_map(kv, *ino, *index, now)?;
            Ok(NsReply::Chunk {
                slices,
                capabilities,
            })
        }
        ReadOp::Open { ino, access } => {
            let inode = load(kv, *ino)?;
            if access & !(R | W | X) != 0 {
                return Err(Errno::EINVAL.into());
            }
            perm::check(&inode, c, *access)?;
            let chunk = if inode.kind == FileKind::File && inode.size <= OPEN_CHUNK_BYTES_MAX {
                Some(chunk_map(kv, *ino, 0, now)?)
            } else {
                None
            };
            Ok(NsReply::Opened {
                attr: inode.attr(*ino),
                chunk,
            })
        }
        ReadOp::ListConfig { prefix, after } => super::config::list_config(kv, prefix, after),
        ReadOp::GetFence { ino } => super::fence::get_fence(kv, *ino),
        ReadOp::ListChunkservers => Ok(NsReply::Chunkservers(chunkservers(kv, live)?)),
        ReadOp::GetLock { ino, lock } => {
            load(kv, *ino)?;
            super::locks::get_lock(kv, *ino, lock)
        }
        ReadOp::Health => {
            let up: std::collections::HashSet<ChunkserverId> = chunkservers(kv, live)?
                .into_iter()
                .filter(|s| matches!(s.state, ChunkserverState::Up | ChunkserverState::Full))
                .map(|s| s.id)
                .collect();
            let (mut protected, mut degraded, mut unreadable) = (0, 0, 0);
            let mut from = Vec::new();
            loop {
                let page = kv.scan(Cf::Blocks, &[], &from, 1024)?;
                let exhausted = page.len() < 1024;
                for (k, v) in &page {
                    let b: super::blocks::BlockRec = decode(Cf::Blocks, v)?;
                    if b.refs == 0 {
                        continue;
                    }
                    let alive = b.fragments.iter().filter(|f| up.contains(f)).count();
                    let need = match b.policy {
                        Policy::Rep { .. } => 1,
                        Policy::Ec { data, .. } => data as usize,
                    };
                    if alive == b.fragments.len() && b.policy == b.wanted {
                        protected += 1;
                    } else if alive >= need {
                        degraded += 1;
                    } else {
                        unreadable += 1;
                    }
                    from = k.clone();
                    from.push(0);
                }
                if exhausted {
                    break;
                }
            }
            Ok(NsReply::Health {
                protected,
                degraded,
                unreadable,
            })
        }
    }
}

/// The default follows the cluster's size: every block survives one lost
/// host where there are hosts enough, at the lowest overhead that allows.
pub fn default_policy(chunkservers: usize) -> Policy {
    match chunkservers {
        0 | 1 => Policy::Rep { copies: 1 },
        2 => Policy::Rep { copies: 2 },
        3..=5 => Policy::Ec { data: 2, parity: 1 },
        _ => Policy::Ec { data: 4, parity: 2 },
    }
}

pub fn chunkservers<K: ReadKv>(
    kv: &K,
    live: &dyn ChunkserverLiveness,
) -> NsResult<Vec<ChunkserverInfo>> {
    let mut out = Vec::new();
    for (k, v) in kv.scan(Cf::Chunkservers, &[], &[], usize::MAX)? {
        let id = ChunkserverId(
            read_be(&k).ok_or_else(|| StoreError::Invalid("short chunkserver key".into()))?,
        );
        let rec: ChunkserverRec = decode(Cf::Chunkservers, &v)?;
        let (state, capacity_bytes, used_bytes) =
            live.live(id)
                .unwrap_or((live.silent_state(), rec.capacity_bytes, 0));
        out.push(ChunkserverInfo {
            id,
            address: rec.address,
            state,
            capacity_bytes,
            used_bytes,
            draining: rec.draining,
        });
    }
    Ok(out)
}

/// A directory's entries after `after_cookie`, at most `limit`, in cookie
/// order (`limit` clamped to `READDIR_ENTRIES_MAX`).
fn list_dir<R: ReadKv>(
    kv: &R,
    c: &Caller,
    ino: InodeId,
    after_cookie: u64,
    limit: u32,
) -> NsResult<Vec<DirEntry>> {
    let dir = load_dir(kv, ino)?;
    perm::check(&dir, c, R)?;
    let limit = limit.clamp(1, READDIR_ENTRIES_MAX) as usize;
    let prefix = be(ino.0);
    let start = dirindex_key(ino, after_cookie.saturating_add(1));
    let mut out = Vec::new();
    for (k, v) in kv.scan(Cf::DirIndex, &prefix, &start, limit)? {
        let cookie =
            read_be(&k[8..]).ok_or_else(|| StoreError::Invalid("short dirindex key".into()))?;
        let rec = match decode::<DirIndexRec>(Cf::DirIndex, &v) {
            Ok(rec) => rec,
            Err(_) => {
                // Written before the index kept a copy of the dentry.
                let name: Vec<u8> = decode(Cf::DirIndex, &v)?;
                let entry: DentryRec = kv
                    .get_rec(Cf::Dentries, &dentry_key(ino, &name))?
                    .ok_or_else(|| {
                        StoreError::Invalid(format!("dirindex of {ino} names a missing entry"))
                    })?;
                DirIndexRec {
                    name,
                    ino: entry.ino,
                    kind: entry.kind,
                }
            }
        };
        out.push(DirEntry {
            name: rec.name,
            ino: rec.ino,
            kind: rec.kind,
            cookie,
        });
    }
    Ok(out)
}
