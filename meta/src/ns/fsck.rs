//! The filesystem check (`sparefs fsck`): reads the whole replicated state
//! once (a consistent snapshot online, a stopped replica's database
//! offline) and reports what disagrees: entries and inodes, link and entry
//! counts, reachability and cycles, the readdir index, layouts of inodes
//! that are gone, block references against the block table, and blocks
//! short of fragments on live chunkservers. Each finding carries the
//! repair that fixes it (`apply_fix`), applied through Raft only if the
//! state is still exactly as found.
//!
//! Owns: the checks and the repairs. Must not touch: how the state is read
//! (any `ReadKv`), chunkservers' contents (`sparefs fsck --verify-data`'s).

use super::blocks::{block_key, BlockRec};
use super::entries::{delete_entry, insert_entry, new_inode};
use super::read::ChunkserverLiveness;
use super::records::*;
use super::{NsError, NsResult};
use crate::kv::{decode, read_be, Cf, ReadKv, StoreError, Tx};
use sparefs_proto::fsck::{
    Finding, FindingKind, Fix, FsckReport, InventoryPass, FSCK_FINDINGS_MAX,
};
use sparefs_proto::layout::{ChunkserverState, Slice};
use sparefs_proto::limits::CHUNK_BYTES;
use sparefs_proto::namespace::{Caller, FileKind, NsReply, Time};
use sparefs_proto::{BlockId, ClientId, Errno, InodeId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const PAGE: usize = 4096;
pub const LOST_FOUND: &[u8] = b"lost+found";

/// How far a check has come, for a progress bar elsewhere: records read
/// so far, and an estimate of all it will read (three per inode, more for
/// layouts and blocks; raised as it is passed).
#[derive(Default)]
pub struct Progress {
    done: AtomicU64,
    total: AtomicU64,
    running: AtomicBool,
}

impl Progress {
    fn start(&self, total: u64) {
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total.max(1), Ordering::Relaxed);
        self.running.store(true, Ordering::Release);
    }

    fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        // Past the estimate: some tenth more to go, say.
        if done >= self.total.load(Ordering::Relaxed) {
            self.total.store(done + done / 10 + 1, Ordering::Relaxed);
        }
    }

    /// (records read, records estimated) while a check runs.
    pub fn get(&self) -> Option<(u64, u64)> {
        self.running.load(Ordering::Acquire).then(|| {
            (
                self.done.load(Ordering::Relaxed),
                self.total.load(Ordering::Relaxed),
            )
        })
    }
}

/// Marks the check ended however it ends.
struct Running<'a>(&'a Progress);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

/// What is wrong with an inode's ACLs (kept in its record), if anything:
/// each must be valid (acl(5)), a default ACL belongs to a directory, and
/// an access ACL's bits are the inode's mode bits (chmod keeps them so).
fn acl_problem(r: &InodeRec) -> Option<String> {
    let valid = |acl: &super::acl::Acl| super::acl::parse(&super::acl::encode(acl)).is_ok();
    if !r.acl.is_empty() {
        if !valid(&r.acl) {
            return Some("access ACL not valid".into());
        }
        let bits = super::acl::mode_of(&r.acl);
        if bits != r.perm & 0o777 {
            return Some(format!(
                "access ACL gives mode {bits:03o}, the inode has {:03o}",
                r.perm & 0o777
            ));
        }
    }
    if !r.default_acl.is_empty() {
        if r.kind != FileKind::Dir {
            return Some(format!("default ACL on a {:?}, not a directory", r.kind));
        }
        if !valid(&r.default_acl) {
            return Some("default ACL not valid".into());
        }
    }
    None
}

/// The first file using block `id` and every use of it, for a finding:
/// "inode I at byte B, ...".
fn used_by(users: &HashMap<u64, Vec<(u64, u64)>>, id: u64) -> (Option<InodeId>, String) {
    let whose = users.get(&id).map(Vec::as_slice).unwrap_or_default();
    let list: Vec<String> = whose
        .iter()
        .map(|(ino, at)| format!("inode {ino} at byte {at}"))
        .collect();
    (whose.first().map(|(i, _)| InodeId(*i)), list.join(", "))
}

/// Calls `f` for every record of `cf`, page by page.
fn each(
    kv: &impl ReadKv,
    progress: &Progress,
    cf: Cf,
    prefix: &[u8],
    mut f: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut start = prefix.to_vec();
    loop {
        let page = kv.scan(cf, prefix, &start, PAGE)?;
        let n = page.len();
        progress.add(n as u64);
        for (k, v) in page {
            start = k.clone();
            start.push(0);
            f(k, v)?;
        }
        if n < PAGE {
            return Ok(());
        }
    }
}

/// What the check keeps per inode.
struct Node {
    kind: FileKind,
    nlink: u32,
    parent: InodeId,
    children: u64,
    next_cookie: u64,
    size: u64,
    /// Names found, subdirectories found, entries found.
    names: u32,
    subdirs: u32,
    entries: u64,
    /// A (parent, name) of one of its names.
    named_in: Option<(InodeId, Vec<u8>)>,
}

struct Findings {
    list: Vec<Finding>,
    more: u64,
}

impl Findings {
    fn add(&mut self, kind: FindingKind, ino: Option<InodeId>, detail: String, fix: Option<Fix>) {
        if self.list.len() >= FSCK_FINDINGS_MAX {
            self.more += 1;
            return;
        }
        self.list.push(Finding {
            kind,
            ino,
            path: None,
            detail,
            fix,
        });
    }
}

