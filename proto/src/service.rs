//! The server side of the framed RPC, shared by every daemon: accept
//! connections, read request frames, run calls concurrently (at most
//! `INFLIGHT_REQUESTS_PER_CONNECTION_MAX` per connection), write answers in
//! completion order. A malformed or oversized frame closes that connection
//! only. One-way messages (Raft) are handed over inline, in arrival order.

use crate::frame::{self, FrameError};
use crate::limits::INFLIGHT_REQUESTS_PER_CONNECTION_MAX;
use crate::msg::{Reply, Request, RequestFrame, ResponseFrame, RpcError};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

pub type CallFuture = Pin<Box<dyn Future<Output = Result<Reply, RpcError>> + Send>>;

pub trait Service: Send + Sync + 'static {
    /// Whether `req` is one-way: handled inline by `one_way`, never answered.
    fn is_one_way(&self, _req: &Request) -> bool {
        false
    }
    /// Handles a one-way message; an error closes the connection.
    fn one_way(&self, _req: Request) -> Result<(), String> {
        Err("no one-way messages here".into())
    }
    fn call(self: Arc<Self>, req: Request) -> CallFuture;
}

pub async fn serve<S: Service>(listener: TcpListener, service: Arc<S>) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let service = service.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, service).await {
                tracing::debug!(%peer, "connection closed: {e}");
            }
        });
    }
}

async fn connection<S: Service>(stream: TcpStream, service: Arc<S>) -> Result<(), FrameError> {
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    let mut rd = frame::buffered(rd);
    let (resp_tx, mut resp_rx) =
        mpsc::channel::<ResponseFrame>(INFLIGHT_REQUESTS_PER_CONNECTION_MAX);
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
        if service.is_one_way(&req.body) {
            if let Err(e) = service.one_way(req.body) {
                break Err(FrameError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e,
                )));
            }
            continue;
        }
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break Ok(());
        };
        let service = service.clone();
        let resp_tx = resp_tx.clone();
        tokio::spawn(async move {
            let body = service.call(req.body).await;
            let _ = resp_tx
                .send(ResponseFrame {
                    call: req.call,
                    body,
                })
                .await;
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
