//! The replica's RocksDB instance: opening it (or refusing to), its column
//! families, and the `ReadKv` view of the replicated state.
//!
//! A replica directory holds `db/` (RocksDB) and `IDENTITY`, written last
//! when the directory is initialised. A directory with an IDENTITY but no
//! readable database, or with files but no IDENTITY, is refused: joining the
//! group with empty state after having voted would break Raft's promises.

use crate::kv::{Cf, Pairs, ReadKv, StoreError, STATE_CFS};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};
use sparefs_proto::ReplicaId;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

pub const CF_RAFT_LOG: &str = "raft_log";
pub const CF_RAFT_STATE: &str = "raft_state";
const IDENTITY_FILE: &str = "IDENTITY";
const IDENTITY_PREFIX: &str = "sparefs-meta-replica v1 id=";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{dir}: {reason}")]
    Refused { dir: PathBuf, reason: String },
    #[error("{dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir}: the database does not open ({source}); refusing to start with empty state")]
    Rocks {
        dir: PathBuf,
        source: rocksdb::Error,
    },
}

use sparefs_proto::format::FORMAT_FILE;

/// The directory's format stamp (`proto::format`): a newer one refused.
fn format_check(dir: &Path, read_only: bool) -> Result<(), OpenError> {
    sparefs_proto::format::check_dir(dir, sparefs_proto::format::META, read_only).map_err(|e| {
        OpenError::Refused {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        }
    })
}

pub struct Store {
    db: DB,
    dir: PathBuf,
    behind: WalBehind,
}

/// Longest an unsynced write waits for the WAL syncer (plus one fsync).
pub const WAL_SYNC_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// Writes that reached the WAL (the OS) but not yet the disk: the syncer
/// thread fsyncs them shortly after, and a failed fsync fails every later
/// write (applying on after the disk refused would let replicas diverge).
#[derive(Default)]
struct WalBehind {
    /// Unsynced writes since the last sync.
    dirty: AtomicBool,
    /// The syncer waits on `wake` for a write (set under `parked`): only
    /// then does a write pay for a wake-up call.
    idle: AtomicBool,
    parked: Mutex<()>,
    wake: Condvar,
    failed: Mutex<Option<String>>,
}

fn cf_names() -> Vec<&'static str> {
    let mut names = vec![CF_RAFT_LOG, CF_RAFT_STATE];
    names.extend(STATE_CFS.iter().map(|c| c.name()));
    names
}

/// Memory budget of a replica's RocksDB: one block cache shared by every
/// column family, and one budget for all memtables together. A replica's
/// RSS follows these, not the number of files.
pub const BLOCK_CACHE_BYTES: usize = 64 * 1024 * 1024;
pub const MEMTABLES_BYTES: usize = 64 * 1024 * 1024;

fn db_options(create: bool, cache: &Option<rocksdb::Cache>) -> Options {
    let mut o = Options::default();
    o.create_if_missing(create);
    // New column families of a newer version are added on open (empty).
    o.create_missing_column_families(true);
    o.set_max_background_jobs(2);
    let mut table = rocksdb::BlockBasedOptions::default();
    if let Some(cache) = cache {
        table.set_block_cache(cache);
    }
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    o.set_block_based_table_factory(&table);
    o.set_db_write_buffer_size(MEMTABLES_BYTES);
    o.set_write_buffer_size(8 * 1024 * 1024);
    o.set_max_write_buffer_number(2);
    o.set_max_open_files(512);
    o
}

/// Whether a replica directory is new (to initialise) or must hold state.
pub enum DirState {
    New,
    Existing,
}

pub fn inspect_dir(dir: &Path, id: ReplicaId) -> Result<DirState, OpenError> {
    let io = |source| OpenError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        return Ok(DirState::New);
    }
    let identity = dir.join(IDENTITY_FILE);
    if !identity.exists() {
        // (A format stamp alone: initialisation stopped right after it.)
        let empty = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok())
            .all(|e| e.file_name().to_string_lossy().starts_with(FORMAT_FILE));
        if empty {
            return Ok(DirState::New);
        }
        return Err(OpenError::Refused {
            dir: dir.to_path_buf(),
            reason: "directory is not empty and holds no IDENTITY file: not a sparefs meta replica (or its initialisation never finished)".into(),
        });
    }
    let text = std::fs::read_to_string(&identity).map_err(io)?;
    let found: Option<u64> = text
        .trim()
        .strip_prefix(IDENTITY_PREFIX)
        .and_then(|s| s.parse().ok());
    match found {
        Some(n) if n == id.0 => {}
        Some(n) => {
            return Err(OpenError::Refused {
                dir: dir.to_path_buf(),
                reason: format!("holds replica {n}, not replica {id}"),
            })
        }
        None => {
            return Err(OpenError::Refused {
                dir: dir.to_path_buf(),
                reason: "IDENTITY file is corrupt".into(),
            })
        }
    }
    if !dir.join("db").join("CURRENT").exists() {
        return Err(OpenError::Refused {
            dir: dir.to_path_buf(),
            reason: "the replica's database is missing (db/CURRENT not found); refusing to start with empty state".into(),
        });
    }
    Ok(DirState::Existing)
}

