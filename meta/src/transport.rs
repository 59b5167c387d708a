//! Sends Raft messages to other replicas: one task and one bounded queue per
//! peer, one TCP connection each, reconnecting with backoff. A full queue or a
//! broken connection drops messages; Raft retransmits what matters.

use crate::node::{Input, InputSender, Outbox};
use crate::shared::Shared;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use sparefs_proto::msg::{Request, RequestFrame};
use sparefs_wire::dial::{dial, expect_peer, WriteHalf};
use sparefs_wire::frame;
use sparefs_wire::tls::{Identity, Role};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

pub const PEER_QUEUE_MAX: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

pub struct Transport {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    driver: InputSender,
    peers: Mutex<HashMap<u64, mpsc::Sender<Message>>>,
}

impl Transport {
    pub fn new(
        shared: Arc<Shared>,
        runtime: tokio::runtime::Handle,
        driver: InputSender,
    ) -> Transport {
        Transport {
            shared,
            runtime,
            driver,
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn queue(&self, to: u64) -> Option<mpsc::Sender<Message>> {
        let mut peers = self.peers.lock().ok()?;
        if let Some(q) = peers.get(&to) {
            if !q.is_closed() {
                return Some(q.clone());
            }
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
        peers.insert(to, tx.clone());
        self.runtime
            .spawn(peer_loop(to, rx, self.shared.clone(), self.driver.clone()));
        Some(tx)
    }
}

impl Outbox for Transport {
    fn send(&self, msgs: Vec<Message>) {
        for msg in msgs {
            let to = msg.to;
            if let Some(q) = self.queue(to) {
                if let Err(mpsc::error::TrySendError::Full(m)) = q.try_send(msg) {
                    if m.get_msg_type() == MessageType::MsgSnapshot {
                        let _ = self.driver.try_send(Input::SnapshotSent { to, ok: false });
                    }
                }
            }
        }
    }
}

/// A stream to replica `to`: with TLS, only one whose certificate names
/// that replica (Raft messages reach who they are for).
async fn connect(to: u64, address: &str, shared: &Shared) -> std::io::Result<WriteHalf> {
    let d = dial(address, CONNECT_TIMEOUT, shared.tls.as_deref()).await?;
    let replica = Identity::new(Role::Meta, to);
    expect_peer(&d, replica)?;
    Ok(d.wr)
}

async fn peer_loop(
    to: u64,
    mut rx: mpsc::Receiver<Message>,
    shared: Arc<Shared>,
    driver: InputSender,
) {
    let mut conn: Option<BufWriter<WriteHalf>> = None;
    let mut backoff_until = tokio::time::Instant::now();
    while let Some(msg) = rx.recv().await {
        let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let ok = send_one(to, &msg, &mut conn, &shared, &mut backoff_until, &mut rx).await;
        if is_snapshot {
            let _ = driver.try_send(Input::SnapshotSent { to, ok });
        }
        if !ok {
            let _ = driver.try_send(Input::Unreachable(to));
        }
    }
}

async fn send_one(
    to: u64,
    msg: &Message,
    conn: &mut Option<BufWriter<WriteHalf>>,
    shared: &Shared,
    backoff_until: &mut tokio::time::Instant,
    rx: &mut mpsc::Receiver<Message>,
) -> bool {
    if conn.is_none() {
        if tokio::time::Instant::now() < *backoff_until {
            return false;
        }
        let address = shared.members.read().ok().and_then(|m| m.get(&to).cloned());
        let Some(address) = address else { return false };
        match connect(to, &address, shared).await {
            Ok(s) => *conn = Some(BufWriter::new(s)),
            Err(e) => {
                tracing::debug!(to, "connect to {address}: {e}");
                *backoff_until = tokio::time::Instant::now() + Duration::from_millis(200);
                return false;
            }
        }
    }
    let Some(w) = conn.as_mut() else { return false };
    let bytes = match msg.write_to_bytes() {
        Ok(b) => b,
        Err(_) => return false,
    };
    let frame = RequestFrame {
        call: 0,
        body: Request::Raft {
            from: shared.id,
            msg: bytes,
        },
    };
    let mut result = frame::write_frame(w, &frame).await;
    // Coalesce whatever else is queued into the same flush.
    while result.is_ok() {
        match rx.try_recv() {
            Ok(m) if m.get_msg_type() != MessageType::MsgSnapshot => {
                let Ok(bytes) = m.write_to_bytes() else {
                    continue;
                };
                let f = RequestFrame {
                    call: 0,
                    body: Request::Raft {
                        from: shared.id,
                        msg: bytes,
                    },
                };
                result = frame::write_frame(w, &f).await;
            }
            Ok(m) => {
                // Keep snapshot messages on their own path for reporting.
                result = match m.write_to_bytes() {
                    Ok(bytes) => {
                        frame::write_frame(
                            w,
                            &RequestFrame {
                                call: 0,
                                body: Request::Raft {
                                    from: shared.id,
                                    msg: bytes,
                                },
                            },
                        )
                        .await
                    }
                    Err(_) => Ok(()),
                };
            }
            Err(_) => break,
        }
    }
    let result = match result {
        Ok(()) => w.flush().await.map_err(frame::FrameError::from),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::debug!(to, "send to replica: {e}");
        *conn = None;
        return false;
    }
    true
}