fn name_str(n: &[u8]) -> String {
    String::from_utf8_lossy(n).into_owned()
}

/// What only the leader knows, in memory, for a check of a live cluster.
pub struct Online<'a> {
    /// Chunkserver liveness.
    pub chunkservers: &'a dyn ChunkserverLiveness,
    /// The chunkservers' last inventories.
    pub inventories: &'a [InventoryPass],
    /// Clients whose lease the leader keeps.
    pub clients: &'a HashSet<ClientId>,
}

/// Checks everything the meta keeps. `online`: what the leader knows
/// besides; `None` offline, where every chunkserver counts as up and
/// inventories and leases are unknown.
pub fn check(
    kv: &impl ReadKv,
    online: Option<Online<'_>>,
    progress: &Progress,
) -> Result<FsckReport, StoreError> {
    progress.start(3 * sys_u64(kv, SYS_FILES)?);
    let _running = Running(progress);
    let live = online.as_ref().map(|o| o.chunkservers);
    let inventories = online.as_ref().map_or(&[][..], |o| o.inventories);
    let mut f = Findings {
        list: Vec::new(),
        more: 0,
    };
    let mut report = FsckReport {
        applied: sys_u64(kv, SYS_APPLIED)?,
        liveness_known: live.is_some(),
        ..FsckReport::default()
    };
    // Inodes.
    let mut nodes: HashMap<u64, Node> = HashMap::new();
    each(kv, progress, Cf::Inodes, &[], |k, v| {
        let Some(ino) = read_be(&k) else {
            f.add(FindingKind::BadRecord, None, "inode key".into(), None);
            return Ok(());
        };
        match decode::<InodeRec>(Cf::Inodes, &v) {
            Ok(r) => {
                report.inodes += 1;
                if let Some(problem) = acl_problem(&r) {
                    f.add(FindingKind::BadAcl, Some(InodeId(ino)), problem, None);
                }
                match r.kind {
                    FileKind::Dir => report.dirs += 1,
                    FileKind::File => {
                        report.files += 1;
                        report.bytes += r.size;
                    }
                    _ => {}
                }
                nodes.insert(
                    ino,
                    Node {
                        kind: r.kind,
                        nlink: r.nlink,
                        parent: r.parent,
                        children: r.children,
                        next_cookie: r.next_cookie,
                        size: r.size,
                        names: 0,
                        subdirs: 0,
                        entries: 0,
                        named_in: None,
                    },
                );
            }
            Err(e) => f.add(
                FindingKind::BadRecord,
                Some(InodeId(ino)),
                format!("inode record: {e}"),
                None,
            ),
        }
        Ok(())
    })?;
    // Entries: each names a live inode of its kind, inside a directory.
    let mut cookies: HashSet<(u64, u64)> = HashSet::new();
    each(kv, progress, Cf::Dentries, &[], |k, v| {
        let (Some(parent), Some(name)) = (read_be(&k), k.get(8..)) else {
            f.add(FindingKind::BadRecord, None, "entry key".into(), None);
            return Ok(());
        };
        let d: DentryRec = match decode(Cf::Dentries, &v) {
            Ok(d) => d,
            Err(e) => {
                f.add(
                    FindingKind::BadRecord,
                    Some(InodeId(parent)),
                    format!("entry {:?}: {e}", name_str(name)),
                    None,
                );
                return Ok(());
            }
        };
        cookies.insert((parent, d.cookie));
        match nodes.get_mut(&parent) {
            Some(p) if p.kind == FileKind::Dir => {
                p.entries += 1;
                if d.cookie >= p.next_cookie {
                    f.add(
                        FindingKind::IndexMismatch,
                        Some(InodeId(parent)),
                        format!(
                            "entry {:?} has cookie {}, not below the directory's next ({})",
                            name_str(name),
                            d.cookie,
                            p.next_cookie
                        ),
                        None,
                    );
                }
            }
            _ => f.add(
                FindingKind::EntryUnderNonDirectory,
                Some(InodeId(parent)),
                format!(
                    "entry {:?} under inode {parent}, not a directory",
                    name_str(name)
                ),
                None,
            ),
        }
        let Some(target) = nodes.get_mut(&d.ino.0) else {
            f.add(
                FindingKind::DanglingEntry,
                Some(InodeId(parent)),
                format!(
                    "entry {:?} names inode {}, which does not exist",
                    name_str(name),
                    d.ino.0
                ),
                Some(Fix::RemoveEntry {
                    parent: InodeId(parent),
                    name: name.to_vec(),
                    ino: d.ino,
                }),
            );
            return Ok(());
        };
        if target.kind != d.kind {
            f.add(
                FindingKind::EntryKindMismatch,
                Some(d.ino),
                format!(
                    "entry {:?} says {:?}, the inode is {:?}",
                    name_str(name),
                    d.kind,
                    target.kind
                ),
                None,
            );
        }
        target.names += 1;
        if target.named_in.is_none() {
            target.named_in = Some((InodeId(parent), name.to_vec()));
        }
        let is_dir = target.kind == FileKind::Dir;
        let wrong_parent = is_dir && target.parent.0 != parent;
        if is_dir {
            if let Some(p) = nodes.get_mut(&parent) {
                p.subdirs += 1;
            }
        }
        if wrong_parent {
            f.add(
                FindingKind::WrongParent,
                Some(d.ino),
                format!("directory is named in inode {parent}, its `..` says otherwise"),
                None,
            );
        }
        Ok(())
    })?;
    // The readdir index: one record per entry, the same name and inode.
    let mut indexed = 0u64;
    each(kv, progress, Cf::DirIndex, &[], |k, v| {
        let (Some(parent), Some(cookie)) = (read_be(&k), k.get(8..).and_then(read_be)) else {
            f.add(FindingKind::BadRecord, None, "index key".into(), None);
            return Ok(());
        };
        indexed += 1;
        match decode::<DirIndexRec>(Cf::DirIndex, &v) {
            Ok(r) => {
                let entry: Option<DentryRec> =
                    kv.get_rec(Cf::Dentries, &dentry_key(InodeId(parent), &r.name))?;
                if !entry.is_some_and(|e| e.cookie == cookie && e.ino == r.ino) {
                    f.add(
                        FindingKind::IndexMismatch,
                        Some(InodeId(parent)),
                        format!(
                            "index record {cookie} ({:?}) has no matching entry",
                            name_str(&r.name)
                        ),
                        None,
                    );
                }
            }
            Err(e) => f.add(
                FindingKind::BadRecord,
                Some(InodeId(parent)),
                format!("index record {cookie}: {e}"),
                None,
            ),
        }
        Ok(())
    })?;
    if indexed != cookies.len() as u64 {
        f.add(
            FindingKind::IndexMismatch,
            None,
            format!("{} entries, {indexed} index records", cookies.len()),
            None,
        );
    }
    // Orphans (unlinked, maybe open) and inodes waiting to be purged.
    let mut orphans: HashSet<u64> = HashSet::new();
    each(kv, progress, Cf::Sys, b"orphan/", |k, _| {
        if let Some(ino) = k.get(b"orphan/".len()..).and_then(read_be) {
            orphans.insert(ino);
        }
        Ok(())
    })?;
    let mut deleted: HashSet<u64> = HashSet::new();
    each(kv, progress, Cf::Deleted, &[], |k, _| {
        if let Some(ino) = read_be(&k) {
            deleted.insert(ino);
        }
        Ok(())
    })?;
    // Link and entry counts.
    let mut ids: Vec<u64> = nodes.keys().copied().collect();
    ids.sort_unstable();
    for ino in &ids {
        let n = &nodes[ino];
        let want = match n.kind {
            FileKind::Dir => 2 + n.subdirs,
            _ => n.names,
        };
        if n.nlink != want && !(n.names == 0 && n.kind != FileKind::Dir) {
            f.add(
                FindingKind::WrongNlink,
                Some(InodeId(*ino)),
                format!("nlink {} but {want} expected", n.nlink),
                Some(Fix::SetNlink {
                    ino: InodeId(*ino),
                    from: n.nlink,
                    to: want,
                }),
            );
        }
        if n.kind == FileKind::Dir && n.children != n.entries {
            f.add(
                FindingKind::WrongChildren,
                Some(InodeId(*ino)),
                format!("counts {} entries, has {}", n.children, n.entries),
                Some(Fix::SetChildren {
                    dir: InodeId(*ino),
                    from: n.children,
                    to: n.entries,
                }),
            );
        }
        if n.kind == FileKind::Dir && n.names > 1 {
            f.add(
                FindingKind::WrongParent,
                Some(InodeId(*ino)),
                format!("directory with {} names", n.names),
                None,
            );
        }
    }
    // Reachability from the root, over the entries.
    let mut reached: HashSet<u64> = HashSet::new();
    let mut queue = VecDeque::from([InodeId::ROOT.0]);
    reached.insert(InodeId::ROOT.0);
    while let Some(dir) = queue.pop_front() {
        each(kv, progress, Cf::Dentries, &crate::kv::be(dir), |_, v| {
            if let Ok(d) = decode::<DentryRec>(Cf::Dentries, &v) {
                if nodes.contains_key(&d.ino.0)
                    && reached.insert(d.ino.0)
                    && d.kind == FileKind::Dir
                {
                    queue.push_back(d.ino.0);
                }
            }
            Ok(())
        })?;
    }
    for ino in &ids {
        if reached.contains(ino) {
            continue;
        }
        let n = &nodes[ino];
        if n.kind == FileKind::File && n.names == 0 && orphans.contains(ino) {
            continue; // unlinked, maybe still open: the leader reaps it
        }
        if n.kind == FileKind::Dir && n.names > 0 {
            f.add(
                FindingKind::Cycle,
                Some(InodeId(*ino)),
                "directory named only inside directories the root does not reach".into(),
                None,
            );
        } else if n.names == 0 {
            f.add(
                FindingKind::Unreachable,
                Some(InodeId(*ino)),
                format!("{:?} with no name", n.kind),
                Some(Fix::Adopt {
                    ino: InodeId(*ino),
                    nlink: n.nlink,
                }),
            );
        }
    }
    // Delegations: of directories, to clients the leader keeps a lease for.
    for (dir, holder) in super::deleg::all(kv)? {
        if nodes.get(&dir.0).is_none_or(|n| n.kind != FileKind::Dir) {
            f.add(
                FindingKind::StaleDelegation,
                Some(dir),
                format!("delegated to client {holder} but not a directory"),
                Some(Fix::DropDelegation { dir, holder }),
            );
        } else if online
            .as_ref()
            .is_some_and(|o| !o.clients.contains(&holder))
        {
            f.add(
                FindingKind::StaleDelegation,
                Some(dir),
                format!("delegated to client {holder}, whom the leader keeps no lease for"),
                Some(Fix::ExpireClient { client: holder }),
            );
        }
    }
    // Layouts: chunks of live files within their size; block references.
    let mut refs: HashMap<u64, u32> = HashMap::new();
    let mut users: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    each(kv, progress, Cf::Chunks, &[], |k, v| {
        let (Some(ino), Some(index)) = (read_be(&k), k.get(8..).and_then(read_be)) else {
            f.add(FindingKind::BadRecord, None, "chunk key".into(), None);
            return Ok(());
        };
        report.chunks += 1;
        let slices: Vec<Slice> = match decode(Cf::Chunks, &v) {
            Ok(s) => s,
            Err(e) => {
                f.add(
                    FindingKind::BadRecord,
                    Some(InodeId(ino)),
                    format!("chunk {index}: {e}"),
                    None,
                );
                return Ok(());
            }
        };
        report.slices += slices.len() as u64;
        match nodes.get(&ino) {
            None if !deleted.contains(&ino) => f.add(
                FindingKind::ChunkWithoutInode,
                Some(InodeId(ino)),
                format!("chunk {index} of inode {ino}, which does not exist"),
                Some(Fix::DropChunk {
                    ino: InodeId(ino),
                    index,
                }),
            ),
            Some(n) if index >= n.size.div_ceil(CHUNK_BYTES) => f.add(
                FindingKind::ChunkBeyondSize,
                Some(InodeId(ino)),
                format!("chunk {index} past the size {}", n.size),
                None,
            ),
            _ => {}
        }
        for s in &slices {
            let mut seen: Vec<BlockId> = Vec::new();
            for b in &s.blocks {
                if !seen.contains(&b.id) {
                    seen.push(b.id);
                    *refs.entry(b.id.0).or_insert(0) += 1;
                    let u = users.entry(b.id.0).or_default();
                    if u.len() < 16 {
                        let start = index * CHUNK_BYTES + s.offset as u64;
                        u.push((ino, start));
                    }
                }
            }
        }
        Ok(())
    })?;
    each(kv, progress, Cf::Xattrs, &[], |k, _| {
        let Some(ino) = read_be(&k) else {
            f.add(FindingKind::BadRecord, None, "xattr key".into(), None);
            return Ok(());
        };
        if !nodes.contains_key(&ino) {
            f.add(
                FindingKind::XattrWithoutInode,
                Some(InodeId(ino)),
                "extended attribute of an inode that does not exist".into(),
                None,
            );
            return Ok(());
        }
        let name = &k[8..];
        if name == super::acl::ACCESS || name == super::acl::DEFAULT {
            f.add(
                FindingKind::BadAcl,
                Some(InodeId(ino)),
                format!(
                    "{} kept as an xattr record (ACLs live in the inode; this one is never read)",
                    name_str(name)
                ),
                None,
            );
        }
        Ok(())
    })?;
    // Writer fences of files that are gone.
    each(kv, progress, Cf::Fences, &[], |k, _| {
        if let Some(ino) = read_be(&k) {
            if !nodes.contains_key(&ino) {
                f.add(
                    FindingKind::FenceWithoutInode,
                    None,
                    format!("writer fence of inode {ino}, which does not exist"),
                    Some(Fix::DropFence { ino: InodeId(ino) }),
                );
            }
        }
        Ok(())
    })?;
    // The block table against the references; fragments on live servers.
    let mut pending: HashSet<u64> = HashSet::new();
    each(kv, progress, Cf::Pending, &[], |k, _| {
        if let Some(id) = read_be(&k) {
            pending.insert(id);
        }
        Ok(())
    })?;
    let mut in_table: HashSet<u64> = HashSet::new();
    each(kv, progress, Cf::Blocks, &[], |k, v| {
        let Some(id) = read_be(&k) else {
            f.add(FindingKind::BadRecord, None, "block key".into(), None);
            return Ok(());
        };
        report.blocks += 1;
        in_table.insert(id);
        let rec: BlockRec = match decode(Cf::Blocks, &v) {
            Ok(r) => r,
            Err(e) => {
                f.add(
                    FindingKind::BadRecord,
                    None,
                    format!("block {id}: {e}"),
                    None,
                );
                return Ok(());
            }
        };
        let used = refs.get(&id).copied().unwrap_or(0);
        if used == 0 && rec.refs == 0 && pending.contains(&id) {
            return Ok(()); // being written
        }
        if rec.refs != used {
            let kind = if used == 0 {
                FindingKind::LeakedBlock
            } else {
                FindingKind::WrongRefs
            };
            f.add(
                kind,
                None,
                format!(
                    "block {id}: counts {} references, {used} slices use it",
                    rec.refs
                ),
                Some(Fix::SetRefs {
                    block: BlockId(id),
                    from: rec.refs,
                    to: used,
                }),
            );
        }
        if used == 0 {
            return Ok(());
        }
        let up = rec
            .fragments
            .iter()
            .filter(|s| s.0 != sparefs_proto::layout::NO_SERVER.0)
            .filter(|s| match live {
                None => true,
                Some(l) => {
                    let state = l.live(**s).map(|x| x.0).unwrap_or_else(|| l.silent_state());
                    matches!(state, ChunkserverState::Up | ChunkserverState::Full)
                }
            })
            .count();
        if up < rec.policy.needed() {
            let (first, whose) = used_by(&users, id);
            f.add(
                FindingKind::Unreadable,
                first,
                format!(
                    "block {id} ({} bytes): {up} of {} fragments on live chunkservers, {} needed; used by {whose}",
                    rec.bytes,
                    rec.fragments.len(),
                    rec.policy.needed(),
                ),
                None,
            );
        } else if up < rec.policy.width() {
            f.add(
                FindingKind::UnderProtected,
                None,
                format!(
                    "block {id}: {up} of {} fragments on live chunkservers",
                    rec.policy.width()
                ),
                None,
            );
        }
        Ok(())
    })?;
    let mut missing: Vec<(&u64, &u32)> = refs
        .iter()
        .filter(|(id, _)| !in_table.contains(id))
        .collect();
    missing.sort();
    for (id, _) in missing {
        let (first, whose) = used_by(&users, *id);
        f.add(
            FindingKind::MissingBlock,
            first,
            format!("block {id} is used by {whose} but not in the block table"),
            None,
        );
    }
    // The chunkservers' inventories.
    for pass in inventories {
        let cs = pass.chunkserver;
        if pass.orphans > 0 {
            f.add(
                FindingKind::OrphanFragments,
                None,
                format!(
                    "chunkserver {cs}: {} fragment files no block references, past the grace (the collector deletes them)",
                    pass.orphans
                ),
                None,
            );
        }
        for (block, slot) in &pass.missing {
            let (first, whose) = used_by(&users, block.0);
            f.add(
                FindingKind::MissingFragment,
                first,
                format!(
                    "chunkserver {cs}: fragment {slot} of block {block} is not on its disk (marked lost: repair rebuilds it); used by {whose}"
                ),
                None,
            );
        }
        let unnamed = pass.missing_count.saturating_sub(pass.missing.len() as u64);
        if unnamed > 0 {
            f.add(
                FindingKind::MissingFragment,
                None,
                format!("chunkserver {cs}: {unnamed} more fragments not on its disk"),
                None,
            );
        }
    }
    report.inventories = inventories.to_vec();
    // Paths for the inodes findings name.
    for finding in f.list.iter_mut() {
        if let Some(ino) = finding.ino {
            finding.path = path_of(&nodes, ino);
        }
    }
    report.findings = f.list;
    report.more = f.more;
    Ok(report)
}

