//! One multiplexed connection to one replica: calls are numbered, answers
//! are matched by number, so many calls share one TCP stream.

use crate::frame;
use sparefs_proto::msg::{Reply, Request, RequestFrame, ResponseFrame, RpcError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Reply, RpcError>>>>>;

pub struct Conn {
    next_call: AtomicU64,
    pending: Pending,
    /// Callers write their own frames (no writer task to wake: a hand-over
    /// between threads costs more than the write on a small host).
    out: tokio::sync::Mutex<BufWriter<OwnedWriteHalf>>,
    broken: Arc<AtomicBool>,
    /// When it was opened, and whether a call ever went out on it: servers
    /// close a connection that sends nothing for `FIRST_FRAME_TIMEOUT`, so
    /// the pool does not hand out one that stayed unused for half of that
    /// (it could close under the first call).
    opened: std::time::Instant,
    used: AtomicBool,
}

/// An unused pooled connection older than this is replaced, not used.
const UNUSED_MAX: Duration =
    Duration::from_secs(sparefs_proto::limits::FIRST_FRAME_TIMEOUT.as_secs() / 2);

#[derive(Debug)]
pub enum CallError {
    /// The connection failed; the request may or may not have arrived.
    Transport(String),
    Rpc(RpcError),
}

impl Conn {
    pub async fn open(address: &str, connect_timeout: Duration) -> std::io::Result<Conn> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect to {address} timed out"),
                )
            })??;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let mut rd = frame::buffered(rd);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let broken = Arc::new(AtomicBool::new(false));
        let out = tokio::sync::Mutex::new(BufWriter::new(wr));
        let rpending = pending.clone();
        let rbroken = broken.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while frame::read_frame(&mut rd, &mut buf).await.is_ok() {
                let Ok(resp) = frame::decode::<ResponseFrame>(&buf) else {
                    break;
                };
                let waiter = rpending.lock().ok().and_then(|mut p| p.remove(&resp.call));
                if let Some(w) = waiter {
                    let _ = w.send(resp.body);
                }
            }
            rbroken.store(true, Ordering::SeqCst);
            // Dropping the senders fails every call still waiting.
            if let Ok(mut p) = rpending.lock() {
                p.clear();
            }
        });
        Ok(Conn {
            next_call: AtomicU64::new(1),
            pending,
            out,
            broken,
            opened: std::time::Instant::now(),
            used: AtomicBool::new(false),
        })
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    pub async fn call(&self, body: Request, timeout: Duration) -> Result<Reply, CallError> {
        self.used.store(true, Ordering::Relaxed);
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| CallError::Transport("lock poisoned".into()))?
            .insert(call, tx);
        // A connection that broke before the call was registered would
        // never answer it: fail now instead of at the timeout.
        if self.is_broken() {
            if let Ok(mut p) = self.pending.lock() {
                p.remove(&call);
            }
            return Err(CallError::Transport("connection closed".into()));
        }
        // The timeout covers sending too: a peer that stops reading (a cut
        // link) fills the socket buffer and would hold the write forever.
        let deadline = tokio::time::Instant::now() + timeout;
        let send = async {
            let mut w = self.out.lock().await;
            // Behind half a frame nothing may go out (see BreakUnlessDone).
            if self.is_broken() {
                return false;
            }
            // A send dropped mid-frame (this timeout, or one around the
            // call) leaves half a frame on the stream: the guard retires the
            // connection.
            let mut guard = BreakUnlessDone {
                conn: self,
                done: false,
            };
            let ok = match frame::write_frame(&mut *w, &RequestFrame { call, body }).await {
                Ok(()) => w.flush().await.is_ok(),
                Err(_) => false,
            };
            guard.done = ok;
            ok
        };
        let outcome = match tokio::time::timeout_at(deadline, send).await {
            Ok(true) => tokio::time::timeout_at(deadline, rx).await,
            Ok(false) => {
                if let Ok(mut p) = self.pending.lock() {
                    p.remove(&call);
                }
                return Err(CallError::Transport("connection closed".into()));
            }
            Err(elapsed) => Err(elapsed),
        };
        match outcome {
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(e))) => Err(CallError::Rpc(e)),
            Ok(Err(_)) => Err(CallError::Transport("connection closed".into())),
            Err(_) => {
                if let Ok(mut p) = self.pending.lock() {
                    p.remove(&call);
                }
                Err(CallError::Transport("call timed out".into()))
            }
        }
    }
}

