//! The iSCSI target serving image files stored in sparefs as LUNs, through
//! the client library. Layers, each its own module: PDU codec (`pdu`,
//! `text`) → login and negotiation (`login`, `params`) → session and
//! connection (`session`) → SCSI device model (`scsi`) → block backend
//! (`backend`, over the client library). `exports` and `state` keep what
//! is exported, reservations and target heartbeats in the meta's
//! configuration records, so no state belongs to one target process;
//! `target` is a target process.
//!
//! Owns: the iSCSI and SCSI protocols, the export records. Must not touch:
//! the namespace or the data path's internals (it uses the client library
//! as a mount does), RocksDB, Raft.

pub mod backend;
pub mod exports;
pub mod failover;
pub mod login;
pub mod params;
pub mod pdu;
pub mod scsi;
pub mod session;
pub mod state;
pub mod target;
pub mod text;
