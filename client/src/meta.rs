//! The metadata client: finds the leader from any replica, retries through
//! leader changes and lost connections until its deadline, and gives every
//! mutation a `(client, seq)` id so a retry is applied once.

use crate::deleg::{Before, Delegations};
use sparefs_proto::layout::Policy;
use sparefs_proto::msg::{HeartbeatReport, ReplicaStatus, Reply, Request, RpcError};
use sparefs_proto::namespace::*;
use sparefs_proto::{ClientId, Errno, InodeId, ReplicaId, RequestId};
use sparefs_wire::conn::{CallError, Conn, ConnPool};
use sparefs_wire::tls::{Role, Tls};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}", .0)]
    Errno(Errno),
    #[error("metadata service unavailable: {0}")]
    Unavailable(String),
    #[error("data unavailable: {0}")]
    DataUnavailable(String),
    #[error("server rejected the request: {0}")]
    Rejected(String),
    /// This process's certificate may not ask that.
    #[error("not allowed: {0}")]
    Forbidden(String),
    #[error("unexpected reply from the server: {0}")]
    Protocol(String),
    /// A reply of another kind than the request asks for, kept whole.
    #[error("unexpected reply from the server: wanted {wanted}, got {got:?}")]
    Unexpected {
        wanted: &'static str,
        got: Box<UnexpectedReply>,
    },
}

/// The reply an `Unexpected` error keeps.
#[derive(Clone, Debug)]
pub enum UnexpectedReply {
    Rpc(Reply),
    Ns(NsReply),
}

impl From<Reply> for UnexpectedReply {
    fn from(r: Reply) -> UnexpectedReply {
        UnexpectedReply::Rpc(r)
    }
}

impl From<NsReply> for UnexpectedReply {
    fn from(r: NsReply) -> UnexpectedReply {
        UnexpectedReply::Ns(r)
    }
}

impl ClientError {
    /// The error for a reply of another kind than `wanted`.
    pub fn unexpected(wanted: &'static str, got: impl Into<UnexpectedReply>) -> ClientError {
        ClientError::Unexpected {
            wanted,
            got: Box::new(got.into()),
        }
    }
}

