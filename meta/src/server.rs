//! The replica's requests: client calls, Raft messages from peers (one-way,
//! in order), snapshot pieces and status. Connections are handled by
//! `proto::service`.

use crate::node::{Input, InputSender};
use crate::shared::Shared;
use crate::snapshot::SnapshotFetcher;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Message, MessageType};
use sparefs_proto::msg::{Reply, Request, RpcError, RECALL_WAIT};
use sparefs_proto::namespace::{Caller, Time, WriteOp};
use sparefs_proto::{BlockId, ChunkserverId};
use sparefs_wire::service::{CallFuture, Peer, Service};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub struct Server {
    pub store: Arc<crate::store::Store>,
    pub shared: Arc<Shared>,
    pub driver: InputSender,
    pub dir: PathBuf,
    pub fetcher: Arc<SnapshotFetcher>,
    /// Which chunkserver each chunkserver certificate registered as.
    pub chunkserver_certs: crate::access::ChunkserverCerts,
    /// An fsck check is running (one at a time).
    pub fsck_running: std::sync::atomic::AtomicBool,
}

impl Server {
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> anyhow::Result<()> {
        let tls = self.shared.tls.clone();
        sparefs_wire::service::serve(listener, self, tls).await?;
        Ok(())
    }

    fn raft_message(&self, m: Message) {
        if m.get_msg_type() == MessageType::MsgSnapshot {
            self.fetcher
                .start(m, self.shared.clone(), self.driver.clone());
        } else {
            // A full queue drops the message; Raft retransmits.
            let _ = self.driver.try_send(Input::Raft(Box::new(m)));
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, RpcError>>) -> Input,
    ) -> Result<T, RpcError> {
        let (tx, rx) = oneshot::channel();
        self.driver.try_send(make(tx)).map_err(|_| RpcError::Busy)?;
        rx.await.map_err(|_| RpcError::Busy)?
    }

