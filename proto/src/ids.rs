//! Id newtypes: every id on the wire and on disk is a fixed-width integer
//! wrapped so that an inode id can never be passed where a node id is wanted.

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $inner:ty) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub $inner);
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(/// A file, directory or special file. 1 is the root directory.
    InodeId, u64);
id_type!(/// A meta replica's Raft id (never 0).
    ReplicaId, u64);
id_type!(/// A chunkserver, assigned by the meta at registration.
    ChunkserverId, u64);
id_type!(/// An immutable block of up to 4 MiB, stored as fragments.
    BlockId, u64);
id_type!(/// One client library instance; random, chosen by the client.
    ClientId, u128);

impl InodeId {
    pub const ROOT: InodeId = InodeId(1);
}

/// Names a mutating request for exactly-once application: a retry of the
/// same `(client, seq)` returns the first answer instead of applying twice.
/// `ack_below` tells the meta that every answer with a smaller `seq` was
/// received, so it may forget them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub client: ClientId,
    pub seq: u64,
    pub ack_below: u64,
}

/// What identifies a request across its retries (`ack_below` may differ
/// between them): the key its waiter and its stored answer are found by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    pub client: ClientId,
    pub seq: u64,
}

impl RequestId {
    pub fn key(&self) -> RequestKey {
        RequestKey {
            client: self.client,
            seq: self.seq,
        }
    }
}
