//! Fragment files. One file per fragment:
//! `DIR/fragments/<block % 256 as hex>/<block as 16 hex>.<index>`, holding
//! a header (magic with version, block id, index, data length, the block's
//! end-to-end table as the writer sent it, blake3 of every 64 KiB span of
//! this fragment) followed by the data. Version 1 files (before the block
//! table) have no table and are still read. Files are written as `.tmp`,
//! flushed by the writer's shared syncfs, then renamed into place and
//! flushed again, so a visible fragment file is always whole; a file that
//! fails its checksums is reported corrupt and never served.

use crate::space;
use sparefs_erasure::{checksums, CHECKSUM_SPAN};
use sparefs_proto::msg::{FragmentHash, InBlock, RpcError};
use sparefs_proto::BlockId;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// What the store holds: (block, slot) -> (file bytes, when written).
type Index = BTreeMap<(BlockId, u8), (u64, SystemTime)>;

const MAGIC_V1: &[u8; 8] = b"SPFRAG01";
const MAGIC: &[u8; 8] = b"SPFRAG02";
/// magic, block, index, padding, data length, span sums, table length
/// (version 2 only: version 1's fixed header ends before it).
const FIXED_HEADER: usize = 8 + 8 + 1 + 3 + 4 + 4 + 4;
const FIXED_HEADER_V1: usize = FIXED_HEADER - 4;

/// Where the parts of a fragment file are, from its fixed header.
struct Layout {
    data_len: usize,
    table_at: usize,
    table_len: usize,
    sums_at: usize,
    data_at: usize,
}

pub struct FragmentStore {
    root: PathBuf,
    limit: u64,
    reserve: u64,
    used: AtomicU64,
    /// Space promised to writes in flight, so concurrent writes cannot
    /// together overshoot the limit.
    pending: AtomicU64,
    errors: AtomicU64,
    /// Every fragment file, kept in memory: inventory reports, scrub
    /// passes and usage come from it without walking the directory.
    index: Mutex<Index>,
}

/// Parses "<16 hex>.<slot>" into (block, slot).
fn parse_name(name: &str) -> Option<(BlockId, u8)> {
    let (b, s) = name.split_once('.')?;
    if b.len() != 16 {
        return None;
    }
    Some((BlockId(u64::from_str_radix(b, 16).ok()?), s.parse().ok()?))
}

/// The header of fragment `index` of `block` holding `data`, with the
/// block's table `table`.
fn header(block: BlockId, index: u8, data: &[u8], table: &[u8]) -> Vec<u8> {
    let sums = checksums(data);
    let mut header = Vec::with_capacity(header_len(data.len(), table.len()));
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&block.0.to_be_bytes());
    header.push(index);
    header.extend_from_slice(&[0; 3]);
    header.extend_from_slice(&(data.len() as u32).to_be_bytes());
    header.extend_from_slice(&(sums.len() as u32).to_be_bytes());
    header.extend_from_slice(&(table.len() as u32).to_be_bytes());
    header.extend_from_slice(table);
    for s in &sums {
        header.extend_from_slice(s);
    }
    header
}

fn header_len(data_len: usize, table_len: usize) -> usize {
    FIXED_HEADER + table_len + 32 * data_len.div_ceil(CHECKSUM_SPAN)
}

/// The layout of a version 1 or 2 fixed header (`fixed` holds at least
/// FIXED_HEADER bytes, or FIXED_HEADER_V1 for a file that short), or why
/// it is not one of `block`'s fragment `index`.
fn layout(fixed: &[u8], block: BlockId, index: u8) -> Result<Layout, String> {
    let v2 = fixed.len() >= FIXED_HEADER && &fixed[..8] == MAGIC;
    let v1 = fixed.len() >= FIXED_HEADER_V1 && &fixed[..8] == MAGIC_V1;
    if !(v1 || v2) {
        return Err("not a fragment header".into());
    }
    if fixed[8..16] != block.0.to_be_bytes() || fixed[16] != index {
        return Err("header does not match".into());
    }
    let field = |a: usize| {
        u32::from_be_bytes([fixed[a], fixed[a + 1], fixed[a + 2], fixed[a + 3]]) as usize
    };
    let (data_len, n_sums) = (field(20), field(24));
    if n_sums != data_len.div_ceil(CHECKSUM_SPAN) {
        return Err("checksum count does not match the length".into());
    }
    let (table_at, table_len) = if v2 {
        (FIXED_HEADER, field(28))
    } else {
        (FIXED_HEADER_V1, 0)
    };
    if !table_len.is_multiple_of(32) || table_len > TABLE_BYTES_MAX {
        return Err(format!("a block table of {table_len} bytes"));
    }
    let sums_at = table_at + table_len;
    Ok(Layout {
        data_len,
        table_at,
        table_len,
        sums_at,
        data_at: sums_at + 32 * n_sums,
    })
}

