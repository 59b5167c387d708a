//! An open file: writes are buffered per file into extents and flushed as
//! slices when enough has gathered, on `flush`/`fsync`/`close`, or before a
//! read that overlaps them (so a client always reads its own writes).

use crate::data::DataClient;
use crate::meta::{ClientError, Result};
use crate::readahead::ReadAhead;
use sparefs_proto::layout::Policy;
use sparefs_proto::limits::INLINE_SLICE_BYTES_MAX;
use sparefs_proto::namespace::{Attr, Caller, SetAttr, Time};
use sparefs_proto::posix_rules::predict_setattr;
use sparefs_proto::Errno;
use sparefs_proto::InodeId;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Mutex;

/// Buffered bytes per file before a flush is forced.
pub const DIRTY_BYTES_MAX: usize = 16 * 1024 * 1024;

pub struct OpenFile {
    pub ino: InodeId,
    data: Arc<DataClient>,
    /// Fetched at the first flush: most opens never write.
    policy: tokio::sync::OnceCell<Policy>,
    state: Mutex<Dirty>,
    ahead: std::sync::Mutex<ReadAhead>,
    /// `state.size`, readable without waiting for the state lock.
    size_now: std::sync::atomic::AtomicU64,
    /// Bumped by everything that changes the file through this handle or
    /// invalidates what it read (`drop_window`).
    changes: std::sync::atomic::AtomicU64,
    /// The first chunk's map as the open fetched it, for the first read.
    first_chunk: std::sync::Mutex<Option<crate::data::ChunkMap>>,
    /// The attributes the meta last gave for this file (`note_attr`).
    known: std::sync::Mutex<Attr>,
    /// What the held changes will make of them (`hold_setattr`).
    predicted: std::sync::Mutex<Option<Attr>>,
    /// The first caller without CAP_FSETID (not root) who wrote since the
    /// last commit: the next commit goes as them, so the meta clears the
    /// file's set-id bits.
    writer: std::sync::Mutex<Option<Caller>>,
}

/// Background flushes in flight per file: while the next 16 MiB gathers,
/// up to this many earlier ones are being stored.
pub const FLUSHES_IN_FLIGHT_MAX: usize = 2;

/// A flush running in the background: the extents it carries (reads that
/// overlap them wait for it) and its outcome.
struct Inflight {
    extents: Arc<Vec<(u64, Vec<u8>)>>,
    done: tokio::task::JoinHandle<Result<Attr>>,
}

#[derive(Default)]
struct Dirty {
    /// Non-overlapping extents by offset.
    extents: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
    /// Size of the file as this handle knows it (grows with buffered writes).
    size: u64,
    /// Oldest first.
    inflight: std::collections::VecDeque<Inflight>,
    /// Completes when the newest background flush has committed: commits
    /// happen in flush order, so a later write always wins.
    last_commit: Option<tokio::sync::oneshot::Receiver<()>>,
    /// The first failure of a background flush, reported by the next
    /// flush/fsync/close (as the kernel reports writeback errors).
    error: Option<ClientError>,
    /// Attribute changes made after `extents` were written, answered from
    /// a prediction and committed with them (`hold_setattr`).
    held: Vec<(Caller, SetAttr)>,
}