/// Each column family's records and a blake3 of its keys and values in
/// order, at the applied index of `kv`: replicas that applied the same
/// entries hold the same bytes (`ns` writes nothing that depends on the
/// replica), so at one index their digests are equal.
pub fn digest(kv: &impl ReadKv) -> Result<sparefs_proto::fsck::StateDigest, StoreError> {
    let mut out = sparefs_proto::fsck::StateDigest {
        applied: sys_u64(kv, SYS_APPLIED)?,
        cfs: Vec::new(),
    };
    for cf in crate::kv::STATE_CFS {
        let mut h = blake3::Hasher::new();
        let mut n = 0u64;
        each(kv, &Progress::default(), cf, &[], |k, v| {
            n += 1;
            h.update(&(k.len() as u64).to_le_bytes());
            h.update(&k);
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(&v);
            Ok(())
        })?;
        out.cfs
            .push((cf.name().to_string(), n, *h.finalize().as_bytes()));
    }
    Ok(out)
}

/// A path to `ino` through the names the check found (None if it has none
/// leading to the root).
fn path_of(nodes: &HashMap<u64, Node>, ino: InodeId) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let mut at = ino;
    for _ in 0..4096 {
        if at == InodeId::ROOT {
            parts.reverse();
            return Some(format!("/{}", parts.join("/")));
        }
        let (parent, name) = nodes.get(&at.0)?.named_in.clone()?;
        parts.push(name_str(&name));
        at = parent;
    }
    None
}

