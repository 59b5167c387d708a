//! Raft's log, hard state and configuration in RocksDB, behind raft-rs's
//! `Storage` trait.
//!
//! Keys: `raft_log` holds entries under their big-endian index;
//! `raft_state` holds the hard state, the configuration state and the
//! truncation point (index and term of the last entry compacted away).
//! Writes are staged into the caller's `WriteBatch`, so that the entries,
//! the hard state and the applied state of one `Ready` land in one synced
//! write. The in-memory copy is updated as the batch is staged; the driver
//! writes the batch before Raft reads the log again.

use crate::kv::{be, read_be, Cf, ReadKv};
use crate::ns;
use crate::store::{Store, CF_RAFT_LOG, CF_RAFT_STATE};
use protobuf::Message as _;
use raft::prelude::*;
use raft::{GetEntriesContext, RaftState, StorageError};
use rocksdb::WriteBatch;
use std::path::PathBuf;
use std::sync::Arc;

const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_TRUNCATED: &[u8] = b"truncated";

/// What the snapshot message's data names: a checkpoint the follower pulls.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SnapshotDescriptor {
    pub index: u64,
    /// Where to fetch it: a joining replica may not know the leader yet.
    pub address: String,
}

pub struct RaftLog {
    store: Arc<Store>,
    hard_state: HardState,
    conf_state: ConfState,
    truncated_index: u64,
    truncated_term: u64,
    last_index: u64,
    snapshots_dir: PathBuf,
    /// This replica's address, named in the snapshots it offers.
    pub address: String,
}

fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

impl RaftLog {
    /// Loads the log's bounds and states from the store.
    pub fn load(store: Arc<Store>) -> anyhow::Result<RaftLog> {
        use anyhow::Context;
        let db = store.db();
        let state_cf = store.cf(CF_RAFT_STATE);
        let mut hard_state = HardState::default();
        if let Some(b) = db.get_cf(state_cf, KEY_HARD_STATE)? {
            hard_state
                .merge_from_bytes(&b)
                .context("decode stored hard state")?;
        }
        let mut conf_state = ConfState::default();
        if let Some(b) = db.get_cf(state_cf, KEY_CONF_STATE)? {
            conf_state
                .merge_from_bytes(&b)
                .context("decode stored conf state")?;
        }
        let (truncated_index, truncated_term) = match db.get_cf(state_cf, KEY_TRUNCATED)? {
            Some(b) if b.len() == 16 => {
                (read_be(&b[..8]).unwrap_or(0), read_be(&b[8..]).unwrap_or(0))
            }
            Some(_) => anyhow::bail!("stored truncation point is corrupt"),
            None => (0, 0),
        };
        let mut last_index = truncated_index;
        {
            let mut it = db.raw_iterator_cf(store.cf(CF_RAFT_LOG));
            it.seek_to_last();
            if let Some(k) = it.key() {
                last_index = read_be(k).context("corrupt raft log key")?;
            }
            it.status().context("scan raft log")?;
        }
        let snapshots_dir = store.dir().join("snapshots");
        std::fs::create_dir_all(&snapshots_dir).context("create snapshots directory")?;
        Ok(RaftLog {
            store,
            hard_state,
            conf_state,
            truncated_index,
            truncated_term,
            last_index,
            snapshots_dir,
            address: String::new(),
        })
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn first(&self) -> u64 {
        self.truncated_index + 1
    }

    pub fn last(&self) -> u64 {
        self.last_index
    }

    pub fn append(&mut self, batch: &mut WriteBatch, entries: &[Entry]) -> raft::Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let cf = self.store.cf(CF_RAFT_LOG);
        // A new leader may overwrite a suffix: drop what follows.
        if first.index <= self.last_index {
            batch.delete_range_cf(cf, be(first.index), be(self.last_index + 1));
        }
        for e in entries {
            batch.put_cf(cf, be(e.index), e.write_to_bytes().map_err(store_err)?);
        }
        self.last_index = entries.last().map(|e| e.index).unwrap_or(self.last_index);
        Ok(())
    }

    pub fn set_hard_state(&mut self, batch: &mut WriteBatch, hs: HardState) -> raft::Result<()> {
        batch.put_cf(
            self.store.cf(CF_RAFT_STATE),
            KEY_HARD_STATE,
            hs.write_to_bytes().map_err(store_err)?,
        );
        self.hard_state = hs;
        Ok(())
    }

