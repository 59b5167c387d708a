//! The files a mount has open: one `OpenFile` per inode, shared by all of
//! its handles (so that every handle sees the others' buffered writes),
//! with how many handles hold it, and the inodes being opened.
//!
//! The meta keeps an unlinked file while a mount reports it open
//! (`MetaClient::keepalive`); `inodes` is that report, and includes files
//! still being opened, so that no unlink slips between the meta's answer
//! to an open and the file's entry here.

use crate::file::OpenFile;
use crate::meta::{ClientError, Result};
use crate::DataClient;
use sparefs_proto::namespace::Attr;
use sparefs_proto::InodeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct OpenFiles {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    /// inode -> (open file, handles holding it).
    by_ino: HashMap<InodeId, (Arc<OpenFile>, usize)>,
    /// inode -> opens of it on their way (asked of the meta, not yet here).
    opening: HashMap<InodeId, usize>,
}

/// An open of an inode on its way: reported open until dropped.
pub struct Opening {
    files: Arc<OpenFiles>,
    ino: InodeId,
}

impl Drop for Opening {
    fn drop(&mut self) {
        if let Ok(mut t) = self.files.table.lock() {
            let n = t.opening.entry(self.ino).or_default();
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.opening.remove(&self.ino);
            }
        }
    }
}

impl OpenFiles {
    /// The open file of `ino`, if any handle holds it.
    pub fn get(&self, ino: InodeId) -> Option<Arc<OpenFile>> {
        let t = self.table.lock().ok()?;
        t.by_ino.get(&ino).map(|(f, _)| f.clone())
    }

    /// The open file of `ino` if it holds attribute changes back
    /// (`OpenFile::hold_setattr`).
    pub fn holding(&self, ino: InodeId) -> Option<Arc<OpenFile>> {
        self.get(ino).filter(|f| f.predicted_attr().is_some())
    }

    /// Marks an open of `ino` as on its way, until the guard is dropped.
    pub fn opening(self: &Arc<Self>, ino: InodeId) -> Opening {
        if let Ok(mut t) = self.table.lock() {
            *t.opening.entry(ino).or_default() += 1;
        }
        Opening {
            files: self.clone(),
            ino,
        }
    }

    /// A new handle of `attr`'s inode: its open file (revalidated against
    /// `attr` if already open here, else opened).
    pub async fn open(&self, data: Arc<DataClient>, attr: &Attr) -> Result<Arc<OpenFile>> {
        let file = match self.get(attr.ino) {
            Some(f) => {
                f.revalidate(attr).await;
                f
            }
            None => Arc::new(OpenFile::open(data, attr).await?),
        };
        let mut t = self
            .table
            .lock()
            .map_err(|_| ClientError::Protocol("open file table poisoned".into()))?;
        // Another open of the inode may have registered meanwhile: share it.
        let (shared, n) = t.by_ino.entry(attr.ino).or_insert((file, 0));
        *n += 1;
        Ok(shared.clone())
    }

    /// A handle of `file` closed: the open file goes with its last handle.
    pub fn close(&self, file: &OpenFile) {
        if let Ok(mut t) = self.table.lock() {
            let last = match t.by_ino.get_mut(&file.ino) {
                Some((_, n)) => {
                    *n -= 1;
                    *n == 0
                }
                None => false,
            };
            if last {
                t.by_ino.remove(&file.ino);
            }
        }
    }

    /// The inodes open here or being opened.
    pub fn inodes(&self) -> Vec<InodeId> {
        self.table
            .lock()
            .map(|t| t.by_ino.keys().chain(t.opening.keys()).copied().collect())
            .unwrap_or_default()
    }
}
