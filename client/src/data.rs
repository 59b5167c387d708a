//! The data path of DESIGN.md.
//!
//! Write: cut each extent at chunk boundaries into slices and each slice
//! into blocks of at most 4 MiB; allocate ids and placement in the meta
//! (with write capabilities); encode each block (`rep:N`, or `ec:K+M`;
//! blocks under 64 KiB are replicated M+1 times instead, since coding them
//! costs more than it saves); send all fragments in parallel and wait until
//! every one is durable; only then commit the slices in one meta request.
//! Read: resolve the chunk's slice overlay; for each block piece read the
//! data fragments' byte ranges in parallel; if any is missing, slow or
//! corrupt, read the same range of every fragment and decode from parity.

use crate::meta::{ClientError, MetaClient, Result};
use crate::overlay::{resolve, Piece, Source};
use crate::verify::{self, Check};
use futures::future::join_all;
use sparefs_erasure::block_table;
use sparefs_proto::layout::{BlockRef, Capability, ChunkserverInfo, Policy, Slice, NO_SERVER};
use sparefs_proto::limits::{BLOCK_BYTES_MAX, CHUNK_BYTES};
use sparefs_proto::msg::{Reply, Request, RpcError};
use sparefs_proto::namespace::{Attr, Caller, NsReply, ReadOp, SetAttr, WriteOp};
use sparefs_proto::{BlockId, ChunkserverId, Errno, InodeId};
use sparefs_wire::conn::{CallError, Conn, ConnPool};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Blocks smaller than this are replicated even under an EC policy.
pub const SMALL_BLOCK_BYTES: usize = 64 * 1024;
/// A fragment read slower than this is given up on in favour of parity.
pub const FRAGMENT_TIMEOUT: Duration = Duration::from_secs(5);
const CHUNK_CACHE_MAX: usize = 4096;
/// Blocks being written at once by one flush (bounds memory and sockets).
pub const BLOCKS_IN_FLIGHT_MAX: usize = 16;
const CHUNK_CACHE_TTL: Duration = Duration::from_secs(1);
/// A fragment write slower than this counts as failed (the block is placed
/// elsewhere): a hung host must not stall writers for long.
pub const FRAGMENT_WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Placements tried for one block before its write fails.
pub const PUT_ATTEMPTS: usize = 4;

pub type ChunkMap = (Arc<Vec<Slice>>, Arc<HashMap<BlockId, Capability>>);

/// Read capabilities by the block they open.
fn by_block(capabilities: Vec<Capability>) -> HashMap<BlockId, Capability> {
    capabilities.into_iter().map(|c| (c.block, c)).collect()
}

pub struct DataClient {
    pub meta: Arc<MetaClient>,
    servers: Mutex<HashMap<ChunkserverId, String>>,
    conns: ConnPool,
    chunks: Mutex<HashMap<(InodeId, u64), (Instant, ChunkMap)>>,
    /// Bumped by every invalidation: a chunk map fetched across one is not
    /// cached (it may predate the change that invalidated the cache).
    chunks_epoch: std::sync::atomic::AtomicU64,
    /// Count of fragments found bad on reads: reported by chunkservers,
    /// or bytes that failed the end-to-end check.
    pub bad_fragments: std::sync::atomic::AtomicU64,
    /// Verified block tables (end-to-end checks of partial reads).
    tables: verify::Tables,
    /// Files this client writes under a fence (`set_fence`): every commit
    /// of theirs carries the epoch and is refused once a newer holder
    /// took the file.
    fences: Mutex<HashMap<InodeId, u64>>,
}

fn chunk_of(offset: u64) -> (u64, u32) {
    (offset / CHUNK_BYTES, (offset % CHUNK_BYTES) as u32)
}

/// Part of an extent inside one chunk: (chunk index, offset in the chunk,
/// bytes).
type ChunkPiece<'a> = (u64, u32, &'a [u8]);

/// The extents cut at chunk boundaries, and the file size they imply.
fn cut_at_chunks(extents: &[(u64, Vec<u8>)]) -> (Vec<ChunkPiece<'_>>, u64) {
    let mut pieces = Vec::new();
    let mut size_at_least = 0;
    for (offset, data) in extents {
        size_at_least = size_at_least.max(offset + data.len() as u64);
        let mut pos = 0usize;
        while pos < data.len() {
            let (index, within) = chunk_of(offset + pos as u64);
            let take = ((CHUNK_BYTES - within as u64) as usize).min(data.len() - pos);
            pieces.push((index, within, &data[pos..pos + take]));
            pos += take;
        }
    }
    (pieces, size_at_least)
}

