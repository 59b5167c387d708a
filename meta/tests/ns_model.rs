//! Property test: random sequences of namespace operations applied to the
//! RocksDB-backed state machine and to a small in-memory model of POSIX
//! semantics give the same results, the same errors and the same tree.

use proptest::prelude::*;
mod common;

use common::Machine;
use sparefs_proto::namespace::*;
use sparefs_proto::{Errno, InodeId};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
enum Op {
    Mkdir(usize, u8),
    Create(usize, u8),
    Unlink(usize, u8),
    Rmdir(usize, u8),
    Rename(usize, u8, usize, u8, u8),
    Link(usize, usize, u8),
}

fn op() -> impl Strategy<Value = Op> {
    let d = 0usize..8;
    let n = 0u8..4;
    prop_oneof![
        3 => (d.clone(), n.clone()).prop_map(|(d, n)| Op::Mkdir(d, n)),
        3 => (d.clone(), n.clone()).prop_map(|(d, n)| Op::Create(d, n)),
        2 => (d.clone(), n.clone()).prop_map(|(d, n)| Op::Unlink(d, n)),
        2 => (d.clone(), n.clone()).prop_map(|(d, n)| Op::Rmdir(d, n)),
        4 => (d.clone(), n.clone(), d.clone(), n.clone(), 0u8..3).prop_map(|(a, b, c, e, m)| Op::Rename(a, b, c, e, m)),
        1 => (0usize..8, d, n).prop_map(|(f, d, n)| Op::Link(f, d, n)),
    ]
}

fn name(n: u8) -> Vec<u8> {
    vec![b'a' + n]
}

#[derive(Clone, Debug)]
enum Node {
    Dir {
        entries: BTreeMap<Vec<u8>, u64>,
        parent: u64,
    },
    File {
        nlink: u32,
    },
}

/// The model: inodes numbered as the state machine numbers them.
struct Model {
    nodes: BTreeMap<u64, Node>,
    next: u64,
    /// Every directory and file ever made, so operations can name dead ones.
    dirs_ever: Vec<u64>,
    files_ever: Vec<u64>,
}

type R = Result<(), Errno>;

impl Model {
    fn new() -> Model {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            1,
            Node::Dir {
                entries: BTreeMap::new(),
                parent: 1,
            },
        );
        Model {
            nodes,
            next: 2,
            dirs_ever: vec![1],
            files_ever: Vec::new(),
        }
    }

    fn dir(&self, ino: u64) -> Result<&BTreeMap<Vec<u8>, u64>, Errno> {
        match self.nodes.get(&ino) {
            Some(Node::Dir { entries, .. }) => Ok(entries),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn entries_mut(&mut self, ino: u64) -> &mut BTreeMap<Vec<u8>, u64> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir { entries, .. }) => entries,
            _ => unreachable!("checked before"),
        }
    }

    fn is_dir(&self, ino: u64) -> bool {
        matches!(self.nodes.get(&ino), Some(Node::Dir { .. }))
    }

    fn make(&mut self, d: u64, n: &[u8], dir: bool) -> R {
        if self.dir(d)?.contains_key(n) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next;
        self.next += 1;
        self.entries_mut(d).insert(n.to_vec(), ino);
        if dir {
            self.nodes.insert(
                ino,
                Node::Dir {
                    entries: BTreeMap::new(),
                    parent: d,
                },
            );
            self.dirs_ever.push(ino);
        } else {
            self.nodes.insert(ino, Node::File { nlink: 1 });
            self.files_ever.push(ino);
        }
        Ok(())
    }

    fn drop_link(&mut self, ino: u64) {
        match self.nodes.get_mut(&ino) {
            Some(Node::File { nlink }) if *nlink > 1 => *nlink -= 1,
            _ => {
                self.nodes.remove(&ino);
            }
        }
    }

    fn remove(&mut self, d: u64, n: &[u8], want_dir: bool) -> R {
        let ino = *self.dir(d)?.get(n).ok_or(Errno::ENOENT)?;
        match (want_dir, self.is_dir(ino)) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            _ => {}
        }
        if want_dir && !self.dir(ino)?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.entries_mut(d).remove(n);
        self.drop_link(ino);
        Ok(())
    }

    fn within(&self, mut ino: u64, ancestor: u64) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            if ino == 1 {
                return false;
            }
            ino = match self.nodes.get(&ino) {
                Some(Node::Dir { parent, .. }) => *parent,
                _ => return false,
            };
        }
    }

    fn set_parent(&mut self, ino: u64, p: u64) {
        if let Some(Node::Dir { parent, .. }) = self.nodes.get_mut(&ino) {
            *parent = p;
        }
    }

    fn rename(&mut self, sp: u64, sn: &[u8], dp: u64, dn: &[u8], mode: RenameMode) -> R {
        self.dir(sp)?;
        self.dir(dp)?;
        let src = *self.dir(sp)?.get(sn).ok_or(Errno::ENOENT)?;
        let dst = self.dir(dp)?.get(dn).copied();
        match (mode, dst) {
            (RenameMode::NoReplace, Some(_)) => return Err(Errno::EEXIST),
            (RenameMode::Exchange, None) => return Err(Errno::ENOENT),
            _ => {}
        }
        if self.is_dir(src) && sp != dp && self.within(dp, src) {
            return Err(Errno::EINVAL);
        }
        if mode == RenameMode::Exchange {
            let dst = dst.ok_or(Errno::ENOENT)?;
            if self.is_dir(dst) && sp != dp && self.within(sp, dst) {
                return Err(Errno::EINVAL);
            }
            if src == dst {
                return Ok(());
            }
            self.entries_mut(sp).insert(sn.to_vec(), dst);
            self.entries_mut(dp).insert(dn.to_vec(), src);
            self.set_parent(src, dp);
            self.set_parent(dst, sp);
            return Ok(());
        }
        if let Some(dst) = dst {
            if dst == src {
                return Ok(());
            }
            match (self.is_dir(src), self.is_dir(dst)) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.dir(dst)?.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
            self.entries_mut(dp).remove(dn);
            self.drop_link(dst);
        }
        self.entries_mut(sp).remove(sn);
        self.entries_mut(dp).insert(dn.to_vec(), src);
        self.set_parent(src, dp);
        Ok(())
    }

    fn link(&mut self, f: u64, d: u64, n: &[u8]) -> R {
        if !self.nodes.contains_key(&f) {
            return Err(Errno::ENOENT);
        }
        if self.dir(d)?.contains_key(n) {
            return Err(Errno::EEXIST);
        }
        if let Some(Node::File { nlink }) = self.nodes.get_mut(&f) {
            *nlink += 1;
        }
        self.entries_mut(d).insert(n.to_vec(), f);
        Ok(())
    }

    /// (path, is_dir, nlink) for every reachable name.
    fn tree(&self) -> Vec<(String, bool, u32)> {
        let mut out = Vec::new();
        let mut stack = vec![(1u64, String::new())];
        while let Some((ino, path)) = stack.pop() {
            if let Ok(entries) = self.dir(ino) {
                for (n, child) in entries {
                    let p = format!("{path}/{}", String::from_utf8_lossy(n));
                    let (is_dir, nlink) = match &self.nodes[child] {
                        Node::Dir { entries, .. } => (
                            true,
                            2 + entries.values().filter(|c| self.is_dir(**c)).count() as u32,
                        ),
                        Node::File { nlink } => (false, *nlink),
                    };
                    out.push((p.clone(), is_dir, nlink));
                    if is_dir {
                        stack.push((*child, p));
                    }
                }
            }
        }
        out.sort();
        out
    }
}

