//! Wire messages shared by every sparefs component: id newtypes, limits, the
//! POSIX errno set, namespace and layout records, the RPC envelope, the
//! decisions made by the kind of a change (`write_kind`) and the POSIX rules
//! the meta and the mount share (`posix_rules`).
//!
//! Owns: the one definition of every message. Must not touch: sockets, files,
//! RocksDB (frames and connections are `sparefs-wire`'s).

pub mod errno;
pub mod format;
pub mod fsck;
pub mod ids;
pub mod layout;
pub mod limits;
pub mod msg;
pub mod namespace;
pub mod nested;
pub mod posix_rules;
pub mod write_kind;

pub use errno::Errno;
pub use ids::*;
