//! The server side of the framed RPC, shared by every daemon: accept
//! connections, read request frames, run calls concurrently (at most
//! `INFLIGHT_REQUESTS_PER_CONNECTION_MAX` per connection), write answers in
//! completion order. A malformed or oversized frame closes that connection
//! only. One-way messages (Raft) are handed over inline, in arrival order.
//!
//! Everything here faces the network, so everything is bounded (the issue
//! that added these bounds showed each one stopping or bloating a daemon):
//! - connections: at most `connections_max()`; past it a new one is closed
//!   at once, and a failing `accept` (EMFILE and the like) is waited out,
//!   never a reason to stop serving;
//! - time: a connection must begin its first frame within
//!   `FIRST_FRAME_TIMEOUT`, and a frame once begun must finish within
//!   `FRAME_READ_TIMEOUT`; idle time between frames is free;
//! - memory: a silent connection holds no buffers (on a TLS listener, the
//!   handshake's state until it completes or the first-frame timeout ends
//!   it); frames grow as their bytes arrive, and all frames being received
//!   or served share one budget of `REQUEST_BYTES_IN_FLIGHT_MAX`.

use crate::frame::{self, FrameError};
use crate::tls::{Callers, Identity, Tls};
use sparefs_proto::limits::{
    CONNECTIONS_MAX, DESCRIPTORS_RESERVED, FIRST_FRAME_TIMEOUT, FRAME_READ_TIMEOUT,
    INFLIGHT_REQUESTS_PER_CONNECTION_MAX, REQUEST_BYTES_IN_FLIGHT_MAX,
};
use sparefs_proto::msg::{Reply, Request, RequestFrame, ResponseFrame, RpcError};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

pub type CallFuture = Pin<Box<dyn Future<Output = Result<Reply, RpcError>> + Send>>;

/// Who sent a request: its address, and on a TLS listener the identity its
/// certificate (verified against the cluster CA) names.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub who: Option<Identity>,
    /// Whom its certificate lets it speak for (`Any` on a plaintext
    /// cluster).
    pub callers: Callers,
}

pub trait Service: Send + Sync + 'static {
    /// Whether `req` is one-way: handled inline by `one_way`, never answered.
    fn is_one_way(&self, _req: &Request) -> bool {
        false
    }
    /// Handles a one-way message that arrived from `peer`; an error closes
    /// the connection.
    fn one_way(&self, _peer: &Peer, _req: Request) -> Result<(), String> {
        Err("no one-way messages here".into())
    }
    fn call(self: Arc<Self>, peer: Peer, req: Request) -> CallFuture;
}

/// Read buffer of a connection once it has spoken (bodies larger than this
/// are read around it).
const SERVER_READ_BUFFER_BYTES: usize = 16 * 1024;
/// How long the accept loop rests after `accept` fails for want of
/// descriptors or memory, so it does not spin while they are short.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one warning per this interval about refused connections.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The most connections this process serves at once: `CONNECTIONS_MAX`, or
/// fewer when the open-file limit leaves less room next to the descriptors
/// the daemon needs for itself.
pub fn connections_max() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    // A quarter of a small limit, at most DESCRIPTORS_RESERVED of a large one.
    let room = soft.saturating_sub(DESCRIPTORS_RESERVED.min(soft / 4));
    room.clamp(16, CONNECTIONS_MAX)
}

/// Raises this process's open-file limit to its hard limit (daemons call it
/// at start: the default soft limit of 1024 would cap their connections).
pub fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("raise the open-file limit from {soft} to {hard}: {e}");
            }
        }
    }
}

