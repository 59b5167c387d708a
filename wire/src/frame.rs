//! Length-prefixed frames: a u32 big-endian length, then a postcard body.
//! A frame over `FRAME_BYTES_MAX` or one that does not decode is an error for
//! that connection only; the caller closes it.

use bytes::BufMut;
use serde::{de::DeserializeOwned, Serialize};
use sparefs_proto::limits::FRAME_BYTES_MAX;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A frame: the body's length, then the body, serialized straight into
/// one buffer of the right size (a fragment's bytes are copied once).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let len = postcard::experimental::serialized_size(msg)?;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    Ok(postcard::to_extend(msg, out)?)
}

pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    Ok(postcard::from_bytes(body)?)
}

/// A connection's read side, buffered: a frame's length and body (and
/// often the next frames) arrive in one read call instead of two each.
/// Bodies larger than the buffer are read around it, not copied through.
pub fn buffered<R: AsyncRead>(r: R) -> tokio::io::BufReader<R> {
    tokio::io::BufReader::with_capacity(READ_BUFFER_BYTES, r)
}

const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Reads one frame's body. Returns `Closed` on a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    read_frame_budgeted(r, buf, None).await.map(|_| ())
}

/// Reads one frame's body into `buf`, growing it only as bytes arrive: a
/// peer that announces 16 MiB and sends five bytes costs five bytes plus one
/// step, not 16 MiB. With a `budget` (permits are KiB), each step first takes
/// its share from it, so all connections together never hold more than the
/// budget in frames; the permit returned covers the whole body and is meant
/// to be held until the request it carries is done.
/// After a frame over `BUF_KEEP_BYTES`, `buf` gives its memory back.
pub async fn read_frame_budgeted<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    budget: Option<&Arc<Semaphore>>,
) -> Result<Option<OwnedSemaphorePermit>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    if buf.capacity() > BUF_KEEP_BYTES {
        *buf = Vec::new();
    }
    buf.clear();
    let mut held: Option<OwnedSemaphorePermit> = None;
    while buf.len() < len {
        let step = (len - buf.len()).min(READ_STEP_BYTES);
        if let Some(budget) = budget {
            let kib = u32::try_from(step.div_ceil(1024)).unwrap_or(u32::MAX);
            let permit = budget
                .clone()
                .acquire_many_owned(kib)
                .await
                .map_err(|_| FrameError::Closed)?;
            match held.as_mut() {
                Some(h) => h.merge(permit),
                None => held = Some(permit),
            }
        }
        if buf.len() == READ_STEP_BYTES {
            // The peer is really sending: room for the rest at once (one
            // move of what arrived, not one per doubling).
            buf.reserve_exact(len - buf.len());
        }
        let end = buf.len() + step;
        buf.reserve(step);
        while buf.len() < end {
            // Into the spare capacity, without zeroing it first.
            let want = end - buf.len();
            let n = r.read_buf(&mut (&mut *buf).limit(want)).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
    }
    Ok(held)
}

/// How much of a frame is allocated (and taken from a budget) at a time.
pub const READ_STEP_BYTES: usize = 256 * 1024;
/// A frame buffer larger than this is freed before the next frame, so one
/// large frame does not pin its memory for the life of the connection.
const BUF_KEEP_BYTES: usize = 1024 * 1024;

pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    let bytes = encode(msg)?;
    w.write_all(&bytes).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_limits() {
        let bytes = encode(&(7u64, String::from("x"))).expect("encode");
        let mut cur = std::io::Cursor::new(bytes);
        let mut buf = Vec::new();
        read_frame(&mut cur, &mut buf).await.expect("read");
        let (a, b): (u64, String) = decode(&buf).expect("decode");
        assert_eq!((a, b.as_str()), (7, "x"));
        let mut huge = std::io::Cursor::new(((FRAME_BYTES_MAX + 1) as u32).to_be_bytes().to_vec());
        assert!(matches!(
            read_frame(&mut huge, &mut buf).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut empty = std::io::Cursor::new(Vec::new());
        assert!(matches!(
            read_frame(&mut empty, &mut buf).await,
            Err(FrameError::Closed)
        ));
        assert!(decode::<(u64, String)>(&[0xff, 0xff, 0xff]).is_err());
    }

    /// Any bytes from the network: reading frames from them and decoding
    /// those frames as requests or answers never panics, and a frame's
    /// buffer never holds much more than the bytes that arrived.
    mod any_bytes {
        use super::*;
        use proptest::prelude::*;
        use sparefs_proto::msg::{RequestFrame, ResponseFrame};

        fn check(bytes: Vec<u8>) -> Result<(), TestCaseError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut cur = std::io::Cursor::new(bytes.clone());
            let mut buf = Vec::new();
            rt.block_on(async {
                while read_frame(&mut cur, &mut buf).await.is_ok() {
                    let _ = decode::<RequestFrame>(&buf);
                    let _ = decode::<ResponseFrame>(&buf);
                }
            });
            prop_assert!(
                buf.capacity() <= 2 * bytes.len() + READ_STEP_BYTES,
                "{} bytes in, a buffer of {}",
                bytes.len(),
                buf.capacity()
            );
            let _ = decode::<RequestFrame>(&bytes);
            let _ = decode::<ResponseFrame>(&bytes);
            Ok(())
        }

        proptest! {
            #[test]
            fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
                check(bytes)?;
            }

            /// A plausible length, then fewer bytes than it announces.
            #[test]
            fn truncated_frames(len in 0u32..(FRAME_BYTES_MAX as u32 + 16), body in proptest::collection::vec(any::<u8>(), 0..4096)) {
                let mut bytes = len.to_be_bytes().to_vec();
                bytes.extend_from_slice(&body);
                check(bytes)?;
            }

            /// A well-formed frame of a request with some of its bytes changed.
            #[test]
            fn mutated_requests(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
                let req = RequestFrame {
                    call: 9,
                    body: sparefs_proto::msg::Request::Raft { from: sparefs_proto::ReplicaId(2), msg: vec![7; 40] },
                };
                let mut bytes = encode(&req).map_err(|e| TestCaseError::fail(e.to_string()))?;
                for (at, v) in flips {
                    let n = bytes.len();
                    bytes[at % n] = v;
                }
                check(bytes)?;
            }
        }
    }
}