/// The largest block table: one value per group of the largest block.
pub const TABLE_BYTES_MAX: usize = 32
    * (sparefs_proto::limits::BLOCK_BYTES_MAX as usize)
        .div_ceil(sparefs_erasure::block_table::GROUP);

impl FragmentStore {
    pub fn open(dir: &Path, limit: u64, reserve: u64) -> anyhow::Result<FragmentStore> {
        let root = dir.join("fragments");
        std::fs::create_dir_all(&root)?;
        sparefs_proto::format::check_dir(dir, sparefs_proto::format::CHUNKSERVER, false)?;
        let mut used = 0;
        let mut index = Index::new();
        for sub in std::fs::read_dir(&root)? {
            let sub = sub?.path();
            if !sub.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&sub)? {
                let f = f?;
                let name = f.file_name();
                if name.to_string_lossy().ends_with(".tmp") {
                    // A write that never finished (crash before rename).
                    let _ = std::fs::remove_file(f.path());
                    continue;
                }
                let meta = f.metadata()?;
                match parse_name(&name.to_string_lossy()) {
                    Some(key) => {
                        used += meta.len();
                        let at = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                        index.insert(key, (meta.len(), at));
                    }
                    None => tracing::warn!("ignoring stray file {}", f.path().display()),
                }
            }
        }
        Ok(FragmentStore {
            root,
            limit,
            reserve,
            used: AtomicU64::new(used),
            pending: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            index: Mutex::new(index),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// What this server can hold: its limit, or less when the host
    /// filesystem (minus the reserve) has less room.
    pub fn capacity_bytes(&self) -> u64 {
        let used = self.used_bytes();
        match space::fs_space(&self.root) {
            Ok((_, avail)) => self.limit.min(used + avail.saturating_sub(self.reserve)),
            Err(_) => self.limit.min(used),
        }
    }

    /// Claims room for `bytes`, or fails with ENOSPC; `release` gives it back.
    pub fn reserve_room(&self, bytes: u64) -> Result<(), RpcError> {
        let pending = self.pending.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if self.used_bytes() + pending > self.capacity_bytes() {
            self.pending.fetch_sub(bytes, Ordering::SeqCst);
            return Err(RpcError::Errno(sparefs_proto::Errno::ENOSPC));
        }
        Ok(())
    }

    pub fn release_room(&self, bytes: u64) {
        self.pending.fetch_sub(bytes, Ordering::SeqCst);
    }

    pub fn stored_len(data_len: usize, table_len: usize) -> u64 {
        (header_len(data_len, table_len) + data_len) as u64
    }

    fn path(&self, block: BlockId, index: u8) -> PathBuf {
        self.root
            .join(format!("{:02x}", block.0 & 0xff))
            .join(format!("{:016x}.{index}", block.0))
    }

    /// Writes the `.tmp` file of a fragment (not yet durable nor visible).
    pub fn write_tmp(
        &self,
        block: BlockId,
        index: u8,
        data: &[u8],
        table: &[u8],
    ) -> std::io::Result<PathBuf> {
        let path = self.path(block, index);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("{index}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&header(block, index, data, table))?;
        f.write_all(data)?;
        Ok(tmp)
    }

    /// Whether fragment `index` of `block` is stored already: `None` if
    /// not, `Some(true)` if with exactly `data` and `table` (its header,
    /// which holds the table and the blake3 of every span, is the one they
    /// would get), `Some(false)` if with other bytes.
    pub fn stored_as(
        &self,
        block: BlockId,
        index: u8,
        data: &[u8],
        table: &[u8],
    ) -> std::io::Result<Option<bool>> {
        if !self.lock_index().contains_key(&(block, index)) {
            return Ok(None);
        }
        let mut f = match std::fs::File::open(self.path(block, index)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let want = header(block, index, data, table);
        let mut got = vec![0u8; want.len()];
        match f.read_exact(&mut got) {
            Ok(()) => Ok(Some(got == want)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(Some(false)),
            Err(e) => Err(e),
        }
    }

    /// Makes a synced `.tmp` file visible; the caller syncs the directory.
    pub fn publish(
        &self,
        block: BlockId,
        index: u8,
        tmp: &Path,
        bytes: u64,
    ) -> std::io::Result<()> {
        let final_path = tmp.with_extension("");
        // `with_extension("")` drops ".tmp" only: names are "<block>.<index>.tmp".
        std::fs::rename(tmp, &final_path)?;
        let old = self
            .lock_index()
            .insert((block, index), (bytes, SystemTime::now()));
        self.used.fetch_add(bytes, Ordering::Relaxed);
        if let Some((old, _)) = old {
            self.used.fetch_sub(old, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lock_index(&self) -> std::sync::MutexGuard<'_, Index> {
        // The index holds plain data; a panic elsewhere cannot leave it torn.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Up to `limit` fragments after `after`, in order: (block, slot, age
    /// in seconds), and whether the list reached the end.
    pub fn inventory_page(
        &self,
        after: Option<(BlockId, u8)>,
        limit: usize,
    ) -> (Vec<(BlockId, u8, u32)>, bool) {
        let index = self.lock_index();
        let now = SystemTime::now();
        let range = match after {
            Some(a) => index.range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => index.range(..),
        };
        let mut out = Vec::new();
        let mut rest = range.map(|((b, s), (_, at))| {
            let age = now.duration_since(*at).unwrap_or_default().as_secs();
            (*b, *s, age.min(u32::MAX as u64) as u32)
        });
        for item in rest.by_ref().take(limit) {
            out.push(item);
        }
        let last = rest.next().is_none();
        (out, last)
    }

    /// Brings the index in line with the directory, for an inventory that
    /// must reflect the disk (`sparefs fsck` asks for one): fragment files
    /// that vanished are forgotten (the meta then finds them missing) and
    /// files nobody indexed are added (the meta judges them). Writes and
    /// deletes racing the walk win: an entry indexed after the walk began
    /// stays, and each difference is confirmed with a fresh look at its
    /// file before it is acted on. Returns (forgotten, added).
    pub fn reconcile(&self) -> std::io::Result<(usize, usize)> {
        let began = SystemTime::now();
        let mut on_disk: BTreeMap<(BlockId, u8), (u64, SystemTime)> = BTreeMap::new();
        for sub in std::fs::read_dir(&self.root)? {
            let sub = sub?.path();
            if !sub.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&sub)? {
                let f = f?;
                let Some(key) = parse_name(&f.file_name().to_string_lossy()) else {
                    continue;
                };
                if let Ok(m) = f.metadata() {
                    let at = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    on_disk.insert(key, (m.len(), at));
                }
            }
        }
        let mut index = self.lock_index();
        let gone: Vec<(BlockId, u8)> = index
            .iter()
            .filter(|(k, (_, at))| {
                *at < began && !on_disk.contains_key(k) && !self.path(k.0, k.1).exists()
            })
            .map(|(k, _)| *k)
            .collect();
        for k in &gone {
            if let Some((len, _)) = index.remove(k) {
                self.used.fetch_sub(len, Ordering::Relaxed);
            }
        }
        let mut added = 0;
        for (k, (len, at)) in on_disk {
            if index.contains_key(&k) || !self.path(k.0, k.1).exists() {
                continue;
            }
            index.insert(k, (len, at));
            self.used.fetch_add(len, Ordering::Relaxed);
            added += 1;
        }
        if !gone.is_empty() {
            self.errors.fetch_add(gone.len() as u64, Ordering::Relaxed);
            tracing::error!(
                vanished = gone.len(),
                "fragment files vanished from {}",
                self.root.display()
            );
        }
        Ok((gone.len(), added))
    }

    pub fn fragment_count(&self) -> usize {
        self.lock_index().len()
    }

    /// The directory was removed under us: everything indexed is gone.
    /// Recreates it and returns what was lost.
    pub fn check_root(&self) -> Vec<(BlockId, u8)> {
        if self.root.is_dir() {
            return Vec::new();
        }
        tracing::error!(
            "{} vanished; reporting every fragment lost",
            self.root.display()
        );
        if let Err(e) = std::fs::create_dir_all(&self.root) {
            tracing::error!("recreate {}: {e}", self.root.display());
        }
        let lost: Vec<(BlockId, u8)> = std::mem::take(&mut *self.lock_index())
            .into_keys()
            .collect();
        self.used.store(0, Ordering::Relaxed);
        self.errors.fetch_add(lost.len() as u64, Ordering::Relaxed);
        lost
    }

    /// Reads and verifies a whole fragment (scrub).
    pub fn verify(&self, block: BlockId, index: u8) -> Result<u64, RpcError> {
        let path = self.path(block, index);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RpcError::NoFragment { block, index })
            }
            Err(e) => return Err(RpcError::Storage(format!("stat {}: {e}", path.display()))),
        };
        // The data length is in the header; read() checks every span.
        let mut f = std::fs::File::open(&path)
            .map_err(|e| RpcError::Storage(format!("open {}: {e}", path.display())))?;
        let at = self.layout_of(&mut f, block, index)?;
        self.read(block, index, 0, at.data_len as u32)?;
        Ok(len)
    }

    /// Hashes a whole fragment here for `fsck --verify-data`: with
    /// `in_block`, the pieces of the block its bytes make (checked end to
    /// end by the caller) and whether its padding is zero; without (a
    /// parity fragment), every span checked against this file's sums.
    pub fn hash_fragment(
        &self,
        block: BlockId,
        index: u8,
        in_block: Option<InBlock>,
    ) -> Result<FragmentHash, RpcError> {
        let Some(at) = in_block else {
            let data = self.read_whole(block, index, true)?;
            return Ok(FragmentHash {
                bytes: data.len() as u64,
                pieces: Vec::new(),
                padding_zero: true,
            });
        };
        if at.offset as u64 + at.len as u64 > at.block_len as u64 {
            return Err(RpcError::BadRequest(format!(
                "bytes {}+{} of a block of {}",
                at.offset, at.len, at.block_len
            )));
        }
        let data = self.read_whole(block, index, false)?;
        let Some((held, padding)) = data.split_at_checked(at.len as usize) else {
            return Err(RpcError::BadRequest(format!(
                "{} block bytes in a fragment of {}",
                at.len,
                data.len()
            )));
        };
        Ok(FragmentHash {
            bytes: data.len() as u64,
            pieces: sparefs_erasure::block_table::pieces_of(held, at),
            padding_zero: padding.iter().all(|&b| b == 0),
        })
    }

    /// All of a fragment's data, its spans checked or not.
    fn read_whole(&self, block: BlockId, index: u8, verify: bool) -> Result<Vec<u8>, RpcError> {
        let (_, _, at) = self.open_fragment(block, index)?;
        self.read_as(block, index, 0, at.data_len as u32, verify)
    }

    /// Forgets a fragment that is gone or bad (its file removed if there).
    pub fn discard(&self, block: BlockId, index: u8) {
        let _ = std::fs::remove_file(self.path(block, index));
        if let Some((len, _)) = self.lock_index().remove(&(block, index)) {
            self.used.fetch_sub(len, Ordering::Relaxed);
        }
    }

    fn corrupt(&self, block: BlockId, index: u8, detail: String) -> RpcError {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(block = block.0, index, "corrupt fragment: {detail}");
        RpcError::Corrupt {
            block,
            index,
            detail,
        }
    }

    /// Reads `len` bytes at `offset` of a fragment: verified (`read`), or
    /// the range alone for a reader that checks it end to end.
    pub fn read_as(
        &self,
        block: BlockId,
        index: u8,
        offset: u32,
        len: u32,
        verify: bool,
    ) -> Result<Vec<u8>, RpcError> {
        if verify {
            return self.read(block, index, offset, len);
        }
        let (path, mut f, at) = self.open_fragment(block, index)?;
        let (offset, len) = (offset as usize, len as usize);
        if offset + len > at.data_len {
            return Err(RpcError::BadRequest(format!(
                "range {offset}+{len} past the fragment's {} bytes",
                at.data_len
            )));
        }
        // Read into a buffer of the right capacity, not zeroed first.
        let mut data = Vec::with_capacity(len);
        f.seek(SeekFrom::Start((at.data_at + offset) as u64))
            .map_err(|e| RpcError::Storage(format!("seek {}: {e}", path.display())))?;
        (&mut f)
            .take(len as u64)
            .read_to_end(&mut data)
            .map_err(|e| RpcError::Storage(format!("read {}: {e}", path.display())))?;
        if data.len() != len {
            return Err(self.corrupt(block, index, "short data".into()));
        }
        Ok(data)
    }

    /// Reads `len` bytes at `offset` of a fragment, verifying every 64 KiB
    /// span it touches.
    pub fn read(
        &self,
        block: BlockId,
        index: u8,
        offset: u32,
        len: u32,
    ) -> Result<Vec<u8>, RpcError> {
        let (path, mut f, at) = self.open_fragment(block, index)?;
        let io = |e: std::io::Error| RpcError::Storage(format!("read {}: {e}", path.display()));
        let data_len = at.data_len;
        let (offset, len) = (offset as usize, len as usize);
        if offset + len > data_len {
            return Err(RpcError::BadRequest(format!(
                "range {offset}+{len} past the fragment's {data_len} bytes"
            )));
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        let first = offset / CHECKSUM_SPAN;
        let last = (offset + len - 1) / CHECKSUM_SPAN;
        let mut sums = vec![0u8; 32 * (last - first + 1)];
        f.seek(SeekFrom::Start((at.sums_at + 32 * first) as u64))
            .map_err(io)?;
        f.read_exact(&mut sums)
            .map_err(|_| self.corrupt(block, index, "short checksum table".into()))?;
        let span_start = first * CHECKSUM_SPAN;
        let span_end = ((last + 1) * CHECKSUM_SPAN).min(data_len);
        let mut data = vec![0u8; span_end - span_start];
        f.seek(SeekFrom::Start((at.data_at + span_start) as u64))
            .map_err(io)?;
        f.read_exact(&mut data)
            .map_err(|_| self.corrupt(block, index, "short data".into()))?;
        for (i, chunk) in data.chunks(CHECKSUM_SPAN).enumerate() {
            if blake3::hash(chunk).as_bytes() != &sums[32 * i..32 * i + 32] {
                return Err(self.corrupt(
                    block,
                    index,
                    format!("checksum mismatch in span {}", first + i),
                ));
            }
        }
        Ok(data[offset - span_start..offset - span_start + len].to_vec())
    }

    /// A fragment file opened, with its path and layout.
    fn open_fragment(
        &self,
        block: BlockId,
        index: u8,
    ) -> Result<(PathBuf, std::fs::File, Layout), RpcError> {
        let path = self.path(block, index);
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RpcError::NoFragment { block, index })
            }
            Err(e) => return Err(RpcError::Storage(format!("open {}: {e}", path.display()))),
        };
        let at = self.layout_of(&mut f, block, index)?;
        Ok((path, f, at))
    }

    /// The layout of an open fragment file, from its fixed header.
    fn layout_of(
        &self,
        f: &mut std::fs::File,
        block: BlockId,
        index: u8,
    ) -> Result<Layout, RpcError> {
        let mut fixed = [0u8; FIXED_HEADER];
        let mut got = 0;
        while got < FIXED_HEADER {
            match f.read(&mut fixed[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(RpcError::Storage(format!("read header: {e}"))),
            }
        }
        layout(&fixed[..got], block, index).map_err(|e| self.corrupt(block, index, e))
    }

    /// The block's table stored with a fragment (empty: written before
    /// tables, or a block of one group). The reader checks it against the
    /// block's checksum: this server only keeps it.
    pub fn read_table(&self, block: BlockId, index: u8) -> Result<Vec<u8>, RpcError> {
        let (path, mut f, at) = self.open_fragment(block, index)?;
        let mut table = vec![0u8; at.table_len];
        f.seek(SeekFrom::Start(at.table_at as u64))
            .map_err(|e| RpcError::Storage(format!("seek {}: {e}", path.display())))?;
        f.read_exact(&mut table)
            .map_err(|_| self.corrupt(block, index, "short block table".into()))?;
        Ok(table)
    }

    /// Deletes a garbage fragment unless it was written after `decided`
    /// (a repair may have put a fresh, live copy under the same name).
    pub fn delete_unless_newer(
        &self,
        block: BlockId,
        index: u8,
        decided: SystemTime,
    ) -> std::io::Result<()> {
        let newer = self
            .lock_index()
            .get(&(block, index))
            .is_some_and(|(_, at)| *at > decided);
        if newer {
            return Ok(());
        }
        self.delete(block, index)
    }

    /// Deletes a garbage fragment (one the meta no longer references).
    pub fn delete(&self, block: BlockId, index: u8) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(block, index)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some((len, _)) = self.lock_index().remove(&(block, index)) {
            self.used.fetch_sub(len, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The fragment files' directory handles, for syncing.
    pub fn dir_of(&self, block: BlockId) -> PathBuf {
        self.root.join(format!("{:02x}", block.0 & 0xff))
    }

    /// Path of a stored fragment (tests flip bytes in it).
    pub fn fragment_path(&self, block: BlockId, index: u8) -> PathBuf {
        self.path(block, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_verify_and_detect_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FragmentStore::open(dir.path(), 1 << 30, 0).expect("open");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let table = vec![9u8; 64];
        let tmp = store
            .write_tmp(BlockId(42), 1, &data, &table)
            .expect("write");
        store
            .publish(
                BlockId(42),
                1,
                &tmp,
                FragmentStore::stored_len(data.len(), 64),
            )
            .expect("publish");
        assert_eq!(store.read_table(BlockId(42), 1).expect("table"), table);
        assert_eq!(
            store.read(BlockId(42), 1, 70_000, 1000).expect("read"),
            data[70_000..71_000].to_vec()
        );
        assert_eq!(
            store.read(BlockId(42), 1, 0, 200_000).expect("read all"),
            data
        );
        assert!(matches!(
            store.read(BlockId(42), 2, 0, 10),
            Err(RpcError::NoFragment { .. })
        ));
        // Flip one byte in the second span: reads touching it fail, others do not.
        let path = store.fragment_path(BlockId(42), 1);
        let mut bytes = std::fs::read(&path).expect("read file");
        let at = header_len(data.len(), 64) + CHECKSUM_SPAN + 5;
        bytes[at] ^= 0xff;
        std::fs::write(&path, bytes).expect("write file");
        assert!(matches!(
            store.read(BlockId(42), 1, CHECKSUM_SPAN as u32, 10),
            Err(RpcError::Corrupt { .. })
        ));
        assert!(store.read(BlockId(42), 1, 0, 100).is_ok());
        assert_eq!(store.errors(), 1);
        // Unverified, the same range is served as it is on disk.
        let raw = store
            .read_as(BlockId(42), 1, CHECKSUM_SPAN as u32, 10, false)
            .expect("unverified read");
        assert_eq!(raw[5], data[CHECKSUM_SPAN + 5] ^ 0xff);
    }

    /// Files written before block tables (version 1) are still read,
    /// verified, and have an empty table.
    #[test]
    fn version_1_fragments_are_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FragmentStore::open(dir.path(), 1 << 30, 0).expect("open");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
        let tmp = store.write_tmp(BlockId(7), 0, &data, &[]).expect("write");
        store
            .publish(
                BlockId(7),
                0,
                &tmp,
                FragmentStore::stored_len(data.len(), 0),
            )
            .expect("publish");
        // Rewrite it as version 1: no table length field, old magic.
        let path = store.fragment_path(BlockId(7), 0);
        let v2 = std::fs::read(&path).expect("read file");
        let mut v1 = Vec::new();
        v1.extend_from_slice(MAGIC_V1);
        v1.extend_from_slice(&v2[8..FIXED_HEADER_V1]);
        v1.extend_from_slice(&v2[FIXED_HEADER..]);
        std::fs::write(&path, v1).expect("write file");
        assert_eq!(
            store.read(BlockId(7), 0, 70_000, 30_000).expect("read"),
            data[70_000..]
        );
        assert!(store.read_table(BlockId(7), 0).expect("table").is_empty());
        store.verify(BlockId(7), 0).expect("verify");
    }

    #[test]
    fn a_fragment_hashed_in_place_gives_its_pieces_and_its_padding() {
        use sparefs_erasure::block_table::root_from_pieces;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FragmentStore::open(dir.path(), 1 << 30, 0).expect("open");
        // The second half of a 100,001-byte block, padded with one byte.
        let block: Vec<u8> = (0..100_001u32).map(|i| (i % 251) as u8).collect();
        let mut half = block[50_001..].to_vec();
        half.push(0);
        let put = |data: &[u8]| {
            let tmp = store.write_tmp(BlockId(9), 1, data, &[]).expect("write");
            store
                .publish(
                    BlockId(9),
                    1,
                    &tmp,
                    FragmentStore::stored_len(data.len(), 0),
                )
                .expect("publish");
        };
        put(&half);
        let at = InBlock {
            offset: 50_001,
            len: 50_000,
            block_len: 100_001,
        };
        let h = store.hash_fragment(BlockId(9), 1, Some(at)).expect("hash");
        assert!(h.padding_zero);
        assert_eq!(h.bytes, 50_001);
        let first = sparefs_erasure::block_table::pieces_of(
            &block[..50_001],
            InBlock {
                offset: 0,
                len: 50_001,
                block_len: 100_001,
            },
        );
        assert_eq!(
            root_from_pieces(first.iter().chain(&h.pieces), block.len()),
            Some(*blake3::hash(&block).as_bytes())
        );
        // Padding that is not zero, and a range past the fragment's end.
        half[50_000] = 1;
        put(&half);
        let h = store.hash_fragment(BlockId(9), 1, Some(at)).expect("hash");
        assert!(!h.padding_zero);
        let past = InBlock {
            offset: 0,
            len: 60_000,
            block_len: 100_001,
        };
        assert!(matches!(
            store.hash_fragment(BlockId(9), 1, Some(past)),
            Err(RpcError::BadRequest(_))
        ));
        // Parity: its own sums, a flipped byte found.
        assert_eq!(
            store
                .hash_fragment(BlockId(9), 1, None)
                .expect("sums")
                .bytes,
            50_001
        );
        let path = store.fragment_path(BlockId(9), 1);
        let mut raw = std::fs::read(&path).expect("read file");
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&path, raw).expect("write file");
        assert!(matches!(
            store.hash_fragment(BlockId(9), 1, None),
            Err(RpcError::Corrupt { .. })
        ));
    }

    #[test]
    fn reconcile_forgets_vanished_files_and_indexes_strays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FragmentStore::open(dir.path(), 1 << 30, 0).expect("open");
        for b in 1..=3 {
            let tmp = store
                .write_tmp(BlockId(b), 0, &[b as u8; 100], &[])
                .expect("write");
            store
                .publish(BlockId(b), 0, &tmp, FragmentStore::stored_len(100, 0))
                .expect("publish");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::remove_file(store.fragment_path(BlockId(2), 0)).expect("remove");
        std::fs::copy(
            store.fragment_path(BlockId(3), 0),
            store.fragment_path(BlockId(3), 1),
        )
        .expect("copy");
        assert_eq!(store.reconcile().expect("reconcile"), (1, 1));
        let (items, _) = store.inventory_page(None, 10);
        let keys: Vec<_> = items.iter().map(|(b, s, _)| (b.0, *s)).collect();
        assert_eq!(keys, vec![(1, 0), (3, 0), (3, 1)]);
        assert_eq!(store.reconcile().expect("again"), (0, 0));
    }

    #[test]
    fn a_directory_of_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(FragmentStore::open(dir.path(), 1 << 30, 0).expect("open"));
        let stamp = dir.path().join(sparefs_proto::format::FORMAT_FILE);
        assert_eq!(
            std::fs::read_to_string(&stamp).expect("stamped"),
            "sparefs chunkserver format 2\n"
        );
        std::fs::write(&stamp, "sparefs chunkserver format 3\n").expect("write");
        let e = FragmentStore::open(dir.path(), 1 << 30, 0)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("newer sparefs"), "{e}");
    }

    #[test]
    fn limit_is_enforced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FragmentStore::open(dir.path(), 1000, 0).expect("open");
        store.reserve_room(900).expect("fits");
        assert!(store.reserve_room(200).is_err(), "over the limit");
        store.release_room(900);
        store.reserve_room(200).expect("fits again");
    }
}
