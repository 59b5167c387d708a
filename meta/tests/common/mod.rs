//! Shared by the state-machine tests: a real RocksDB store in a temporary
//! directory, with commands applied and written as the driver does.
#![allow(dead_code)]

use sparefs_meta::kv::Tx;
use sparefs_meta::ns::{self, Command};
use sparefs_meta::store::Store;
use sparefs_proto::namespace::*;
use sparefs_proto::{ClientId, Errno, InodeId, RequestId};

/// create(2) of a regular file, mode 0644, no umask, exclusive.
pub fn new_file(parent: InodeId, name: &str) -> WriteOp {
    WriteOp::MkNod {
        parent,
        name: name.into(),
        kind: FileKind::File,
        perm: 0o644,
        umask: 0,
        rdev: 0,
        exclusive: true,
    }
}

pub struct Machine {
    pub caller: Caller,
    /// The client the commands come from (delegations are per client).
    pub client: ClientId,
    store: Store,
    seq: u64,
    _dir: tempfile::TempDir,
}

impl Machine {
    pub fn new(caller: Caller) -> Machine {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::create(dir.path()).expect("create store");
        let mut batch = rocksdb::WriteBatch::default();
        {
            let mut tx = Tx::new(&store);
            ns::bootstrap(&mut tx).expect("bootstrap");
            store.put_writes(&mut batch, tx.into_writes());
        }
        store.write_synced(batch).expect("write");
        Machine {
            caller,
            client: ClientId(7),
            store,
            seq: 1,
            _dir: dir,
        }
    }

    pub fn apply(&mut self, op: WriteOp) -> Result<(), Errno> {
        self.apply_reply(op).map(|_| ())
    }

    pub fn apply_reply(&mut self, op: WriteOp) -> Result<NsReply, Errno> {
        match self.apply_command(op, true) {
            Ok(r) => r,
            Err(e) => panic!("storage: {e}"),
        }
    }

    /// Applies `op` as the driver does and returns what `apply_command`
    /// said, a storage error included (the driver stops the replica on one).
    /// `synced: false` skips the fsync, for tests that apply thousands.
    pub fn apply_command(
        &mut self,
        op: WriteOp,
        synced: bool,
    ) -> Result<Result<NsReply, Errno>, sparefs_meta::kv::StoreError> {
        self.seq += 1;
        let cmd = Command {
            id: RequestId {
                client: self.client,
                seq: self.seq,
                ack_below: self.seq,
            },
            caller: self.caller.clone(),
            op,
            now: Time {
                secs: self.seq as i64,
                nanos: 0,
            },
        };
        let mut batch = rocksdb::WriteBatch::default();
        let r = {
            let mut tx = Tx::new(&self.store);
            let r = ns::apply_command(&mut tx, &cmd)?;
            self.store.put_writes(&mut batch, tx.into_writes());
            r
        };
        if synced {
            self.store.write_synced(batch).expect("write");
        } else {
            self.store.write_unsynced(batch).expect("write");
        }
        Ok(r)
    }

    /// Applies `op` again under the previous request id, as a client retry.
    pub fn apply_same_seq(&mut self, op: WriteOp) -> Result<NsReply, Errno> {
        self.seq -= 1;
        self.apply_reply(op)
    }

    /// The sequence number of the last command applied.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn read(&self, op: ReadOp) -> Result<NsReply, Errno> {
        match ns::read(&self.store, &self.caller, &op, &(), 0) {
            Ok(r) => Ok(r),
            Err(ns::NsError::Errno(e)) => Err(e),
            Err(e) => panic!("storage: {e}"),
        }
    }

    pub fn tree(&self) -> Vec<(String, bool, u32)> {
        let mut out = Vec::new();
        let mut stack = vec![(InodeId::ROOT, String::new())];
        while let Some((ino, path)) = stack.pop() {
            let Ok(NsReply::Dir(entries)) = self.read(ReadOp::ReadDir {
                ino,
                after_cookie: 0,
                limit: 1024,
            }) else {
                panic!("readdir")
            };
            for e in entries {
                let Ok(NsReply::Attr(a)) = self.read(ReadOp::GetAttr { ino: e.ino }) else {
                    panic!("getattr")
                };
                let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
                out.push((p.clone(), a.kind == FileKind::Dir, a.nlink));
                if a.kind == FileKind::Dir {
                    stack.push((e.ino, p));
                }
            }
        }
        out.sort();
        out
    }
}
