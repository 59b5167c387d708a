//! Directories delegated to this client (docs/delegation.md): while the
//! meta lets this client alone change a directory, the client knows every
//! name in it and answers lookups, creates and removals there itself,
//! predicting what the meta will make of them; the changes queue here and
//! go to the meta in order, ahead of anything else this client sends it.
//!
//! Owns: the delegated directories' names and attributes, the queue of
//! changes answered here, the reserved inode numbers. Must not touch: the
//! FUSE interface (fs decides when to ask here), the connections (the
//! `MetaClient` sends what this module hands it).

use crate::packed_names::{NamesPage, PackedNames};
use sparefs_proto::limits::NAME_BYTES_MAX;
use sparefs_proto::namespace::*;
use sparefs_proto::posix_rules::*;
use sparefs_proto::write_kind::CacheEffect;
use sparefs_proto::{Errno, InodeId};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Changes waiting longer than this are sent (namespace changes here are
/// on the meta, and so on a majority of replicas, this much later than
/// answered; fsync/close/fsyncdir send them at once).
pub const FLUSH_AFTER: Duration = Duration::from_millis(5);
/// Most changes queued: past this, requests go to the meta.
pub const QUEUE_MAX: usize = 4096;
/// Inode numbers asked for at a time.
pub const RESERVE: u32 = 4096;
/// Names known in all delegated directories together, and directories held,
/// past which the mount answers no more creates and gives everything back
/// (a bound on its memory: ~100 bytes a name).
pub const NAMES_MAX: usize = 1 << 18;
pub const DIRS_MAX: usize = 1 << 14;
/// A lease renewed this long ago may have run out at the meta (which waits
/// `LOCK_LEASE`, 10 s, from the last renewal it saw): stop answering here.
pub const LEASE_TRUSTED: Duration = Duration::from_secs(6);

/// Whether a request was answered here.
#[derive(Debug)]
pub enum Local<T> {
    /// Not a delegated directory (or not a case answered here): ask the meta.
    Remote,
    Answer(Result<T, Errno>),
}

/// A page of a delegated directory's listing answered here.
#[derive(Debug)]
pub struct Listed {
    /// The directory's parent (for "..").
    pub parent: InodeId,
    /// In cookie order.
    pub entries: NamesPage,
    /// Nothing comes after these.
    pub end: bool,
}

/// Where a change this client sends is (`Delegations::account`).
#[derive(Clone, Copy)]
enum Phase<'a> {
    Sending,
    /// Answered with this (`None`: no answer, or an error).
    Answered(Option<&'a NsReply>),
}

/// A LOOKUP in a delegated directory.
#[derive(Debug)]
pub enum Lookup {
    /// Not delegated (or not a case answered here): ask the meta.
    Remote,
    Answer(Result<Attr, Errno>),
    /// The name is there, as this inode: the meta has its attributes, and
    /// nothing queued or on its way changes them (ask without waiting).
    Ask(InodeId),
}

struct Dir {
    /// Where it is: its parent and name (a rename gives it back first).
    at: (InodeId, Vec<u8>),
    attr: Attr,
    /// Every name in the directory: its inode, kind and cookie.
    names: HashMap<Vec<u8>, Named>,
    /// The same entries in cookie order, as a listing gives them.
    order: PackedNames,
    /// `order` lost step with the names (it cannot take a name): the meta
    /// lists the directory.
    unlisted: bool,
    /// The cookie the next name takes: the meta's count, kept in step
    /// (only this client adds names here, and every name it adds, here or
    /// through the meta, is noted), so a listing answered here continues
    /// one the meta began.
    next_cookie: u64,
}

#[derive(Clone, Copy)]
struct Named {
    ino: InodeId,
    kind: FileKind,
    cookie: u64,
}

impl Dir {
    fn new(at: (InodeId, Vec<u8>), attr: Attr, next_cookie: u64) -> Dir {
        Dir {
            at,
            attr,
            names: HashMap::new(),
            order: PackedNames::default(),
            unlisted: false,
            next_cookie,
        }
    }
}

#[derive(Default)]
struct State {
    dirs: HashMap<InodeId, Dir>,
    /// Inodes made here whose create is still queued: their attributes
    /// (once sent, the meta knows them).
    made: HashMap<InodeId, Attr>,
    queue: Vec<DelegatedOp>,
    first_queued: Option<Instant>,
    /// A batch is on its way to the meta (one at a time: a later one may
    /// depend on an earlier one, and requests can overtake each other).
    in_flight: bool,
    /// Inodes that lost a name in changes queued, and in the batch on its
    /// way (a hard link's count): their attributes wait for those.
    touched: std::collections::HashSet<InodeId>,
    touched_in_flight: std::collections::HashSet<InodeId>,
    /// Reserved inode numbers not used yet, oldest reservation first.
    inodes: std::collections::VecDeque<std::ops::Range<u64>>,
    /// Delegations are used only before this.
    lease_until: Option<Instant>,
    /// Names in all of `dirs` (kept by `add_name`, `remove_name`,
    /// `remove_dir`).
    names: usize,
    /// Attributes of files named in delegated directories, as the meta has
    /// them now. Only this client can reach such a file (its directory is
    /// held, it has one name, and every other client's way to it goes
    /// through a recall), so they stay true until this client changes the
    /// file: every change it sends drops them first (`changing`).
    known: HashMap<InodeId, Attr>,
    /// Files made in the batch on its way: known once it lands.
    landing: Vec<(InodeId, Attr)>,
    /// Counts what `changing` dropped: attributes asked for before a drop
    /// are not kept (they may predate the change).
    epoch: u64,
    /// Files this client gave a second name (`Link`): another client may
    /// have opened one through it, even after that name is gone, so their
    /// attributes are never kept. Past `LINKED_MAX`, none are.
    linked: std::collections::HashSet<InodeId>,
    /// Files kept or landing when their commit was sent: the commit's
    /// answer is kept in their place, unless something else touched them
    /// meanwhile (`forget` takes them out).
    refill: std::collections::HashSet<InodeId>,
}

/// Hard-linked files remembered (see `State::linked`).
const LINKED_MAX: usize = 1 << 16;

impl State {
    fn add_name(&mut self, parent: InodeId, name: &[u8], ino: InodeId, kind: FileKind) {
        let Some(dir) = self.dirs.get_mut(&parent) else {
            return;
        };
        let cookie = dir.next_cookie;
        dir.next_cookie += 1;
        let named = Named { ino, kind, cookie };
        match dir.names.insert(name.to_vec(), named) {
            // Not a case that happens (a name is made only where none is),
            // but the order must not keep the old cookie.
            Some(old) => {
                dir.order.remove(old.cookie);
            }
            None => self.names += 1,
        }
        if !dir.order.push(cookie, ino, kind, name) {
            dir.unlisted = true;
        }
    }

    fn remove_name(&mut self, parent: InodeId, name: &[u8]) -> Option<(InodeId, FileKind)> {
        let dir = self.dirs.get_mut(&parent)?;
        let gone = dir.names.remove(name)?;
        dir.order.remove(gone.cookie);
        self.names = self.names.saturating_sub(1);
        Some((gone.ino, gone.kind))
    }

    fn keep_known(&mut self, a: Attr) {
        if self.known.len() >= NAMES_MAX {
            self.known.clear();
        }
        self.known.insert(a.ino, a);
    }

    fn forget_known(&mut self) {
        self.known.clear();
        self.landing.clear();
        // A commit on its way must not refill what a give-back dropped.
        self.refill.clear();
        self.epoch += 1;
    }

    /// Drops what is known of `ino` (it is changing).
    fn forget(&mut self, ino: InodeId) {
        self.known.remove(&ino);
        self.landing.retain(|(i, _)| *i != ino);
        self.refill.remove(&ino);
        self.epoch += 1;
    }

    /// Whether attributes of `ino` are kept or landing.
    fn holds_attr(&self, ino: InodeId) -> bool {
        self.known.contains_key(&ino) || self.landing.iter().any(|(i, _)| *i == ino)
    }

    /// The inode `name` in `parent` names, if `parent` is held.
    fn named(&self, parent: InodeId, name: &[u8]) -> Option<InodeId> {
        Some(self.dirs.get(&parent)?.names.get(name)?.ino)
    }

    fn remove_dir(&mut self, ino: InodeId) -> Option<Dir> {
        let dir = self.dirs.remove(&ino)?;
        self.names = self.names.saturating_sub(dir.names.len());
        Some(dir)
    }
}

#[derive(Default)]
pub struct Delegations {
    state: Mutex<State>,
    /// A batch reached the meta (or failed).
    pub landed: tokio::sync::Notify,
    /// Something was queued, or inode numbers ran low.
    pub wake: tokio::sync::Notify,
}

/// What a request about to go to the meta must do first.
pub enum Before {
    /// Send these queued changes with it (or before it), then `sent`;
    /// nothing else goes to the meta meanwhile.
    Carry(Vec<DelegatedOp>),
    /// A batch is on its way: wait for `landed` and ask again.
    Wait,
    /// Nothing queued or in flight.
    Clear,
}

fn valid(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

impl Delegations {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it leaves state no worse than a lost
        // update; the meta checks every delegated change again.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease was renewed by a keepalive sent at `sent`.
    pub fn renewed(&self, sent: Instant) {
        self.lock().lease_until = Some(sent + LEASE_TRUSTED);
    }

    /// The meta granted directory `name` of `parent` (empty), with
    /// attributes `attr`; its next name takes cookie `next_cookie`.
    pub fn granted(&self, parent: InodeId, name: &[u8], attr: Attr, next_cookie: u64) {
        let mut st = self.lock();
        let dir = Dir::new((parent, name.to_vec()), attr.clone(), next_cookie);
        if let Some(old) = st.dirs.insert(attr.ino, dir) {
            st.names = st.names.saturating_sub(old.names.len());
        }
    }

    /// The delegated directory that is `name` in `parent`, if any.
    pub fn held_at(&self, parent: InodeId, name: &[u8]) -> Option<InodeId> {
        let st = self.lock();
        st.dirs
            .iter()
            .find(|(_, d)| d.at.0 == parent && d.at.1 == name)
            .map(|(ino, _)| *ino)
    }

    /// Inode numbers `first..first + count` are reserved for this client.
    pub fn reserved(&self, first: u64, count: u32) {
        self.lock().inodes.push_back(first..first + count as u64);
    }

    /// Whether a reservation should be asked for (none left, or few).
    pub fn wants_inodes(&self) -> bool {
        let st = self.lock();
        let left: u64 = st.inodes.iter().map(|r| r.end - r.start).sum();
        !st.dirs.is_empty() && left < RESERVE as u64 / 4
    }

    /// Whether this mount holds as much as it may (`NAMES_MAX`,
    /// `DIRS_MAX`): then it takes no more and gives what it has back.
    pub fn full(&self) -> bool {
        Self::is_full(&self.lock())
    }

    fn is_full(st: &State) -> bool {
        st.dirs.len() >= DIRS_MAX || st.names >= NAMES_MAX
    }

    pub fn holds(&self, dir: InodeId) -> bool {
        self.lock().dirs.contains_key(&dir)
    }

    pub fn held(&self) -> Vec<InodeId> {
        self.lock().dirs.keys().copied().collect()
    }

    /// The directory `ino`, if delegated and the lease is trusted now.
    fn usable(st: &State, ino: InodeId) -> bool {
        st.dirs.contains_key(&ino) && st.lease_until.is_some_and(|t| Instant::now() < t)
    }

    /// LOOKUP of `name` in `parent`.
    pub fn lookup(&self, parent: InodeId, name: &[u8]) -> Lookup {
        let st = self.lock();
        if !Self::usable(&st, parent) || !valid(name) {
            return Lookup::Remote;
        }
        let Some(dir) = st.dirs.get(&parent) else {
            return Lookup::Remote;
        };
        match dir.names.get(name).map(|n| n.ino) {
            None => Lookup::Answer(Err(Errno::ENOENT)),
            // A held directory's own attributes first: they follow its
            // changes answered here (a chmod right after its mkdir, before
            // the batch leaves, left the mkdir's attributes in `made`).
            Some(ino) => match st
                .dirs
                .get(&ino)
                .map(|d| &d.attr)
                .or(st.made.get(&ino))
                .or(st.known.get(&ino))
            {
                Some(a) => Lookup::Answer(Ok(a.clone())),
                None if st.touched.contains(&ino) || st.touched_in_flight.contains(&ino) => {
                    Lookup::Remote
                }
                None => Lookup::Ask(ino),
            },
        }
    }

    /// READDIR of delegated directory `dir` by `c`, answered here (`None`:
    /// ask the meta): up to `limit` entries after cookie `after`, with the
    /// cookies the meta gives them, so the kernel may go on with either.
    pub fn list(&self, c: &Caller, dir: InodeId, after: u64, limit: usize) -> Option<Listed> {
        let st = self.lock();
        if !Self::usable(&st, dir) {
            return None;
        }
        let d = st.dirs.get(&dir)?;
        if !mode_allows(&d.attr, c, 4) {
            // The meta says why not.
            return None;
        }
        if d.unlisted {
            return None;
        }
        let (entries, more) = d.order.page(after, limit);
        Some(Listed {
            parent: d.at.0,
            entries,
            end: !more,
        })
    }

    /// A mark to pass to `learned` with attributes asked for after it.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// The meta said `a` of the file `name` in delegated `parent`, asked
    /// after `epoch`: kept (answering LOOKUP and GETATTR here) unless
    /// something changed since, or it may be reached otherwise (a second
    /// name, a directory).
    pub fn learned(&self, parent: InodeId, name: &[u8], a: &Attr, epoch: u64) {
        let mut st = self.lock();
        let keep = st.epoch == epoch
            && Self::usable(&st, parent)
            && st.named(parent, name) == Some(a.ino)
            && a.kind != FileKind::Dir
            && a.nlink == 1
            && st.linked.len() < LINKED_MAX
            && !st.linked.contains(&a.ino)
            && !st.touched.contains(&a.ino)
            && !st.touched_in_flight.contains(&a.ino);
        if keep {
            st.keep_known(a.clone());
        }
    }

    /// This client is about to send `op`: what is known of the files it
    /// may change goes.
    pub fn changing(&self, op: &WriteOp) {
        self.account(op, Phase::Sending);
    }

    /// `op` was answered with `reply` (`None`: no answer, or an error):
    /// what it may have changed goes again, and a commit's answer is kept
    /// for a file that was kept before it, if nothing else touched it.
    pub fn changed(&self, op: &WriteOp, reply: Option<&NsReply>) {
        self.account(op, Phase::Answered(reply));
    }

    fn account(&self, op: &WriteOp, phase: Phase<'_>) {
        // Even with nothing known: the epoch must move, or a read racing
        // this change could keep what the change is replacing.
        let mut st = self.lock();
        match op.cache_effect() {
            CacheEffect::Commit(ino) => match phase {
                Phase::Sending => {
                    let refill = st.holds_attr(ino);
                    st.forget(ino);
                    if refill {
                        st.refill.insert(ino);
                    }
                }
                Phase::Answered(reply) => {
                    let refill = st.refill.remove(&ino);
                    st.forget(ino);
                    if let (true, Some(NsReply::Attr(a))) = (refill, reply) {
                        let keep = a.ino == ino
                            && a.kind == FileKind::File
                            && a.nlink == 1
                            && !st.linked.contains(&ino)
                            && !st.touched.contains(&ino)
                            && !st.touched_in_flight.contains(&ino);
                        if keep {
                            st.keep_known(a.clone());
                        }
                    }
                }
            },
            CacheEffect::Inode(ino) => st.forget(ino),
            CacheEffect::Link(ino) => {
                if st.linked.len() < LINKED_MAX {
                    st.linked.insert(ino);
                } else {
                    st.forget_known();
                }
                st.forget(ino);
            }
            CacheEffect::Names(names) => {
                for (parent, name) in names {
                    if let Some(ino) = st.named(parent, name) {
                        st.forget(ino);
                    }
                }
            }
            // Its own changes were accounted for as they were answered here;
            // `then` is accounted for with its own answer.
            CacheEffect::Delegated(then) => {
                if let Some(then) = then {
                    drop(st);
                    let phase = match phase {
                        Phase::Sending => Phase::Sending,
                        Phase::Answered(Some(NsReply::DelegatedThen(Some(Ok(r))))) => {
                            Phase::Answered(Some(&**r))
                        }
                        Phase::Answered(_) => Phase::Answered(None),
                    };
                    self.account(then, phase);
                }
            }
            CacheEffect::Nothing => {}
            CacheEffect::Unknown => st.forget_known(),
        }
    }

    /// Attributes of `ino` known here: a delegated directory's, or those of
    /// an inode made here and not yet sent.
    pub fn getattr(&self, ino: InodeId) -> Option<Attr> {
        let st = self.lock();
        if st.lease_until.is_none_or(|t| Instant::now() >= t) {
            return None;
        }
        st.dirs
            .get(&ino)
            .map(|d| d.attr.clone())
            .or_else(|| st.made.get(&ino).cloned())
            .or_else(|| st.known.get(&ino).cloned())
    }

    /// create(2) of a regular file or mkdir(2) by `c`: the new inode's
    /// attributes and the directory's after.
    pub fn make(
        &self,
        c: &Caller,
        parent: InodeId,
        name: &[u8],
        kind: FileKind,
        mode: (u32, u32),
        exclusive: bool,
    ) -> Local<(Attr, Attr)> {
        let mut st = self.lock();
        if !Self::usable(&st, parent)
            || !valid(name)
            || !matches!(kind, FileKind::File | FileKind::Dir)
            || st.queue.len() >= QUEUE_MAX
        {
            return Local::Remote;
        }
        if Self::is_full(&st) {
            // The flusher gives everything back.
            drop(st);
            self.wake.notify_one();
            return Local::Remote;
        }
        let Some(dir) = st.dirs.get(&parent) else {
            return Local::Remote;
        };
        if dir.names.contains_key(name) {
            if exclusive {
                return Local::Answer(Err(Errno::EEXIST));
            }
            // open(O_CREAT) of an existing name: the meta opens it (or
            // says why not).
            return Local::Remote;
        }
        if !mode_allows(&dir.attr, c, 2 | 1) {
            return Local::Remote;
        }
        let dir_attr = dir.attr.clone();
        let Some(ino) = Self::take_inode(&mut st) else {
            return Local::Remote;
        };
        let now = Time::now();
        let (made, after) = predict_make(&dir_attr, c, kind, mode, ino, now);
        let op = match kind {
            FileKind::Dir => WriteOp::Mkdir {
                parent,
                name: name.to_vec(),
                perm: mode.0,
                umask: mode.1,
            },
            _ => WriteOp::MkNod {
                parent,
                name: name.to_vec(),
                kind,
                perm: mode.0,
                umask: mode.1,
                rdev: 0,
                exclusive,
            },
        };
        st.add_name(parent, name, ino, kind);
        if let Some(dir) = st.dirs.get_mut(&parent) {
            dir.attr = after.clone();
        }
        if kind == FileKind::Dir {
            // Made in a delegated directory, it is delegated too (the meta
            // records it so when it applies the mkdir).
            let dir = Dir::new((parent, name.to_vec()), made.clone(), FIRST_COOKIE);
            st.dirs.insert(ino, dir);
        }
        st.made.insert(ino, made.clone());
        self.queue(st, c, now, Some(ino), op);
        Local::Answer(Ok((made, after)))
    }

    /// unlink(2) (`is_dir` false) or rmdir(2) by `c`: the directory's
    /// attributes after.
    pub fn remove(&self, c: &Caller, parent: InodeId, name: &[u8], is_dir: bool) -> Local<Attr> {
        let mut st = self.lock();
        if !Self::usable(&st, parent) || !valid(name) || st.queue.len() >= QUEUE_MAX {
            return Local::Remote;
        }
        let Some(dir) = st.dirs.get(&parent) else {
            return Local::Remote;
        };
        let Some(Named { ino, kind, .. }) = dir.names.get(name).copied() else {
            return Local::Answer(Err(Errno::ENOENT));
        };
        match (is_dir, kind == FileKind::Dir) {
            (true, false) => return Local::Answer(Err(Errno::ENOTDIR)),
            (false, true) => return Local::Answer(Err(Errno::EISDIR)),
            _ => {}
        }
        let sticky = dir.attr.perm & 0o1000 != 0 && c.uid != 0 && c.uid != dir.attr.uid;
        if !mode_allows(&dir.attr, c, 2 | 1) || sticky {
            return Local::Remote;
        }
        if is_dir {
            match st.dirs.get(&ino) {
                Some(child) if !child.names.is_empty() => {
                    return Local::Answer(Err(Errno::ENOTEMPTY))
                }
                Some(_) => {}
                // Not known empty here: the meta knows.
                None => return Local::Remote,
            }
        }
        let now = Time::now();
        let after = predict_remove(&dir.attr, is_dir, now);
        st.remove_name(parent, name);
        if let Some(dir) = st.dirs.get_mut(&parent) {
            dir.attr = after.clone();
        }
        if is_dir {
            st.remove_dir(ino);
        }
        st.made.remove(&ino);
        st.forget(ino);
        st.touched.insert(ino);
        let op = if is_dir {
            WriteOp::Rmdir {
                parent,
                name: name.to_vec(),
            }
        } else {
            WriteOp::Unlink {
                parent,
                name: name.to_vec(),
            }
        };
        self.queue(st, c, now, None, op);
        Local::Answer(Ok(after))
    }

    /// rename(2) by `c` of a file (not a directory) from `name` in `parent`
    /// to `new_name` in `new_parent`, both delegated here, replacing a file
    /// there (unless `no_replace`) or nothing.
    pub fn rename(
        &self,
        c: &Caller,
        (parent, name): (InodeId, &[u8]),
        (new_parent, new_name): (InodeId, &[u8]),
        no_replace: bool,
    ) -> Local<()> {
        let mut st = self.lock();
        if !Self::usable(&st, parent)
            || !Self::usable(&st, new_parent)
            || !valid(name)
            || !valid(new_name)
            || st.queue.len() >= QUEUE_MAX
        {
            return Local::Remote;
        }
        let (Some(from), Some(to)) = (st.dirs.get(&parent), st.dirs.get(&new_parent)) else {
            return Local::Remote;
        };
        // Sticky directories need the files' owners, which the meta knows.
        let plain =
            |d: &Dir| mode_allows(&d.attr, c, 2 | 1) && (d.attr.perm & 0o1000 == 0 || c.uid == 0);
        if !plain(from) || !plain(to) {
            return Local::Remote;
        }
        let Some(src) = from.names.get(name).copied() else {
            return Local::Answer(Err(Errno::ENOENT));
        };
        if src.kind == FileKind::Dir {
            // Its ".." and its delegation move with it: the meta does that.
            return Local::Remote;
        }
        let victim = to.names.get(new_name).copied();
        match victim {
            Some(_) if no_replace => return Local::Answer(Err(Errno::EEXIST)),
            Some(v) if v.kind == FileKind::Dir => return Local::Answer(Err(Errno::EISDIR)),
            // Two names of one inode (POSIX: nothing happens).
            Some(v) if v.ino == src.ino => return Local::Remote,
            _ => {}
        }
        let now = Time::now();
        // As the meta does it: the victim's name goes, then the source's,
        // then the new name takes the next cookie; both directories' times
        // change as for a removal of a file.
        if let Some(v) = victim {
            st.remove_name(new_parent, new_name);
            st.made.remove(&v.ino);
            st.forget(v.ino);
            st.touched.insert(v.ino);
        }
        st.forget(src.ino);
        st.remove_name(parent, name);
        st.add_name(new_parent, new_name, src.ino, src.kind);
        for d in [parent, new_parent] {
            if let Some(dir) = st.dirs.get_mut(&d) {
                dir.attr = predict_remove(&dir.attr, false, now);
            }
            if parent == new_parent {
                break;
            }
        }
        // The file's ctime is now; its other attributes stay.
        match st.made.get_mut(&src.ino) {
            Some(a) => a.ctime = now,
            None => {
                st.touched.insert(src.ino);
            }
        }
        let op = WriteOp::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            mode: if no_replace {
                RenameMode::NoReplace
            } else {
                RenameMode::Replace
            },
        };
        self.queue(st, c, now, None, op);
        Local::Answer(Ok(()))
    }

    /// chmod/chown/utimes of delegated directory `ino` itself by `c`: its
    /// attributes after, if the meta's answer is certain.
    pub fn setattr(&self, c: &Caller, ino: InodeId, set: &SetAttr) -> Local<Attr> {
        let mut st = self.lock();
        if !Self::usable(&st, ino) || st.queue.len() >= QUEUE_MAX {
            return Local::Remote;
        }
        let now = Time::now();
        let Some(after) = st
            .dirs
            .get(&ino)
            .and_then(|d| predict_dir_setattr(&d.attr, c, set, now))
        else {
            return Local::Remote;
        };
        if let Some(d) = st.dirs.get_mut(&ino) {
            d.attr = after.clone();
        }
        if let Some(m) = st.made.get_mut(&ino) {
            *m = after.clone();
        }
        let op = WriteOp::SetAttr {
            ino,
            set: set.clone(),
        };
        self.queue(st, c, now, None, op);
        Local::Answer(Ok(after))
    }

    fn take_inode(st: &mut State) -> Option<InodeId> {
        while let Some(r) = st.inodes.front_mut() {
            if let Some(n) = r.next() {
                return Some(InodeId(n));
            }
            st.inodes.pop_front();
        }
        None
    }

    /// Queues a change answered here (releasing the state) and wakes the
    /// flusher.
    fn queue(
        &self,
        mut st: std::sync::MutexGuard<'_, State>,
        c: &Caller,
        now: Time,
        ino: Option<InodeId>,
        op: WriteOp,
    ) {
        if st.queue.is_empty() {
            st.first_queued = Some(Instant::now());
        }
        st.queue.push(DelegatedOp {
            caller: c.clone(),
            now,
            ino,
            op,
        });
        drop(st);
        self.wake.notify_one();
    }

    /// This client's own change made `name` in delegated `parent` through
    /// the meta (a case not answered here): note it.
    pub fn note_made(&self, parent: InodeId, name: &[u8], attr: &Attr, parent_attr: &Attr) {
        let mut st = self.lock();
        st.add_name(parent, name, attr.ino, attr.kind);
        if let Some(dir) = st.dirs.get_mut(&parent) {
            dir.attr = parent_attr.clone();
        }
    }

    /// This client's own change removed `name` (a directory if `is_dir`)
    /// from `parent` through the meta.
    pub fn note_removed(&self, parent: InodeId, name: &[u8], is_dir: bool, parent_attr: &Attr) {
        let mut st = self.lock();
        if st.remove_name(parent, name).is_some() {
            if let Some(dir) = st.dirs.get_mut(&parent) {
                dir.attr = parent_attr.clone();
            }
        }
        if !is_dir {
            return;
        }
        // A delegated directory removed through the meta is gone (the meta
        // forgot its delegation with it).
        let gone: Vec<InodeId> = st
            .dirs
            .iter()
            .filter(|(_, d)| d.at.0 == parent && d.at.1 == name)
            .map(|(ino, _)| *ino)
            .collect();
        for ino in gone {
            st.remove_dir(ino);
        }
    }

    /// Stops answering for `dirs` (the meta asked for them, or a change
    /// this client sends would make its picture of them wrong): those it
    /// held, to name in a `ReturnDelegations` sent behind the queue.
    pub fn give_up(&self, dirs: &[InodeId]) -> Vec<InodeId> {
        let mut st = self.lock();
        st.forget_known();
        dirs.iter()
            .filter(|d| st.remove_dir(**d).is_some())
            .copied()
            .collect()
    }

    /// Stops answering for everything (a batch was refused or lost: this
    /// client's picture may be wrong).
    pub fn give_up_all(&self) -> Vec<InodeId> {
        let mut st = self.lock();
        st.made.clear();
        st.forget_known();
        st.names = 0;
        st.dirs.drain().map(|(d, _)| d).collect()
    }

    /// What a request to the meta must do first; `Carry` counts a batch in
    /// flight until `sent`.
    pub fn before_remote(&self) -> Before {
        let mut st = self.lock();
        if st.in_flight {
            return Before::Wait;
        }
        if !st.queue.is_empty() {
            st.in_flight = true;
            st.first_queued = None;
            st.touched_in_flight = std::mem::take(&mut st.touched);
            let ops = std::mem::take(&mut st.queue);
            // The meta knows these once the batch lands; anything asked
            // about them from now on waits for it and asks the meta.
            for op in &ops {
                if let Some(a) = op.ino.and_then(|ino| st.made.remove(&ino)) {
                    if a.kind != FileKind::Dir {
                        st.landing.push((a.ino, a));
                    }
                }
            }
            return Before::Carry(ops);
        }
        Before::Clear
    }

    /// A batch from `before_remote` landed (the meta applied it) or failed.
    pub fn sent(&self, landed: bool) {
        let mut st = self.lock();
        st.in_flight = false;
        let landing = std::mem::take(&mut st.landing);
        if landed {
            // The meta made them as predicted; nothing this client sent
            // since changed them (`changing` takes them out of `landing`),
            // and one removed or renamed meanwhile is touched.
            for (ino, a) in landing {
                if !st.touched.contains(&ino) && !st.touched_in_flight.contains(&ino) {
                    st.keep_known(a);
                }
            }
        }
        st.touched_in_flight.clear();
        drop(st);
        self.landed.notify_waiters();
    }

    /// Whether the queue should go now (old or long enough), and if not,
    /// how long until it should.
    pub fn flush_due(&self) -> Result<(), Option<Duration>> {
        let st = self.lock();
        match st.first_queued {
            None => Err(None),
            Some(_) if st.queue.len() >= QUEUE_MAX / 4 => Ok(()),
            Some(t) => {
                let age = t.elapsed();
                if age >= FLUSH_AFTER {
                    Ok(())
                } else {
                    Err(Some(FLUSH_AFTER - age))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_attr(ino: u64, perm: u32, uid: u32) -> Attr {
        Attr {
            ino: InodeId(ino),
            kind: FileKind::Dir,
            perm,
            uid,
            gid: uid,
            size: 0,
            nlink: 2,
            rdev: 0,
            atime: Time::default(),
            mtime: Time::default(),
            ctime: Time::default(),
            crtime: Time::default(),
        }
    }

    fn user(uid: u32) -> Caller {
        Caller {
            uid,
            gid: uid,
            groups: vec![],
        }
    }

    fn make_files(d: &Delegations, c: &Caller, dir: InodeId, names: &[&str]) {
        for n in names {
            let made = d.make(c, dir, n.as_bytes(), FileKind::File, (0o644, 0), true);
            assert!(matches!(made, Local::Answer(Ok(_))), "{n}");
        }
    }

    fn named_cookies(page: &NamesPage) -> Vec<(String, u64)> {
        page.iter()
            .map(|e| (String::from_utf8_lossy(e.name).into_owned(), e.cookie))
            .collect()
    }

    fn ready() -> Delegations {
        let d = Delegations::default();
        d.renewed(Instant::now());
        d.granted(
            InodeId(1),
            b"d",
            dir_attr(10, 0o755, 1000),
            FIRST_COOKIE + 5,
        );
        d.reserved(100, 8);
        d
    }

    #[test]
    fn names_made_here_are_answered_here_and_queued_in_order() {
        let d = ready();
        let me = user(1000);
        let parent = InodeId(10);
        assert!(matches!(
            d.lookup(parent, b"a"),
            Lookup::Answer(Err(Errno::ENOENT))
        ));
        let Local::Answer(Ok((a, dir))) =
            d.make(&me, parent, b"a", FileKind::File, (0o644, 0o022), true)
        else {
            panic!("create answered here");
        };
        assert_eq!(
            (a.ino, a.perm, a.uid, dir.nlink),
            (InodeId(100), 0o644, 1000, 2)
        );
        assert!(matches!(d.lookup(parent, b"a"), Lookup::Answer(Ok(x)) if x == a));
        assert!(matches!(
            d.make(&me, parent, b"a", FileKind::File, (0o644, 0), true),
            Local::Answer(Err(Errno::EEXIST))
        ));
        let Local::Answer(Ok((s, dir))) =
            d.make(&me, parent, b"s", FileKind::Dir, (0o755, 0), true)
        else {
            panic!("mkdir answered here");
        };
        assert_eq!(dir.nlink, 3);
        // The new directory is answered for too.
        assert!(matches!(
            d.make(&me, s.ino, b"in", FileKind::File, (0o600, 0), true),
            Local::Answer(Ok(_))
        ));
        assert!(matches!(
            d.remove(&me, parent, b"s", true),
            Local::Answer(Err(Errno::ENOTEMPTY))
        ));
        assert!(matches!(
            d.remove(&me, parent, b"a", true),
            Local::Answer(Err(Errno::ENOTDIR))
        ));
        assert!(matches!(
            d.remove(&me, parent, b"a", false),
            Local::Answer(Ok(_))
        ));
        let Before::Carry(ops) = d.before_remote() else {
            panic!("queued changes go first");
        };
        let kinds: Vec<&str> = ops
            .iter()
            .map(|o| match &o.op {
                WriteOp::MkNod { .. } => "create",
                WriteOp::Mkdir { .. } => "mkdir",
                WriteOp::Unlink { .. } => "unlink",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["create", "mkdir", "create", "unlink"]);
        // One batch at a time: what is queued meanwhile waits for it.
        assert!(matches!(
            d.make(&me, parent, b"b", FileKind::File, (0o644, 0), true),
            Local::Answer(Ok(_))
        ));
        assert!(matches!(d.before_remote(), Before::Wait));
        d.sent(true);
        assert!(matches!(d.before_remote(), Before::Carry(ops) if ops.len() == 1));
        d.sent(true);
        assert!(matches!(d.before_remote(), Before::Clear));
        // Landed as predicted: still answered here, now from what is known.
        assert!(matches!(d.lookup(s.ino, b"in"), Lookup::Answer(Ok(_))));
    }

    #[test]
    fn a_listing_answered_here_has_the_cookies_the_meta_gives() {
        let d = ready();
        let me = user(1000);
        let parent = InodeId(10);
        let first = FIRST_COOKIE + 5;
        make_files(&d, &me, parent, &["a", "b", "c", "d"]);
        assert!(matches!(
            d.remove(&me, parent, b"b", false),
            Local::Answer(Ok(_))
        ));
        // A name made through the meta takes the next cookie too.
        let mut link = dir_attr(50, 0o777, 1000);
        link.kind = FileKind::Symlink;
        d.note_made(parent, b"e", &link, &dir_attr(10, 0o755, 1000));
        let names = |l: &Listed| named_cookies(&l.entries);
        let all = d.list(&me, parent, 2, 100).expect("held");
        assert_eq!(
            names(&all),
            [
                ("a", first),
                ("c", first + 2),
                ("d", first + 3),
                ("e", first + 4)
            ]
            .map(|(n, c)| (n.to_string(), c))
        );
        assert!(all.end);
        assert_eq!(all.parent, InodeId(1));
        assert_eq!(all.entries.get(3).map(|e| e.kind), Some(FileKind::Symlink));
        // Pages: after a cookie, at most `limit`, and whether more follow.
        let page = d.list(&me, parent, first, 2).expect("held");
        assert_eq!(
            names(&page),
            [("c", first + 2), ("d", first + 3)].map(|(n, c)| (n.to_string(), c))
        );
        assert!(!page.end);
        let last = d.list(&me, parent, first + 3, 2).expect("held");
        assert!(last.end && last.entries.len() == 1);
        assert!(d
            .list(&me, parent, first + 4, 2)
            .expect("held")
            .entries
            .is_empty());
        // Not readable by the caller, or not held: the meta answers.
        assert!(d.list(&user(2000), InodeId(10), 2, 10).is_some());
        let private = Delegations::default();
        private.renewed(Instant::now());
        private.granted(InodeId(1), b"p", dir_attr(12, 0o700, 1000), FIRST_COOKIE);
        assert!(private.list(&user(2000), InodeId(12), 2, 10).is_none());
        assert!(d.list(&me, InodeId(11), 2, 10).is_none());
    }

    #[test]
    fn a_held_directorys_own_change_is_what_its_parent_answers() {
        let d = ready();
        let me = user(1000);
        let dir = InodeId(10);
        let Local::Answer(Ok((sub, _))) = d.make(&me, dir, b"sub", FileKind::Dir, (0o755, 0), true)
        else {
            panic!("mkdir answered here");
        };
        // chmod through another name (a symlink), before the mkdir is sent.
        let chmod = SetAttr {
            perm: Some(0o700),
            ..SetAttr::default()
        };
        assert!(matches!(
            d.setattr(&me, sub.ino, &chmod),
            Local::Answer(Ok(_))
        ));
        let Lookup::Answer(Ok(a)) = d.lookup(dir, b"sub") else {
            panic!("sub is known here");
        };
        assert_eq!(a.perm, 0o700, "the lookup through its name");
        assert_eq!(d.getattr(sub.ino).map(|a| a.perm), Some(0o700));
    }

    #[test]
    fn a_file_renamed_here_takes_the_next_cookie_and_replaces_a_file() {
        let d = ready();
        let me = user(1000);
        let dir = InodeId(10);
        let first = FIRST_COOKIE + 5;
        make_files(&d, &me, dir, &["a", "b", "c"]);
        let made = d.make(&me, dir, b"sub", FileKind::Dir, (0o755, 0), true);
        assert!(matches!(made, Local::Answer(Ok(_))));
        let sub = InodeId(103);
        let Lookup::Answer(Ok(a)) = d.lookup(dir, b"a") else {
            panic!("a made here");
        };
        // a replaces c; b moves into sub.
        assert!(matches!(
            d.rename(&me, (dir, b"a"), (dir, b"c"), false),
            Local::Answer(Ok(()))
        ));
        assert!(matches!(
            d.rename(&me, (dir, b"b"), (sub, b"b2"), true),
            Local::Answer(Ok(()))
        ));
        let names = |dir| named_cookies(&d.list(&me, dir, 2, 100).expect("held").entries);
        assert_eq!(
            names(dir),
            [("sub", first + 3), ("c", first + 4)].map(|(n, c)| (n.to_string(), c))
        );
        assert_eq!(names(sub), [("b2".to_string(), FIRST_COOKIE)]);
        let Lookup::Answer(Ok(c)) = d.lookup(dir, b"c") else {
            panic!("c is a's inode, made here");
        };
        assert_eq!(c.ino, a.ino);
        assert!(matches!(
            d.lookup(dir, b"a"),
            Lookup::Answer(Err(Errno::ENOENT))
        ));
        // What is certain is answered; directories and the rest go to the meta.
        let answer = |from: &[u8], to: &[u8], no_replace| match d.rename(
            &me,
            (dir, from),
            (dir, to),
            no_replace,
        ) {
            Local::Answer(r) => Some(r.err()),
            Local::Remote => None,
        };
        assert_eq!(answer(b"gone", b"x", false), Some(Some(Errno::ENOENT)));
        assert_eq!(answer(b"c", b"sub", false), Some(Some(Errno::EISDIR)));
        assert!(matches!(
            d.make(&me, dir, b"e", FileKind::File, (0o644, 0), true),
            Local::Answer(Ok(_))
        ));
        assert_eq!(answer(b"c", b"e", true), Some(Some(Errno::EEXIST)));
        assert_eq!(answer(b"sub", b"sub2", false), None);
        assert!(matches!(
            d.rename(&user(2000), (dir, b"c"), (dir, b"z"), false),
            Local::Remote
        ));
        let Before::Carry(ops) = d.before_remote() else {
            panic!("queued");
        };
        let renames = ops
            .iter()
            .filter(|o| matches!(o.op, WriteOp::Rename { .. }))
            .count();
        assert_eq!(renames, 2);
    }

    /// (Long: one scenario, each step checking what the one before it
    /// left, reads best top to bottom.)
    #[test]
    fn attributes_of_files_here_are_kept_until_this_client_changes_them() {
        let d = ready();
        let me = user(1000);
        let dir = InodeId(10);
        make_files(&d, &me, dir, &["new", "old"]);
        let Before::Carry(_) = d.before_remote() else {
            panic!("queued");
        };
        // A commit of "new" rides with the batch: its predicted attributes
        // are not kept when the batch lands; "old"'s are.
        let commit = |ino| WriteOp::CommitSlices {
            ino,
            slices: vec![],
            size_at_least: 0,
        };
        d.changing(&commit(InodeId(100)));
        d.sent(true);
        assert!(matches!(d.lookup(dir, b"new"), Lookup::Ask(_)));
        let Lookup::Answer(Ok(old)) = d.lookup(dir, b"old") else {
            panic!("landed as predicted");
        };
        assert_eq!(d.getattr(old.ino), Some(old.clone()));

        // What the meta says of "new" is kept, unless something changed
        // meanwhile, or the file can be reached otherwise.
        let mut new = old.clone();
        new.ino = InodeId(100);
        new.size = 5;
        let before = d.epoch();
        d.changing(&commit(InodeId(100)));
        d.learned(dir, b"new", &new, before);
        assert!(
            matches!(d.lookup(dir, b"new"), Lookup::Ask(_)),
            "raced a change"
        );
        let mut linked = new.clone();
        linked.nlink = 2;
        d.learned(dir, b"new", &linked, d.epoch());
        assert!(matches!(d.lookup(dir, b"new"), Lookup::Ask(_)), "two names");
        d.learned(dir, b"old", &new, d.epoch());
        assert!(
            matches!(d.lookup(dir, b"old"), Lookup::Answer(Ok(a)) if a == old),
            "not its name"
        );
        d.learned(dir, b"new", &new, d.epoch());
        assert!(matches!(d.lookup(dir, b"new"), Lookup::Answer(Ok(a)) if a == new));

        // A commit's answer takes the place of what it changed, unless
        // another change overlapped it; a commit with no answer keeps nothing.
        let mut written = new.clone();
        written.size = 4096;
        d.changing(&commit(new.ino));
        assert!(
            matches!(d.lookup(dir, b"new"), Lookup::Ask(_)),
            "on its way"
        );
        d.changed(&commit(new.ino), Some(&NsReply::Attr(written.clone())));
        assert!(matches!(d.lookup(dir, b"new"), Lookup::Answer(Ok(a)) if a == written));
        let chmod = WriteOp::SetAttr {
            ino: new.ino,
            set: SetAttr::default(),
        };
        d.changing(&commit(new.ino));
        d.changing(&chmod);
        d.changed(&commit(new.ino), Some(&NsReply::Attr(written.clone())));
        assert!(
            matches!(d.lookup(dir, b"new"), Lookup::Ask(_)),
            "overlapped"
        );
        d.changed(&chmod, None);
        d.learned(dir, b"new", &new, d.epoch());
        d.changing(&commit(new.ino));
        d.changed(&commit(new.ino), None);
        assert!(matches!(d.lookup(dir, b"new"), Lookup::Ask(_)), "no answer");
        // Nor after a give-back while the commit was on its way.
        d.learned(dir, b"new", &new, d.epoch());
        d.changing(&commit(new.ino));
        d.give_up(&[InodeId(999)]);
        d.changed(&commit(new.ino), Some(&NsReply::Attr(written.clone())));
        assert!(d.getattr(new.ino).is_none(), "given back meanwhile");
        d.learned(dir, b"new", &new, d.epoch());

        // This client's changes drop it: a chmod, a removal, a give-back.
        d.changing(&WriteOp::SetAttr {
            ino: new.ino,
            set: SetAttr::default(),
        });
        assert!(matches!(d.lookup(dir, b"new"), Lookup::Ask(_)));
        // Once given a second name, never kept again, even with one name
        // left (another client may have it open through the other).
        d.changing(&WriteOp::Link {
            ino: new.ino,
            new_parent: InodeId(1),
            new_name: b"elsewhere".to_vec(),
        });
        d.learned(dir, b"new", &new, d.epoch());
        assert!(
            matches!(d.lookup(dir, b"new"), Lookup::Ask(_)),
            "was linked"
        );
        assert!(matches!(
            d.remove(&me, dir, b"new", false),
            Local::Answer(Ok(_))
        ));
        assert!(d.getattr(new.ino).is_none());
        d.give_up(&[dir]);
        assert!(d.getattr(old.ino).is_none());
        // A batch that failed keeps nothing.
        let d = ready();
        make_files(&d, &me, dir, &["x"]);
        let Before::Carry(_) = d.before_remote() else {
            panic!("queued");
        };
        d.sent(false);
        assert!(d.getattr(InodeId(100)).is_none());
    }

    #[test]
    fn others_and_strangers_go_to_the_meta() {
        let d = ready();
        let parent = InodeId(10);
        // Not allowed by the mode bits: the meta answers (EACCES).
        assert!(matches!(
            d.make(&user(2000), parent, b"x", FileKind::File, (0o644, 0), true),
            Local::Remote
        ));
        // Not a delegated directory.
        assert!(matches!(d.lookup(InodeId(11), b"x"), Lookup::Remote));
        // Device nodes, and names the meta must judge.
        assert!(matches!(
            d.make(
                &user(1000),
                parent,
                b"x",
                FileKind::CharDev,
                (0o644, 0),
                true
            ),
            Local::Remote
        ));
        assert!(matches!(d.lookup(parent, b"a/b"), Lookup::Remote));
        // The lease is not trusted any more.
        let stale = Delegations::default();
        stale.renewed(Instant::now() - LEASE_TRUSTED);
        stale.granted(InodeId(1), b"d", dir_attr(10, 0o755, 1000), FIRST_COOKIE);
        assert!(matches!(stale.lookup(parent, b"x"), Lookup::Remote));
    }

    #[test]
    fn a_mount_holds_a_bounded_number_of_names() {
        let d = ready();
        d.reserved(1000, NAMES_MAX as u32 + 10);
        let me = user(1000);
        let mut made = 0;
        loop {
            let name = format!("n{made}");
            match d.make(
                &me,
                InodeId(10),
                name.as_bytes(),
                FileKind::File,
                (0o644, 0),
                true,
            ) {
                Local::Answer(Ok(_)) => made += 1,
                Local::Remote => break,
                Local::Answer(Err(e)) => panic!("{e}"),
            }
            if let Before::Carry(_) = d.before_remote() {
                d.sent(true);
            }
            assert!(made <= NAMES_MAX, "no bound");
        }
        assert_eq!(made, NAMES_MAX);
        assert!(d.full());
    }

    #[test]
    fn no_inode_numbers_means_the_meta_makes_it() {
        let d = ready();
        let me = user(1000);
        for i in 0..8u8 {
            assert!(matches!(
                d.make(
                    &me,
                    InodeId(10),
                    &[b'f', b'0' + i],
                    FileKind::File,
                    (0o644, 0),
                    true
                ),
                Local::Answer(Ok(_))
            ));
        }
        assert!(d.wants_inodes());
        assert!(matches!(
            d.make(&me, InodeId(10), b"g", FileKind::File, (0o644, 0), true),
            Local::Remote
        ));
    }
}