/// Retires the connection when dropped before `done` is set: half a frame
/// went out, so nothing may follow it on this stream (the pool opens a new
/// connection for the next call). Calls already sent whole keep waiting:
/// the server answers them before it gives up on the torn frame, and the
/// reader fails whoever still waits when the stream ends. (Failing them
/// here made one abandoned fragment write fail every other write waiting
/// on that chunkserver.)
struct BreakUnlessDone<'a> {
    conn: &'a Conn,
    done: bool,
}

impl Drop for BreakUnlessDone<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.conn.broken.store(true, Ordering::SeqCst);
        }
    }
}

/// Open connections by address, reopened when broken. Every client of
/// several servers (meta replicas, chunkservers) keeps one.
#[derive(Default)]
pub struct ConnPool {
    conns: Mutex<HashMap<String, Arc<Conn>>>,
}

/// How long opening a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

impl ConnPool {
    /// A working connection to `address`, opened if needed.
    pub async fn get(&self, address: &str) -> Result<Arc<Conn>, String> {
        if let Some(c) = self.conns.lock().map_err(|e| e.to_string())?.get(address) {
            let stale = !c.used.load(Ordering::Relaxed) && c.opened.elapsed() >= UNUSED_MAX;
            if !c.is_broken() && !stale {
                return Ok(c.clone());
            }
        }
        let c = Arc::new(
            Conn::open(address, CONNECT_TIMEOUT)
                .await
                .map_err(|e| format!("{address}: {e}"))?,
        );
        self.conns
            .lock()
            .map_err(|e| e.to_string())?
            .insert(address.to_string(), c.clone());
        Ok(c)
    }

    /// Drops the connection to `address` (the next call reopens it).
    pub fn forget(&self, address: &str) {
        if let Ok(mut c) = self.conns.lock() {
            c.remove(address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{serve, CallFuture, Service};
    use sparefs_proto::layout::Capability;
    use sparefs_proto::BlockId;

    /// Answers `Status` after a pause, anything else at once.
    struct Slow;

    impl Service for Slow {
        fn call(self: Arc<Self>, req: Request) -> CallFuture {
            Box::pin(async move {
                if matches!(req, Request::Status) {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Ok(Reply::Ok)
            })
        }
    }

    /// A call given up on halfway through sending its frame retires the
    /// connection, but a call sent whole before it still gets its answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_send_fails_no_other_call() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(serve(listener, Arc::new(Slow)));
        let conn = Arc::new(
            Conn::open(&addr, Duration::from_secs(2))
                .await
                .expect("open"),
        );
        let waiting = {
            let conn = conn.clone();
            tokio::spawn(async move { conn.call(Request::Status, Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let big = Request::PutFragment {
            cap: Capability::issue(&[0; 32], BlockId(1), true, 0),
            block: BlockId(1),
            index: 0,
            data: vec![7; 4 << 20],
        };
        // Polled once: it writes what the socket takes, then times out.
        let torn = conn.call(big, Duration::from_nanos(1)).await;
        assert!(matches!(torn, Err(CallError::Transport(_))), "{torn:?}");
        assert!(conn.is_broken(), "a torn connection is not used again");
        let answer = waiting.await.expect("task");
        assert!(matches!(answer, Ok(Reply::Ok)), "{answer:?}");
        let after = conn.call(Request::Status, Duration::from_secs(1)).await;
        assert!(matches!(after, Err(CallError::Transport(_))), "{after:?}");
    }
}