    /// Answers one request. (Long: one short arm per `Request` kind, an
    /// exhaustive dispatch that reads best in one place.)
    async fn handle(self: Arc<Self>, peer: Peer, mut body: Request) -> Result<Reply, RpcError> {
        crate::access::admit(peer.who, &body)?;
        crate::access::speak_for(peer.callers, &mut body);
        match body {
            Request::Read { client, caller, op } => {
                validate_caller(&caller)?;
                if self.shared.is_leader_ready() {
                    return self.read_on_lease(client, caller, op).await.map(Reply::Ns);
                }
                Ok(Reply::Ns(
                    self.ask(|reply| Input::Read {
                        client,
                        caller,
                        op,
                        reply,
                    })
                    .await?,
                ))
            }
            Request::WaitRecall { client } => {
                if !self.shared.is_leader_ready() {
                    return Err(RpcError::NotLeader { leader: None });
                }
                let recalls = &self.shared.recalls;
                let changed = recalls.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let dirs = recalls.take(client);
                if !dirs.is_empty() {
                    return Ok(Reply::Recall(dirs));
                }
                let _ = tokio::time::timeout(RECALL_WAIT, changed).await;
                Ok(Reply::Recall(recalls.take(client)))
            }
            Request::Write { caller, id, op } => {
                validate_caller(&caller)?;
                let op = self.bind_registration(&peer, op);
                Ok(Reply::Ns(
                    self.ask(|reply| Input::Write {
                        caller,
                        id,
                        op,
                        reply,
                    })
                    .await?,
                ))
            }
            Request::Raft { .. } => Err(RpcError::BadRequest("raft messages are one-way".into())),
            Request::PutFragment { .. }
            | Request::GetFragment { .. }
            | Request::GetBlockTable { .. }
            | Request::HashFragment { .. } => Err(RpcError::BadRequest(
                "fragment requests go to chunkservers, not the meta".into(),
            )),
            Request::SnapshotPiece { index, cf, after } => {
                let dir = self.dir.clone();
                tokio::task::spawn_blocking(move || {
                    crate::snapshot::serve_piece(&dir, index, cf, after)
                })
                .await
                .map_err(|e| RpcError::Storage(e.to_string()))?
            }
            Request::Status => {
                let (tx, rx) = oneshot::channel();
                self.driver
                    .try_send(Input::Status(tx))
                    .map_err(|_| RpcError::Busy)?;
                Ok(Reply::Status(rx.await.map_err(|_| RpcError::Busy)?))
            }
            Request::AddReplica {
                id,
                replica,
                address,
            } => {
                if replica.0 == 0 || address.parse::<std::net::SocketAddr>().is_err() {
                    return Err(RpcError::BadRequest(format!(
                        "replica id must be non-zero and {address:?} a socket address"
                    )));
                }
                let mut cc = ConfChange::default();
                cc.set_change_type(ConfChangeType::AddNode);
                cc.node_id = replica.0;
                self.ask(|reply| Input::ConfChange {
                    id,
                    cc,
                    address,
                    reply,
                })
                .await?;
                Ok(Reply::Ok)
            }
            Request::RemoveReplica { id, replica } => {
                let mut cc = ConfChange::default();
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = replica.0;
                self.ask(|reply| Input::ConfChange {
                    id,
                    cc,
                    address: String::new(),
                    reply,
                })
                .await?;
                Ok(Reply::Ok)
            }
            Request::KeepAlive { client, open } => {
                if open.len() > sparefs_proto::limits::KEEPALIVE_OPEN_MAX {
                    return Err(RpcError::BadRequest("too many open files reported".into()));
                }
                self.ask(|reply| Input::KeepAlive {
                    client,
                    open,
                    reply,
                })
                .await?;
                Ok(Reply::Ok)
            }
            Request::TransferLeader { replica } => {
                self.ask(|reply| Input::TransferLeader { replica, reply })
                    .await?;
                Ok(Reply::Ok)
            }
            Request::Heartbeat(report) => {
                if report.done.len() > REPORT_MAX || report.lost.len() > REPORT_MAX {
                    return Err(RpcError::BadRequest("heartbeat report too long".into()));
                }
                self.chunkserver_certs
                    .check_report(peer.who, report.chunkserver, &*self.store)?;
                let chunkserver = report.chunkserver;
                let (repairs, compactions) =
                    self.ask(|reply| Input::Heartbeat { report, reply }).await?;
                Ok(Reply::Tasks {
                    repairs,
                    compactions,
                    inventory_now: self.shared.inventories().should_send(chunkserver),
                })
            }
            Request::Inventory {
                chunkserver,
                after,
                items,
                last_page,
            } => {
                self.chunkserver_certs
                    .check_report(peer.who, chunkserver, &*self.store)?;
                self.inventory(chunkserver, after, items, last_page).await
            }
            Request::Fsck { fresh_inventories } => {
                if !self.shared.is_leader_ready() {
                    return Err(RpcError::NotLeader { leader: None });
                }
                let stale = if fresh_inventories {
                    self.fresh_inventories().await
                } else {
                    Vec::new()
                };
                let inventories = self.shared.inventories().results();
                let shared = self.shared.clone();
                let mut report = self
                    .whole_state_read(move |view| {
                        let clients = shared
                            .clients_heard
                            .read()
                            .map(|c| c.clone())
                            .unwrap_or_default();
                        crate::ns::fsck::check(
                            view,
                            Some(crate::ns::fsck::Online {
                                chunkservers: &*shared,
                                inventories: &inventories,
                                clients: &clients,
                            }),
                            &shared.fsck_progress,
                        )
                    })
                    .await?;
                for cs in stale {
                    report.findings.push(sparefs_proto::fsck::Finding {
                        kind: sparefs_proto::fsck::FindingKind::NoInventory,
                        ino: None,
                        path: None,
                        detail: format!(
                            "chunkserver {cs} sent no whole inventory of its disk within {} s: its orphan and missing fragments are not checked",
                            INVENTORY_WAIT.as_secs()
                        ),
                        fix: None,
                    });
                }
                Ok(Reply::Fsck(report))
            }
            Request::Digest => self
                .whole_state_read(|view| crate::ns::fsck::digest(view))
                .await
                .map(Reply::Digest),
            Request::RepairStatus => {
                if !self.shared.is_leader_ready() {
                    return Err(RpcError::NotLeader { leader: None });
                }
                let progress = self
                    .shared
                    .repair
                    .lock()
                    .map_err(|_| RpcError::Busy)?
                    .progress();
                Ok(Reply::Repair(progress))
            }
        }
    }

