//! The native sparefs client library: the metadata client (leader
//! discovery, retries with exactly-once request ids, namespace calls, path
//! resolution), the erasure-coded data path (`data`), slice overlays
//! (`overlay`), read-ahead (`readahead`), per-file write buffering (`file`), the mount's
//! open files and its attribute answers (`open_files`, `attrs`) and chunk
//! compaction (`compact`).
//!
//! Owns: which replica leads, request ids, the data path's use of
//! connections (`sparefs-wire` owns the connections). Must not touch:
//! RocksDB, Raft, the FUSE kernel interface.

pub mod attrs;
pub mod compact;
pub mod data;
pub mod deleg;
pub mod file;
pub mod fresh_attrs;
pub mod lane;
pub mod meta;
pub mod open_files;
pub mod overlay;
pub mod packed_names;
pub mod readahead;
pub mod scrub;
pub mod verify;

pub use attrs::Attrs;
pub use data::DataClient;
pub use file::OpenFile;
pub use meta::{ClientError, MetaClient};
pub use open_files::OpenFiles;