impl ClientError {
    pub fn errno(&self) -> Errno {
        match self {
            ClientError::Errno(e) => *e,
            ClientError::Unavailable(_) | ClientError::DataUnavailable(_) => Errno::EIO,
            ClientError::Rejected(_) => Errno::EINVAL,
            ClientError::Forbidden(_) => Errno::EPERM,
            ClientError::Protocol(_) | ClientError::Unexpected { .. } => Errno::EIO,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

pub struct MetaClient {
    addresses: Mutex<Vec<String>>,
    leader: Mutex<Option<String>>,
    conns: ConnPool,
    rotate: AtomicUsize,
    id: ClientId,
    seq: AtomicU64,
    inflight: Mutex<BTreeSet<u64>>,
    /// Directories delegated to this client (a mount sets it).
    deleg: Option<Arc<Delegations>>,
    /// How long a call keeps retrying before it fails with `Unavailable`.
    pub deadline: Duration,
    pub attempt_timeout: Duration,
    pub caller: Caller,
}

impl MetaClient {
    pub fn new(addresses: Vec<String>, caller: Caller) -> MetaClient {
        MetaClient {
            addresses: Mutex::new(addresses),
            leader: Mutex::new(None),
            conns: ConnPool::default(),
            rotate: AtomicUsize::new(0),
            id: ClientId(rand::random()),
            seq: AtomicU64::new(1),
            inflight: Mutex::new(BTreeSet::new()),
            deleg: None,
            deadline: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(3),
            caller,
        }
    }

    /// Talks to the meta over mutual TLS with `tls`, to replicas whose
    /// certificates name the meta role only.
    /// Its client id is then one of its certificate's (the meta refuses
    /// others over TLS).
    pub fn with_tls(mut self, tls: Arc<Tls>) -> Self {
        self.id = ClientId(tls.me().client_id(rand::random()));
        self.conns = ConnPool::with_tls(tls).expecting(Role::Meta);
        self
    }

    /// The credentials this client connects with, if TLS.
    pub fn tls(&self) -> Option<&Arc<Tls>> {
        self.conns.tls()
    }

    pub fn with_deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }

    /// Lets this client hold delegated directories (a mount): changes
    /// answered there go out ahead of every other request.
    pub fn with_delegations(mut self) -> Self {
        self.deleg = Some(Arc::new(Delegations::default()));
        self
    }

    pub fn delegations(&self) -> Option<&Arc<Delegations>> {
        self.deleg.as_ref()
    }

    async fn conn(&self, address: &str) -> std::result::Result<Arc<Conn>, String> {
        self.conns.get(address).await
    }

    fn pick(&self) -> Option<String> {
        if let Some(l) = self.leader.lock().ok()?.clone() {
            return Some(l);
        }
        let a = self.addresses.lock().ok()?;
        if a.is_empty() {
            return None;
        }
        Some(a[self.rotate.fetch_add(1, Ordering::Relaxed) % a.len()].clone())
    }

    fn forget_leader(&self) {
        if let Ok(mut l) = self.leader.lock() {
            *l = None;
        }
    }

    /// Sends `body` to the leader, following redirects and retrying until
    /// the deadline. `body` is rebuilt per attempt (it is cheap to clone).
    /// Sends `body` to the leader (following redirects, retrying until the
    /// deadline) and returns its answer. Timed, by kind, in the process's
    /// metrics (the meta's latency as this client sees it).
    pub async fn call_leader(&self, body: &Request) -> Result<Reply> {
        let kind = body.kind();
        let started = Instant::now();
        let r = self.call_leader_untimed(body).await;
        metrics::histogram!("sparefs_client_meta_seconds", "kind" => kind)
            .record(started.elapsed().as_secs_f64());
        if r.is_err() {
            metrics::counter!("sparefs_client_meta_errors_total", "kind" => kind).increment(1);
        }
        r
    }

    async fn call_leader_untimed(&self, body: &Request) -> Result<Reply> {
        let start = Instant::now();
        let mut last = String::from("no replica answered");
        let mut pause = Duration::from_millis(20);
        while start.elapsed() < self.deadline {
            let Some(address) = self.pick() else {
                return Err(ClientError::Unavailable("no meta addresses".into()));
            };
            let left = self.deadline.saturating_sub(start.elapsed());
            let tls = self.conns.tls().map(|t| &**t);
            let outcome =
                match crate::lane::call(&address, tls, body, self.attempt_timeout.min(left)) {
                    Some(answer) => answer.map_err(CallError::Rpc),
                    None => match self.conn(&address).await {
                        Ok(c) => c.call(body.clone(), self.attempt_timeout).await,
                        Err(e) => Err(CallError::Transport(e)),
                    },
                };
            match outcome {
                Ok(reply) => {
                    if let Ok(mut l) = self.leader.lock() {
                        *l = Some(address);
                    }
                    return Ok(reply);
                }
                Err(CallError::Rpc(RpcError::NotLeader {
                    leader: Some((_, hint)),
                })) if hint != address => {
                    last = format!("{address} is not the leader");
                    if let Ok(mut a) = self.addresses.lock() {
                        if !a.contains(&hint) {
                            a.push(hint.clone());
                        }
                    }
                    if let Ok(mut l) = self.leader.lock() {
                        *l = Some(hint);
                    }
                    continue;
                }
                Err(CallError::Rpc(RpcError::NotLeader { .. })) => {
                    last = format!("{address} knows no leader");
                    self.forget_leader();
                }
                Err(CallError::Rpc(RpcError::Busy)) => last = format!("{address} is busy"),
                Err(CallError::Rpc(RpcError::Errno(e))) => return Err(ClientError::Errno(e)),
                Err(CallError::Rpc(RpcError::Forbidden(why))) => {
                    return Err(ClientError::Forbidden(why))
                }
                Err(CallError::Rpc(e)) => return Err(ClientError::Rejected(e.to_string())),
                Err(CallError::Transport(e)) => {
                    last = e;
                    self.forget_leader();
                    self.conns.forget(&address);
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        Err(ClientError::Unavailable(last))
    }

    pub async fn read(&self, op: ReadOp) -> Result<NsReply> {
        self.read_as(self.caller.clone(), op).await
    }

    /// A read on behalf of `caller` (the FUSE adapter passes each request's).
    pub async fn read_as(&self, caller: Caller, op: ReadOp) -> Result<NsReply> {
        // The meta must know what was answered here before it answers this.
        if let Some(ops) = self.settle_delegated().await {
            self.send_delegated(self.caller.clone(), ops, None).await?;
        }
        self.read_unordered(caller, op).await
    }

    /// `read_as` that runs to its end even if its caller stops waiting, for
    /// reads made by tasks that are aborted when no longer wanted
    /// (read-ahead). A read may carry the changes answered in delegated
    /// directories: dropped halfway, they would be neither known applied
    /// nor sent again, and this mount would give up every delegation
    /// ("abandoned"), losing whichever were never sent.
    pub async fn read_detached(self: &Arc<Self>, caller: Caller, op: ReadOp) -> Result<NsReply> {
        if self.deleg.is_none() {
            return self.read_as(caller, op).await;
        }
        let me = self.clone();
        match tokio::spawn(async move { me.read_as(caller, op).await }).await {
            Ok(r) => r,
            Err(e) => Err(ClientError::Protocol(format!("read task: {e}"))),
        }
    }

    /// A read that need not wait for changes answered in delegated
    /// directories (`deleg::Lookup::Ask`).
    pub async fn read_unordered(&self, caller: Caller, op: ReadOp) -> Result<NsReply> {
        match self
            .call_leader(&Request::Read {
                client: self.id,
                caller,
                op,
            })
            .await?
        {
            Reply::Ns(r) => Ok(r),
            other => Err(ClientError::unexpected("a namespace answer", other)),
        }
    }

    fn next_id(&self) -> RequestId {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let ack_below = match self.inflight.lock() {
            Ok(mut f) => {
                f.insert(seq);
                f.iter().next().copied().unwrap_or(seq)
            }
            Err(_) => 0,
        };
        RequestId {
            client: self.id,
            seq,
            ack_below,
        }
    }

    fn done(&self, id: RequestId) {
        if let Ok(mut f) = self.inflight.lock() {
            f.remove(&id.seq);
        }
    }

    pub async fn write(&self, op: WriteOp) -> Result<NsReply> {
        self.write_as(self.caller.clone(), op).await
    }

    /// A mutation on behalf of `caller`.
    pub async fn write_as(&self, caller: Caller, op: WriteOp) -> Result<NsReply> {
        // Changes answered here land first, in the same request if it may
        // carry them.
        while let Some(ops) = self.settle_delegated().await {
            if !op.may_follow_delegated() {
                self.send_delegated(self.caller.clone(), ops, None).await?;
                continue;
            }
            let then = Some(Box::new(op.clone()));
            match self.send_delegated(caller.clone(), ops, then).await? {
                NsReply::DelegatedThen(Some(answer)) => {
                    return answer.map(|r| *r).map_err(ClientError::Errno)
                }
                // Waits for another client's directory: sent alone below.
                NsReply::DelegatedThen(None) => break,
                other => return Err(ClientError::unexpected("DelegatedThen", other)),
            }
        }
        let named = op.dirs_named();
        let r = self.write_plain(caller, op).await;
        if let (Err(e), Some(d)) = (&r, &self.deleg) {
            if !matches!(e, ClientError::Errno(_)) && !named.is_empty() {
                // It may have been applied: this mount no longer knows every
                // name (nor the next cookie) there. The meta still counts it
                // the holder until it asks for them back.
                let gone = d.give_up(&named);
                if !gone.is_empty() {
                    tracing::warn!("a change in {gone:?} may or may not have landed ({e}); answering there no more");
                }
            }
        }
        r
    }

    async fn write_plain(&self, caller: Caller, op: WriteOp) -> Result<NsReply> {
        // Attributes known of files this may change go before it is sent,
        // and again once it is answered (an answer to a read that overlapped
        // it is not kept either: `Delegations::learned`).
        if let Some(d) = &self.deleg {
            d.changing(&op);
        }
        let id = self.next_id();
        let request = Request::Write { caller, id, op };
        let r = self.call_leader(&request).await;
        if let (Some(d), Request::Write { op, .. }) = (&self.deleg, &request) {
            let answer = match &r {
                Ok(Reply::Ns(reply)) => Some(reply),
                _ => None,
            };
            d.changed(op, answer);
        }
        self.done(id);
        match r? {
            Reply::Ns(r) => Ok(r),
            other => Err(ClientError::unexpected("a namespace answer", other)),
        }
    }

    /// Waits for batches of delegated changes on their way; then the
    /// queued ones, if any, to send (counted in flight until sent).
    async fn settle_delegated(&self) -> Option<Vec<DelegatedOp>> {
        let d = self.deleg.as_ref()?;
        loop {
            let landed = d.landed.notified();
            tokio::pin!(landed);
            landed.as_mut().enable();
            match d.before_remote() {
                Before::Carry(ops) => return Some(ops),
                Before::Clear => return None,
                Before::Wait => landed.await,
            }
        }
    }

    /// Sends delegated changes (then `then`). If they are refused or lost,
    /// nothing answered here can be trusted: every delegation is given up
    /// and the caller hears EIO.
    async fn send_delegated(
        &self,
        caller: Caller,
        ops: Vec<DelegatedOp>,
        then: Option<Box<WriteOp>>,
    ) -> Result<NsReply> {
        /// Counts the batch landed however this ends; if it ends before an
        /// answer (dropped), as lost.
        struct InFlight<'a> {
            deleg: Option<&'a Delegations>,
            count: usize,
            outcome: Option<String>,
        }
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                let Some(d) = self.deleg else { return };
                let lost = self.outcome.take().unwrap_or_else(|| "abandoned".into());
                if !lost.is_empty() {
                    let dirs = d.give_up_all();
                    tracing::error!(
                        "{} changes answered in delegated directories may not be applied \
                         ({lost}); giving up {} directories",
                        self.count,
                        dirs.len()
                    );
                }
                d.sent(lost.is_empty());
            }
        }
        let mut guard = InFlight {
            deleg: self.deleg.as_deref(),
            count: ops.len(),
            outcome: None,
        };
        let r = self
            .write_plain(caller, WriteOp::Delegated { ops, then })
            .await;
        guard.outcome = Some(match &r {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        });
        drop(guard);
        r.map_err(|_| ClientError::Errno(Errno::EIO))
    }

    /// Sends the changes answered here now (fsync, the flusher).
    pub async fn flush_delegated(&self) -> Result<()> {
        if let Some(ops) = self.settle_delegated().await {
            self.send_delegated(self.caller.clone(), ops, None).await?;
        }
        Ok(())
    }

    /// Asks for empty directory `dir`, `name` in `parent` (just made here),
    /// to be delegated.
    pub async fn delegate(&self, parent: InodeId, name: &[u8], dir: InodeId) -> Result<()> {
        let Some(d) = &self.deleg else {
            return Ok(());
        };
        if let NsReply::Granted { attr, next_cookie } =
            self.write(WriteOp::Delegate { dir }).await?
        {
            d.granted(parent, name, attr, next_cookie);
        }
        self.reserve_inodes().await
    }

    /// Tops up the inode numbers reserved for creates answered here.
    pub async fn reserve_inodes(&self) -> Result<()> {
        let Some(d) = &self.deleg else {
            return Ok(());
        };
        if d.wants_inodes() {
            let count = crate::deleg::RESERVE;
            if let NsReply::Inodes { first, count } =
                self.write(WriteOp::ReserveInodes { count }).await?
            {
                d.reserved(first, count);
            }
        }
        Ok(())
    }

    /// Gives back those of `dirs` held here, behind the changes queued.
    pub async fn give_back(&self, dirs: &[InodeId]) -> Result<()> {
        let Some(d) = &self.deleg else {
            return Ok(());
        };
        let dirs = d.give_up(dirs);
        if dirs.is_empty() {
            return Ok(());
        }
        self.write(WriteOp::ReturnDelegations { dirs })
            .await
            .map(|_| ())
    }

    /// Gives back `dirs` the leader asked for: all of them, also any this
    /// client stopped answering for on its own (after a refused batch), or
    /// the meta would keep other clients waiting for them.
    pub async fn return_recalled(&self, dirs: Vec<InodeId>) -> Result<()> {
        if let Some(d) = &self.deleg {
            d.give_up(&dirs);
        }
        self.write(WriteOp::ReturnDelegations { dirs })
            .await
            .map(|_| ())
    }

    /// Waits (up to `RECALL_WAIT`) for the leader to want directories back.
    pub async fn wait_recall(&self) -> Result<Vec<InodeId>> {
        match self
            .call_leader(&Request::WaitRecall { client: self.id })
            .await?
        {
            Reply::Recall(dirs) => Ok(dirs),
            other => Err(ClientError::unexpected("Recall", other)),
        }
    }

    /// One replica's state digest (`Request::Digest`), asked directly.
    pub async fn digest_of(&self, address: &str) -> Result<sparefs_proto::fsck::StateDigest> {
        let c = self.conn(address).await.map_err(ClientError::Unavailable)?;
        match c.call(Request::Digest, Duration::from_secs(120)).await {
            Ok(Reply::Digest(d)) => Ok(d),
            Ok(other) => Err(ClientError::unexpected("Digest", other)),
            Err(CallError::Transport(e)) => Err(ClientError::Unavailable(e)),
            Err(CallError::Rpc(e)) => Err(ClientError::Rejected(e.to_string())),
        }
    }

    /// The status of one replica, asked directly (no redirect).
    pub async fn status_of(&self, address: &str) -> Result<ReplicaStatus> {
        let c = self.conn(address).await.map_err(ClientError::Unavailable)?;
        match c.call(Request::Status, Duration::from_secs(2)).await {
            Ok(Reply::Status(s)) => Ok(s),
            Ok(other) => Err(ClientError::unexpected("Status", other)),
            Err(CallError::Transport(e)) => Err(ClientError::Unavailable(e)),
            Err(CallError::Rpc(e)) => Err(ClientError::Rejected(e.to_string())),
        }
    }

    pub async fn add_replica(&self, replica: ReplicaId, address: String) -> Result<()> {
        let id = self.next_id();
        let r = self
            .call_leader(&Request::AddReplica {
                id,
                replica,
                address,
            })
            .await;
        self.done(id);
        r.map(|_| ())
    }

    pub async fn remove_replica(&self, replica: ReplicaId) -> Result<()> {
        let id = self.next_id();
        let r = self
            .call_leader(&Request::RemoveReplica { id, replica })
            .await;
        self.done(id);
        r.map(|_| ())
    }

    pub async fn transfer_leader(&self, replica: ReplicaId) -> Result<()> {
        self.call_leader(&Request::TransferLeader { replica })
            .await
            .map(|_| ())
    }

    /// This client's id (lock owner namespace).
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// Renews this client's lock lease and reports the files it has open
    /// (cut to `KEEPALIVE_OPEN_MAX`).
    pub async fn keepalive(&self, mut open: Vec<InodeId>) -> Result<()> {
        open.truncate(sparefs_proto::limits::KEEPALIVE_OPEN_MAX);
        self.call_leader(&Request::KeepAlive {
            client: self.id,
            open,
        })
        .await
        .map(|_| ())
    }

    /// A chunkserver's heartbeat with capacity and usage only (no repair
    /// reports, no tasks wanted).
    pub async fn heartbeat(
        &self,
        chunkserver: sparefs_proto::ChunkserverId,
        capacity_bytes: u64,
        used_bytes: u64,
        errors: u64,
    ) -> Result<()> {
        self.call_leader(&Request::Heartbeat(HeartbeatReport::usage(
            chunkserver,
            capacity_bytes,
            used_bytes,
            errors,
        )))
        .await
        .map(|_| ())
    }

    // Typed helpers over `read` and `write`.

    pub async fn lookup(&self, parent: InodeId, name: &[u8]) -> Result<Attr> {
        attr(
            self.read(ReadOp::Lookup {
                parent,
                name: name.to_vec(),
            })
            .await?,
        )
    }

    pub async fn getattr(&self, ino: InodeId) -> Result<Attr> {
        attr(self.read(ReadOp::GetAttr { ino }).await?)
    }

    pub async fn mkdir(&self, parent: InodeId, name: &[u8], perm: u32) -> Result<Attr> {
        attr(
            self.write(WriteOp::Mkdir {
                parent,
                name: name.to_vec(),
                perm,
                umask: 0,
            })
            .await?,
        )
    }

    pub async fn create(
        &self,
        parent: InodeId,
        name: &[u8],
        perm: u32,
        exclusive: bool,
    ) -> Result<Attr> {
        let op = WriteOp::MkNod {
            parent,
            name: name.to_vec(),
            kind: FileKind::File,
            perm,
            umask: 0,
            rdev: 0,
            exclusive,
        };
        attr(self.write(op).await?)
    }

    /// Returns once every change acknowledged before it is on disk on a
    /// majority of meta replicas (namespace changes are acknowledged when
    /// written, and synced a moment later: see `WriteOp::must_be_durable`).
    pub async fn sync(&self) -> Result<()> {
        self.write(WriteOp::Sync).await.map(|_| ())
    }

    pub async fn unlink(&self, parent: InodeId, name: &[u8]) -> Result<()> {
        self.write(WriteOp::Unlink {
            parent,
            name: name.to_vec(),
        })
        .await
        .map(|_| ())
    }

    pub async fn rmdir(&self, parent: InodeId, name: &[u8]) -> Result<()> {
        self.write(WriteOp::Rmdir {
            parent,
            name: name.to_vec(),
        })
        .await
        .map(|_| ())
    }

    pub async fn rename(
        &self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<()> {
        let op = WriteOp::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            mode,
        };
        self.write(op).await.map(|_| ())
    }

    pub async fn setattr(&self, ino: InodeId, set: SetAttr) -> Result<Attr> {
        self.setattr_as(self.caller.clone(), ino, set).await
    }

    /// An attribute change on behalf of `caller`.
    pub async fn setattr_as(&self, caller: Caller, ino: InodeId, set: SetAttr) -> Result<Attr> {
        attr(self.write_as(caller, WriteOp::SetAttr { ino, set }).await?)
    }

    pub async fn readdir(&self, ino: InodeId) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = match self
                .read(ReadOp::ReadDir {
                    ino,
                    after_cookie: after,
                    limit: 1024,
                })
                .await?
            {
                NsReply::Dir(d) => d,
                other => return Err(ClientError::unexpected("Dir", other)),
            };
            let Some(last) = page.last() else {
                return Ok(out);
            };
            after = last.cookie;
            out.extend(page);
        }
    }