impl Store {
    /// Creates a fresh store; the caller writes the initial state and then
    /// calls `seal` to write IDENTITY.
    pub fn create(dir: &Path) -> Result<Store, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Io {
            dir: dir.to_path_buf(),
            source,
        })?;
        Self::open_db(dir, true)
    }

    pub fn open(dir: &Path) -> Result<Store, OpenError> {
        Self::open_db(dir, false)
    }

    fn open_db(dir: &Path, create: bool) -> Result<Store, OpenError> {
        // The database holds inline file contents and the cluster key: only
        // this daemon's user enters the directory (one made by an older
        // version with looser modes is closed too).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| OpenError::Io {
                dir: dir.to_path_buf(),
                source,
            },
        )?;
        format_check(dir, false)?;
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES).ok();
        let opts = db_options(create, &cache);
        let cfs = cf_names()
            .into_iter()
            .map(|n| ColumnFamilyDescriptor::new(n, db_options(create, &cache)));
        let db = DB::open_cf_descriptors(&opts, dir.join("db"), cfs).map_err(|source| {
            OpenError::Rocks {
                dir: dir.to_path_buf(),
                source,
            }
        })?;
        Ok(Store {
            db,
            dir: dir.to_path_buf(),
            behind: WalBehind::default(),
        })
    }

    pub fn seal(&self, id: ReplicaId) -> Result<(), OpenError> {
        let io = |source| OpenError::Io {
            dir: self.dir.clone(),
            source,
        };
        let tmp = self.dir.join("IDENTITY.tmp");
        std::fs::write(&tmp, format!("{IDENTITY_PREFIX}{}\n", id.0)).map_err(io)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, self.dir.join(IDENTITY_FILE)).map_err(io)?;
        // The rename is durable only once the directory itself is synced.
        std::fs::File::open(&self.dir)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn db(&self) -> &DB {
        &self.db
    }

    pub fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created at open")
    }

    pub fn state_cf(&self, cf: Cf) -> &ColumnFamily {
        self.cf(cf.name())
    }

    fn check_syncer(&self) -> Result<(), StoreError> {
        match self.behind.failed.lock().ok().and_then(|f| f.clone()) {
            Some(e) => Err(StoreError::Invalid(format!("WAL sync failed earlier: {e}"))),
            None => Ok(()),
        }
    }

    /// Writes a batch and syncs the WAL (and so every earlier write) before
    /// returning.
    pub fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.check_syncer()?;
        let mut o = WriteOptions::default();
        o.set_sync(true);
        self.db.write_opt(batch, &o)?;
        Ok(())
    }

    /// Writes a batch through the WAL without waiting for the disk: it
    /// survives a crash of this process (it is in the OS), and reaches the
    /// disk when the syncer thread (`start_syncer`) gets to it, or with the
    /// next synced write.
    pub fn write_unsynced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.check_syncer()?;
        let mut o = WriteOptions::default();
        o.set_sync(false);
        self.db.write_opt(batch, &o)?;
        let b = &self.behind;
        if !b.dirty.swap(true, Ordering::SeqCst) && b.idle.load(Ordering::SeqCst) {
            let _parked = b.parked.lock();
            b.wake.notify_one();
        }
        Ok(())
    }

    /// Starts the thread that syncs the WAL behind unsynced writes: at most
    /// every `WAL_SYNC_EVERY`, so a stream of small writes costs a few
    /// fsyncs a second (each costs a replica about 0.1 ms of CPU on a VM)
    /// and an unsynced write reaches the disk within about that long.
    pub fn start_syncer(self: &Arc<Self>) -> std::io::Result<()> {
        let store = self.clone();
        std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || loop {
                std::thread::sleep(WAL_SYNC_EVERY);
                let b = &store.behind;
                if !b.dirty.load(Ordering::SeqCst) {
                    let Ok(mut parked) = b.parked.lock() else {
                        return;
                    };
                    b.idle.store(true, Ordering::SeqCst);
                    // A write between the check above and `idle` saw the
                    // syncer busy and did not wake it: look again.
                    while !b.dirty.load(Ordering::SeqCst) {
                        parked = match b.wake.wait(parked) {
                            Ok(p) => p,
                            Err(_) => return,
                        };
                    }
                    b.idle.store(false, Ordering::SeqCst);
                }
                b.dirty.store(false, Ordering::SeqCst);
                if let Err(e) = store.db.flush_wal(true) {
                    tracing::error!("WAL sync failed: {e}; this replica stops writing");
                    if let Ok(mut f) = store.behind.failed.lock() {
                        *f = Some(e.to_string());
                    }
                    return;
                }
            })?;
        Ok(())
    }

    /// Writes `writes` at once, synced: for tools and tests that edit a
    /// stopped replica's state (never while the replica runs).
    pub fn write_now(
        &self,
        writes: std::collections::BTreeMap<(Cf, Vec<u8>), Option<Vec<u8>>>,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        self.put_writes(&mut batch, writes);
        self.write_synced(batch)
    }

    pub fn put_writes(
        &self,
        batch: &mut WriteBatch,
        writes: std::collections::BTreeMap<(Cf, Vec<u8>), Option<Vec<u8>>>,
    ) {
        for ((cf, k), v) in writes {
            match v {
                Some(v) => batch.put_cf(self.state_cf(cf), k, v),
                None => batch.delete_cf(self.state_cf(cf), k),
            }
        }
    }
}

