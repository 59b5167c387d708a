//! Wire messages shared by every sparefs component: id newtypes, limits, the
//! POSIX errno set, namespace and layout records, and the framed RPC envelope.
//!
//! Owns: the one definition of every message. Must not touch: sockets, files,
//! RocksDB. `frame` only encodes and decodes frames over a caller's stream.

pub mod errno;
pub mod frame;
pub mod ids;
pub mod layout;
pub mod limits;
pub mod msg;
pub mod namespace;
pub mod posix_rules;
pub mod service;
pub mod write_kind;

pub use errno::Errno;
pub use ids::*;