impl Dirty {
    /// Adds a write, merging it with every extent it touches or abuts.
    fn add(&mut self, offset: u64, data: &[u8]) {
        let mut start = offset;
        let mut end = offset + data.len() as u64;
        // Sequential writes: grow the extent that ends where this one
        // starts, in place (merging below would copy it whole each time).
        if self.extents.range(offset..=end).next().is_none() {
            if let Some((o, d)) = self.extents.range_mut(..offset).next_back() {
                if *o + d.len() as u64 == offset {
                    d.extend_from_slice(data);
                    self.bytes += data.len();
                    self.size = self.size.max(end);
                    return;
                }
            }
        }
        // Extents are disjoint: only the one starting before `start` and
        // those starting inside [start, end] can touch the new bytes.
        let mut touching: Vec<u64> = Vec::new();
        if let Some((o, d)) = self.extents.range(..start).next_back() {
            if *o + d.len() as u64 >= start {
                touching.push(*o);
            }
        }
        touching.extend(self.extents.range(start..=end).map(|(o, _)| *o));
        for o in &touching {
            let d = &self.extents[o];
            start = start.min(*o);
            end = end.max(o + d.len() as u64);
        }
        // The extent that begins the merged range keeps its buffer and
        // grows (writes arriving slightly out of order, as several in
        // flight do, would otherwise copy a whole 16 MiB extent each).
        let mut rest = &touching[..];
        let mut merged = match touching.first() {
            Some(o) if *o == start => match self.extents.remove(o) {
                Some(d) => {
                    rest = &touching[1..];
                    self.bytes -= d.len();
                    d
                }
                None => Vec::new(),
            },
            _ => Vec::new(),
        };
        merged.resize((end - start) as usize, 0);
        for o in rest {
            if let Some(d) = self.extents.remove(o) {
                self.bytes -= d.len();
                merged[(o - start) as usize..(o - start) as usize + d.len()].copy_from_slice(&d);
            }
        }
        merged[(offset - start) as usize..(offset - start) as usize + data.len()]
            .copy_from_slice(data);
        self.bytes += merged.len();
        self.extents.insert(start, merged);
        self.size = self.size.max(end);
    }

    fn overlaps_inflight(&self, offset: u64, len: u64) -> bool {
        self.inflight.iter().any(|f| {
            f.extents
                .iter()
                .any(|(o, d)| *o < offset + len && o + d.len() as u64 > offset)
        })
    }

    fn overlaps(&self, offset: u64, len: u64) -> bool {
        if let Some((o, d)) = self.extents.range(..offset + len).next_back() {
            // The last extent starting before the end is the only candidate
            // that can reach `offset` (extents are disjoint and sorted).
            return o + d.len() as u64 > offset;
        }
        false
    }
}

impl OpenFile {
    pub async fn open(data: Arc<DataClient>, attr: &Attr) -> Result<OpenFile> {
        data.invalidate(attr.ino);
        Ok(OpenFile {
            ino: attr.ino,
            data,
            policy: tokio::sync::OnceCell::new(),
            state: Mutex::new(Dirty {
                size: attr.size,
                ..Default::default()
            }),
            ahead: std::sync::Mutex::new(ReadAhead::default()),
            size_now: std::sync::atomic::AtomicU64::new(attr.size),
            changes: std::sync::atomic::AtomicU64::new(0),
            first_chunk: std::sync::Mutex::new(None),
            known: std::sync::Mutex::new(attr.clone()),
            predicted: std::sync::Mutex::new(None),
            writer: std::sync::Mutex::new(None),
        })
    }

    /// Notes who writes next (before `write` or `write_buffered_now`).
    pub fn note_writer(&self, c: &Caller) {
        if c.uid == 0 {
            return;
        }
        if let Ok(mut w) = self.writer.lock() {
            w.get_or_insert_with(|| c.clone());
        }
    }

    fn take_writer(&self) -> Option<Caller> {
        self.writer.lock().ok().and_then(|mut w| w.take())
    }