fn pick(list: &[u64], i: usize) -> u64 {
    list[i % list.len()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn state_machine_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        let mut model = Model::new();
        let mut sm = Machine::new(Caller::ROOT);
        for op in &ops {
            let (want, got) = match op {
                Op::Mkdir(d, n) => {
                    let d = pick(&model.dirs_ever, *d);
                    (model.make(d, &name(*n), true), sm.apply(WriteOp::Mkdir { parent: InodeId(d), name: name(*n), perm: 0o755, umask: 0 }))
                }
                Op::Create(d, n) => {
                    let d = pick(&model.dirs_ever, *d);
                    let w = WriteOp::MkNod { parent: InodeId(d), name: name(*n), kind: FileKind::File, perm: 0o644, umask: 0, rdev: 0, exclusive: true };
                    (model.make(d, &name(*n), false), sm.apply(w))
                }
                Op::Unlink(d, n) => {
                    let d = pick(&model.dirs_ever, *d);
                    (model.remove(d, &name(*n), false), sm.apply(WriteOp::Unlink { parent: InodeId(d), name: name(*n) }))
                }
                Op::Rmdir(d, n) => {
                    let d = pick(&model.dirs_ever, *d);
                    (model.remove(d, &name(*n), true), sm.apply(WriteOp::Rmdir { parent: InodeId(d), name: name(*n) }))
                }
                Op::Rename(a, b, c, e, m) => {
                    let (sp, dp) = (pick(&model.dirs_ever, *a), pick(&model.dirs_ever, *c));
                    let mode = [RenameMode::Replace, RenameMode::NoReplace, RenameMode::Exchange][*m as usize];
                    let w = WriteOp::Rename { parent: InodeId(sp), name: name(*b), new_parent: InodeId(dp), new_name: name(*e), mode };
                    (model.rename(sp, &name(*b), dp, &name(*e), mode), sm.apply(w))
                }
                Op::Link(f, d, n) => {
                    if model.files_ever.is_empty() { continue; }
                    let (f, d) = (pick(&model.files_ever, *f), pick(&model.dirs_ever, *d));
                    (model.link(f, d, &name(*n)), sm.apply(WriteOp::Link { ino: InodeId(f), new_parent: InodeId(d), new_name: name(*n) }))
                }
            };
            prop_assert_eq!(want, got, "operation {:?}", op);
        }
        prop_assert_eq!(model.tree(), sm.tree());
    }
}
