//! The replica's TCP endpoint: client requests, Raft messages from peers,
//! snapshot pieces and status. Each connection has a reader (which closes
//! the connection on a malformed or oversized frame) and a writer; requests
//! run concurrently, at most `INFLIGHT_REQUESTS_PER_CONNECTION_MAX` each.

use crate::node::{Input, InputSender, Shared};
use crate::snapshot::SnapshotFetcher;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Message, MessageType};
use sparefs_proto::frame::{self, FrameError};
use sparefs_proto::limits::*;
use sparefs_proto::msg::{Reply, Request, RequestFrame, ResponseFrame, RpcError};
use sparefs_proto::namespace::Caller;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

pub struct Server {
    pub shared: Arc<Shared>,
    pub driver: InputSender,
    pub dir: PathBuf,
    pub fetcher: Arc<SnapshotFetcher>,
}

impl Server {
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> anyhow::Result<()> {
        loop {
            let (stream, peer) = listener.accept().await?;
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.connection(stream).await {
                    tracing::debug!(%peer, "connection closed: {e}");
                }
            });
        }
    }

    async fn connection(self: Arc<Self>, stream: TcpStream) -> Result<(), FrameError> {
        stream.set_nodelay(true)?;
        let (mut rd, wr) = stream.into_split();
        let (resp_tx, mut resp_rx) = mpsc::channel::<ResponseFrame>(INFLIGHT_REQUESTS_PER_CONNECTION_MAX);
        let writer = tokio::spawn(async move {
            let mut w = BufWriter::new(wr);
            while let Some(resp) = resp_rx.recv().await {
                if frame::write_frame(&mut w, &resp).await.is_err() {
                    return;
                }
                while let Ok(more) = resp_rx.try_recv() {
                    if frame::write_frame(&mut w, &more).await.is_err() {
                        return;
                    }
                }
                if w.flush().await.is_err() {
                    return;
                }
            }
        });
        let limit = Arc::new(Semaphore::new(INFLIGHT_REQUESTS_PER_CONNECTION_MAX));
        let mut buf = Vec::new();
        let result = loop {
            if let Err(e) = frame::read_frame(&mut rd, &mut buf).await {
                break Err(e);
            }
            let req: RequestFrame = match frame::decode(&buf) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("malformed request frame, closing the connection: {e}");
                    break Err(e);
                }
            };
            if let Request::Raft { from, msg } = req.body {
                // Raft messages are one-way and handled in order.
                let mut m = Message::default();
                if m.merge_from_bytes(&msg).is_err() || m.from != from.0 {
                    tracing::warn!("malformed raft message, closing the connection");
                    break Err(FrameError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, "bad raft message")));
                }
                self.raft_message(m);
                continue;
            }
            let Ok(permit) = limit.clone().acquire_owned().await else { break Ok(()) };
            let this = self.clone();
            let resp_tx = resp_tx.clone();
            tokio::spawn(async move {
                let body = this.handle(req.body).await;
                let _ = resp_tx.send(ResponseFrame { call: req.call, body }).await;
                drop(permit);
            });
        };
        drop(resp_tx);
        let _ = writer.await;
        match result {
            Err(FrameError::Closed) => Ok(()),
            other => other,
        }
    }

    fn raft_message(&self, m: Message) {
        if m.get_msg_type() == MessageType::MsgSnapshot {
            self.fetcher.start(m, self.shared.clone(), self.driver.clone());
        } else {
            // A full queue drops the message; Raft retransmits.
            let _ = self.driver.try_send(Input::Raft(Box::new(m)));
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, RpcError>>) -> Input) -> Result<T, RpcError> {
        let (tx, rx) = oneshot::channel();
        self.driver.try_send(make(tx)).map_err(|_| RpcError::Busy)?;
        rx.await.map_err(|_| RpcError::Busy)?
    }

    async fn handle(&self, body: Request) -> Result<Reply, RpcError> {
        match body {
            Request::Read { caller, op } => {
                validate_caller(&caller)?;
                Ok(Reply::Ns(self.ask(|reply| Input::Read { caller, op, reply }).await?))
            }
            Request::Write { caller, id, op } => {
                validate_caller(&caller)?;
                Ok(Reply::Ns(self.ask(|reply| Input::Write { caller, id, op, reply }).await?))
            }
            Request::Raft { .. } => Err(RpcError::BadRequest("raft messages are one-way".into())),
            Request::SnapshotPiece { index, cf, after } => {
                let dir = self.dir.clone();
                tokio::task::spawn_blocking(move || crate::snapshot::serve_piece(&dir, index, cf, after))
                    .await
                    .map_err(|e| RpcError::Storage(e.to_string()))?
            }
            Request::Status => {
                let (tx, rx) = oneshot::channel();
                self.driver.try_send(Input::Status(tx)).map_err(|_| RpcError::Busy)?;
                Ok(Reply::Status(rx.await.map_err(|_| RpcError::Busy)?))
            }
            Request::AddReplica { id, replica, address } => {
                if replica.0 == 0 || address.parse::<std::net::SocketAddr>().is_err() {
                    return Err(RpcError::BadRequest(format!("replica id must be non-zero and {address:?} a socket address")));
                }
                let mut cc = ConfChange::default();
                cc.set_change_type(ConfChangeType::AddNode);
                cc.node_id = replica.0;
                self.ask(|reply| Input::ConfChange { id, cc, address, reply }).await?;
                Ok(Reply::Ok)
            }
            Request::RemoveReplica { id, replica } => {
                let mut cc = ConfChange::default();
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = replica.0;
                self.ask(|reply| Input::ConfChange { id, cc, address: String::new(), reply }).await?;
                Ok(Reply::Ok)
            }
            Request::TransferLeader { replica } => {
                self.ask(|reply| Input::TransferLeader { replica, reply }).await?;
                Ok(Reply::Ok)
            }
            Request::Heartbeat { chunkserver, capacity_bytes, used_bytes, errors } => {
                self.ask(|reply| Input::Heartbeat { chunkserver, capacity_bytes, used_bytes, errors, reply }).await?;
                Ok(Reply::Ok)
            }
        }
    }
}

fn validate_caller(c: &Caller) -> Result<(), RpcError> {
    if c.groups.len() > 65_536 {
        return Err(RpcError::BadRequest("too many supplementary groups".into()));
    }
    Ok(())
}
