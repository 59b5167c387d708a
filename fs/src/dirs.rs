//! Open directories: each handle keeps the page of entries it last fetched,
//! so the kernel's READDIR requests (each as many names as its buffer holds:
//! ~150 in 4 KiB, ~4,000 in 128 KiB) cost one meta round trip per page of
//! `READDIR_ENTRIES_MAX` entries, read ahead, instead of one each.
//!
//! A directory delegated to this mount is listed from what the mount
//! knows of it (client/src/deleg.rs), with the meta's cookies, without a
//! round trip; the kernel's first page (a READDIRPLUS, with attributes)
//! still comes from the meta.
//!
//! A handle sees the directory as its pages were read (POSIX lets readdir
//! miss or show entries added or removed after opendir); `rewinddir`
//! (offset 0) always reads afresh.

use sparefs_client::packed_names::{NameRef, NamesPage};
use sparefs_client::{ClientError, MetaClient};
use sparefs_proto::limits::READDIR_ENTRIES_MAX;
use sparefs_proto::namespace::{Caller, DirEntry, NsReply, ReadOp};
use sparefs_proto::InodeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Entries read on a page that nothing was read ahead for: few, so that
/// the first READDIR (and every `ls` of a small directory) is answered
/// quickly; the pages read ahead while it is served are full ones.
const FIRST_PAGE_ENTRIES: u32 = 256;
/// The first cookie of a real entry: 1 and 2 are "." and "..".
const FIRST_COOKIE_AFTER: u64 = 2;
/// Entries taken at a time from a delegated directory's names: about what
/// a 128 KiB READDIR buffer holds of short names (the kernel takes the
/// rest of the page with its next READDIR).
const LOCAL_PAGE_ENTRIES: usize = 4096;

struct Page {
    /// The cookie the page was read after (u64::MAX: nothing read yet).
    after: u64,
    /// Shared with the READDIRs answered from it (each takes what fits).
    entries: Arc<Entries>,
    /// The page reaches the end of the directory.
    end: bool,
    /// The directory's parent, looked up on the first read from offset 0.
    parent: Option<InodeId>,
    /// The following pages, being read while this one is served.
    ahead: Option<ReadAhead>,
}

/// One task reading the pages after a cookie in order, up to
/// `PAGES_AHEAD` finished ones waiting: the meta lists the next page while
/// the mount decodes this one and the kernel takes it.
struct ReadAhead {
    /// The cookie the next page waiting in `pages` was read after.
    after: u64,
    pages: tokio::sync::mpsc::Receiver<Result<Vec<DirEntry>, ClientError>>,
    task: tokio::task::JoinHandle<()>,
}

/// Full pages read ahead and waiting (one more may be finished and held by
/// the task): bounds an open directory's memory to a few pages.
const PAGES_AHEAD: usize = 1;

impl ReadAhead {
    fn start(meta: Arc<MetaClient>, caller: Caller, ino: InodeId, after: u64) -> ReadAhead {
        let (tx, pages) = tokio::sync::mpsc::channel(PAGES_AHEAD);
        let task = tokio::spawn(async move {
            let mut from = after;
            loop {
                let page = fetch(&meta, caller.clone(), ino, from, READDIR_ENTRIES_MAX).await;
                let next = match &page {
                    Ok(e) if e.len() >= READDIR_ENTRIES_MAX as usize => e.last().map(|e| e.cookie),
                    _ => None,
                };
                if tx.send(page).await.is_err() {
                    return;
                }
                match next {
                    Some(c) => from = c,
                    None => return,
                }
            }
        });
        ReadAhead { after, pages, task }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Page {
    fn unread() -> Page {
        Page {
            after: u64::MAX,
            entries: Arc::default(),
            end: false,
            parent: None,
            ahead: None,
        }
    }
}

#[derive(Default)]
pub struct OpenDirs {
    pages: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Page>>>>,
}

/// A page's entries: as the meta sent them, or shared with a delegated
/// directory's names here.
enum Entries {
    Fetched(Vec<DirEntry>),
    Held(NamesPage),
}

impl Default for Entries {
    fn default() -> Self {
        Entries::Fetched(Vec::new())
    }
}

impl Entries {
    fn len(&self) -> usize {
        match self {
            Entries::Fetched(v) => v.len(),
            Entries::Held(v) => v.len(),
        }
    }

    fn get(&self, i: usize) -> Option<NameRef<'_>> {
        match self {
            Entries::Fetched(v) => v.get(i).map(|e| NameRef {
                cookie: e.cookie,
                ino: e.ino,
                kind: e.kind,
                name: &e.name,
            }),
            Entries::Held(v) => v.get(i),
        }
    }

    fn last(&self) -> Option<NameRef<'_>> {
        self.len().checked_sub(1).and_then(|i| self.get(i))
    }

    /// How many entries have cookies up to `cookie` (they are in order).
    fn up_to(&self, cookie: u64) -> usize {
        match self {
            Entries::Fetched(v) => v.partition_point(|e| e.cookie <= cookie),
            Entries::Held(v) => v.up_to(cookie),
        }
    }
}

/// What one READDIR answers: the parent (for ".."), when asked from the
/// start, and the entries after the offset, in cookie order.
pub struct Listing {
    pub parent: Option<InodeId>,
    page: Arc<Entries>,
    from: usize,
}

