//! One multiplexed connection to one replica: calls are numbered, answers
//! are matched by number, so many calls share one TCP stream.

use crate::frame;
use crate::tls::{Identity, Role, Tls};
use sparefs_proto::msg::{Reply, Request, RequestFrame, ResponseFrame, RpcError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::oneshot;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Reply, RpcError>>>>>;

pub struct Conn {
    next_call: AtomicU64,
    pending: Pending,
    /// Callers write their own frames (no writer task to wake: a hand-over
    /// between threads costs more than the write on a small host).
    out: tokio::sync::Mutex<BufWriter<Box<dyn AsyncWrite + Send + Unpin>>>,
    broken: Arc<AtomicBool>,
    /// When it was opened, and whether a call ever went out on it: servers
    /// close a connection that sends nothing for `FIRST_FRAME_TIMEOUT`, so
    /// the pool does not hand out one that stayed unused for half of that
    /// (it could close under the first call).
    opened: std::time::Instant,
    used: AtomicBool,
    /// Whom the server's certificate names (TLS connections).
    peer: Option<Identity>,
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
    /// A plaintext connection to `address`.
    pub async fn open(address: &str, connect_timeout: Duration) -> std::io::Result<Conn> {
        Self::open_with(address, connect_timeout, None).await
    }

    /// A connection to `address`; with `tls`, mutually authenticated (the
    /// server's certificate must be of the cluster CA: `peer` says whom it
    /// names).
    pub async fn open_with(
        address: &str,
        connect_timeout: Duration,
        tls: Option<&Tls>,
    ) -> std::io::Result<Conn> {
        let d = crate::dial::dial(address, connect_timeout, tls).await?;
        Ok(Self::over(d.rd, d.wr, d.peer))
    }

    /// Whom the server's certificate names, on a TLS connection.
    pub fn peer(&self) -> Option<Identity> {
        self.peer
    }

    /// A connection over an open stream's halves: a task reads answers and
    /// hands each to its caller.
    fn over<R: AsyncRead + Unpin + Send + 'static>(
        rd: R,
        wr: Box<dyn AsyncWrite + Send + Unpin>,
        peer: Option<Identity>,
    ) -> Conn {
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
        Conn {
            next_call: AtomicU64::new(1),
            pending,
            out,
            broken,
            opened: std::time::Instant::now(),
            used: AtomicBool::new(false),
            peer,
        }
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
    /// Set: every connection is mutual TLS with these credentials.
    tls: Option<Arc<Tls>>,
    /// Set (with TLS): the role every server must have (a pool of meta
    /// connections talks only to meta certificates).
    role: Option<Role>,
}

/// How long opening a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

impl ConnPool {
    /// A pool whose connections are mutual TLS with `tls`.
    pub fn with_tls(tls: Arc<Tls>) -> ConnPool {
        ConnPool {
            conns: Mutex::default(),
            tls: Some(tls),
            role: None,
        }
    }

    /// A pool whose servers, over TLS, must all be of `role`.
    pub fn expecting(mut self, role: Role) -> ConnPool {
        self.role = Some(role);
        self
    }

    /// The credentials connections are opened with, if TLS.
    pub fn tls(&self) -> Option<&Arc<Tls>> {
        self.tls.as_ref()
    }

    /// A working connection to `address`, opened if needed.
    pub async fn get(&self, address: &str) -> Result<Arc<Conn>, String> {
        if let Some(c) = self.conns.lock().map_err(|e| e.to_string())?.get(address) {
            let stale = !c.used.load(Ordering::Relaxed) && c.opened.elapsed() >= UNUSED_MAX;
            if !c.is_broken() && !stale {
                return Ok(c.clone());
            }
        }
        let c = Arc::new(
            Conn::open_with(address, CONNECT_TIMEOUT, self.tls.as_deref())
                .await
                .map_err(|e| format!("{address}: {e}"))?,
        );
        if let (Some(role), Some(who)) = (self.role, c.peer()) {
            if who.role != role {
                return Err(format!(
                    "{address}: the server's certificate names {who}, not a {}",
                    role.name()
                ));
            }
        }
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
    use crate::service::{serve, CallFuture, Peer, Service};
    use sparefs_proto::layout::Capability;
    use sparefs_proto::BlockId;

    /// A call given up on halfway through sending its frame retires the
    /// connection, but a call sent whole before it still gets its answer.
    /// The server is raw and stops reading after the first frame, so the
    /// big frame cannot go out whole however fast the machine is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_send_fails_no_other_call() {
        use tokio::io::AsyncWriteExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (got_first, first_arrived) = oneshot::channel::<u64>();
        let (answer_now, may_answer) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let (rd, mut wr) = stream.into_split();
            let mut rd = frame::buffered(rd);
            let mut buf = Vec::new();
            frame::read_frame(&mut rd, &mut buf)
                .await
                .expect("first frame");
            let first: RequestFrame = frame::decode(&buf).expect("decode");
            let _ = got_first.send(first.call);
            let _ = may_answer.await;
            let answer = ResponseFrame {
                call: first.call,
                body: Ok(Reply::Ok),
            };
            let bytes = frame::encode(&answer).expect("encode");
            wr.write_all(&bytes).await.expect("answer");
            // Hold the stream open (unread) until the test is done.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop((rd, wr));
        });
        let conn = Arc::new(
            Conn::open(&addr, Duration::from_secs(2))
                .await
                .expect("open"),
        );
        let waiting = {
            let conn = conn.clone();
            tokio::spawn(async move { conn.call(Request::Status, Duration::from_secs(10)).await })
        };
        first_arrived
            .await
            .expect("the first call reaches the server");
        // Its sender may still hold the write side for an instant.
        drop(conn.out.lock().await);
        let big = Request::PutFragment {
            cap: Capability::issue(&[0; 32], BlockId(1), true, 0, &[]),
            block: BlockId(1),
            index: 0,
            data: vec![7; 12 << 20],
            table: Vec::new(),
        };
        // Polled once: it writes what the socket takes, then times out.
        let torn = conn.call(big, Duration::from_nanos(1)).await;
        assert!(matches!(torn, Err(CallError::Transport(_))), "{torn:?}");
        assert!(conn.is_broken(), "a torn connection is not used again");
        let _ = answer_now.send(());
        let answer = waiting.await.expect("task");
        assert!(matches!(answer, Ok(Reply::Ok)), "{answer:?}");
        let after = conn.call(Request::Status, Duration::from_secs(1)).await;
        assert!(matches!(after, Err(CallError::Transport(_))), "{after:?}");
        server.abort();
    }

    /// Answers with whom its certificate says the caller is.
    struct WhoAsks;

    impl Service for WhoAsks {
        fn call(self: Arc<Self>, peer: Peer, _req: Request) -> CallFuture {
            let who = peer.who.map(|w| w.to_string()).unwrap_or_default();
            Box::pin(async move { Ok(Reply::Bytes(who.into_bytes())) })
        }
    }

    async fn listen(service: Arc<WhoAsks>, tls: Option<Arc<crate::tls::Tls>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(serve(listener, service, tls));
        addr
    }

    /// A call that must not be answered: refused at the handshake or after.
    async fn refused(addr: &str, tls: Option<&crate::tls::Tls>) -> bool {
        match Conn::open_with(addr, Duration::from_secs(2), tls).await {
            Err(_) => true,
            Ok(c) => c
                .call(Request::Status, Duration::from_secs(2))
                .await
                .is_err(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_tls_a_service_knows_who_asks_and_answers_no_stranger() {
        use crate::tls::{ClusterCa, Identity, Role, Tls};
        let ca = ClusterCa::create().expect("ca");
        let meta = Identity::new(Role::Meta, 1);
        let mount = Identity::new(Role::Mount, 7);
        let server = Arc::new(Tls::new(&ca.issue(meta).expect("cert")).expect("tls"));
        let addr = listen(Arc::new(WhoAsks), Some(server)).await;
        let ours = Tls::new(&ca.issue(mount).expect("cert")).expect("tls");
        let conn = Conn::open_with(&addr, Duration::from_secs(2), Some(&ours))
            .await
            .expect("a mount of the cluster connects");
        assert_eq!(conn.peer(), Some(meta));
        let answer = conn.call(Request::Status, Duration::from_secs(2)).await;
        assert!(
            matches!(&answer, Ok(Reply::Bytes(b)) if b == b"mount 7"),
            "{answer:?}"
        );
        assert!(
            refused(&addr, None).await,
            "a plaintext client was answered"
        );
        // It is told why, at once, whatever the size of its request (the
        // rest of which the service reads away before closing).
        for data in [Vec::new(), vec![7u8; 300_000]] {
            let plain = Conn::open(&addr, Duration::from_secs(2))
                .await
                .expect("connect");
            let started = std::time::Instant::now();
            let why = plain
                .call(
                    Request::PutFragment {
                        cap: Capability {
                            block: BlockId(1),
                            write: true,
                            expires: 0,
                            macs: Vec::new(),
                        },
                        block: BlockId(1),
                        index: 0,
                        data,
                        table: Vec::new(),
                    },
                    Duration::from_secs(5),
                )
                .await;
            assert!(
                matches!(&why, Err(CallError::Rpc(RpcError::Forbidden(m))) if m.contains("mutual TLS only")),
                "{why:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(2));
        }
        let other = ClusterCa::create().expect("ca");
        let admin = Identity::new(Role::Admin, 1);
        let stranger = Tls::new(&other.issue(admin).expect("cert")).expect("tls");
        assert!(
            refused(&addr, Some(&stranger)).await,
            "another CA's certificate was answered"
        );
        // Junk at the handshake (a plaintext frame) and strangers stop
        // nothing: the cluster's own still get answers.
        let again = Conn::open_with(&addr, Duration::from_secs(2), Some(&ours))
            .await
            .expect("still serving after bad handshakes");
        let answer = again.call(Request::Status, Duration::from_secs(2)).await;
        assert!(
            matches!(&answer, Ok(Reply::Bytes(b)) if b == b"mount 7"),
            "{answer:?}"
        );
        let plain = listen(Arc::new(WhoAsks), None).await;
        assert!(
            refused(&plain, Some(&ours)).await,
            "a TLS client took a plaintext server for the cluster"
        );
    }
}