    pub async fn set_policy(&self, ino: InodeId, policy: Policy) -> Result<()> {
        self.write(WriteOp::SetPolicy { ino, policy })
            .await
            .map(|_| ())
    }

    /// Resolves an absolute path (symlinks are not followed).
    pub async fn resolve(&self, path: &str) -> Result<Attr> {
        let mut cur = self.getattr(InodeId::ROOT).await?;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            cur = self.lookup(cur.ino, part.as_bytes()).await?;
        }
        Ok(cur)
    }

    /// The directory holding `path` and the last component's name.
    pub async fn resolve_parent(&self, path: &str) -> Result<(Attr, Vec<u8>)> {
        let trimmed = path.trim_end_matches('/');
        let (dir, name) = match trimmed.rsplit_once('/') {
            Some((d, n)) => (d, n),
            None => ("", trimmed),
        };
        if name.is_empty() {
            return Err(ClientError::Errno(Errno::EINVAL));
        }
        Ok((self.resolve(dir).await?, name.as_bytes().to_vec()))
    }
}

/// The attributes an answer carries (`Attr`, or a create's `Made`).
pub fn attr(r: NsReply) -> Result<Attr> {
    match r {
        NsReply::Attr(a) | NsReply::Made { attr: a, .. } => Ok(a),
        other => Err(ClientError::unexpected("attributes", other)),
    }
}