impl Listing {
    pub fn entries(&self) -> impl Iterator<Item = NameRef<'_>> {
        (self.from..self.page.len()).filter_map(|i| self.page.get(i))
    }
}

impl OpenDirs {
    pub fn open(&self, fh: u64) {
        if let Ok(mut p) = self.pages.lock() {
            p.insert(fh, Arc::new(tokio::sync::Mutex::new(Page::unread())));
        }
    }

    pub fn release(&self, fh: u64) {
        if let Ok(mut p) = self.pages.lock() {
            p.remove(&fh);
        }
    }

    /// Starts reading the pages of directory `ino` after `cookie` for open
    /// handle `fh` (the kernel read up to there with attributes and goes on
    /// from there), unless something is being read already.
    pub fn read_ahead(
        &self,
        meta: &Arc<MetaClient>,
        caller: Caller,
        ino: InodeId,
        fh: u64,
        cookie: u64,
    ) {
        let Some(page) = self.pages.lock().ok().and_then(|p| p.get(&fh).cloned()) else {
            return;
        };
        let Ok(mut page) = page.try_lock() else {
            return;
        };
        if page.ahead.is_some() || meta.delegations().is_some_and(|d| d.holds(ino)) {
            return;
        }
        page.after = cookie;
        page.entries = Arc::default();
        page.end = false;
        page.ahead = Some(ReadAhead::start(meta.clone(), caller, ino, cookie));
    }

    /// Entries of directory `ino` after `offset`, from the handle's page or
    /// a fresh one. A handle the kernel did not open here (fh 0) reads
    /// through without keeping anything.
    pub async fn read(
        &self,
        meta: &Arc<MetaClient>,
        caller: Caller,
        ino: InodeId,
        fh: u64,
        offset: u64,
    ) -> Result<Listing, ClientError> {
        let page = self.pages.lock().ok().and_then(|p| p.get(&fh).cloned());
        let page = page.unwrap_or_else(|| Arc::new(tokio::sync::Mutex::new(Page::unread())));
        let mut page = page.lock().await;
        let after = offset.max(FIRST_COOKIE_AFTER);
        let mut from = page.entries.up_to(after);
        let stale = offset == 0 || after < page.after;
        let mut local = false;
        if stale || (from == page.entries.len() && !page.end) {
            if let Some(l) = meta
                .delegations()
                .and_then(|d| d.list(&caller, ino, after, LOCAL_PAGE_ENTRIES))
            {
                page.ahead = None;
                page.entries = Arc::new(Entries::Held(l.entries));
                page.end = l.end;
                page.after = after;
                page.parent = Some(l.parent);
                local = true;
                from = 0;
            }
        }
        if !local && (stale || (from == page.entries.len() && !page.end)) {
            let ahead = match page.ahead.take() {
                Some(mut a) if a.after == after && !stale => a.pages.recv().await.map(|p| (p, a)),
                _ => None,
            };
            let (entries, limit) = match ahead {
                Some((entries, mut a)) => {
                    let entries = entries?;
                    // A full page: the task goes on after its last entry.
                    if let (true, Some(last)) = (
                        entries.len() >= READDIR_ENTRIES_MAX as usize,
                        entries.last(),
                    ) {
                        a.after = last.cookie;
                        page.ahead = Some(a);
                    }
                    (entries, READDIR_ENTRIES_MAX)
                }
                None => {
                    let entries =
                        fetch(meta, caller.clone(), ino, after, FIRST_PAGE_ENTRIES).await?;
                    (entries, FIRST_PAGE_ENTRIES)
                }
            };
            page.end = entries.len() < limit as usize;
            page.entries = Arc::new(Entries::Fetched(entries));
            page.after = after;
            from = 0;
        }
        // Read the next pages while the kernel takes this one (unless the
        // next ones are answered here).
        let held = meta.delegations().is_some_and(|d| d.holds(ino));
        if let (false, None, Some(last), false) = (page.end, &page.ahead, page.entries.last(), held)
        {
            page.ahead = Some(ReadAhead::start(
                meta.clone(),
                caller.clone(),
                ino,
                last.cookie,
            ));
        }
        if !local && ((offset < 2 && page.parent.is_none()) || offset == 0) {
            let r = meta
                .read_as(
                    caller,
                    ReadOp::Lookup {
                        parent: ino,
                        name: b"..".to_vec(),
                    },
                )
                .await?;
            page.parent = match r {
                NsReply::Attr(a) => Some(a.ino),
                other => return Err(ClientError::unexpected("attributes", other)),
            };
        }
        // The rest of the page: the reply takes what fits the kernel's
        // buffer (one 4 KiB page on older kernels, 128 KiB on the 6.18 here:
        // then one READDIR takes a whole page), the next call the rest.
        Ok(Listing {
            parent: if offset < 2 { page.parent } else { None },
            page: page.entries.clone(),
            from,
        })
    }
}

async fn fetch(
    meta: &Arc<MetaClient>,
    caller: Caller,
    ino: InodeId,
    after: u64,
    limit: u32,
) -> Result<Vec<DirEntry>, ClientError> {
    // Detached: the read-ahead task that calls this is aborted when its
    // directory is closed.
    match meta
        .read_detached(
            caller,
            ReadOp::ReadDir {
                ino,
                after_cookie: after,
                limit,
            },
        )
        .await?
    {
        NsReply::Dir(d) => Ok(d),
        other => Err(ClientError::unexpected("Dir", other)),
    }
}