/// Where block bytes `[start, start + len)` (len > 0) lie in the data
/// shards of a code whose shards hold `shard` bytes: (shard, from, to)
/// within each shard it touches.
fn shard_pieces(start: u32, len: u32, shard: u32) -> Vec<(usize, u32, u32)> {
    let (first, last) = (start / shard, (start + len - 1) / shard);
    (first..=last)
        .map(|s| {
            let a = if s == first { start % shard } else { 0 };
            let b = if s == last {
                (start + len - 1) % shard + 1
            } else {
                shard
            };
            (s as usize, a, b)
        })
        .collect()
}

/// The sets of fragment indexes (of `n`) to leave out of a decode, fewest
/// first, up to `most` at a time; codes wider than 16 try leaving out
/// one at a time only.
pub(crate) fn leave_out_sets(n: usize, most: usize) -> Vec<Vec<usize>> {
    let most = if n > 16 { most.min(1) } else { most };
    let mut sets = vec![Vec::new()];
    for size in 1..=most.min(n) {
        if n > 16 {
            sets.extend((0..n).map(|i| vec![i]));
            break;
        }
        for mask in 0u32..(1 << n) {
            if mask.count_ones() as usize == size {
                sets.push((0..n).filter(|i| mask & (1 << i) != 0).collect());
            }
        }
    }
    sets
}

/// The policy a block of `len` bytes is actually stored under.
pub fn block_policy(policy: Policy, len: usize) -> Policy {
    match policy {
        Policy::Ec { parity, .. } if len < SMALL_BLOCK_BYTES => Policy::Rep { copies: parity + 1 },
        p => p,
    }
}

impl DataClient {
    pub fn new(meta: Arc<MetaClient>) -> DataClient {
        // Fragments go only to chunkservers' certificates.
        let conns = match meta.tls() {
            Some(tls) => {
                ConnPool::with_tls(tls.clone()).expecting(sparefs_wire::tls::Role::Chunkserver)
            }
            None => ConnPool::default(),
        };
        DataClient {
            meta,
            servers: Mutex::new(HashMap::new()),
            conns,
            chunks: Mutex::new(HashMap::new()),
            chunks_epoch: std::sync::atomic::AtomicU64::new(0),
            bad_fragments: std::sync::atomic::AtomicU64::new(0),
            tables: verify::Tables::default(),
            fences: Mutex::new(HashMap::new()),
        }
    }

    /// Commits of `ino` from now on carry `epoch` (`WriteOp::Fenced`); `None`
    /// sends them unfenced again.
    pub fn set_fence(&self, ino: InodeId, epoch: Option<u64>) {
        if let Ok(mut f) = self.fences.lock() {
            match epoch {
                Some(e) => f.insert(ino, e),
                None => f.remove(&ino),
            };
        }
    }

    fn fence_of(&self, ino: InodeId) -> Option<u64> {
        self.fences.lock().ok()?.get(&ino).copied()
    }

    async fn refresh_servers(&self) -> Result<()> {
        let NsReply::Chunkservers(list) = self.meta.read(ReadOp::ListChunkservers).await? else {
            return Err(ClientError::Protocol("chunkserver list".into()));
        };
        let map: HashMap<ChunkserverId, String> = list
            .into_iter()
            .map(|s: ChunkserverInfo| (s.id, s.address))
            .collect();
        if let Ok(mut s) = self.servers.lock() {
            *s = map;
        }
        Ok(())
    }

    async fn conn(&self, server: ChunkserverId) -> std::result::Result<Arc<Conn>, String> {
        let mut address = self
            .servers
            .lock()
            .map_err(|e| e.to_string())?
            .get(&server)
            .cloned();
        if address.is_none() {
            self.refresh_servers().await.map_err(|e| e.to_string())?;
            address = self
                .servers
                .lock()
                .map_err(|e| e.to_string())?
                .get(&server)
                .cloned();
        }
        let address = address.ok_or_else(|| format!("chunkserver {server} is not registered"))?;
        self.conns.get(&address).await
    }

