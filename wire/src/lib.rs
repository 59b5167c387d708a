//! The wire between sparefs daemons and clients: frames (a u32 length and
//! a postcard body, allocated as their bytes arrive), the framed RPC server
//! loop every daemon runs with its bounds, and the multiplexed client
//! connection (numbered calls answered out of order, pooled per address),
//! and mutual TLS (`tls`: the cluster CA, certificates naming a role and id,
//! the verified peer, which `service` hands every call and `conn` reports;
//! the daemons do not turn it on yet, see docs/security.md).
//!
//! Owns: sockets, framing, timeouts, connection and byte budgets. Must not
//! touch: what a request means (the daemons' services decide), file data
//! or metadata.

pub mod conn;
pub mod dial;
pub mod frame;
pub mod service;
pub mod tls;
