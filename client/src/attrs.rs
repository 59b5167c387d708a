//! A mount's answer to "what are this inode's attributes": which of what
//! it knows answers before the meta is asked, and how an open file's
//! buffered writes and held changes show in every answer.
//!
//! Asked in this order, the first that knows answers:
//! 1. an open file holding attribute changes back (`OpenFile::hold_setattr`):
//!    what the meta last said, with the changes its close will commit;
//! 2. a directory's attributes that came back with a change made here just
//!    now (`FreshAttrs`: once, within the kernel's own attribute lifetime);
//! 3. a directory delegated to this mount, which answers for it;
//! 4. the meta.
//!
//! Whatever the source, `shown` adds what only this mount knows: the size
//! its buffered writes reach, and held changes of owner, mode and times.

use crate::fresh_attrs::FreshAttrs;
use crate::meta::{MetaClient, Result};
use crate::open_files::OpenFiles;
use sparefs_proto::namespace::Attr;
use sparefs_proto::InodeId;
use std::sync::Arc;

pub struct Attrs {
    meta: Arc<MetaClient>,
    open: Arc<OpenFiles>,
    fresh: FreshAttrs,
}

impl Attrs {
    pub fn new(meta: Arc<MetaClient>, open: Arc<OpenFiles>) -> Attrs {
        Attrs {
            meta,
            open,
            fresh: FreshAttrs::default(),
        }
    }

    /// `ino`'s attributes if this mount knows them without a round trip.
    pub fn known(&self, ino: InodeId) -> Option<Attr> {
        let a = self
            .open
            .holding(ino)
            .and_then(|f| f.known_attr())
            .or_else(|| self.fresh.take(ino.0))
            .or_else(|| self.meta.delegations().and_then(|d| d.getattr(ino)))?;
        Some(self.shown(&a))
    }

    /// `ino`'s attributes as this mount shows them, from the meta if no
    /// one here knows them.
    pub async fn get(&self, ino: InodeId) -> Result<Attr> {
        if let Some(a) = self.known(ino) {
            return Ok(a);
        }
        let a = self.meta.getattr(ino).await?;
        Ok(self.shown(&a))
    }

    /// `a` (the meta's word on a file) as this mount shows it: an open
    /// file notes it as the base of its predictions, and shows its
    /// buffered size and held changes over it.
    pub fn shown(&self, a: &Attr) -> Attr {
        let Some(f) = self.open.get(a.ino) else {
            return a.clone();
        };
        f.note_attr(a);
        let mut shown = a.clone();
        if let Some(p) = f.predicted_attr() {
            (shown.perm, shown.uid, shown.gid) = (p.perm, p.uid, p.gid);
            (shown.atime, shown.mtime, shown.ctime) = (p.atime, p.mtime, p.ctime);
        }
        shown.size = shown.size.max(f.known_size());
        shown
    }

    /// A change made here came back with directory `dir`'s new attributes:
    /// the kernel's next GETATTR of it (after it drops its own) is answered
    /// with them.
    pub fn changed(&self, dir: Attr) {
        self.fresh.put(dir);
    }

    /// A change made here came back without `ino`'s new attributes: what
    /// was kept of it is stale.
    pub fn forget(&self, ino: InodeId) {
        self.fresh.forget(ino.0);
    }
}