    /// Runs a read of the whole state (fsck, replica digest) on a snapshot
    /// in the blocking pool: one at a time (Busy meanwhile), and to its end
    /// even if the caller stops waiting.
    async fn whole_state_read<T: Send + 'static>(
        self: &Arc<Self>,
        read: impl FnOnce(&crate::store::SnapshotView<'_>) -> Result<T, crate::kv::StoreError>
            + Send
            + 'static,
    ) -> Result<T, RpcError> {
        use std::sync::atomic::Ordering;
        /// Clears the flag when the read ends, however it ends.
        struct Running(Arc<Server>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.fsck_running.store(false, Ordering::Release);
            }
        }
        if self.fsck_running.swap(true, Ordering::AcqRel) {
            return Err(RpcError::Busy);
        }
        let running = Running(self.clone());
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let _running = running;
            read(&store.snapshot_view())
        })
        .await
        .map_err(|e| RpcError::Storage(e.to_string()))?
        .map_err(|e| RpcError::Storage(e.to_string()))
    }

    /// A chunkserver with a certificate registers as the chunkserver its
    /// certificate names, whatever token it sends (`access`).
    fn bind_registration(&self, peer: &Peer, op: WriteOp) -> WriteOp {
        match (op, peer.who) {
            (
                WriteOp::RegisterChunkserver {
                    address,
                    capacity_bytes,
                    ..
                },
                Some(who),
            ) => WriteOp::RegisterChunkserver {
                address,
                capacity_bytes,
                token: crate::access::registration_token(who.id),
            },
            (op, _) => op,
        }
    }

    /// Judges one page of a chunkserver's inventory against the block
    /// table: garbage to delete goes back in the reply, fragments the table
    /// expects there but the page lacks are marked lost (to be rebuilt).
    async fn inventory(
        &self,
        server: ChunkserverId,
        after: Option<(BlockId, u8)>,
        items: Vec<(BlockId, u8, u32)>,
        last_page: bool,
    ) -> Result<Reply, RpcError> {
        if items.len() > INVENTORY_PAGE_MAX {
            return Err(RpcError::BadRequest(format!(
                "inventory page of {} items (most {INVENTORY_PAGE_MAX})",
                items.len()
            )));
        }
        if items
            .windows(2)
            .any(|w| (w[0].0, w[0].1) >= (w[1].0, w[1].1))
            || after.is_some_and(|a| items.first().is_some_and(|f| (f.0, f.1) <= a))
        {
            return Err(RpcError::BadRequest("inventory page not sorted".into()));
        }
        if !self.shared.is_leader_ready() {
            // Only a leader with every committed entry applied knows which
            // blocks exist; anyone else could call live fragments garbage.
            return Err(RpcError::NotLeader { leader: None });
        }
        let tuning = self.shared.tuning.clone();
        let store = self.store.clone();
        let listed = items.len();
        let now = Time::now();
        let settle = tuning.gc_grace.max(std::time::Duration::from_secs(60));
        let settled_before = Time {
            secs: now.secs - settle.as_secs() as i64,
            nanos: now.nanos,
        };
        let verdicts = tokio::task::spawn_blocking(move || {
            crate::ns::blocks::gc_verdicts(
                &*store,
                server,
                after,
                &items,
                last_page,
                tuning.gc_grace.as_secs() as u32,
                settled_before,
            )
        })
        .await
        .map_err(|e| RpcError::Storage(e.to_string()))?
        .map_err(|e| RpcError::Storage(e.to_string()))?;
        self.shared.inventories().page(
            server,
            after.is_none(),
            listed,
            verdicts.delete.len(),
            &verdicts.missing,
            last_page,
        );
        for (block, slot) in verdicts.missing {
            tracing::warn!(
                block = block.0,
                slot,
                chunkserver = server.0,
                "fragment missing from inventory"
            );
            let _ = self.driver.try_send(Input::Propose(WriteOp::LoseFragment {
                block,
                slot,
                server,
            }));
        }
        Ok(Reply::Delete(verdicts.delete))
    }
}

