//! The native sparefs client library. Today: the metadata client (leader
//! discovery, retries with exactly-once request ids, namespace calls, path
//! resolution). The data path (erasure-coded reads and writes) is issue 3.
//!
//! Owns: connections to meta replicas, request ids. Must not touch: RocksDB,
//! Raft, the FUSE kernel interface.

mod conn;
pub mod meta;

pub use meta::{ClientError, MetaClient};
