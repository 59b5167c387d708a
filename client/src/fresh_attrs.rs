//! Directory attributes this mount learned from its own changes. After a
//! create, mkdir, unlink or rmdir the kernel drops its cached attributes of
//! the directory and asks for them again at the next path walk; the meta
//! already sent them with its answer to the change, so that GETATTR is
//! answered here instead of by another meta round trip.
//!
//! An entry answers one GETATTR, within `FRESH_FOR` of the change (the
//! kernel's own attribute lifetime): no staler than the kernel's cache
//! would have been. Changes that come back without the directory's new
//! attributes (rename, setattr, xattrs) drop its entry.

use sparefs_proto::namespace::Attr;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Most directories remembered; a full table is emptied.
const ENTRIES_MAX: usize = 4096;

#[derive(Default)]
pub struct FreshAttrs {
    entries: Mutex<HashMap<u64, (Instant, Attr)>>,
}

impl FreshAttrs {
    pub fn put(&self, attr: Attr) {
        if let Ok(mut e) = self.entries.lock() {
            if e.len() >= ENTRIES_MAX {
                e.clear();
            }
            e.insert(attr.ino.0, (Instant::now(), attr));
        }
    }

    /// The attributes of `ino` from a change made here just now, once.
    pub fn take(&self, ino: u64) -> Option<Attr> {
        let (at, attr) = self.entries.lock().ok()?.remove(&ino)?;
        (at.elapsed() < FRESH_FOR).then_some(attr)
    }

    pub fn forget(&self, ino: u64) {
        if let Ok(mut e) = self.entries.lock() {
            e.remove(&ino);
        }
    }
}
