//! Opening a connection to a daemon: TCP without Nagle's delay within a
//! timeout, then, for a cluster that uses TLS, the mutual handshake. The
//! halves come back boxed, the same types over TCP and over TLS.

use crate::tls::{Identity, Tls};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// How long a TLS handshake may take once connected.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Dialed {
    pub rd: ReadHalf,
    pub wr: WriteHalf,
    /// Whom the server's certificate names (TLS only).
    pub peer: Option<Identity>,
}

fn timed_out(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

/// Connects to `address`; with `tls`, the server must present a
/// certificate of the cluster CA, and this process presents its own.
pub async fn dial(
    address: &str,
    connect_timeout: Duration,
    tls: Option<&Tls>,
) -> std::io::Result<Dialed> {
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(address))
        .await
        .map_err(|_| timed_out(format!("connect to {address} timed out")))??;
    stream.set_nodelay(true)?;
    let Some(tls) = tls else {
        let (rd, wr) = stream.into_split();
        return Ok(Dialed {
            rd: Box::new(rd),
            wr: Box::new(wr),
            peer: None,
        });
    };
    let (stream, who) = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connect(stream))
        .await
        .map_err(|_| timed_out(format!("TLS handshake with {address} timed out")))?
        .map_err(|e| {
            // A plaintext server closes on a handshake (it takes it for an
            // oversized frame): say so rather than "unexpected EOF".
            let hint = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                " (it closed the connection: does it run without --tls?)"
            } else {
                ""
            };
            std::io::Error::new(e.kind(), format!("TLS handshake with {address}: {e}{hint}"))
        })?;
    let (rd, wr) = tokio::io::split(stream);
    Ok(Dialed {
        rd: Box::new(rd),
        wr: Box::new(wr),
        peer: Some(who),
    })
}

/// Refuses a server whose certificate names someone other than `expected`
/// (a TLS connection to, say, replica 2 must reach replica 2).
pub fn expect_peer(d: &Dialed, expected: Identity) -> std::io::Result<()> {
    match d.peer {
        Some(who) if who != expected => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("expected {expected}, the server's certificate names {who}"),
        )),
        _ => Ok(()),
    }
}