    pub fn set_commit(&mut self, batch: &mut WriteBatch, commit: u64) -> raft::Result<()> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(batch, hs)
    }

    pub fn set_conf_state(&mut self, batch: &mut WriteBatch, cs: ConfState) -> raft::Result<()> {
        batch.put_cf(
            self.store.cf(CF_RAFT_STATE),
            KEY_CONF_STATE,
            cs.write_to_bytes().map_err(store_err)?,
        );
        self.conf_state = cs;
        Ok(())
    }

    fn set_truncated(&mut self, batch: &mut WriteBatch, index: u64, term: u64) {
        let mut v = be(index).to_vec();
        v.extend_from_slice(&be(term));
        batch.put_cf(self.store.cf(CF_RAFT_STATE), KEY_TRUNCATED, v);
        self.truncated_index = index;
        self.truncated_term = term;
    }

    /// Drops entries up to and including `upto` (which must be applied).
    pub fn compact(&mut self, batch: &mut WriteBatch, upto: u64) -> raft::Result<()> {
        if upto <= self.truncated_index || upto > self.last_index {
            return Ok(());
        }
        let term = self.term(upto)?;
        batch.delete_range_cf(self.store.cf(CF_RAFT_LOG), be(0), be(upto + 1));
        self.set_truncated(batch, upto, term);
        Ok(())
    }

    /// The log after installing a snapshot: empty, truncated at its index.
    pub fn reset_to_snapshot(
        &mut self,
        batch: &mut WriteBatch,
        meta: &SnapshotMetadata,
    ) -> raft::Result<()> {
        batch.delete_range_cf(self.store.cf(CF_RAFT_LOG), be(0), be(u64::MAX));
        self.set_truncated(batch, meta.index, meta.term);
        self.last_index = meta.index;
        self.set_conf_state(batch, meta.get_conf_state().clone())?;
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        self.set_hard_state(batch, hs)
    }

    pub fn checkpoint_path(&self, index: u64) -> PathBuf {
        self.snapshots_dir.join(format!("{index:020}"))
    }

    /// Makes a RocksDB checkpoint of the current state (which is exactly the
    /// state at the applied index: the driver applies synchronously) and
    /// keeps only the two newest.
    fn make_checkpoint(&self, index: u64) -> anyhow::Result<()> {
        let path = self.checkpoint_path(index);
        if path.exists() {
            return Ok(());
        }
        let tmp = self.snapshots_dir.join(format!("tmp-{index}"));
        let _ = std::fs::remove_dir_all(&tmp);
        rocksdb::checkpoint::Checkpoint::new(self.store.db())?.create_checkpoint(&tmp)?;
        std::fs::rename(&tmp, &path)?;
        let mut all: Vec<_> = std::fs::read_dir(&self.snapshots_dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        all.sort();
        let keep_from = all.len().saturating_sub(2);
        for old in &all[..keep_from] {
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(())
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut size = 0u64;
        let it = self.store.db().iterator_cf(
            self.store.cf(CF_RAFT_LOG),
            rocksdb::IteratorMode::From(&be(low), rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(store_err)?;
            let idx = read_be(&k).ok_or_else(|| store_err("corrupt log key"))?;
            if idx >= high {
                break;
            }
            if idx != low + out.len() as u64 {
                return Err(store_err(format!(
                    "raft log has a gap at {}",
                    low + out.len() as u64
                )));
            }
            let mut e = Entry::default();
            e.merge_from_bytes(&v).map_err(store_err)?;
            size += v.len() as u64;
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if idx < self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let v = self
            .store
            .db()
            .get_cf(self.store.cf(CF_RAFT_LOG), be(idx))
            .map_err(store_err)?
            .ok_or_else(|| store_err(format!("raft log entry {idx} is missing")))?;
        let mut e = Entry::default();
        e.merge_from_bytes(&v).map_err(store_err)?;
        Ok(e.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let applied = ns_applied(&self.store).map_err(store_err)?;
        if applied < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        self.make_checkpoint(applied).map_err(store_err)?;
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = self.term(applied)?;
        meta.set_conf_state(self.conf_state.clone());
        snap.data = crate::kv::encode(&SnapshotDescriptor {
            index: applied,
            address: self.address.clone(),
        })
        .into();
        Ok(snap)
    }
}

pub fn ns_applied(store: &Store) -> Result<u64, crate::kv::StoreError> {
    Ok(store
        .get_rec::<u64>(Cf::Sys, ns::SYS_APPLIED_KEY)?
        .unwrap_or(0))
}