/// Applies one repair if the state is still as the check found it;
/// ESTALE otherwise (run fsck again).
pub(super) fn apply_fix<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    now: Time,
    fix: &Fix,
) -> NsResult<NsReply> {
    root_only(c)?;
    let stale = || NsError::Errno(Errno::ESTALE);
    match fix {
        Fix::RemoveEntry { parent, name, ino } => {
            let Some(d) = dentry(tx, *parent, name)? else {
                return Err(stale());
            };
            if d.ino != *ino || tx.get(Cf::Inodes, &inode_key(*ino))?.is_some() {
                return Err(stale());
            }
            let mut dir = load_dir(tx, *parent)?;
            delete_entry(tx, *parent, &mut dir, name, &d);
            if d.kind == FileKind::Dir {
                dir.nlink = dir.nlink.saturating_sub(1).max(2);
            }
            dir.ctime = now;
            store(tx, *parent, &dir);
        }
        Fix::SetNlink { ino, from, to } => {
            let mut r = load(tx, *ino)?;
            if r.nlink != *from {
                return Err(stale());
            }
            r.nlink = *to;
            r.ctime = now;
            store(tx, *ino, &r);
        }
        Fix::SetChildren { dir, from, to } => {
            let mut r = load_dir(tx, *dir)?;
            if r.children != *from {
                return Err(stale());
            }
            r.children = *to;
            store(tx, *dir, &r);
        }
        Fix::SetRefs { block, from, to } => {
            let key = block_key(*block);
            let Some(mut rec) = tx.get_rec::<BlockRec>(Cf::Blocks, &key)? else {
                return Err(stale());
            };
            if rec.refs != *from {
                return Err(stale());
            }
            if *to == 0 {
                // Nothing uses it: it leaves the table, its fragments
                // become garbage for the chunkservers' inventories.
                tx.delete(Cf::Blocks, key.clone());
                tx.delete(Cf::Pending, key);
            } else {
                rec.refs = *to;
                tx.put_rec(Cf::Blocks, key, &rec);
            }
        }
        Fix::DropChunk { ino, index } => {
            if tx.get(Cf::Inodes, &inode_key(*ino))?.is_some() {
                return Err(stale());
            }
            let key = chunk_key(*ino, *index);
            let Some(old) = tx.get_rec::<Vec<Slice>>(Cf::Chunks, &key)? else {
                return Err(stale());
            };
            super::blocks::put_chunk(tx, *ino, *index, &old, Vec::new(), now)?;
        }
        Fix::DropDelegation { dir, holder } => {
            let gone = load(tx, *dir).map_or(true, |r| !r.is_dir());
            if !gone || !super::deleg::drop_if_held(tx, *dir, *holder)? {
                return Err(stale());
            }
        }
        Fix::DropFence { ino } => {
            if tx.get(Cf::Inodes, &inode_key(*ino))?.is_some() || !super::fence::forget(tx, *ino)? {
                return Err(stale());
            }
        }
        Fix::ExpireClient { client } => {
            super::deleg::expire(tx, *client)?;
            super::locks::expire_client(tx, *client)?;
        }
        Fix::LoseFragment {
            block,
            slot,
            server,
        } => {
            let Some(rec) = tx.get_rec::<BlockRec>(Cf::Blocks, &block_key(*block))? else {
                return Err(stale());
            };
            if rec.index_of(*slot).map(|i| rec.fragments[i]) != Some(*server) {
                return Err(stale());
            }
            super::blocks::lose(tx, *block, *slot, *server, now)?;
        }
        Fix::Adopt { ino, nlink } => {
            let mut r = load(tx, *ino)?;
            if r.nlink != *nlink || super::orphans::is_orphan(tx, *ino)? {
                return Err(stale());
            }
            let lf = lost_found(tx, now)?;
            let mut dir = load_dir(tx, lf)?;
            let name = format!("#{}", ino.0).into_bytes();
            if dentry(tx, lf, &name)?.is_some() {
                return Err(stale());
            }
            insert_entry(tx, lf, &mut dir, &name, *ino, r.kind);
            if r.kind == FileKind::Dir {
                dir.nlink += 1;
                r.parent = lf;
            } else {
                r.nlink = 1;
            }
            r.ctime = now;
            dir.mtime = now;
            dir.ctime = now;
            store(tx, lf, &dir);
            store(tx, *ino, &r);
        }
    }
    Ok(NsReply::Done)
}