/// How long an fsck waits for the chunkservers' fresh inventories.
const INVENTORY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Server {
    /// Asks every chunkserver that is up for an inventory of its disk and
    /// waits (at most `INVENTORY_WAIT`) until each has sent a whole one;
    /// the ones that did not.
    async fn fresh_inventories(&self) -> Vec<ChunkserverId> {
        let asked = self.shared.inventories().want_fresh();
        let deadline = tokio::time::Instant::now() + INVENTORY_WAIT;
        loop {
            let waiting: Vec<ChunkserverId> = {
                let ledger = self.shared.inventories();
                let mut up = self.shared.chunkservers_up();
                up.retain(|cs| !ledger.done_since(*cs, asked));
                up
            };
            if waiting.is_empty() || tokio::time::Instant::now() >= deadline {
                return waiting;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// Most finished tasks or lost fragments one heartbeat may report.
pub const REPORT_MAX: usize = 65_536;
/// Most fragments one inventory page may list.
pub const INVENTORY_PAGE_MAX: usize = 65_536;

impl Service for Server {
    fn is_one_way(&self, req: &Request) -> bool {
        matches!(req, Request::Raft { .. })
    }

    fn one_way(&self, peer: &Peer, req: Request) -> Result<(), String> {
        let Request::Raft { from, msg } = req else {
            return Err("not a raft message".into());
        };
        if let Err(e) = crate::access::admit_raft(peer.who, from.0) {
            tracing::warn!(peer = %peer.addr, "refused a raft message, closing the connection: {e}");
            return Err(e);
        }
        let peer = peer.addr;
        let mut m = Message::default();
        if m.merge_from_bytes(&msg).is_err() || m.from != from.0 {
            tracing::warn!(%peer, "malformed raft message, closing the connection");
            return Err("malformed raft message".into());
        }
        if let Err(e) = crate::raft_guard::admit_from_network(&m, self.shared.id.0) {
            tracing::warn!(%peer, "refused a raft message, closing the connection: {e}");
            return Err(e.to_string());
        }
        self.raft_message(m);
        Ok(())
    }

    fn call(self: Arc<Self>, peer: Peer, req: Request) -> CallFuture {
        Box::pin(self.handle(peer, req))
    }
}

impl Server {
    /// A read served by a leader from its own state, without a trip through
    /// the Raft driver: linearizable under the same leader lease that
    /// raft-rs's `LeaseBased` reads rely on (check_quorum: a leader cut off
    /// from a majority steps down within an election timeout, before any
    /// other replica can win an election), because a leader acknowledges a
    /// write only after applying it here, and `leader_ready` holds only once
    /// it has applied everything its predecessors committed. Reads that
    /// scan whole tables go to a blocking thread.
    async fn read_on_lease(
        &self,
        client: sparefs_proto::ClientId,
        caller: Caller,
        op: sparefs_proto::namespace::ReadOp,
    ) -> Result<sparefs_proto::namespace::NsReply, RpcError> {
        use sparefs_proto::namespace::ReadOp;
        let scans = matches!(op, ReadOp::Health | ReadOp::ListChunkservers);
        let store = self.store.clone();
        let shared = self.shared.clone();
        let run = move || crate::reads::read_now(&store, &shared, client, &caller, &op);
        if scans {
            tokio::task::spawn_blocking(run)
                .await
                .map_err(|e| RpcError::Storage(e.to_string()))?
        } else {
            run()
        }
    }
}

fn validate_caller(c: &Caller) -> Result<(), RpcError> {
    if c.groups.len() > 65_536 {
        return Err(RpcError::BadRequest("too many supplementary groups".into()));
    }
    Ok(())
}
