//! Stored records and their keys.

use super::{NsError, NsResult};
use crate::kv::{be, Cf, ReadKv, StoreError, Tx};
use serde::{Deserialize, Serialize};
use sparefs_proto::layout::Policy;
use sparefs_proto::limits::NAME_BYTES_MAX;
use sparefs_proto::namespace::{Attr, Caller, FileKind, Time};
use sparefs_proto::Errno;
use sparefs_proto::InodeId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeRec {
    pub kind: FileKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub rdev: u32,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub crtime: Time,
    /// Directories: the directory holding this one (for `..` and cycle checks).
    pub parent: InodeId,
    /// Directories: entries inside, for ENOTEMPTY without a scan.
    pub children: u64,
    /// Directories: the next readdir cookie to hand out.
    pub next_cookie: u64,
    /// Directories: redundancy policy new children inherit.
    pub policy: Option<Policy>,
    /// Symlinks: the target.
    pub target: Vec<u8>,
    /// POSIX access ACL beyond the mode bits (empty: none).
    pub acl: super::acl::Acl,
    /// Directories: the default ACL children inherit (empty: none).
    pub default_acl: super::acl::Acl,
}

impl InodeRec {
    pub fn attr(&self, ino: InodeId) -> Attr {
        Attr {
            ino,
            kind: self.kind,
            perm: self.perm,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            nlink: self.nlink,
            rdev: self.rdev,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.crtime,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DentryRec {
    pub ino: InodeId,
    pub kind: FileKind,
    pub cookie: u64,
}

/// A directory's entries in cookie order (`Cf::DirIndex`): the name, and a
/// copy of what the dentry says, so listing needs no lookup per entry.
/// Records written before the copy existed hold only the name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirIndexRec {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub ino: InodeId,
    pub kind: FileKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkserverRec {
    pub address: String,
    pub capacity_bytes: u64,
    pub token: [u8; 16],
    pub registered: Time,
    /// Being emptied: no new fragments, everything moved off.
    pub draining: bool,
}

pub fn inode_key(ino: InodeId) -> Vec<u8> {
    be(ino.0).to_vec()
}

pub fn dentry_key(parent: InodeId, name: &[u8]) -> Vec<u8> {
    let mut k = be(parent.0).to_vec();
    k.extend_from_slice(name);
    k
}

pub fn dirindex_key(parent: InodeId, cookie: u64) -> Vec<u8> {
    let mut k = be(parent.0).to_vec();
    k.extend_from_slice(&be(cookie));
    k
}

pub fn xattr_key(ino: InodeId, name: &[u8]) -> Vec<u8> {
    dentry_key(ino, name)
}

pub fn chunk_key(ino: InodeId, index: u64) -> Vec<u8> {
    dirindex_key(ino, index)
}

pub fn session_key(client: u128, seq: u64) -> Vec<u8> {
    let mut k = client.to_be_bytes().to_vec();
    k.extend_from_slice(&be(seq));
    k
}

pub const SYS_NEXT_INODE: &[u8] = b"next_inode";
pub const SYS_NEXT_BLOCK: &[u8] = b"next_block";
pub const SYS_NEXT_CHUNKSERVER: &[u8] = b"next_chunkserver";
pub const SYS_NEXT_SLICE: &[u8] = b"next_slice";
pub const SYS_FILES: &[u8] = b"files";
pub const SYS_APPLIED: &[u8] = b"applied";
pub const SYS_CLUSTER_KEY: &[u8] = b"cluster_key";
/// How long a capability handed out with a layout stays valid: long
/// enough for a slow write of a block, short enough that one taken from a
/// reader is soon useless (readers fetch chunk maps again within a second).
pub const CAPABILITY_SECS: u64 = 120;

pub fn cluster_key(
    kv: &impl ReadKv,
) -> Result<Option<sparefs_proto::layout::ClusterKey>, StoreError> {
    kv.get_rec(Cf::Sys, SYS_CLUSTER_KEY)
}

pub fn sys_u64(kv: &impl ReadKv, key: &[u8]) -> Result<u64, StoreError> {
    Ok(kv.get_rec::<u64>(Cf::Sys, key)?.unwrap_or(0))
}

// Helpers both reads and writes use.

pub(super) fn root_only(c: &Caller) -> NsResult<()> {
    if c.uid != 0 {
        return Err(Errno::EPERM.into());
    }
    Ok(())
}

/// Checks a name component for creation or lookup.
pub fn valid_name(name: &[u8]) -> Result<(), Errno> {
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

pub(super) fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

pub fn load<R: ReadKv>(kv: &R, ino: InodeId) -> NsResult<InodeRec> {
    kv.get_rec::<InodeRec>(Cf::Inodes, &inode_key(ino))?
        .ok_or(NsError::Errno(Errno::ENOENT))
}

pub(super) fn store<R: ReadKv>(tx: &mut Tx<R>, ino: InodeId, rec: &InodeRec) {
    tx.put_rec(Cf::Inodes, inode_key(ino), rec);
}

pub fn load_dir<R: ReadKv>(kv: &R, ino: InodeId) -> NsResult<InodeRec> {
    let d = load(kv, ino)?;
    if !d.is_dir() {
        return Err(Errno::ENOTDIR.into());
    }
    Ok(d)
}

pub(super) fn dentry<R: ReadKv>(
    kv: &R,
    parent: InodeId,
    name: &[u8],
) -> NsResult<Option<DentryRec>> {
    Ok(kv.get_rec(Cf::Dentries, &dentry_key(parent, name))?)
}

/// Returns the first of `count` fresh ids from the counter `key`.
pub(super) fn next_id<R: ReadKv>(tx: &mut Tx<R>, key: &[u8], count: u64) -> NsResult<u64> {
    let first = sys_u64(tx, key)?;
    tx.put_rec(Cf::Sys, key.to_vec(), &(first + count));
    Ok(first)
}

pub(super) fn add_files<R: ReadKv>(tx: &mut Tx<R>, delta: i64) -> NsResult<()> {
    let n = sys_u64(tx, SYS_FILES)? as i64 + delta;
    tx.put_rec(Cf::Sys, SYS_FILES.to_vec(), &(n.max(0) as u64));
    Ok(())
}