    pub(crate) async fn fragment_call(
        &self,
        server: ChunkserverId,
        req: Request,
        timeout: Duration,
    ) -> std::result::Result<Reply, String> {
        let c = self.conn(server).await?;
        match c.call(req, timeout).await {
            Ok(r) => Ok(r),
            Err(CallError::Rpc(RpcError::Corrupt {
                block,
                index,
                detail,
            })) => {
                self.bad_fragments
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    block = block.0,
                    index,
                    "bad fragment on chunkserver {server}: {detail}"
                );
                Err(format!("corrupt fragment {block}.{index}"))
            }
            Err(CallError::Rpc(e)) => Err(e.to_string()),
            Err(CallError::Transport(e)) => Err(e),
        }
    }

    /// Forgets cached chunk maps of `ino` (close-to-open: called on open).
    pub fn invalidate(&self, ino: InodeId) {
        if let Ok(mut c) = self.chunks.lock() {
            self.chunks_epoch
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            c.retain(|(i, _), _| *i != ino);
        }
    }

    /// A chunk's slices and read capabilities, from the meta (no cache).
    pub async fn fetch_chunk(
        &self,
        ino: InodeId,
        index: u64,
    ) -> Result<(Vec<Slice>, HashMap<BlockId, Capability>)> {
        let NsReply::Chunk {
            slices,
            capabilities,
        } = self
            .meta
            .read_detached(self.meta.caller.clone(), ReadOp::ReadChunk { ino, index })
            .await?
        else {
            return Err(ClientError::Protocol("chunk map".into()));
        };
        Ok((slices, by_block(capabilities)))
    }

    async fn chunk(&self, ino: InodeId, index: u64) -> Result<ChunkMap> {
        if let Some((at, map)) = self
            .chunks
            .lock()
            .ok()
            .and_then(|c| c.get(&(ino, index)).cloned())
        {
            if at.elapsed() < CHUNK_CACHE_TTL {
                return Ok(map);
            }
        }
        let epoch = self.chunks_epoch.load(std::sync::atomic::Ordering::SeqCst);
        let (slices, caps) = self.fetch_chunk(ino, index).await?;
        let map = (Arc::new(slices), Arc::new(caps));
        if let Ok(mut c) = self.chunks.lock() {
            // Checked under the lock that invalidations take.
            if self.chunks_epoch.load(std::sync::atomic::Ordering::SeqCst) == epoch {
                if c.len() >= CHUNK_CACHE_MAX {
                    c.clear();
                }
                c.insert((ino, index), (Instant::now(), map.clone()));
            }
        }
        Ok(map)
    }

    /// Reads `[offset, offset + len)` of a file of `size` bytes.
    pub async fn read(&self, ino: InodeId, size: u64, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.read_with_first_chunk(ino, size, offset, len, None)
            .await
    }

    /// A chunk map from an answer that carried one (`ReadOp::Open`).
    pub fn chunk_map_of(slices: Vec<Slice>, capabilities: Vec<Capability>) -> ChunkMap {
        (Arc::new(slices), Arc::new(by_block(capabilities)))
    }

    /// `read`, using `first` (fetched just now) as chunk 0's map.
    pub async fn read_with_first_chunk(
        &self,
        ino: InodeId,
        size: u64,
        offset: u64,
        len: usize,
        mut first: Option<ChunkMap>,
    ) -> Result<Vec<u8>> {
        let end = size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let mut pos = offset;
        let mut jobs = Vec::new();
        while pos < end {
            let (index, within) = chunk_of(pos);
            let chunk_end = ((index + 1) * CHUNK_BYTES).min(end);
            let take = (chunk_end - pos) as u32;
            jobs.push((index, within, take, (pos - offset) as usize));
            pos = chunk_end;
        }
        for (index, within, take, out_at) in jobs {
            let (slices, caps) = match (index, first.take()) {
                (0, Some(map)) => map,
                _ => self.chunk(ino, index).await?,
            };
            let pieces: Vec<Piece> = resolve(&slices, within, within + take);
            for p in &pieces {
                if let Source::Inline(bytes) = p.source {
                    let at = out_at + (p.start - within) as usize;
                    out[at..at + bytes.len()].copy_from_slice(bytes);
                }
            }
            let reads = pieces.iter().filter_map(|p| {
                let Source::Block(block, boff) = p.source else {
                    return None;
                };
                let cap = caps.get(&block.id).cloned();
                Some(async move {
                    let cap = cap.ok_or_else(|| {
                        ClientError::Protocol(format!("no capability for block {}", block.id))
                    })?;
                    let bytes = self.read_block_range(block, &cap, boff, p.len).await?;
                    Ok::<_, ClientError>((p.start, bytes))
                })
            });
            for r in join_all(reads).await {
                let (start, bytes) = r?;
                let at = out_at + (start - within) as usize;
                out[at..at + bytes.len()].copy_from_slice(&bytes);
            }
        }
        Ok(out)
    }

    pub(crate) async fn get_fragment(
        &self,
        block: &BlockRef,
        cap: &Capability,
        index: usize,
        offset: u32,
        len: u32,
        verify: bool,
    ) -> std::result::Result<Vec<u8>, String> {
        let server = *block
            .fragments
            .get(index)
            .ok_or("fragment index out of range")?;
        if server == NO_SERVER {
            return Err(format!("fragment {} of block {} is lost", index, block.id));
        }
        let req = Request::GetFragment {
            cap: cap.clone(),
            block: block.id,
            index: block.slot(index),
            offset,
            len,
            verify,
        };
        match self.fragment_call(server, req, FRAGMENT_TIMEOUT).await? {
            Reply::Bytes(b) if b.len() == len as usize => Ok(b),
            _ => Err("short fragment read".into()),
        }
    }

    /// Bytes `[boff, boff + len)` of a block, checked end to end
    /// (verify.rs): read from the fragments that hold them or, if those
    /// fail or do not pass the check, from every fragment, decoding around
    /// the ones that disagree. Bytes that fail the check are never returned.
    pub(crate) async fn read_block_range(
        &self,
        block: &BlockRef,
        cap: &Capability,
        boff: u32,
        len: u32,
    ) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let table = match verify::has_table(block) {
            true => self.table(block, cap).await,
            false => None,
        };
        let check = Check::of(block, boff, len, table);
        let mut bytes = match self.read_direct(block, cap, &check).await {
            Some(b) if check.passes(&b) => b,
            direct => {
                if direct.is_some() {
                    self.found_bad(block, "the fragments read first (which: unknown yet)");
                }
                self.read_around_bad(block, cap, &check).await?
            }
        };
        let at = (boff - check.start) as usize;
        bytes.truncate(at + len as usize);
        bytes.drain(..at);
        Ok(bytes)
    }

    /// The block's table, checked against its checksum (from the cache, or
    /// from the first fragment whose table passes); `None` if no fragment
    /// has one (written before tables): the block is then checked whole.
    async fn table(&self, block: &BlockRef, cap: &Capability) -> Option<verify::Table> {
        if let Some(t) = self.tables.get(block.id) {
            return Some(t);
        }
        for (i, server) in block.fragments.iter().enumerate() {
            if *server == NO_SERVER {
                continue;
            }
            let req = Request::GetBlockTable {
                cap: cap.clone(),
                block: block.id,
                index: block.slot(i),
            };
            match self.fragment_call(*server, req, FRAGMENT_TIMEOUT).await {
                Ok(Reply::Bytes(b)) if b.is_empty() => {}
                Ok(Reply::Bytes(b)) => match self.tables.admit(block, &b) {
                    Some(t) => return Some(t),
                    None => self.found_bad(block, &format!("the table of fragment {i}")),
                },
                _ => {}
            }
        }
        None
    }

    fn found_bad(&self, block: &BlockRef, what: &str) {
        self.bad_fragments
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            block = block.id.0,
            "end-to-end check failed: {what} of block {} do not match its checksum",
            block.id
        );
    }

    /// The checked range from the fragments that hold it (one copy; the
    /// data shards of a code), unchecked; `None` if a read failed. The
    /// chunkservers skip their own span checks: these bytes are checked
    /// end to end, and a failure reads again with theirs (so a server
    /// whose disk went bad finds out and reports it).
    async fn read_direct(
        &self,
        block: &BlockRef,
        cap: &Capability,
        check: &Check,
    ) -> Option<Vec<u8>> {
        let (start, len) = (check.start, check.end - check.start);
        match block.policy {
            Policy::Rep { .. } => {
                for i in 0..block.fragments.len() {
                    if let Ok(b) = self.get_fragment(block, cap, i, start, len, false).await {
                        return Some(b);
                    }
                }
                None
            }
            Policy::Ec { .. } => {
                let shard =
                    sparefs_erasure::fragment_len(block.policy, block.bytes as usize) as u32;
                let reads =
                    shard_pieces(start, len, shard)
                        .into_iter()
                        .map(|(s, a, b)| async move {
                            self.get_fragment(block, cap, s, a, b - a, false).await
                        });
                let mut out = Vec::with_capacity(len as usize);
                for part in join_all(reads).await {
                    out.extend_from_slice(&part.ok()?);
                }
                Some(out)
            }
        }
    }

    /// The checked range when the direct read failed or did not pass,
    /// read with the chunkservers' own checks: each copy in turn, or the
    /// same range of every fragment of a code,
    /// decoded leaving out each set of fragments (at most as many as the
    /// code has parity) until the result passes the check.
    async fn read_around_bad(
        &self,
        block: &BlockRef,
        cap: &Capability,
        check: &Check,
    ) -> Result<Vec<u8>> {
        let (start, len) = (check.start, check.end - check.start);
        let policy = block.policy;
        let unavailable =
            |why: String| ClientError::DataUnavailable(format!("block {}: {why}", block.id));
        let Policy::Ec { parity, .. } = policy else {
            for i in 0..block.fragments.len() {
                if let Ok(b) = self.get_fragment(block, cap, i, start, len, true).await {
                    if check.passes(&b) {
                        return Ok(b);
                    }
                    self.found_bad(block, &format!("copy {i}"));
                }
            }
            return Err(unavailable("no copy readable and whole".into()));
        };
        let shard = sparefs_erasure::fragment_len(policy, block.bytes as usize) as u32;
        let pieces = shard_pieces(start, len, shard);
        // The same shard range from every fragment.
        let (lo, hi) = match pieces[..] {
            [(_, a, b)] => (a, b),
            _ => (0, shard),
        };
        let all = (0..block.fragments.len()).map(|i| async move {
            self.get_fragment(block, cap, i, lo, hi - lo, true)
                .await
                .ok()
        });
        let frags: Vec<Option<Vec<u8>>> = join_all(all).await;
        for left_out in leave_out_sets(frags.len(), parity as usize) {
            let mut attempt = frags.clone();
            for &i in &left_out {
                attempt[i] = None;
            }
            if sparefs_erasure::reconstruct(policy, &mut attempt).is_err() {
                continue;
            }
            let mut out = Vec::with_capacity(len as usize);
            for &(s, a, b) in &pieces {
                let Some(piece) = attempt.get(s).and_then(|f| f.as_deref()) else {
                    break;
                };
                out.extend_from_slice(&piece[(a - lo) as usize..(b - lo) as usize]);
            }
            if check.passes(&out) {
                for i in left_out.iter().filter(|&&i| frags[i].is_some()) {
                    self.found_bad(block, &format!("fragment {i}"));
                }
                return Ok(out);
            }
        }
        Err(unavailable(
            "no set of its fragments decodes to bytes that pass the check".into(),
        ))
    }

    /// Writes every fragment of a new block; on failure, the error and the
    /// chunkservers that failed (a retry places the block elsewhere).
    async fn put_block(
        &self,
        block: BlockId,
        cap: &Capability,
        placement: &[ChunkserverId],
        policy: Policy,
        data: &[u8],
    ) -> std::result::Result<BlockRef, (ClientError, Vec<ChunkserverId>)> {
        let frags = sparefs_erasure::encode(policy, data)
            .map_err(|e| (ClientError::Rejected(e.to_string()), Vec::new()))?;
        // One pass over the bytes gives both the table every fragment keeps
        // and the block's checksum (the table's root is blake3 of the block).
        let table = block_table::table_of(data);
        let checksum = block_table::root_of(&table, data.len())
            .unwrap_or_else(|| *blake3::hash(data).as_bytes());
        let table = block_table::table_bytes(&table);
        if frags.len() != placement.len() {
            return Err((
                ClientError::Protocol("placement does not match the policy".into()),
                Vec::new(),
            ));
        }
        let puts = frags.into_iter().enumerate().map(|(i, frag)| {
            let server = placement[i];
            let req = Request::PutFragment {
                cap: cap.clone(),
                block,
                index: i as u8,
                data: frag,
                table: table.clone(),
            };
            async move {
                self.fragment_call(server, req, FRAGMENT_WRITE_TIMEOUT)
                    .await
            }
        });
        let mut failed = Vec::new();
        let mut error = None;
        for (r, server) in join_all(puts).await.into_iter().zip(placement) {
            match r {
                Ok(Reply::Ok) => {}
                Ok(_) => {
                    failed.push(*server);
                    error = Some(ClientError::Protocol("fragment write reply".into()));
                }
                Err(e) if e.contains("No space") => {
                    failed.push(*server);
                    error = Some(ClientError::Errno(Errno::ENOSPC));
                }
                Err(e) => {
                    failed.push(*server);
                    error = Some(ClientError::DataUnavailable(format!(
                        "write fragment of block {block} to chunkserver {server}: {e}"
                    )));
                }
            }
        }
        if let Some(e) = error {
            return Err((e, failed));
        }
        Ok(BlockRef {
            id: block,
            policy,
            bytes: data.len() as u32,
            fragments: placement.to_vec(),
            checksum,
            slot_base: 0,
        })
    }

    /// Allocates `count` blocks for `policy`, avoiding `exclude`: ids, the
    /// policy the leader chose (lower while hosts are down), placement and
    /// write capabilities.
    async fn allocate(
        &self,
        count: usize,
        policy: Policy,
        exclude: Vec<ChunkserverId>,
    ) -> Result<(Vec<BlockId>, Policy, Vec<ChunkserverId>, Vec<Capability>)> {
        let op = WriteOp::AllocateBlocks {
            count: count as u32,
            policy,
            placement: vec![],
            exclude,
            wanted: None,
        };
        let NsReply::Allocated {
            ids,
            policy,
            placement,
            capabilities,
        } = self.meta.write(op).await?
        else {
            return Err(ClientError::Protocol("allocation".into()));
        };
        if ids.len() != count || capabilities.len() != count || placement.len() != policy.width() {
            return Err(ClientError::Protocol("short allocation".into()));
        }
        Ok((ids, policy, placement, capabilities))
    }

    /// Stores one block, placing it anew (away from the servers that just
    /// failed) when a fragment write fails: a chunkserver dying under a
    /// write costs a retry, not an error.
    async fn store_block(
        &self,
        first: Option<(BlockId, Capability, Vec<ChunkserverId>, Policy)>,
        wanted: Policy,
        data: &[u8],
    ) -> Result<BlockRef> {
        let mut exclude: Vec<ChunkserverId> = Vec::new();
        let mut next = first;
        let mut last = None;
        for _ in 0..PUT_ATTEMPTS {
            let t0 = Instant::now();
            let (id, cap, placement, policy) = match next.take() {
                Some(a) => a,
                None => {
                    let (ids, policy, placement, caps) =
                        self.allocate(1, wanted, exclude.clone()).await?;
                    let (Some(id), Some(cap)) = (ids.first(), caps.into_iter().next()) else {
                        return Err(ClientError::Protocol("empty allocation".into()));
                    };
                    (*id, cap, placement, policy)
                }
            };
            let t1 = Instant::now();
            let r = self.put_block(id, &cap, &placement, policy, data).await;
            if t1.elapsed() > Duration::from_secs(1) || t1 - t0 > Duration::from_secs(1) {
                tracing::warn!(
                    block = id.0,
                    alloc_ms = (t1 - t0).as_millis() as u64,
                    put_ms = t1.elapsed().as_millis() as u64,
                    "slow block store"
                );
            }
            match r {
                Ok(b) => return Ok(b),
                Err((e, failed)) => {
                    tracing::warn!("block {id}: {e}; placing it elsewhere");
                    exclude.extend(failed);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::DataUnavailable("no attempt".into())))
    }

    /// Stores the extents as new slices and commits them in one request.
    /// `then`: attribute changes made after these writes, committed with
    /// them (see `commit_then`).
    pub async fn write_extents(
        &self,
        ino: InodeId,
        policy: Policy,
        extents: &[(u64, Vec<u8>)],
        then: &[(Caller, SetAttr)],
        writer: Option<&Caller>,
    ) -> Result<Attr> {
        let (slices, size_at_least) = self.store_extents(policy, extents).await?;
        self.commit_then(ino, slices, size_at_least, then, writer)
            .await
    }

    /// Stores the extents' blocks (durable on their chunkservers when this
    /// returns) and gives the slices to commit and the size they imply.
    pub async fn store_extents(
        &self,
        policy: Policy,
        extents: &[(u64, Vec<u8>)],
    ) -> Result<(Vec<(u64, Slice)>, u64)> {
        // Cut into slices (per chunk). A slice of at least half a block gets
        // blocks of its own; smaller ones are packed end to end into shared
        // blocks, so a flush of many small random writes stores a few large
        // blocks instead of one tiny block each.
        struct Part {
            policy: Policy,
            data: Vec<u8>,
        }
        let mut slices: Vec<(u64, Slice)> = Vec::new();
        let mut slice_blocks: Vec<Vec<usize>> = Vec::new();
        let mut parts: Vec<Part> = Vec::new();
        let mut pack: Option<usize> = None;
        let block_max = BLOCK_BYTES_MAX as usize;
        let (pieces, size_at_least) = cut_at_chunks(extents);
        for (index, within, bytes) in pieces {
            let take = bytes.len();
            let mut slice = Slice::empty(within, take as u32);
            let mut uses = Vec::new();
            if take >= block_max / 2 {
                for part in bytes.chunks(block_max) {
                    parts.push(Part {
                        policy,
                        data: part.to_vec(),
                    });
                    uses.push(parts.len() - 1);
                }
            } else {
                let fits = pack.is_some_and(|p| parts[p].data.len() + take <= block_max);
                if !fits {
                    parts.push(Part {
                        policy,
                        data: Vec::with_capacity(block_max),
                    });
                    pack = Some(parts.len() - 1);
                }
                let p = pack.ok_or_else(|| ClientError::Protocol("no pack".into()))?;
                slice.block_offset = parts[p].data.len() as u32;
                parts[p].data.extend_from_slice(bytes);
                uses.push(p);
            }
            slices.push((index, slice));
            slice_blocks.push(uses);
        }
        for part in parts.iter_mut() {
            part.policy = block_policy(policy, part.data.len());
        }
        // One allocation per policy and up to 1024 blocks: a flush of many
        // small extents costs a few meta round trips, not one per block.
        type Alloc = (BlockId, Capability, Vec<ChunkserverId>, Policy);
        let mut allocated: Vec<Option<Alloc>> = (0..parts.len()).map(|_| None).collect();
        let mut policies: Vec<Policy> = parts.iter().map(|p| p.policy).collect();
        policies.sort_by_key(|p| p.to_string());
        policies.dedup();
        for bp in policies {
            let wanted: Vec<usize> = (0..parts.len())
                .filter(|i| parts[*i].policy == bp)
                .collect();
            for group in wanted.chunks(1024) {
                let (ids, policy, placement, capabilities) =
                    self.allocate(group.len(), bp, Vec::new()).await?;
                for ((i, id), cap) in group.iter().zip(ids).zip(capabilities) {
                    allocated[*i] = Some((id, cap, placement.clone(), policy));
                }
            }
        }
        // Store every block, a bounded number at a time.
        let mut stored: Vec<Result<BlockRef>> = Vec::with_capacity(parts.len());
        for (batch, allocs) in parts
            .chunks(BLOCKS_IN_FLIGHT_MAX)
            .zip(allocated.chunks(BLOCKS_IN_FLIGHT_MAX))
        {
            let puts = batch.iter().zip(allocs).map(|(part, alloc)| {
                let alloc = alloc.clone();
                async move { self.store_block(alloc, part.policy, &part.data).await }
            });
            stored.extend(join_all(puts).await);
        }
        let mut refs = Vec::with_capacity(stored.len());
        for r in stored {
            refs.push(r?);
        }
        for ((_, slice), uses) in slices.iter_mut().zip(&slice_blocks) {
            slice.blocks = uses.iter().map(|i| refs[*i].clone()).collect();
        }
        Ok((slices, size_at_least))
    }

    /// Makes stored slices visible in one meta request.
    pub async fn commit(
        &self,
        ino: InodeId,
        slices: Vec<(u64, Slice)>,
        size_at_least: u64,
        writer: Option<&Caller>,
    ) -> Result<Attr> {
        self.commit_then(ino, slices, size_at_least, &[], writer)
            .await
    }

    /// Makes stored slices visible, then applies `then` (each change as its
    /// caller, in order), in one meta request: all of it or nothing.
    pub async fn commit_then(
        &self,
        ino: InodeId,
        slices: Vec<(u64, Slice)>,
        size_at_least: u64,
        then: &[(Caller, SetAttr)],
        writer: Option<&Caller>,
    ) -> Result<Attr> {
        // The chunks whose cached maps the commit makes stale (the slices
        // themselves, inline bytes and all, go into the request uncopied).
        let chunks: Vec<u64> = slices.iter().map(|(index, _)| *index).collect();
        let op = if then.is_empty() {
            WriteOp::CommitSlices {
                ino,
                slices,
                size_at_least,
            }
        } else {
            WriteOp::CommitSlicesThenSetAttrs {
                ino,
                slices,
                size_at_least,
                then: then.to_vec(),
            }
        };
        let op = match self.fence_of(ino) {
            Some(epoch) => WriteOp::Fenced {
                epoch,
                op: Box::new(op),
            },
            None => op,
        };
        // As the writer, when one without CAP_FSETID wrote: the meta clears
        // the file's set-id bits then (commits need no permission: access
        // was granted at open).
        let answer = match writer {
            Some(w) => self.meta.write_as(w.clone(), op).await?,
            None => self.meta.write(op).await?,
        };
        let attr = match answer {
            NsReply::Attr(a) => a,
            other => return Err(ClientError::unexpected("attributes of the commit", other)),
        };
        if let Ok(mut c) = self.chunks.lock() {
            self.chunks_epoch
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            for index in chunks {
                c.remove(&(ino, index));
            }
        }
        Ok(attr)
    }

    /// Commits small extents inline in the meta (no chunkserver round
    /// trips): one Raft entry makes them durable on a majority of replicas.
    /// EFBIG means the chunk holds enough inline bytes already.
    pub async fn write_inline(
        &self,
        ino: InodeId,
        extents: &[(u64, Vec<u8>)],
        then: &[(Caller, SetAttr)],
        writer: Option<&Caller>,
    ) -> Result<Attr> {
        let (pieces, size_at_least) = cut_at_chunks(extents);
        let slices = pieces
            .into_iter()
            .map(|(index, within, bytes)| {
                let slice = Slice {
                    inline: bytes.to_vec(),
                    ..Slice::empty(within, bytes.len() as u32)
                };
                (index, slice)
            })
            .collect();
        self.commit_then(ino, slices, size_at_least, then, writer)
            .await
    }

    /// Makes `[offset, offset + len)` read as zeros (a hole slice per
    /// chunk), without changing the size.
    pub async fn punch_hole(&self, ino: InodeId, offset: u64, len: u64) -> Result<Attr> {
        let mut slices = Vec::new();
        let end = offset.saturating_add(len);
        let mut pos = offset;
        while pos < end {
            let (index, within) = chunk_of(pos);
            let take = (CHUNK_BYTES - within as u64).min(end - pos);
            slices.push((index, Slice::empty(within, take as u32)));
            pos += take;
        }
        self.commit(ino, slices, 0, None).await
    }

    pub async fn policy_of(&self, ino: InodeId) -> Result<Policy> {
        match self.meta.read(ReadOp::GetPolicy { ino }).await? {
            NsReply::Policy(p) => Ok(p),
            other => Err(ClientError::unexpected("Policy", other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_cut_at_shard_edges() {
        assert_eq!(shard_pieces(10, 5, 100), vec![(0, 10, 15)]);
        assert_eq!(shard_pieces(95, 10, 100), vec![(0, 95, 100), (1, 0, 5)]);
        assert_eq!(
            shard_pieces(50, 200, 100),
            vec![(0, 50, 100), (1, 0, 100), (2, 0, 50)]
        );
        assert_eq!(shard_pieces(100, 100, 100), vec![(1, 0, 100)]);
    }

    #[test]
    fn decodes_leave_out_fewest_fragments_first() {
        let sets = leave_out_sets(3, 1);
        assert_eq!(sets, vec![vec![], vec![0], vec![1], vec![2]]);
        assert_eq!(leave_out_sets(4, 2).len(), 1 + 4 + 6);
        assert_eq!(
            leave_out_sets(20, 3).len(),
            1 + 20,
            "wide codes: one at a time"
        );
    }
}