/// Serves `listener` until the process ends; never returns on its own.
/// With `tls`, a connection must complete a mutual TLS handshake (a
/// certificate of the cluster CA naming a role and id) within
/// `FIRST_FRAME_TIMEOUT`, before any of its bytes are read as a request.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    tls: Option<Arc<Tls>>,
) -> std::io::Result<()> {
    let cap = connections_max();
    let slots = Arc::new(Semaphore::new(cap));
    let budget_kib = u32::try_from(REQUEST_BYTES_IN_FLIGHT_MAX / 1024).unwrap_or(u32::MAX);
    let budget = Arc::new(Semaphore::new(budget_kib as usize));
    let mut warned: Option<Instant> = None;
    let mut warn = |what: &dyn std::fmt::Display| {
        if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            tracing::warn!("{what}");
            warned = Some(Instant::now());
        }
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: wait for some to be
                // freed. Anything else concerns one connection only.
                warn(&format_args!("accept: {e}; still serving"));
                if is_shortage(&e) {
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn(&format_args!(
                "connection limit reached ({cap}); closing new connections"
            ));
            drop(stream);
            continue;
        };
        let service = service.clone();
        let budget = budget.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let served = match tls {
                Some(tls) => tls_connection(stream, peer, &tls, service, budget).await,
                None => connection(stream, peer, service, budget).await,
            };
            if let Err(e) = served {
                tracing::debug!(%peer, "connection closed: {e}");
            }
            drop(slot);
        });
    }
}

fn is_shortage(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM]
        .iter()
        .any(|x| *x as i32 == code)
}

fn timed_out(what: &str) -> FrameError {
    FrameError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        what.to_string(),
    ))
}

async fn connection<S: Service>(
    stream: TcpStream,
    peer: SocketAddr,
    service: Arc<S>,
    budget: Arc<Semaphore>,
) -> Result<(), FrameError> {
    stream.set_nodelay(true)?;
    // Until the peer speaks it holds nothing but this small task and its
    // socket: the rest of the connection's state is boxed only then.
    // (`peek`, not `readable`: a fresh socket may be reported readable
    // before it holds a byte.)
    let first = tokio::time::timeout(FIRST_FRAME_TIMEOUT, stream.peek(&mut [0u8; 1]))
        .await
        .map_err(|_| timed_out("no frame within the first-frame timeout"))??;
    if first == 0 {
        return Ok(());
    }
    let peer = Peer {
        addr: peer,
        who: None,
        callers: Callers::Any,
    };
    let (rd, wr) = stream.into_split();
    Box::pin(spoken_connection(rd, wr, peer, service, budget)).await
}

/// A connection on a TLS listener: the handshake (the client's certificate
/// verified, its identity taken) within the first-frame timeout, then
/// frames as on any connection.
async fn tls_connection<S: Service>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: &Tls,
    service: Arc<S>,
    budget: Arc<Semaphore>,
) -> Result<(), FrameError> {
    stream.set_nodelay(true)?;
    // One deadline for the whole handshake, however it is sent.
    let deadline = tokio::time::Instant::now() + FIRST_FRAME_TIMEOUT;
    let late = || timed_out("no TLS handshake within the first-frame timeout");
    // A TLS handshake record starts with 22; a plaintext frame with the
    // high byte of its length (0). Tell a plaintext client why it is not
    // served instead of closing on it (it would retry until it timed out).
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first))
        .await
        .map_err(|_| late())??;
    if peeked == 1 && first[0] != TLS_HANDSHAKE_RECORD {
        return refuse_plaintext(stream, deadline).await;
    }
    let (stream, who, callers) = tokio::time::timeout_at(deadline, tls.accept(stream))
        .await
        .map_err(|_| late())??;
    let peer = Peer {
        addr: peer,
        who: Some(who),
        callers,
    };
    let (rd, wr) = tokio::io::split(stream);
    Box::pin(spoken_connection(rd, wr, peer, service, budget)).await
}

/// The first byte of a TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 22;

/// What a plaintext client of a TLS service is told.
pub const TLS_ONLY: &str =
    "this cluster speaks mutual TLS only: connect with --tls DIR (a `sparefs up` cluster keeps DATA/tls/admin)";