/// `/lost+found`, made (root's, 0700) if missing.
fn lost_found<R: ReadKv>(tx: &mut Tx<R>, now: Time) -> NsResult<InodeId> {
    if let Some(d) = dentry(tx, InodeId::ROOT, LOST_FOUND)? {
        if d.kind != FileKind::Dir {
            return Err(Errno::ENOTDIR.into());
        }
        return Ok(d.ino);
    }
    let ino = InodeId(next_id(tx, SYS_NEXT_INODE, 1)?);
    let mut root = load_dir(tx, InodeId::ROOT)?;
    let inode = new_inode(FileKind::Dir, 0o700, 0, 0, now, InodeId::ROOT);
    root.nlink += 1;
    insert_entry(tx, InodeId::ROOT, &mut root, LOST_FOUND, ino, FileKind::Dir);
    store(tx, InodeId::ROOT, &root);
    store(tx, ino, &inode);
    add_files(tx, 1)?;
    Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::command::{apply_op, bootstrap, Command};
    use crate::store::Store;
    use sparefs_proto::namespace::WriteOp;
    use sparefs_proto::{ClientId, RequestId};

    fn run<R: ReadKv>(tx: &mut Tx<R>, op: WriteOp) -> NsResult<NsReply> {
        let cmd = Command {
            id: RequestId {
                client: ClientId(7),
                seq: 1,
                ack_below: 0,
            },
            caller: Caller::ROOT,
            op,
            now: Time::default(),
        };
        apply_op(tx, &cmd)
    }

    fn made(r: NsResult<NsReply>) -> InodeId {
        match r {
            Ok(NsReply::Made { attr, .. }) => attr.ino,
            other => panic!("{other:?}"),
        }
    }

    fn mk(tx: &mut Tx<Store>, parent: InodeId, name: &str, dir: bool) -> InodeId {
        let op = if dir {
            WriteOp::Mkdir {
                parent,
                name: name.as_bytes().to_vec(),
                perm: 0o755,
                umask: 0,
            }
        } else {
            WriteOp::MkNod {
                parent,
                name: name.as_bytes().to_vec(),
                kind: FileKind::File,
                perm: 0o644,
                umask: 0,
                rdev: 0,
                exclusive: true,
            }
        };
        made(run(tx, op))
    }

    fn kinds(r: &FsckReport) -> Vec<FindingKind> {
        let mut k: Vec<FindingKind> = r.findings.iter().map(|f| f.kind).collect();
        k.sort();
        k
    }

    /// A file's writer fence goes with the file; one left behind by an
    /// older version is found and dropped.
    #[test]
    fn fences_of_files_that_are_gone_are_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = Store::create(dir.path()).expect("store");
        let mut tx = Tx::new(&base);
        bootstrap(&mut tx).expect("bootstrap");
        let fence = |tx: &mut Tx<Store>, ino| {
            run(
                tx,
                WriteOp::TakeFence {
                    ino,
                    expect: 0,
                    holder: "target".into(),
                },
            )
            .expect("take fence")
        };
        let a = mk(&mut tx, InodeId::ROOT, "a.img", false);
        fence(&mut tx, a);
        run(
            &mut tx,
            WriteOp::Unlink {
                parent: InodeId::ROOT,
                name: b"a.img".to_vec(),
            },
        )
        .expect("unlink");
        run(&mut tx, WriteOp::ReapOrphans { inos: vec![a] }).expect("reap");
        assert!(tx
            .get(Cf::Fences, &crate::kv::be(a.0))
            .expect("read")
            .is_none());
        assert!(check(&tx, None, &Progress::default())
            .expect("check")
            .findings
            .is_empty());
        // Left behind (its inode record removed directly).
        let b = mk(&mut tx, InodeId::ROOT, "b.img", false);
        fence(&mut tx, b);
        let e = dentry(&tx, InodeId::ROOT, b"b.img")
            .expect("read")
            .expect("b");
        let mut root = load(&tx, InodeId::ROOT).expect("root");
        delete_entry(&mut tx, InodeId::ROOT, &mut root, b"b.img", &e);
        store(&mut tx, InodeId::ROOT, &root);
        tx.delete(Cf::Inodes, inode_key(b));
        let r = check(&tx, None, &Progress::default()).expect("check");
        assert_eq!(kinds(&r), vec![FindingKind::FenceWithoutInode], "{r:#?}");
        let fix = r.findings[0].fix.clone().expect("repairable");
        run(&mut tx, WriteOp::Repair { fix: fix.clone() }).expect("drop");
        assert!(run(&mut tx, WriteOp::Repair { fix }).is_err(), "once");
        assert!(check(&tx, None, &Progress::default())
            .expect("check")
            .findings
            .is_empty());
    }

    /// ACLs set and changed through the ordinary operations are clean; an
    /// access ACL whose bits disagree with the mode, a default ACL of a
    /// file and an ACL kept as an xattr record are each found.
    #[test]
    fn acl_records_are_checked() {
        use crate::ns::acl::{self, AclEntry};
        let dir = tempfile::tempdir().expect("tempdir");
        let base = Store::create(dir.path()).expect("store");
        let mut tx = Tx::new(&base);
        bootstrap(&mut tx).expect("bootstrap");
        let d = mk(&mut tx, InodeId::ROOT, "d", true);
        let a = mk(&mut tx, d, "a", false);
        let entry = |tag, perm, id| AclEntry { tag, perm, id };
        let acl = acl::encode(&[
            entry(acl::USER_OBJ, 6, 0),
            entry(acl::USER, 6, 1234),
            entry(acl::GROUP_OBJ, 4, 0),
            entry(acl::MASK, 6, 0),
            entry(acl::OTHER, 4, 0),
        ]);
        let set = |tx: &mut Tx<Store>, ino, name: &[u8], value: &[u8]| {
            run(
                tx,
                WriteOp::SetXattr {
                    ino,
                    name: name.to_vec(),
                    value: value.to_vec(),
                    mode: sparefs_proto::namespace::XattrMode::Any,
                },
            )
            .expect("setxattr")
        };
        set(&mut tx, a, acl::ACCESS, &acl);
        set(&mut tx, d, acl::DEFAULT, &acl);
        run(
            &mut tx,
            WriteOp::SetAttr {
                ino: a,
                set: sparefs_proto::namespace::SetAttr {
                    perm: Some(0o640),
                    ..Default::default()
                },
            },
        )
        .expect("chmod");
        let r = check(&tx, None, &Progress::default()).expect("check");
        assert!(r.findings.is_empty(), "{r:#?}");
        // Behind the operations' back: the mode, a default ACL on a file,
        // bytes that are no ACL.
        let mut ra = load(&tx, a).expect("a");
        ra.perm = (ra.perm & !0o777) | 0o600;
        store(&mut tx, a, &ra);
        let b = mk(&mut tx, d, "b", false);
        let mut rb = load(&tx, b).expect("b");
        rb.default_acl = load(&tx, d).expect("d").default_acl;
        store(&mut tx, b, &rb);
        let c = mk(&mut tx, d, "c", false);
        tx.put_rec(Cf::Xattrs, xattr_key(c, acl::ACCESS), &acl);
        let r = check(&tx, None, &Progress::default()).expect("check");
        let mut bad: Vec<InodeId> = r
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::BadAcl)
            .filter_map(|f| f.ino)
            .collect();
        bad.sort();
        assert_eq!(bad, vec![a, b, c], "{r:#?}");
    }

    #[test]
    fn progress_counts_records_against_a_rising_estimate() {
        let p = Progress::default();
        assert_eq!(p.get(), None, "no check running");
        p.start(30);
        p.add(10);
        assert_eq!(p.get(), Some((10, 30)));
        p.add(25);
        let (done, total) = p.get().expect("running");
        assert!(
            done == 35 && total > done,
            "the estimate rises past: {total}"
        );
        drop(Running(&p));
        assert_eq!(p.get(), None, "ended");
    }

    /// A delegation whose holder the leader keeps no lease for, and one of
    /// a directory that is gone: found online (the first only), repaired.
    #[test]
    fn stale_delegations_are_found_and_ended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = Store::create(dir.path()).expect("store");
        let mut tx = Tx::new(&base);
        bootstrap(&mut tx).expect("bootstrap");
        let d = mk(&mut tx, InodeId::ROOT, "d", true);
        let e = mk(&mut tx, InodeId::ROOT, "e", true);
        let holder = ClientId(42);
        for x in [d, e] {
            crate::ns::deleg::delegate(&mut tx, &Caller::ROOT, holder, x).expect("delegate");
        }
        let stale = |tx: &Tx<Store>, clients: &HashSet<ClientId>| {
            let online = Online {
                chunkservers: &(),
                inventories: &[],
                clients,
            };
            check(tx, Some(online), &Progress::default())
                .expect("check")
                .findings
                .into_iter()
                .filter(|f| f.kind == FindingKind::StaleDelegation)
                .collect::<Vec<_>>()
        };
        let known: HashSet<ClientId> = [holder].into_iter().collect();
        assert!(stale(&tx, &known).is_empty());
        assert!(check(&tx, None, &Progress::default())
            .expect("check")
            .findings
            .is_empty());
        // The holder is gone from the leader's leases.
        let found = stale(&tx, &HashSet::new());
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found
            .iter()
            .all(|f| f.fix == Some(Fix::ExpireClient { client: holder })));
        run(
            &mut tx,
            WriteOp::Repair {
                fix: Fix::ExpireClient { client: holder },
            },
        )
        .expect("expire");
        assert!(crate::ns::deleg::all(&tx).expect("list").is_empty());
        // A delegation of a directory whose inode is gone.
        crate::ns::deleg::delegate(&mut tx, &Caller::ROOT, holder, e).expect("delegate");
        tx.delete(Cf::Inodes, inode_key(e));
        let found = stale(&tx, &known);
        assert_eq!(found.len(), 1, "{found:#?}");
        let fix = found[0].fix.clone().expect("repairable");
        assert_eq!(fix, Fix::DropDelegation { dir: e, holder });
        run(&mut tx, WriteOp::Repair { fix: fix.clone() }).expect("drop");
        assert!(run(&mut tx, WriteOp::Repair { fix }).is_err(), "once");
        assert!(stale(&tx, &known).is_empty());
    }

    /// A clean tree is clean; each kind of damage is found, named by path,
    /// and its repair leaves a clean tree.
    #[test]
    fn damage_is_found_named_and_repaired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = Store::create(dir.path()).expect("store");
        let mut tx = Tx::new(&base);
        bootstrap(&mut tx).expect("bootstrap");
        let docs = mk(&mut tx, InodeId::ROOT, "docs", true);
        let a = mk(&mut tx, docs, "a.txt", false);
        let b = mk(&mut tx, docs, "b.txt", false);
        let sub = mk(&mut tx, docs, "sub", true);
        let _c = mk(&mut tx, sub, "c.txt", false);
        assert!(check(&tx, None, &Progress::default())
            .expect("check")
            .findings
            .is_empty());

        // Wrong link count, an entry pointing nowhere, an orphan inode.
        let mut ra = load(&tx, a).expect("a");
        ra.nlink = 3;
        store(&mut tx, a, &ra);
        let mut rb = load(&tx, b).expect("b");
        tx.delete(Cf::Inodes, inode_key(b));
        rb.nlink = 1;
        let lost = InodeId(9999);
        store(&mut tx, lost, &rb);
        let r = check(&tx, None, &Progress::default()).expect("check");
        assert_eq!(
            kinds(&r),
            vec![
                FindingKind::DanglingEntry,
                FindingKind::WrongNlink,
                FindingKind::Unreachable
            ],
            "{r:#?}"
        );
        let nlink = r
            .findings
            .iter()
            .find(|f| f.kind == FindingKind::WrongNlink)
            .expect("nlink");
        assert_eq!(nlink.path.as_deref(), Some("/docs/a.txt"));
        let dangling = r
            .findings
            .iter()
            .find(|f| f.kind == FindingKind::DanglingEntry)
            .expect("dangling");
        assert_eq!(dangling.path.as_deref(), Some("/docs"));
        for f in &r.findings {
            let fix = f.fix.clone().expect("repairable");
            run(&mut tx, WriteOp::Repair { fix: fix.clone() }).expect("repair");
            // A second time, the premise no longer holds.
            assert!(run(&mut tx, WriteOp::Repair { fix }).is_err());
        }
        let after = check(&tx, None, &Progress::default()).expect("check");
        assert!(after.findings.is_empty(), "{after:#?}");
        let lf = dentry(&tx, InodeId::ROOT, LOST_FOUND)
            .expect("read")
            .expect("lost+found made");
        assert!(dentry(&tx, lf.ino, b"#9999").expect("read").is_some());

        // A cycle: two directories holding each other, cut off the root.
        let x = mk(&mut tx, InodeId::ROOT, "x", true);
        let y = mk(&mut tx, x, "y", true);
        let mut root = load(&tx, InodeId::ROOT).expect("root");
        let e = dentry(&tx, InodeId::ROOT, b"x").expect("read").expect("x");
        delete_entry(&mut tx, InodeId::ROOT, &mut root, b"x", &e);
        root.nlink -= 1;
        store(&mut tx, InodeId::ROOT, &root);
        let mut ry = load(&tx, y).expect("y");
        insert_entry(&mut tx, y, &mut ry, b"x", x, FileKind::Dir);
        ry.nlink += 1;
        store(&mut tx, y, &ry);
        let mut rx = load(&tx, x).expect("x");
        rx.parent = y;
        store(&mut tx, x, &rx);
        let r = check(&tx, None, &Progress::default()).expect("check");
        assert!(
            r.findings.iter().any(|f| f.kind == FindingKind::Cycle),
            "{r:#?}"
        );

        // Block references off by one.
        let id = BlockId(77);
        let rec = BlockRec {
            policy: sparefs_proto::layout::Policy::Rep { copies: 1 },
            wanted: sparefs_proto::layout::Policy::Rep { copies: 1 },
            bytes: 10,
            slot_base: 0,
            fragments: vec![sparefs_proto::ChunkserverId(1)],
            refs: 2,
            changed: Time::default(),
        };
        tx.put_rec(Cf::Blocks, block_key(id), &rec);
        let r = check(&tx, None, &Progress::default()).expect("check");
        assert!(r
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::LeakedBlock));
    }
}
