//! Read-ahead for one open file: detects a sequential reader and keeps
//! several windows of the file in flight ahead of it, so the reader is
//! served from memory while the next windows are fetched (each window's
//! blocks are read from their chunkservers in parallel).
//!
//! Owns only the windows; fetching is `DataClient::read`, and the caller
//! drops every window when the file changes under it.

use crate::data::DataClient;
use sparefs_proto::InodeId;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::watch;

/// Bytes per window: two 4 MiB blocks.
pub const WINDOW_BYTES: usize = 8 * 1024 * 1024;
/// How far ahead of a sequential reader windows are kept in flight.
pub const AHEAD_BYTES: u64 = 32 * 1024 * 1024;
/// Most windows per file (the memory read-ahead may hold for one file).
const WINDOWS_MAX: usize = (AHEAD_BYTES as usize / WINDOW_BYTES) + 1;

type Fetched = watch::Receiver<Option<Arc<Vec<u8>>>>;

struct Window {
    start: u64,
    len: usize,
    data: Fetched,
    fetch: tokio::task::JoinHandle<()>,
}

impl Window {
    fn end(&self) -> u64 {
        self.start + self.len as u64
    }
}

#[derive(Default)]
pub struct ReadAhead {
    /// Where the last read ended.
    next: u64,
    /// Windows in file order, contiguous.
    windows: VecDeque<Window>,
    /// Bumped by every `clear`: a read that began before a change of the
    /// file must not start windows after it (`advance` checks), since their
    /// fetches may use the layout from before the change. (Issue 12: a read
    /// overlapping a hole punch left windows of the old bytes, which the
    /// next read of the punched range was served from.)
    epoch: u64,
}

impl ReadAhead {
    /// Drops every window and stops its fetch (the file changed, or the
    /// reader went elsewhere). Windows the reader has passed are popped
    /// without stopping theirs: a read still being served may need them.
    pub fn clear(&mut self) {
        self.epoch += 1;
        for w in self.windows.drain(..) {
            w.fetch.abort();
        }
    }

    /// What a read notes when it begins, for `advance` when it ends.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The windows that together cover `[offset, end)`, if they do.
    fn covering(&self, offset: u64, end: u64) -> Option<Vec<(u64, Fetched)>> {
        let first = self
            .windows
            .iter()
            .position(|w| w.start <= offset && offset < w.end())?;
        let mut out = Vec::new();
        let mut covered = offset;
        for w in self.windows.iter().skip(first) {
            if w.start > covered {
                return None;
            }
            out.push((w.start, w.data.clone()));
            covered = w.end();
            if covered >= end {
                return Some(out);
            }
        }
        None
    }

    /// After a read of `[start, next)` of a file of `size` bytes that
    /// began at `began` (`epoch()`): forgets windows behind the reader and,
    /// if reads are sequential and nothing changed the file since the read
    /// began, starts fetching windows until `AHEAD_BYTES` past `next` are
    /// in flight.
    pub fn advance(
        &mut self,
        (start, next, size): (u64, u64, u64),
        began: u64,
        data: &Arc<DataClient>,
        ino: InodeId,
    ) {
        // Only a read that starts exactly where the previous one ended is
        // sequential (a file read from its start counts).
        let sequential = start == self.next;
        self.next = next;
        while self.windows.front().is_some_and(|w| w.end() <= start) {
            self.windows.pop_front();
        }
        if !sequential || began != self.epoch {
            return;
        }
        if self.windows.back().is_some_and(|w| w.end() < next) {
            self.clear();
        }
        let mut ahead = self.windows.back().map_or(next, Window::end);
        let target = next.saturating_add(AHEAD_BYTES).min(size);
        while ahead < target && self.windows.len() < WINDOWS_MAX {
            let len = WINDOW_BYTES.min((size - ahead) as usize);
            let (tx, rx) = watch::channel(None);
            let (data, from) = (data.clone(), ahead);
            let fetch = tokio::spawn(async move {
                // A failed fetch drops `tx`: the reader then reads directly.
                if let Ok(bytes) = data.read(ino, size, from, len).await {
                    let _ = tx.send(Some(Arc::new(bytes)));
                }
            });
            self.windows.push_back(Window {
                start: ahead,
                len,
                data: rx,
                fetch,
            });
            ahead += len as u64;
        }
    }
}

/// Serves `[offset, end)` from the windows of `ra`, waiting for their
/// fetches; None if they do not cover it or a fetch failed.
pub async fn serve(ra: &std::sync::Mutex<ReadAhead>, offset: u64, end: u64) -> Option<Vec<u8>> {
    let parts = ra.lock().ok()?.covering(offset, end)?;
    let mut out = Vec::with_capacity((end - offset) as usize);
    for (start, mut rx) in parts {
        let bytes = loop {
            if let Some(d) = rx.borrow().clone() {
                break d;
            }
            rx.changed().await.ok()?;
        };
        let from = (offset.max(start) - start) as usize;
        let to = ((end - start) as usize).min(bytes.len());
        if from > to {
            return None;
        }
        out.extend_from_slice(&bytes[from..to]);
    }
    (out.len() as u64 == end - offset).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MetaClient;
    use sparefs_proto::namespace::Caller;

    #[tokio::test]
    async fn a_read_that_began_before_a_change_starts_no_window_after_it() {
        // Nothing listens there: the fetches fail, which does not matter;
        // what matters is which windows are started.
        let meta = Arc::new(MetaClient::new(vec!["127.0.0.1:1".into()], Caller::ROOT));
        let data = Arc::new(DataClient::new(meta));
        let size = 64 << 20;
        let mut ra = ReadAhead::default();
        let began = ra.epoch();
        ra.advance((0, 65536, size), began, &data, InodeId(9));
        assert!(!ra.windows.is_empty(), "a sequential reader reads ahead");
        // A read begins; the file changes (a hole punch clears the windows)
        // before the read ends: the read must not start windows of the
        // layout from before the change.
        let began = ra.epoch();
        ra.clear();
        ra.advance((65536, 131072, size), began, &data, InodeId(9));
        assert!(ra.windows.is_empty(), "windows started across a change");
        // The next read, begun after the change, reads ahead again.
        let began = ra.epoch();
        ra.advance((131072, 196608, size), began, &data, InodeId(9));
        assert!(!ra.windows.is_empty());
        ra.clear();
    }
}