    pub async fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let started = std::time::Instant::now();
        let r = self.write_untimed(offset, buf).await;
        record("write", started, r.is_ok(), buf.len());
        r
    }

    async fn write_untimed(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.drop_window();
        let mut st = self.state.lock().await;
        if !st.held.is_empty() {
            // Changes made after the buffered writes land before this one.
            self.flush_locked(&mut st).await?;
        }
        st.add(offset, buf);
        self.publish_size(&st);
        if st.bytes >= DIRTY_BYTES_MAX {
            while st.inflight.len() >= FLUSHES_IN_FLIGHT_MAX {
                Self::reap_oldest(&mut st).await;
            }
            self.flush_in_background(&mut st).await?;
        }
        Ok(())
    }

    /// Buffers a write that needs no waiting (the handle is free and the
    /// bytes stay under `DIRTY_BYTES_MAX`); false: use `write`. Lets the
    /// mount answer most writes on the thread that received them.
    pub fn write_buffered_now(&self, offset: u64, buf: &[u8]) -> bool {
        let Ok(mut st) = self.state.try_lock() else {
            return false;
        };
        if st.bytes + buf.len() >= DIRTY_BYTES_MAX || !st.held.is_empty() {
            return false;
        }
        self.drop_window();
        st.add(offset, buf);
        self.publish_size(&st);
        metrics::counter!("sparefs_client_bytes_total", "op" => "write")
            .increment(buf.len() as u64);
        true
    }

    /// Waits for the oldest background flush and records its outcome.
    async fn reap_oldest(st: &mut Dirty) {
        let Some(f) = st.inflight.pop_front() else {
            return;
        };
        match f.done.await {
            Ok(Ok(attr)) => st.size = st.size.max(attr.size),
            Ok(Err(e)) => {
                st.error.get_or_insert(e);
            }
            Err(e) => {
                st.error
                    .get_or_insert(ClientError::Protocol(format!("background flush: {e}")));
            }
        }
    }

    /// Hands the buffered extents to a task that stores their blocks and
    /// commits them after every earlier flush has committed.
    async fn flush_in_background(&self, st: &mut Dirty) -> Result<()> {
        let policy = *self
            .policy
            .get_or_try_init(|| self.data.policy_of(self.ino))
            .await?;
        let extents: Arc<Vec<(u64, Vec<u8>)>> =
            Arc::new(std::mem::take(&mut st.extents).into_iter().collect());
        st.bytes = 0;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let prev = st.last_commit.replace(rx);
        let (data, ino, ext) = (self.data.clone(), self.ino, extents.clone());
        let writer = self.take_writer();
        let done = tokio::spawn(async move {
            let stored = data.store_extents(policy, &ext).await;
            if let Some(prev) = prev {
                let _ = prev.await;
            }
            let r = match stored {
                Ok((slices, size)) => data.commit(ino, slices, size, writer.as_ref()).await,
                Err(e) => Err(e),
            };
            let _ = tx.send(());
            r
        });
        st.inflight.push_back(Inflight { extents, done });
        self.drop_window();
        Ok(())
    }

    /// Reads through the meta's size unless this handle wrote past it.
    pub async fn read(&self, offset: u64, len: usize, meta_size: u64) -> Result<Vec<u8>> {
        let started = std::time::Instant::now();
        let r = self.read_untimed(offset, len, meta_size).await;
        record(
            "read",
            started,
            r.is_ok(),
            r.as_ref().map_or(0, |b| b.len()),
        );
        r
    }

    async fn read_untimed(&self, offset: u64, len: usize, meta_size: u64) -> Result<Vec<u8>> {
        let mut st = self.state.lock().await;
        // Changes from here on drop what this read would read ahead.
        let began = self.ahead.lock().map(|ra| ra.epoch()).unwrap_or(u64::MAX);
        if st.overlaps(offset, len as u64) || st.overlaps_inflight(offset, len as u64) {
            self.flush_locked(&mut st).await?;
        }
        let size = if meta_size == 0 {
            st.size
        } else {
            meta_size.max(st.size)
        };
        // Buffered writes elsewhere in the file: the store is not current,
        // so neither reading ahead nor an old window may be trusted.
        let dirty = !st.extents.is_empty() || !st.inflight.is_empty();
        drop(st);
        if dirty {
            self.drop_window();
            return self.data.read(self.ino, size, offset, len).await;
        }
        if let Some(hit) = self.read_from_windows(offset, len, size, began).await {
            return Ok(hit);
        }
        let first = self.first_chunk.lock().ok().and_then(|mut h| h.take());
        let out = self
            .data
            .read_with_first_chunk(self.ino, size, offset, len, first)
            .await?;
        self.maybe_read_ahead(offset, offset + out.len() as u64, size, began);
        Ok(out)
    }

    /// Serves a read from the read-ahead windows if they cover it.
    async fn read_from_windows(
        &self,
        offset: u64,
        len: usize,
        size: u64,
        began: u64,
    ) -> Option<Vec<u8>> {
        let end = (offset + len as u64).min(size);
        if offset >= end {
            return None;
        }
        let out = crate::readahead::serve(&self.ahead, offset, end).await?;
        self.maybe_read_ahead(offset, end, size, began);
        Some(out)
    }

    /// After a read of `[start, next)`: keep windows in flight ahead of a
    /// sequential reader.
    fn maybe_read_ahead(&self, start: u64, next: u64, size: u64, began: u64) {
        if let Ok(mut ra) = self.ahead.lock() {
            ra.advance((start, next, size), began, &self.data, self.ino);
        }
    }

    /// A new open of a file this mount already has open: close-to-open
    /// says it must see what others closed since, so cached data goes.
    /// `attr` is the file as the meta has it now: with nothing buffered or
    /// in flight here, its size is the file's (another mount may have
    /// truncated or extended it since this mount opened it).
    pub async fn revalidate(&self, attr: &Attr) {
        self.drop_window();
        self.data.invalidate(self.ino);
        let mut st = self.state.lock().await;
        if st.extents.is_empty() && st.inflight.is_empty() {
            st.size = attr.size;
            self.publish_size(&st);
        }
    }

    fn drop_window(&self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut h) = self.first_chunk.lock() {
            *h = None;
        }
        if let Ok(mut ra) = self.ahead.lock() {
            ra.clear();
        }
    }

    /// How many changes this handle has seen, if nothing is buffered or in
    /// flight now (a flush in flight may commit after a fetch).
    pub fn clean_changes(&self) -> Option<u64> {
        self.is_clean()
            .then(|| self.changes.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Keeps the first chunk's map an open fetched (`ReadOp::Open`) for the
    /// first read, if the handle is clean and has seen exactly `expected`
    /// changes since before the fetch (else the map may be stale).
    pub fn offer_first_chunk(&self, expected: u64, map: crate::data::ChunkMap) {
        if self.clean_changes() == Some(expected) {
            if let Ok(mut h) = self.first_chunk.lock() {
                *h = Some(map);
            }
        }
    }

    /// Makes every buffered write durable and visible.
    /// Nothing buffered, in flight or failed: a flush would do nothing
    /// (false also when the state is busy, so the caller flushes).
    pub fn is_clean(&self) -> bool {
        match self.state.try_lock() {
            Ok(st) => st.extents.is_empty() && st.inflight.is_empty() && st.error.is_none(),
            Err(_) => false,
        }
    }

    /// A flush now would be one meta write: what is buffered fits inline
    /// and nothing is in flight (false also when the state is busy).
    pub fn flush_is_inline(&self) -> bool {
        match self.state.try_lock() {
            Ok(st) => st.inflight.is_empty() && st.bytes <= INLINE_SLICE_BYTES_MAX,
            Err(_) => false,
        }
    }

    /// Makes every write so far durable (fsync, close).
    pub async fn flush(&self) -> Result<Option<Attr>> {
        let started = std::time::Instant::now();
        let mut st = self.state.lock().await;
        let r = self.flush_locked(&mut st).await;
        record("flush", started, r.is_ok(), 0);
        r
    }

    async fn flush_locked(&self, st: &mut Dirty) -> Result<Option<Attr>> {
        while !st.inflight.is_empty() {
            Self::reap_oldest(st).await;
        }
        st.last_commit = None;
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        if st.extents.is_empty() {
            // Changes are held only behind buffered writes, unless a
            // truncate elsewhere dropped those (`set_size`): then alone.
            let held = std::mem::take(&mut st.held);
            self.forget_prediction();
            return self.apply_one_by_one(held).await.map_or(Ok(None), Err);
        }
        let extents: Vec<(u64, Vec<u8>)> =
            st.extents.iter().map(|(o, d)| (*o, d.clone())).collect();
        let held = std::mem::take(&mut st.held);
        let writer = self.take_writer();
        let writer = writer.as_ref();
        let (attr, refused) = match self.commit_extents(&extents, &held, writer).await {
            Ok(a) => (a, None),
            Err(ClientError::Errno(_)) if !held.is_empty() => {
                // Something refused: the data alone, then each held change
                // on its own, so the permitted ones land and the first
                // refusal is reported (the file changed elsewhere since
                // this mount predicted the changes).
                let a = match self.commit_extents(&extents, &[], writer).await {
                    Ok(a) => a,
                    Err(e) => {
                        st.held = held;
                        return Err(e);
                    }
                };
                (a, self.apply_one_by_one(held).await)
            }
            Err(e) => {
                st.held = held;
                return Err(e);
            }
        };
        self.forget_prediction();
        self.note_attr(&attr);
        self.drop_window();
        st.extents.clear();
        st.bytes = 0;
        st.size = attr.size;
        self.publish_size(st);
        match refused {
            Some(e) => Err(e),
            None => Ok(Some(attr)),
        }
    }

    /// Sends held changes one by one, in order: the permitted ones land;
    /// the first refusal is returned.
    async fn apply_one_by_one(&self, held: Vec<(Caller, SetAttr)>) -> Option<ClientError> {
        let mut refused = None;
        for (caller, set) in held {
            if let Err(e) = self.data.meta.setattr_as(caller, self.ino, set).await {
                refused.get_or_insert(e);
            }
        }
        refused
    }

    /// Stores and commits extents: inline in the meta when small enough
    /// (and the chunk has room), as blocks otherwise; `then` rides along.
    async fn commit_extents(
        &self,
        extents: &[(u64, Vec<u8>)],
        then: &[(Caller, SetAttr)],
        writer: Option<&Caller>,
    ) -> Result<Attr> {
        let total: usize = extents.iter().map(|(_, d)| d.len()).sum();
        if total <= INLINE_SLICE_BYTES_MAX {
            match self
                .data
                .write_inline(self.ino, extents, then, writer)
                .await
            {
                Err(ClientError::Errno(Errno::EFBIG)) => {}
                other => return other,
            }
        }
        let policy = *self
            .policy
            .get_or_try_init(|| self.data.policy_of(self.ino))
            .await?;
        self.data
            .write_extents(self.ino, policy, extents, then, writer)
            .await
    }

    /// Holds an attribute change (chmod, chown, utimens: no truncate) back
    /// until the writes buffered before it are committed, and gives the
    /// attributes it will give the file, when that is certain
    /// (`predict_setattr`). `None`: nothing is buffered (or the handle is
    /// busy) or the outcome is not certain; send the change now.
    ///
    /// The change then becomes visible elsewhere and durable with the data,
    /// at close or fsync (close-to-open, as the data); a later write, read
    /// of the buffered bytes or truncate commits it first, keeping order.
    pub fn hold_setattr(&self, caller: &Caller, set: &SetAttr) -> Option<Attr> {
        let mut st = self.state.try_lock().ok()?;
        if st.extents.is_empty() || st.error.is_some() {
            return None;
        }
        let mut predicted = self.predicted.lock().ok()?;
        let base = match &*predicted {
            Some(p) => p.clone(),
            None => self.known.lock().ok()?.clone(),
        };
        let next = predict_setattr(&base, caller, set, Time::now())?;
        st.held.push((caller.clone(), set.clone()));
        *predicted = Some(next.clone());
        Some(next)
    }

    /// Commits held changes (with the writes before them) now; a failure
    /// is kept for the next flush, fsync or close to report.
    pub async fn settle(&self) {
        let mut st = self.state.lock().await;
        if st.held.is_empty() {
            return;
        }
        if let Err(e) = self.flush_locked(&mut st).await {
            st.error.get_or_insert(e);
        }
    }

    /// The attributes held changes will give the file, if any are held.
    pub fn predicted_attr(&self) -> Option<Attr> {
        self.predicted.lock().ok()?.clone()
    }

    fn forget_prediction(&self) {
        if let Ok(mut p) = self.predicted.lock() {
            *p = None;
        }
    }

    /// The attributes the meta last gave this mount for the file.
    pub fn known_attr(&self) -> Option<Attr> {
        self.known.lock().ok().map(|k| k.clone())
    }

    /// The file's attributes as the meta last gave them to this mount: the
    /// base held changes are predicted from.
    pub fn note_attr(&self, a: &Attr) {
        if let Ok(mut k) = self.known.lock() {
            *k = a.clone();
        }
    }

    /// fallocate: mode 0 grows the file to cover the range; PUNCH_HOLE
    /// (with KEEP_SIZE) turns the range into zeros. Buffered writes land first.
    pub async fn punch_hole(&self, offset: u64, len: u64) -> Result<()> {
        self.drop_window();
        let mut st = self.state.lock().await;
        self.flush_locked(&mut st).await?;
        let r = self.data.punch_hole(self.ino, offset, len).await;
        // Again once the hole is in the layout: windows a read started
        // while it was being committed hold the old bytes.
        self.drop_window();
        r.map(|_| ())
    }

    /// Forgets size knowledge after a truncate done elsewhere (setattr).
    pub async fn set_size(&self, size: u64) {
        let mut st = self.state.lock().await;
        st.extents.retain(|o, _| *o < size);
        if let Some((o, d)) = st.extents.iter_mut().next_back() {
            let keep = (size - *o).min(d.len() as u64) as usize;
            d.truncate(keep);
        }
        st.bytes = st.extents.values().map(|d| d.len()).sum();
        st.size = size;
        self.publish_size(&st);
        self.data.invalidate(self.ino);
        drop(st);
        self.drop_window();
    }

    /// The size this handle knows (meta size at open plus its own writes).
    /// Non-blocking: a busy handle reports 0 and the caller uses the meta's.
    pub fn known_size(&self) -> u64 {
        self.size_now.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn publish_size(&self, st: &Dirty) {
        self.size_now
            .store(st.size, std::sync::atomic::Ordering::Relaxed);
    }

    pub async fn dirty(&self) -> bool {
        let st = self.state.lock().await;
        !st.extents.is_empty() || !st.inflight.is_empty()
    }
}

/// A file operation in the process's metrics: its latency by kind, the
/// bytes it moved, and whether it failed.
fn record(op: &'static str, started: std::time::Instant, ok: bool, bytes: usize) {
    metrics::histogram!("sparefs_client_file_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    if bytes > 0 {
        metrics::counter!("sparefs_client_bytes_total", "op" => op).increment(bytes as u64);
    }
    if !ok {
        metrics::counter!("sparefs_client_file_errors_total", "op" => op).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::Dirty;

    #[test]
    fn extents_merge_and_overwrite() {
        let mut d = Dirty::default();
        d.add(10, b"abc");
        d.add(13, b"de");
        d.add(0, b"xx");
        d.add(11, b"Z");
        assert_eq!(d.extents.len(), 2);
        assert_eq!(d.extents[&10], b"aZcde".to_vec());
        assert_eq!(d.extents[&0], b"xx".to_vec());
        assert_eq!(d.bytes, 7);
        assert!(d.overlaps(12, 1));
        assert!(!d.overlaps(2, 8));
        d.add(2, b"12345678");
        assert_eq!(d.extents.len(), 1);
        assert_eq!(d.extents[&0], b"xx12345678aZcde".to_vec());
        assert_eq!(d.size, 15);
    }

    proptest::proptest! {
        /// Any sequence of writes (appends, overlaps, gaps) leaves disjoint,
        /// non-touching extents that read as a byte model of the writes.
        #[test]
        fn extents_match_a_model(writes in proptest::collection::vec((0u64..200, 1usize..40, 0u8..255), 1..40)) {
            let mut d = Dirty::default();
            let mut model: Vec<Option<u8>> = vec![None; 256];
            for (off, len, byte) in writes {
                d.add(off, &vec![byte; len]);
                for b in &mut model[off as usize..off as usize + len] {
                    *b = Some(byte);
                }
            }
            let mut seen: Vec<Option<u8>> = vec![None; 256];
            let mut prev_end = None;
            for (o, data) in &d.extents {
                if let Some(e) = prev_end {
                    proptest::prop_assert!(*o > e, "extents touch or overlap");
                }
                for (i, b) in data.iter().enumerate() {
                    seen[*o as usize + i] = Some(*b);
                }
                prev_end = Some(o + data.len() as u64);
            }
            proptest::prop_assert_eq!(&seen, &model);
            proptest::prop_assert_eq!(d.bytes, model.iter().filter(|b| b.is_some()).count());
        }
    }
}