/// Answers the first request of a plaintext client on a TLS listener with
/// `Forbidden` and why, then closes. Reads only the frame's length and the
/// call number that starts its body (a varint: at most 10 bytes), so a
/// flood of these holds no memory, within the handshake's deadline.
async fn refuse_plaintext(
    mut stream: TcpStream,
    deadline: tokio::time::Instant,
) -> Result<(), FrameError> {
    let mut head = [0u8; 14];
    let read = async {
        let mut got = 0;
        while got < head.len() {
            let n = stream.read(&mut head[got..]).await?;
            if n == 0 {
                break;
            }
            got += n;
            let len = (got >= 4).then(|| u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
            if let Some(len) = len {
                if let Ok((call, _)) = postcard::take_from_bytes::<u64>(&head[4..got]) {
                    return Ok(Some(call));
                }
                if got - 4 >= len as usize {
                    break;
                }
            }
        }
        Ok::<_, FrameError>(None)
    };
    let call = tokio::time::timeout_at(deadline, read)
        .await
        .map_err(|_| timed_out("no first frame within the first-frame timeout"))??;
    let Some(call) = call else {
        return Ok(());
    };
    let reply = ResponseFrame {
        call,
        body: Err(RpcError::Forbidden(TLS_ONLY.into())),
    };
    let answer = async {
        frame::write_frame(&mut stream, &reply).await?;
        stream.shutdown().await?;
        // Closing with the rest of its request unread would reset the
        // connection, and the client could lose the answer: read it away
        // (into a small buffer, a bounded amount) until it closes too.
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < 1 << 20 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, FrameError>(())
    };
    let _ = tokio::time::timeout_at(deadline, answer).await;
    Ok(())
}

/// A connection that has begun to send: reads frames until it closes.
async fn spoken_connection<S, R, W>(
    rd: R,
    wr: W,
    peer: Peer,
    service: Arc<S>,
    budget: Arc<Semaphore>,
) -> Result<(), FrameError>
where
    S: Service,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let mut rd = BufReader::with_capacity(SERVER_READ_BUFFER_BYTES, rd);
    let (resp_tx, mut resp_rx) = mpsc::channel::<(ResponseFrame, Option<OwnedSemaphorePermit>)>(
        INFLIGHT_REQUESTS_PER_CONNECTION_MAX,
    );
    let writer = tokio::spawn(async move {
        let mut w = BufWriter::new(wr);
        while let Some((resp, _held)) = resp_rx.recv().await {
            if frame::write_frame(&mut w, &resp).await.is_err() {
                return;
            }
            while let Ok((more, _held)) = resp_rx.try_recv() {
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
        // Idle time between frames is free; a frame once begun is not.
        match rd.fill_buf().await {
            Ok([]) => break Err(FrameError::Closed),
            Ok(_) => {}
            Err(e) => break Err(e.into()),
        }
        let deadline = tokio::time::Instant::now() + FRAME_READ_TIMEOUT;
        let read = frame::read_frame_budgeted(&mut rd, &mut buf, Some(&budget));
        let held = match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => break Err(e),
            Err(_) => break Err(timed_out("frame not received within the frame timeout")),
        };
        let req: RequestFrame = match frame::decode(&buf) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%addr, "malformed request frame, closing the connection: {e}");
                break Err(e);
            }
        };
        if service.is_one_way(&req.body) {
            if let Err(e) = service.one_way(&peer, req.body) {
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
            let kind = req.body.kind();
            let started = Instant::now();
            let body = service.call(peer, req.body).await;
            record(kind, started, &body);
            // The request's bytes stay counted until its answer is written
            // (an answer is at most as large as what a request may ask for).
            let _ = resp_tx
                .send((
                    ResponseFrame {
                        call: req.call,
                        body,
                    },
                    held,
                ))
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

/// A request served, in the process's metrics (nothing when no exporter
/// is installed): by kind, its latency, and errors by kind and error.
fn record(kind: &'static str, started: Instant, body: &Result<Reply, RpcError>) {
    metrics::histogram!("sparefs_request_seconds", "kind" => kind)
        .record(started.elapsed().as_secs_f64());
    if let Err(e) = body {
        let error: &'static str = e.into();
        metrics::counter!("sparefs_request_errors_total", "kind" => kind, "error" => error)
            .increment(1);
    }
}
