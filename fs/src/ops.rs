//! `fuser::Filesystem` for sparefs. Every callback: take the caller, call
//! the client (`meta_op!` on fuser's thread for metadata, `spawn!` onto the
//! runtime for data and locks), map the error, reply.

use crate::convert::{self, errno, file_attr};
use crate::reply::answer;
use fuser::{
    AccessFlags, Errno, FileHandle, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use sparefs_client::deleg::{Local, Lookup};
use sparefs_client::{Attrs, ClientError, DataClient, MetaClient, OpenFile, OpenFiles};
use sparefs_proto::limits::READDIRPLUS_ENTRIES_MAX;
use sparefs_proto::namespace::*;
use sparefs_proto::{Errno as PErrno, InodeId};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Attribute and entry cache lifetime in the kernel: short, so two mounts
/// see each other's changes quickly (close-to-open for data).
const TTL: Duration = Duration::from_secs(1);
/// How often the mount renews its lock lease (the meta's lease is 10 s).
const LEASE_RENEW: Duration = Duration::from_secs(2);
/// How often a blocking lock request (F_SETLKW, flock without LOCK_NB) retries.
const LOCK_RETRY: Duration = Duration::from_millis(50);
/// Longest an unmount waits to hand delegated directories back.
const UNMOUNT_GIVE_BACK: Duration = Duration::from_secs(3);

/// The kernel's file handles (the open files behind them are the client's
/// `OpenFiles`).
#[derive(Default)]
struct Handles {
    /// fh -> the inode's shared open file.
    by_fh: HashMap<u64, Arc<OpenFile>>,
    /// Handles opened for writing: a size change through one carries the
    /// access granted at open (`WriteOp::Truncate`).
    writable: HashSet<u64>,
}

pub struct SpareFs {
    meta: Arc<MetaClient>,
    data: Arc<DataClient>,
    rt: tokio::runtime::Handle,
    handles: Arc<Mutex<Handles>>,
    open: Arc<OpenFiles>,
    /// Which attributes answer a GETATTR (`sparefs_client::attrs`).
    attrs: Arc<Attrs>,
    next_fh: AtomicU64,
    /// (inode, lock owner) pairs that took a lock through this mount: the
    /// kernel does not unlock remote locks on close, so flush and release
    /// must, and only these need a meta round trip.
    lockers: Arc<Mutex<std::collections::HashSet<(u64, u64)>>>,
    /// The lock owners that locked through each open handle. The kernel
    /// never unlocks OFD locks of a file whose locks the filesystem keeps
    /// (its own lock list is empty), and names no owner at release but a
    /// flock's: release unlocks every owner that locked through the handle.
    lock_owners_by_fh: Arc<Mutex<HashMap<u64, HashSet<u64>>>>,
    dirs: Arc<crate::dirs::OpenDirs>,
    xattrs: Arc<crate::xattrs::XattrCache>,
    /// Tells the kernel to drop cached attributes (set once mounted).
    pub notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
}

type R<T> = Result<T, ClientError>;

/// What a callback that names an entry hands its task: the meta client, the
/// caller, the name's bytes and the mount's attribute answers.
type EntryCall = (Arc<MetaClient>, Caller, Vec<u8>, Arc<Attrs>);

fn caller(req: &Request) -> Caller {
    convert::caller(req.uid(), req.gid(), req.pid())
}

fn name(n: &OsStr) -> Vec<u8> {
    n.as_bytes().to_vec()
}

/// The new inode's attributes from the answer to a create, mkdir,
/// symlink or link, keeping its directory's for the kernel's next GETATTR.
/// A name made through the meta in `dir`: the directory's new attributes
/// are kept for the kernel's next GETATTR, and a directory delegated here
/// learns the name.
fn made(attrs: &Attrs, meta: &MetaClient, dir: InodeId, name: &[u8], r: NsReply) -> R<Attr> {
    if let NsReply::Made { attr, parent } = &r {
        attrs.changed(parent.clone());
        if let Some(d) = meta.delegations() {
            d.note_made(dir, name, attr, parent);
        }
    }
    sparefs_client::meta::attr(r)
}

/// Entries asked of the meta per READDIRPLUS (each costs the meta an inode
/// read). The kernel asks for the first page of a listing this way: 128
/// covers most directories of a source tree whole (rm -rf then needs no
/// LOOKUP in them). The 128 KiB buffer of the 6.18 kernel here holds ~800, an older
/// kernel's 4 KiB ~25 (it asks again for the rest).
const READDIRPLUS_PAGE: u32 = READDIRPLUS_ENTRIES_MAX;

/// Runs a callback's work on the runtime, off fuser's thread: for data
/// and lock operations, which may wait long (a slow chunkserver, a lock
/// held elsewhere) and must not tie up the threads other requests need.
macro_rules! spawn {
    ($self:ident, $body:expr) => {
        $self.rt.spawn($body);
    };
}

/// Runs a metadata callback's work on fuser's own thread (one thread
/// hand-over less per request: on a small host that is a fifth of a
/// lookup). Metadata calls are bounded by the mount's meta timeout, and
/// fuser runs `FUSER_THREADS` threads, so others are served meanwhile.
macro_rules! meta_op {
    ($self:ident, $body:expr) => {
        sparefs_client::lane::enable_for_this_thread();
        $self.rt.block_on($body);
    };
}

/// A metadata callback that must first commit an open file's held changes
/// (`SpareFs::holding`), which is data work: then on the runtime.
macro_rules! meta_op_after {
    ($self:ident, $holds:expr, $body:expr) => {
        if $holds {
            spawn!($self, $body);
        } else {
            meta_op!($self, $body);
        }
    };
}

impl SpareFs {
    /// `delegations`: let the meta delegate directories this mount makes
    /// (docs/delegation.md), answering for them here.
    pub fn new(
        meta: Vec<String>,
        timeout: Duration,
        delegations: bool,
        tls: Option<Arc<sparefs_wire::tls::Tls>>,
        rt: tokio::runtime::Handle,
    ) -> SpareFs {
        let mut meta = MetaClient::new(meta, Caller::ROOT).with_deadline(timeout);
        if let Some(tls) = tls {
            meta = meta.with_tls(tls);
        }
        if delegations {
            meta = meta.with_delegations();
        }
        let meta = Arc::new(meta);
        let data = Arc::new(DataClient::new(meta.clone()));
        let open = Arc::new(OpenFiles::default());
        SpareFs {
            attrs: Arc::new(Attrs::new(meta.clone(), open.clone())),
            open,
            meta,
            data,
            rt,
            handles: Arc::default(),
            next_fh: AtomicU64::new(1),
            lockers: Arc::new(Mutex::new(std::collections::HashSet::new())),
            lock_owners_by_fh: Arc::new(Mutex::new(HashMap::new())),
            dirs: Arc::new(crate::dirs::OpenDirs::default()),
            xattrs: Arc::new(crate::xattrs::XattrCache::default()),
            notifier: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Releases every lock `owner` holds on `ino`, if it ever took one here.
    fn unlock_all(
        &self,
        ino: INodeNo,
        owner: LockOwner,
    ) -> Option<impl std::future::Future<Output = R<()>> + Send + 'static> {
        let took = self.lockers.lock().ok()?.remove(&(ino.0, owner.0));
        if !took {
            return None;
        }
        let meta = self.meta.clone();
        let lock = LockSpec {
            client: meta.id(),
            owner: owner.0,
            start: 0,
            end: u64::MAX,
            kind: LockKind::Unlock,
            pid: 0,
        };
        Some(async move {
            meta.write(WriteOp::SetLock {
                ino: InodeId(ino.0),
                lock,
            })
            .await
            .map(|_| ())
        })
    }

    /// The open file of `ino` if it holds attribute changes back: an
    /// xattr operation commits them first (a mode change rewrites the
    /// access ACL, which the kernel may read next).
    fn holding(&self, ino: INodeNo) -> Option<Arc<OpenFile>> {
        self.open.holding(InodeId(ino.0))
    }

    fn handle(&self, fh: FileHandle) -> Option<Arc<OpenFile>> {
        self.handles.lock().ok()?.by_fh.get(&fh.0).cloned()
    }

    /// The meta's word on a file (`a`) as the kernel gets it from this
    /// mount (`Attrs::shown`).
    fn seen(attrs: &Attrs, a: &Attr) -> fuser::FileAttr {
        let shown = attrs.shown(a);
        file_attr(&shown, shown.size)
    }

    /// A setattr this mount answers without the meta: in a directory
    /// delegated here, or behind an open file's buffered writes (tar:
    /// write, futimens, fchown, fchmod, close), committed with them. None:
    /// the meta decides (a delegated directory it could not decide went
    /// back to the meta first).
    fn setattr_here(
        &self,
        c: &Caller,
        ino: InodeId,
        set: &SetAttr,
        file: Option<&Arc<OpenFile>>,
    ) -> Option<R<fuser::FileAttr>> {
        // A mode change rewrites the access ACL. Times and owners leave
        // xattrs as they are (the meta keeps security.capability across
        // chown), so the kernel's next capability check before a write
        // finds its answer cached. The kernel takes the new attributes
        // from this answer, so none kept from an earlier change may follow.
        let forget = || {
            if set.perm.is_some() {
                self.xattrs.forget_acls(ino.0);
            }
            self.attrs.forget(ino);
        };
        if let Some(d) = self.meta.delegations() {
            match d.setattr(c, ino, set) {
                Local::Answer(Ok(a)) => {
                    forget();
                    return Some(Ok(file_attr(&a, a.size)));
                }
                Local::Answer(Err(e)) => return Some(Err(ClientError::Errno(e))),
                Local::Remote => self.give_back(&[ino]),
            }
        }
        let f = file?;
        let a = f.hold_setattr(c, set)?;
        forget();
        // Not `seen`: that would note the prediction as the meta's word.
        Some(Ok(file_attr(&a, a.size.max(f.known_size()))))
    }

    /// The write a setattr sends the meta: a size change alone through a
    /// descriptor open for writing is an ftruncate, which carries the
    /// access granted at open.
    fn setattr_op(&self, ino: InodeId, set: SetAttr, fh: Option<FileHandle>) -> WriteOp {
        let through_writable = fh.is_some_and(|fh| {
            self.handles
                .lock()
                .is_ok_and(|h| h.writable.contains(&fh.0))
        });
        match set.size {
            Some(size)
                if through_writable
                    && set
                        == (SetAttr {
                            size: Some(size),
                            ..SetAttr::default()
                        }) =>
            {
                WriteOp::Truncate { ino, size }
            }
            _ => WriteOp::SetAttr { ino, set },
        }
    }

    /// See `EntryCall`.
    fn entry_call(&self, req: &Request, n: &OsStr) -> EntryCall {
        (self.meta.clone(), caller(req), name(n), self.attrs.clone())
    }

    fn reply_entry(attrs: &Attrs, reply: ReplyEntry, r: R<Attr>) {
        answer(reply, r, |reply, a| {
            reply.entry(&TTL, &Self::seen(attrs, &a), Generation(0))
        })
    }

    /// unlink or rmdir: the answer carries the directory's new attributes,
    /// kept for the kernel's next GETATTR of it.
    fn remove(&self, req: &Request, op: WriteOp, reply: ReplyEmpty) {
        let (meta, c, attrs) = (self.meta.clone(), caller(req), self.attrs.clone());
        let (parent, name, is_dir) = match &op {
            WriteOp::Unlink { parent, name } => (*parent, name.clone(), false),
            WriteOp::Rmdir { parent, name } => (*parent, name.clone(), true),
            _ => return reply.error(Errno::EINVAL),
        };
        if let Some(d) = meta.delegations() {
            match d.remove(&c, parent, &name, is_dir) {
                Local::Answer(Ok(_)) => return reply.ok(),
                Local::Answer(Err(e)) => return reply.error(errno(&ClientError::Errno(e))),
                Local::Remote => {}
            }
        }
        meta_op!(self, async move {
            answer(reply, meta.write_as(c, op).await, |reply, r| {
                if let NsReply::Attr(dir) = r {
                    if let Some(d) = meta.delegations() {
                        d.note_removed(parent, &name, is_dir, &dir);
                    }
                    attrs.changed(dir);
                }
                reply.ok()
            })
        });
    }

    /// Gives back the directories among `dirs` delegated here before a
    /// change the mount does not predict (a rename, the attributes or
    /// xattrs of the directory itself) goes to the meta.
    /// Sets or removes an extended attribute: after the file's buffered
    /// writes (a held file settles first), and forgetting what this mount
    /// cached of the file's attributes and xattrs.
    fn xattr_change(&self, req: &Request, ino: INodeNo, op: WriteOp, reply: ReplyEmpty) {
        self.give_back(&[InodeId(ino.0)]);
        let (meta, c) = (self.meta.clone(), caller(req));
        let (cache, attrs, held) = (self.xattrs.clone(), self.attrs.clone(), self.holding(ino));
        let holds = held.is_some();
        meta_op_after!(self, holds, async move {
            if let Some(f) = held {
                f.settle().await;
            }
            let r = meta.write_as(c, op).await;
            cache.forget(ino.0);
            attrs.forget(InodeId(ino.0));
            answer(reply, r, |reply, _| reply.ok())
        });
    }

    /// The lock a getlk/setlk names, held by this mount's client (`None`:
    /// not a lock type).
    fn lock_spec(
        &self,
        owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
    ) -> Option<LockSpec> {
        Some(LockSpec {
            client: self.meta.id(),
            owner: owner.0,
            start,
            end,
            kind: lock_kind(typ)?,
            pid,
        })
    }

    fn give_back(&self, dirs: &[InodeId]) {
        let Some(d) = self.meta.delegations() else {
            return;
        };
        if !dirs.iter().any(|x| d.holds(*x)) {
            return;
        }
        let meta = self.meta.clone();
        let dirs = dirs.to_vec();
        self.rt.block_on(async move {
            if let Err(e) = meta.give_back(&dirs).await {
                tracing::warn!("give back delegated directories: {e}");
            }
        });
    }

    /// Registers handle `fh` of `attr`'s inode, sharing its open file.
    async fn register(
        (open, handles): (&OpenFiles, &Mutex<Handles>),
        data: Arc<DataClient>,
        fh: u64,
        attr: &Attr,
        flags: i32,
    ) -> R<Arc<OpenFile>> {
        let file = open.open(data, attr).await?;
        let mut h = match handles.lock() {
            Ok(h) => h,
            Err(_) => {
                open.close(&file);
                return Err(ClientError::Protocol("handle table poisoned".into()));
            }
        };
        h.by_fh.insert(fh, file.clone());
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            h.writable.insert(fh);
        }
        Ok(file)
    }
}

impl fuser::Filesystem for SpareFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1024 * 1024);
        let _ = config.set_max_readahead(1024 * 1024);
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_PARALLEL_DIROPS | fuser::InitFlags::FUSE_BIG_WRITES,
        );
        // POSIX ACLs: the kernel checks them too (and caches them); the
        // meta applies default ACLs and the umask at create (DONT_MASK).
        let _ = config
            .add_capabilities(fuser::InitFlags::FUSE_POSIX_ACL | fuser::InitFlags::FUSE_DONT_MASK);
        // The meta clears set-user-ID and set-group-ID on writes, truncates
        // and chowns (`kill_suid`): without this the kernel sends a chmod as
        // the writing user, which the meta refuses to a non-owner (EPERM).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_HANDLE_KILLPRIV);
        // Locks go to the meta, so every mount of the cluster sees them.
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_POSIX_LOCKS | fuser::InitFlags::FUSE_FLOCK_LOCKS,
        );
        // The kernel reads a directory's first page with attributes (and
        // later pages too once a program looks entries up, as ls -l does):
        // rm -rf of small directories needs no LOOKUP per entry.
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        let (meta, open) = (self.meta.clone(), self.open.clone());
        self.rt.spawn(async move {
            loop {
                let sent = std::time::Instant::now();
                // The meta keeps a file unlinked meanwhile until it is closed.
                match meta.keepalive(open.inodes()).await {
                    Ok(()) => {
                        if let Some(d) = meta.delegations() {
                            d.renewed(sent);
                        }
                    }
                    Err(e) => tracing::warn!("lock lease renewal: {e}"),
                }
                tokio::time::sleep(LEASE_RENEW).await;
            }
        });
        if self.meta.delegations().is_some() {
            self.rt
                .spawn(crate::delegated::flush_loop(self.meta.clone()));
            self.rt
                .spawn(crate::delegated::recall_loop(self.meta.clone()));
        }
        Ok(())
    }

    fn destroy(&mut self) {
        // Other clients need not wait for this mount's lease to run out; an
        // unreachable meta must not hold up the unmount (the lease then does).
        let meta = self.meta.clone();
        self.rt.block_on(async move {
            let Some(d) = meta.delegations() else { return };
            let held = d.held();
            let back = tokio::time::timeout(UNMOUNT_GIVE_BACK, meta.give_back(&held));
            match back.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("give back delegated directories at unmount: {e}"),
                Err(_) => tracing::warn!("give back delegated directories at unmount: timed out"),
            }
        });
    }

    fn lookup(&self, req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        let (meta, c, n, attrs) = self.entry_call(req, n);
        let mut known = None;
        if let Some(d) = meta.delegations() {
            match d.lookup(InodeId(parent.0), &n) {
                Lookup::Answer(r) => {
                    return Self::reply_entry(&attrs, reply, r.map_err(ClientError::Errno))
                }
                Lookup::Ask(ino) => known = Some(ino),
                Lookup::Remote => {}
            }
        }
        meta_op!(self, async move {
            if let (Some(ino), Some(d)) = (known, meta.delegations()) {
                let epoch = d.epoch();
                let r = meta.read_unordered(c, ReadOp::GetAttr { ino }).await;
                let r = r.and_then(sparefs_client::meta::attr);
                if let Ok(a) = &r {
                    // Kept: the next LOOKUP or GETATTR of it is answered here.
                    d.learned(InodeId(parent.0), &n, a, epoch);
                }
                return Self::reply_entry(&attrs, reply, r);
            }
            let r = meta
                .read_as(
                    c,
                    ReadOp::Lookup {
                        parent: InodeId(parent.0),
                        name: n,
                    },
                )
                .await
                .and_then(sparefs_client::meta::attr);
            Self::reply_entry(&attrs, reply, r);
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        // Answered here when the mount knows (no hand-over to the runtime).
        if let Some(a) = self.attrs.known(InodeId(ino.0)) {
            return reply.attr(&TTL, &file_attr(&a, a.size));
        }
        let attrs = self.attrs.clone();
        meta_op!(self, async move {
            answer(reply, attrs.get(InodeId(ino.0)).await, |reply, a| {
                reply.attr(&TTL, &file_attr(&a, a.size))
            })
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (meta, data, c) = (self.meta.clone(), self.data.clone(), caller(req));
        let file = self.open.get(InodeId(ino.0));
        let set = SetAttr {
            perm: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(convert::time_set),
            mtime: mtime.map(convert::time_set),
        };
        if let Some(r) = self.setattr_here(&c, InodeId(ino.0), &set, file.as_ref()) {
            return answer(reply, r, |reply, a| reply.attr(&TTL, &a));
        }
        // Otherwise buffered writes and held changes land first: a truncate
        // must cut the writes too, an explicit mtime (tar, cp -p, touch -d)
        // must not be overwritten by their commit, which stamps the time of
        // writing, and held changes keep their order.
        let flush_first = file
            .as_ref()
            .is_some_and(|f| size.is_some() || mtime.is_some() || f.predicted_attr().is_some());
        let op = self.setattr_op(InodeId(ino.0), set, fh);
        let (cache, attrs) = (self.xattrs.clone(), self.attrs.clone());
        let work = async move {
            let r = async {
                if let (Some(f), true) = (&file, flush_first) {
                    f.flush().await?;
                }
                let a = sparefs_client::meta::attr(meta.write_as(c, op).await?)?;
                if size.is_some() {
                    // The meta changed the layout (dropped chunks, hole slice):
                    // cached chunk maps of this file are stale now.
                    data.invalidate(InodeId(ino.0));
                }
                if let (Some(f), Some(s)) = (&file, size) {
                    f.set_size(s).await;
                }
                Ok(a)
            }
            .await;
            cache.forget(ino.0);
            attrs.forget(InodeId(ino.0));
            answer(reply, r, |reply, a| {
                reply.attr(&TTL, &Self::seen(&attrs, &a))
            })
        };
        // Flushing buffered writes first is data work.
        if flush_first {
            spawn!(self, work);
        } else {
            meta_op!(self, work);
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let meta = self.meta.clone();
        meta_op!(self, async move {
            match meta
                .read(ReadOp::ReadLink {
                    ino: InodeId(ino.0),
                })
                .await
            {
                Ok(NsReply::Bytes(b)) => reply.data(&b),
                Ok(_) => reply.error(Errno::EIO),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (meta, c, n, attrs) = self.entry_call(req, n);
        let Some(kind) = convert::kind_of_mode(mode) else {
            return reply.error(Errno::EINVAL);
        };
        meta_op!(self, async move {
            let dir = InodeId(parent.0);
            let op = WriteOp::MkNod {
                parent: dir,
                name: n.clone(),
                kind,
                perm: mode & 0o7777,
                umask,
                rdev,
                exclusive: true,
            };
            let r = meta
                .write_as(c, op)
                .await
                .and_then(|r| made(&attrs, &meta, dir, &n, r));
            Self::reply_entry(&attrs, reply, r);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (meta, c, n, attrs) = self.entry_call(req, n);
        let dir = InodeId(parent.0);
        if let Some(d) = meta.delegations() {
            match d.make(&c, dir, &n, FileKind::Dir, (mode & 0o7777, umask), true) {
                Local::Answer(r) => {
                    let r = r.map(|(a, _)| a).map_err(ClientError::Errno);
                    return Self::reply_entry(&attrs, reply, r);
                }
                Local::Remote => {}
            }
        }
        meta_op!(self, async move {
            let op = WriteOp::Mkdir {
                parent: dir,
                name: n.clone(),
                perm: mode & 0o7777,
                umask,
            };
            let r = meta
                .write_as(c, op)
                .await
                .and_then(|r| made(&attrs, &meta, dir, &n, r));
            if let (Ok(a), Some(d)) = (&r, meta.delegations()) {
                // Made here and empty: ask for it before the kernel hears
                // of it, so nothing can land in it that this mount misses.
                if !d.holds(a.ino) && !d.full() {
                    if let Err(e) = meta.delegate(dir, &n, a.ino).await {
                        tracing::debug!("delegation of {}: {e}", a.ino);
                    }
                }
            }
            Self::reply_entry(&attrs, reply, r);
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let op = WriteOp::Unlink {
            parent: InodeId(parent.0),
            name: name(n),
        };
        self.remove(req, op, reply);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let op = WriteOp::Rmdir {
            parent: InodeId(parent.0),
            name: name(n),
        };
        self.remove(req, op, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (meta, c, n, attrs) = self.entry_call(req, link_name);
        let target = target.as_os_str().as_bytes().to_vec();
        meta_op!(self, async move {
            let dir = InodeId(parent.0);
            let r = meta
                .write_as(
                    c,
                    WriteOp::Symlink {
                        parent: dir,
                        name: n.clone(),
                        target,
                    },
                )
                .await
                .and_then(|r| made(&attrs, &meta, dir, &n, r));
            Self::reply_entry(&attrs, reply, r);
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (meta, c, n, nn) = (self.meta.clone(), caller(req), name(n), name(newname));
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else if flags.is_empty() {
            RenameMode::Replace
        } else {
            return reply.error(Errno::EINVAL);
        };
        let (p, np) = (InodeId(parent.0), InodeId(newparent.0));
        if let (Some(d), RenameMode::Replace | RenameMode::NoReplace) =
            (self.meta.delegations(), mode)
        {
            let no_replace = mode == RenameMode::NoReplace;
            match d.rename(&caller(req), (p, &n), (np, &nn), no_replace) {
                Local::Answer(Ok(())) => {
                    self.attrs.forget(p);
                    self.attrs.forget(np);
                    return reply.ok();
                }
                Local::Answer(Err(e)) => return reply.error(errno(&ClientError::Errno(e))),
                Local::Remote => {}
            }
        }
        // Both directories, and the entries themselves if they are
        // directories delegated here (a move changes their "..").
        let mut dirs = vec![p, np];
        if let Some(d) = self.meta.delegations() {
            dirs.extend(d.held_at(p, &n));
            dirs.extend(d.held_at(np, &nn));
        }
        self.give_back(&dirs);
        let attrs = self.attrs.clone();
        meta_op!(self, async move {
            let op = WriteOp::Rename {
                parent: InodeId(parent.0),
                name: n,
                new_parent: InodeId(newparent.0),
                new_name: nn,
                mode,
            };
            let r = meta.write_as(c, op).await;
            attrs.forget(InodeId(parent.0));
            attrs.forget(InodeId(newparent.0));
            answer(reply, r, |reply, _| reply.ok())
        });
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (meta, c, n, attrs) = self.entry_call(req, newname);
        meta_op!(self, async move {
            let dir = InodeId(newparent.0);
            let op = WriteOp::Link {
                ino: InodeId(ino.0),
                new_parent: dir,
                new_name: n.clone(),
            };
            let r = meta
                .write_as(c, op)
                .await
                .and_then(|r| made(&attrs, &meta, dir, &n, r));
            Self::reply_entry(&attrs, reply, r);
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (meta, data, c) = (self.meta.clone(), self.data.clone(), caller(req));
        let (open, handles) = (self.open.clone(), self.handles.clone());
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        // What this mount's open file (if any) had seen before the fetch:
        // a map fetched with the attributes is offered to the first read
        // only if nothing changed the file here meanwhile.
        let before = self
            .open
            .get(InodeId(ino.0))
            .map(|f| (f.clone(), f.clean_changes()));
        let opening = open.opening(InodeId(ino.0));
        meta_op!(self, async move {
            let r = async {
                let op = ReadOp::Open {
                    ino: InodeId(ino.0),
                    access: convert::open_access(flags.0),
                };
                let (a, chunk) = match meta.read_as(c, op).await? {
                    NsReply::Opened { attr, chunk } => (attr, chunk),
                    other => return Err(ClientError::unexpected("Opened", other)),
                };
                let file = Self::register((&open, &handles), data, fh, &a, flags.0).await?;
                if let Some((slices, caps)) = chunk {
                    // register() revalidated a file already open here (one
                    // change); a new one has seen none.
                    let expected = match before {
                        Some((f, Some(n))) if Arc::ptr_eq(&f, &file) => Some(n + 1),
                        None => Some(0),
                        _ => None,
                    };
                    if let Some(n) = expected {
                        file.offer_first_chunk(n, DataClient::chunk_map_of(slices, caps));
                    }
                }
                Ok::<_, ClientError>(file)
            }
            .await;
            drop(opening);
            answer(reply, r, |reply, _| {
                reply.opened(FileHandle(fh), open_flags(flags.0))
            })
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (meta, c, n, attrs) = self.entry_call(req, n);
        let (data, xattrs) = (self.data.clone(), self.xattrs.clone());
        let (open, handles) = (self.open.clone(), self.handles.clone());
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let dir = InodeId(parent.0);
        let exclusive = flags & libc::O_EXCL != 0;
        // In a directory delegated here, answered here.
        let local = match meta.delegations() {
            Some(d) => d.make(
                &c,
                dir,
                &n,
                FileKind::File,
                (mode & 0o7777, umask),
                exclusive,
            ),
            None => Local::Remote,
        };
        meta_op!(self, async move {
            let r = async {
                let a = match local {
                    Local::Answer(r) => r.map(|(a, _)| a).map_err(ClientError::Errno)?,
                    Local::Remote => {
                        let op = WriteOp::MkNod {
                            parent: dir,
                            name: n.clone(),
                            kind: FileKind::File,
                            perm: mode & 0o7777,
                            umask,
                            rdev: 0,
                            exclusive,
                        };
                        made(&attrs, &meta, dir, &n, meta.write_as(c, op).await?)?
                    }
                };
                // A new file has no capability: the kernel asks before the
                // first write, and need not ask the meta.
                xattrs.put(a.ino.0, b"security.capability", None);
                Self::register((&open, &handles), data, fh, &a, flags).await?;
                Ok::<_, ClientError>(a)
            }
            .await;
            answer(reply, r, |reply, a| {
                reply.created(
                    &TTL,
                    &Self::seen(&attrs, &a),
                    Generation(0),
                    FileHandle(fh),
                    open_flags(flags),
                )
            })
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lo: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        spawn!(self, async move {
            answer(
                reply,
                file.read(offset, size as usize, 0).await,
                |reply, b| reply.data(&b),
            )
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        flags: OpenFlags,
        _lo: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(file) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let c = caller(req);
        file.note_writer(&c);
        // A write by a caller without CAP_FSETID to a set-id file clears the
        // bits before it is answered (FUSE_HANDLE_KILLPRIV leaves that to
        // us): committed at once as the writer, and the kernel's cached mode
        // dropped, so nothing can run the new bytes set-id.
        // (Root's writes, most of them, skip the copy of the attributes.)
        let kills = c.uid != 0
            && file
                .known_attr()
                .is_some_and(|a| set_id_bits_a_write_clears(&a, &c) != 0);
        let sync = kills || flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0;
        if !sync && file.write_buffered_now(offset, data) {
            return reply.written(data.len() as u32);
        }
        let data = data.to_vec();
        let (notifier, attrs) = (self.notifier.clone(), self.attrs.clone());
        spawn!(self, async move {
            let r = async {
                file.write(offset, &data).await?;
                if sync {
                    file.flush().await?;
                }
                if kills {
                    // (The commit itself refreshed what delegations keep.)
                    attrs.forget(InodeId(ino.0));
                    if let Some(n) = notifier.get() {
                        let _ = n.inval_inode(ino, -1, 0);
                    }
                }
                Ok::<_, ClientError>(())
            }
            .await;
            answer(reply, r, |reply, ()| reply.written(data.len() as u32))
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let Some(file) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let unlock = self.unlock_all(ino, lock_owner);
        if unlock.is_none() && file.is_clean() {
            // Most closes: answered here, without a trip to the runtime.
            return reply.ok();
        }
        // A small file's close is one meta write (its bytes go inline): run
        // it as a metadata callback. (Should the chunk refuse more inline
        // bytes, those few KiB go to chunkservers from this thread.)
        let small = unlock.is_none() && file.flush_is_inline();
        let work = async move {
            let r = async {
                file.flush().await?;
                if let Some(u) = unlock {
                    u.await?;
                }
                Ok::<_, ClientError>(())
            }
            .await;
            answer(reply, r, |reply, ()| reply.ok())
        };
        if small {
            meta_op!(self, work);
        } else {
            spawn!(self, work);
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some(file) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let meta = self.meta.clone();
        spawn!(self, async move {
            // A flush that committed data is itself durable; with nothing
            // to flush, earlier namespace changes still must reach the disk.
            let r = match file.flush().await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => meta.sync().await,
                Err(e) => Err(e),
            };
            answer(reply, r, |reply, ()| reply.ok())
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let meta = self.meta.clone();
        meta_op!(self, async move {
            answer(reply, meta.sync().await, |reply, ()| reply.ok())
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // With FUSE_RELEASE_FLOCK_UNLOCK the kernel names the flock owner;
        // OFD locks (and any other owner that locked through this handle)
        // go too: the open file description they belong to is closing.
        let mut owners: HashSet<u64> = self
            .lock_owners_by_fh
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&fh.0))
            .unwrap_or_default();
        owners.extend(lock_owner.map(|o| o.0));
        for owner in owners {
            if let Some(unlock) = self.unlock_all(ino, LockOwner(owner)) {
                self.rt.spawn(async move {
                    if let Err(e) = unlock.await {
                        tracing::warn!("release the locks of a closed file: {e}");
                    }
                });
            }
        }
        let file = self.handles.lock().ok().and_then(|mut h| {
            h.writable.remove(&fh.0);
            h.by_fh.remove(&fh.0)
        });
        let Some(file) = file else { return reply.ok() };
        if file.is_clean() {
            self.open.close(&file);
            return reply.ok();
        }
        let open = self.open.clone();
        spawn!(self, async move {
            let r = file.flush().await;
            open.close(&file);
            answer(reply, r, |reply, _| reply.ok())
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(file) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let (meta, c) = (self.meta.clone(), caller(req));
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        spawn!(self, async move {
            let r = async {
                match mode {
                    0 | libc::FALLOC_FL_KEEP_SIZE => {
                        // Space is not reserved ahead (blocks are written when
                        // data is); mode 0 only grows the size.
                        let end = offset.saturating_add(length);
                        let a = meta.getattr(InodeId(ino.0)).await?;
                        if mode == 0 && end > a.size.max(file.known_size()) {
                            file.flush().await?;
                            // The kernel let only a descriptor open for
                            // writing get here.
                            meta.write_as(
                                c,
                                WriteOp::Truncate {
                                    ino: InodeId(ino.0),
                                    size: end,
                                },
                            )
                            .await?;
                            file.set_size(end).await;
                        }
                        Ok(())
                    }
                    PUNCH => file.punch_hole(offset, length).await,
                    _ => Err(ClientError::Errno(PErrno::ENOTSUP)),
                }
            }
            .await;
            answer(reply, r, |reply, ()| reply.ok())
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: fuser::ReplyLock,
    ) {
        let Some(lock) = self.lock_spec(lock_owner, start, end, typ, pid) else {
            return reply.error(Errno::EINVAL);
        };
        let meta = self.meta.clone();
        spawn!(self, async move {
            match meta
                .read(ReadOp::GetLock {
                    ino: InodeId(ino.0),
                    lock,
                })
                .await
            {
                Ok(NsReply::Lock(Some(l))) => {
                    let typ = if l.kind == LockKind::Write {
                        libc::F_WRLCK
                    } else {
                        libc::F_RDLCK
                    };
                    reply.locked(l.start, l.end, typ, l.pid)
                }
                Ok(_) => reply.locked(start, end, libc::F_UNLCK, 0),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let Some(lock) = self.lock_spec(lock_owner, start, end, typ, pid) else {
            return reply.error(Errno::EINVAL);
        };
        let meta = self.meta.clone();
        let lockers = self.lockers.clone();
        if let Ok(mut l) = lockers.lock() {
            l.insert((ino.0, lock_owner.0));
        }
        if let Ok(mut m) = self.lock_owners_by_fh.lock() {
            m.entry(fh.0).or_default().insert(lock_owner.0);
        }
        // The thread waiting in F_SETLKW (the lock's own pid is 0 for OFD
        // locks, and names the holder in other cases).
        let waiter = req.pid();
        spawn!(self, async move {
            loop {
                match meta
                    .write(WriteOp::SetLock {
                        ino: InodeId(ino.0),
                        lock,
                    })
                    .await
                {
                    Ok(_) => {
                        // A close by another thread of the owner may have
                        // released its locks meanwhile: this one is new.
                        if let Ok(mut l) = lockers.lock() {
                            l.insert((ino.0, lock_owner.0));
                        }
                        return reply.ok();
                    }
                    Err(ClientError::Errno(PErrno::EAGAIN)) if sleep => {
                        // fuser answers the kernel's INTERRUPT with ENOSYS, after
                        // which the kernel waits for this answer even for a
                        // killed process: end the wait as an interrupt would
                        // once the waiter has a signal to take (^C, SIGKILL)
                        // or is gone.
                        if signal_pending(waiter) {
                            return reply.error(Errno::EINTR);
                        }
                        tokio::time::sleep(LOCK_RETRY).await
                    }
                    Err(e) => return reply.error(errno(&e)),
                }
            }
        });
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.open(fh);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.release(fh.0);
        reply.ok();
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let (meta, c, attrs) = (self.meta.clone(), caller(req), self.attrs.clone());
        let dirs = self.dirs.clone();
        meta_op!(self, async move {
            // The page from the start begins with "." and "..": the kernel
            // makes no entries for them, but the format wants their
            // attributes.
            let op = ReadOp::ReadDirPlus {
                ino: InodeId(ino.0),
                after_cookie: offset,
                limit: READDIRPLUS_PAGE,
            };
            let r = match meta.read_as(c.clone(), op).await {
                Ok(NsReply::DirPlus(entries)) => Ok(entries),
                Ok(other) => Err(ClientError::unexpected("DirPlus", other)),
                Err(e) => Err(e),
            };
            answer(reply, r, |mut reply, entries| {
                // A full page: the kernel goes on with plain READDIRs
                // from its last entry; read those pages ahead now.
                let real = entries.iter().filter(|(e, _)| e.cookie > 2).count();
                if let (true, Some((last, _))) = (real >= READDIRPLUS_PAGE as usize, entries.last())
                {
                    dirs.read_ahead(&meta, c, InodeId(ino.0), fh.0, last.cookie);
                }
                for (e, a) in entries {
                    let shown = Self::seen(&attrs, &a);
                    let name = OsStr::from_bytes(&e.name);
                    if reply.add(
                        INodeNo(e.ino.0),
                        e.cookie,
                        name,
                        &TTL,
                        &shown,
                        Generation(0),
                    ) {
                        break;
                    }
                }
                reply.ok();
            })
        });
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let (meta, dirs, c) = (self.meta.clone(), self.dirs.clone(), caller(req));
        meta_op!(self, async move {
            answer(
                reply,
                dirs.read(&meta, c, InodeId(ino.0), fh.0, offset).await,
                |mut reply, listing| {
                    if offset < 1 && reply.add(ino, 1, fuser::FileType::Directory, ".") {
                        return reply.ok();
                    }
                    if let (true, Some(p)) = (offset < 2, listing.parent) {
                        if reply.add(INodeNo(p.0), 2, fuser::FileType::Directory, "..") {
                            return reply.ok();
                        }
                    }
                    for e in listing.entries() {
                        if reply.add(
                            INodeNo(e.ino.0),
                            e.cookie,
                            convert::kind(e.kind),
                            OsStr::from_bytes(e.name),
                        ) {
                            break;
                        }
                    }
                    reply.ok();
                },
            )
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let meta = self.meta.clone();
        meta_op!(self, async move {
            match meta.read(ReadOp::StatFs).await {
                Ok(NsReply::StatFs(s)) => {
                    let bs = 4096u64;
                    let free = s.free_bytes / bs;
                    reply.statfs(
                        s.capacity_bytes / bs,
                        free,
                        free,
                        s.files,
                        u64::MAX / 2,
                        bs as u32,
                        s.name_bytes_max,
                        bs as u32,
                    )
                }
                Ok(_) => reply.error(Errno::EIO),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        n: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let mode = match flags {
            0 => XattrMode::Any,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return reply.error(Errno::EINVAL),
        };
        let op = WriteOp::SetXattr {
            ino: InodeId(ino.0),
            name: name(n),
            value: value.to_vec(),
            mode,
        };
        self.xattr_change(req, ino, op, reply);
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, n: &OsStr, size: u32, reply: ReplyXattr) {
        let (meta, c, n, cache) = (self.meta.clone(), caller(req), name(n), self.xattrs.clone());
        match cache.get(ino.0, &n) {
            Some(Some(v)) => return xattr_reply(reply, &v, size),
            Some(None) => return reply.error(Errno::from_i32(libc::ENODATA)),
            None => {}
        }
        let held = self.holding(ino);
        let holds = held.is_some();
        meta_op_after!(self, holds, async move {
            if let Some(f) = held {
                f.settle().await;
            }
            match meta
                .read_as(
                    c,
                    ReadOp::GetXattr {
                        ino: InodeId(ino.0),
                        name: n.clone(),
                    },
                )
                .await
            {
                Ok(NsReply::Bytes(v)) => {
                    cache.put(ino.0, &n, Some(v.clone()));
                    xattr_reply(reply, &v, size)
                }
                Ok(_) => reply.error(Errno::EIO),
                Err(ClientError::Errno(PErrno::ENODATA)) => {
                    cache.put(ino.0, &n, None);
                    reply.error(Errno::from_i32(libc::ENODATA))
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let (meta, c, held) = (self.meta.clone(), caller(req), self.holding(ino));
        let holds = held.is_some();
        meta_op_after!(self, holds, async move {
            if let Some(f) = held {
                f.settle().await;
            }
            match meta
                .read_as(
                    c,
                    ReadOp::ListXattr {
                        ino: InodeId(ino.0),
                    },
                )
                .await
            {
                Ok(NsReply::Names(names)) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(&n);
                        buf.push(0);
                    }
                    xattr_reply(reply, &buf, size)
                }
                Ok(_) => reply.error(Errno::EIO),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let op = WriteOp::RemoveXattr {
            ino: InodeId(ino.0),
            name: name(n),
        };
        self.xattr_change(req, ino, op, reply);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let (meta, c) = (self.meta.clone(), caller(req));
        meta_op!(self, async move {
            match meta
                .read_as(
                    c,
                    ReadOp::Access {
                        ino: InodeId(ino.0),
                        mask: mask.bits() as u32,
                    },
                )
                .await
            {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
}

/// O_DIRECT opens bypass the kernel's page cache; the rest use it.
fn open_flags(flags: i32) -> FopenFlags {
    if flags & libc::O_DIRECT != 0 {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    }
}

fn lock_kind(typ: i32) -> Option<LockKind> {
    match typ {
        libc::F_RDLCK => Some(LockKind::Read),
        libc::F_WRLCK => Some(LockKind::Write),
        libc::F_UNLCK => Some(LockKind::Unlock),
        _ => None,
    }
}

/// getxattr/listxattr: size 0 asks for the length; too small is ERANGE.
fn xattr_reply(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::from_i32(PErrno::ERANGE.code()));
    } else {
        reply.data(value);
    }
}

/// The set-id bits a write by `c` clears from a file with attributes `a`
/// (Linux: S_ISUID always, S_ISGID with group execute or when the writer
/// is not in the file's group; none for root). The meta applies the same
/// rule when it commits the write as `c`.
fn set_id_bits_a_write_clears(a: &Attr, c: &Caller) -> u32 {
    if c.uid == 0 || a.kind != FileKind::File {
        return 0;
    }
    let mut bits = a.perm & 0o4000;
    if a.perm & 0o2000 != 0 && (a.perm & 0o010 != 0 || !c.in_group(a.gid)) {
        bits |= 0o2000;
    }
    bits
}

/// Whether thread `tid` has a signal pending that it does not block (or no
/// longer exists): a blocked F_SETLKW must then end with EINTR, as it does
/// on a local filesystem. From /proc/TID/status: SigPnd (the thread's),
/// ShdPnd (the process's), SigBlk.
fn signal_pending(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return true;
    };
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    (mask("SigPnd:") | mask("ShdPnd:")) & !mask("SigBlk:") != 0
}
