//! A short-lived cache of the extended attributes the kernel asks for on
//! its own: `security.capability` before every write (to drop file
//! capabilities) and the `system.posix_acl_*` of each inode it checks.
//! Without it a file extracted by tar cost four meta reads more.
//!
//! Only `security.*` and `system.*` names are kept: any caller may read
//! them, so one answer serves every caller (`user.*` depends on who asks).
//! An entry lives `XATTR_TTL`, as attributes do in the kernel's cache, and
//! goes at once when this mount changes the inode's xattrs or mode.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const XATTR_TTL: Duration = Duration::from_secs(1);
/// Most inodes kept; a full cache is emptied (entries are cheap to refetch).
const INODES_MAX: usize = 16 * 1024;

/// A value, or "no such attribute" (ENODATA).
pub type Cached = Option<Vec<u8>>;

/// One inode's cached xattrs: name -> (when fetched, value).
type InodeXattrs = HashMap<Vec<u8>, (Instant, Cached)>;

#[derive(Default)]
pub struct XattrCache {
    entries: Mutex<HashMap<u64, InodeXattrs>>,
}

pub fn cacheable(name: &[u8]) -> bool {
    name.starts_with(b"security.") || name.starts_with(b"system.")
}

impl XattrCache {
    pub fn get(&self, ino: u64, name: &[u8]) -> Option<Cached> {
        if !cacheable(name) {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        let (at, v) = entries.get(&ino)?.get(name)?;
        (at.elapsed() < XATTR_TTL).then(|| v.clone())
    }

    pub fn put(&self, ino: u64, name: &[u8], value: Cached) {
        if !cacheable(name) {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= INODES_MAX {
                entries.clear();
            }
            entries
                .entry(ino)
                .or_default()
                .insert(name.to_vec(), (Instant::now(), value));
        }
    }

    /// `ino`'s mode changes: that rewrites its access ACL, nothing else.
    pub fn forget_acls(&self, ino: u64) {
        if let Ok(mut entries) = self.entries.lock() {
            if let Some(names) = entries.get_mut(&ino) {
                names.retain(|n, _| !n.starts_with(b"system.posix_acl"));
            }
        }
    }

    /// This mount changed `ino`'s xattrs or mode (which rewrites its ACL).
    pub fn forget(&self, ino: u64) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_shared_names_and_forgets_on_change() {
        let c = XattrCache::default();
        c.put(5, b"user.x", Some(b"v".to_vec()));
        assert_eq!(c.get(5, b"user.x"), None, "user.* depends on the caller");
        c.put(5, b"security.capability", None);
        c.put(5, b"system.posix_acl_access", Some(b"acl".to_vec()));
        c.put(6, b"security.capability", None);
        assert_eq!(c.get(5, b"security.capability"), Some(None));
        assert_eq!(
            c.get(5, b"system.posix_acl_access"),
            Some(Some(b"acl".to_vec()))
        );
        c.forget(5);
        assert_eq!(c.get(5, b"security.capability"), None);
        assert_eq!(c.get(6, b"security.capability"), Some(None));
    }
}
