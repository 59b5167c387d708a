//! A blocking connection of one thread's own, for threads that may block on
//! a call (the mount's fuser threads): the thread sends its call and reads
//! the answer itself, so the answer wakes it directly, instead of waking a
//! reader task that then wakes it (two thread hand-overs per call: a fifth
//! of a lookup's time on a small host).
//!
//! A lane carries one call at a time. Any failure to send or to read the
//! answer retires it, and the caller goes the multiplexed way (`conn`) with
//! the same request (writes keep their id, so a retry is applied once).
//! Only threads that asked for lanes use them: a tokio worker must never
//! block.

use sparefs_proto::limits::FRAME_BYTES_MAX;
use sparefs_proto::msg::{Reply, Request, RequestFrame, ResponseFrame, RpcError};
use sparefs_wire::conn::CONNECT_TIMEOUT;
use sparefs_wire::frame;
use sparefs_wire::tls::{Role, Tls};
use std::cell::{Cell, RefCell};
use std::io::{BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static LANE: RefCell<Option<Lane>> = const { RefCell::new(None) };
}

/// Lets meta calls made on this thread use a lane of its own.
pub fn enable_for_this_thread() {
    ENABLED.with(|e| e.set(true));
}

/// Calls `address` (a meta replica) on this thread's lane, over TLS with
/// `tls`. `None`: lanes are off on this thread, or the lane failed (and is
/// retired): use a shared connection.
pub fn call(
    address: &str,
    tls: Option<&Tls>,
    body: &Request,
    timeout: Duration,
) -> Option<Result<Reply, RpcError>> {
    if !ENABLED.with(|e| e.get()) {
        return None;
    }
    LANE.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.as_ref().is_some_and(|l| l.address != address) {
            *slot = None;
        }
        if slot.is_none() {
            *slot = match Lane::open(address, tls) {
                Ok(lane) => Some(lane),
                Err(e) => {
                    tracing::debug!("lane to {address}: {e}");
                    None
                }
            };
        }
        let lane = slot.as_mut()?;
        match lane.call(body, timeout) {
            Ok(answer) => Some(answer),
            Err(e) => {
                tracing::debug!("lane to {address} retired: {e}");
                *slot = None;
                None
            }
        }
    })
}

/// A lane's byte stream: the socket itself, or TLS over it.
trait Stream: Read + Write {}
impl<S: Read + Write> Stream for S {}

struct Lane {
    address: String,
    /// The socket, to set its timeouts (TLS holds it too).
    socket: TcpStream,
    io: BufReader<Box<dyn Stream>>,
    next_call: u64,
    buf: Vec<u8>,
    /// The socket timeouts set (each change is a system call).
    timeout: Option<Duration>,
}

impl Lane {
    fn open(address: &str, tls: Option<&Tls>) -> std::io::Result<Lane> {
        let addr = address
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
        let socket = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        socket.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match tls {
            None => Box::new(socket.try_clone()?),
            Some(tls) => {
                socket.set_read_timeout(Some(sparefs_wire::dial::HANDSHAKE_TIMEOUT))?;
                socket.set_write_timeout(Some(sparefs_wire::dial::HANDSHAKE_TIMEOUT))?;
                let (stream, who) = tls.connect_blocking(socket.try_clone()?)?;
                if who.role != Role::Meta {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!("{address} presents {who}, not a meta replica"),
                    ));
                }
                Box::new(stream)
            }
        };
        Ok(Lane {
            address: address.to_string(),
            socket,
            io: BufReader::with_capacity(64 * 1024, stream),
            next_call: 1,
            buf: Vec::new(),
            timeout: None,
        })
    }

    fn call(
        &mut self,
        body: &Request,
        timeout: Duration,
    ) -> std::io::Result<Result<Reply, RpcError>> {
        let io = |e: frame::FrameError| std::io::Error::other(e.to_string());
        let call = self.next_call;
        self.next_call += 1;
        let bytes = frame::encode(&RequestFrame {
            call,
            body: body.clone(),
        })
        .map_err(io)?;
        if self.timeout != Some(timeout) {
            self.socket.set_write_timeout(Some(timeout))?;
            self.socket.set_read_timeout(Some(timeout))?;
            self.timeout = Some(timeout);
        }
        let out = self.io.get_mut();
        out.write_all(&bytes)?;
        out.flush()?;
        let mut len = [0u8; 4];
        self.io.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > FRAME_BYTES_MAX {
            return Err(std::io::Error::other(format!("frame of {len} bytes")));
        }
        self.buf.resize(len, 0);
        self.io.read_exact(&mut self.buf)?;
        let resp: ResponseFrame = frame::decode(&self.buf).map_err(io)?;
        if resp.call != call {
            return Err(std::io::Error::other(format!(
                "answer to call {} while waiting for {call}",
                resp.call
            )));
        }
        Ok(resp.body)
    }
}