/// Scans `cf` of any RocksDB handle: the live store or a checkpoint.
pub fn scan_db(
    db: &DB,
    cf: &ColumnFamily,
    prefix: &[u8],
    start: &[u8],
    limit: usize,
) -> Result<Pairs, StoreError> {
    collect_prefix(db.raw_iterator_cf(cf), prefix, start, limit)
}

/// Up to `limit` pairs from `start` whose keys start with `prefix`.
fn collect_prefix(
    mut it: rocksdb::DBRawIteratorWithThreadMode<'_, DB>,
    prefix: &[u8],
    start: &[u8],
    limit: usize,
) -> Result<Pairs, StoreError> {
    // The raw iterator lends each key and value: the boxed iterator would
    // allocate both once more per entry (listings read thousands).
    let mut out = Vec::new();
    it.seek(start);
    while out.len() < limit {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        if !k.starts_with(prefix) {
            break;
        }
        out.push((k.to_vec(), v.to_vec()));
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// A stopped replica's database opened read-only (`sparefs fsck
/// --offline`): nothing is written, not even the directory's mode. Column
/// families an older version did not have read as empty.
pub struct ReadOnlyStore {
    db: DB,
}

impl ReadOnlyStore {
    pub fn open(dir: &Path) -> Result<ReadOnlyStore, OpenError> {
        format_check(dir, true)?;
        let path = dir.join("db");
        let rocks = |source| OpenError::Rocks {
            dir: dir.to_path_buf(),
            source,
        };
        let names = DB::list_cf(&Options::default(), &path).map_err(rocks)?;
        let db =
            DB::open_cf_for_read_only(&Options::default(), &path, names, false).map_err(rocks)?;
        Ok(ReadOnlyStore { db })
    }
}

impl ReadKv for ReadOnlyStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.db.cf_handle(cf.name()) {
            Some(h) => Ok(self.db.get_cf(h, key)?),
            None => Ok(None),
        }
    }

    fn scan(&self, cf: Cf, prefix: &[u8], start: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        match self.db.cf_handle(cf.name()) {
            Some(h) => scan_db(&self.db, h, prefix, start, limit),
            None => Ok(Vec::new()),
        }
    }
}

/// The state as it was at one moment (a RocksDB snapshot): what a long
/// read of everything (fsck) sees while entries go on being applied.
pub struct SnapshotView<'a> {
    store: &'a Store,
    snap: rocksdb::Snapshot<'a>,
}

impl Store {
    pub fn snapshot_view(&self) -> SnapshotView<'_> {
        SnapshotView {
            store: self,
            snap: self.db.snapshot(),
        }
    }
}

impl ReadKv for SnapshotView<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.snap.get_cf(self.store.state_cf(cf), key)?)
    }

    fn scan(&self, cf: Cf, prefix: &[u8], start: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        collect_prefix(
            self.snap.raw_iterator_cf(self.store.state_cf(cf)),
            prefix,
            start,
            limit,
        )
    }
}

impl ReadKv for Store {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.state_cf(cf), key)?)
    }

    fn scan(&self, cf: Cf, prefix: &[u8], start: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        scan_db(&self.db, self.state_cf(cf), prefix, start, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_directory_of_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::create(dir.path()).expect("create"));
        let stamp = dir.path().join(FORMAT_FILE);
        assert_eq!(
            std::fs::read_to_string(&stamp).expect("stamped"),
            "sparefs meta format 1\n"
        );
        drop(Store::open(dir.path()).expect("same format"));
        std::fs::write(&stamp, "sparefs meta format 2\n").expect("write");
        for e in [
            Store::open(dir.path()).err().map(|e| e.to_string()),
            ReadOnlyStore::open(dir.path()).err().map(|e| e.to_string()),
        ] {
            let e = e.expect("refused");
            assert!(e.contains("newer sparefs (meta format 2)"), "{e}");
        }
    }
}
